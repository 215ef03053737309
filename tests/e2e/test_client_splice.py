"""The blocking client given file descriptors for a command's output: large bodies go from
the socket to a pipe, a file or /dev/null in the kernel (os.splice, counted here by wrapping
it in this process, the client's), the rest is written; the same data through a callback
arrives the same. A real server process on loopback, the client in the test's process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import rexec
from rexec.client.blocking import PASS_AT
from rexec.wire.codec import PEEK_SIZE, Frame, FrameDecoder
from tests.helpers import ROOT, ServerProcess, start_server
from tests.helpers import interleaved_output as expected
from tests.helpers import interleaved_writer as writer_command

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice is Linux's")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("client-splice"))
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def spliced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts of this process's os.splice calls (the client's)."""
    moved: list[int] = []
    real = os.splice

    def splice(src: int, dst: int, count: int, *args: object, **kwargs: object) -> int:
        n = real(src, dst, count, *args, **kwargs)  # type: ignore[arg-type]
        moved.append(n)
        return n

    monkeypatch.setattr(os, "splice", splice)
    return moved


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PipeReader:
    """A pipe whose read end a thread drains into memory (or stops reading: ``limit``)."""

    def __init__(self, limit: int | None = None) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.data = bytearray()
        self._limit = limit
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while chunk := os.read(self.read_fd, 1 << 20):
            self.data += chunk
            if self._limit is not None and len(self.data) >= self._limit:
                break
        os.close(self.read_fd)  # the reader is gone: the writer gets EPIPE

    def finish(self) -> bytes:
        os.close(self.write_fd)
        self._thread.join(timeout=30)
        return bytes(self.data)


@pytest.mark.parametrize("where", ["pipe", "file", "appended file", "callback"])
def test_output_to_a_descriptor_arrives_byte_exact(server: ServerProcess, tmp_path: Path,
                                                   spliced: list[int], where: str) -> None:
    out, err = expected(seed=23, chunks=50)
    errors = bytearray()
    target = tmp_path / "out.bin"
    reader = PipeReader() if where == "pipe" else None
    fd: int | None = None
    if where == "pipe":
        assert reader is not None
        fd = reader.write_fd
    elif where in ("file", "appended file"):
        target.write_bytes(b"before\n")
        flags = os.O_WRONLY | (os.O_APPEND if where == "appended file" else 0)
        fd = os.open(target, flags)
        os.lseek(fd, 0, os.SEEK_END)
    got = bytearray()
    with rexec.BlockingClient(server.address, token=server.token) as client:
        result = client.run(writer_command(23, 50), capture=False,
                            on_stdout=fd if fd is not None else got.extend,
                            on_stderr=errors.extend)
        again = client.run("echo next", on_stdout=None)  # the connection goes on as usual
    assert result.exit_code == 0 and again.stdout == b"next\n"
    assert not client.broken_pipe
    if reader is not None:
        got = bytearray(reader.finish())
    elif fd is not None:
        os.close(fd)
        data = target.read_bytes()
        assert data.startswith(b"before\n")
        got = bytearray(data[len(b"before\n"):])
    assert (len(got), result.stdout_bytes) == (len(out), len(out))
    assert digest(bytes(got)) == digest(out)
    assert digest(bytes(errors)) == digest(err)
    if where in ("pipe", "file"):
        assert sum(spliced) > len(out) // 2, "the bodies were not moved in the kernel"
    else:  # a file opened for appending takes no splice; a callback is given the bytes
        assert not spliced


def test_devnull_takes_the_bodies_without_a_copy(server: ServerProcess, spliced: list[int],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[tuple[int, bool]] = []  # each stdout frame's body size, and whether passed
    next_frame = FrameDecoder.next_frame

    def watched(decoder: FrameDecoder) -> Frame | None:
        frame = next_frame(decoder)
        if frame is not None and frame.header.type == "stdout":
            bodies.append((frame.header.size, bool(frame.passed)))
        return frame

    monkeypatch.setattr(FrameDecoder, "next_frame", watched)
    size = 64 * 1024 * 1024
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        with rexec.BlockingClient(server.address, token=server.token) as client:
            result = client.run(f"head -c {size} /dev/zero", capture=False, on_stdout=null)
    finally:
        os.close(null)
    assert result.exit_code == 0 and result.stdout_bytes == size
    assert sum(n for n, _ in bodies) == size
    # The client reads up to a header and a peek of its body, never further: however fast it
    # is beside the server, every body with PASS_AT or more behind that peek stays on the wire
    # and is passed. (The server's bodies are what waited in the pipe: their sizes vary.)
    large = [passed for n, passed in bodies if n >= PASS_AT + PEEK_SIZE]
    assert large and all(large), f"{large.count(False)} of {len(large)} large bodies received"
    # A passed byte is spliced twice (socket to the client's pipe, pipe to /dev/null); only
    # what came with its header was received.
    passed = [n for n, was in bodies if was]
    assert sum(passed) - PEEK_SIZE * len(passed) <= sum(spliced) // 2 <= sum(passed)


def test_a_pipe_whose_reader_left_cancels_the_command(server: ServerProcess) -> None:
    reader = PipeReader(limit=3_000_000)
    with rexec.BlockingClient(server.address, token=server.token) as client:
        result = client.run("cat /dev/zero", capture=False, on_stdout=reader.write_fd)
        assert client.broken_pipe
        assert result.signal is not None or result.exit_code != 0  # cancelled, not finished
        after = client.run("echo still here")
    reader.finish()
    assert after.stdout == b"still here\n"
    assert len(reader.data) >= 3_000_000


def test_the_cli_splices_into_a_pipe_and_a_file(server: ServerProcess, tmp_path: Path) -> None:
    """`rexec run` hands its stdout to the client as a descriptor: byte-exact into a pipe and
    a file, and a pipe closed early exits 141 as a shell's pipeline expects."""
    token = tmp_path / "token"
    token.write_text(server.token)
    token.chmod(0o600)
    argv = [sys.executable, str(ROOT / "client.py"), "run", "--token-file", str(token),
            server.address, "--"]
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(20_000_000))
    piped = subprocess.run([*argv, f"cat {source}"], capture_output=True, timeout=60,
                           check=False)
    assert piped.returncode == 0 and digest(piped.stdout) == digest(source.read_bytes())
    out = tmp_path / "copy.bin"
    with out.open("wb") as handle:
        written = subprocess.run([*argv, f"cat {source}"], stdout=handle, timeout=60,
                                 check=False)
    assert written.returncode == 0 and digest(out.read_bytes()) == digest(source.read_bytes())
    head = subprocess.run(f"{' '.join(argv)} 'cat /dev/zero' | head -c 100000 | wc -c;"
                          " echo \"${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                          capture_output=True, timeout=60, check=False)
    assert head.stdout.split() == [b"100000", b"141"]
