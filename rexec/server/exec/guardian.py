"""The guardian: a small process that kills the commands of a server that died.

Why a process: when ``rexec-server`` is killed (SIGKILL, OOM killer, a crash), nothing in it
runs to stop its commands, and they would run on, orphaned. PR_SET_PDEATHSIG would need a
``preexec_fn``, which forces fork() instead of vfork() (measured on the 2-core development VM:
spawning and reaping ``sh -c true`` went from 1.4 ms to 5.6 ms), and it reaches only the direct
child, not grandchildren. The guardian costs one short pipe write per command and reaches the
whole process group.

The server starts it once, in a session of its own (so a signal to the server's process group
does not reach it), and writes ``+PGID`` when a command starts and ``-PGID`` when it has
finished, on a pipe. The guardian does not wake up for those writes: it waits in epoll for the
pipe's hang-up alone (an empty event mask), and reads what has piled up every half second. A
write that woke it would cost the server a context switch per order: profiling the server under
load found those two writes per command taking ~0.38 ms each, a third of its CPU time for
``true``. When the pipe hangs up, the server is gone: the guardian reads the last orders, sends
SIGTERM to every group still registered, waits the kill grace, sends SIGKILL, and exits. A
server that stops normally has stopped its commands already, so the guardian finds nothing to
do. Limits: a command that leaves its process group (``setsid``, a daemon that double-forks
into a new session) is out of reach, by design: that is how daemons are started on purpose.

Which IDs it signals: the server writes ``-PGID`` just before it reaps the group's leader, and
until then that zombie keeps the ID from being given out again
(rexec.server.exec.child.ChildProcess), so the groups registered when the server dies are its
commands'. Once it is dead its children are reaped by init, and a group's ID is free again once its
last process is gone. So the guardian takes a pidfd of each leader still there as soon as the
server is gone, and signals through it with PIDFD_SIGNAL_PROCESS_GROUP (Linux 6.9): that reaches
the group the leader led, and nothing once it is gone, even if another group has its ID by then
(the SIGKILL comes a kill grace later). Older kernels, and groups whose leader was already reaped,
get ``killpg`` as before.

Run as ``python -m rexec.server.exec.guardian KILL_GRACE``; it reads its orders from standard input.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time

from rexec.server.exec.defaults import KILL_GRACE

DRAIN_INTERVAL = 0.5
"""Seconds between reads of the orders that piled up (the pipe holds ~100,000 of them)."""

PIPE_SIZE = 1024 * 1024

PIDFD_SIGNAL_PROCESS_GROUP = 4
"""pidfd_send_signal() flag (linux/pidfd.h, Linux 6.9): signal the group the pidfd's process
leads, by identity: ESRCH once it is gone, whoever has its ID since."""


def _leaders(groups: set[int]) -> dict[int, int | None]:
    """A pidfd of each group's leader still there (alive, or a zombie), else None."""
    leaders: dict[int, int | None] = {}
    for pgid in groups:
        try:
            leaders[pgid] = os.pidfd_open(pgid)
        except (OSError, AttributeError):
            leaders[pgid] = None
    return leaders


def _signal_groups(leaders: dict[int, int | None], signum: int) -> None:
    for pgid, pidfd in leaders.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pidfd is not None:
                try:
                    signal.pidfd_send_signal(pidfd, signum, None, PIDFD_SIGNAL_PROCESS_GROUP)
                    continue
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # ESRCH: gone, so never killpg() its ID
                        raise
            os.killpg(pgid, signum)  # before Linux 6.9, or no leader left to hold


def guard(orders: int, kill_grace: float, drain_interval: float = DRAIN_INTERVAL) -> set[int]:
    """Follow the orders on file descriptor ``orders`` until EOF; return the groups left."""
    groups: set[int] = set()
    pending = b""
    os.set_blocking(orders, False)
    with select.epoll(1) as epoll:
        epoll.register(orders, 0)  # no EPOLLIN: only the hang-up (EPOLLHUP) wakes us
        eof = False
        while not eof:
            epoll.poll(drain_interval)
            while True:
                try:
                    chunk = os.read(orders, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    eof = True
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line[:1] == b"+":
                        groups.add(int(line[1:]))
                    elif line[:1] == b"-":
                        groups.discard(int(line[1:]))
    if groups:
        leaders = _leaders(groups)  # at once, before init reaps any of them
        try:
            _signal_groups(leaders, signal.SIGTERM)
            time.sleep(kill_grace)
            _signal_groups(leaders, signal.SIGKILL)
        finally:
            for pidfd in leaders.values():
                if pidfd is not None:
                    os.close(pidfd)
    return groups


def main() -> int:
    """Entry point of the guardian process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the end of the pipe ends us
    kill_grace = float(sys.argv[1]) if len(sys.argv) > 1 else KILL_GRACE
    guard(sys.stdin.fileno(), kill_grace)
    return 0


def guardian_environment() -> dict[str, str]:
    """What the guardian needs to start (where Python finds rexec), and no secret."""
    # This file is rexec/server/exec/guardian.py: the root is the folder that holds rexec/.
    package_root = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": os.pathsep.join(paths)}
    if "PYTHONHOME" in os.environ:
        env["PYTHONHOME"] = os.environ["PYTHONHOME"]
    return env


class Guardian:
    """The server's handle on its guardian process."""

    def __init__(self, kill_grace: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "rexec.server.exec.guardian", str(kill_grace)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            close_fds=True, env=guardian_environment(),
        )
        assert self._process.stdin is not None
        self._pipe = self._process.stdin.fileno()
        with contextlib.suppress(OSError, AttributeError):  # room between the guardian's reads
            fcntl.fcntl(self._pipe, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.broken = False

    @property
    def pid(self) -> int:
        """The guardian's process ID."""
        return self._process.pid

    def _tell(self, order: str) -> None:
        if self.broken:
            return
        try:
            os.write(self._pipe, order.encode())
        except OSError as exc:
            self.broken = True  # commands still run, just unguarded: say so, once
            logging.getLogger("rexec.server").error(
                '{"event": "guardian_lost", "reason": %s}', json.dumps(str(exc)))

    def watch(self, pgid: int) -> None:
        """A command's process group started."""
        self._tell(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        """A command's process group finished (its leftovers, if any, are on purpose)."""
        self._tell(f"-{pgid}\n")

    def close(self, timeout: float = 10.0) -> None:
        """Let the guardian go (it exits at once with nothing to guard) and reap it."""
        assert self._process.stdin is not None
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


if __name__ == "__main__":
    sys.exit(main())
