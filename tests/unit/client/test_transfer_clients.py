"""Client.put/get and BlockingClient.put/get over a real loopback socket, against a scripted
version-3 peer in a thread (the real server's file transfer is built separately): the drivers'
flow control, progress, destinations, failures and the local atomic write."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mmap
import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rexec.client.aio import Client
from rexec.client.blocking import BlockingClient
from rexec.client.transfer import TEMP_MARK
from rexec.errors import LocalFileError, ProtocolError, TransferFailed
from rexec.result import TransferResult
from rexec.wire import auth
from rexec.wire import frames as f
from rexec.wire.protocol import Connection, Role

TOKEN = "transfer-clients-token"
SALT = bytes(16)


@dataclass
class Stored:
    data: bytes
    mode: int = 0o644
    mtime_ns: int = 0


@dataclass
class Peer:
    """A scripted server of put and get: files in a dict, one connection at a time."""

    version: int = f.FILE_VERSION
    files: dict[str, Stored] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)  # path -> error code
    corrupt_get: bool = False
    credits: list[int] = field(default_factory=list)
    puts: list[f.Put] = field(default_factory=list)

    def serve(self, sock: socket.socket) -> None:
        conn = Connection(Role.SERVER)
        frames = self._frames(sock, conn)
        hello = next(frames)[0]
        assert isinstance(hello, f.Hello)
        nonce = "ab" * 32
        message = auth.auth_message(hello.nonce, nonce, self.version, "")
        sock.sendall(conn.send(f.Challenge(version=self.version, nonce=nonce, agent="peer/3",
                                           method="token", salt=SALT.hex())))
        next(frames)
        verifier = auth.TokenVerifier.from_token(TOKEN, SALT)
        sock.sendall(conn.send(f.AuthOk(mac=verifier.server_proof(message), identity="default")))
        for header, body in frames:
            if header.type == "put":
                self._put(sock, conn, header, frames)
            elif header.type == "get":
                self._get(sock, conn, header)
            del body

    def _frames(self, sock: socket.socket, conn: Connection) -> Iterator[tuple[Any, bytes]]:
        while True:
            while (frame := conn.next_frame()) is not None:
                yield frame.header, bytes(frame.body)
            data = sock.recv(1 << 20)
            if not data:
                return
            conn.receive_data(data)

    def _error(self, sock: socket.socket, conn: Connection, code: str, message: str) -> None:
        sock.sendall(conn.send(f.Error(code=code, message=message, fatal=False)))  # type: ignore[arg-type]

    def _put(self, sock: socket.socket, conn: Connection, put: f.Put,
             frames: Iterator[tuple[Any, bytes]]) -> None:
        self.puts.append(put)
        if put.path in self.refuse:
            return self._error(sock, conn, self.refuse[put.path], f"{put.path}: refused")
        old = self.files.get(put.path)
        if (not put.force and old is not None
                and hashlib.sha256(old.data).hexdigest() == put.sha256
                and (put.mode is None or put.mode == old.mode)):
            sock.sendall(conn.send(f.TransferDone(changed=False, file_size=put.file_size,
                                                  sha256=put.sha256, duration=0.0)))
            return None
        sock.sendall(conn.send(f.PutReady()))
        data = bytearray()
        while len(data) < put.file_size:
            header, body = next(frames)
            if header.type == "cancel":
                return self._error(sock, conn, "cancelled", "cancelled")
            data += body
            self.credits.append(len(body))
            if len(data) < put.file_size:
                sock.sendall(conn.send(f.FileCredit(amount=len(body))))
        digest = hashlib.sha256(data).hexdigest()
        if digest != put.sha256:
            return self._error(sock, conn, "checksum_mismatch", f"{put.path}: checksum")
        self.files[put.path] = Stored(bytes(data), put.mode or (old.mode if old else 0o644),
                                      put.mtime_ns or 0)
        sock.sendall(conn.send(f.TransferDone(changed=True, file_size=len(data), sha256=digest,
                                              duration=0.01)))
        return None

    def _get(self, sock: socket.socket, conn: Connection, get: f.Get) -> None:
        stored = self.files.get(get.path)
        if stored is None:
            return self._error(sock, conn, "not_found", f"{get.path}: No such file or directory")
        data = stored.data
        sock.sendall(conn.send(f.FileInfo(file_size=len(data), mode=stored.mode,
                                          mtime_ns=stored.mtime_ns)))
        sent = b"\xff" + data[1:] if self.corrupt_get and data else data
        for start in range(0, len(sent), f.MAX_BODY_SIZE):
            piece = sent[start:start + f.MAX_BODY_SIZE]
            sock.sendall(conn.send(f.FileData(size=len(piece)), piece))
        sock.sendall(conn.send(f.TransferDone(changed=True, file_size=len(data),
                                              sha256=hashlib.sha256(data).hexdigest(),
                                              duration=0.01)))
        return None


@pytest.fixture
def peer() -> Iterator[tuple[Peer, str]]:
    scripted = Peer()
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with sock, contextlib.suppress(OSError, StopIteration):
                scripted.serve(sock)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield scripted, f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone would not
    listener.close()
    thread.join(5)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_MARK in p.name]


def blocking_put(address: str, *args: Any, **kwargs: Any) -> TransferResult:
    with BlockingClient(address, token=TOKEN) as client:
        return client.put(*args, **kwargs)


def blocking_get(address: str, *args: Any, **kwargs: Any) -> TransferResult:
    with BlockingClient(address, token=TOKEN) as client:
        return client.get(*args, **kwargs)


def async_put(address: str, *args: Any, **kwargs: Any) -> TransferResult:
    async def main() -> TransferResult:
        async with Client(address, token=TOKEN) as client:
            return await client.put(*args, **kwargs)
    return asyncio.run(main())


def async_get(address: str, *args: Any, **kwargs: Any) -> TransferResult:
    async def main() -> TransferResult:
        async with Client(address, token=TOKEN) as client:
            return await client.get(*args, **kwargs)
    return asyncio.run(main())


DRIVERS = pytest.mark.parametrize(("put", "get"), [(blocking_put, blocking_get),
                                                   (async_put, async_get)],
                                  ids=["blocking", "async"])


@DRIVERS
@pytest.mark.parametrize("size", [0, 1, 3 * f.MAX_BODY_SIZE + 17, f.FILE_WINDOW + 5])
def test_put_then_get_round_trip(peer: tuple[Peer, str], tmp_path: Path, put: Any, get: Any,
                                 size: int) -> None:
    scripted, address = peer
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    progress: list[tuple[int, int]] = []
    result = put(address, src, "/srv/data.bin",
                 on_progress=lambda done, total: progress.append((done, total)))
    digest = hashlib.sha256(data).hexdigest()
    assert result == TransferResult(str(src), "/srv/data.bin", size, digest, True,
                                    result.duration)
    assert scripted.files["/srv/data.bin"].data == data
    assert all(n <= f.MAX_BODY_SIZE for n in scripted.credits)
    if size:
        assert progress[-1] == (size, size)
    out = tmp_path / "out.bin"
    got = get(address, "/srv/data.bin", out)
    assert (got.local, got.bytes, got.sha256, got.changed) == (str(out), size, digest, True)
    assert out.read_bytes() == data
    assert leftovers(tmp_path) == []


@DRIVERS
def test_the_same_file_is_not_sent_again_unless_forced(peer: tuple[Peer, str], tmp_path: Path,
                                                       put: Any, get: Any) -> None:
    scripted, address = peer
    src = tmp_path / "f"
    src.write_bytes(b"content")
    assert put(address, src, "/srv/f").changed
    again = put(address, src, "/srv/f")
    assert not again.changed and again.bytes == 7
    assert put(address, src, "/srv/f", force=True).changed
    assert [p.force for p in scripted.puts] == [False, False, True]


@DRIVERS
def test_mode_preserve_and_a_directory_destination(peer: tuple[Peer, str], tmp_path: Path,
                                                   put: Any, get: Any) -> None:
    scripted, address = peer
    src = tmp_path / "tool.sh"
    src.write_bytes(b"#!/bin/sh\n")
    src.chmod(0o751)
    os.utime(src, ns=(0, 1_650_000_000_000_000_123))
    assert put(address, src, "/opt/").remote == "/opt/tool.sh"  # a slash: the local name
    assert (scripted.puts[-1].mode, scripted.puts[-1].mtime_ns) == (None, None)
    put(address, src, "/opt/m", mode=0o600)
    assert (scripted.puts[-1].mode, scripted.puts[-1].mtime_ns) == (0o600, None)
    put(address, src, "/opt/p", preserve=True)
    assert (scripted.puts[-1].mode, scripted.puts[-1].mtime_ns) == (0o751,
                                                                      1_650_000_000_000_000_123)
    into = tmp_path / "into"
    into.mkdir()
    result = get(address, "/opt/p", into, preserve=True)
    got = into / "p"
    assert result.local == str(got)
    assert stat.S_IMODE(got.stat().st_mode) == 0o751
    assert got.stat().st_mtime_ns == 1_650_000_000_000_000_123


@DRIVERS
def test_refusals_name_the_code_and_the_path(peer: tuple[Peer, str], tmp_path: Path, put: Any,
                                             get: Any) -> None:
    scripted, address = peer
    scripted.refuse["/etc/passwd"] = "permission_denied"
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(TransferFailed, match="/etc/passwd") as info:
        put(address, src, "/etc/passwd")
    assert info.value.code == "permission_denied"
    dest = tmp_path / "dest"
    dest.write_bytes(b"mine")
    with pytest.raises(TransferFailed, match="/missing: No such file") as info:
        get(address, "/missing", dest)
    assert info.value.code == "not_found"
    assert dest.read_bytes() == b"mine" and leftovers(tmp_path) == []
    with pytest.raises(LocalFileError, match="not_there"):
        put(address, tmp_path / "not_there", "/srv/x")


@DRIVERS
@pytest.mark.parametrize("size", [100_000, 5 * 1024 * 1024], ids=["small", "pipelined"])
def test_a_corrupted_get_leaves_the_destination_untouched(peer: tuple[Peer, str],
                                                          tmp_path: Path, put: Any,
                                                          get: Any, size: int) -> None:
    scripted, address = peer
    scripted.files["/srv/f"] = Stored(os.urandom(size))
    scripted.corrupt_get = True
    dest = tmp_path / "dest"
    dest.write_bytes(b"mine")
    with pytest.raises(ProtocolError, match="SHA-256"):
        get(address, "/srv/f", dest)
    assert dest.read_bytes() == b"mine" and leftovers(tmp_path) == []


@DRIVERS
def test_a_version_2_server_is_told_to_upgrade(peer: tuple[Peer, str], tmp_path: Path,
                                               put: Any, get: Any) -> None:
    scripted, address = peer
    scripted.version = 2
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(ProtocolError, match=f"the server at {address} speaks protocol version"
                                            " 2, without file transfer"):
        put(address, src, "/srv/f")
    with pytest.raises(ProtocolError, match="upgrade rexec-server"):
        get(address, "/srv/f", tmp_path / "g")


def test_a_source_failing_midway_cancels_and_the_connection_goes_on(
        peer: tuple[Peer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rexec.client import transfer

    scripted, address = peer
    src = tmp_path / "f"
    src.write_bytes(os.urandom(3 * f.MAX_BODY_SIZE))
    real_read = transfer.LocalSource.read
    calls = []

    def failing_read(self: transfer.LocalSource, size: int) -> bytes:
        calls.append(size)
        if len(calls) == 2:
            raise LocalFileError("f: the file shrank", "changed_while_reading", str(src))
        return real_read(self, size)

    real_read_into = transfer.LocalSource.read_into

    def failing_read_into(self: transfer.LocalSource, buffer: memoryview) -> memoryview:
        calls.append(len(buffer))
        if len(calls) == 2:
            raise LocalFileError("f: the file shrank", "changed_while_reading", str(src))
        return real_read_into(self, buffer)

    # the blocking client reads into a buffer of its own (read_into), the async one reads
    monkeypatch.setattr(transfer.LocalSource, "read_into", failing_read_into)
    with BlockingClient(address, token=TOKEN) as client:
        with pytest.raises(LocalFileError, match="shrank"):
            client.put(src, "/srv/f")
        monkeypatch.setattr(transfer.LocalSource, "read_into", real_read_into)
        assert client.put(src, "/srv/f").changed  # the same connection, ready again
    calls.clear()

    async def main() -> None:
        monkeypatch.setattr(transfer.LocalSource, "read", failing_read)
        calls.clear()
        async with Client(address, token=TOKEN) as client:
            with pytest.raises(LocalFileError, match="shrank"):
                await client.put(src, "/srv/g", force=True)
            monkeypatch.setattr(transfer.LocalSource, "read", real_read)
            assert (await client.put(src, "/srv/g")).changed

    asyncio.run(main())
    assert "/srv/g" in scripted.files


def test_a_cancel_requested_while_the_source_is_hashed_is_kept(peer: tuple[Peer, str],
                                                               tmp_path: Path) -> None:
    """Ctrl-C in `rexec put` may come while LOCAL is hashed, before the put is sent."""
    _, address = peer
    src = tmp_path / "f"
    src.write_bytes(os.urandom(3 * f.MAX_BODY_SIZE))
    with BlockingClient(address, token=TOKEN) as client:
        from rexec.client import transfer

        real_open = transfer.LocalSource.open

        def open_and_interrupt(path: Any, **options: Any) -> transfer.LocalSource:
            source = real_open(path, **options)
            client.request_cancel()
            return source

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(transfer.LocalSource, "open", open_and_interrupt)
            with pytest.raises(TransferFailed) as info:
                client.put(src, "/srv/f")
        assert info.value.code == "cancelled"
        assert client.put(src, "/srv/f").changed  # the connection goes on


def test_a_pipelined_get_is_received_into_a_few_buffers_used_again(
        peer: tuple[Peer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large get's chunks are received straight into the pipeline's own buffers, hashed and
    written from there, and the buffers go round: no chunk copied, no more buffers made than
    the queues can hold, whatever the file's size; the file is intact."""
    from rexec.client import transfer
    from rexec.client.blocking import PIPELINE_BUFFERS

    scripted, address = peer
    chunks = 3 * PIPELINE_BUFFERS
    data = os.urandom(chunks * f.MAX_BODY_SIZE + 12345)
    scripted.files["/srv/big"] = Stored(data)
    real, seen = transfer.AtomicWriter.write, []

    def write(self: transfer.AtomicWriter, chunk: bytes | memoryview, *,
              aligned: bool = False) -> None:
        seen.append(chunk.obj if isinstance(chunk, memoryview) else chunk)
        real(self, chunk, aligned=aligned)

    monkeypatch.setattr(transfer.AtomicWriter, "write", write)
    with BlockingClient(address, token=TOKEN) as client:
        done = client.get("/srv/big", tmp_path / "big")
        assert done.sha256 == hashlib.sha256(data).hexdigest()
        again = client.get("/srv/big", tmp_path / "again")  # the connection as it was
    assert (tmp_path / "big").read_bytes() == data == (tmp_path / "again").read_bytes()
    assert again.bytes == len(data)
    first = seen[: len(seen) // 2]
    owned = [b for b in first if isinstance(b, mmap.mmap)]
    assert len(owned) >= chunks  # every whole chunk in a buffer of the pipeline's
    assert len({id(b) for b in owned}) <= PIPELINE_BUFFERS  # ... and those went round


def test_a_pipelined_get_whose_writes_fail_leaves_nothing_and_the_connection_goes_on(
        peer: tuple[Peer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A large get is hashed and written on a thread of its own: its failure (a full disk,
    # say) reaches the receiving thread, the download is abandoned, the connection kept.
    from rexec.client import transfer

    scripted, address = peer
    data = os.urandom(6 * f.MAX_BODY_SIZE)
    scripted.files["/srv/big"] = Stored(data)
    scripted.files["/srv/small"] = Stored(b"still here")
    real, calls = transfer.AtomicWriter.write, []

    def write(self: transfer.AtomicWriter, chunk: bytes | memoryview, *,
              aligned: bool = False) -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise LocalFileError("no space left on device", "no_space")
        real(self, chunk, aligned=aligned)

    monkeypatch.setattr(transfer.AtomicWriter, "write", write)
    with BlockingClient(address, token=TOKEN) as client:
        with pytest.raises(LocalFileError, match="no space") as info:
            client.get("/srv/big", tmp_path / "big")
        assert info.value.code == "no_space"
        assert set(calls) == {"rexec-get-writer"}  # written off the receiving thread
        monkeypatch.setattr(transfer.AtomicWriter, "write", real)
        client.get("/srv/small", tmp_path / "small")
    assert not (tmp_path / "big").exists() and leftovers(tmp_path) == []
    assert (tmp_path / "small").read_bytes() == b"still here"
