"""Sans-I/O framing: bytes in -> frames out, frames in -> bytes out. No sockets here.

A frame on the wire is::

    +----------------+-------------------------+------------------+
    | 4 bytes, u32 BE| header: UTF-8 JSON      | body: size bytes |
    | header length  | object, one of frames.* |                  |
    +----------------+-------------------------+------------------+

The decoder checks the declared header length against its cap as soon as the 4 length bytes are
in, and the body size (a validated header field) against its cap before waiting for the body, so a
hostile length never makes it allocate or wait for more than the caps.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rexec.errors import ProtocolError
from rexec.wire.frames import MAX_BODY_SIZE, MAX_HEADER_SIZE, Header, parse_header

_LENGTH = struct.Struct(">I")
_EMPTY = memoryview(b"")
RECEIVE_SIZE = 256 * 1024
"""The most bytes a reader should receive at once into ``get_buffer()``."""
INITIAL_CAPACITY = 16 * 1024
PEEK_SIZE = 4 * 1024
"""What ``get_buffer()`` offers right after a detached body: the next header, and little of
the body behind it, which is copied if that body is detached too."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its validated header and its body (empty for control frames).

    ``body`` is a view into the decoder's receive buffer, valid until the decoder is next fed
    (``feed``/``get_buffer``): use it at once, or copy it with ``bytes(frame.body)``. A
    ``detached`` body is the exception: it was received into a buffer of its own, which the
    decoder never touches again, so it may be kept as it is (see ``FrameDecoder``'s
    ``detach_at``). A frame whose body the reader moved elsewhere itself
    (``FrameDecoder.pass_body``) comes out with an empty body and ``passed`` its size.
    """

    header: Header
    body: memoryview = _EMPTY
    detached: bool = False
    passed: int = 0


class HeaderTooLarge(ValueError):
    """A header we were asked to send is over MAX_HEADER_SIZE: the peer would refuse it."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the frame header takes {size} bytes, more than the protocol's"
                         f" {MAX_HEADER_SIZE}")
        self.size = size


# Fields a later version added to a frame: sent only when set, so that the frame is what an
# earlier peer knows when they are not (run.pty: version 2; put/get base and name: version 4;
# put.check: version 5).
_LATER_FIELDS: dict[str, tuple[str, ...]] = {"run": ("pty",), "put": ("base", "name", "check"),
                                             "get": ("base",)}


def encode_prefix(header: Header) -> bytes:
    """The bytes that go before a frame's body: the header length and the header.

    HeaderTooLarge (a ValueError) if the header is over MAX_HEADER_SIZE: nothing that no peer
    accepts is ever sent.
    """
    later = _LATER_FIELDS.get(header.type)
    unset = {name for name in later if getattr(header, name) is None} if later else None
    raw = header.model_dump_json(exclude=unset or None).encode()
    if len(raw) > MAX_HEADER_SIZE:
        raise HeaderTooLarge(len(raw))
    return _LENGTH.pack(len(raw)) + raw


def encode(header: Header, body: bytes | bytearray | memoryview = b"") -> bytes:
    """Return the wire bytes of one frame; ``header.size`` must equal ``len(body)``."""
    if header.size != len(body):
        raise ValueError(f"header says size={header.size} but the body has {len(body)} bytes")
    return encode_prefix(header) + body if body else encode_prefix(header)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ProtocolError(f"frame header has the key {key!r} twice", "bad_header")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"frame header contains {name}, which is not JSON", "bad_header")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ProtocolError(f"frame header number {text[:20]}... is out of range", "bad_header")
    return value


def guess_peer(first: bytes) -> str:
    """What kind of peer sends these first bytes, when they are not a rexec frame."""
    if len(first) >= 2 and first[0] in (0x15, 0x16) and first[1] == 0x03:
        return "the peer speaks TLS: use TLS (--tls-ca) to talk to it"
    if first.startswith(b"SSH-"):
        return "the peer is an SSH server, not a rexec server"
    if first[:4] in (b"HTTP", b"GET ", b"POST", b"PUT ", b"HEAD"):
        return "the peer speaks HTTP, not the rexec protocol"
    return "is the peer a rexec endpoint?"


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates,
                            parse_constant=_reject_constant, parse_float=_parse_float)
"""One decoder for every header: json.loads() with hooks would build a new one per call."""


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each field that failed and why, for an error frame or a log line."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "header"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode_header(raw: bytes) -> Header:
    """Parse and validate header bytes (UTF-8 JSON object); raise ProtocolError if malformed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame header is not UTF-8 (byte {exc.start})", "bad_header") from None
    try:
        obj = _DECODER.decode(text)
    except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise ProtocolError(f"frame header is not JSON: {exc}", "bad_header") from None
    except RecursionError:
        raise ProtocolError("frame header is nested too deeply", "bad_header") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame header is not a JSON object", "bad_header")
    try:
        return parse_header(obj)
    except ValidationError as exc:
        raise ProtocolError(
            f"invalid frame header: {describe_validation_error(exc)}", "bad_header"
        ) from None


class FrameDecoder:
    """Turns a byte stream, fed in pieces of any size, into whole frames.

    Give it bytes with ``feed(data)``, or receive straight into it with ``get_buffer()`` and
    ``buffer_updated(n)``; then call ``next_frame()`` until it returns None. After a ProtocolError
    the decoder is broken for good: the connection has to close.

    It owns one receive buffer and reuses it, so a stream of any length is decoded without
    allocating memory per frame. The buffer starts small (an idle connection costs a few KiB)
    and grows with what arrives, up to the largest frame plus one read.

    ``on_header`` is called with each header as soon as it is decoded, before its body is
    awaited: a caller that raises ProtocolError there (a frame not allowed now) is never made to
    buffer the body.

    With ``detach_at``, a body of at least that many bytes is received into a buffer of its own
    (allocated once its header is in, so never beyond ``max_body``): ``get_buffer()`` then offers
    exactly the rest of that body, and the frame comes out ``detached``, for a caller that keeps
    large bodies (an upload's queue) without copying them. A reader that receives into
    ``get_buffer()`` writes each body once, straight from the socket.

    A reader may also move a body past the decoder (``os.splice`` from the socket to where the
    bytes go): once a frame's header is in, ``passable()`` says how much of its body is still to
    come, ``pass_body()`` hands over the part already received, and ``passed(n)`` counts the
    bytes moved; the frame then comes out with ``passed`` set and no body.
    """

    def __init__(
        self,
        max_header: int = MAX_HEADER_SIZE,
        max_body: int = MAX_BODY_SIZE,
        on_header: Callable[[Header], None] | None = None,
        detach_at: int | None = None,
    ) -> None:
        self._max_header = max_header
        self.max_body = max_body
        self._on_header = on_header
        self._detach_at = detach_at
        self._allocate: Callable[[int], memoryview] | None = None  # detach_bodies()'s
        self._body: memoryview | None = None  # the detached body being received
        self._body_filled = 0  # bytes of it received
        self._peek = False  # the last frame was detached: offer a small buffer for the next
        self._full_capacity = 4 + max_header + max_body + RECEIVE_SIZE
        self._capacity = INITIAL_CAPACITY
        self._buf = bytearray(self._capacity)
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet consumed
        self._end = 0  # end of the bytes received
        self._header: Header | None = None  # header of the frame whose body we are waiting for
        self._header_len: int | None = None
        self._passing: int | None = None  # bytes of a passed body still to move past us
        self._eof = False
        self._broken: ProtocolError | None = None

    @property
    def max_header(self) -> int:
        """The largest header length a frame may declare (checked when its 4 bytes are in)."""
        return self._max_header

    @max_header.setter
    def max_header(self, value: int) -> None:
        # A header length already accepted stays accepted: the cap applies to the next frames.
        self._max_header = value
        self._full_capacity = 4 + value + self.max_body + RECEIVE_SIZE

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return self._end - self._start + self._body_filled

    @property
    def missing(self) -> int:
        """Bytes the frame being received still lacks (0: no header is in, or all of it is):
        a reader that wants the next header with little of its body reads that plus a peek."""
        if self._header is None:
            return 0
        if self._passing is not None:
            return self._passing
        if self._body is not None:
            return len(self._body) - self._body_filled
        return max(self._header.size - (self._end - self._start), 0)

    @property
    def incomplete(self) -> bool:
        """Whether the frame being received certainly lacks bytes: its header is in, and not
        all of its body yet (False: ``next_frame()`` may have a frame to give)."""
        if self._header is None:
            return False
        if self._passing is not None:
            return self._passing > 0
        if self._body is not None:
            return self._body_filled < len(self._body)
        return self._end - self._start < self._header.size

    def detach_bodies(self, at: int | None,
                      allocate: Callable[[int], memoryview] | None = None) -> None:
        """From the next header on, receive each body of ``at`` bytes or more into a buffer
        of its own (None: none), and take that buffer from ``allocate(size)`` (a writable view
        of exactly ``size`` bytes; by default a new bytearray's): a reader that recycles the
        buffers it was given receives a stream of large bodies without a copy or a new
        allocation. A body already being received keeps the buffer it has."""
        self._detach_at, self._allocate = at, allocate

    def passable(self) -> tuple[Header, int] | None:
        """The frame being received, when its header is in and part of its body is still to
        come (and not into a buffer of its own): its header and how many bytes are missing."""
        if self._header is None or self._body is not None or self._passing is not None:
            return None
        missing = self._header.size - (self._end - self._start)
        return (self._header, missing) if missing > 0 else None

    def pass_body(self) -> memoryview:
        """Take the part of the ``passable()`` frame's body received so far (valid until the
        decoder is next fed); the caller moves the rest past the decoder (``passed``)."""
        if self.passable() is None:
            raise RuntimeError("no frame's body can be passed now")
        assert self._header is not None
        have = self._end - self._start
        self._passing = self._header.size - have
        return self._take(have)

    @property
    def passing(self) -> int | None:
        """Bytes of a passed body still to be moved (None: no body is being passed)."""
        return self._passing

    def passed(self, nbytes: int) -> None:
        """Record that ``nbytes`` more of the passed body were moved past the decoder."""
        if self._passing is None or not 0 <= nbytes <= self._passing:
            raise RuntimeError(f"{nbytes} bytes passed, {self._passing} expected")
        self._passing -= nbytes

    def _reserve(self, n: int) -> None:
        """Make room for ``n`` more bytes after the data: compact in place, or grow."""
        if self._eof:
            raise RuntimeError("the decoder was fed after feed_eof()")
        pending = self._end - self._start
        if pending == 0 and self._capacity > self._full_capacity:
            self._set_buffer(bytearray(self._full_capacity))  # shrink after an oversized feed
        if self._capacity - self._end >= n:
            return
        if self._capacity >= self._full_capacity and self._capacity - pending >= n:
            # bytes() first: the two ranges may overlap, and slice assignment may not memmove
            self._buf[:pending] = bytes(self._view[self._start : self._end])
        else:
            # Grow fourfold (up to the full size) rather than compact a small buffer on every
            # read: a streaming connection reaches the full size after a few reads.
            size = max(min(4 * self._capacity, self._full_capacity), pending + n)
            grown = bytearray(size)
            grown[:pending] = self._view[self._start : self._end]
            self._set_buffer(grown)  # views handed out before keep the old buffer alive
        self._start, self._end = 0, pending

    def _set_buffer(self, buf: bytearray) -> None:
        self._buf, self._view, self._capacity = buf, memoryview(buf), len(buf)
        self._start = self._end = 0

    def get_buffer(self, size: int = RECEIVE_SIZE) -> memoryview:
        """Writable space for the next receive: at least ``size`` bytes (at most RECEIVE_SIZE
        are useful), but exactly the rest of a detached body being received, and PEEK_SIZE
        bytes right after one. A reader that asks for little while little comes keeps an
        idle or chatty connection's buffer small."""
        if self._passing:
            raise RuntimeError("the next bytes on the wire are a passed body's")
        if self._body is not None:
            return self._body[self._body_filled :]
        self._reserve(size)
        if self._peek:
            return self._view[self._end : self._end + PEEK_SIZE]
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of the last ``get_buffer()``."""
        if self._body is not None:
            self._body_filled += nbytes
        else:
            self._end += nbytes
            self._peek = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer (copied into the receive buffer)."""
        if self._passing:
            raise RuntimeError("the decoder was fed while a passed body is on the wire")
        if self._body is not None:  # the rest of a detached body first (nothing is behind it)
            if self._eof:
                raise RuntimeError("the decoder was fed after feed_eof()")
            count = min(len(data), len(self._body) - self._body_filled)
            self._body[self._body_filled : self._body_filled + count] = data[:count]
            self._body_filled += count
            data = data[count:]
            if not data:
                return
        self._reserve(len(data))
        self._buf[self._end : self._end + len(data)] = data
        self._end += len(data)

    def feed_eof(self) -> None:
        """Record that the peer closed; a partial frame left over becomes an error."""
        self._eof = True

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed."""
        if self._broken is not None:
            raise self._broken
        try:
            frame = self._next_frame()
        except ProtocolError as exc:
            self._broken = exc
            raise
        if frame is None and self._eof and (self.buffered or self._header is not None):
            self._broken = ProtocolError(
                "the connection closed in the middle of a frame", "truncated"
            )
            raise self._broken
        return frame

    def _take(self, n: int) -> memoryview:
        piece = self._view[self._start : self._start + n]
        self._start += n
        return piece

    def _next_frame(self) -> Frame | None:
        if self._header is None:
            if self._header_len is None:
                if self.buffered < 4:
                    return None
                raw = self._take(4)
                (length,) = _LENGTH.unpack(raw)
                if length == 0 or length > self.max_header:
                    raise ProtocolError(
                        f"declared header length {length} is outside 1..{self.max_header}"
                        f" ({guess_peer(bytes(raw))})",
                        "bad_length",
                    )
                self._header_len = length
            if self.buffered < self._header_len:
                return None
            header = decode_header(bytes(self._take(self._header_len)))
            self._header_len = None
            if header.size > self.max_body:
                raise ProtocolError(
                    f"declared body size {header.size} exceeds the cap of {self.max_body}",
                    "bad_length",
                )
            if self._on_header is not None:
                self._on_header(header)
            self._header = header
            if self._detach_at is not None and header.size >= self._detach_at:
                self._detach(header.size)
        if self._passing is not None:
            return self._passed_frame(self._header)
        if self._body is not None:
            return self._detached_frame(self._header)
        size = self._header.size
        if self.buffered < size:
            return None
        frame = Frame(self._header, self._take(size))
        self._header = None
        return frame

    def _passed_frame(self, header: Header) -> Frame | None:
        """The frame whose body was passed, once all of it has been moved."""
        if self._passing:
            return None
        self._header, self._passing = None, None
        return Frame(header, passed=header.size)

    def _detach(self, size: int) -> None:
        """Receive the body of ``size`` bytes into a buffer of its own, starting with what of it
        came with its header (little, after a detached body: ``get_buffer()`` offered a peek)."""
        body = memoryview(bytearray(size)) if self._allocate is None else self._allocate(size)
        if len(body) != size or body.readonly:
            raise RuntimeError(f"a detached body of {size} bytes was given {len(body)}"
                               f"{' read-only' if body.readonly else ''} bytes")
        have = min(self._end - self._start, size)
        body[:have] = self._take(have)
        self._body, self._body_filled = body, have

    def _detached_frame(self, header: Header) -> Frame | None:
        assert self._body is not None
        if self._body_filled < len(self._body):
            return None
        frame = Frame(header, self._body, detached=True)
        self._header, self._body, self._body_filled = None, None, 0
        self._peek = True
        return frame
