"""One stdin for many hosts, read once, in bounded memory.

``shared_stdin(source, hosts, live=...)`` returns a ``SharedStdin`` that hands each host a
source of its own for ``Client.stream(stdin=...)``:

- bytes or str: the same object for every host (nothing is copied);
- a regular file (``open(path, "rb")``, or stdin redirected from a file): each host reads it
  with ``os.pread`` from where the file stood, one chunk at a time;
- anything else (a pipe, an iterable or async iterable of bytes) when every host runs at once
  (``live``): a ``Broadcast``: one chunk is read, every host's feeder sends it, and the
  chunk after the next is read only once every host still listening has taken the next
  (``CommandStream._feed`` asks for a chunk only once its connection took the last one, after
  ``drain()``): at most two chunks are held, whatever the number of hosts;
- anything else when there are more hosts than ``forks``: spooled once to a temporary file,
  then read as a regular file (the hosts waiting for a slot would otherwise need the chunks
  the first ones have already consumed).
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import IO

from rexec.client.aio import StdinSource, stdin_chunks
from rexec.client.core import STDIN_CHUNK


def _nothing() -> None:
    pass


class SharedStdin:
    """The per-host sources of one stdin (``for_host``) and their clean-up (``close``)."""

    async def prepare(self) -> None:
        """Anything to do before the first host starts (spooling)."""

    def for_host(self) -> tuple[StdinSource, Callable[[], None]]:
        """A source for one more host, and what the host calls when it takes no more of it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the shared stdin holds (a spool file, a pending read)."""


class _Same(SharedStdin):
    def __init__(self, data: bytes | str) -> None:
        self._data = data

    def for_host(self) -> tuple[StdinSource, Callable[[], None]]:
        return self._data, _nothing


class _File(SharedStdin):
    """A regular file read by each host with pread, from ``offset`` on."""

    def __init__(self, fd: int, offset: int) -> None:
        self._fd, self._offset = fd, offset

    def for_host(self) -> tuple[StdinSource, Callable[[], None]]:
        return self._chunks(), _nothing

    async def _chunks(self) -> AsyncIterator[bytes]:
        offset = self._offset
        while chunk := os.pread(self._fd, STDIN_CHUNK, offset):
            offset += len(chunk)
            yield chunk


class _Spooled(_File):
    """A stream copied once into a temporary file, then read as one."""

    def __init__(self, source: StdinSource) -> None:
        self._source = source
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        super().__init__(self._file.fileno(), 0)

    async def prepare(self) -> None:
        async for chunk in stdin_chunks(self._source):
            self._file.write(chunk)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Broadcast(SharedStdin):
    """One stream, chunk by chunk, for several hosts at once (see the module docstring)."""

    def __init__(self, source: StdinSource) -> None:
        self._source = stdin_chunks(source)
        self._chunk = b""
        self._index = 0  # chunks read from the source so far; the current one is number _index
        self._eof = False
        self._taken: dict[int, int] = {}  # a listening host -> how many chunks it has taken
        self._next_id = 0
        self._reading: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.error: BaseException | None = None  # what reading the source raised, if anything

    def for_host(self) -> tuple[StdinSource, Callable[[], None]]:
        self._next_id += 1
        listener = self._next_id
        self._taken[listener] = 0
        return self._chunks(listener), lambda: self._leave(listener)

    def _leave(self, listener: int) -> None:
        if self._taken.pop(listener, None) is not None:
            self._maybe_read()
            self._notify()

    async def _chunks(self, listener: int) -> AsyncIterator[bytes]:
        try:
            while True:
                taken = self._taken[listener]
                while self._index <= taken and not self._eof:
                    self._maybe_read()
                    wake = self._wake
                    await wake.wait()
                if self._index <= taken:
                    return  # the end of the source
                self._taken[listener] = taken + 1  # this host has it once it asks for the next
                yield self._chunk
        finally:
            self._leave(listener)

    def _maybe_read(self) -> None:
        """Read the next chunk once every host still listening has taken the current one."""
        if self._reading is None and not self._eof and all(
                taken >= self._index for taken in self._taken.values()):
            # its own task: a host's feeder may be cancelled, and that must not cut the source
            self._reading = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            chunk = await anext(self._source)
        except StopAsyncIteration:
            self._eof = True
        except Exception as exc:  # the hosts see an end of file; Group.run raises it after
            self.error, self._eof = exc, True
        else:
            self._chunk, self._index = chunk, self._index + 1
        finally:
            self._reading = None
            self._notify()

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        self._eof = True
        self._notify()


def _regular_file(source: StdinSource) -> tuple[int, int] | None:
    """(descriptor, offset) when ``source`` is a readable regular file, else None."""
    fileno = getattr(source, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        offset = source.tell() if hasattr(source, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
    except (OSError, ValueError):
        return None
    return fd, offset


def shared_stdin(source: StdinSource, *, live: bool) -> SharedStdin:
    """The sharing that suits ``source`` (``live``: every host runs at once)."""
    if isinstance(source, bytes | str):
        return _Same(source)
    if isinstance(source, bytearray | memoryview):
        return _Same(bytes(source))
    if (file := _regular_file(source)) is not None:
        return _File(*file)
    return Broadcast(source) if live else _Spooled(source)

