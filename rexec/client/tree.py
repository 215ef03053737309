"""Directory transfers (``put -r``, ``get -r``) as plans that either driver carries out.

A plan is a generator: it yields the steps to take on the connection (make a remote
directory, a link, send or fetch one file, list a remote tree) and is sent each step's
outcome, a ``Done`` or the step's ``EntryError`` (a non-fatal refusal: that entry failed, the
rest go on). It returns the ``TreeResult``. The async ``Client`` and the ``BlockingClient``
run the same plans, so the two cannot drift apart; what breaks the connection is raised by the
driver and ends the plan.

put -r: the local tree is read first (``LocalTree``: links as links, never followed); the top
directory is made (with its parents) unless it exists, then every entry in order, each
directory before what it holds, the files skipped by the server when they are there already
(their SHA-256 is sent first); with ``preserve`` the directories' mtimes are set last, the
deepest first. Every entry carries its local permission bits.

get -r: the server lists the tree; every entry it names is checked here before anything is
written (a relative plain path, a link that stays inside: ``check_entry``), and nothing is ever
written through a symbolic link (``LocalDestination``).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from rexec.client.core import ClientCore, TreeEntry
from rexec.client.transfer import (
    LocalDestination,
    LocalTree,
    ProgressCallback,
    check_entry,
    parents_first,
)
from rexec.errors import LocalFileError, TransferFailed
from rexec.result import EntryError, TreeResult


@dataclass(frozen=True, slots=True)
class MakeDir:
    """Make the remote directory ``path`` (absolute, with parents) or the entry of ``base``."""

    path: str
    base: str | None
    mode: int | None
    mtime_ns: int | None


@dataclass(frozen=True, slots=True)
class MakeLink:
    """Make the entry ``path`` of ``base`` a link to ``target``."""

    path: str
    base: str
    target: str


@dataclass(frozen=True, slots=True)
class SendFile:
    """Put the local file ``local`` as the entry ``path`` of ``base``."""

    local: Path
    path: str
    base: str
    mode: int
    mtime_ns: int | None
    force: bool


@dataclass(frozen=True, slots=True)
class ListTree:
    """List the remote directory ``path``: the driver answers with ``Listing``."""

    path: str


@dataclass(frozen=True, slots=True)
class FetchFile:
    """Get the entry ``path`` of ``base`` into the local file ``local``."""

    path: str
    base: str
    local: Path
    preserve: bool


Step = MakeDir | MakeLink | SendFile | ListTree | FetchFile


def start(core: ClientCore, step: MakeDir | MakeLink | ListTree) -> None:
    """Queue a step that moves no file data (the driver then reads its answer)."""
    if isinstance(step, ListTree):
        core.start_list(step.path)
    elif isinstance(step, MakeDir):
        core.start_put_dir(step.path, base=step.base, mode=step.mode, mtime_ns=step.mtime_ns)
    else:
        core.start_put_link(step.path, base=step.base, target=step.target)


def entry_of(step: Step) -> str:
    """The entry a step is about, for its EntryError ('.': the top directory)."""
    if isinstance(step, ListTree) or (isinstance(step, MakeDir) and step.base is None):
        return "."
    return step.path


@dataclass(frozen=True, slots=True)
class Done:
    """A step done: whether it changed anything, and the file bytes it moved."""

    changed: bool
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Listing:
    """The answer to ListTree: the entries as the server named them."""

    entries: tuple[TreeEntry, ...]


Outcome = Done | Listing | EntryError
Plan = Generator[Step, Outcome, TreeResult]


class Runner:
    """What a driver needs to carry out a plan besides the steps themselves: the generator's
    protocol, the progress across all files (``progress`` is each file's on_progress), and
    which failures are an entry's (non-fatal) and which end the transfer.

    ``step = runner.first()``, then for each step ``step = runner.next(outcome)`` with the
    step's outcome (or ``runner.failed(step, exc)``) until it is None: ``runner.result``.
    """

    def __init__(self, plan: Plan, total: int | None,
                 on_progress: ProgressCallback | None) -> None:
        self._plan = plan
        self._total = total  # a get's is known once the listing came
        self._on_progress = on_progress
        self._moved = 0
        self.result: TreeResult | None = None

    def first(self) -> Step:
        """The plan's first step (every plan has one)."""
        return next(self._plan)

    def next(self, outcome: Outcome) -> Step | None:
        """Hand the plan the last step's outcome; its next step, or None when it is done."""
        if isinstance(outcome, Listing):
            self._total = sum(e.file_size for e in outcome.entries if e.kind == "file")
        elif isinstance(outcome, Done):
            self._moved += outcome.bytes
        try:
            return self._plan.send(outcome)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def progress(self, done: int, size: int) -> None:
        """A file's on_progress, as the whole transfer's."""
        if self._on_progress is not None and self._total is not None:
            self._on_progress(self._moved + done, self._total)

    @staticmethod
    def failed(step: Step, exc: TransferFailed | LocalFileError) -> EntryError:
        """The entry's error for a step that failed; raises what ends the whole transfer (a
        listing refused, a cancel)."""
        if isinstance(exc, TransferFailed) and (isinstance(step, ListTree)
                                                or exc.code == "cancelled"):
            raise exc
        return EntryError(entry_of(step), exc.code, str(exc))


class _Tally:
    def __init__(self, local: str, remote: str) -> None:
        self.local, self.remote = local, remote
        self.started = time.monotonic()
        self.files = self.directories = self.links = self.bytes = self.changed = 0
        self.errors: list[EntryError] = []

    def count(self, kind: str, outcome: Outcome) -> None:
        if isinstance(outcome, EntryError):
            self.errors.append(outcome)
            return
        assert isinstance(outcome, Done)
        self.changed += outcome.changed
        if kind == "file":
            self.files += 1
            self.bytes += outcome.bytes
        elif kind == "dir":
            self.directories += 1
        else:
            self.links += 1

    def result(self, skipped: tuple[str, ...] = ()) -> TreeResult:
        return TreeResult(self.local, self.remote, self.files, self.directories, self.links,
                          self.bytes, self.changed, time.monotonic() - self.started,
                          tuple(self.errors), skipped)


def put_tree(tree: LocalTree, remote: str, *, preserve: bool = False,
             force: bool = False) -> Plan:
    """The plan of ``put -r``: the local ``tree`` to the remote directory ``remote``."""
    tally = _Tally(str(tree.root), remote)
    tally.errors.extend(tree.errors)
    top = yield MakeDir(remote, None, tree.mode, tree.mtime_ns if preserve else None)
    if isinstance(top, EntryError):
        tally.errors.append(EntryError(".", top.code, top.message))
        return tally.result(tree.skipped)
    assert isinstance(top, Done)
    tally.changed += top.changed
    failed_dirs: list[str] = []
    for entry in tree.entries:
        if any(entry.path.startswith(d + "/") for d in failed_dirs):
            continue  # its directory could not be made: the error was said once, for it
        step: Step
        if entry.kind == "dir":
            step = MakeDir(entry.path, remote, entry.mode, None)
        elif entry.kind == "link":
            problem = check_entry("link", entry.path, entry.target)
            if problem is not None:  # the server would refuse it too: not sent
                tally.errors.append(problem)
                continue
            step = MakeLink(entry.path, remote, entry.target)
        else:
            step = SendFile(tree.root / entry.path, entry.path, remote, entry.mode,
                            entry.mtime_ns if preserve else None, force)
        outcome = yield step
        if isinstance(outcome, EntryError) and entry.kind == "dir":
            failed_dirs.append(entry.path)
        tally.count(entry.kind, outcome)
    if preserve:  # after what they hold was written, which moved their mtimes
        dirs = {e.path: e for e in tree.entries if e.kind == "dir"}
        for path in parents_first([p for p in dirs if p not in failed_dirs]):
            outcome = yield MakeDir(path, remote, dirs[path].mode, dirs[path].mtime_ns)
            if isinstance(outcome, EntryError):
                tally.errors.append(outcome)
    return tally.result(tree.skipped)


def get_tree(remote: str, local: Path, *, preserve: bool = False) -> Plan:
    """The plan of ``get -r``: the remote directory ``remote`` to the local ``local``."""
    tally = _Tally(str(local), remote)
    listing = yield ListTree(remote)
    if isinstance(listing, EntryError):
        raise LocalFileError(listing.message, listing.code, remote)  # never happens: raised
    assert isinstance(listing, Listing)
    destination = LocalDestination(local)
    destination.make_root(0o755)
    dir_mtimes: dict[str, int] = {}
    for entry in listing.entries:
        problem = check_entry(entry.kind, entry.path, entry.target)
        if problem is not None:
            tally.errors.append(problem)
            continue
        outcome: Outcome
        try:
            if entry.kind == "dir":
                outcome = Done(destination.make_dir(entry.path, entry.mode, preserve=preserve))
                dir_mtimes[entry.path] = entry.mtime_ns
            elif entry.kind == "link":
                assert entry.target is not None  # check_entry refused a link without one
                outcome = Done(destination.make_link(entry.path, entry.target))
            else:
                outcome = yield FetchFile(entry.path, remote, destination.path(entry.path),
                                          preserve)
        except LocalFileError as exc:
            outcome = EntryError(entry.path, exc.code, str(exc))
        tally.count(entry.kind, outcome)
    if preserve:
        for path in parents_first(list(dir_mtimes)):
            destination.set_mtime(path, dir_mtimes[path])
    return tally.result()
