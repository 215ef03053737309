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

import contextlib
import errno
import fcntl
import os
import struct
import subprocess
import termios
from collections.abc import Callable, Mapping

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
        # stdin and stdout are the one master, each closed on its own: a copy for stdin
        self._fds = {0: os.dup(master), 1: master}
        for fd in self._fds.values():
            if fd is not None:
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)

    async def read_into(
        self, stream_no: int, buffer: bytearray, quiet_after_exit: float | None = None
    ) -> int:
        """As ``ChildProcess.read_into``; EIO (the slave is closed everywhere) is end of file.

        A terminal hands out at most a few KiB a read: what more is there already is read on
        into the buffer, so that a fast writer (``cat`` of a big file) costs one frame per
        buffer rather than per 4 KiB.
        """
        try:
            count = await super().read_into(stream_no, buffer, quiet_after_exit)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._close(stream_no)
            return 0
        fd = self._fds.get(stream_no)
        if count <= 0 or fd is None:
            return count
        view = memoryview(buffer)
        try:
            while count < len(buffer):
                more = os.readv(fd, [view[count:]])
                if not more:
                    break
                count += more
        except OSError:  # nothing more yet (EAGAIN), or EIO: the next call reports the end
            pass
        finally:
            view.release()
        return count

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
            self._fds[stream_no] = None
            with contextlib.suppress(OSError):
                os.close(fd)
