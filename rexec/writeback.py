"""Early writeback: a file being written is pushed to the disk as it grows, not at its fsync.

An atomic transfer fsyncs its temporary file before renaming it into place. Left alone, the
kernel keeps a large file's pages dirty until that fsync, which then waits for all of them at
disk speed after the last byte came in. ``Writeback`` asks the kernel every few MiB to start
writing what has been written so far (sync_file_range(2) with SYNC_FILE_RANGE_WRITE, which does
not wait), so the disk works while the network does and the fsync finds little left. Where
there is no sync_file_range (not Linux) it does nothing: the fsync still makes the file durable.
"""

from __future__ import annotations

import ctypes
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
