"""``rexec batch TARGET FILE``: a file of commands, run in order on one host or many."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rexec.cli.common import (
    EXIT_USAGE,
    ClientConfig,
    Command,
    ConnectTimeout,
    Identity,
    Keepalive,
    NoHistory,
    TlsCa,
    TlsCert,
    TlsKey,
    TlsPin,
    TlsTofu,
    TokenFile,
    connection_keywords,
    fail,
    history_option,
)
from rexec.cli.run import Forks, Gather, InventoryFiles, OutDir, Summary, render_options

BATCH_HELP = """Run the commands of FILE in order on TARGET, one host or many, over one
connection per host; a host stops at its first failing command unless -k.

FILE (or - for stdin) holds one shell command a line; blank lines and lines starting with #
are skipped, and a line ending in a backslash continues on the next. TARGET is as for
rexec run. Output is prefixed with its host in fleet mode (and with --prefix for one host);
the summary names, for each failed host, the line that failed and its exit status.

The run is recorded in the history (rexec history shows it): each host's result for each
command as it ends, with the last 64 KiB of its output; --no-history records nothing.

Exit status: 0 every host ran every command; 1 a command failed on a host; 3 a host was
unreachable; 2 bad usage; 130 after Ctrl-C.
"""

RUN_STATUSES = {0: "ok", 1: "failed", 3: "unreachable", 130: "cancelled", 141: "cancelled"}
"""The history's status of a batch that exited so (anything else: "failed")."""
NOT_RUN = {"unreachable": "unreachable", "cancelled": "cancelled"}
"""The status of a command a host never ran, by the host's status (else: "skipped")."""


def batch_command(  # noqa: PLR0917 - typer maps parameters to arguments and options
    target: Annotated[str, typer.Argument(
        metavar="TARGET", show_default=False,
        help="One host (HOST:PORT, HOST, an inventory host) or a node-set pattern.")],
    file: Annotated[str, typer.Argument(
        metavar="FILE", show_default=False, help="The commands, one a line; - for stdin.")],
    keep_going: Annotated[bool, typer.Option(
        "--keep-going", "-k", help="Run every command, even after one failed.")] = False,
    prefix: Annotated[bool, typer.Option(
        "--prefix", help="Prefix each line with its host for one host too.")] = False,
    timeout: Annotated[float | None, typer.Option(
        metavar="SECONDS", help="Stop each command after SECONDS.")] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="JSON Lines: one object per host, with its commands' results.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No notices from rexec itself; only failures in the summary.")
    ] = False,
    forks: Forks = 64,
    gather: Gather = False,
    out_dir: OutDir = None,
    summary: Summary = False,
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
    history_file: Annotated[Path | None, history_option(
        "Record the run in FILE.  [default: $REXEC_HISTORY, else ~/.rexec/history.sqlite]")
    ] = None,
    no_history: NoHistory = False,
) -> None:
    from rexec.cli.fleet import classify, run_fleet, with_flags
    from rexec.errors import ConfigError
    from rexec.fleet.batch import parse_batch
    from rexec.fleet.target import Target

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the batch file {file}: {getattr(exc, 'strerror', None) or exc}",
             EXIT_USAGE)
    connection = connection_keywords(
        token_file=token_file, config=config, connect_timeout=connect_timeout,
        keepalive=keepalive, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_pin=tls_pin,
        tls_tofu=tls_tofu, identity=identity)
    try:
        commands = parse_batch(text)
        if not commands:
            fail(f"the batch file {file} holds no command", EXIT_USAGE)
        kind, found = classify(target, inventory, config, connection)
        if kind == "fleet":
            targets = found
        elif kind == "host":
            targets = [found]
        else:
            from rexec.client.options import ConnectOptions

            targets = [Target(target, ConnectOptions.resolve(target, **connection))]
            connection = {}
        targets = with_flags(targets, connection)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    # one host: its lines raw, and only a failure summarised (a fleet's summary says more)
    options = render_options(json_output, gather, out_dir, summary, quiet or kind != "fleet")
    options["prefix"] = kind == "fleet" or prefix
    recorder = None if no_history else BatchHistory.open(
        history_file, commands, name=file, targets=target,
        options={"keep_going": keep_going, "forks": forks, "timeout": timeout,
                 "path": None if file == "-" else str(Path(file).resolve())})
    raise typer.Exit(run_fleet(targets, commands=commands, command=None, forks=forks,
                               timeout=timeout, env={}, cwd=None, stdin=None,
                               keep_going=keep_going, renderer_options=options,
                               recorder=recorder))


class BatchHistory:
    """One ``rexec batch`` run in the history, recorded as it happens: each host's result for
    each command as the command ends (the output's tails taken from what streamed, so without
    --json nothing more is kept than the tails), then, when the host ends, the commands it
    never ran. The history never stops the batch: its first error is one warning on stderr
    and the rest of the run goes unrecorded."""

    def __init__(self, history: Any, commands: list[Any], **run: Any) -> None:
        self.history: Any = history
        self.commands = commands
        self.run_id: int | None = None
        self._run = run
        self._tails: dict[tuple[str, str], bytearray] = {}
        self._reported: dict[str, int] = {}  # host -> commands recorded so far

    @classmethod
    def open(cls, path: Path | None, commands: list[Any], **run: Any) -> BatchHistory | None:
        """A recorder on the history at ``path`` (None: the default), or None after one
        warning when it cannot be opened. ``run``: start_run's name, targets and options."""
        from rexec.deploy.history import COMMIT_EVERY, History
        from rexec.errors import HistoryError

        try:
            history = History.open(path, commit_every=COMMIT_EVERY)
        except HistoryError as exc:
            _warn(f"{exc}; this run is not recorded (--no-history: do not try)")
            return None
        return cls(history, commands, **run)

    def start(self) -> None:
        """The run begins: its row in ``runs``."""
        self.run_id = self._safely(lambda h: h.start_run("batch", **self._run))

    def output(self, host: str, stream: str, data: bytes) -> None:
        """Some of a host's output: kept while its command runs, the last TAIL_BYTES only."""
        if self.run_id is None:
            return
        from rexec.deploy.history import TAIL_BYTES

        tail = self._tails.setdefault((host, stream), bytearray())
        tail += data
        if len(tail) > 2 * TAIL_BYTES:  # cut now and then, not on every chunk
            del tail[:-TAIL_BYTES]

    def command(self, host: str, index: int, status: str, outcome: Any) -> None:
        """One command ended on a host (Group.batch's on_command)."""
        result = outcome.result
        self._record(host, index, status, exit_code=_exit_code(result),
                     duration=result.duration if result is not None else 0.0,
                     stdout=self._take(host, "stdout"), stderr=self._take(host, "stderr"),
                     error=outcome.error)
        self._reported[host] = index + 1

    def done(self, outcome: Any) -> None:
        """A host ended: the commands it never ran (attempts 0), as skipped (after its
        failure), unreachable or cancelled."""
        status = NOT_RUN.get(outcome.status, "skipped")
        error = outcome.error if status == "unreachable" else None
        for index in range(self._reported.pop(outcome.host, 0), len(self.commands)):
            self._record(outcome.host, index, status, error=error, attempts=0)
        for stream in ("stdout", "stderr"):
            self._tails.pop((outcome.host, stream), None)

    def finish(self, exit_status: int | None, status: str | None = None) -> None:
        """The run ended with ``exit_status`` (its history status from that, or ``status``)."""
        if self.run_id is not None:
            run_id = self.run_id
            if status is None:
                status = "failed" if exit_status is None else RUN_STATUSES.get(exit_status,
                                                                              "failed")
            ended = status
            self._safely(lambda h: h.finish_run(run_id, ended, exit_status))
        self._safely(lambda h: h.close())
        self.history = None

    def _record(self, host: str, index: int, status: str, **result: Any) -> None:
        if self.run_id is not None:
            run_id, step = self.run_id, self.commands[index].command
            self._safely(lambda h: h.record(run_id, host=host, step_index=index, step=step,
                                            status=status, **result))

    def _take(self, host: str, stream: str) -> bytes:
        """What the host's command sent on ``stream`` (its tail), and start afresh."""
        tail = self._tails.pop((host, stream), None)
        return bytes(tail) if tail is not None else b""

    def _safely(self, call: Any) -> Any:
        """``call(history)``; after a HistoryError, one warning and no more recording."""
        from rexec.errors import HistoryError

        if self.history is None:
            return None
        try:
            return call(self.history)
        except HistoryError as exc:
            _warn(f"{exc}; the rest of this run is not recorded")
            history, self.history, self.run_id = self.history, None, None
            with contextlib.suppress(HistoryError):
                history.close()
            return None


def _exit_code(result: Any) -> int | None:
    """A command's shell-style status when it ended (124 timed out, 128+N a signal), else
    None (not started, cancelled, its connection lost)."""
    if result is None or (result.exit_code is None and result.signal is None
                          and not result.timed_out):
        return None
    status: int = result.exit_status
    return status


def _warn(message: str) -> None:
    print(f"rexec: warning: {message}", file=sys.stderr, flush=True)


def register(root: typer.Typer) -> None:
    """Add ``rexec batch`` to the root app."""
    root.command("batch", cls=Command, help=BATCH_HELP)(batch_command)
