"""What sending a file over loopback TCP costs the sender when every byte is also hashed.

    python bench/send_floor.py [--size BYTES] [--rounds N] [--file PATH]

rexec's transfers check a SHA-256 of every file end to end, so the side that sends a file must
have its bytes in user space to hash them. This measures the ways a sender can do that, one
after the other in rounds, each against a receiver process that discards what it is sent:

- ``read``: read 1 MiB into a reused buffer, hash it, ``sendall`` it (what rexec does);
- ``tee``: ``splice`` the file into a pipe, ``tee`` that pipe into a second one, read and hash
  the second, ``splice`` the first into the socket (the bytes reach the socket without a copy
  through user space);
- ``mmap``: hash the file through ``mmap`` (``MAP_POPULATE``), ``os.sendfile`` it (which rexec
  cannot do safely: a file truncated while it is mapped kills the process with SIGBUS).

It prints each way's wall time and the sender's and the receiver's CPU seconds. The file (made
of random bytes in a temporary folder unless given) is read once first, so that it is in the
page cache for every round. Linux only (splice, tee).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CHUNK = 1024 * 1024
F_SETPIPE_SZ = 1031
SINK = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
view, total = memoryview(bytearray(1 << 20)), 0
while count := s.recv_into(view):
    total += count
print(total)
"""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
_libc.tee.restype = ctypes.c_ssize_t


def send_read(fd: int, size: int, out: socket.socket) -> str:
    view, digest = memoryview(bytearray(CHUNK)), hashlib.sha256()
    while count := os.readv(fd, [view]):
        digest.update(view[:count])
        out.sendall(view[:count])
    return digest.hexdigest()


def send_tee(fd: int, size: int, out: socket.socket) -> str:
    view, digest = memoryview(bytearray(CHUNK)), hashlib.sha256()
    first, second = os.pipe(), os.pipe()
    try:
        for pipe in (first, second):
            fcntl.fcntl(pipe[1], F_SETPIPE_SZ, CHUNK)
        offset = 0
        while offset < size:
            count = os.splice(fd, first[1], min(CHUNK, size - offset), offset_src=offset)
            if not count:
                raise SystemExit("the file shrank while it was sent")
            offset += count
            copied = 0
            while copied < count:
                teed = _libc.tee(first[0], second[1], count - copied, 0)
                if teed <= 0:
                    raise OSError(ctypes.get_errno(), "tee")
                read = 0
                while read < teed:
                    read += os.readv(second[0], [view[read:teed]])
                digest.update(view[:teed])
                copied += teed
            left = count
            while left:
                left -= os.splice(first[0], out.fileno(), left)
    finally:
        for pipe in (first, second):
            for end in pipe:
                os.close(end)
    return digest.hexdigest()


def send_mmap(fd: int, size: int, out: socket.socket) -> str:
    digest, offset = hashlib.sha256(), 0
    while offset < size:
        count = min(4 * CHUNK, size - offset)
        with mmap.mmap(fd, count, prot=mmap.PROT_READ, offset=offset,
                       flags=mmap.MAP_SHARED | mmap.MAP_POPULATE) as mapped:
            digest.update(mapped)
        done = 0
        while done < count:
            done += os.sendfile(out.fileno(), fd, offset + done, count - done)
        offset += count
    return digest.hexdigest()


WAYS: dict[str, Callable[[int, int, socket.socket], str]] = {
    "read": send_read, "tee": send_tee, "mmap": send_mmap}


def one(path: Path, way: Callable[[int, int, socket.socket], str]) -> tuple[float, float, float]:
    """(wall s, sender CPU s, receiver CPU s) of one send of the file."""
    size = path.stat().st_size
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sink = subprocess.Popen([sys.executable, "-c", SINK, str(listener.getsockname()[1])],
                                stdout=subprocess.PIPE)
        out, _ = listener.accept()
    fd = os.open(path, os.O_RDONLY)
    try:
        out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started, before = time.perf_counter(), os.times()
        way(fd, size, out)
        out.close()
        received = int(sink.communicate(timeout=120)[0])
        after = os.times()
    finally:
        os.close(fd)
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    if received != size:
        raise SystemExit(f"the receiver got {received} of {size} bytes")
    return (time.perf_counter() - started, after.user - before.user + after.system
            - before.system, after.children_user - before.children_user
            + after.children_system - before.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512 * 1024 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--file", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            path = Path(tmp) / "data"
            with path.open("wb") as f:
                for _ in range(0, args.size, CHUNK):
                    f.write(os.urandom(CHUNK))
        with path.open("rb") as f:  # into the page cache
            while f.read(CHUNK):
                pass
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in WAYS}
        for _ in range(args.rounds):
            for name, way in WAYS.items():
                results[name].append(one(path, way))
        gib = path.stat().st_size / 2**30
        print(f"{path.stat().st_size:,} bytes, {args.rounds} rounds; per GiB:")
        for name, rows in results.items():
            print(f"  {name:5} " + "  ".join(
                f"{wall / gib:.2f} s (sender {mine / gib:.2f}, receiver {theirs / gib:.2f} CPU)"
                for wall, mine, theirs in rows))


if __name__ == "__main__":
    main()
