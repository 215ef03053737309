"""The asyncio side of the wire: a framed stream over asyncio's StreamReader and StreamWriter.

Socket errors become ConnectionLost through ``rexec.errors.map_socket_errors``.
"""

from __future__ import annotations

import asyncio
import ssl

from rexec.codec import Frame
from rexec.errors import ConnectionLost, map_socket_errors
from rexec.frames import Header
from rexec.protocol import Connection, Role

READ_SIZE = 256 * 1024
STREAM_LIMIT = 1024 * 1024
WRITE_HIGH_WATER = 1024 * 1024
CLOSE_TIMEOUT = 2.0


def format_peer(writer: asyncio.StreamWriter) -> str:
    """host:port of the peer ([host]:port for IPv6)."""
    peer = writer.get_extra_info("peername")
    if not peer:
        return "unknown"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FramedStream:
    """Frames over an asyncio stream pair, checked by a protocol Connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: Role
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = Connection(role)
        self.peer = format_peer(writer)
        self.received = 0  # bytes read from the socket, for "lost after N bytes" messages
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    async def receive(self) -> Frame:
        """The next frame from the peer; ConnectionLost if it closed first."""
        while True:
            frame = self.conn.next_frame()
            if frame is not None:
                return frame
            with map_socket_errors("connection broken", self.received):
                data = await self.reader.read(READ_SIZE)
            if not data:
                self.conn.receive_eof()
                frame = self.conn.next_frame()  # raises if the peer left half a frame
                if frame is not None:
                    return frame
                raise ConnectionLost(
                    f"the peer closed the connection after {self.received} bytes", self.received
                )
            self.received += len(data)
            self.conn.receive_data(data)

    def send(self, header: Header, body: bytes | bytearray | memoryview = b"") -> None:
        """Queue one frame for sending (call ``drain`` to wait for room).

        The body is written on its own, not joined to the header: the transport sends it at once
        or copies what it cannot send, so the caller may reuse ``body``'s buffer right after.
        """
        self.writer.write(self.conn.send_prefix(header, len(body)))
        if body:
            self.writer.write(body)

    async def drain(self) -> None:
        """Wait until the send buffer is below its high-water mark."""
        with map_socket_errors("connection broken while sending", self.received):
            await self.writer.drain()

    @property
    def closing(self) -> bool:
        """Whether the underlying transport is closing or closed."""
        return self.writer.is_closing()

    async def close(self, flush_timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connection, giving queued bytes ``flush_timeout`` seconds to leave.

        A peer that stops reading would otherwise keep a graceful close waiting forever.
        """
        self.writer.close()
        try:
            async with asyncio.timeout(flush_timeout):
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except (OSError, ssl.SSLError):
            pass
