"""Server-wide limits on what clients may ask, and the penalty for failed authentications."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from rexec.frames import MAX_COMMAND_LENGTH, Run
from rexec.identity import Refusal

PENALTY_WINDOW = 30.0  # seconds a failed authentication counts against its source


@dataclass
class ServerLimits:
    """Server-wide limits, for every identity (see ServerSettings for their meaning)."""

    max_output: int | None = None
    max_command_length: int = MAX_COMMAND_LENGTH
    max_env_bytes: int = 64 * 1024
    max_startups: int = 64  # unauthenticated connections at once; the oldest make room
    idle_timeout: float | None = 900.0  # authenticated, no command running
    auth_penalty_max: float = 3.0  # the longest a source with recent failures waits

    def check(self, run: Run) -> Refusal | None:
        """Refuse a command line or environment over the limits."""
        if len(run.command.encode()) > self.max_command_length:
            return Refusal("max_command_length", "refused: the command line is longer than"
                           f" {self.max_command_length} bytes (max_command_length)")
        env_bytes = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in run.env.items())
        if env_bytes > self.max_env_bytes:
            return Refusal("max_env_bytes", f"refused: the environment takes {env_bytes} bytes,"
                           f" more than {self.max_env_bytes} (max_env_bytes)")
        return None


class AuthPenalty:
    """A per-source delay that grows with recent failed authentications, and is capped.

    A source's failures count for PENALTY_WINDOW seconds; each new connection from it waits
    0.25 s x 2^(failures-1), at most ``max_delay``, before it is challenged. So every attempt
    is answered within seconds, and the right token works again (with no delay) once a source
    has had no failure for PENALTY_WINDOW seconds.
    """

    def __init__(self, max_delay: float, max_sources: int = 10_000) -> None:
        self.max_delay = max_delay
        self.max_sources = max_sources
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, source: str) -> deque[float]:
        times = self._failures.get(source, deque())
        horizon = time.monotonic() - PENALTY_WINDOW
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            self._failures.pop(source, None)
        return times

    def delay(self, source: str) -> float:
        """Seconds this source waits before its challenge."""
        count = len(self._recent(source))
        return 0.0 if count == 0 else min(self.max_delay, 0.25 * 2 ** (count - 1))

    def failed(self, source: str) -> int:
        """Record a failure; return the source's recent failure count."""
        times = self._recent(source)
        if source not in self._failures:
            if len(self._failures) >= self.max_sources:  # bounded: forget the oldest source
                self._failures.pop(next(iter(self._failures)))
            self._failures[source] = times
        times.append(time.monotonic())
        return len(times)
