"""``rexec history``: the runs that ``rexec batch`` and ``rexec deploy`` recorded, newest
first, and ``rexec history show RUN_ID``: one run's result on each host for each step.

Nothing recorded yet (no file, or no run in it) is one line on stderr and exit 1, as
``git log`` in a repository without commits: a mistyped ``--history FILE`` must not pass for
an empty history. An unknown RUN_ID is exit 2, a file that is not a history exit 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rexec.cli.common import EXIT_USAGE, Command, fail, history_option

if TYPE_CHECKING:
    from rexec.deploy.history import History, ResultRecord, RunRecord

EXIT_NOTHING = 1  # nothing recorded yet, or the file is not a history
SUCCEEDED = frozenset({"ok", "changed", "skipped", "would_run", "would_change"})
"""Result statuses whose output ``show`` does not print (--json has every result's)."""
STEP_WIDTH = 48  # a step's text in show's table (a command may be long: --json has it all)

HELP = """List the recent runs of rexec batch and rexec deploy, newest first: id, start time,
kind, name, status, exit status, hosts and seconds (rexec history show RUN_ID for one run).

A run still recorded as running whose process has gone is shown as interrupted.

The history is --history FILE, else $REXEC_HISTORY, else ~/.rexec/history.sqlite.

Exit status: 0 listed; 1 nothing recorded yet, or FILE is not a history; 2 bad usage.
"""

HistoryFile = Annotated[Path | None, history_option(
    "Read the history in FILE.  [default: $REXEC_HISTORY, else ~/.rexec/history.sqlite]")]
Json = Annotated[bool, typer.Option("--json", help="JSON Lines: one object per run.")]

app = typer.Typer(add_completion=False, rich_markup_mode=None, help=HELP)


@app.callback(invoke_without_command=True)
def history_command(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(
        "--limit", "-n", metavar="N", min=1, help="The N latest runs.")] = 20,
    json_output: Json = False,
    history_file: HistoryFile = None,
) -> None:
    """List the recent runs (``rexec history``), or hand --json and --history to ``show``."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"json": json_output, "history": history_file}  # rexec history --json show 1
        return
    with _opened(history_file) as history:
        runs = _reading(lambda: history.runs(limit))
    if not runs:
        fail(f"no runs in the history {history.path} yet", EXIT_NOTHING)
    if json_output:
        for run in runs:
            print(json.dumps(_run_json(run)))
        return
    from rexec.cli.output import aligned, local_time

    rows = [("ID", "STARTED", "KIND", "NAME", "STATUS", "EXIT", "HOSTS", "SECONDS")]
    rows += [(str(run.id), local_time(run.started), run.kind, run.name, run.status,
              _text(run.exit_status), str(run.hosts), _seconds(run.duration)) for run in runs]
    sys.stdout.write(aligned(rows, right={0, 5, 6, 7}))


@app.command("show", cls=Command)
def show(  # noqa: PLR0917 - typer maps parameters to arguments and options
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(
        metavar="RUN_ID", show_default=False, help="The run's id, as rexec history lists it.")],
    host: Annotated[str | None, typer.Option(
        "--host", metavar="HOST", help="Only this host's results.")] = None,
    step: Annotated[str | None, typer.Option(
        "--step", metavar="STEP", help="Only this step's results: its name (a batch's"
                                       " command) or its number.")] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="One JSON object: the run, and its results with their output.")
    ] = False,
    history_file: HistoryFile = None,
) -> None:
    """Show one run: how it went, each host's result for each step, and the end of the output
    of each step that failed.

    Exit status: 0 shown; 1 nothing recorded yet, or FILE is not a history; 2 no run RUN_ID,
    or bad usage.
    """
    given = ctx.obj or {}
    json_output = json_output or bool(given.get("json"))
    with _opened(history_file or given.get("history")) as history:
        run = _reading(lambda: history.run(run_id))
        results = [r for r in _reading(lambda: history.results(run_id, host))
                   if step is None or step in (r.step, str(r.step_index))]
    if json_output:
        from rexec.cli.output import step_json

        print(json.dumps({**_run_json(run), "results": [step_json(r) for r in results]}))
        return
    if not results:
        sys.stdout.write(_header(run) + ("\nno result matches --host and --step\n"
                                         if host or step else "\nno results recorded\n"))
        return
    sys.stdout.write(_header(run) + _table(results) + _failures(results))


def _opened(path: Path | None) -> History:
    """The history at ``path`` (else the default), if anything was recorded there."""
    from rexec.deploy.history import History, default_path
    from rexec.errors import HistoryError

    where = default_path() if path is None else path
    if not where.exists():
        fail(f"no history at {where} yet (rexec batch and rexec deploy record their runs"
             " there)", EXIT_NOTHING)
    try:
        return History.open(where)
    except HistoryError as exc:
        fail(exc, EXIT_NOTHING)


def _reading(read: Any) -> Any:
    """``read()``; an unknown run exits 2, any other HistoryError 1."""
    from rexec.errors import HistoryError, RunNotFound

    try:
        return read()
    except RunNotFound as exc:
        fail(exc, EXIT_USAGE)
    except HistoryError as exc:
        fail(exc, EXIT_NOTHING)


def _run_json(run: RunRecord) -> dict[str, Any]:
    from rexec.cli.output import run_json

    return run_json(run)


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _seconds(duration: float | None) -> str:
    return "-" if duration is None else f"{duration:.2f}"


def _header(run: RunRecord) -> str:
    """What ``show`` says of the run before its results."""
    from rexec.cli.output import local_time

    ended = "" if run.duration is None else f", {run.duration:.2f} s"
    return (f"run {run.id}: {run.kind} {run.name} on {run.targets}\n"
            f"status {run.status}, exit {_text(run.exit_status)}; started"
            f" {local_time(run.started)}{ended}; {run.hosts} host{'' if run.hosts == 1 else 's'}\n"
            f"by {run.user}@{run.hostname}, pid {run.pid}"
            + (f"; plan sha256 {run.plan_sha256}" if run.plan_sha256 else "")
            + f"\noptions {json.dumps(run.options, sort_keys=True)}\n")


def _table(results: list[ResultRecord]) -> str:
    """Each result: host, step number and text, status, changed, exit code, seconds, tries."""
    from rexec.cli.output import aligned

    rows = [("HOST", "#", "STEP", "STATUS", "CHANGED", "EXIT", "SECONDS", "ATTEMPTS")]
    rows += [(r.host, str(r.step_index), _shortened(r.step), r.status,
              "yes" if r.changed else "no", _text(r.exit_code), f"{r.duration:.3f}",
              str(r.attempts)) for r in results]
    return "\n" + aligned(rows, right={1, 5, 6, 7})


def _shortened(step: str) -> str:
    line = step.replace("\n", " ")
    return line if len(line) <= STEP_WIDTH else line[:STEP_WIDTH - 3] + "..."


def _failures(results: list[ResultRecord]) -> str:
    """The error and the output tails of each result that did not succeed; a host's error
    said once when its steps after it share it (an unreachable host's)."""
    out, said = [], None
    for r in results:
        if r.status in SUCCEEDED or not (r.error or r.stdout_tail or r.stderr_tail):
            continue
        if not (r.stdout_tail or r.stderr_tail) and (r.host, r.error) == said:
            continue
        said = (r.host, r.error)
        out.append(f"\n--- {r.host} #{r.step_index} {r.status}, exit {_text(r.exit_code)}:"
                   f" {r.step}\n")
        if r.error:
            out.append(f"error: {r.error}\n")
        for name, tail in (("stdout", r.stdout_tail), ("stderr", r.stderr_tail)):
            if tail:
                text = tail.decode("utf-8", "replace")
                out.append(f"{name}:\n{text}" + ("" if text.endswith("\n") else "\n"))
    return "".join(out)


def register(root: typer.Typer) -> None:
    """Add ``rexec history`` (and ``rexec history show``) to the root app."""
    root.add_typer(app, name="history")
