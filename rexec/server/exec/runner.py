"""Starting the child process of one command: argv or shell, user switch, guardian hook.

A command runs as ``/bin/sh -c COMMAND`` in a new session, so it leads its own process group and
every signal rexec sends (timeout, cancel, lost client) reaches the whole group, grandchildren
included. A simple command (``direct_argv``, in ``shortcut``) is executed directly instead, as
``bash -c`` does. The running child is a ``ChildProcess`` (``child``). ``Runner.start`` is the
one place a process is made: a test can swap in another Runner.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rexec.server.exec import defaults
from rexec.server.exec.child import ChildProcess
from rexec.server.exec.env import Account
from rexec.server.exec.shortcut import direct_argv

if TYPE_CHECKING:
    from rexec.server.exec.guardian import Guardian

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
