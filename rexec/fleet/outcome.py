"""What a fan-out produced, sans-I/O: one HostOutcome per host, gathered in a GroupResult.

A host's ``status`` (``HostStatus``, from ``target.py``) is decided here, once, from what
happened to it; the CLI's summaries, ``--json`` lines and exit status all read it. Both are
generic in what one host produced: a command's Result (``Group.run``, ``Group.batch``), a
file's TransferResult (``Group.put``, ``Group.get``) or a tree's TreeResult (``Group.put_tree``,
``Group.get_tree``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from rexec.result import Result, TransferResult, TreeResult

if TYPE_CHECKING:  # the Target's module loads the client's options; the statuses need only
    from rexec.fleet.target import HostStatus  # their names

EXIT_OK = 0
EXIT_FAILED = 1  # a command failed (non-zero, signal, timeout) and every host was reached
EXIT_UNREACHABLE = 3  # at least one host was unreachable (takes precedence over 1)
EXIT_INTERRUPTED = 130  # cancelled (Ctrl-C, Group.cancel(), the run's task cancelled)

R = TypeVar("R", bound="Result | TransferResult | TreeResult")
"""What one host produced: a command's Result, a put's or get's TransferResult, or a directory
transfer's TreeResult."""


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """One command of a batch on one host: its line in the batch file and how it ended.

    ``result`` is None when the command never ran (the server refused or could not start it,
    the connection was lost before it began); ``error`` then says why.
    """

    line: int
    command: str
    result: Result | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the command ran and succeeded."""
        return self.result is not None and self.result.ok


@dataclass(frozen=True, slots=True)
class HostOutcome(Generic[R]):
    """Everything known about one host's part of a fan-out.

    - ``status``: "ok", "failed", "timed_out", "unreachable" or "cancelled" (see HostStatus);
    - ``result``: the command's Result (for a batch: the failing command's, else the last
      one's); partial, with ``exit_code`` None, when the host was cancelled, timed out on the
      client's side or lost its connection mid-command; None when nothing ran. For a put or
      get, the file's TransferResult, only when it was done (a transfer is never partial);
      for put -r and get -r the TreeResult, also when some entries failed ("failed");
    - ``error``: why the host is unreachable, why its command did not start, or how the
      connection was lost; None otherwise;
    - ``duration``: seconds from its connection attempt to its end (0 if it never began);
    - ``commands``: a batch's commands as they ran, in order (empty for ``Group.run``);
    - ``failed_line``: the batch line of the first command that failed, or None.
    """

    host: str
    address: str
    status: HostStatus
    result: R | None = None
    error: str | None = None
    duration: float = 0.0
    commands: tuple[CommandOutcome, ...] = ()
    failed_line: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the host's command (every command of its batch) succeeded."""
        return self.status == "ok"


def status_of(result: Result) -> HostStatus:
    """The status of a host whose command ran to its end with ``result``."""
    if result.ok:
        return "ok"
    return "timed_out" if result.timed_out else "failed"


class GroupResult(Mapping[str, R]):
    """A fan-out's outcome: a mapping host -> Result of the hosts whose command ran (or ->
    TransferResult of the hosts whose file was put or got), in target order, with every host's
    HostOutcome in ``outcomes`` (unreachable ones included).

    ``interrupted`` is True when the run was cancelled before every host finished.
    """

    def __init__(self, outcomes: Iterable[HostOutcome[R]], *, interrupted: bool = False) -> None:
        self.outcomes: dict[str, HostOutcome[R]] = {o.host: o for o in outcomes}
        self.interrupted = interrupted
        self._results = {host: o.result for host, o in self.outcomes.items()
                         if o.result is not None}

    def __getitem__(self, host: str) -> R:
        return self._results[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        counts = ", ".join(f"{status}={len(hosts)}" for status, hosts in self._by_status().items())
        return f"<GroupResult {len(self.outcomes)} hosts: {counts or 'none'}>"

    def _by_status(self) -> dict[HostStatus, list[str]]:
        grouped: dict[HostStatus, list[str]] = {}
        for host, outcome in self.outcomes.items():
            grouped.setdefault(outcome.status, []).append(host)
        return grouped

    def _hosts(self, status: HostStatus) -> list[str]:
        return [host for host, o in self.outcomes.items() if o.status == status]

    @property
    def statuses(self) -> dict[str, HostStatus]:
        """Every host's status, in target order."""
        return {host: o.status for host, o in self.outcomes.items()}

    @property
    def succeeded(self) -> list[str]:
        """Hosts whose command (every command of the batch) succeeded."""
        return self._hosts("ok")

    @property
    def failed(self) -> list[str]:
        """Hosts whose command failed: non-zero exit, a signal, not started, connection lost
        (timeouts are apart, in ``timed_out``); for a put or get, whose transfer failed (the
        server refused it, a local file error, a checksum)."""
        return self._hosts("failed")

    @property
    def timed_out(self) -> list[str]:
        """Hosts whose command (or transfer) was stopped at its timeout."""
        return self._hosts("timed_out")

    @property
    def unreachable(self) -> dict[str, str]:
        """Hosts that could not be connected to, logged in to or secured -> the reason."""
        return {host: o.error or "unreachable" for host, o in self.outcomes.items()
                if o.status == "unreachable"}

    @property
    def cancelled(self) -> list[str]:
        """Hosts stopped (or never started) because the run was cancelled."""
        return self._hosts("cancelled")

    @property
    def ok(self) -> bool:
        """Whether every host succeeded (True for no hosts at all)."""
        return all(o.status == "ok" for o in self.outcomes.values())

    @property
    def durations(self) -> dict[str, float]:
        """Every host's duration in seconds, in target order."""
        return {host: o.duration for host, o in self.outcomes.items()}

    @property
    def exit_status(self) -> int:
        """The fleet-mode exit status: 130 interrupted, else 3 if a host was unreachable, else
        1 if a command failed or timed out, else 0."""
        statuses = {o.status for o in self.outcomes.values()}
        if self.interrupted or "cancelled" in statuses:
            return EXIT_INTERRUPTED
        if "unreachable" in statuses:
            return EXIT_UNREACHABLE
        if statuses & {"failed", "timed_out"}:
            return EXIT_FAILED
        return EXIT_OK
