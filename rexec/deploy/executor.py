"""Runs a Schedule: batches in order, steps in lock-step, guards, retries, handlers, health, and
the failure budget. ``--check`` is the same walk with nothing changed.

Within a batch, every step runs on every host of the batch that is still going before the next
step starts there (Ansible's linear strategy), at most ``forks`` hosts at a time; each host
keeps one connection for the whole batch. A host stops at its first failing step (after its
retries), and counts as failed for the budget, as an unreachable one does. After its steps, a
host runs the handlers its changed steps notified (once each, in the plan's order) and then
the plan's health check. Once more than ``max_fail_percentage`` of all the targeted hosts have
failed (or, without one, once every host of a batch has), no new batch starts: the hosts of
the batches left are "never reached".

Check mode (``check=True``) changes nothing: guards run for real (with ``REXEC_CHECK=1`` in
their environment, as they are read-only by contract), a put or template asks the server
whether it would change the file (protocol version 5's dry-run put), and run, get, handler and
health steps are reported ``would_run``; a step whose guard says it would be skipped is
``skipped``, as it would be.

Every result goes to ``on_result`` as it comes (the CLI's lines, the history).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import hashlib
import re
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from rexec.client.aio import Client
from rexec.deploy.plan import Plan
from rexec.deploy.schedule import HostPlan, Schedule, ScheduledStep
from rexec.errors import (
    CommandNotStarted,
    ConnectError,
    ConnectionLost,
    LocalFileError,
    ProtocolError,
    RexecError,
    TransferFailed,
)
from rexec.fleet.inventory import Inventory
from rexec.result import Result

StepStatus: TypeAlias = Literal["ok", "changed", "skipped", "failed", "unreachable",
                                "would_run", "would_change", "cancelled"]
"""How one step ended on one host (``would_*``: check mode)."""
HostState: TypeAlias = Literal["ok", "failed", "unreachable", "never_reached", "cancelled"]
"""How one host's part of the deploy ended."""
StepKind: TypeAlias = Literal["run", "put", "get", "template", "handler", "health"]

TAIL = 64 * 1024
"""The most of a step's stdout and of its stderr kept (the end of it)."""
RETRY_DELAY_CAP = 60.0
"""retry_delay doubles after each failed attempt, up to this."""
UNTIL_RETRIES = 3
"""A step with ``until`` and no ``retries`` tries this many times more (as Ansible does)."""
SMALL_FILE = 1024 * 1024
"""A put's local file up to this size is read once and sent from memory to every host."""
DIFF_LIMIT = 1024 * 1024
"""Files larger than this (either side) are not diffed."""
SECRET_NAME = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)
"""Variables whose values --diff never prints: their names match this."""
MASK = "********"
CHECK_ENV = {"REXEC_CHECK": "1"}


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step (or handler, or health check) on one host."""

    host: str
    step: str  # the step's name; a handler's; "health"
    index: int  # plan.steps index; handlers after the steps, health after them
    kind: StepKind
    status: StepStatus
    changed: bool = False
    exit_code: int | None = None
    duration: float = 0.0
    attempts: int = 1
    stdout: bytes = b""
    stderr: bytes = b""
    message: str = ""  # why it was skipped or failed, in a few words
    diff: str | None = None  # --diff of a put or template

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "unreachable")


@dataclass(slots=True)
class HostReport:
    """One host's deploy: its results in order and how it ended."""

    host: str
    address: str
    batch: int
    state: HostState = "never_reached"  # until its batch is done, or it failed
    results: list[StepResult] = field(default_factory=list)

    def count(self, *statuses: StepStatus) -> int:
        return sum(1 for result in self.results if result.status in statuses)

    @property
    def failure(self) -> StepResult | None:
        """The result that made the host fail, if one did."""
        return next((r for r in reversed(self.results) if r.failed), None)


@dataclass(slots=True)
class DeployReport:
    """Every host's report, in the schedule's order, and how the rollout ended."""

    hosts: dict[str, HostReport]
    check: bool = False
    stopped: bool = False  # the failure budget stopped it before every batch ran
    interrupted: bool = False  # cancelled (Ctrl-C)

    def having(self, *states: HostState) -> list[str]:
        return [name for name, host in self.hosts.items() if host.state in states]

    @property
    def exit_status(self) -> int:
        """130 interrupted, 4 stopped by the budget, 3 a host unreachable, 1 a host failed,
        else 0."""
        if self.interrupted:
            return 130
        if self.stopped:
            return 4
        if self.having("unreachable"):
            return 3
        if self.having("failed"):
            return 1
        return 0

    @property
    def status(self) -> str:
        """The run's status word for the history."""
        if self.interrupted:
            return "cancelled"
        return {0: "ok", 1: "failed", 3: "unreachable", 4: "stopped"}[self.exit_status]


OnResult = Callable[[StepResult], object]
OnBatch = Callable[[int, list[str]], object]
OnHostDone = Callable[[HostReport], object]


@dataclass
class Leftover:
    """What an earlier run (and the runs it resumed) left, for ``--resume``: per host, the
    steps completed, the handlers their changes notified, whether the host's part ended well
    (health included). ``take`` reads a run's history records, oldest run first."""

    options: dict[str, Any]
    completed: dict[str, set[int]] = field(default_factory=dict)
    notified: dict[str, set[str]] = field(default_factory=dict)
    troubled: set[str] = field(default_factory=set)  # a failed, unreachable or cancelled step
    healthy: set[str] = field(default_factory=set)

    def take(self, host: str, rows: Sequence[Any], plan: Plan) -> None:
        """A run's last result for each step of ``host`` (a later run's over an earlier's)."""
        steps = len(plan.steps)
        health = steps + len(plan.handlers)
        notify = {step.name: step.notify for step in plan.steps}
        done = self.completed.setdefault(host, set())
        self.troubled.discard(host)
        for row in rows:
            if row.status in ("failed", "unreachable", "cancelled"):
                self.troubled.add(host)
            elif row.step_index < steps and row.status in ("ok", "changed", "skipped"):
                done.add(row.step_index)
                if row.changed:
                    self.notified.setdefault(host, set()).update(notify.get(row.step, []))
            elif row.step_index < health and row.status == "changed":
                self.notified.get(host, set()).discard(row.step)  # the handler ran
            elif row.step_index == health and row.status == "ok":
                self.healthy.add(host)

    def finished(self, host: HostPlan) -> bool:
        """Whether ``host`` needs nothing more: every step it has completed, nothing failed,
        its health check (if any) passed."""
        done = self.completed.get(host.name)
        return (done is not None and host.name not in self.troubled
                and {step.index for step in host.steps} <= done
                and (host.health is None or host.name in self.healthy))


class _HostFailed(Exception):
    """A host's step failed (or it became unreachable): its later steps do not run."""


class Executor:
    """Runs one Schedule (``await Executor(schedule).run()``); ``cancel()`` stops it."""

    def __init__(self, schedule: Schedule, *, check: bool = False, diff: bool = False,
                 forks: int | None = None, on_result: OnResult | None = None,
                 on_batch: OnBatch | None = None, on_host_done: OnHostDone | None = None,
                 notified: Mapping[str, Iterable[str]] | None = None,
                 completed: Mapping[str, Iterable[int]] | None = None) -> None:
        self.schedule = schedule
        self.plan = schedule.plan
        self.check = check
        self.diff = diff
        self.forks = forks or self.plan.forks or 64
        self.on_result = on_result
        self.on_batch = on_batch
        self.on_host_done = on_host_done
        # a resumed run: the handlers notified on each host before, and the steps it completed
        self._notified: dict[str, set[str]] = {h: set(n) for h, n in (notified or {}).items()}
        self._completed = {h: frozenset(c) for h, c in (completed or {}).items()}
        self._files: dict[str, bytes | None] = {}  # the small files puts send, read once
        self._task: asyncio.Task[None] | None = None
        self._interrupted = False
        self.report = DeployReport(
            {host.name: HostReport(host.name, host.target.options.address, host.batch,
                                   state="never_reached") for host in schedule.hosts},
            check=check)

    def cancel(self) -> None:
        """Stop at once: the steps running are cancelled (their commands too), nothing more
        starts, and ``run`` returns the report with ``interrupted`` set."""
        self._interrupted = True
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> DeployReport:
        """Every batch in order, within the failure budget; the report."""
        self._task = asyncio.current_task()
        try:
            await self._batches()
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
        finally:
            self._task = None
        if self._interrupted:
            self.report.interrupted = True
            for host in self.report.hosts.values():
                if host.state == "never_reached" and host.results:  # stopped between steps
                    host.state = "cancelled"
        return self.report

    async def _batches(self) -> None:
        total = len(self.schedule.hosts)
        budget = self.plan.max_fail_percentage
        for batch in self.schedule.batches:
            if self._interrupted:
                return
            if self.on_batch is not None:
                self.on_batch(batch.number, [host.name for host in batch.hosts])
            await self._batch(batch.hosts)
            failed = len(self.report.having("failed", "unreachable"))
            batch_failed = all(self.report.hosts[h.name].state in ("failed", "unreachable")
                               for h in batch.hosts)
            over = (failed * 100 > budget * total) if budget is not None else batch_failed
            if over and batch is not self.schedule.batches[-1]:
                self.report.stopped = True
                return

    async def _batch(self, hosts: list[HostPlan]) -> None:
        forks = asyncio.Semaphore(self.forks)
        clients: dict[str, Client] = {}
        going = list(hosts)
        try:
            indexes = sorted({step.index for host in hosts for step in host.steps})
            for index in indexes:  # lock-step: this step everywhere before the next one
                going = await self._everywhere(
                    going, forks, functools.partial(self._step_at, index=index), clients)
            going = await self._everywhere(going, forks, self._handlers, clients)
            going = await self._everywhere(going, forks, self._health, clients)
            for host in going:  # every part of the batch done
                self.report.hosts[host.name].state = "ok"
                self._host_done(host)
        finally:
            await asyncio.gather(*(client.close() for client in clients.values()),
                                 return_exceptions=True)

    async def _everywhere(self, hosts: list[HostPlan], forks: asyncio.Semaphore,
                          part: Callable[[HostPlan, Client], Awaitable[None]],
                          clients: dict[str, Client]) -> list[HostPlan]:
        """``part`` on every host at once (``forks`` at a time); the hosts still going."""
        async def one(host: HostPlan) -> bool:
            async with forks:
                try:
                    client = await self._client(host, clients)
                    await part(host, client)
                except _HostFailed:
                    self._host_done(host)
                    return False
                return True

        tasks = [asyncio.create_task(one(host)) for host in hosts]
        try:
            alive = await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [host for host, ok in zip(hosts, alive, strict=True) if ok]

    async def _client(self, host: HostPlan, clients: dict[str, Client]) -> Client:
        client = clients.get(host.name)
        if client is not None:
            return client
        client = Client.from_options(host.target.options)
        started = time.monotonic()
        try:
            await client.connect()
        except RexecError as exc:
            await client.close()
            first = host.steps[0] if host.steps else None
            self._emit(host, StepResult(
                host.name, first.name if first else "connect", first.index if first else -1,
                first.kind if first else "run", "unreachable",
                duration=time.monotonic() - started, message=str(exc)))
            raise _HostFailed from None
        clients[host.name] = client
        return client

    def _host_done(self, host: HostPlan) -> None:
        if self.on_host_done is not None:
            self.on_host_done(self.report.hosts[host.name])

    def _emit(self, host: HostPlan, result: StepResult) -> None:
        report = self.report.hosts[host.name]
        report.results.append(result)
        if result.status in ("unreachable", "failed", "cancelled"):
            report.state = result.status
        if self.on_result is not None:
            self.on_result(result)

    # --- one step ---------------------------------------------------------------------------

    async def _step_at(self, host: HostPlan, client: Client, *, index: int) -> None:
        step = next((s for s in host.steps if s.index == index), None)
        if step is None or index in self._completed.get(host.name, ()):
            return  # the step's own targets leave this host out, or a resumed run did it
        started = time.monotonic()
        try:
            result = await self._step(host, client, step, started)
        except asyncio.CancelledError:
            self._emit(host, StepResult(host.name, step.name, step.index, step.kind,
                                        "cancelled", duration=time.monotonic() - started))
            raise
        self._emit(host, result)
        if result.failed:
            raise _HostFailed
        if result.changed or result.status == "would_change":
            self._notified.setdefault(host.name, set()).update(step.notify)

    async def _step(self, host: HostPlan, client: Client, step: ScheduledStep,
                    started: float) -> StepResult:
        def result(status: StepStatus, message: str = "") -> StepResult:
            return StepResult(host.name, step.name, step.index, step.kind, status,
                              duration=time.monotonic() - started, message=message)

        try:
            skip = await self._guards(client, step)
            if skip is not None:
                return result("skipped", skip)
            if step.kind in ("put", "template"):
                return await self._put_step(host, client, step, started)
            if self.check:  # a run or a get
                return result("would_run")
            act = self._run_step if step.kind == "run" else self._get_step
            return await act(host, client, step, started)
        except _Unreachable as exc:
            return result("unreachable", str(exc))
        except (RexecError, OSError) as exc:
            return result("failed", str(exc))

    async def _command(self, client: Client, command: str, *, timeout: float | None = None,
                       env: dict[str, str] | None = None) -> Result:
        """One command; _Unreachable if the connection is lost."""
        try:
            return await client.run(command, timeout=timeout, env=env)
        except (ConnectionLost, ConnectError) as exc:
            raise _Unreachable(f"connection lost: {exc}") from None
        except CommandNotStarted as exc:
            return Result(command, None, stderr=str(exc).encode())

    async def _guards(self, client: Client, step: ScheduledStep) -> str | None:
        """Why the step is skipped, or None if it runs."""
        env = CHECK_ENV if self.check else None
        if step.creates is not None and await self._exists(client, step.creates, env):
            return f"{step.creates} exists (creates)"
        if step.unless is not None:
            done = await self._command(client, step.unless, env=env)
            if done.exit_code == 0:
                return "unless: exit 0"
        if step.only_if is not None:
            done = await self._command(client, step.only_if, env=env)
            if done.exit_code != 0:
                return f"only_if: {_how(done)}"
        return None

    async def _exists(self, client: Client, path: str, env: dict[str, str] | None) -> bool:
        """Whether ``path`` exists on the host, as ``test -e`` says: a ``stat`` (no process),
        or, on a server older than protocol version 5, ``test -e`` itself."""
        if path.startswith("/"):
            try:
                return await client.stat(path) is not None
            except TransferFailed:
                pass  # refused by file_roots, not a directory on the way...: as test -e says
            except ProtocolError as exc:
                if exc.code != "unsupported_version":
                    raise
            except (ConnectionLost, ConnectError) as exc:
                raise _Unreachable(f"connection lost: {exc}") from None
        # a relative path (from the command's folder), an old server, a stat refused: the
        # shell's answer
        done = await self._command(client, f"test -e {shlex.quote(path)}", env=env)
        return done.exit_code == 0

    async def _run_step(self, host: HostPlan, client: Client, step: ScheduledStep,
                        started: float) -> StepResult:
        assert step.command is not None
        definition = step.step
        retries = definition.retries or (UNTIL_RETRIES if step.until else 0)
        delay = definition.retry_delay
        attempt = 0
        while True:
            attempt += 1
            done = await self._command(client, step.command, timeout=definition.timeout)
            changed_when = definition.changed_when or "always"
            codes = changed_when if isinstance(changed_when, list) else []
            ok = done.exit_code == 0 or done.exit_code in codes
            message = "" if ok else _how(done)
            if ok and step.until is not None:
                check = await self._command(client, step.until)
                if check.exit_code != 0:
                    ok, message = False, f"until: {_how(check)}"
            if ok or attempt > retries:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_DELAY_CAP)
        if not ok:
            status: StepStatus = "failed"
            changed = False
        elif changed_when == "always":
            status, changed = "changed", True
        elif changed_when == "never":
            status, changed = "ok", False
        else:
            changed = done.exit_code in codes
            status = "changed" if changed else "ok"
        return StepResult(host.name, step.name, step.index, step.kind, status, changed=changed,
                          exit_code=done.exit_code, duration=time.monotonic() - started,
                          attempts=attempt, stdout=done.stdout[-TAIL:],
                          stderr=done.stderr[-TAIL:], message=message)

    async def _put_step(self, host: HostPlan, client: Client, step: ScheduledStep,
                        started: float) -> StepResult:
        assert step.dest is not None and step.src is not None
        data = step.content if step.content is not None else self._small_file(step.src)
        try:
            if data is not None:  # a template, or a small file read once for every host
                sent = await client.put_data(
                    data, step.dest, mode=step.mode, check=self.check,
                    name=Path(step.src).name if step.content is None else None)
            else:
                sent = await client.put(step.src, step.dest, mode=step.mode, check=self.check)
        except (ConnectionLost, ConnectError) as exc:
            raise _Unreachable(f"connection lost: {exc}") from None
        except (TransferFailed, LocalFileError) as exc:
            if self.check and isinstance(exc, TransferFailed) and exc.code == "not_found":
                # its folder is not there (yet): an earlier step that would run may make it
                return StepResult(host.name, step.name, step.index, step.kind, "would_change",
                                  duration=time.monotonic() - started,
                                  message=f"{exc} (unless an earlier step makes its folder)")
            return StepResult(host.name, step.name, step.index, step.kind, "failed",
                              duration=time.monotonic() - started, message=str(exc))
        changed = sent.changed
        messages = []
        if step.owner is not None:
            owner_changed, message = await self._owner(client, step.dest, step.owner)
            changed = changed or owner_changed
            messages.append(message)
        diff = None
        if self.diff and changed:
            diff = await self._diff(host, client, step)
        status: StepStatus = ("would_change" if self.check else "changed") if changed else "ok"
        return StepResult(host.name, step.name, step.index, step.kind, status,
                          changed=changed and not self.check,
                          duration=time.monotonic() - started, message="; ".join(messages),
                          diff=diff)

    def _small_file(self, path: str) -> bytes | None:
        """A put's local file, read once for all the hosts when it is small (else None: each
        host's put reads it, in pieces)."""
        if path not in self._files:
            try:
                with open(path, "rb") as file:
                    data = file.read(SMALL_FILE + 1)
            except OSError:  # each host's put reads it, and says what is wrong
                self._files[path] = None
                return None
            self._files[path] = data if len(data) <= SMALL_FILE else None
        return self._files[path]

    async def _owner(self, client: Client, path: str, owner: str) -> tuple[bool, str]:
        """Give ``path`` to ``owner`` ("user", "user:group" or ":group") if it is not its
        already (with chown, as root can); (changed, what was done)."""
        quoted = shlex.quote(path)
        user, _, group = owner.partition(":")
        now = await self._command(client, f"stat -c '%U:%G' -- {quoted}")
        if now.exit_code != 0 and not self.check:
            raise RexecError(f"cannot read the owner of {path}: {_how(now)}")
        current_user, _, current_group = now.stdout.decode(errors="replace").strip().partition(":")
        same = ((not user or user == current_user) and (not group or group == current_group)
                and now.exit_code == 0)
        if same:
            return False, ""
        if self.check:
            return True, f"would chown {owner}"
        done = await self._command(client, f"chown -- {shlex.quote(owner)} {quoted}")
        if done.exit_code != 0:
            raise RexecError(f"chown {owner} {path}: {_how(done)}")
        return True, f"owner {owner}"

    async def _get_step(self, host: HostPlan, client: Client, step: ScheduledStep,
                        started: float) -> StepResult:
        assert step.src is not None and step.dest is not None
        folder = Path(step.dest) / host.name
        local = folder / Path(step.src).name
        before = _sha256_of(local)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            got = await client.get(step.src, local)
        except (ConnectionLost, ConnectError) as exc:
            raise _Unreachable(f"connection lost: {exc}") from None
        except (TransferFailed, LocalFileError, OSError) as exc:
            return StepResult(host.name, step.name, step.index, step.kind, "failed",
                              duration=time.monotonic() - started, message=str(exc))
        changed = got.sha256 != before
        return StepResult(host.name, step.name, step.index, step.kind,
                          "changed" if changed else "ok", changed=changed,
                          duration=time.monotonic() - started, message=str(local))

    async def _diff(self, host: HostPlan, client: Client, step: ScheduledStep) -> str:
        """The unified diff of the remote file against what the step puts (text only, the
        values of secret-looking variables masked)."""
        assert step.dest is not None and step.src is not None
        new = step.content if step.content is not None else _read_limited(Path(step.src))
        with tempfile.TemporaryDirectory(prefix="rexec-diff-") as folder:
            copy = Path(folder) / "old"
            try:
                await client.get(step.dest, copy)
                old: bytes | None = _read_limited(copy)
            except TransferFailed as exc:
                if exc.code != "not_found":
                    return f"(no diff: {exc})"
                old = b""
            except (ConnectionLost, ConnectError) as exc:
                raise _Unreachable(f"connection lost: {exc}") from None
        if old is None or new is None:
            return "(no diff: larger than 1 MiB)"
        if _binary(old) or _binary(new):
            return "(binary files differ)" if old != new else "(mode or owner only)"
        if old == new:
            return "(content unchanged: mode or owner only)"
        lines = difflib.unified_diff(
            old.decode().splitlines(keepends=True), new.decode().splitlines(keepends=True),
            fromfile=f"{host.name}:{step.dest}", tofile=f"{host.name}:{step.dest} (new)")
        return self._masked(host, "".join(lines))

    def _masked(self, host: HostPlan, text: str) -> str:
        secrets = [str(value) for name, value in host.variables.items()
                   if SECRET_NAME.search(name) and len(str(value)) >= 4]
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text

    # --- after the steps --------------------------------------------------------------------

    async def _handlers(self, host: HostPlan, client: Client) -> None:
        notified = self._notified.get(host.name, set())
        base = len(self.plan.steps)
        for scheduled in host.handlers:
            if scheduled.name not in notified:
                continue
            index = base + [h.name for h in self.plan.handlers].index(scheduled.name)
            started = time.monotonic()
            if self.check:
                self._emit(host, StepResult(host.name, scheduled.name, index, "handler",
                                            "would_run"))
                continue
            try:
                done = await self._command(client, scheduled.command)
            except _Unreachable as exc:
                self._emit(host, StepResult(host.name, scheduled.name, index, "handler",
                                            "unreachable", message=str(exc)))
                raise _HostFailed from None
            ok = done.exit_code == 0
            self._emit(host, StepResult(
                host.name, scheduled.name, index, "handler", "changed" if ok else "failed",
                changed=ok, exit_code=done.exit_code, duration=time.monotonic() - started,
                stdout=done.stdout[-TAIL:], stderr=done.stderr[-TAIL:],
                message="" if ok else _how(done)))
            if not ok:
                raise _HostFailed

    async def _health(self, host: HostPlan, client: Client) -> None:
        if host.health is None:
            return
        index = len(self.plan.steps) + len(self.plan.handlers)
        if self.check:
            self._emit(host, StepResult(host.name, "health", index, "health", "would_run"))
            return
        health = host.health.health
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                done = await self._command(client, host.health.command)
            except _Unreachable as exc:
                self._emit(host, StepResult(host.name, "health", index, "health",
                                            "unreachable", message=str(exc), attempts=attempt))
                raise _HostFailed from None
            if done.exit_code == 0 or attempt > health.retries:
                break
            await asyncio.sleep(health.delay)
        ok = done.exit_code == 0
        self._emit(host, StepResult(
            host.name, "health", index, "health", "ok" if ok else "failed",
            exit_code=done.exit_code, duration=time.monotonic() - started, attempts=attempt,
            stdout=done.stdout[-TAIL:], stderr=done.stderr[-TAIL:],
            message="" if ok else f"health check: {_how(done)}"))
        if not ok:
            raise _HostFailed


class _Unreachable(Exception):
    """The host's connection was lost during a step."""


def _how(result: Result) -> str:
    """How a command ended, in a few words."""
    if result.timed_out:
        return "timed out"
    if result.exit_code is None and result.signal is None:
        return result.stderr.decode(errors="replace").strip() or "did not start"
    if result.signal is not None:
        return f"killed by signal {result.signal}"
    return f"exit {result.exit_code}"


def _sha256_of(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def _read_limited(path: Path) -> bytes | None:
    """The file's bytes, or None when it is over DIFF_LIMIT."""
    if path.stat().st_size > DIFF_LIMIT:
        return None
    return path.read_bytes()


def _binary(data: bytes) -> bool:
    if b"\0" in data:
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


async def apply_plan(plan: Plan, inventory: Inventory | None = None, *,
                     check: bool = False, diff: bool = False, forks: int | None = None,
                     limit: str | None = None, tags: Collection[str] = (),
                     skip_tags: Collection[str] = (), start_at: str | None = None,
                     extra_vars: Mapping[str, str] | None = None,
                     on_result: OnResult | None = None) -> DeployReport:
    """``Plan.apply``: schedule ``plan`` on ``inventory`` (the default inventory when None:
    ``--inventory``'s search) and run it."""
    if inventory is None:
        inventory = Inventory.load()
    schedule = plan.schedule(inventory, limit=limit, tags=tags, skip_tags=skip_tags,
                             start_at=start_at, extra_vars=extra_vars)
    return await Executor(schedule, check=check, diff=diff, forks=forks,
                          on_result=on_result).run()
