"""FramedStream before authentication: an unauthenticated peer's bytes wait in the kernel.

A real loopback connection into an in-process asyncio server; the client sends a hello, then
pours far more than any handshake frame. The server side must hold only a few KiB of it until
``authenticated()``, then read at full size again: with the StreamReader's own flow control
(CPython's asyncio), and with the transport paused between frames where that is missing.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from rexec.server import stream as stream_module
from rexec.server.stream import HANDSHAKE_READ, FramedStream
from rexec.sockets import STREAM_LIMIT
from rexec.wire.codec import encode
from rexec.wire.frames import Hello
from rexec.wire.protocol import Role

POUR = 2 * 1024 * 1024
HELD_AT_MOST = 4 * HANDSHAKE_READ  # the reader: twice its lowered limit and one recv();
# the decoder: the rest of one read


def hello_bytes() -> bytes:
    return encode(Hello(versions=[1], nonce="ab" * 32, agent="test/1"))


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
        stream.authenticated()
        seen["limit"] = reader._limit  # type: ignore[attr-defined]
        got = stream.conn.buffered  # what came in the hello's reads
        while got < POUR and (data := await reader.read(1024 * 1024)):
            got += len(data)
        seen["after"] = got
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=STREAM_LIMIT)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(client, hello_bytes() + b"\0" * POUR)
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
    assert seen["first"] == "hello"
    assert seen["buffered"] <= HELD_AT_MOST, seen  # the rest of 2 MiB waits in the kernel
    assert seen["reading"] is False, seen  # paused: by flow control, or between frames
    assert seen["limit"] == STREAM_LIMIT  # given back at authentication (or never lowered)
    # after authentication nothing is lost: the bytes after the hello arrive, all of them
    assert seen["after"] == POUR, seen
