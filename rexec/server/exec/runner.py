"""Starting the child process of one command: argv or shell, user switch, guardian hook.

A command runs as ``/bin/sh -c COMMAND`` in a new session, so it leads its own process group and
every signal rexec sends (timeout, cancel, lost client) reaches the whole group, grandchildren
included. A simple command (``direct_argv``, in ``shortcut``) is executed directly instead, as
``bash -c`` does. The running child is a ``ChildProcess`` (``child``). ``Runner`` is the one
place a process is made: a test can swap in another Runner.

``Runner.spawn_shell`` and ``Runner.spawn`` make the same process as ``start_shell`` and
``start``, but when the child needs nothing run between fork and exec (no user switch, no
rlimits) they call ``subprocess.Popen`` on a spawner thread: Python then uses vfork, and holds
the calling thread (not the GIL) until the child has exec'd, which takes 0.4-2 ms a command on
a loaded machine; on the event loop that stall was most of the server's time in a fan-out
(docs/benchmarks.md). The Popen call and its arguments are the very same, so the child is the
server's child with the same session, umask, descriptors and environment; the loop thread
alone wraps it (``ChildProcess``) and tells the guardian.

A command that starts while no other child of this Runner lives and none is starting is
spawned on the loop all the same: nothing else waits on the loop then, and the two hand-offs
to a spawner thread and back cost a command 250-370 us of its latency (about a third of what
the server adds to ``true`` on a persistent connection). The second command to arrive while
one runs goes to a thread, so a fan-out still spawns off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from rexec.server.exec import defaults
from rexec.server.exec.child import ChildProcess
from rexec.server.exec.env import Account
from rexec.server.exec.pty import PtyChild, popen_on_pty
from rexec.server.exec.shortcut import direct_argv

if TYPE_CHECKING:
    from rexec.server.exec.guardian import Guardian

_C = TypeVar("_C", bound=ChildProcess)
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SPAWN_THREADS = 4
"""Spawner threads: each waits out one vfork + exec with the GIL released, so a few let
children start on every core while the event loop goes on."""


@dataclass(frozen=True)
class Confinement:
    """How a child is held in: the user it runs as, its umask and its resource limits.

    With ``user`` (and a server running as root), the child sets its supplementary groups
    (initgroups), group and user, empties its capability bounding set when the user is not
    root, and sets PR_SET_NO_NEW_PRIVS, so that no setuid program or file capability can give
    it back what it gave up; all of it between fork and exec, the server never changes identity.
    """

    user: Account | None = None
    umask: int = defaults.UMASK
    rlimits: tuple[tuple[int, int], ...] = ()  # (resource.RLIMIT_*, soft = hard limit)


@functools.cache
def _prctl() -> Callable[..., int]:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl


@functools.cache
def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63


def _child_setup(confine: Confinement) -> Callable[[], None] | None:
    """The function the child runs between fork and exec, or None when nothing is to be done."""
    user = confine.user
    if user is not None and os.geteuid() != 0 and user.uid != os.geteuid():
        raise PermissionError(f"running commands as {user.name!r} needs the server to run as root")
    if user is not None and os.geteuid() != 0:
        user = None  # already that user: nothing to switch
    if user is None and not confine.rlimits:
        return None
    rlimits = confine.rlimits
    groups = os.getgrouplist(user.name, user.gid) if user is not None else []
    prctl = _prctl() if user is not None else None
    drop_caps = range(_last_capability() + 1) if user is not None and user.uid != 0 else range(0)

    def setup() -> None:  # in the child: no allocation-heavy work, no locks
        for resource_id, limit in rlimits:
            resource.setrlimit(resource_id, (limit, limit))
        if user is None or prctl is None:
            return
        os.setgroups(groups)
        os.setresgid(user.gid, user.gid, user.gid)
        for cap in drop_caps:
            prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError("PR_SET_NO_NEW_PRIVS failed")
        os.setresuid(user.uid, user.uid, user.uid)

    return setup


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

    def __init__(self, kill_grace: float = defaults.KILL_GRACE,
                 guardian: Guardian | None = None) -> None:
        self.kill_grace = kill_grace
        self.guardian = guardian
        self._spawner: ThreadPoolExecutor | None = None
        self._live = 0  # children made and not yet closed, and spawns on a thread meanwhile

    @property
    def alone(self) -> bool:
        """No child of this Runner lives or is starting: a spawn now holds nothing up."""
        return self._live == 0

    def on_loop(self, confine: Confinement) -> bool:
        """Whether ``spawn`` and ``spawn_shell`` would start a child so confined on the event
        loop: alone, or with something to run between fork and exec."""
        return self.alone or _child_setup(confine) is not None

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
        setup = _child_setup(confine)
        return self._adopt(_popen_shell(command, env, cwd, stdin, umask=confine.umask,
                                        setup=setup))

    def start(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | None = None,
        stdin: bool = False,
        confine: Confinement = Confinement(),
        *,
        executable: str | None = None,
    ) -> ChildProcess:
        """Start ``argv`` with exactly ``env``; OSError if it cannot (a missing cwd or program),
        SubprocessError if the child could not confine itself (see ``describe_spawn_error``).
        ``executable``: the program, when ``argv[0]`` is only its name."""
        setup = _child_setup(confine)
        return self._adopt(_popen(argv, env, cwd, stdin, umask=confine.umask, setup=setup,
                                  executable=executable))

    def start_pty(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | None,
        window: tuple[int, int, int, int],
        confine: Confinement = Confinement(),
        *,
        executable: str | None = None,
    ) -> PtyChild:
        """Start ``argv`` on a new pseudo-terminal of size ``window`` (rows, cols, width,
        height), the terminal its controlling terminal. It forks (the controlling terminal is
        set between fork and exec), on the event loop, as a user switch does."""
        popen, master, tty = popen_on_pty(argv, env, cwd, window=window, umask=confine.umask,
                                          setup=_child_setup(confine), executable=executable)
        return self._track(PtyChild(popen, master, tty, self.kill_grace))

    async def spawn_shell(
        self,
        command: str,
        env: Mapping[str, str],
        cwd: str | None = None,
        stdin: bool = False,
        confine: Confinement = Confinement(),
    ) -> ChildProcess:
        """``start_shell`` without holding up the event loop (see the module's docstring)."""
        if self.on_loop(confine):  # alone, or fork + preexec_fn: on the loop
            return self.start_shell(command, env, cwd, stdin, confine)
        return self._adopt(await self._on_spawner(functools.partial(
            _popen_shell, command, env, cwd, stdin, umask=confine.umask, setup=None)))

    async def spawn(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | None = None,
        stdin: bool = False,
        confine: Confinement = Confinement(),
        *,
        executable: str | None = None,
    ) -> ChildProcess:
        """``start`` without holding up the event loop (see the module's docstring)."""
        if self.on_loop(confine):
            return self.start(argv, env, cwd, stdin, confine, executable=executable)
        return self._adopt(await self._on_spawner(functools.partial(
            _popen, argv, env, cwd, stdin, umask=confine.umask, setup=None,
            executable=executable)))

    async def _on_spawner(self, make: Callable[[], subprocess.Popen[bytes]]
                          ) -> subprocess.Popen[bytes]:
        """``make()`` on a spawner thread. If the caller is cancelled meanwhile, the child is
        still wrapped once it exists, then killed and reaped: no process escapes the server."""
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="rexec-spawn")
        made = asyncio.get_running_loop().run_in_executor(self._spawner, make)
        self._live += 1  # starting: a command arriving meanwhile goes to a thread too
        try:
            return await asyncio.shield(made)
        except asyncio.CancelledError:
            made.add_done_callback(self._stop_orphan)
            raise
        finally:
            self._live -= 1  # the caller adopts the child at once: _track counts it then

    def _stop_orphan(self, made: asyncio.Future[subprocess.Popen[bytes]]) -> None:
        """A spawn whose caller was cancelled: kill the child's group and reap its leader."""
        if made.cancelled() or made.exception() is not None:
            return
        child = self._adopt(made.result())
        child.signal_group(signal.SIGKILL)  # it never ran for anyone: nothing to wind down
        child.close()  # reaped as soon as it has exited

    def _adopt(self, popen: subprocess.Popen[bytes]) -> ChildProcess:
        """Wrap a new child on the event loop and tell the guardian of its group."""
        return self._track(ChildProcess(popen, self.kill_grace))

    def _track(self, child: _C) -> _C:
        """Count ``child`` as live until it is closed, and tell the guardian of its group."""
        self._live += 1
        if self.guardian is not None:
            self.guardian.watch(child.pid)
        child.on_close = self._closed
        return child

    def _closed(self, pid: int) -> None:
        self._live -= 1
        if self.guardian is not None:
            self.guardian.forget(pid)

    def close(self) -> None:
        """Let the spawner threads go (a later spawn starts them again)."""
        if self._spawner is not None:
            self._spawner.shutdown(wait=False)
            self._spawner = None


def _popen_shell(command: str, env: Mapping[str, str], cwd: str | None, stdin: bool, *,
                 umask: int, setup: Callable[[], None] | None) -> subprocess.Popen[bytes]:
    """The child of ``Runner.start_shell``: ``direct_argv`` when it can, else ``/bin/sh -c``."""
    words = direct_argv(command)
    if words is not None and env.get("PATH"):
        with contextlib.suppress(OSError):
            return _popen(words, env, cwd, stdin, umask=umask, setup=setup)
    return _popen(["/bin/sh", "-c", command], env, cwd, stdin, umask=umask, setup=setup)


def _popen(argv: list[str], env: Mapping[str, str], cwd: str | None, stdin: bool, *,
           umask: int, setup: Callable[[], None] | None,
           executable: str | None = None) -> subprocess.Popen[bytes]:
    """The one Popen call: a new session, exactly ``env``, every other descriptor closed.

    Safe on any thread (it touches no event loop). Without ``setup``, Python uses vfork."""
    return subprocess.Popen(
        argv,
        executable=executable,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
        umask=umask,
        preexec_fn=setup,  # noqa: PLW1509 - user switch and limits, on the loop thread only
    )
