"""Server-wide limits on what clients may ask, who may wait unauthenticated, and the penalty
for failed authentications."""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from rexec.server import defaults
from rexec.server.identity import Refusal
from rexec.wire.frames import MAX_COMMAND_LENGTH, Run

if TYPE_CHECKING:
    from rexec.server.settings import ServerSettings

PENALTY_WINDOW = 30.0  # seconds a failed authentication counts against its source
MAX_STARTUPS_CEILING = 100_000
_THRESHOLDS = re.compile(r"([0-9]{1,9}):([0-9]{1,9}):([0-9]{1,9})")


@dataclass(frozen=True)
class MaxStartups:
    """sshd's MaxStartups ``start:rate:full``, for unauthenticated connections.

    Below ``start`` a newcomer is always let in; at ``start`` it is refused with probability
    ``rate`` percent, rising linearly to certainty at ``full``.
    """

    start: int
    rate: int
    full: int

    def __post_init__(self) -> None:
        if not 1 <= self.start <= MAX_STARTUPS_CEILING:
            raise ValueError(f"start ({self.start}) must be 1 to {MAX_STARTUPS_CEILING}")
        if not 1 <= self.rate <= 100:
            raise ValueError(f"rate ({self.rate}) must be a percentage, 1 to 100")
        if not self.start <= self.full <= MAX_STARTUPS_CEILING:
            raise ValueError(f"full ({self.full}) must be at least start ({self.start})"
                             f" and at most {MAX_STARTUPS_CEILING}")

    @classmethod
    def parse(cls, value: object) -> MaxStartups:
        """``"start:rate:full"``, or a number N meaning ``N:100:N`` (refuse beyond N)."""
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError('expected "start:rate:full" (e.g. "128:30:512") or a whole number')
        if isinstance(value, str):
            text = value.strip()
            if text.isascii() and text.isdigit():
                value = int(text)
            elif match := _THRESHOLDS.fullmatch(text):
                start, rate, full = (int(part) for part in match.groups())
                return cls(start, rate, full)
            else:
                raise ValueError(f'{value!r} is not "start:rate:full" (three whole numbers,'
                                 ' e.g. "128:30:512") nor a whole number')
        if not 1 <= value <= MAX_STARTUPS_CEILING:
            raise ValueError(f"{value} must be 1 to {MAX_STARTUPS_CEILING}")
        return cls(value, 100, value)

    def refusal_chance(self, waiting: int) -> float:
        """The probability that a newcomer is refused when ``waiting`` are unauthenticated."""
        if waiting < self.start:
            return 0.0
        if waiting >= self.full:
            return 1.0
        return (self.rate + (100 - self.rate) * (waiting - self.start)
                / (self.full - self.start)) / 100

    def __str__(self) -> str:
        return f"{self.start}:{self.rate}:{self.full}"


DEFAULT_MAX_STARTUPS = MaxStartups.parse(defaults.MAX_STARTUPS)


class StartupGate:
    """Who may wait unauthenticated: sshd's MaxStartups and PerSourceMaxStartups.

    ``admit`` decides for a newcomer and counts it if it is let in; ``release`` uncounts it once
    it has authenticated or gone. Nobody counted is ever pushed out to make room: evicting the
    oldest would let a churn of new connections from one source shut everyone else out.
    """

    def __init__(self, max_startups: MaxStartups = DEFAULT_MAX_STARTUPS,
                 per_source: int = defaults.PER_SOURCE_MAX_STARTUPS,
                 random: Callable[[], float] | None = None) -> None:
        """``random``: uniform in [0, 1) (by default the OS's: the drops must not be guessed)."""
        self.max_startups = max_startups
        self.per_source = per_source
        self._random = random or secrets.SystemRandom().random
        self.waiting = 0
        self._by_source: dict[str, int] = {}

    def waiting_from(self, source: str) -> int:
        """How many of ``source``'s connections are counted now."""
        return self._by_source.get(source, 0)

    def admit(self, source: str) -> Refusal | None:
        """Let a connection from ``source`` in (and count it), or say why it is refused."""
        mine = self._by_source.get(source, 0)
        if mine >= self.per_source:
            return Refusal("per_source_max_startups", f"{source} already has {mine}"
                           f" unauthenticated connection(s) (per_source_max_startups ="
                           f" {self.per_source})")
        chance = self.max_startups.refusal_chance(self.waiting)
        if chance and self._random() < chance:
            return Refusal("max_startups", f"{self.waiting} unauthenticated connection(s)"
                           f" (max_startups = {self.max_startups}): refused with probability"
                           f" {chance:.0%}")
        self.waiting += 1
        self._by_source[source] = mine + 1
        return None

    def release(self, source: str) -> None:
        """A connection ``admit`` let in has authenticated or gone."""
        mine = self._by_source.get(source, 0)
        if mine <= 0:
            raise ValueError(f"{source} has no unauthenticated connection counted")
        self.waiting -= 1
        if mine == 1:
            del self._by_source[source]
        else:
            self._by_source[source] = mine - 1


@dataclass
class ServerLimits:
    """Server-wide limits, for every identity (see ServerSettings for their meaning).

    Each field is the ServerSettings field of the same name, and defaults to the same value.
    """

    max_output: int | None = None
    max_command_length: int = MAX_COMMAND_LENGTH
    max_env_bytes: int = defaults.MAX_ENV_BYTES
    # unauthenticated connections: all of them, and from one source address
    max_startups: MaxStartups = DEFAULT_MAX_STARTUPS
    per_source_max_startups: int = defaults.PER_SOURCE_MAX_STARTUPS
    idle_timeout: float = defaults.IDLE_TIMEOUT  # authenticated, no command running; 0: off
    auth_penalty_max: float = defaults.AUTH_PENALTY_MAX

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ServerLimits:
        """The limits ``settings`` give: every field from its namesake, max_startups parsed."""
        values: dict[str, Any] = {f.name: getattr(settings, f.name) for f in fields(cls)}
        values["max_startups"] = MaxStartups.parse(settings.max_startups)
        return cls(**values)

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
