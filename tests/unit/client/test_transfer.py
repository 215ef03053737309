"""The local half of put and get: digests, chunks, the atomic write and its failures."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from rexec.client.transfer import (
    CHUNK,
    TEMP_MARK,
    AtomicWriter,
    Digest,
    LocalSource,
    get_destination,
    put_attributes,
    put_destination,
)
from rexec.errors import InvalidRequest, LocalFileError


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_MARK in p.name]


# --- the source of a put -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 3])
def test_a_source_is_hashed_then_read_exactly(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    path.chmod(0o640)
    os.utime(path, ns=(1, 1_700_000_000_123_456_789))
    with LocalSource.open(path) as source:
        assert source.digest == Digest(size, hashlib.sha256(data).hexdigest(), 0o640,
                                       1_700_000_000_123_456_789)
        chunks = []
        while source.remaining:
            chunk = source.read(CHUNK * 4)
            assert 0 < len(chunk) <= CHUNK
            chunks.append(chunk)
        assert b"".join(chunks) == data
        assert source.read(10) == b""  # never past the declared size


def test_a_source_that_grew_gives_only_its_hashed_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with LocalSource.open(path) as source:
        with path.open("ab") as fh:
            fh.write(b"more")
        assert source.read(100) == b"abc"
        assert source.remaining == 0


def test_a_source_that_shrank_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    with LocalSource.open(path) as source:
        os.truncate(path, 10)
        assert source.read(10) == b"x" * 10
        with pytest.raises(LocalFileError, match="shrank") as info:
            source.read(10)
    assert info.value.code == "changed_while_reading"


def test_read_rest_is_the_whole_small_file_or_an_error_if_it_shrank(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3000)
    path.write_bytes(data)
    with LocalSource.open(path, hashed=False) as source:
        assert source.read_rest() == data and source.remaining == 0
        assert source.read_rest() == b""
    with LocalSource.open(path, hashed=False) as source:
        os.truncate(path, 1000)
        with pytest.raises(LocalFileError, match="shrank") as info:
            source.read_rest()
    assert info.value.code == "changed_while_reading"


@pytest.mark.parametrize(("make", "code"), [
    (lambda p: None, "not_found"),
    (lambda p: p.mkdir(), "is_a_directory"),
    (os.mkfifo, "not_a_regular_file"),
])
def test_sources_that_cannot_be_put(tmp_path: Path, make: object, code: str) -> None:
    path = tmp_path / "src"
    make(path)  # type: ignore[operator]
    with pytest.raises(LocalFileError) as info:
        LocalSource.open(path)
    assert (info.value.code, info.value.path) == (code, str(path))
    assert str(path) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_source(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s")
    path.chmod(0)
    with pytest.raises(LocalFileError) as info:
        LocalSource.open(path)
    assert info.value.code == "permission_denied"


def test_put_attributes() -> None:
    digest = Digest(1, "a" * 64, 0o750, 42)
    assert put_attributes(digest, mode=None, preserve=False) == (None, None)
    assert put_attributes(digest, mode=0o600, preserve=False) == (0o600, None)
    assert put_attributes(digest, mode=None, preserve=True) == (0o750, 42)
    assert put_attributes(digest, mode=0o600, preserve=True) == (0o600, 42)  # --mode wins


# --- where a transfer goes -----------------------------------------------------------------


def test_put_destination_appends_the_local_name_to_a_slash() -> None:
    assert put_destination("/tmp/a/app.tar", "/srv/") == "/srv/app.tar"
    assert put_destination("app.tar", "/srv/x.tar") == "/srv/x.tar"
    assert put_destination("app.tar", "/srv") == "/srv"  # a directory? the server will say
    with pytest.raises(InvalidRequest, match="absolute") as info:
        put_destination("app.tar", "srv/app.tar")
    assert info.value.field == "path"


def test_get_destination_in_a_directory(tmp_path: Path) -> None:
    assert get_destination("/var/log/syslog", tmp_path) == tmp_path / "syslog"
    assert get_destination("/var/log/syslog", f"{tmp_path}/new/") == tmp_path / "new" / "syslog"
    assert get_destination("/var/log/syslog", tmp_path / "s") == tmp_path / "s"
    with pytest.raises(InvalidRequest, match="absolute"):
        get_destination("log", tmp_path)
    with pytest.raises(InvalidRequest, match="names no file"):
        get_destination("/", tmp_path)


# --- the atomic write of a get -------------------------------------------------------------


def test_commit_replaces_the_destination_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    with AtomicWriter.create(dest, 0o600) as writer:
        writer.write(b"new ")
        writer.write(memoryview(b"bytes"))
        assert dest.read_bytes() == b"old"  # untouched until the commit
        assert writer.temp.parent == tmp_path and TEMP_MARK in writer.temp.name
        assert writer.written == 9
        writer.commit()
    assert dest.read_bytes() == b"new bytes"
    assert leftovers(tmp_path) == []


def test_a_failure_before_the_commit_leaves_the_destination_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    dest.chmod(0o640)
    with pytest.raises(RuntimeError), AtomicWriter.create(dest) as writer:
        writer.write(b"half a file")
        raise RuntimeError("the connection broke")
    assert dest.read_bytes() == b"old"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert leftovers(tmp_path) == []


def test_abort_without_a_destination_leaves_nothing(tmp_path: Path) -> None:
    writer = AtomicWriter.create(tmp_path / "never")
    writer.write(b"x")
    writer.abort()
    writer.abort()  # again: no-op
    assert list(tmp_path.iterdir()) == []


def test_a_failed_commit_leaves_the_destination_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    writer = AtomicWriter.create(dest)
    writer.write(b"new")
    os.unlink(writer.temp)  # the rename will fail
    with pytest.raises(LocalFileError) as info:
        writer.commit()
    assert info.value.path == str(dest)
    assert dest.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_new_file_gets_the_mode_less_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with AtomicWriter.create(tmp_path / "new", 0o777) as writer:
            writer.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750


def test_an_existing_file_keeps_its_mode_unless_told(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    dest.chmod(0o604)
    with AtomicWriter.create(dest, 0o755) as writer:
        writer.commit()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o604
    with AtomicWriter.create(dest, 0o755) as writer:
        writer.commit(mode=0o4711, mtime_ns=1_600_000_000_987_654_321)
    st = dest.stat()
    assert stat.S_IMODE(st.st_mode) == 0o4711
    assert st.st_mtime_ns == 1_600_000_000_987_654_321


def test_a_symbolic_link_at_the_destination_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    with AtomicWriter.create(link) as writer:
        writer.write(b"new")
        writer.commit()
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert target.read_bytes() == b"keep"


@pytest.mark.parametrize(("make", "code"), [
    (lambda p: p.mkdir(), "is_a_directory"),
    (lambda p: None, "not_found"),
])
def test_destinations_that_cannot_be_written(tmp_path: Path, make: object, code: str) -> None:
    dest = tmp_path / "d"
    make(dest)  # type: ignore[operator]
    where = dest if code == "is_a_directory" else dest / "missing" / "f"
    with pytest.raises(LocalFileError) as info:
        AtomicWriter.create(where)
    assert info.value.code == code


def test_a_full_disk_is_no_space(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    writer = AtomicWriter.create(tmp_path / "f")
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, writer._fd)
    os.close(full)
    with pytest.raises(LocalFileError) as info:
        writer.write(b"x" * 10)
    assert info.value.code == "no_space"
    writer.abort()
    assert leftovers(tmp_path) == []
