"""Starting and supervising the child process of one command.

A command runs as ``/bin/sh -c COMMAND`` in a new session, so it leads its own process group and
every signal rexec sends (timeout, cancel, lost client) reaches the whole group, grandchildren
included. A simple command (``direct_argv``) is executed directly instead, as ``bash -c`` does:
the shell would only have split it at spaces and looked it up in PATH, and starting it cost
more than the command itself for ``hostname`` and its like (about 1.2 ms of CPU per command).

Its pipes are non-blocking and read on the event loop; its exit is watched through a
pidfd, so no thread or child watcher is involved. ``Runner.start`` is the one place a process is
made: a test can swap in another Runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import resource
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rexec.childenv import Account

if TYPE_CHECKING:
    from rexec.guardian import Guardian

READ_CHUNK = 256 * 1024
PIPE_SIZE = 1024 * 1024  # asked of the kernel for stdout/stderr pipes; best effort
FULL_DEFAULT_PIPE = 64 * 1024
"""A read this large found the pipe full at its default size: the writer outpaces us, so the
pipe is grown to PIPE_SIZE then (growing every command's pipes up front cost more than
``true`` took to run)."""


_PLAIN_WORDS = re.compile(r"[A-Za-z0-9_./,:@%+=-]+(?: +[A-Za-z0-9_./,:@%+=-]+)*")
"""Words a shell passes on unchanged: no quotes, escapes, expansions, globs, tildes, comments,
redirections, operators or other whitespace, separated by single or repeated spaces."""

SHELL_WORDS = frozenset("""
    ! . : [ [[ ]] { } alias bg bind break builtin caller case cd chdir command compgen complete
    compopt continue coproc declare dirs disown do done echo elif else enable esac eval exec exit
    export false fc fg fi for function getopts hash help history if in jobs kill let local logout
    mapfile popd printf pushd pwd read readarray readonly return select set shift shopt source
    suspend test then time times trap true type typeset ulimit umask unalias unset until wait
    while
""".split())  # noqa: SIM905 - a word list reads better as text
"""Builtins and reserved words of dash and bash: a command starting with one needs the shell."""


def direct_argv(command: str) -> list[str] | None:
    """The argument vector of a command the shell would run as a plain program, else None.

    That is a command of plain words (``_PLAIN_WORDS``) whose first word is neither a shell
    builtin or reserved word nor an assignment (``A=1 cmd``). ``/bin/sh -c`` would split it at
    the spaces, find the first word in PATH and run it with the other words as arguments.
    """
    if not _PLAIN_WORDS.fullmatch(command):
        return None
    words = command.split()
    if words[0] in SHELL_WORDS or "=" in words[0]:
        return None
    return words


def shell_pwd(cwd: str | None, inherited: str | None) -> str:
    """The PWD ``/bin/sh`` would export in directory ``cwd`` (None: this process's).

    As dash and bash do: the inherited PWD when it is absolute and names that very directory
    (it may go through symbolic links), else the directory's physical path.
    """
    where = "." if cwd is None else cwd
    if inherited and os.path.isabs(inherited):
        with contextlib.suppress(OSError):
            if os.path.samefile(inherited, where):
                return inherited
    return os.path.realpath(where)


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


class ChildProcess:
    """A running command: its pipes, its process group, and how it ended."""

    def __init__(self, popen: subprocess.Popen[bytes], kill_grace: float) -> None:
        self._popen = popen
        self._loop = asyncio.get_running_loop()
        self.pid = popen.pid
        self.kill_grace = kill_grace
        self.timed_out = False
        self.exceeded: str | None = None  # the limit that made the server stop it
        self.on_close: Callable[[int], None] | None = None  # told the group's ID at close()
        self._kill_timer: asyncio.TimerHandle | None = None
        self._fds: dict[int, int | None] = {}
        self._grown: set[int] = set()
        for stream_no, pipe in ((0, popen.stdin), (1, popen.stdout), (2, popen.stderr)):
            if pipe is not None:
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                self._fds[stream_no] = fd
        self._exited: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._watch_exit()

    def _watch_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            # No pidfd (old kernel): wait in a thread instead.
            waiter = self._loop.run_in_executor(None, self._popen.wait)
            waiter.add_done_callback(lambda f: self._set_exited(f.result()))
            return

        def on_exit() -> None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            self._set_exited(self._popen.wait())

        self._loop.add_reader(pidfd, on_exit)

    def _set_exited(self, returncode: int) -> None:
        if not self._exited.done():
            self._exited.set_result(ExitStatus.from_returncode(returncode))

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
                if quiet_after_exit is not None and self._exited.done():
                    try:
                        async with asyncio.timeout(quiet_after_exit):
                            await _wait_ready(self._loop.add_reader, self._loop.remove_reader, fd)
                    except TimeoutError:
                        return -1
                else:
                    await _wait_ready(self._loop.add_reader, self._loop.remove_reader, fd,
                                      also=self._exited if quiet_after_exit is not None else None)
                continue
            if not count:
                self._close(stream_no)
            elif count >= FULL_DEFAULT_PIPE and stream_no not in self._grown:
                self._grown.add(stream_no)
                _grow_pipe(fd)
            return count

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
        """Wait for the child (the group's leader) to exit."""
        return await asyncio.shield(self._exited)

    @property
    def exited(self) -> bool:
        """Whether the group's leader has exited and been reaped."""
        return self._exited.done()

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the command's whole process group, if any of it is left."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def terminate(self) -> None:
        """SIGTERM the whole group now, SIGKILL it after the grace period."""
        self.signal_group(signal.SIGTERM)
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(
                self.kill_grace, self.signal_group, signal.SIGKILL
            )

    def exceed(self, limit: str) -> None:
        """The command went over a server limit: record which, and terminate its group."""
        self.exceeded = limit
        self.terminate()

    def expire(self) -> None:
        """The command ran out of time: mark it timed out and terminate its group."""
        self.timed_out = True
        self.terminate()

    def forget_group_if_empty(self) -> None:
        """Cancel a pending SIGKILL if the whole group is gone, so it cannot hit a reused ID."""
        if self._kill_timer is None:
            return
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            self._kill_timer.cancel()
        except PermissionError:
            pass

    def close(self) -> None:
        """Release the pipes (the exit watcher closes itself); tell ``on_close`` once."""
        for stream_no in (0, 1, 2):
            self._close(stream_no)
        if self.on_close is not None:
            self.on_close(self.pid)
            self.on_close = None


PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class Confinement:
    """How a child is held in: the user it runs as, its umask and its resource limits.

    With ``user`` (and a server running as root), the child sets its supplementary groups
    (initgroups), group and user, empties its capability bounding set when the user is not
    root, and sets PR_SET_NO_NEW_PRIVS, so that no setuid program or file capability can give
    it back what it gave up; all of it between fork and exec, the server never changes identity.
    """

    user: Account | None = None
    umask: int = 0o022
    rlimits: tuple[tuple[int, int], ...] = ()  # (resource.RLIMIT_*, soft = hard limit)


def _prctl() -> Callable[..., int]:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63


def _child_setup(confine: Confinement) -> Callable[[], None] | None:
    """The function the child runs between fork and exec, or None when nothing is to be done."""
    user = confine.user
    switch = user is not None and (os.geteuid() == 0 or user.uid != os.geteuid())
    if not switch and not confine.rlimits:
        return None
    if switch and os.geteuid() != 0:
        assert user is not None
        raise PermissionError(f"running commands as {user.name!r} needs the server to run as root")
    rlimits = confine.rlimits
    if not switch:
        def set_limits() -> None:
            for resource_id, limit in rlimits:
                resource.setrlimit(resource_id, (limit, limit))
        return set_limits
    assert user is not None
    groups = os.getgrouplist(user.name, user.gid)
    prctl = _prctl()
    drop_caps = range(_last_capability() + 1) if user.uid != 0 else range(0)

    def switch_user() -> None:  # in the child: no allocation-heavy work, no locks
        for resource_id, limit in rlimits:
            resource.setrlimit(resource_id, (limit, limit))
        os.setgroups(groups)
        os.setresgid(user.gid, user.gid, user.gid)
        for cap in drop_caps:
            prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError("PR_SET_NO_NEW_PRIVS failed")
        os.setresuid(user.uid, user.uid, user.uid)

    return switch_user


def describe_spawn_error(exc: BaseException, argv: list[str], cwd: str | None,
                         confine: Confinement) -> str:
    """What stopped a command from starting, naming the program, directory or user at fault."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if cwd is not None and exc.filename == cwd:
            return f"the working directory: {reason}"
        if exc.filename is not None:
            return f"program {argv[0]!r}: {reason}"
        return reason
    if confine.user is not None:
        return (f"could not switch to user {confine.user.name!r} or apply its limits"
                f" (rlimits, groups) in the child: {exc}")
    return f"could not apply the resource limits in the child: {exc}"


class Runner:
    """Starts commands in their own session: ``/bin/sh -c COMMAND``, or an argv without a shell."""

    def __init__(self, kill_grace: float = 5.0, guardian: Guardian | None = None) -> None:
        self.kill_grace = kill_grace
        self.guardian = guardian

    def start_shell(
        self,
        command: str,
        env: Mapping[str, str],
        cwd: str | None = None,
        stdin: bool = False,
        confine: Confinement = Confinement(),
    ) -> ChildProcess:
        """Start ``command`` as ``/bin/sh -c COMMAND`` would run it; see ``start`` for the rest.

        A simple command (``direct_argv``) is executed directly (``env`` carries the PWD the
        shell would export). When that fails (no such program, not executable, a script
        without ``#!``), the shell is started after all: it reports the failure in its own
        words and with its own status (127, 126), or runs the script, exactly as without this
        shortcut. Without PATH, sh and execvp would search different defaults: the shell runs.
        """
        words = direct_argv(command)
        if words is not None and env.get("PATH"):
            with contextlib.suppress(OSError):
                return self.start(words, env, cwd, stdin, confine)
        return self.start(["/bin/sh", "-c", command], env, cwd, stdin, confine)

    def start(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | None = None,
        stdin: bool = False,
        confine: Confinement = Confinement(),
    ) -> ChildProcess:
        """Start ``argv`` with exactly ``env``; OSError if it cannot (a missing cwd or program),
        SubprocessError if the child could not confine itself (see ``describe_spawn_error``)."""
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            umask=confine.umask,
            preexec_fn=_child_setup(confine),  # noqa: PLW1509 - user switch and limits
        )
        child = ChildProcess(popen, self.kill_grace)
        if self.guardian is not None:
            self.guardian.watch(child.pid)
            child.on_close = self.guardian.forget
        return child
