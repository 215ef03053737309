"""A child on a pseudo-terminal: openpty, the controlling terminal, TIOCSWINSZ.

The child gets the PTY's slave end as its stdin, stdout and stderr, leads a new session (as
every command does), and makes the slave its controlling terminal between fork and exec, so
that the terminal's signals (Ctrl-C's SIGINT, SIGWINCH, SIGHUP when the session ends) reach its
foreground process group as on a local terminal. The server keeps the master end: what the
child writes to the terminal is read there (one stream: stdout), what the client types is
written there, and a resize sets the window size on it (the kernel sends SIGWINCH).

``PtyChild`` is a ``ChildProcess`` whose pipes are the master: reading it after every holder
of the slave has closed it fails with EIO, which is the terminal's end of file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import subprocess
import termios
from collections.abc import Callable, Mapping
from typing import Any

from rexec.server.exec.child import ChildProcess

EOF_BYTE = b"\x04"
"""What ``close_stdin`` types when the client's input ends: the terminal's VEOF (Ctrl-D)."""


def set_window(fd: int, rows: int, cols: int, width: int = 0, height: int = 0) -> None:
    """Set the terminal's window size (on the master: the slave's foreground group is told)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, width, height))


def get_window(fd: int) -> tuple[int, int, int, int]:
    """The terminal's window size: rows, cols, width, height."""
    packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    rows, cols, width, height = struct.unpack("HHHH", packed)
    return rows, cols, width, height


def _controlling_terminal(then: Callable[[], None] | None) -> Callable[[], None]:
    """The child's setup: its stdin (the slave) becomes its session's controlling terminal,
    then ``then`` (the user switch and limits) runs."""

    def setup() -> None:  # in the child, after setsid(): no allocation-heavy work, no locks
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if then is not None:
            then()

    return setup


def popen_on_pty(argv: list[str], env: Mapping[str, str], cwd: str | None, *,
                 window: tuple[int, int, int, int], umask: int,
                 setup: Callable[[], None] | None, executable: str | None = None
                 ) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start ``argv`` on a new PTY of size ``window``: (the Popen, the master, the tty's name).

    The master is non-blocking and not inherited; the parent's copy of the slave is closed
    before this returns, so the master reads EIO once the child's side is all closed.
    """
    master, slave = os.openpty()
    try:
        set_window(slave, *window)
        tty = os.ttyname(slave)
        popen = subprocess.Popen(
            argv,
            executable=executable,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            umask=umask,
            preexec_fn=_controlling_terminal(setup),  # noqa: PLW1509 - on the loop thread
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return popen, master, tty


class PtyChild(ChildProcess):
    """A running command on a PTY: its master end stands for stdin and stdout, no stderr."""

    def __init__(self, popen: subprocess.Popen[bytes], master: int, tty: str,
                 kill_grace: float) -> None:
        super().__init__(popen, kill_grace)
        self.group.hangup_first = True  # stopped as a hung-up terminal: the shell's jobs too
        self.tty = tty
        self._master = master
        self._watching: int | None = None  # the descriptor the event loop watches for us
        self._waiter: asyncio.Future[int | None] | None = None  # a read waiting for the master
        self._target: tuple[int, int, bytearray] | None = None  # what that read reads into
        self._drained = False  # the last read emptied the master: wait before reading again
        # stdin and stdout are the one master, each closed on its own: a copy for stdin
        self._fds = {0: os.dup(master), 1: master}
        for fd in self._fds.values():
            if fd is not None:
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)

    def pipe_output(self, stream_no: int) -> None:
        """None: a terminal's master is no pipe, so its output is read and sent (no splice)."""
        return None

    async def read_into(
        self, stream_no: int, buffer: bytearray, quiet_after_exit: float | None = None
    ) -> int:
        """As ``ChildProcess.read_into``; EIO (the slave is closed everywhere) is end of file.

        The master is read by the event loop's callback as soon as it is readable, and it stays
        registered from the first wait to the end: a terminal session reads a little at a time
        and often, and registering the master for every read and unregistering it after cost
        two system calls and a pass of the loop, a good part of a keystroke's echo. Reading in
        the callback also leaves no stale readiness behind to wake the next wait for nothing.
        The reader stops when it finds nobody waiting (the output waits on the client), so
        unread output never spins the loop.
        """
        fd = self._fds.get(stream_no)
        if fd is None:
            return 0
        if not self._drained:
            count = self._read_now(stream_no, fd, buffer)
            if count is not None:
                return count
        self._drained = False
        while True:
            if quiet_after_exit is not None and self._exited.done():
                try:
                    async with asyncio.timeout(quiet_after_exit):
                        count = await self._read_when_ready(stream_no, fd, buffer, None)
                except TimeoutError:
                    return -1
            else:
                also = self._exited if quiet_after_exit is not None else None
                count = await self._read_when_ready(stream_no, fd, buffer, also)
            if count is not None:
                return count

    def _read_now(self, stream_no: int, fd: int, buffer: bytearray) -> int | None:
        """Read what the master holds, as much as ``buffer`` takes: the count, 0 at the end,
        None when there is nothing yet.

        A terminal hands out at most a few KiB a read: what more is there already is read on
        into the buffer, so that a fast writer (``cat`` of a big file) costs one frame per
        buffer rather than per 4 KiB.
        """
        count = 0
        view = memoryview(buffer)
        try:
            while count < len(buffer):
                more = os.readv(fd, [view[count:]])
                if not more:
                    break
                count += more
        except BlockingIOError:
            if not count:
                return None
            self._drained = True  # the next read waits without trying first
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            # EIO: the slave is closed everywhere; after data, the next read reports it
        finally:
            view.release()
        if not count:
            self._close(stream_no)
        return count

    async def _read_when_ready(self, stream_no: int, fd: int, buffer: bytearray,
                               also: asyncio.Future[Any] | None) -> int | None:
        """The count ``_on_readable`` read into ``buffer``; None if ``also`` ended the wait."""
        if self._watching != fd:
            self._unwatch()
            self._loop.add_reader(fd, self._on_readable)
            self._watching = fd
        waiter: asyncio.Future[int | None] = self._loop.create_future()
        self._waiter, self._target = waiter, (stream_no, fd, buffer)
        if also is not None:
            also.add_done_callback(self._wake)
        try:
            return await waiter
        finally:
            self._waiter = self._target = None
            if also is not None:
                also.remove_done_callback(self._wake)

    def _wake(self, _: object = None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _on_readable(self) -> None:
        waiter, target = self._waiter, self._target
        if waiter is None or target is None:
            self._unwatch()  # nobody reads now: stop watching until somebody waits again
            return
        if waiter.done():
            return  # read already, and the reader has not run yet
        try:
            count = self._read_now(*target)
        except OSError as exc:
            waiter.set_exception(exc)
            return
        if count is not None:
            waiter.set_result(count)

    def _unwatch(self) -> None:
        if self._watching is not None:
            self._loop.remove_reader(self._watching)
            self._watching = None

    def close_stdin(self) -> None:
        """The client's input ended: type the terminal's end-of-file character, once."""
        fd = self._fds.get(0)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, EOF_BYTE)
            self._close(0)

    def resize(self, rows: int, cols: int, width: int = 0, height: int = 0) -> None:
        """Apply the client's new window size (the foreground process group gets SIGWINCH)."""
        fd = self._fds.get(1)
        if fd is None:
            fd = self._fds.get(0)
        if fd is not None:
            with contextlib.suppress(OSError):
                set_window(fd, rows, cols, width, height)

    def _close(self, stream_no: int) -> None:
        fd = self._fds.get(stream_no)
        if fd is not None:
            if fd == self._watching:
                self._unwatch()
            self._fds[stream_no] = None
            with contextlib.suppress(OSError):
                os.close(fd)
