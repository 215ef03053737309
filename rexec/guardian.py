"""The guardian: a small process that kills the commands of a server that died.

Why a process: when ``rexec-server`` is killed (SIGKILL, OOM killer, a crash), nothing in it
runs to stop its commands, and they would run on, orphaned. PR_SET_PDEATHSIG would need a
``preexec_fn``, which forces fork() instead of vfork() (measured on the 2-core development VM:
spawning and reaping ``sh -c true`` went from 1.4 ms to 5.6 ms), and it reaches only the direct
child, not grandchildren. The guardian costs one short pipe write per command and reaches the
whole process group.

The server starts it once, in a session of its own (so a signal to the server's process group
does not reach it), and writes ``+PGID`` when a command starts and ``-PGID`` when it has
finished, on a pipe. When the pipe reaches end of file, the server is gone: the guardian sends
SIGTERM to every group still registered, waits the kill grace, sends SIGKILL, and exits. A
server that stops normally has stopped its commands already, so the guardian finds nothing to
do. Limits: a command that leaves its process group (``setsid``, a daemon that double-forks
into a new session) is out of reach, by design: that is how daemons are started on purpose.

Run as ``python -m rexec.guardian KILL_GRACE``; it reads its orders from standard input.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time


def _signal_groups(groups: set[int], signum: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def guard(orders: int, kill_grace: float) -> set[int]:
    """Follow the orders on file descriptor ``orders`` until EOF; return the groups left."""
    groups: set[int] = set()
    pending = b""
    while chunk := os.read(orders, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
    if groups:
        _signal_groups(groups, signal.SIGTERM)
        time.sleep(kill_grace)
        _signal_groups(groups, signal.SIGKILL)
    return groups


def main() -> int:
    """Entry point of the guardian process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the end of the pipe ends us
    kill_grace = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    guard(sys.stdin.fileno(), kill_grace)
    return 0


class Guardian:
    """The server's handle on its guardian process."""

    def __init__(self, kill_grace: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "rexec.guardian", str(kill_grace)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            close_fds=True,
        )
        assert self._process.stdin is not None
        self._pipe = self._process.stdin.fileno()
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
