"""A running child: its pipes on the event loop, its exit watched through a pidfd.

Its pipes are non-blocking and read on the event loop; its exit is watched through a
pidfd, so no thread or child watcher is involved, and the exited leader is kept unreaped while
the server may still signal its group (``ChildProcess``; the signalling, terminate, grace and
kill are ``rexec.server.exec.group.ProcessGroup``'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import select
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rexec.server.exec.group import ProcessGroup

READ_CHUNK = 256 * 1024
PIPE_SIZE = 1024 * 1024  # asked of the kernel for stdout/stderr pipes; best effort
FULL_DEFAULT_PIPE = 64 * 1024
"""A read this large found the pipe full at its default size: the writer outpaces us, so the
pipe is grown to PIPE_SIZE then (growing every command's pipes up front cost more than
``true`` took to run)."""


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended: its exit code, or the signal that killed it."""

    exit_code: int | None
    signal: int | None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        """Turn Popen's returncode (negative for a signal) into an ExitStatus."""
        if returncode < 0:
            return cls(exit_code=None, signal=-returncode)
        return cls(exit_code=returncode, signal=None)


class Child(Protocol):
    """What the server's command layer uses of a running child (``ChildProcess`` is one; a
    PTY child, and the in-process tests' scripted children, are others)."""

    pid: int
    reaped: asyncio.Future[None]  # done once the leader is reaped

    @property
    def stdin_open(self) -> bool: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def exceeded(self) -> str | None: ...
    async def read_into(
        self, stream_no: int, buffer: bytearray, quiet_after_exit: float | None = None
    ) -> int: ...
    def pipe_output(self, stream_no: int) -> PipeOutput | None: ...
    async def write_stdin(self, data: bytes | memoryview) -> bool: ...
    def write_now(self, data: bytes | memoryview) -> int: ...
    def close_stdin(self) -> None: ...
    async def wait(self) -> ExitStatus: ...
    def signal_group(self, signum: int) -> bool: ...
    def terminate(self) -> None: ...
    def kill_now(self) -> None: ...
    def exceed(self, limit: str) -> None: ...
    def expire(self) -> None: ...
    def close(self) -> None: ...
    def resize(self, rows: int, cols: int, width: int = 0, height: int = 0) -> None: ...


def live_groups(pgids: set[int]) -> set[int]:
    """Those of ``pgids`` that a live (not zombie) process is in; all of them without /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return set(pgids)
    live = set()
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # it just ended
        if fields[0] not in (b"Z", b"X") and int(fields[2]) in pgids:
            live.add(int(fields[2]))
    return live


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


async def _wait_ready(
    add: Callable[[int, Callable[[], None]], None],
    remove: Callable[[int], object],
    fd: int,
    also: asyncio.Future[Any] | None = None,
) -> None:
    """Wait until ``fd`` is ready (or ``also`` is done, when given)."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ready(_: object = None) -> None:
        if not fut.done():
            fut.set_result(None)

    add(fd, ready)
    if also is not None:
        also.add_done_callback(ready)
    try:
        await fut
    finally:
        remove(fd)
        if also is not None:
            also.remove_done_callback(ready)


EXIT_POLL_INTERVAL = 0.05
"""Seconds between checks on a leader where neither a pidfd nor waitid() can watch it."""


def _returncode(result: os.waitid_result) -> int:
    """Popen's returncode (negative for a signal) from a waitid() result."""
    return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status


class ChildProcess:
    """A running command: its pipes, its process group, and how it ended.

    The group's ID is the leader's PID, and Linux gives a PID out again only once no process uses
    it as its PID, group ID or session ID; a leader that exited but is not yet reaped (a zombie)
    still uses it. So the leader is not reaped when it exits: its status is read with WNOWAIT and
    the zombie kept while the server may still signal the group. A signal then reaches the
    command's processes still in the group, or nobody, and never a group that took the ID since.
    The leader is reaped once the server is done with the command (``close``) and any SIGKILL
    still due has been sent; after that the group is never signalled again. Nothing else reaps
    it meanwhile: the Popen is held (subprocess reaps only Popen objects dropped unwaited), and
    the server runs no child watcher.
    """

    def __init__(self, popen: subprocess.Popen[bytes], kill_grace: float) -> None:
        self._popen = popen
        self._loop = asyncio.get_running_loop()
        self.pid = popen.pid
        self.group = ProcessGroup(self.pid, kill_grace, pinned=self._pinned,
                                  after_kill=self._reap_when_done)
        # told the group's ID just before the leader is reaped, while the ID is still the group's
        self.on_close: Callable[[int], None] | None = None
        self.reaped: asyncio.Future[None] = self._loop.create_future()  # done once reaped
        self._closed = False  # the server is done with the command: the leader may be reaped
        self._pidfd: int | None = None
        self._fds: dict[int, int | None] = {}
        self._grown: set[int] = set()
        for stream_no, pipe in ((0, popen.stdin), (1, popen.stdout), (2, popen.stderr)):
            if pipe is not None:
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                self._fds[stream_no] = fd
        self._exited: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._waiters: list[asyncio.Future[ExitStatus]] = []  # wait()'s callers, told at once
        self._watch_exit()

    def _watch_exit(self) -> None:
        """Learn of the leader's exit without reaping it (see the class's docstring).

        With a pidfd (Linux 5.3+), on the event loop. Without one, a thread waits in waitid()
        with WNOWAIT, which keeps the zombie just as well. Where there is no waitid() either, the
        event loop polls and reaps the leader as it finds it exited: from then on the group's ID
        may be given out again, so the group is not signalled any more (a background process
        that ignored SIGTERM is then not killed: a documented limit of such systems).
        """
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            if hasattr(os, "waitid"):
                threading.Thread(target=self._wait_in_thread, daemon=True,
                                 name=f"rexec-wait-{self.pid}").start()
            else:
                self._loop.call_soon(self._poll_exit)  # after Runner.start set on_close
            return
        self._loop.add_reader(self._pidfd, self._on_pidfd)

    def _peek(self, flags: int = 0) -> os.waitid_result | None:
        """The leader's exit status, leaving it unreaped; None while it runs (with WNOHANG).

        Raises ChildProcessError if something else reaped it (see ``_pinned``).
        """
        options = os.WEXITED | os.WNOWAIT | flags
        if self._pidfd is not None:
            try:
                return os.waitid(os.P_PIDFD, self._pidfd, options)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # Linux 5.3 has pidfds but no P_PIDFD
                    raise
        return os.waitid(os.P_PID, self.pid, options)  # our unreaped child: nobody else's PID

    def _on_pidfd(self) -> None:
        try:
            result = self._peek(os.WNOHANG)
        except ChildProcessError:
            self._lost_to_another_reaper()
            return
        if result is not None:
            assert self._pidfd is not None
            self._loop.remove_reader(self._pidfd)  # kept open until the reap, for _pinned
            self._set_exited(_returncode(result))

    def _wait_in_thread(self) -> None:
        try:
            result = self._peek()
        except ChildProcessError:
            result = None
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(self._on_thread_exit, result)

    def _on_thread_exit(self, result: os.waitid_result | None) -> None:
        if result is None:
            self._lost_to_another_reaper()
        else:
            self._set_exited(_returncode(result))

    def _poll_exit(self) -> None:
        returncode = self._popen.poll()  # reaps the leader: the group's ID is free from now on
        if returncode is None:
            self._loop.call_later(EXIT_POLL_INTERVAL, self._poll_exit)
            return
        self._mark_reaped()
        self._set_exited(returncode)

    def _lost_to_another_reaper(self) -> None:
        """Something else reaped the leader (SIGCHLD ignored?): its ID may be anyone's now."""
        if not self.reaped.done():
            self._mark_reaped()
            self._set_exited(self._popen.wait())  # the status is lost: Popen reports 0

    def _set_exited(self, returncode: int) -> None:
        if not self._exited.done():
            status = ExitStatus.from_returncode(returncode)
            self._exited.set_result(status)
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(status)
            self._waiters.clear()
        self._reap_when_done()

    def _pinned(self) -> bool:
        """Whether the leader is unreaped, alive or a zombie, so no other group can have its ID.

        Checked, not assumed: whatever reaped the server's children behind its back (SIGCHLD
        set to be ignored, a stray waitpid(-1)) would free the ID early.
        """
        if self.reaped.done():
            return False
        if self._pidfd is None and not hasattr(os, "waitid"):
            return True  # polling: only _poll_exit reaps, on this thread
        try:
            self._peek(os.WNOHANG)
        except ChildProcessError:
            self._lost_to_another_reaper()
            return False
        return True

    def _reap_when_done(self) -> None:
        """Reap the leader once it has exited, the server is done with it and no SIGKILL is due."""
        if (self.reaped.done() or not self._closed or not self._exited.done()
                or self.group.kill_due):
            return
        self._tell_on_close()  # first: the guardian must never hold an ID that is free
        self._popen.wait()  # at once: the leader is a zombie
        self._mark_reaped()

    def _mark_reaped(self) -> None:
        self._tell_on_close()
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self.reaped.done():
            self.reaped.set_result(None)

    def _tell_on_close(self) -> None:
        if self.on_close is not None:
            self.on_close(self.pid)
            self.on_close = None

    @property
    def stdin_open(self) -> bool:
        """Whether the child's standard input is a pipe that is still open."""
        return self._fds.get(0) is not None

    async def read_into(
        self, stream_no: int, buffer: bytearray, quiet_after_exit: float | None = None
    ) -> int:
        """Read the child's stdout (1) or stderr (2) into ``buffer``; 0 at end of file.

        With ``quiet_after_exit``, once the group's leader has exited, a pipe that stays quiet
        that long returns -1: a background process still holds it open, and waiting for its end
        of file would hang the command (the classic ``ssh host 'daemon &'`` hang).
        Reading into a buffer the caller reuses keeps a stream of any size from allocating (and
        faulting in) fresh memory for every chunk.
        """
        fd = self._fds.get(stream_no)
        if fd is None:
            return 0
        while True:
            try:
                count = os.readv(fd, [buffer])
            except BlockingIOError:
                if not await self._readable(fd, quiet_after_exit):
                    return -1
                continue
            if not count:
                self._close(stream_no)
            else:
                self._grow_if_full(stream_no, fd, count)
            return count

    async def _readable(self, fd: int, quiet_after_exit: float | None) -> bool:
        """Wait until ``fd`` is readable; False if it stayed quiet ``quiet_after_exit`` seconds
        after the leader's exit (see ``read_into``)."""
        if quiet_after_exit is not None and self._exited.done():
            try:
                async with asyncio.timeout(quiet_after_exit):
                    await _wait_ready(self._loop.add_reader, self._loop.remove_reader, fd)
            except TimeoutError:
                return False
        else:
            await _wait_ready(self._loop.add_reader, self._loop.remove_reader, fd,
                              also=self._exited if quiet_after_exit is not None else None)
        return True

    def _grow_if_full(self, stream_no: int, fd: int, count: int) -> None:
        if count >= FULL_DEFAULT_PIPE and stream_no not in self._grown:
            self._grown.add(stream_no)
            _grow_pipe(fd)

    def pipe_output(self, stream_no: int) -> PipeOutput | None:
        """Stdout (1) or stderr (2) as a pipe whose bytes may be moved without reading them
        (None once it is closed)."""
        return PipeOutput(self, stream_no) if self._fds.get(stream_no) is not None else None

    async def write_stdin(self, data: bytes | memoryview) -> bool:
        """Write all of ``data`` to the child's stdin; False if the child closed its end."""
        view = memoryview(data)
        while view:
            fd = self._fds.get(0)
            if fd is None:
                return False
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await _wait_ready(self._loop.add_writer, self._loop.remove_writer, fd)
                continue
            except (BrokenPipeError, ConnectionResetError):
                self._close(0)
                return False
            view = view[written:]
        return True

    def write_now(self, data: bytes | memoryview) -> int:
        """Write what the child's stdin takes without waiting; how many bytes that was (all of
        them when its stdin is closed: they are dropped, as ``write_stdin`` drops them)."""
        fd = self._fds.get(0)
        if fd is None:
            return len(data)
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError):
            self._close(0)
            return len(data)

    def close_stdin(self) -> None:
        """Close the child's standard input (the client sent EOF)."""
        self._close(0)

    def _close(self, stream_no: int) -> None:
        fd = self._fds.get(stream_no)
        if fd is not None:
            self._fds[stream_no] = None
            pipe = (self._popen.stdin, self._popen.stdout, self._popen.stderr)[stream_no]
            if pipe is not None:
                pipe.close()

    async def wait(self) -> ExitStatus:
        """Wait for the child (the group's leader) to exit.

        Each caller waits on a future of its own, resolved with ``_exited``: cancelling one
        leaves the others and ``_exited`` be, as ``asyncio.shield(self._exited)`` would, and
        the caller wakes one pass of the event loop sooner than through shield's chain.
        """
        if self._exited.done():
            return self._exited.result()
        waiter: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    @property
    def exited(self) -> bool:
        """Whether the group's leader has exited (it is reaped only after ``close``)."""
        return self._exited.done()

    @property
    def kill_grace(self) -> float:
        """Seconds between the SIGTERM and the SIGKILL of ``terminate``."""
        return self.group.kill_grace

    @property
    def timed_out(self) -> bool:
        """Whether the server stopped the command because it ran out of time."""
        return self.group.timed_out

    @property
    def exceeded(self) -> str | None:
        """The limit that made the server stop the command, if one did."""
        return self.group.exceeded

    def signal_group(self, signum: int) -> bool:
        """Send ``signum`` to what is left of the command's process group; False if not sent."""
        return self.group.signal(signum)

    def terminate(self) -> None:
        """SIGTERM the whole group now, SIGKILL what is left of it after the grace period."""
        self.group.terminate()

    def kill_now(self) -> None:
        """Send a SIGKILL that is due at once rather than at the end of the grace period."""
        self.group.kill_now()

    def exceed(self, limit: str) -> None:
        """The command went over a server limit: record which, and terminate its group."""
        self.group.exceed(limit)

    def expire(self) -> None:
        """The command ran out of time: mark it timed out and terminate its group."""
        self.group.expire()

    def resize(self, rows: int, cols: int, width: int = 0, height: int = 0) -> None:
        """A window size for a command without a terminal: nothing to apply."""

    def close(self) -> None:
        """The server is done with the command: release the pipes and signal the group no more.

        The leader is reaped as soon as it has exited and a SIGKILL still due has been sent
        (``reaped`` tells when); ``on_close`` is told just before.
        """
        for stream_no in (0, 1, 2):
            self._close(stream_no)
        self._closed = True
        self.group.close()
        self._reap_when_done()


def _waiting(fd: int) -> int:
    """How many bytes wait in the pipe ``fd`` (FIONREAD)."""
    count = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return int.from_bytes(count, sys.byteorder)


def _hung_up(fd: int) -> bool:
    """Whether every writer of the pipe ``fd`` has closed it (POLLHUP)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(mask & select.POLLHUP for _, mask in poller.poll(0))


class PipeOutput:
    """One of a ``ChildProcess``'s output pipes, for a pump that moves its bytes on without
    reading them (``os.splice`` into the socket, rexec.server.stream).

    ``ready()`` tells how many bytes wait in the pipe: they stay there until moved, since only
    the pump reads the pipe, so a frame's header can declare exactly that many before its body
    is spliced. ``fd`` is the pipe's descriptor; ``take`` reads waiting bytes, for when they
    cannot be moved (the socket has frames queued ahead of them, or the bytes are dropped).
    """

    def __init__(self, child: ChildProcess, stream_no: int) -> None:
        self._child = child
        self.stream_no = stream_no

    @property
    def fd(self) -> int:
        """The pipe's descriptor (ValueError once it is closed)."""
        fd = self._child._fds.get(self.stream_no)
        if fd is None:
            raise ValueError(f"stream {self.stream_no} of the child is closed")
        return fd

    async def ready(self, quiet_after_exit: float | None = None) -> int:
        """Wait for bytes in the pipe and return how many wait; 0 at end of file (the pipe is
        closed then), -1 as ``ChildProcess.read_into``'s quiet pipe after the leader's exit."""
        child, stream_no = self._child, self.stream_no
        woken = False
        while (fd := child._fds.get(stream_no)) is not None:
            if count := _waiting(fd):
                child._grow_if_full(stream_no, fd, count)
                return count
            # Readable and empty: every writer has closed it (a hung-up pipe is readable), or
            # a spurious wake-up. What a last writer wrote is counted again first.
            if woken and _hung_up(fd):
                if count := _waiting(fd):
                    return count
                child._close(stream_no)
                return 0
            if not await child._readable(fd, quiet_after_exit):
                return -1
            woken = True
        return 0

    def take(self, view: memoryview) -> int:
        """Read up to ``len(view)`` of the waiting bytes into ``view``; how many were read."""
        try:
            return os.readv(self.fd, [view])
        except BlockingIOError:
            return 0
