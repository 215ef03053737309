"""Early writeback: a file being written is pushed to the disk as it grows, not at its fsync.

An atomic transfer fsyncs its temporary file before renaming it into place. Left alone, the
kernel keeps a large file's pages dirty until that fsync, which then waits for all of them at
disk speed after the last byte came in. ``Writeback`` asks the kernel every few MiB to start
writing what has been written so far (sync_file_range(2) with SYNC_FILE_RANGE_WRITE, which does
not wait), so the disk works while the network does and the fsync finds little left. Where
there is no sync_file_range (not Linux) it does nothing: the fsync still makes the file durable.

``FileWriter`` is what writes a transfer's file: a large one around the page cache
(O_DIRECT), a small one, or one on a file system that refuses O_DIRECT, with ``Writeback``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
from collections.abc import Callable

STEP = 8 * 1024 * 1024  # bytes written between two requests
_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Callable[[int, int, int, int], int] | None:
    try:
        # the process's own symbols, libc's among them: ctypes.util.find_library("c") would
        # run `ldconfig -p` in a child process (2-3 ms of every get, put and deploy)
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_sync_file_range = _load() if hasattr(os, "fsync") else None


class Writeback:
    """Tracks how much of one file was written, and starts its writeback every STEP bytes."""

    __slots__ = ("_fd", "_flushed", "_written")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._flushed = 0  # bytes whose writeback was asked for
        self._written = 0

    def wrote(self, count: int) -> None:
        """``count`` more bytes were written at the end of the file."""
        self._written += count
        if _sync_file_range is not None and self._written - self._flushed >= STEP:
            # best effort: an error here (an odd file system) only loses the head start
            _sync_file_range(self._fd, self._flushed, self._written - self._flushed,
                             _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._written


DIRECT_MIN = 16 * 1024 * 1024
"""Files at least this large are written with O_DIRECT (``FileWriter``)."""
DIRECT_CHUNK = 1024 * 1024
"""Bytes staged and written at a time with O_DIRECT (a multiple of DIRECT_ALIGN). Writes of
1 MiB wrote 1 GiB in 0.43-0.45 s here, and the server holds one such buffer per large upload,
beside the upload's window."""
DIRECT_ALIGN = 4096
"""What O_DIRECT asks of the buffer's address, the file offset and the length (the largest
logical block size of common disks)."""
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for ``fd``; False where the file system refuses it."""
    if not _O_DIRECT:
        return False
    import fcntl

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return True


class FileWriter:
    """Writes one new file front to back, and has it on the disk by its fsync.

    A file of DIRECT_MIN bytes or more is written with O_DIRECT: its bytes are staged in an
    aligned buffer of DIRECT_CHUNK and go from there to the disk, not through the page cache.
    On the 2-core development VM, writing 1 GiB and fsyncing it took 0.43-0.45 s and 0.07 s of
    CPU that way, and 0.54-3.3 s and 0.24-2.7 s of CPU through the page cache (the kernel copies
    every byte into pages it may first have to fault in, then writes them back); the file's
    bytes are then not left in the page cache either, where they would push out what other
    programs use. The tail that is not a whole block is written without O_DIRECT, at
    ``finish``. A file system that refuses O_DIRECT (at the start or at a write) gets the
    bytes through the page cache instead, with early writeback (``Writeback``); so does a
    smaller file. Raises OSError as os.write does; call ``finish`` before the fsync, and
    ``close`` in any case.
    """

    __slots__ = ("_fd", "_fill", "_stage", "_view", "_writeback")

    def __init__(self, fd: int, size: int | None) -> None:
        self._fd = fd
        self._writeback = Writeback(fd)
        self._stage: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._fill = 0
        if size is not None and size >= DIRECT_MIN and _set_direct(fd, True):
            self._stage = mmap.mmap(-1, DIRECT_CHUNK)  # page-aligned
            self._view = memoryview(self._stage)

    @property
    def direct(self) -> bool:
        """Whether the bytes still go around the page cache."""
        return self._view is not None

    def write(self, data: bytes | bytearray | memoryview, *, aligned: bool = False) -> None:
        """Append ``data``. ``aligned``: the caller vouches that ``data`` starts on a page (a
        view from the start of an mmap): with nothing staged and a length that is a whole
        number of DIRECT_ALIGN blocks, it goes to the disk from where it is, not staged."""
        view = memoryview(data).cast("B")
        if self._view is None:
            self._write_all(view)
            return
        if aligned and not self._fill and view and not len(view) % DIRECT_ALIGN:
            view = self._write_direct(view)
        while view:
            if self._view is None:  # O_DIRECT was refused on the way: the page cache
                self._write_all(view)
                return
            count = min(len(view), DIRECT_CHUNK - self._fill)
            self._view[self._fill:self._fill + count] = view[:count]
            self._fill += count
            view = view[count:]
            if self._fill == DIRECT_CHUNK:
                self._flush_stage(DIRECT_CHUNK)

    def finish(self) -> None:
        """Write what is staged (before the file's fsync)."""
        if self._view is None:
            return
        whole = self._fill - self._fill % DIRECT_ALIGN
        if whole:
            self._flush_stage(whole)
        if self._fill and self._view is not None:  # the tail: through the page cache
            _set_direct(self._fd, False)
            tail = bytes(self._view[:self._fill])
            self._release()
            self._write_all(memoryview(tail))

    def close(self) -> None:
        """Let the staging buffer go (the descriptor stays the caller's)."""
        self._release()

    def _flush_stage(self, count: int) -> None:
        """Write the first ``count`` staged bytes (a multiple of DIRECT_ALIGN), keep the rest."""
        assert self._view is not None
        done = self._write_blocks(self._view[:count])  # (no staged slice is held past it)
        if done < count:
            # refused (an odd file system), or a short write left the offset unaligned: the
            # rest of the file goes through the page cache
            _set_direct(self._fd, False)
            rest = bytes(self._view[done:self._fill])
            self._release()
            self._write_all(memoryview(rest))
            return
        left = self._fill - count
        if left:
            self._view[:left] = self._view[count:self._fill]
        self._fill = left

    def _write_direct(self, view: memoryview) -> memoryview:
        """Write the aligned ``view`` with O_DIRECT; the part of it not written. A refusal, or
        a short write that leaves the offset unaligned (a full disk, say), sends the rest of
        the file through the page cache, as ``_flush_stage`` does."""
        done = self._write_blocks(view)
        if done < len(view):
            _set_direct(self._fd, False)
            self._release()  # nothing is staged: the caller writes the rest, unstaged
        return view[done:]

    def _write_blocks(self, view: memoryview) -> int:
        """Write the whole blocks of ``view`` with O_DIRECT; how many bytes were written
        before a refusal (EINVAL) or a short write left the offset unaligned, else all."""
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
                if done % DIRECT_ALIGN:  # a short write (a full disk, say): not aligned now
                    break
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        return done

    def _write_all(self, view: memoryview) -> None:
        total = len(view)
        while view:
            view = view[os.write(self._fd, view):]
        self._writeback.wrote(total)

    def _release(self) -> None:
        # A traceback being handled may still hold a slice of the stage (a write that raised):
        # then the buffer goes when that slice does, not now.
        if self._view is not None:
            with contextlib.suppress(BufferError):
                self._view.release()
            self._view = None
        if self._stage is not None:
            with contextlib.suppress(BufferError):
                self._stage.close()
            self._stage = None
        self._fill = 0


class BufferPool:
    """Page-aligned buffers of ``size`` bytes to receive large bodies into straight from the
    socket (``FrameDecoder.detach_bodies``'s ``allocate``), each used again once its bytes are
    written and hashed: a long transfer then neither faults in new memory per chunk nor copies
    one (an mmap starts on a page, so ``FileWriter.write(aligned=True)`` writes whole blocks of
    it with O_DIRECT from where they are).

    At most ``count`` are made. ``allocate`` never waits: with none free and ``count`` made (or
    after ``close``, or for more than ``size`` bytes) it gives a one-off bytearray, so a chunk
    its taker drops, and never gives back, costs speed, not correctness. ``give_back`` may be
    called from any thread."""

    def __init__(self, size: int, count: int) -> None:
        import queue  # a large transfer's only: off `rexec run`'s start-up

        self.size = size
        self._count = count
        self._made = 0
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._empty = queue.Empty
        self._closed = False

    def allocate(self, size: int) -> memoryview:
        """A writable view of exactly ``size`` bytes: from the start of one of the pool's
        buffers when one is free or may still be made, else of a new bytearray."""
        if not self._closed and size <= self.size:
            try:
                return memoryview(self._free.get_nowait())[:size]
            except self._empty:
                pass
            if self._made < self._count:
                self._made += 1
                return memoryview(mmap.mmap(-1, self.size))[:size]
        return memoryview(bytearray(size))

    @staticmethod
    def owns(chunk: object) -> bool:
        """Whether ``chunk`` is a view from the start of a pool's buffer (page-aligned)."""
        return isinstance(chunk, memoryview) and isinstance(chunk.obj, mmap.mmap)

    def give_back(self, chunk: memoryview) -> None:
        """``chunk`` (one ``owns``) is written and hashed: its buffer may take the next."""
        if not self._closed:
            self._free.put(chunk.obj)  # type: ignore[arg-type]

    def close(self) -> None:
        """Make no more and keep none: the buffers go once their last views do."""
        self._closed = True
        while True:
            try:
                self._free.get_nowait()
            except self._empty:
                return
