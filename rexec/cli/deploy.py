"""``rexec deploy PLAN.toml``: a plan's steps, batch after batch, over the fleet fan-out.

Output: one line per host and step as it ends (``HOST  STEP  STATUS  DURATION``; a failed
step's output tail under it), a progress bar per batch on a terminal, and a recap per host at
the end, with the hosts the failure budget left unreached; or ``--json``: JSON Lines, one
object per host and step, then one summary object. Every run is written to the history
(``--no-history`` not to), and ``--resume RUN_ID`` finishes what such a run left.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rexec.cli.common import (
    EXIT_USAGE,
    ClientConfig,
    Command,
    ConnectTimeout,
    Identity,
    Keepalive,
    TlsCa,
    TlsCert,
    TlsKey,
    TlsPin,
    TlsTofu,
    TokenFile,
    connection_keywords,
    fail,
)
from rexec.cli.run import InventoryFiles

if TYPE_CHECKING:
    from rexec.cli.output import Progress
    from rexec.deploy.executor import DeployReport, HostReport, Leftover, StepResult
    from rexec.deploy.history import History
    from rexec.deploy.schedule import Schedule

DEPLOY_HELP = """Apply the deployment plan PLAN (TOML) to its targets: batches of hosts
(serial), each step on every host of a batch before the next, guards, retries, handlers, a
health check and a failure budget (max_fail_percentage) over the whole rollout.

--check changes nothing: guards run for real (with REXEC_CHECK=1), puts and templates are
compared with the hosts (would_change or ok), commands are reported would_run. Every run is
recorded in the history (rexec history); --resume RUN_ID runs the same plan again on the hosts
that failed, were unreachable or never reached, each from its first step not completed.

Exit status: 0 every host ok; 1 a host failed; 3 a host was unreachable; 4 the failure budget
stopped the rollout before every batch ran; 2 a usage or plan error (nothing ran); 130 Ctrl-C.
"""

STATUS_WIDTH = 12
TAIL_LINES = 10  # of a failed step's output, under its line


def deploy_command(  # noqa: PLR0917 - typer maps parameters to arguments and options
    plan_file: Annotated[Path, typer.Argument(
        metavar="PLAN", show_default=False, help="The plan file (TOML).")],
    check: Annotated[bool, typer.Option(
        "--check", help="Dry run: change nothing, say what would change.")] = False,
    diff: Annotated[bool, typer.Option(
        "--diff", help="Show the diff of every file a put or template changes (text only).")
    ] = False,
    limit: Annotated[str | None, typer.Option(
        "--limit", metavar="PATTERN", help="Only the plan's targets that PATTERN names too.")
    ] = None,
    tags: Annotated[list[str] | None, typer.Option(
        "--tags", metavar="TAG[,TAG]", help="Only the steps with one of these tags.")] = None,
    skip_tags: Annotated[list[str] | None, typer.Option(
        "--skip-tags", metavar="TAG[,TAG]", help="Not the steps with one of these tags.")
    ] = None,
    start_at: Annotated[str | None, typer.Option(
        "--start-at", metavar="STEP", help="Start at this step (the earlier ones are not run).")
    ] = None,
    var: Annotated[list[str] | None, typer.Option(
        "--var", metavar="NAME=VALUE", help="A variable over every other source (repeatable).")
    ] = None,
    forks: Annotated[int | None, typer.Option(
        "--forks", "-f", metavar="N", help="At most N hosts at once (default: the plan's, or 64).")
    ] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="JSON Lines: one object per host and step, then a summary object.")
    ] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q",
        help="Only failed steps and the recap (its ok hosts on one line).")] = False,
    resume: Annotated[int | None, typer.Option(
        "--resume", metavar="RUN_ID", help="Finish what run RUN_ID of this plan left undone.")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="With --resume: even if the plan file changed since.")] = False,
    history_file: Annotated[Path | None, typer.Option(
        "--history", metavar="FILE", help="The history file (default $REXEC_HISTORY, else"
                                          " ~/.rexec/history.sqlite).")] = None,
    no_history: Annotated[bool, typer.Option(
        "--no-history", help="Do not record this run.")] = False,
    inventory: InventoryFiles = None,
    token_file: TokenFile = None,
    config: ClientConfig = None,
    connect_timeout: ConnectTimeout = None,
    keepalive: Keepalive = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_pin: TlsPin = None,
    tls_tofu: TlsTofu = False,
    identity: Identity = None,
) -> None:
    from rexec.cli.fleet import with_flags
    from rexec.deploy.plan import Plan
    from rexec.errors import ConfigError
    from rexec.fleet.inventory import Inventory

    if forks is not None and forks < 1:
        fail(f"--forks must be at least 1, not {forks}", EXIT_USAGE)
    if force and resume is None:
        fail("--force goes with --resume RUN_ID", EXIT_USAGE)
    chosen = [flag for flag, given in (("--limit", limit), ("--tags", tags),
                                       ("--skip-tags", skip_tags), ("--start-at", start_at),
                                       ("--var", var)) if given]
    if resume is not None and chosen:
        fail(f"--resume {resume} runs with the options run {resume} had: leave out"
             f" {', '.join(chosen)}", EXIT_USAGE)
    connection = connection_keywords(
        token_file=token_file, config=config, connect_timeout=connect_timeout,
        keepalive=keepalive, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_pin=tls_pin,
        tls_tofu=tls_tofu, identity=identity)
    options: dict[str, Any] = {
        "check": check, "limit": limit, "tags": _words(tags), "skip_tags": _words(skip_tags),
        "start_at": start_at, "vars": _pairs(var or [])}
    history = None if no_history else _open_history(history_file)
    left = None
    try:
        plan = Plan.load(plan_file)
        if resume is not None:
            left = _resumed(history, history_file, resume, plan, force=force)
            options = {**left.options, "check": check, "resume": resume}
        inventory_ = Inventory.load(inventory, config=config, overrides=connection)
        schedule = plan.schedule(
            inventory_, limit=options["limit"], tags=options["tags"],
            skip_tags=options["skip_tags"], start_at=options["start_at"],
            extra_vars=options["vars"])
        if left is not None:
            schedule = _only(schedule, left)
        schedule = _with_flags(schedule, with_flags, connection)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    if not schedule.hosts:  # only a resume can leave none: a plan that targets none is refused
        print(f"rexec: run {resume} left nothing to do: every host completed every step",
              file=sys.stderr, flush=True)
        raise typer.Exit(0)
    view = _View(json_output=json_output, quiet=quiet, check=check)
    view.label_width = max(len(name) for name in [
        *(step.name for step in plan.steps), *(handler.name for handler in plan.handlers),
        "health"])
    if check and not json_output:
        view.write_lines(schedule.describe())
    run_id = None
    if history is not None:
        run_id = _start(history, schedule, options, check=check)
    raise typer.Exit(_drive(schedule, view, history, run_id, check=check, diff=diff,
                            forks=forks, notified=left.notified if left else {},
                            completed=left.completed if left else {}))


def _words(values: list[str] | None) -> list[str]:
    """--tags a,b --tags c -> [a, b, c]."""
    return [word.strip() for value in values or [] for word in value.split(",") if word.strip()]


def _pairs(values: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            fail(f"--var takes NAME=VALUE, not {value!r}", EXIT_USAGE)
        pairs[name] = text
    return pairs


def _open_history(path: Path | None) -> History | None:
    """The history, or None (with one warning) when it cannot be opened: the deploy goes on."""
    from rexec.deploy.history import COMMIT_EVERY, History
    from rexec.errors import RexecError

    try:
        return History.open(path, commit_every=COMMIT_EVERY)
    except (RexecError, OSError) as exc:
        print(f"rexec: warning: this run is not recorded: {exc}", file=sys.stderr, flush=True)
        return None


def _resumed(history: History | None, history_file: Path | None, run_id: int, plan: Any, *,
             force: bool) -> Leftover:
    """What run ``run_id`` left (ConfigError when it cannot be resumed). A run that resumed
    another carries that one's completed steps: a resume of a resume finishes the first."""
    from rexec.deploy.executor import Leftover
    from rexec.deploy.history import History
    from rexec.errors import ConfigError, RexecError

    try:
        source = history if history is not None else History.open(history_file)
        record = source.run(run_id)
        chain = [record]
        while isinstance(chain[-1].options.get("resume"), int) and len(chain) < 100:
            chain.append(source.run(chain[-1].options["resume"]))
        results = [source.last_results(run.id) for run in reversed(chain)]
    except (RexecError, OSError) as exc:
        raise ConfigError(f"--resume {run_id}: {exc}") from None
    if record.kind != "deploy":
        raise ConfigError(f"--resume {run_id}: run {run_id} is a {record.kind}, not a deploy")
    if record.options.get("check"):
        raise ConfigError(f"--resume {run_id}: run {run_id} was a --check: it changed nothing"
                          " to finish")
    if record.plan_sha256 != plan.sha256 and not force:
        raise ConfigError(
            f"--resume {run_id}: {plan.path} changed since run {run_id} (sha256"
            f" {(record.plan_sha256 or '?')[:12]} then, {plan.sha256[:12]} now); --force to"
            " resume it anyway")
    left = Leftover({key: record.options.get(key) for key in
                  ("limit", "tags", "skip_tags", "start_at", "vars")})
    left.options["tags"] = left.options["tags"] or []
    left.options["skip_tags"] = left.options["skip_tags"] or []
    left.options["vars"] = left.options["vars"] or {}
    for run in results:  # oldest first: a later run's word on a host wins
        for host, rows in run.items():
            left.take(host, rows, plan)
    return left


def _only(schedule: Schedule, left: Leftover) -> Schedule:
    """The schedule without the hosts that ``left`` says are finished."""
    batches = [replace(batch, hosts=[h for h in batch.hosts if not left.finished(h)])
               for batch in schedule.batches]
    return replace(schedule, batches=[b for b in batches if b.hosts])


def _with_flags(schedule: Schedule, with_flags: Any, connection: dict[str, Any]) -> Schedule:
    """The command line's connection flags over every host's inventory settings."""
    targets = {t.name: t for t in with_flags([h.target for h in schedule.hosts], connection)}
    return replace(schedule, batches=[
        replace(batch, hosts=[replace(host, target=targets[host.name]) for host in batch.hosts])
        for batch in schedule.batches])


def _start(history: History, schedule: Schedule, options: dict[str, Any], *,
           check: bool) -> int | None:
    from rexec.errors import RexecError

    plan = schedule.plan
    try:
        return history.start_run(
            "deploy", plan.name, targets=options.get("limit") or plan.targets,
            options={**options, "check": check,
                     "hosts": [host.name for host in schedule.hosts]},
            plan_sha256=plan.sha256)
    except (RexecError, OSError) as exc:
        print(f"rexec: warning: this run is not recorded: {exc}", file=sys.stderr, flush=True)
        return None


def _drive(schedule: Schedule, view: _View, history: History | None,
           run_id: int | None, *, check: bool, diff: bool, forks: int | None,
           notified: dict[str, set[str]], completed: dict[str, set[int]]) -> int:
    import asyncio
    import signal

    from rexec.deploy.executor import Executor

    def on_result(result: StepResult) -> None:
        view.result(result)
        if history is not None and run_id is not None:
            history.record(run_id, host=result.host, step_index=result.index, step=result.step,
                           status=result.status, changed=result.changed,
                           exit_code=result.exit_code, duration=result.duration,
                           attempts=result.attempts, stdout=result.stdout,
                           stderr=result.stderr, error=result.message or None)

    executor = Executor(schedule, check=check, diff=diff, forks=forks, on_result=on_result,
                        on_batch=view.batch, on_host_done=view.host_done,
                        notified=notified, completed=completed)
    interrupted = 0

    async def main() -> DeployReport:
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted += 1
            if interrupted > 1:  # the second Ctrl-C: do not wait
                view.stop()
                if history is not None and run_id is not None:
                    history.finish_run(run_id, "cancelled", 130)
                    history.close()
                os._exit(130)
            executor.cancel()

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            return await executor.run()
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        report = asyncio.run(main())
    finally:
        view.stop()
    view.finish(report, run_id)
    if history is not None:
        if run_id is not None:
            history.finish_run(run_id, report.status, report.exit_status)
        history.close()
    return report.exit_status


class _View:
    """The live lines, the progress bar, the recap; or the JSON Lines."""

    def __init__(self, *, json_output: bool, quiet: bool, check: bool) -> None:
        self.json = json_output
        self.quiet = quiet
        self.check = check
        self.progress: Progress | None = None
        self.width = 0  # of the batch's host names
        self.label_width = 0  # of the plan's step and handler names

    def write_lines(self, lines: list[str]) -> None:
        self._out("".join(f"{line}\n" for line in lines))

    def _out(self, text: str) -> None:
        if self.progress is not None:
            self.progress.line(1, text.encode())
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def batch(self, number: int, hosts: list[str]) -> None:
        from rexec.fleet.nodeset import fold

        self.stop()
        self.width = max(len(host) for host in hosts)
        if not self.json and not self.quiet:
            self._out(f"batch {number} ({len(hosts)} host{'s' * (len(hosts) != 1)}):"
                      f" {fold(hosts)}\n")
        if not self.json and not self.quiet and os.isatty(2):
            from rexec.cli.output import Progress

            self.progress = Progress(len(hosts))

    def host_done(self, report: HostReport) -> None:
        if self.progress is not None:
            self.progress.done("ok" if report.state == "ok" else report.state)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def result(self, result: StepResult) -> None:
        if self.json:
            self._out(json.dumps(_result_json(result)) + "\n")
            return
        if self.quiet and not result.failed:
            return
        text = (f"{result.host:<{self.width}}  {result.step:<{self.label_width}}"
                f"  {result.status:<{STATUS_WIDTH}} {result.duration:.2f}s")
        if result.attempts > 1:
            text += f"  ({result.attempts} attempts)"
        if result.message:
            text += f"  {result.message}"
        lines = [text]
        if result.failed:
            lines += _tail(result)
        if result.diff:
            lines += result.diff.rstrip("\n").splitlines()
        self.write_lines(lines)

    def finish(self, report: DeployReport, run_id: int | None) -> None:
        from rexec.fleet.nodeset import fold

        never = report.having("never_reached")
        if self.json:
            self._out(json.dumps({
                "type": "summary", "run_id": run_id, "check": report.check,
                "status": report.status, "exit_status": report.exit_status,
                "stopped": report.stopped, "interrupted": report.interrupted,
                "hosts": {name: {"state": host.state, **_counts(host)}
                          for name, host in report.hosts.items()},
                "never_reached": never}) + "\n")
            return
        width = max((len(name) for name in report.hosts), default=0)
        lines = ["", "recap" + (" (check: nothing was changed)" if report.check else "")
                 + (f", run {run_id}" if run_id is not None else "") + ":"]
        quiet_ok: list[str] = []  # -q: the hosts that ended ok, one folded line for them all
        for name, host in report.hosts.items():
            if host.state == "never_reached":
                continue
            if self.quiet and host.state == "ok":
                quiet_ok.append(name)
                continue
            counts = "  ".join(f"{key}={value}" for key, value in _counts(host).items())
            lines.append(f"  {name:<{width}}  {host.state:<11}  {counts}")
        if quiet_ok:
            lines.append(f"  ok: {fold(quiet_ok)} ({len(quiet_ok)})")
        if never:
            why = ("the failure budget stopped the rollout" if report.stopped
                   else "interrupted" if report.interrupted else "not reached")
            lines.append(f"  never reached ({why}): {fold(never)} ({len(never)})")
        print("\n".join(lines), file=sys.stderr, flush=True)


def _counts(host: HostReport) -> dict[str, int]:
    counts = {"ok": host.count("ok"), "changed": host.count("changed"),
              "skipped": host.count("skipped"), "failed": host.count("failed", "unreachable")}
    if host.count("would_run", "would_change"):
        counts["would_change"] = host.count("would_change")
        counts["would_run"] = host.count("would_run")
    return counts


def _tail(result: StepResult) -> list[str]:
    lines: list[str] = []
    for data in (result.stdout, result.stderr):
        text = data.decode("utf-8", "replace").rstrip("\n")
        if text:
            lines += [f"    | {line}" for line in text.splitlines()[-TAIL_LINES:]]
    return lines


def _result_json(result: StepResult) -> dict[str, Any]:
    from rexec.cli.output import text_or_base64

    stdout, stdout_encoding = text_or_base64(result.stdout)
    stderr, stderr_encoding = text_or_base64(result.stderr)
    return {"type": "result", "host": result.host, "step": result.step, "index": result.index,
            "kind": result.kind, "status": result.status, "changed": result.changed,
            "exit_code": result.exit_code, "duration": result.duration,
            "attempts": result.attempts, "stdout": stdout, "stdout_encoding": stdout_encoding,
            "stderr": stderr, "stderr_encoding": stderr_encoding,
            "message": result.message or None, "diff": result.diff}


def register(root: typer.Typer) -> None:
    """Add ``rexec deploy`` to the root app."""
    root.command("deploy", cls=Command, help=DEPLOY_HELP)(deploy_command)
