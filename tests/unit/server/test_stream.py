"""FramedStream on a real loopback connection into an in-process asyncio server.

Before authentication an unauthenticated peer's bytes wait in the kernel: the client sends a
hello, then pours far more than any handshake frame, and the server side must hold only a few
KiB of it until ``authenticated()``, with the StreamReader's own flow control (CPython's
asyncio), and with the transport paused between frames where that is missing. After it, the
socket is received straight into the decoder: frames split anywhere (in plaintext and in TLS)
arrive whole, detached bodies stay intact while kept, and a server holding a frame reads no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rexec.errors import ConnectionLost
from rexec.server import stream as stream_module
from rexec.server.stream import DETACH_AT, HANDSHAKE_READ, FramedStream
from rexec.sockets import STREAM_LIMIT
from rexec.tls import client_context, server_context
from rexec.wire.codec import RECEIVE_SIZE, encode
from rexec.wire.frames import Auth, AuthOk, Challenge, FileData, Hello
from rexec.wire.protocol import Role
from tests.helpers import write_server_pki

POUR_SIZES = [1024 * 1024, 1000, 64 * 1024, 64 * 1024 - 1, 300 * 1024, 7, 600 * 1024 - 8]
POUR = sum(POUR_SIZES)  # 2 MiB of file_data frames, detached and not
HELD_AT_MOST = 4 * HANDSHAKE_READ  # the reader: twice its lowered limit and one recv();
# the decoder: the rest of one read
NONCE = "ab" * 32


def hello_bytes() -> bytes:
    return encode(Hello(versions=[1], nonce=NONCE, agent="test/1"))


def pour_bytes() -> bytes:
    """The auth frame, then POUR bytes of file_data (late ones, which READY allows)."""
    frames = [encode(Auth(mac=NONCE))]
    frames += [encode(FileData(size=size), bytes([i]) * size) for i, size in enumerate(POUR_SIZES)]
    return b"".join(frames)


async def scenario() -> dict[str, Any]:
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = FramedStream(reader, writer, Role.SERVER, handshake=True)
        frame = await stream.receive()
        seen["first"] = frame.header.type
        await asyncio.sleep(0.5)  # the client pours meanwhile (a login penalty, say)
        buffered = len(reader._buffer)  # type: ignore[attr-defined]
        seen["buffered"] = buffered + stream.conn.buffered
        seen["reading"] = writer.transport.is_reading()  # type: ignore[attr-defined]
        stream.send(Challenge(version=1, nonce=NONCE))
        seen["second"] = (await stream.receive()).header.type
        stream.send(AuthOk(mac=NONCE))
        stream.authenticated()
        seen["limit"] = reader._limit  # type: ignore[attr-defined]
        bodies = []
        while sum(len(body) for body in bodies) < POUR:
            frame = await stream.receive()
            bodies.append(bytes(frame.body))
        seen["bodies"] = bodies
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=STREAM_LIMIT)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(client, hello_bytes() + pour_bytes())
        await asyncio.wait_for(done.wait(), 30)
    finally:
        client.close()
        server.close()
        await server.wait_closed()
    return seen


@pytest.mark.parametrize("without_limit", [False, True], ids=["flow-control", "paused"])
def test_an_unauthenticated_peer_is_held_to_a_few_kib_then_read_in_full(
        without_limit: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if without_limit:  # as on an asyncio whose StreamReader keeps no _limit
        monkeypatch.setattr(stream_module, "reader_limit", lambda reader: None)
    seen = asyncio.run(scenario())
    assert seen["first"] == "hello" and seen["second"] == "auth"
    assert seen["buffered"] <= HELD_AT_MOST, seen  # the rest of 2 MiB waits in the kernel
    assert seen["reading"] is False, seen  # paused: by flow control, or between frames
    assert seen["limit"] == STREAM_LIMIT  # given back at authentication (or never lowered)
    # after authentication nothing is lost: the frames after the auth arrive, all of them,
    # whole and in order, whether the StreamReader held their start or the socket did
    assert seen["bodies"] == [bytes([i]) * size for i, size in enumerate(POUR_SIZES)]


# --- after authentication: the socket straight into the decoder -------------------------------

TRICKLE_SIZES = [70 * 1024, 10, DETACH_AT, DETACH_AT - 1, 1024 * 1024, 5, 200 * 1024]
POURED = 4 * 1024 * 1024  # sent while the server holds a frame and reads nothing


def handshake_bytes() -> bytes:
    return hello_bytes() + encode(Auth(mac=NONCE))


def file_data(sizes: list[int], seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for size in sizes]


async def authenticate(stream: FramedStream, tls: ssl.SSLContext | None) -> None:
    """The server's half of a handshake, minus the checks: hello, challenge, auth, auth_ok."""
    if tls is not None:
        await stream.accept_tls(tls)
    assert (await stream.receive()).header.type == "hello"
    stream.send(Challenge(version=1, nonce=NONCE))
    assert (await stream.receive()).header.type == "auth"
    stream.send(AuthOk(mac=NONCE))
    stream.authenticated()


def contexts(use_tls: bool, tmp_path: Path) -> tuple[ssl.SSLContext | None,
                                                     ssl.SSLContext | None]:
    """The server's and the client's TLS contexts, or (None, None) for plaintext."""
    if not use_tls:
        return None, None
    ca, cert, key = write_server_pki(tmp_path)
    return server_context(cert, key), client_context(ca)


@contextlib.asynccontextmanager
async def connected(serve: Any, client_tls: ssl.SSLContext | None
                    ) -> AsyncIterator[asyncio.StreamWriter]:
    """A loopback server running ``serve`` and a client connection to it (its writer)."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=STREAM_LIMIT)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_tls, server_hostname="127.0.0.1" if client_tls else None)
    try:
        yield writer
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def received_after_authentication(tls: ssl.SSLContext | None,
                                        client_tls: ssl.SSLContext | None) -> dict[str, Any]:
    """Trickle frames to an authenticated FramedStream in pieces of every size from 1 byte to
    8 KiB (each its own TLS record in TLS), then pour while it holds a frame; what it saw."""
    seen: dict[str, Any] = {}
    done = asyncio.Event()
    bodies = file_data(TRICKLE_SIZES, 1)
    wire = b"".join(encode(FileData(size=len(b)), b) for b in bodies)
    poured = file_data([1024 * 1024] * (POURED // (1024 * 1024)), 2)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            stream = FramedStream(reader, writer, Role.SERVER, handshake=True)
            await authenticate(stream, tls)
            seen["receiver"] = type(writer.transport.get_protocol()).__name__
            kept = []  # detached bodies kept as they are, the others copied
            for _ in bodies:
                frame = await stream.receive()
                kept.append(frame.body if frame.detached else bytes(frame.body))
            seen["detached"] = [len(b) >= DETACH_AT for b in bodies]
            seen["bodies"] = [bytes(b) for b in kept]
            first = await stream.receive()
            await asyncio.sleep(0.5)  # the client pours meanwhile: it must wait in the kernel
            seen["held"] = stream.conn.buffered
            rest = [bytes(first.body)]
            while len(rest) < len(poured):
                rest.append(bytes((await stream.receive()).body))
            seen["poured"] = rest == poured
            with pytest.raises(ConnectionLost, match="closed the connection"):
                await stream.receive()
            await stream.close()
        finally:
            done.set()

    async with connected(serve, client_tls) as writer:
        writer.write(handshake_bytes())
        rng, pos = random.Random(3), 0
        while pos < len(wire):
            size = rng.randint(1, 8192) if rng.random() < 0.7 else rng.randint(1, 16)
            writer.write(wire[pos : pos + size])
            await writer.drain()
            await asyncio.sleep(0)  # one piece at a time: one read, one TLS record each
            pos += size
        for body in poured:
            writer.write(encode(FileData(size=len(body)), body))
        await writer.drain()
        if client_tls is None:
            writer.write_eof()
        else:
            writer.close()  # TLS's close_notify: the end of the stream there
        await asyncio.wait_for(done.wait(), 60)
    seen["expected"] = bodies
    return seen


@pytest.mark.parametrize("use_tls", [False, True], ids=["plaintext", "tls"])
def test_after_authentication_frames_split_anywhere_arrive_whole(use_tls: bool,
                                                                 tmp_path: Path) -> None:
    seen = asyncio.run(received_after_authentication(*contexts(use_tls, tmp_path)))
    assert seen["receiver"] == "Receiver"  # the StreamReader stepped aside
    assert seen["bodies"] == seen["expected"]  # detached ones intact though kept uncopied
    assert seen["detached"] == [True, False, True, False, True, False, True]
    # holding a frame, it read at most the rest of one read: the pour waited in the kernel
    assert seen["held"] <= 2 * RECEIVE_SIZE, seen["held"]
    assert seen["poured"] is True


async def requests_then_an_early_one(tls: ssl.SSLContext | None,
                                     client_tls: ssl.SSLContext | None) -> dict[str, Any]:
    """Request-sized frames one at a time, apart; then, while the server holds the last (its
    body a view into the decoder's buffer), the client sends the next ones early."""
    seen: dict[str, Any] = {}
    done = asyncio.Event()
    small = file_data([300, 5, 2000], 5)
    early = file_data([700, 40_000, 90_000, 3], 6)  # more than one STASH read in all

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            stream = FramedStream(reader, writer, Role.SERVER, handshake=True)
            await authenticate(stream, tls)
            reading = []
            for _ in small[:-1]:
                await stream.receive()
                reading.append(writer.transport.is_reading())  # type: ignore[attr-defined]
            held = await stream.receive()  # not detached: a view of the decoder's buffer
            await asyncio.sleep(0.5)  # the early frames come meanwhile
            seen["paused"] = not writer.transport.is_reading()  # type: ignore[attr-defined]
            seen["held"] = bytes(held.body)  # intact: nothing was received over it
            seen["reading"] = reading
            seen["early"] = [bytes((await stream.receive()).body) for _ in early]
            await stream.close()
        finally:
            done.set()

    async with connected(serve, client_tls) as writer:
        writer.write(handshake_bytes())
        for body in small:
            await asyncio.sleep(0.1)  # one at a time: each read ends with its frame
            writer.write(encode(FileData(size=len(body)), body))
            await writer.drain()
        await asyncio.sleep(0.1)  # the server holds the last one by now
        for body in early:
            writer.write(encode(FileData(size=len(body)), body))
            await writer.drain()
        await asyncio.wait_for(done.wait(), 30)
    seen["small"], seen["expected"] = small, early
    return seen


@pytest.mark.parametrize("use_tls", [False, True], ids=["plaintext", "tls"])
def test_bytes_that_come_while_a_frame_is_held_are_kept_aside(use_tls: bool,
                                                              tmp_path: Path) -> None:
    seen = asyncio.run(requests_then_an_early_one(*contexts(use_tls, tmp_path)))
    # a read that ended a small frame left the socket registered: no epoll_ctl to pause it
    assert seen["reading"] == [True, True]
    assert seen["paused"] is True  # bytes came while no one waited: kept aside, then paused
    assert seen["held"] == seen["small"][-1]
    assert seen["early"] == seen["expected"]
