"""Fleet mode of ``rexec run`` and ``rexec batch`` (and the rendering and driving that fleet
``put`` and ``get`` share): a pattern's hosts, fanned out, rendered.

``rexec.fleet`` does the work (Inventory -> Targets -> Group); this module turns the flags into
one Renderer, feeds it what the Group reports as it happens, prints the summary and returns the
fleet's exit status: 0 every host ok, 1 a command failed (all reached), 3 a host unreachable
(before 1), 130 Ctrl-C, 141 local stdout closed; usage errors are 2 before anything runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rexec.cli.output import (
    LineWriter,
    Outcome,
    Progress,
    gathered,
    outcome_json,
    summary_lines,
    summary_table,
    write_fd,
)

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


class Renderer:
    """Where each host's output goes: prefixed lines (default), gathered (-b), files
    (--out-dir) or JSON Lines (--json); plus the progress bar and the summary on stderr."""

    def __init__(self, hosts: list[str], *, mode: str, prefix: bool = True,
                 out_dir: Path | None = None, summary: bool = False, quiet: bool = False,
                 fold: Any = None, batch: bool = False,
                 line_json: Callable[[Any], str] = outcome_json,
                 progress_bytes: bool = False,
                 more_summary: Callable[[Any], list[str]] | None = None) -> None:
        """``line_json``: a host's --json line (a transfer's differs from a command's);
        ``progress_bytes``: the bar counts bytes too (``moved``); ``more_summary(result)``:
        lines after the summary's own (not with quiet)."""
        from rexec.fleet.lines import HostLines

        self.mode = mode
        self.line_json = line_json
        self.more_summary = more_summary
        self.prefix = prefix
        self.quiet = quiet
        self.summary = summary
        self.fold = fold
        self.batch = batch
        self.on_broken_pipe: Any = None  # local stdout closed: the run is cancelled, exit 141
        self.writer = LineWriter(self._stdout_closed)
        self._lines = HostLines()
        self._stdout: dict[str, bytearray] = {}
        self._files: dict[tuple[str, str], Any] = {}
        self.out_dir = out_dir
        self.outcomes: list[Outcome] = []
        show_bar = not quiet and sys.stderr.isatty() and (len(hosts) > 1 or progress_bytes)
        self.progress = Progress(len(hosts), moved=progress_bytes) if show_bar else None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)

    # --- as it happens ---------------------------------------------------------------------

    def output(self, host: str, stream: str, data: bytes) -> None:
        """Some of one host's output arrived."""
        if self.mode == "json":
            return  # the host's line carries it, when it ends
        if self.mode == "out_dir":
            self._file(host, "out" if stream == "stdout" else "err").write(data)
            return
        if self.mode == "gather" and stream == "stdout":
            self._stdout.setdefault(host, bytearray()).extend(data)
            return
        for line in self._lines.feed(host, stream, data):  # type: ignore[arg-type]
            self._line(host, stream, line)

    def _file(self, host: str, suffix: str) -> Any:
        """DIR/HOST.out or .err, opened on first use: only the hosts running hold files open
        (1,000 hosts' 2,000 files at once would pass the usual limit of 1,024 descriptors)."""
        handle = self._files.get((host, suffix))
        if handle is None:
            assert self.out_dir is not None
            name = host.replace("/", "_")  # a file in DIR, whatever the host's name
            handle = self._files[host, suffix] = (self.out_dir / f"{name}.{suffix}").open("wb")
        return handle

    @property
    def broken_pipe(self) -> bool:
        """Whether local stdout was closed (the run is then cancelled; exit 141)."""
        return self.writer.broken_pipe

    def _stdout_closed(self) -> None:
        if self.on_broken_pipe is not None:
            self.on_broken_pipe()

    def _line(self, host: str, stream: str, line: bytes) -> None:
        fd = 1 if stream == "stdout" else 2
        data = f"{host}: ".encode() + line if self.prefix else line
        self._write(fd, data)

    def _write(self, fd: int, data: bytes) -> None:
        """Whole lines to ``fd``: above the progress bar on a terminal, else queued for the
        end of the loop's pass (``LineWriter``)."""
        if self.progress is None:
            self.writer.write(fd, data)
            return
        if fd == 1 and self.writer.broken_pipe:
            return
        try:
            self.progress.line(fd, data)
        except BrokenPipeError:
            if fd == 1:
                self.writer.broken_pipe = True
                self._stdout_closed()

    def note(self, message: str) -> None:
        """``rexec: MESSAGE`` on stderr, above the bar when there is one (-v's details)."""
        self._write(2, f"rexec: {message}\n".encode())

    def done(self, outcome: Outcome) -> None:
        """One host ended (ok, failed, timed out, unreachable or cancelled)."""
        self.outcomes.append(outcome)
        if self.mode in ("lines", "gather"):
            for stream, line in self._lines.flush(outcome.host):
                if self.mode == "lines" or stream == "stderr":
                    self._line(outcome.host, stream, line)
        if self.mode == "out_dir":
            for suffix in ("out", "err"):  # both files exist for every host, empty or not
                self._file(outcome.host, suffix).close()
                del self._files[outcome.host, suffix]
        if self.mode == "json":
            self._write(1, (self.line_json(outcome) + "\n").encode())
        if self.progress is not None:
            self.progress.done(outcome.status)

    # --- at the end -----------------------------------------------------------------------

    def finish(self, result: Any) -> None:
        """The run is over: remove the bar, print what -b gathered, and the summary."""
        self.writer.flush()
        if self.progress is not None:
            self.progress.stop()
        for handle in self._files.values():
            if not handle.closed:
                handle.close()
        if self.mode == "gather":
            outputs = {}
            for host in result.statuses:
                r = result.get(host)
                if r is not None:  # the unreachable and never-started are in the summary
                    outputs[host] = (bytes(self._stdout.get(host, b"")), r.exit_status)
            write_fd(1, gathered(outputs, self.fold))
        if self.summary:
            write_fd(2, summary_table(list(result.outcomes.values())).encode())
        lines = summary_lines(result, self.fold, quiet=self.quiet, batch=self.batch)
        if self.more_summary is not None and not self.quiet:
            lines += self.more_summary(result)
        for line in lines:
            write_fd(2, f"rexec: {line}\n".encode())


def fleet_status(result: Any, interrupted: bool) -> int:
    """The fleet's exit status (README, "Fleets")."""
    if interrupted:
        return 130
    statuses = set(dict(result.statuses).values())
    if "unreachable" in statuses:
        return EXIT_UNREACHABLE
    if statuses - {"ok"}:
        return EXIT_FAILED
    return 0


def stdin_source(no_stdin: bool) -> Any:
    """Local stdin for every host (read once, streamed to all), when it is not a terminal."""
    if no_stdin:
        return None
    try:
        os.fstat(0)
    except OSError:
        return None
    return None if os.isatty(0) else sys.stdin.buffer


def with_flags(targets: list[Any], connection: dict[str, Any]) -> list[Any]:
    """The command line's connection flags over each host's inventory settings (as ssh's
    options override ~/.ssh/config). A trust flag replaces the host's way of trusting."""
    given = {key: value for key, value in connection.items()  # --keepalive 0 is given
             if value is not None and value is not False and key != "config"}
    if not given:
        return targets
    from dataclasses import replace

    from rexec.client.options import ConnectOptions
    from rexec.wire.address import parse_address

    trust_given = any(key in given for key in ("tls_ca", "tls_pin", "tls_tofu"))
    changed = []
    resolved: dict[tuple[Any, ...], ConnectOptions] = {}  # a token file is read once, not per host
    for target in targets:
        o = target.options
        keywords: dict[str, Any] = {
            "token": None if "token_file" in given else o.token,
            "identity": o.identity, "connect_timeout": o.connect_timeout,
            "keepalive": o.keepalive,
            "tls_cert": o.tls_cert, "tls_key": o.tls_key,
            "config": connection.get("config"),
        }
        if not trust_given:
            keywords.update(tls_ca=o.tls_ca, tls_pin=o.tls_pin, tls_tofu=o.tls_tofu or None)
        keywords.update(given)
        key = tuple(sorted((name, repr(value)) for name, value in keywords.items()))
        if key not in resolved:
            resolved[key] = ConnectOptions.resolve(o.address, **keywords)
        host, port = parse_address(o.address)
        options = replace(resolved[key], address=o.address, host=host, port=port)
        changed.append(replace(target, options=options))
    return changed


def run_fleet(targets: list[Any], *, commands: list[Any] | None, command: str | None,
              renderer_options: dict[str, Any], forks: int, timeout: float | None,
              env: dict[str, str], cwd: str | None, stdin: Any, keep_going: bool = False,
              recorder: Any = None) -> int:
    """Fan ``command`` (or a batch's ``commands``) out; render; return the fleet exit status.

    Ctrl-C cancels every remote command at once and the summary is still printed; a second
    Ctrl-C exits at once, without waiting. ``recorder`` (a batch's ``BatchHistory``) records
    the batch in the history, once the hosts are about to be contacted.
    """
    from rexec.fleet.nodeset import fold

    hosts = [target.name for target in targets]
    group = make_group(targets, forks)  # before the bar: nothing to undo if it refuses
    if group is None:
        return 2
    try:
        renderer = Renderer(hosts, fold=fold, batch=commands is not None, **renderer_options)
    except OSError as exc:  # --out-dir that cannot be made
        print(f"rexec: --out-dir {renderer_options.get('out_dir')}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
        return 2
    json_mode = renderer.mode == "json"

    async def start() -> Any:
        if commands is not None:
            return await group.batch(commands, keep_going=keep_going, env=env, cwd=cwd,
                                     timeout=timeout, capture=json_mode,
                                     **batch_hooks(renderer, recorder))
        assert command is not None
        return await group.run(command, env=env, cwd=cwd, timeout=timeout, stdin=stdin,
                               capture=json_mode, on_output=renderer.output,
                               on_done=renderer.done)

    if recorder is None:
        return drive(group, renderer, start)
    return recorded(recorder, lambda: drive(group, renderer, start))


def batch_hooks(renderer: Renderer, recorder: Any) -> dict[str, Any]:
    """Group.batch's callbacks: the renderer's, and the history recorder's beside them."""
    if recorder is None:
        return {"on_output": renderer.output, "on_done": renderer.done}

    def on_output(host: str, stream: str, data: bytes) -> None:
        renderer.output(host, stream, data)
        recorder.output(host, stream, data)

    def on_done(outcome: Outcome) -> None:
        recorder.done(outcome)
        renderer.done(outcome)

    return {"on_output": on_output, "on_done": on_done, "on_command": recorder.command}


def recorded(recorder: Any, run: Callable[[], int]) -> int:
    """``run()``'s exit status, the run recorded by ``recorder`` from start to end: one that
    raises is recorded as failed (a bug, a refusal) or interrupted (KeyboardInterrupt)."""
    recorder.start()
    try:
        status = run()
    except Exception:
        recorder.finish(None, "failed")
        raise
    except BaseException:
        recorder.finish(None, "interrupted")
        raise
    recorder.finish(status)
    return status


def make_group(targets: list[Any], forks: int) -> Any:
    """``Group(targets, forks=forks)``, or None after one line on stderr (forks below 1, a
    host named twice)."""
    from rexec.errors import ConfigError
    from rexec.fleet.group import Group

    try:
        return Group(targets, forks=forks)
    except ConfigError as exc:
        print(f"rexec: {exc}", file=sys.stderr, flush=True)
        return None


def drive(group: Any, renderer: Renderer, start: Callable[[], Awaitable[Any]],
          refusals: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``start()`` (one of ``group``'s operations, reporting to ``renderer``) on a new
    event loop; then the summary, and the fleet's exit status. Ctrl-C cancels every host at
    once and the summary is still printed; a second Ctrl-C exits at once. An exception of
    ``refusals`` (raised before any host is contacted) is one line on stderr, exit 2.
    """
    import asyncio
    import signal

    renderer.on_broken_pipe = group.cancel
    interrupted = 0

    async def main() -> Any:
        nonlocal interrupted
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted += 1
            if interrupted > 1:  # the second Ctrl-C: do not wait (the servers kill the groups)
                with contextlib.suppress(OSError):
                    renderer.writer.flush()  # the lines already in hand
                if renderer.progress is not None:
                    renderer.progress.stop()  # the terminal gets its cursor back
                os._exit(130)
            group.cancel()

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            return await start()
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        result = asyncio.run(main())
    except refusals as exc:
        if renderer.progress is not None:
            renderer.progress.stop()
        print(f"rexec: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        if renderer.progress is not None:
            renderer.progress.stop()
    try:
        renderer.finish(result)
    except BrokenPipeError:
        renderer.writer.broken_pipe = True
    if renderer.broken_pipe and not interrupted:
        return 128 + signal.SIGPIPE
    return fleet_status(result, bool(interrupted))


def classify(target: str, inventory_files: list[Path] | None, config: Path | None,
             connection: dict[str, Any] | None = None, *,
             token_required: bool = True) -> tuple[str, Any]:
    """What TARGET is: ("address", None) for one address as before, ("host", Target) for one
    inventory host (single-host mode), ("fleet", [Target, ...]) for a pattern (fleet mode,
    even when it matches one host). PatternError/InventoryError (exit 2) before anything runs.
    ``connection``: the command line's connection flags, over every host's settings;
    ``token_required`` false: hosts without a token resolve too (ping, discover).
    """
    from rexec.fleet.nodeset import is_pattern

    if is_pattern(target):
        from rexec.fleet.inventory import Inventory

        inventory = Inventory.load(inventory_files, config=config, overrides=connection,
                                   token_required=token_required)
        return "fleet", inventory.resolve(target)
    if ":" in target or (not inventory_files and not _default_inventory_exists()):
        return "address", None
    from rexec.fleet.inventory import Inventory

    inventory = Inventory.load(inventory_files, config=config, overrides=connection,
                               token_required=token_required)
    if target in inventory:
        return "host", inventory.target(target)
    return "address", None


def _default_inventory_exists() -> bool:
    """inventory.default_inventory_paths() without importing it (the one-host path's cost)."""
    from rexec.tokens import default_home

    return bool(os.environ.get("REXEC_INVENTORY")) or (default_home() / "inventory.toml").exists()
