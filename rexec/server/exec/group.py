"""A command's process group: signal it, terminate -> grace -> kill, and why it was stopped.

Kept apart from the pipe plumbing of ``ChildProcess`` so that any child whose leader heads its
own group (a PTY child too) stops the same way. The group's ID is its leader's PID, which the
kernel may give out again once the leader is reaped: the group is signalled only while its
owner's ``pinned()`` says the leader is still unreaped, so a signal reaches the command's
processes or nobody, never a group that took the ID since.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable


class ProcessGroup:
    """Signals one command's process group, and stops it: SIGTERM, a grace period, SIGKILL.

    ``pinned`` says whether the leader is still unreaped (the ID is still this group's);
    ``after_kill`` is called once the SIGKILL due at the end of the grace has been sent, so the
    owner may reap the leader it kept for it.
    """

    def __init__(self, pgid: int, kill_grace: float, *, pinned: Callable[[], bool],
                 after_kill: Callable[[], None]) -> None:
        self.pgid = pgid
        self.kill_grace = kill_grace
        # A terminal's session is stopped as a hangup stops it: SIGHUP first, which a shell
        # passes on to its jobs (each in a group of its own), then SIGTERM and SIGKILL.
        self.hangup_first = False
        self.timed_out = False
        self.exceeded: str | None = None  # the limit that made the server stop it
        self._pinned = pinned
        self._after_kill = after_kill
        self._loop = asyncio.get_running_loop()
        self._closed = False  # the server is done with the command: no signal from it any more
        self._kill_armed = False
        self._kill_timer: asyncio.TimerHandle | None = None  # while a SIGKILL is due

    @property
    def kill_due(self) -> bool:
        """Whether a SIGKILL is still to be sent (the leader must stay unreaped for it)."""
        return self._kill_timer is not None

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to what is left of the group; False if not sent.

        Nothing is sent once the server is done with the command (``close``), nor once the
        leader has been reaped: its ID may be another group's by then.
        """
        return not self._closed and self._signal(signum)

    def _signal(self, signum: int) -> bool:
        if not self._pinned():
            return False
        try:
            os.killpg(self.pgid, signum)  # the zombie leader, if that is all, takes no signal
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def terminate(self) -> None:
        """SIGTERM the whole group now, SIGKILL what is left of it after the grace period."""
        if self.hangup_first:
            self.signal(signal.SIGHUP)
        if self.signal(signal.SIGTERM) and not self._kill_armed:
            self._kill_armed = True
            self._kill_timer = self._loop.call_later(self.kill_grace, self._kill)

    def _kill(self) -> None:
        self._kill_timer = None
        self._signal(signal.SIGKILL)  # even after close(): the leader is kept unreaped for it
        self._after_kill()

    def kill_now(self) -> None:
        """Send a SIGKILL that is due at once rather than at the end of the grace period."""
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill()

    def exceed(self, limit: str) -> None:
        """The command went over a server limit: record which, and terminate the group."""
        self.exceeded = limit
        self.terminate()

    def expire(self) -> None:
        """The command ran out of time: mark it timed out and terminate the group."""
        self.timed_out = True
        self.terminate()

    def close(self) -> None:
        """The server is done with the command: no signal from it any more (a due SIGKILL
        still goes out)."""
        self._closed = True
