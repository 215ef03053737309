"""Line splitting for fan-out output, sans-I/O: bytes in, whole lines out.

Each host's stdout and stderr get a ``LineSplitter`` of their own, so a line printed with a
``HOST: `` prefix is always one host's whole line, never half of one joined to another's.

The rules (the CLI's line mode relies on them):

- Lines are split on ``b"\\n"`` only: any other byte, NUL and invalid UTF-8 included, is data.
- Every line handed out ends in ``b"\\n"``. A line's own newline is kept; when rexec has to add
  one, the line is an ``Unterminated`` (a ``bytes`` subclass), so a caller (or a test) can tell
  the bytes the host sent from the newline rexec added.
- A line longer than ``MAX_LINE`` bytes (not counting its newline) is cut into ``MAX_LINE``
  pieces; every piece but the last is an ``Unterminated`` line of its own (``MAX_LINE`` bytes and
  an added newline). A cut is made only once the byte after the piece is known not to be the
  newline, so a line of exactly ``MAX_LINE`` bytes is never cut, and the output does not depend
  on how the input was chunked.
- ``flush()`` (the host's command ended) hands out a last line without a newline, as an
  ``Unterminated`` line.
- At most ``MAX_LINE`` bytes are buffered per splitter, whatever the input.
"""

from __future__ import annotations

from typing import Literal

MAX_LINE = 64 * 1024
"""The longest line handed out whole (its newline not counted); longer ones are cut."""


class Unterminated(bytes):
    """A line whose final ``b"\\n"`` rexec added (a cut piece of a long line, or a last line)."""

    __slots__ = ()


class LineSplitter:
    """One stream's splitter: ``feed(data)`` returns the lines completed so far."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._buffer = bytearray()
        self._max = max_line

    @property
    def buffered(self) -> int:
        """How many bytes wait for the rest of their line (at most ``max_line``)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The whole lines (each ending in ``b"\\n"``) that ``data`` completes, in order."""
        data = bytes(data)
        lines: list[bytes] = []
        start, size = 0, len(data)
        while start < size:
            newline = data.find(b"\n", start)
            end = size if newline < 0 else newline + 1
            self._take(data, start, end, complete=newline >= 0, out=lines)
            start = end
        return lines

    def _take(self, data: bytes, start: int, end: int, *, complete: bool,
              out: list[bytes]) -> None:
        """Add ``data[start:end]`` (a line's end when ``complete``), cutting full pieces."""
        buffer, limit = self._buffer, self._max
        content_end = end - 1 if complete else end
        while len(buffer) + (content_end - start) > limit:
            take = limit - len(buffer)  # the piece is full and more of the line follows
            out.append(Unterminated(bytes(buffer) + data[start:start + take] + b"\n"))
            buffer.clear()
            start += take
        if complete:
            out.append(bytes(buffer) + data[start:end] if buffer else data[start:end])
            buffer.clear()
        else:
            buffer += data[start:end]

    def flush(self) -> list[bytes]:
        """The last line, without its newline until now, as an ``Unterminated`` line (or none)."""
        if not self._buffer:
            return []
        line = Unterminated(bytes(self._buffer) + b"\n")
        self._buffer.clear()
        return [line]


Stream = Literal["stdout", "stderr"]


class HostLines:
    """Splitters for many hosts' two streams, made on first use and dropped at ``flush``."""

    __slots__ = ("_max", "_splitters")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._splitters: dict[tuple[str, Stream], LineSplitter] = {}

    def feed(self, host: str, stream: Stream, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The whole lines of ``host``'s ``stream`` that ``data`` completes."""
        splitter = self._splitters.get((host, stream))
        if splitter is None:
            data = bytes(data)
            if data[-1:] == b"\n" and len(data) <= self._max:
                return LineSplitter(self._max).feed(data)  # the common case keeps nothing
            splitter = self._splitters[host, stream] = LineSplitter(self._max)
        return splitter.feed(data)

    def flush(self, host: str) -> list[tuple[Stream, bytes]]:
        """``host``'s last lines without a newline, (stream, line), once its command ended."""
        flushed: list[tuple[Stream, bytes]] = []
        for stream in ("stdout", "stderr"):
            splitter = self._splitters.pop((host, stream), None)
            if splitter is not None:
                flushed.extend((stream, line) for line in splitter.flush())
        return flushed
