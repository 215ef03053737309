"""``rexec run ADDRESS -- COMMAND...``: run one command, as ``ssh host command`` does."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer

from rexec.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ClientConfig,
    ConnectTimeout,
    Identity,
    Keepalive,
    RemoteCommand,
    TlsCa,
    TlsCert,
    TlsKey,
    TlsPin,
    TlsTofu,
    TokenFile,
    connection_keywords,
    exit_help,
    fail,
    status_for,
)
from rexec.client.core import check_request
from rexec.errors import ConfigError, InvalidRequest

Forks = Annotated[int, typer.Option("--forks", "-f", metavar="N",
                                    help="Fleet mode: at most N hosts at once.")]
Gather = Annotated[bool, typer.Option(
    "--gather", "-b", help="Fleet mode: print each distinct output once at the end, under the"
                           " hosts that gave it (as clush -b).")]
OutDir = Annotated[Path | None, typer.Option(
    "--out-dir", metavar="DIR", help="Fleet mode: write each host's output to DIR/HOST.out and"
                                     " DIR/HOST.err.")]
Summary = Annotated[bool, typer.Option(
    "--summary", help="Fleet mode: end with a table of every host (status, exit, time, bytes).")]
InventoryFiles = Annotated[list[Path] | None, typer.Option(
    "--inventory", metavar="FILE",
    help="Inventory file (TOML); repeat it to extend one with the next.")]


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="'--env'")
        env[name] = value
    return env


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stdin_fd() -> int | None:
    """fd 0 when it is open and not a terminal (as ssh forwards only redirected input)."""
    try:
        os.fstat(0)
    except OSError:
        return None
    return None if os.isatty(0) else 0


STDOUT_PIPE_SIZE = 1 << 20
"""Bytes asked of the kernel for a stdout that is a pipe (Linux's default is 64 KiB): a
256 KiB body then goes in one write, not four with the reader woken between them."""


def _grow_pipe(fd: int) -> None:
    """Grow ``fd``'s pipe to STDOUT_PIPE_SIZE when it is one (best effort: an unprivileged
    user past fs.pipe-max-size or its pipe quota keeps the pipe as it is)."""
    import fcntl
    import stat

    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and \
                fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < STDOUT_PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, STDOUT_PIPE_SIZE)
    except OSError:
        pass


class Outputs:
    """Writes remote output to local stdout/stderr; a closed stdout cancels the command."""

    def __init__(self, cancel: Any) -> None:
        self.cancel = cancel
        self.broken_pipe = False
        _grow_pipe(1)

    def stdout(self, data: bytes | memoryview) -> None:
        if self.broken_pipe:
            return
        try:
            _write_all(1, data)
        except BrokenPipeError:
            self.broken_pipe = True
            self.cancel()

    def stderr(self, data: bytes | memoryview) -> None:
        with contextlib.suppress(BrokenPipeError):
            _write_all(2, data)


RUN_HELP = f"""Run COMMAND on TARGET and exit with its status, as ssh does; or on many hosts.

TARGET is HOST:PORT, [IPV6]:PORT, HOST (port 7878) or an inventory host: one host, its output
as it is. A node-set pattern (web[01-20], @group, @web,!web03, @web&@prod) runs on every host
it names, at most --forks at once, each line prefixed with its host. Put -- before the
command, so that its own options are not taken for rexec's: rexec run web1 -- ls -l /srv

In fleet mode the exit status is 0 when every host succeeded, 1 when a command failed on a
host, 3 when a host was unreachable, 2 for bad usage, 130 after Ctrl-C.

{exit_help()}
"""


class Notes:
    """rexec's own notices on stderr: -v adds the details, -q keeps only errors."""

    def __init__(self, verbose: int, quiet: bool) -> None:
        self.verbose = 0 if quiet else verbose
        self.quiet = quiet

    def say(self, message: str) -> None:
        """A notice (a timeout, a limit): shown unless -q."""
        if not self.quiet:
            print(f"rexec: {message}", file=sys.stderr, flush=True)

    def detail(self, message: str, level: int = 1) -> None:
        """A -v detail (never a secret)."""
        if self.verbose >= level:
            print(f"rexec: {message}", file=sys.stderr, flush=True)


def run_command(  # noqa: PLR0917 - typer maps parameters to arguments and options
    address: Annotated[str, typer.Argument(
        metavar="TARGET", show_default=False,
        help="HOST:PORT, [IPV6]:PORT, HOST (port 7878), an inventory host, or a node-set"
             " pattern of many hosts (web[01-20], @group, @web,!web03).")],
    command: Annotated[
        list[str],
        typer.Argument(metavar="COMMAND", show_default=False,
                       help="The command; its words are joined with spaces, as ssh does."),
    ],
    timeout: Annotated[
        float | None, typer.Option(metavar="SECONDS",
                                   help="Stop the command after SECONDS (exit status 124).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", metavar="KEY=VALUE",
                                       help="Set a variable for the command (repeatable).")
    ] = None,
    cwd: Annotated[str | None, typer.Option(metavar="DIR",
                                            help="Remote working directory.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with the whole result"
                           " (or the error).")
    ] = False,
    no_stdin: Annotated[
        bool, typer.Option("--no-stdin", "-n", help="Do not forward local stdin.")
    ] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, show_default=False,
                          help="Say where the token came from, the address, TLS, identity and"
                          " timings on stderr (never a secret).")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No notices from rexec itself; errors only.")
    ] = False,
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
    forks: Forks = 64,
    gather: Gather = False,
    out_dir: OutDir = None,
    summary: Summary = False,
    inventory: InventoryFiles = None,
    tty: Annotated[bool, typer.Option(
        "--tty", "-t", help="Run the command on a pseudo-terminal, as ssh -t (full-screen"
                            " programs, Ctrl-C to the remote side); one host.")] = False,
    no_tty: Annotated[bool, typer.Option(
        "--no-tty", "-T", help="Never allocate a pseudo-terminal (the default).")] = False,
    escape: Annotated[str, typer.Option(
        "--escape", metavar="CHAR", help="With -t: the escape character (~), ^X, or none.")
    ] = "~",
) -> None:
    line = " ".join(command)
    notes = Notes(verbose, quiet)
    try:
        check_request(line, env=parse_env(env or []), cwd=cwd, timeout=timeout)
    except InvalidRequest as exc:
        option = {"env": "--env", "cwd": "--cwd", "timeout": "--timeout"}.get(exc.field,
                                                                              "COMMAND")
        _failed(line, json_output, f"{option}: {exc}", exc, EXIT_USAGE)
    connection = connection_keywords(
        token_file=token_file, config=config, connect_timeout=connect_timeout,
        keepalive=keepalive, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_pin=tls_pin,
        tls_tofu=tls_tofu, identity=identity)
    if tty and no_tty:
        fail("-t and -T: choose one (a PTY, or none)", EXIT_USAGE)
    if tty:
        from rexec.cli.shell import escape_option, one_target, run_on_pty

        if json_output:
            fail("--json and -t: a terminal's output is not a document; choose one", EXIT_USAGE)
        raise typer.Exit(run_on_pty(
            address, line, target=one_target(address, inventory, config, line, connection),
            connection=connection, env=parse_env(env or []), cwd=cwd, timeout=timeout,
            escape=escape_option(escape), notes=notes))
    kind, found = classify_target(address, inventory, config, line, json_output,
                                  connection=connection)
    if kind == "fleet":
        from rexec.cli.fleet import run_fleet, stdin_source, with_flags

        try:
            targets = with_flags(found, connection)
        except ConfigError as exc:
            _failed(line, False, str(exc), exc, EXIT_USAGE)
        raise typer.Exit(run_fleet(
            targets, commands=None, command=line, forks=check_forks(forks), timeout=timeout,
            env=parse_env(env or []), cwd=cwd, stdin=stdin_source(no_stdin),
            renderer_options=render_options(json_output, gather, out_dir, summary, quiet)))
    code = execute(
        address, line, timeout=timeout, env=parse_env(env or []), cwd=cwd,
        json_output=json_output, stdin_fd=None if no_stdin else _stdin_fd(), notes=notes,
        connection=connection, target=found,
    )
    raise typer.Exit(code)


def classify_target(target: str, inventory: list[Path] | None, config: Path | None,
                    line: str, json_output: bool, *,
                    connection: dict[str, Any] | None = None) -> tuple[str, Any]:
    """("address", None), ("host", Target) or ("fleet", [Target...]); exit 2 on a bad pattern
    or inventory."""
    if ":" in target and not any(char in target for char in "[@,!&"):
        return "address", None  # HOST:PORT: the one-host path loads nothing of the fleet
    from rexec.cli.fleet import classify

    try:
        return classify(target, inventory, config, connection)
    except ConfigError as exc:
        _failed(line, json_output, str(exc), exc, EXIT_USAGE)


def check_forks(forks: int) -> int:
    if forks < 1:
        fail(f"--forks: must be at least 1, not {forks}", EXIT_USAGE)
    return forks


def render_options(json_output: bool, gather: bool, out_dir: Path | None, summary: bool,
                   quiet: bool) -> dict[str, Any]:
    """The fleet renderer's mode from the flags (they exclude each other: exit 2)."""
    chosen = [name for name, on in (("--json", json_output), ("--gather", gather),
                                    ("--out-dir", out_dir is not None)) if on]
    if len(chosen) > 1:
        fail(f"{' and '.join(chosen)} are different ways to show the output: choose one",
             EXIT_USAGE)
    mode = ("json" if json_output else "gather" if gather
            else "out_dir" if out_dir is not None else "lines")
    return {"mode": mode, "out_dir": out_dir, "summary": summary, "quiet": quiet}


def _failed(command: str, json_output: bool, message: str, error: BaseException,
            status: int) -> NoReturn:
    """Say what failed (one line on stderr, and the JSON document with --json); exit."""
    if json_output:
        from rexec.cli.output import error_json

        print(error_json(command, error, status), flush=True)
    fail(message, status)


def execute(
    address: str,
    command: str,
    *,
    timeout: float | None,
    env: dict[str, str],
    cwd: str | None,
    json_output: bool,
    stdin_fd: int | None,
    connection: dict[str, Any],
    notes: Notes | None = None,
    target: Any = None,
) -> int:
    """Run one command through the blocking client; return the CLI's exit status.

    rexec's own failures (connecting, authenticating, refused) exit through ``fail()``:
    local input (ConfigError) with 2, the rest with 255.
    """
    import gc
    import time

    from rexec.client.blocking import BlockingClient
    from rexec.client.options import ConnectOptions
    from rexec.errors import RexecError

    notes = notes or Notes(0, False)
    # Start-up ran with the collector off (rexec/cli/client.py): what it made stays, frozen out
    # of every future collection; a long-running command's own garbage is collected as usual.
    gc.freeze()
    gc.enable()
    interrupts = 0
    options = None
    try:
        if target is not None:  # an inventory host: its settings, the flags over them
            from rexec.cli.fleet import with_flags

            options = with_flags([target], connection)[0].options
        else:
            options = ConnectOptions.resolve(address, **connection)
        notes.detail(f"token from {options.token_source}")
        notes.detail(f"connecting to {options.host} port {options.port}"
                     f" ({_trust(options)})"
                     f"{', identity ' + options.identity if options.identity else ''}")
        with BlockingClient.from_options(options) as client:
            _connected(client, notes)
            outputs = Outputs(client.request_cancel)

            def on_sigint(signum: int, frame: FrameType | None) -> None:
                nonlocal interrupts
                interrupts += 1
                if interrupts > 1:
                    raise KeyboardInterrupt
                client.request_cancel()

            previous = signal.signal(signal.SIGINT, on_sigint)
            started = time.monotonic()
            try:
                result = client.run(
                    command, env=env, cwd=cwd, timeout=timeout, stdin=stdin_fd,
                    capture=json_output,
                    on_stdout=None if json_output else 1,  # large bodies spliced there
                    on_stderr=None if json_output else outputs.stderr,
                )
            finally:
                signal.signal(signal.SIGINT, previous)
            notes.detail(f"ran in {(time.monotonic() - started) * 1000:.1f} ms"
                         f" (the server's count: {result.duration * 1000:.1f} ms); exit status"
                         f" {result.exit_status}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except RexecError as exc:
        status = EXIT_INTERRUPTED if interrupts else status_for(exc)
        _failed(command, json_output, describe_error(exc, options), exc, status)
    status = (EXIT_INTERRUPTED if interrupts else EXIT_BROKEN_PIPE if client.broken_pipe
              else result.exit_status)
    if json_output:
        from rexec.cli.output import result_json

        _write_all(1, result_json(result, status).encode() + b"\n")
    _explain(result, timeout, options, notes)
    return status


def describe_error(exc: BaseException, options: Any) -> str:
    """rexec's one-line reason for one of its errors: a failed login says which identity and
    which token it tried."""
    from rexec.errors import AuthenticationError

    message = str(exc)
    if isinstance(exc, AuthenticationError) and exc.code == "auth_failed" and options:
        who = f"identity {options.identity!r}" if options.identity else "identity 'default'"
        message += f" (tried {who} with the token from {options.token_source})"
    return message


def _trust(options: Any) -> str:
    """How the server is to be trusted, for -v."""
    if options.tls_ca is not None:
        return f"TLS, servers signed by {options.tls_ca}"
    if options.tls_pin is not None:
        return f"TLS, the server certificate pinned to {options.tls_pin}"
    if options.tls_tofu:
        return f"TLS, trust on first use in {options.known_hosts}"
    return "plaintext"


def _connected(client: Any, notes: Notes) -> None:
    """-v: what the connection turned out to be."""
    if not notes.verbose:
        return
    timings = client.timings
    if client.tls_version:
        subject = client.server_subject
        notes.detail(f"TLS {client.tls_version}, server certificate {client.server_fingerprint}"
                     + (f" ({subject})" if subject else ""))
    steps = ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in timings.items())
    notes.detail(f"logged in as {client._core.identity if client._core else '?'}"
                 f" to {client.server_agent or 'the server'} ({steps})")


def _explain(result: Any, timeout: float | None, options: Any, notes: Notes) -> None:
    """Say why the server stopped the command, when it did (timeouts, limits)."""
    if result.exceeded is not None:
        notes.say(f"the server stopped the command: its output went over the limit"
                  f" ({result.exceeded})")
    if result.timed_out:
        if timeout is not None and result.duration >= timeout * 0.98:
            notes.say(f"the command timed out after {timeout:g} s (--timeout {timeout:g}) and"
                      " was stopped")
        else:
            who = options.identity if options is not None and options.identity else "default"
            notes.say(f"the server stopped the command after {result.duration:.3g} s: the time"
                      f" limit of identity {who!r} (its max_timeout) is shorter than"
                      + (f" --timeout {timeout:g}" if timeout is not None else " no --timeout"))


def register(root: typer.Typer) -> None:
    """Add ``rexec run`` to the root app."""
    root.command("run", cls=RemoteCommand, help=RUN_HELP)(run_command)
