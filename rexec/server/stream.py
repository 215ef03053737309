"""The asyncio side of the wire: a framed stream over asyncio's StreamReader and StreamWriter.

On the server, TLS runs here over memory BIOs rather than inside asyncio, for two reasons: the
first byte a client sends tells a TLS client from a plaintext one, so a plaintext client can be
told in its own language that TLS is required; and the TLS handshake then falls inside the same
pre-authentication deadline as the rexec handshake. Socket errors become ConnectionLost through
``rexec.errors.map_socket_errors``; TLS errors become ConnectionLost here.

Until the client is authenticated (``handshake=True`` until ``authenticated()``), the server
reads its socket HANDSHAKE_READ bytes at a time, holds at most about four times that, and caps
its headers at HANDSHAKE_MAX_HEADER: whatever more an unauthenticated client sends meanwhile (in
the failed-login penalty, say) waits in the kernel, not in the server's memory.

Once it is authenticated, the StreamReader steps aside (``Receiver``): the socket is received
straight into the frame decoder's buffer, or in TLS into one buffer that is decrypted straight
into it, and a large body (an upload's ``file_data``) into a buffer of its own that is handed on
as it is. Each byte is then copied once by the kernel (and once more into TLS), not four times,
and the socket is read only while a frame is awaited and incomplete, so an authenticated client
has at most one frame and one read in the server's memory beyond what it has been given credit
for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from typing import Any, cast

from rexec.errors import ConnectionLost, ProtocolError, map_socket_errors
from rexec.sockets import KEEPALIVE, READ_SIZE, tune
from rexec.tls import TLS_HANDSHAKE_RECORD, Subject, format_subject, subject_of
from rexec.wire.codec import Frame
from rexec.wire.frames import HANDSHAKE_MAX_HEADER, Error, Header
from rexec.wire.protocol import Connection, Role

HANDSHAKE_READ = 4 * 1024
"""The most one read takes from an unauthenticated client's socket (hello and auth are small)."""
WRITE_HIGH_WATER = 1024 * 1024
CLOSE_TIMEOUT = 2.0
JOIN_LIMIT = 64 * 1024
"""Bodies up to this size go out in one write with their header (copying them is cheaper)."""
DETACH_AT = 64 * 1024
"""Bodies from this size on are received into buffers of their own, kept without a copy."""
TLS_RECEIVE = 256 * 1024
"""The most TLS bytes one receive takes from the socket, after authentication."""
SMALL_RECEIVE = 16 * 1024
"""What a connection's first read after authentication asks for (see ``Receiver``)."""
STASH = 64 * 1024
"""The most one read takes while no one waits for it (``Receiver``): kept aside, then decoded."""
SPLICE = hasattr(os, "splice")
"""Whether this platform moves bytes between descriptors in the kernel (Linux's splice)."""
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
TLS_REQUIRED = (
    "this server requires TLS: connect with --tls-ca CAFILE (or tls_ca in the client config)"
)


class TLSHandshakeFailed(ConnectionLost):
    """A client's TLS handshake failed (bad certificate, no certificate, garbage)."""


def reader_limit(reader: asyncio.StreamReader) -> int | None:
    """The StreamReader's flow-control limit, where it keeps one as CPython's does."""
    limit = getattr(reader, "_limit", None)
    return limit if isinstance(limit, int) else None


def format_peer(writer: asyncio.StreamWriter) -> str:
    """host:port of the peer ([host]:port for IPv6)."""
    peer = writer.get_extra_info("peername")
    if not peer:
        return "unknown"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FramedStream:
    """Frames over an asyncio stream pair, checked by a protocol Connection, optionally in TLS."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: Role,
        keepalive: float = KEEPALIVE, *, handshake: bool = False, splice: bool = True,
    ) -> None:
        # handshake: the peer is not authenticated yet, so it is read sparingly until
        # authenticated() (see the module's docstring)
        self.reader = reader
        self.writer = writer
        self.conn = Connection(role, handshake_max_header=HANDSHAKE_MAX_HEADER if handshake
                               else None, detach_at=DETACH_AT)
        self.peer = format_peer(writer)
        peername = writer.get_extra_info("peername")
        self.peer_host: str = peername[0] if peername else "unknown"
        self.peer_port: int = peername[1] if peername else 0
        sockname = writer.get_extra_info("sockname")
        self.local_port: int = sockname[1] if isinstance(sockname, tuple) else 0
        self.received = 0  # bytes read from the socket, for "lost after N bytes" messages
        self.peer_subject: Subject | None = None  # the verified client certificate's subject
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls_eof = False
        self._tls_backlog = False  # TLS may hold data a sparing _decrypt() left there
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            tune(sock, keepalive)
        # A socket transport reads too; StreamWriter's annotation only promises writing.
        self._transport = cast(asyncio.Transport, writer.transport)
        self._sparing = False  # unauthenticated: read HANDSHAKE_READ at a time, bounded
        self._max_size: int | None = None  # the transport's own recv() size, while lowered
        self._limit: int | None = None  # the StreamReader's own limit, while lowered
        self._paused = False  # the transport paused, read only while a frame is awaited
        self._receiver: Receiver | None = None  # after authentication: reads into the decoder
        # send_spliced(): a body going from a pipe to the socket, and the frames held meanwhile
        self._splice = splice and SPLICE
        self._splicing: asyncio.Future[None] | None = None
        self._held: list[bytes] = []
        self._socket_waiter: asyncio.Future[None] | None = None
        self._out: socket.socket | None = None  # the socket's own descriptor for splicing
        self._over = False  # the connection ended (the transport's socket is closed)
        if handshake:
            self._start_sparing_reads()

    def _start_sparing_reads(self) -> None:
        self._sparing = True
        # asyncio has no public way to bound one recv(): the selector transport recv()s up to
        # its max_size (a class attribute, 256 KiB) per call. Lowered on this transport alone,
        # and only where it exists; elsewhere a read is still bounded, by that transport.
        transport: Any = self._transport
        max_size = getattr(transport, "max_size", None)
        if isinstance(max_size, int) and max_size > HANDSHAKE_READ:
            self._max_size = max_size
            transport.max_size = HANDSHAKE_READ
        # The StreamReader's own flow control pauses the transport once it holds more than
        # twice its limit, and resumes it when a read takes it back to the limit: with the
        # limit lowered to HANDSHAKE_READ, an unauthenticated client has at most about 16 KiB
        # in the server's memory (two limits and one recv in the reader, the rest of a read in
        # the frame decoder), at no cost to a well-behaved one, whose small frames never come
        # near it. Where StreamReader keeps no ``_limit`` (not CPython's asyncio), the
        # transport is paused instead, and read only while a frame is awaited
        # (``_read_sparingly``).
        limit = reader_limit(self.reader)
        if limit is not None and limit > HANDSHAKE_READ:
            self._limit = limit
            cast(Any, self.reader)._limit = HANDSHAKE_READ
        else:
            # The server makes its stream in the connection's first task step: the
            # transport's first read, if the socket is readable already, is queued behind
            # that step, and pausing cancels it.
            self._transport.pause_reading()
            self._paused = True

    def authenticated(self) -> None:
        """The peer is authenticated: read it as fast as it sends, as before the handshake."""
        # (The Connection raised its header cap itself when it reached READY.)
        if not self._sparing:
            return
        self._sparing = False
        if self._max_size is not None:
            transport: Any = self._transport
            transport.max_size = self._max_size
            self._max_size = None
        if self._limit is not None:
            reader: Any = self.reader
            reader._limit = self._limit  # a transport it paused resumes at its next read
            self._limit = None
        if self._paused:
            # The StreamReader never paused the transport itself meanwhile: that takes more
            # than twice its limit (2 MiB) buffered, and it never held more than one small
            # read. So resuming here cannot undo its own flow control.
            self._paused = False
            self._transport.resume_reading()
        self._receive_directly()

    def _receive_directly(self) -> None:
        """Put a ``Receiver`` in the StreamReader's place, taking over what it holds.

        Only over CPython's StreamReader, whose buffer it can take, and only while the peer is
        still there; otherwise the stream goes on reading through the StreamReader.
        """
        reader: Any = self.reader
        held = getattr(reader, "_buffer", None)
        if (not isinstance(held, bytearray) or getattr(reader, "_eof", True)
                or reader.exception() is not None or self.writer.is_closing()):
            return
        transport = self._transport
        self._receiver = Receiver(self, transport.get_protocol())
        transport.pause_reading()  # from now on read only while a frame is awaited
        transport.set_protocol(self._receiver)
        if held:
            data = bytes(held)
            held.clear()
            if self._tls is None:
                self.conn.receive_data(data)
            else:
                self._incoming.write(data)
                self._tls_backlog = True

    async def _read_raw(self) -> bytes:
        if self._sparing:
            data = await self._read_sparingly()
        else:
            with map_socket_errors("connection broken", self.received):
                data = await self.reader.read(READ_SIZE)
        self.received += len(data)
        return data

    async def _read_sparingly(self) -> bytes:
        """Before authentication: at most HANDSHAKE_READ bytes, the transport read only now
        if it is paused (see ``_start_sparing_reads``).

        The StreamReader resumes a transport only if it paused it itself, so waiting on it
        with the transport paused would hang: the transport reads from here to the next data,
        and is paused again before anything else runs.
        """
        if not self._paused:
            with map_socket_errors("connection broken", self.received):
                return await self.reader.read(HANDSHAKE_READ)
        self._transport.resume_reading()
        try:
            with map_socket_errors("connection broken", self.received):
                return await self.reader.read(HANDSHAKE_READ)
        finally:
            self._transport.pause_reading()  # a no-op on a closing transport

    def _flush_tls(self) -> None:
        data = self._outgoing.read()
        if data:
            self.writer.write(data)

    async def accept_tls(self, context: ssl.SSLContext) -> None:
        """Server side: complete the TLS handshake, or tell a plaintext client TLS is required."""
        first = await self._read_raw()
        if not first:
            raise ConnectionLost("the client closed the connection before the TLS handshake")
        if first[0] != TLS_HANDSHAKE_RECORD:
            self.writer.write(self.conn.send(Error(code="tls_required", message=TLS_REQUIRED)))
            raise ProtocolError("a plaintext client connected to this TLS server", "tls_required")
        self._tls = tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._incoming.write(first)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_tls()
                data = await self._read_raw()
                if not data:
                    raise ConnectionLost(
                        "the client closed the connection in the TLS handshake") from None
                self._incoming.write(data)
            except ssl.SSLError as exc:
                self._flush_tls()  # the alert tells the client why
                raise TLSHandshakeFailed(f"TLS handshake failed: {exc.reason or exc}") from None
        self._flush_tls()
        self.peer_subject = subject_of(tls.getpeercert())
        # Application data may have come in the same read as the end of the handshake: it is
        # inside the TLS object already, and the socket will not signal it again.
        self._decrypt()

    def _decrypt(self) -> int:
        """Pass what TLS can decrypt to the connection; return how many bytes that was.

        Before authentication at most HANDSHAKE_READ: the rest waits in the TLS object (which
        holds at most the one 16 KiB record it is decrypting) and in the incoming BIO, and
        ``_tls_backlog`` says so.
        """
        assert self._tls is not None
        fed = 0
        self._tls_backlog = False
        while not self._sparing or fed < HANDSHAKE_READ:
            try:
                data = self._tls.read(HANDSHAKE_READ - fed if self._sparing else READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:  # a corrupted or forged record, among others
                raise ConnectionLost(f"TLS error: {exc.reason or exc}", self.received) from None
            if not data:  # read() returns b"" (not SSLZeroReturnError) at the peer's close_notify
                self._tls_eof = True
                break
            fed += len(data)
            self.conn.receive_data(data)
        else:  # stopped at the limit, not because TLS has nothing more
            self._tls_backlog = True
        self._flush_tls()  # TLS 1.3 may answer (key updates) while reading
        return fed

    def _decrypt_into(self) -> int:
        """After authentication: decrypt straight into the decoder's buffer; return how many
        bytes that was.

        It goes on while the frame being received needs more, and stops once it may be whole
        (the reader takes it first: a detached body's buffer is full, a peek may hold the next
        header): what TLS still holds then is ``_tls_backlog``, as after a sparing pass.
        """
        assert self._tls is not None
        tls, fed = self._tls, 0
        self._tls_backlog = False
        try:
            while not self._tls_eof:
                if fed and not self.conn.incomplete:
                    self._tls_backlog = True
                    break
                # as much room as what waits to be decrypted, not a full read's every time
                waiting = self._incoming.pending + tls.pending()
                buffer = self.conn.get_buffer(max(SMALL_RECEIVE, min(waiting, TLS_RECEIVE)))
                filled = 0
                try:
                    while filled < len(buffer):
                        count = cast(int, tls.read(len(buffer) - filled, buffer[filled:]))
                        if not count:  # read() returns 0 at the peer's close_notify
                            self._tls_eof = True
                            break
                        filled += count
                finally:
                    self.conn.buffer_updated(filled)
                    fed += filled
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:  # a corrupted or forged record, among others
            raise ConnectionLost(f"TLS error: {exc.reason or exc}", self.received) from None
        self._flush_tls()  # TLS 1.3 may answer (key updates) while reading
        return fed

    def _pump_tls(self) -> int:
        """Pass what TLS holds already to the connection (a backlog the socket will not
        signal); return how many bytes that was."""
        return self._decrypt() if self._receiver is None else self._decrypt_into()

    async def receive(self) -> Frame:
        """The next frame from the peer; ConnectionLost if it closed first.

        A frame's body is valid until the next call (a ``detached`` one for good).
        """
        while True:
            frame = self.conn.next_frame()
            if frame is not None:
                return frame
            if self._tls_backlog and self._pump_tls():
                continue  # what TLS holds already: the socket will not signal it
            if not await self._receive_more():
                self.conn.receive_eof()
                frame = self.conn.next_frame()  # raises if the peer left half a frame
                if frame is not None:
                    return frame
                raise ConnectionLost(
                    f"the peer closed the connection after {self.received} bytes", self.received
                )

    async def _receive_more(self) -> bool:
        """Wait for more of the peer's bytes and give them to the connection; False if it
        closed instead."""
        if self._receiver is not None:
            return await self._receiver.receive_more()
        data = b"" if self._tls_eof else await self._read_raw()
        if not data:
            return False
        if self._tls is None:
            self.conn.receive_data(data)
        else:
            self._incoming.write(data)
            self._decrypt()
        return True

    def send(self, header: Header, body: bytes | bytearray | memoryview = b"") -> None:
        """Queue one frame for sending (call ``drain`` to wait for room).

        A small body is joined to the header (one send, one TLS record, one wake-up of the
        peer); a large one is written on its own rather than copied. Either way the transport
        sends at once or copies what it cannot send, so the caller may reuse ``body``'s buffer
        right after. While a spliced body is going out (``send_spliced``) the frame is held,
        and sent right after it.
        """
        prefix = self.conn.send_prefix(header, len(body))
        if 0 < len(body) <= JOIN_LIMIT:
            prefix += body
            body = b""
        if self._splicing is not None:
            self._held.append(bytes(prefix) + bytes(body))
            return
        if self._tls is not None:
            self._tls.write(prefix)
            if body:
                self._tls.write(body)
            self._flush_tls()
            return
        self.writer.write(prefix)
        if body:
            self.writer.write(body)

    async def drain(self) -> None:
        """Wait until the send buffer is below its high-water mark (and a spliced body, with
        the frames held behind it, is out)."""
        while self._splicing is not None:
            await asyncio.shield(self._splicing)
        with map_socket_errors("connection broken while sending", self.received):
            await self.writer.drain()

    @property
    def splices(self) -> bool:
        """Whether bodies may be spliced from pipes into this connection at all (plaintext on
        Linux, read through a ``Receiver``): ``can_splice`` says whether one may be now."""
        return self._splice and self._tls is None and self._receiver is not None

    def can_splice(self) -> bool:
        """Whether a body may go from a pipe to the socket now (``send_spliced``): plaintext,
        read through a ``Receiver``, nothing queued in the transport ahead of it, and no other
        body on its way."""
        return (self.splices and self._splicing is None and not self.writer.is_closing()
                and self.writer.transport.get_write_buffer_size() == 0)

    async def send_spliced(self, header: Header, pipe: int, size: int) -> None:
        """Send one frame whose body is the next ``size`` bytes waiting in the pipe ``pipe``,
        moved into the socket by the kernel (``os.splice``) rather than read and written.

        Call it only right after ``can_splice()`` said yes, with ``size`` bytes known to wait
        in the pipe and nobody else reading it. The header and body bypass the transport,
        whose buffer is empty; every other frame sent meanwhile is held (``send``) and written
        after the body, so no frame lands inside another. ConnectionLost if the connection
        breaks or ends first: the bytes of the body not yet moved are still in the pipe then.
        """
        loop = asyncio.get_running_loop()
        prefix = memoryview(self.conn.send_prefix(header, size))
        self._splicing = loop.create_future()
        out = self._out_socket()
        fd = out.fileno()
        left = size
        try:
            with map_socket_errors("connection broken while sending", self.received):
                while prefix:
                    try:  # MSG_MORE: the header leaves in one segment with the body's start
                        prefix = prefix[out.send(prefix, socket.MSG_MORE):]
                    except BlockingIOError:
                        await self._socket_writable(loop, fd)
                while left:
                    try:
                        moved = os.splice(pipe, fd, left, flags=SPLICE_FLAGS)
                    except BlockingIOError:
                        await self._socket_writable(loop, fd)
                        continue
                    if not moved:
                        raise ConnectionLost(f"the command's pipe ended {left} bytes before"
                                             " the frame it had announced", self.received)
                    left -= moved
        finally:
            done, self._splicing = self._splicing, None
            held, self._held = self._held, []
            if prefix or left:  # cut off mid-frame (broken, or cancelled): nothing can follow
                self.writer.transport.abort()
            elif not self.writer.is_closing():
                for data in held:
                    self.writer.write(data)
            if self._over:
                self._close_out()
            done.set_result(None)

    def _out_socket(self) -> socket.socket:
        """A descriptor of the connection's socket of its own, kept until the connection ends:
        the event loop will not watch the transport's, and the transport closes that one
        whenever the connection ends. (Held past the end, it would keep the connection open.)
        """
        if self._out is None:
            sock = self.writer.get_extra_info("socket")
            self._out = socket.socket(fileno=os.dup(sock.fileno()))
            self._out.setblocking(False)
        return self._out

    def _close_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    async def _socket_writable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """Wait until the socket has room for more; ConnectionLost if the connection ends."""
        if self.writer.is_closing():
            raise ConnectionLost("the connection was closed while sending", self.received)
        self._socket_waiter = waiter = loop.create_future()

        def writable() -> None:
            if not waiter.done():
                waiter.set_result(None)

        loop.add_writer(fd, writable)
        try:
            await waiter
        finally:
            loop.remove_writer(fd)
            self._socket_waiter = None

    def _ended(self) -> None:
        """The connection ended: a body waiting for room in the socket stops waiting, and the
        socket's own descriptor is closed (at once, or when that body gives up)."""
        self._over = True
        if self._splicing is None:
            self._close_out()
        waiter = self._socket_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                ConnectionLost("the connection was closed while sending", self.received))

    @property
    def peer_subject_text(self) -> str | None:
        """The client certificate's subject as logs write it (RFC 4514 escaping), if any."""
        return None if self.peer_subject is None else format_subject(self.peer_subject)

    @property
    def closing(self) -> bool:
        """Whether the underlying transport is closing or closed."""
        return self.writer.is_closing()

    async def close(self, flush_timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connection, giving queued bytes ``flush_timeout`` seconds to leave.

        A peer that stops reading would otherwise keep a graceful close waiting forever.
        A spliced body on its way is given the same time to finish first.
        """
        if self._splicing is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    await asyncio.shield(self._splicing)
            if self._splicing is not None:
                self.writer.transport.abort()  # _ended() stops it
        if self._tls is not None and not self.writer.is_closing():
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()  # close_notify; the peer's reply is not awaited
            self._flush_tls()
        self.writer.close()
        try:
            async with asyncio.timeout(flush_timeout):
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except (OSError, ssl.SSLError):
            pass


class Receiver(asyncio.BufferedProtocol):
    """The transport's protocol after authentication: the socket straight into the decoder.

    The transport receives into ``get_buffer()``: the decoder's buffer (the rest of a detached
    body, when one is coming), or in TLS one buffer of TLS_RECEIVE bytes that is decrypted
    straight into the decoder's. Only while ``receive_more()`` waits does it receive into the
    decoder, and it goes on until the frame being received may be whole: so the decoder is never
    written while a frame it gave out is in use, and holds at most one frame and one read.

    A read that ended a frame without filling its buffer (a request, the usual case) leaves the
    socket registered for reading: the reader's next ``receive_more()`` mostly follows before
    anything else comes, and then costs no epoll_ctl to resume and none to pause (two a frame:
    a stat on one connection cost the server 523-597 us with them, 447-547 without). Should
    bytes come before it, they are received aside (``STASH`` at most; TLS keeps them
    encrypted) and reading pauses; ``receive_more()`` hands them to the decoder first. A read
    that filled its buffer (a stream, an upload's bodies) pauses at once, as before.

    Writing, ``drain()`` and ``wait_closed()`` go on through the StreamReaderProtocol it
    replaced (``previous``), which it tells of flow control and of the connection's end.
    """

    def __init__(self, stream: FramedStream, previous: asyncio.BaseProtocol) -> None:
        self._stream = stream
        self._conn = stream.conn
        self._previous = cast(asyncio.Protocol, previous)
        self._transport = stream._transport
        self._tls = stream._tls is not None
        # What one read asks for: small while reads are small (a command's frames, an idle
        # connection: a thousand of them then cost no 256 KiB buffer each), doubled each time
        # a read fills it, up to TLS_RECEIVE (a stream, an upload).
        self._want = SMALL_RECEIVE
        self._offered = 0
        self._scratch: memoryview | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._aside: memoryview | None = None  # a read while no one waited: not yet decoded
        self._stashed: memoryview | None = None  # what of it came (plaintext)
        self._received = False  # bytes came in since receive_more() last returned
        self._eof = False  # the peer closed its side of the TCP connection
        self._error: BaseException | None = None  # why the connection broke

    @property
    def _ended(self) -> bool:
        """The peer closed: at the end of the TCP stream, or with TLS's close_notify."""
        return self._eof or self._stream._tls_eof

    async def receive_more(self) -> bool:
        """Wait until the decoder may have a whole frame, or the connection ends; False if the
        peer closed (ConnectionLost if the connection broke) with nothing more received."""
        if self._stashed is not None:  # received while no one waited: the decoder's now
            stashed, self._stashed = self._stashed, None
            self._conn.receive_data(stashed)
            self._received = True
            if not self._conn.incomplete:
                self._received = False
                return True
        if not self._ended and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            self._transport.resume_reading()  # a no-op while still reading
            try:
                await self._waiter
            except BaseException:
                self._transport.pause_reading()  # cancelled; a no-op once closing
                raise
            finally:
                self._waiter = None
        if self._received:
            self._received = False
            return True
        if isinstance(self._error, ConnectionLost):
            raise self._error
        if self._error is not None:
            with map_socket_errors("connection broken", self._stream.received):
                raise self._error
        return False

    def _wake(self, *, pause: bool = True) -> None:
        # Paused first when more is likely to come at once (the read filled its buffer, the
        # connection ended): bytes that do come before the reader waits again are received
        # aside (get_buffer), never into the decoder while it may have a frame in use.
        if pause:
            self._transport.pause_reading()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport receives to: the decoder's buffer, or TLS's; aside (``STASH``
        bytes at most) while no one waits."""
        if self._waiter is None and not self._tls:
            self._aside = memoryview(bytearray(STASH))
            self._offered = STASH
            return self._aside
        if self._tls:
            if self._scratch is None or len(self._scratch) < self._want:
                self._scratch = memoryview(bytearray(self._want))
            buffer = self._scratch
        else:
            buffer = self._conn.get_buffer(self._want)
        self._offered = len(buffer)
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` came in: wake the reader unless the frame being received lacks more."""
        self._stream.received += nbytes
        if self._waiter is None:  # no one waits: keep them aside, read no more till asked
            self._transport.pause_reading()
            if self._tls:
                assert self._scratch is not None
                self._stream._incoming.write(self._scratch[:nbytes])
                self._stream._tls_backlog = True  # receive() decrypts it before it waits
            else:
                assert self._aside is not None and self._stashed is None
                self._stashed, self._aside = self._aside[:nbytes], None
            return
        self._received = True
        filled = nbytes >= self._offered
        if filled and self._want < TLS_RECEIVE:
            self._want = min(2 * self._want, TLS_RECEIVE)  # more was waiting: read more
        if not self._tls:
            self._conn.buffer_updated(nbytes)
        else:
            assert self._scratch is not None
            self._stream._incoming.write(self._scratch[:nbytes])
            try:
                self._stream._decrypt_into()
            except ConnectionLost as exc:
                self._error = exc
        if not self._conn.incomplete or self._ended or self._error is not None:
            self._wake(pause=filled or self._stream._tls_backlog or self._ended
                       or self._error is not None)

    def eof_received(self) -> bool:
        """The peer closed its side: the reader is told once it has what came before."""
        self._previous.eof_received()
        self._eof = True
        self._wake()
        return True  # the transport stays open for what the server still sends

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended: the reader, the writer's drain() and wait_closed() are told."""
        self._previous.connection_lost(exc)
        self._stream._ended()
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()

    def pause_writing(self) -> None:
        """Over the high-water mark: the writer's drain() waits (the StreamReaderProtocol's)."""
        self._previous.pause_writing()

    def resume_writing(self) -> None:
        """Below the low-water mark again: the writer's drain() returns."""
        self._previous.resume_writing()
