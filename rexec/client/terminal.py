"""The local terminal of an interactive session: raw mode, its restore, the window's size.

``RawMode`` puts a terminal in raw mode (every keystroke passes through as a byte: Ctrl-C is a
byte for the remote side, not a signal here) and restores the saved settings on every way
out of its ``with`` block: a normal end, an exception, and SIGTERM and SIGHUP, which it turns
into ``Terminated`` while it is active. A SIGKILL is the one exit nothing can clean up after.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
import tty
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

DEFAULT_WINDOW = (24, 80, 0, 0)


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived during an interactive session."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def window_size(fd: int) -> tuple[int, int, int, int]:
    """The terminal's rows, columns, width and height in pixels (24x80 if it says nothing)."""
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return DEFAULT_WINDOW
    rows, cols, width, height = struct.unpack("HHHH", packed)
    if not rows or not cols:
        return DEFAULT_WINDOW
    return rows, cols, width, height


def terminal_type() -> str:
    """$TERM, as the remote side should see it (``xterm`` when unset or not a plain name)."""
    term = os.environ.get("TERM", "")
    if term and len(term) <= 64 and all(c.isalnum() or c in "_.+-" for c in term):
        return term
    return "xterm"


class RawMode:
    """``with RawMode(fd, on_resize):`` raw mode on ``fd`` (a terminal), restored on the way out.

    ``on_resize`` is called from the SIGWINCH handler (it should only set a flag or write a
    wake-up byte). Signal handlers are installed only when ``fd`` is a terminal and this runs
    on the main thread; the previous ones come back on exit.
    """

    def __init__(self, fd: int, on_resize: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.on_resize = on_resize
        self._saved: list[Any] | None = None
        self._handlers: dict[int, object] = {}

    def __enter__(self) -> RawMode:
        self._saved = termios.tcgetattr(self.fd)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._handlers[signum] = signal.signal(signum, self._terminate)
        if self.on_resize is not None:
            self._handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, self._resized)
        try:
            tty.setraw(self.fd, termios.TCSANOW)
        except BaseException:
            self.restore()
            raise
        return self

    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    def _resized(self, signum: int, frame: FrameType | None) -> None:
        if self.on_resize is not None:
            self.on_resize()

    def restore(self) -> None:
        """Put the terminal back as it was, and the signal handlers too (idempotent)."""
        if self._saved is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        for signum, handler in self._handlers.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, handler)  # type: ignore[arg-type]
        self._handlers.clear()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()
