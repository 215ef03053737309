"""Writeback asks the kernel to start writing a growing file every STEP bytes, never waiting;
FileWriter writes a large file around the page cache (O_DIRECT), byte-exact on every path."""

from __future__ import annotations

import errno
import mmap
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rexec import writeback


def test_writeback_is_asked_for_every_step_of_what_was_written(tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    calls: list[tuple[int, int, int, int]] = []
    monkeypatch.setattr(writeback, "_sync_file_range",
                        lambda fd, offset, count, flags: calls.append((fd, offset, count, flags))
                        or 0)
    monkeypatch.setattr(writeback, "STEP", 100)
    w = writeback.Writeback(7)
    for _ in range(25):
        w.wrote(10)  # 250 bytes in all
    assert calls == [(7, 0, 100, 2), (7, 100, 100, 2)]  # the last 50 wait for the fsync


def test_the_real_call_accepts_a_real_file(tmp_path: Path) -> None:
    if writeback._sync_file_range is None:  # not Linux: nothing to ask, nothing to check
        return
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 4096)
        assert writeback._sync_file_range(fd, 0, 4096, 2) == 0
        w = writeback.Writeback(fd)
        w.wrote(writeback.STEP)  # one request, no error raised
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"x" * 4096


def test_loading_the_call_starts_no_child_process(monkeypatch: Any) -> None:
    """libc's sync_file_range comes from the process's own symbols; ctypes.util.find_library
    would run `ldconfig -p` in a child on every get, put and deploy."""
    import subprocess
    import sys

    spawned: list[object] = []
    real = subprocess.Popen.__init__

    def spy(self: subprocess.Popen[bytes], *args: Any, **kwargs: Any) -> None:
        spawned.append(args[0] if args else kwargs.get("args"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    call = writeback._load()
    if sys.platform.startswith("linux"):
        assert call is not None
    assert spawned == []


def _written(path: Path, chunks: list[bytes], size: int | None,
             aligned: bool = False) -> tuple[bytes, bool]:
    """The chunks through a FileWriter into a new file at path: its content, and whether the
    writer still wrote around the page cache at the end. ``aligned``: each chunk is given from
    the start of an mmap of its own, and said to be."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        w = writeback.FileWriter(fd, size)
        for chunk in chunks:
            if aligned and chunk:
                page = mmap.mmap(-1, len(chunk))
                page[:] = chunk
                w.write(memoryview(page), aligned=True)
            else:
                w.write(chunk)
        direct = w.direct
        w.finish()
        w.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    return path.read_bytes(), direct


@pytest.fixture
def small_direct(monkeypatch: Any) -> None:
    """O_DIRECT from 1 byte on, staged 16 KiB at a time: every path in a few KiB."""
    monkeypatch.setattr(writeback, "DIRECT_MIN", 1)
    monkeypatch.setattr(writeback, "DIRECT_CHUNK", 4 * writeback.DIRECT_ALIGN)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 40_000), max_size=12), seed=st.integers(0, 2**32))
def test_a_file_written_around_the_page_cache_is_byte_exact(
        tmp_path: Path, small_direct: None, sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    chunks = [rng.randbytes(n) for n in sizes]
    data, direct = _written(tmp_path / "f", chunks, sum(sizes) or 1)
    assert data == b"".join(chunks)
    assert direct  # ext4 (the test's folder) takes O_DIRECT: the direct path ran


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.lists(st.integers(0, 9), max_size=10),
                      st.lists(st.integers(1, 5000), max_size=3)),
       seed=st.integers(0, 2**32))
def test_aligned_chunks_go_to_the_disk_from_where_they_are(
        tmp_path: Path, small_direct: None, monkeypatch: Any,
        shape: tuple[list[int], list[int]], seed: int) -> None:
    """A get's chunks from its own mmaps: written without staging whenever nothing is
    staged and they are whole blocks, staged otherwise; the file is exact either way."""
    blocks, odd = shape
    rng = random.Random(seed)
    sizes = [n * writeback.DIRECT_ALIGN for n in blocks]
    for n in odd:  # a chunk that is not whole blocks puts the next ones through the stage
        sizes.insert(rng.randrange(len(sizes) + 1), n)
    chunks = [rng.randbytes(n) for n in sizes]
    real, lengths = os.write, []

    def spy(fd: int, data: Any) -> int:
        lengths.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", spy)
    data, direct = _written(tmp_path / "f", chunks, sum(sizes) or 1, aligned=True)
    assert data == b"".join(chunks)
    assert direct
    if sizes and sizes[0] > writeback.DIRECT_CHUNK and not sizes[0] % writeback.DIRECT_ALIGN:
        # the first chunk in one write from its own buffer: the stage holds less than it
        assert lengths[0] == sizes[0]


@pytest.mark.parametrize("how", ["einval", "short"])
def test_an_aligned_chunk_refused_or_written_short_goes_on_through_the_page_cache(
        tmp_path: Path, small_direct: None, monkeypatch: Any, how: str) -> None:
    real = os.write
    chunks = [bytes([i]) * (4 * writeback.DIRECT_ALIGN) for i in range(6)]
    calls = {"n": 0}

    def failing(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2 and how == "einval":
            raise OSError(errno.EINVAL, "Invalid argument")
        if calls["n"] == 2:
            return real(fd, memoryview(data)[:1000])  # not a whole block
        return real(fd, data)

    monkeypatch.setattr(os, "write", failing)
    data, direct = _written(tmp_path / how, chunks, len(chunks) * len(chunks[0]),
                            aligned=True)
    assert data == b"".join(chunks) and not direct


def test_a_small_file_goes_through_the_page_cache(tmp_path: Path) -> None:
    data, direct = _written(tmp_path / "f", [b"listen 8080\n"], 12)
    assert (data, direct) == (b"listen 8080\n", False)


def test_a_refused_direct_write_goes_on_through_the_page_cache(
        tmp_path: Path, small_direct: None, monkeypatch: Any) -> None:
    # EINVAL at the second direct write (a file system that takes the flag but not the
    # write), then a short write that leaves the offset unaligned: the rest of the file goes
    # through the page cache, and nothing is lost or written twice.
    real = os.write
    calls = {"n": 0}

    def refusing(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data)

    monkeypatch.setattr(os, "write", refusing)
    chunks = [bytes([i]) * 10_000 for i in range(8)]
    data, direct = _written(tmp_path / "f", chunks, 80_000)
    assert data == b"".join(chunks) and not direct

    calls["n"] = 0

    def short(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, memoryview(data)[:1000])  # 1000 bytes: not a whole block
        return real(fd, data)

    monkeypatch.setattr(os, "write", short)
    data, direct = _written(tmp_path / "g", chunks, 80_000)
    assert data == b"".join(chunks) and not direct


def test_a_file_system_without_o_direct_gets_the_page_cache(
        tmp_path: Path, small_direct: None, monkeypatch: Any) -> None:
    monkeypatch.setattr(writeback, "_set_direct", lambda fd, on: False)
    data, direct = _written(tmp_path / "f", [b"x" * 50_000], 50_000)
    assert (data, direct) == (b"x" * 50_000, False)


def test_a_direct_write_error_other_than_einval_is_raised(
        tmp_path: Path, small_direct: None, monkeypatch: Any) -> None:
    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as caught:
        _written(tmp_path / "f", [b"x" * 50_000], 50_000)
    assert caught.value.errno == errno.ENOSPC
    # and the writer lets its buffer go while that error is being handled (an upload aborts
    # there), though the error's traceback still holds a slice of it
    fd = os.open(tmp_path / "g", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        w = writeback.FileWriter(fd, 50_000)
        try:
            w.write(b"x" * 50_000)
        except OSError:
            w.close()
        assert not w.direct
    finally:
        os.close(fd)
