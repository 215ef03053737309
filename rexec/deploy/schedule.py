"""Plan + inventory -> what runs where: batches of hosts, each host's steps rendered for it.

No connection is made: the only I/O is reading the plan's local files (each template, and a
put's source checked to be a file), so a missing variable or file fails before anything runs.
``rexec deploy --check`` prints ``Schedule.describe()``, and a real run executes the same
Schedule: what --check shows is what runs.

Selection, as Ansible's: with ``tags``, only the steps having one of them (and those tagged
``always``); ``skip_tags`` removes the steps having one of them, ``always`` included;
``start_at`` drops the steps before the one it names; a step's ``targets`` narrows the plan's.
Batches follow ``serial`` over the targets in order (``batch_sizes``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from rexec.config import did_you_mean
from rexec.deploy.plan import (
    GetAction,
    Handler,
    Health,
    Plan,
    PlanError,
    PutAction,
    Step,
    StepKind,
    TemplateAction,
    UndefinedVariable,
    render,
    variable_name_problem,
    variables_in,
)
from rexec.fleet.nodeset import PatternError, fold

if TYPE_CHECKING:
    from rexec.fleet.inventory import Inventory
    from rexec.fleet.target import Target


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    """One step as one host runs it, every templated field rendered for that host."""

    step: Step
    index: int  # in plan.steps: a resumed run compares it with what ran before
    command: str | None = None  # run
    src: str | None = None  # put, template: the local file (plan's folder joined); get: remote
    dest: str | None = None  # put, template: the remote path; get: the local folder
    mode: int | None = None  # put, template
    owner: str | None = None  # put
    content: bytes | None = None  # template: the rendered file, UTF-8
    creates: str | None = None
    unless: str | None = None
    only_if: str | None = None
    until: str | None = None
    notify: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The step's name."""
        return self.step.name

    @property
    def kind(self) -> StepKind:
        """The step's action: run, put, get or template."""
        return self.step.kind


@dataclass(frozen=True, slots=True)
class ScheduledHandler:
    """A handler as one host would run it, once, after its steps, if a step notified it."""

    handler: Handler
    command: str

    @property
    def name(self) -> str:
        """The handler's name."""
        return self.handler.name


@dataclass(frozen=True, slots=True)
class ScheduledHealth:
    """The health check as one host runs it."""

    health: Health
    command: str


@dataclass(frozen=True, slots=True)
class HostPlan:
    """What one host runs: its selected steps in plan order, the handlers they may notify (in
    plan order), its health check, and the variables they were rendered with."""

    target: Target
    variables: dict[str, object]
    steps: list[ScheduledStep]
    handlers: list[ScheduledHandler] = field(default_factory=list)
    health: ScheduledHealth | None = None
    batch: int = 1

    @property
    def name(self) -> str:
        """The host's name."""
        return self.target.name


@dataclass(frozen=True, slots=True)
class Batch:
    """Hosts that run together; batch N+1 starts once batch N is done."""

    number: int  # from 1
    hosts: list[HostPlan]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A plan's batches for one inventory and one set of options (kept for the run history)."""

    plan: Plan
    batches: list[Batch]
    limit: str | None = None
    tags: frozenset[str] = frozenset()
    skip_tags: frozenset[str] = frozenset()
    start_at: str | None = None
    extra_vars: Mapping[str, str] = field(default_factory=dict)

    @property
    def hosts(self) -> list[HostPlan]:
        """Every host, batch after batch."""
        return [host for batch in self.batches for host in batch.hosts]

    def describe(self) -> list[str]:
        """What would run where, batch by batch, one line per host and step (``--check``)."""
        plan = self.plan
        hosts = self.hosts
        lines = [f"plan {plan.name!r} ({plan.path}, sha256 {plan.sha256[:12]}):"
                 f" {_count(len(hosts), 'host')} in {_count(len(self.batches), 'batch')}"]
        labels = [step.name for step in plan.steps] + [h.name for h in plan.handlers]
        label_width = max(len(label) for label in [*labels, "[health]"])
        for batch in self.batches:
            names = [host.name for host in batch.hosts]
            lines.append(f"batch {batch.number} ({_count(len(names), 'host')}): {fold(names)}")
            host_width = max(len(name) for name in names)
            for host in batch.hosts:
                lines += [f"  {host.name:<{host_width}}  {label:<{label_width}}  {text}"
                          for label, text in _host_lines(host)]
        return lines


def build_schedule(plan: Plan, inventory: Inventory, *, limit: str | None = None,
                   tags: Collection[str] = (), skip_tags: Collection[str] = (),
                   start_at: str | None = None,
                   extra_vars: Mapping[str, str] | None = None) -> Schedule:
    """The plan's targets (``limit`` intersected, the plan's order kept) in batches, each host's
    selected steps, handlers and health check rendered with its variables.

    PlanError (an unknown tag or ``start_at``, nothing selected, a bad ``--var``, a limit
    leaving no host, a missing variable or local file) or PatternError (a bad ``limit``)
    before anything runs; InventoryError if a target's connection settings do not resolve.
    """
    extra = dict(extra_vars or {})
    for name in extra:
        problem = variable_name_problem(name)
        if problem:
            raise PlanError(f"--var {name}: {problem}")
    selected = select_steps(plan, tags=tags, skip_tags=skip_tags, start_at=start_at)
    renderer = _Renderer(plan, inventory, selected, extra, _targets(plan, inventory, limit))
    return Schedule(plan, renderer.batches(), limit=limit, tags=frozenset(tags),
                    skip_tags=frozenset(skip_tags), start_at=start_at, extra_vars=extra)


def select_steps(plan: Plan, *, tags: Collection[str] = (), skip_tags: Collection[str] = (),
                 start_at: str | None = None) -> list[int]:
    """The indexes of the steps that run, in plan order (PlanError for an unknown tag or step,
    or when nothing is left)."""
    wanted, skipped = set(tags), set(skip_tags)
    known = sorted({tag for step in plan.steps for tag in step.tags})
    for tag in sorted(wanted | skipped):
        if tag not in known:
            listed = f" (tags: {', '.join(known)})" if known else " (no step has tags)"
            raise PlanError(f"{plan.path}: no step is tagged {tag!r}"
                            f"{did_you_mean(tag, known) or listed}")
    first = 0
    if start_at is not None:
        names = [step.name for step in plan.steps]
        if start_at not in names:
            raise PlanError(f"{plan.path}: start_at: no step {start_at!r}"
                            f"{did_you_mean(start_at, names)}")
        first = names.index(start_at)
    chosen = [index for index, step in enumerate(plan.steps)
              if index >= first and _wanted(step, wanted, skipped)]
    if not chosen:
        raise PlanError(f"{plan.path}: no step is left to run (tags {sorted(wanted)},"
                        f" skip_tags {sorted(skipped)}, start_at {start_at!r})")
    return chosen


def _wanted(step: Step, tags: set[str], skip_tags: set[str]) -> bool:
    if skip_tags.intersection(step.tags):
        return False
    return not tags or bool(tags.intersection(step.tags)) or "always" in step.tags


def batch_sizes(serial: Sequence[int | str], total: int) -> list[int]:
    """Hosts per batch for ``total`` hosts: each item of ``serial`` in turn, the last one
    repeating (Ansible's rule); a percentage is of ``total``, rounded down, at least 1."""
    sizes: list[int] = []
    left = total
    while left > 0:
        item = serial[min(len(sizes), len(serial) - 1)]
        if isinstance(item, int):
            size = item
        else:
            size = max(1, int(Fraction(item.removesuffix("%")) * total // 100))
        if size < 1:
            raise ValueError(f"serial {item!r}: a batch has at least 1 host")
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


def _targets(plan: Plan, inventory: Inventory, limit: str | None) -> list[Target]:
    """The plan's targets in its order, only those ``limit`` names too, resolved."""
    try:
        names = inventory.expand(plan.targets)
    except PatternError as exc:
        raise PlanError(f"{plan.path}: field 'targets': {exc}") from None
    if limit is not None:
        allowed = set(inventory.expand(limit))
        names = [name for name in names if name in allowed]
        if not names:
            raise PlanError(f"limit {limit!r} leaves no host of the plan's targets"
                            f" {plan.targets!r}")
    return [inventory.target(name) if name in inventory else inventory.resolve(name)[0]
            for name in names]


class _Renderer:
    """Renders the selected steps for each host, reading each local file once."""

    def __init__(self, plan: Plan, inventory: Inventory, selected: list[int],
                 extra: dict[str, str], targets: list[Target]) -> None:
        self.plan = plan
        self.selected = selected
        self.extra = extra
        self.targets = targets
        self.templates: dict[Path, str] = {}
        self.step_hosts: dict[int, set[str]] = {}
        for index in selected:
            pattern = plan.steps[index].targets
            if pattern is not None:
                try:
                    self.step_hosts[index] = set(inventory.expand(pattern))
                except PatternError as exc:
                    raise PlanError(f"{plan.where('steps', index)}: field 'targets': {exc}"
                                    ) from None

    def batches(self) -> list[Batch]:
        batches: list[Batch] = []
        start = 0
        for number, size in enumerate(batch_sizes(self.plan.serial, len(self.targets)), 1):
            hosts = [self.host(target, number) for target in self.targets[start:start + size]]
            batches.append(Batch(number, hosts))
            start += size
        return batches

    def host(self, target: Target, batch: int) -> HostPlan:
        variables: dict[str, object] = {
            **self.plan.vars, **target.vars, **self.extra,
            "host": target.name, "address": target.options.address, "batch": batch}
        steps = [self.step(index, target, variables) for index in self.selected
                 if index not in self.step_hosts or target.name in self.step_hosts[index]]
        notified = {name for step in steps for name in step.notify}
        handlers = [ScheduledHandler(handler, self.text(
                        handler.run, variables, target,
                        f"{self.plan.where('handlers', index)}: field 'run'"))
                    for index, handler in enumerate(self.plan.handlers)
                    if handler.name in notified]
        health = None
        if self.plan.health is not None:
            health = ScheduledHealth(self.plan.health, self.text(
                self.plan.health.run, variables, target, f"{self.plan.path}: [health]: field"
                " 'run'"))
        return HostPlan(target, variables, steps, handlers, health, batch)

    def step(self, index: int, target: Target, variables: dict[str, object]) -> ScheduledStep:
        step = self.plan.steps[index]
        at = f"{self.plan.where('steps', index)}: field"

        def text(value: str | None, name: str) -> str | None:
            if value is None:
                return None
            return self.text(value, variables, target, f"{at} {name!r}")

        scheduled = ScheduledStep(
            step, index, creates=text(step.creates, "creates"), unless=text(step.unless, "unless"),
            only_if=text(step.only_if, "only_if"), until=text(step.until, "until"),
            notify=tuple(step.notify))
        action = step.action
        if isinstance(action, str):
            return replace(scheduled, command=text(action, "run"))
        src, dest = text(action.src, f"{step.kind}.src"), text(action.dest, f"{step.kind}.dest")
        assert src is not None and dest is not None
        where = f"{at} '{step.kind}.src'"
        if isinstance(action, GetAction):
            return replace(scheduled, src=_remote(src, where), dest=str(self.local(dest)))
        _remote(dest, f"{at} '{step.kind}.dest'")
        local = self.local(src)
        if variables_in(action.src):
            where = f"{where} (host {target.name})"
        if isinstance(action, PutAction):
            if not local.is_file():
                raise PlanError(f"{where}: {local}: "
                                f"{'not a regular file' if local.exists() else 'no such file'}")
            return replace(scheduled, src=str(local), dest=dest, mode=action.mode,
                            owner=text(action.owner, "put.owner"))
        assert isinstance(action, TemplateAction)
        content = self.text(self.template(local, where), variables, target,
                            f"{where}: template {local}")
        return replace(scheduled, src=str(local), dest=dest, mode=action.mode,
                        content=content.encode())

    def text(self, value: str, variables: dict[str, object], target: Target, where: str) -> str:
        """``value`` rendered for ``target``; an undefined variable names the host when other
        hosts have it (so it is this host's inventory entry that lacks it)."""
        try:
            return render(value, variables, where)
        except UndefinedVariable as exc:
            others = sum(exc.variable in other.vars for other in self.targets)
            if others:
                hint = (f" on host {target.name} (the inventory gives it to"
                        f" {_count(others, 'other host')})")
            else:
                hint = f": give it in [vars], the inventory, or --var {exc.variable}=VALUE"
            raise PlanError(f"{exc}{hint}") from None

    def local(self, rendered: str) -> Path:
        return self.plan.folder / Path(rendered).expanduser()

    def template(self, path: Path, where: str) -> str:
        """A template's text, read once (PlanError if unreadable or not UTF-8)."""
        if path not in self.templates:
            try:
                self.templates[path] = path.read_bytes().decode("utf-8")
            except FileNotFoundError:
                raise PlanError(f"{where}: template {path}: no such file") from None
            except OSError as exc:
                raise PlanError(f"{where}: template {path}: {exc.strerror or exc}") from None
            except UnicodeDecodeError as exc:
                raise PlanError(f"{where}: template {path}: not UTF-8 text (byte"
                                f" {exc.start})") from None
        return self.templates[path]


def _remote(path: str, where: str) -> str:
    if not path.startswith("/"):
        raise PlanError(f"{where}: {path!r} is not an absolute path (a remote path starts"
                        " with /)")
    return path


def _count(number: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{number} {noun if number == 1 else plural}"


def _host_lines(host: HostPlan) -> list[tuple[str, str]]:
    """(label, what) for each thing the host runs: its steps, handlers and health check."""
    lines = [(step.name, _step_text(step)) for step in host.steps]
    lines += [(handler.name, f"handler, if notified: {handler.command}")
              for handler in host.handlers]
    if host.health is not None:
        health = host.health.health
        retry = (f"  (retries {health.retries}, every {health.delay:g} s)" if health.retries
                 else "")
        lines.append(("[health]", f"run: {host.health.command}{retry}"))
    return lines or [("", "(no step for this host)")]


def _step_text(scheduled: ScheduledStep) -> str:
    step = scheduled.step
    if scheduled.command is not None:
        what = f"run: {scheduled.command}"
    else:
        what = f"{step.kind}: {scheduled.src} -> {scheduled.dest}"
    notes = [f"mode {scheduled.mode:04o}" if scheduled.mode is not None else "",
             f"owner {scheduled.owner}" if scheduled.owner else "",
             f"{len(scheduled.content)} bytes" if scheduled.content is not None else ""]
    notes += [f"{name}: {value}" for name, value in (
        ("creates", scheduled.creates), ("unless", scheduled.unless),
        ("only_if", scheduled.only_if), ("until", scheduled.until)) if value]
    if step.retries:
        notes.append(f"retries {step.retries}, every {step.retry_delay:g} s")
    if step.timeout is not None:
        notes.append(f"timeout {step.timeout:g} s")
    if step.changed_when not in (None, "always"):
        notes.append(f"changed_when {step.changed_when}")
    if scheduled.notify:
        notes.append(f"notify {', '.join(scheduled.notify)}")
    shown = [note for note in notes if note]
    return f"{what}  ({'; '.join(shown)})" if shown else what
