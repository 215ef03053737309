"""Fleet mode of ``rexec put`` and ``rexec get``: a pattern TARGET's hosts, a file or (``-r``)
a directory each.

``rexec put PATTERN LOCAL REMOTE`` sends LOCAL to every host, hashed once and read once for
the hosts sending it together (``Group.put``); ``rexec get PATTERN REMOTE LOCAL`` writes each
host's file to ``LOCAL/HOST/NAME`` (``Group.get``), LOCAL an existing directory. The pattern is
resolved as ``rexec run``'s is (a pattern is fleet mode even when it matches one host), the
connection flags override the inventory's, and the run is driven, rendered and summed up as
fleet ``run`` is (``cli/fleet.py``): a bar of hosts and bytes on a terminal, one JSON line per
host with --json, the summary on stderr, and the fleet's exit status (0 every host done, 1 a
transfer failed and every host was reached, 3 a host unreachable, 2 usage before anything is
sent, 130 Ctrl-C).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rexec.cli.common import EXIT_USAGE, fail
from rexec.cli.run import Notes, check_forks, classify_target
from rexec.cli.transfer import human_size

Operation = Callable[[Any, Any, Callable[[Any], None]], Awaitable[Any]]
"""``operation(group, on_progress, on_done)``: the Group's put or get, started."""


def put(target: str, local: Path, remote: str, *, mode: int | None, preserve: bool,
        force: bool, recursive: bool, json_output: bool, notes: Notes, forks: int,
        timeout: float | None, inventory: list[Path] | None, config: Path | None,
        connection: dict[str, Any]) -> int:
    """``rexec put PATTERN LOCAL REMOTE``: the fleet's exit status."""
    if recursive:
        return _put_tree(target, local, remote, mode=mode, preserve=preserve, force=force,
                         json_output=json_output, notes=notes, forks=forks, timeout=timeout,
                         inventory=inventory, config=config, connection=connection)
    from rexec.client.transfer import put_destination

    destination = _checked(lambda: put_destination(local, remote))

    def operation(group: Any, on_progress: Any, on_done: Callable[[Any], None]) -> Any:
        return group.put(local, destination, mode=mode, preserve=preserve, force=force,
                         timeout=timeout, on_progress=on_progress, on_done=on_done)

    def unchanged(result: Any) -> list[str]:
        from rexec.fleet.nodeset import fold

        hosts = [host for host, done in result.items() if not done.changed]
        return [f"unchanged (the same file was there already): {fold(hosts)}"] if hosts else []

    return _fleet("put", target, operation, lambda host: (str(local), destination),
                  more_summary=unchanged, json_output=json_output, notes=notes, forks=forks,
                  timeout=timeout, inventory=inventory, config=config, connection=connection)


def get(target: str, remote: str, local: Path, *, preserve: bool,
        recursive: bool, json_output: bool, notes: Notes, forks: int, timeout: float | None,
        inventory: list[Path] | None, config: Path | None, connection: dict[str, Any]) -> int:
    """``rexec get PATTERN REMOTE LOCAL``: the fleet's exit status."""
    from rexec.fleet.transfer import check_host_dirs, get_name, host_dir

    name = _checked(lambda: get_name(remote))
    if not local.is_dir():
        what = "is not a directory" if local.exists() else "does not exist"
        fail(f"LOCAL: a fleet get writes each host's {'tree' if recursive else 'file'} to"
             f" LOCAL/HOST/{name}, so LOCAL must be an existing directory, and {local}"
             f" {what}", EXIT_USAGE)

    def operation(group: Any, on_progress: Any, on_done: Callable[[Any], None]) -> Any:
        fetch = group.get_tree if recursive else group.get
        return fetch(remote, local, preserve=preserve, timeout=timeout,
                     on_progress=on_progress, on_done=on_done)

    def check(hosts: list[str]) -> None:
        from rexec.errors import ConfigError

        try:
            check_host_dirs(hosts)
        except ConfigError as exc:
            fail(exc, EXIT_USAGE)

    return _fleet("get", target, operation,
                  lambda host: (str(local / host_dir(host) / name), remote), check=check,
                  tree=recursive,
                  json_output=json_output, notes=notes, forks=forks, timeout=timeout,
                  inventory=inventory, config=config, connection=connection)


def _put_tree(target: str, local: Path, remote: str, *, mode: int | None, preserve: bool,
              force: bool, json_output: bool, notes: Notes, forks: int, timeout: float | None,
              inventory: list[Path] | None, config: Path | None,
              connection: dict[str, Any]) -> int:
    """``rexec put -r PATTERN LOCAL REMOTE``: the local tree to every host."""
    from rexec.client.transfer import put_tree_destination

    if mode is not None:
        fail("--mode applies to one file: with -r every entry keeps its own mode", EXIT_USAGE)
    root = _checked(lambda: put_tree_destination(local, remote))
    if not local.is_dir():
        fail(f"LOCAL: {local} is not a directory (-r puts a directory)", EXIT_USAGE)

    def operation(group: Any, on_progress: Any, on_done: Callable[[Any], None]) -> Any:
        return group.put_tree(local, root, preserve=preserve, force=force, timeout=timeout,
                              on_progress=on_progress, on_done=on_done)

    def unchanged(result: Any) -> list[str]:
        from rexec.fleet.nodeset import fold

        hosts = [host for host, done in result.items() if not done.changed]
        return [f"unchanged (the same tree was there already): {fold(hosts)}"] if hosts else []

    return _fleet("put", target, operation, lambda host: (str(local), root), tree=True,
                  more_summary=unchanged, json_output=json_output, notes=notes, forks=forks,
                  timeout=timeout, inventory=inventory, config=config, connection=connection)


def _checked(compute: Callable[[], Any]) -> Any:
    """``compute()``, or exit 2 when the paths are bad (InvalidRequest)."""
    from rexec.errors import InvalidRequest

    try:
        return compute()
    except InvalidRequest as exc:
        fail(f"REMOTE: {exc}" if exc.field == "path" else str(exc), EXIT_USAGE)


def _fleet(kind: str, target: str, operation: Operation,
           paths: Callable[[str], tuple[str, str]], *, json_output: bool, notes: Notes,
           forks: int, timeout: float | None, inventory: list[Path] | None,
           config: Path | None, connection: dict[str, Any],
           more_summary: Callable[[Any], list[str]] | None = None,
           check: Callable[[list[str]], None] | None = None, tree: bool = False) -> int:
    """Resolve the pattern, fan ``operation`` out, render it; the fleet's exit status."""
    from rexec.cli.fleet import Renderer, drive, make_group, with_flags
    from rexec.cli.output import transfer_json, tree_json
    from rexec.errors import ConfigError, InvalidRequest, LocalFileError
    from rexec.fleet.nodeset import fold
    from rexec.fleet.transfer import check_timeout

    try:
        check_timeout(timeout)
    except InvalidRequest as exc:
        fail(f"--timeout: {exc}", EXIT_USAGE)
    forks = check_forks(forks)
    _, found = classify_target(target, inventory, config, kind, False, connection=connection)
    try:
        targets = with_flags(found, connection)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    hosts = [t.name for t in targets]
    if check is not None:
        check(hosts)
    group = make_group(targets, forks)
    if group is None:
        return EXIT_USAGE
    renderer = Renderer(hosts, mode="json" if json_output else "lines", quiet=notes.quiet,
                        fold=fold, line_json=lambda o: (tree_json if tree else transfer_json)(
                            o, *paths(o.host)),
                        progress_bytes=True, more_summary=more_summary)
    moved = _Moved(renderer.progress) if renderer.progress is not None else None

    def done(outcome: Any) -> None:
        renderer.done(outcome)
        result = outcome.result
        if notes.verbose and result is not None and tree:
            arrow = "->" if kind == "put" else "<-"
            renderer.note(f"{outcome.host}: {kind} -r {result.local} {arrow} {result.remote}:"
                          f" {result.files} files ({result.bytes} bytes), {result.changed}"
                          f" changed, {len(result.errors)} failed, {outcome.duration:.3f} s")
        elif notes.verbose and result is not None:
            arrow = "->" if kind == "put" else "<-"
            what = "changed" if result.changed else "unchanged"
            renderer.note(f"{outcome.host}: {kind} {result.local} {arrow} {result.remote}:"
                          f" {result.bytes} bytes, sha256 {result.sha256}, {what},"
                          f" {outcome.duration:.3f} s")

    return drive(group, renderer, lambda: operation(group, moved, done),
                 refusals=(LocalFileError, ConfigError))


class _Moved:
    """``on_progress(host, done, total)`` for the bar: every host's bytes summed, with the
    rate since the first bytes, redrawn at most ten times a second."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._done: dict[str, int] = {}
        self._total: dict[str, int] = {}
        self.done = self.total = 0
        self._first: float | None = None
        self._drawn = 0.0

    def __call__(self, host: str, done: int, total: int) -> None:
        self.done += done - self._done.get(host, 0)
        self.total += total - self._total.get(host, 0)
        self._done[host], self._total[host] = done, total
        now = time.monotonic()
        if self._first is None:
            self._first = now
        if now - self._drawn < 0.1 and self.done < self.total:
            return
        self._drawn = now
        rate = self.done / max(now - self._first, 1e-6)
        self._progress.moved(
            f"{human_size(self.done)} / {human_size(self.total)}  {human_size(rate)}/s")
