"""``rexec shell TARGET [-- COMMAND...]``: an interactive remote shell, as ``ssh host`` is.

On a terminal, the login shell (or COMMAND, as ``rexec run -t``) runs on a remote PTY: the local
terminal is in raw mode meanwhile (restored on every way out), the window size follows it, and
``~.`` at the start of a line ends the session. Without a terminal on stdin, the script it
reads runs in one shell, stdout and stderr kept apart. ``run_on_pty`` is also ``rexec run -t``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rexec.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
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
from rexec.cli.run import InventoryFiles, Notes, Outputs, classify_target, parse_env

SHELL_HELP = f"""Open an interactive shell on TARGET, as ssh does (or run COMMAND on a PTY).

TARGET is HOST:PORT, [IPV6]:PORT, HOST (port 7878) or an inventory host (a pattern must name
exactly one). On a terminal the remote login shell gets a pseudo-terminal of the local
terminal's type and size; every keystroke (Ctrl-C, Ctrl-Z, Ctrl-D included) goes to it. At the
start of a line, ~. ends the session, ~? lists the escapes, ~~ types one ~ (-e picks another
escape character, -e none turns them off). With stdin not a terminal, the script it holds runs
in one shell, without a PTY. rexec exits with the shell's status.

{exit_help()}
"""

Escape = Annotated[
    str, typer.Option("--escape", "-e", metavar="CHAR",
                      help="The escape character (~), ^X for a control character, or none.")
]


def shell_command(  # noqa: PLR0917 - typer maps parameters to arguments and options
    address: Annotated[str, typer.Argument(
        metavar="TARGET", show_default=False,
        help="HOST:PORT, [IPV6]:PORT, HOST (port 7878) or one inventory host.")],
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="[COMMAND]", show_default=False,
                       help="A command to run on a PTY instead of the login shell."),
    ] = None,
    escape: Escape = "~",
    env: Annotated[
        list[str] | None, typer.Option("--env", metavar="KEY=VALUE",
                                       help="Set a variable for the shell (repeatable).")
    ] = None,
    cwd: Annotated[str | None, typer.Option(
        metavar="DIR", help="Remote working directory (default: the user's home).")] = None,
    timeout: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Stop the session after SECONDS.")
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, show_default=False,
                          help="Say where the token came from, the address, TLS and identity.")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No notices from rexec itself; errors only.")
    ] = False,
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
    notes = Notes(verbose, quiet)
    escape_char = escape_option(escape)
    connection = connection_keywords(
        token_file=token_file, config=config, connect_timeout=connect_timeout,
        keepalive=keepalive, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_pin=tls_pin,
        tls_tofu=tls_tofu, identity=identity)
    line = " ".join(command) if command else None
    target = one_target(address, inventory, config, line or "shell", connection)
    if line is None and not os.isatty(0):
        code = run_script(address, target=target, connection=connection, env=parse_env(env or []),
                          cwd=cwd, timeout=timeout, notes=notes)
    else:
        code = run_on_pty(address, line, target=target, connection=connection,
                          env=parse_env(env or []), cwd=cwd, timeout=timeout, escape=escape_char,
                          notes=notes)
    raise typer.Exit(code)


def escape_option(value: str) -> bytes | None:
    """``--escape``'s value, or exit 2 naming what is wrong with it."""
    from rexec.client.escape import parse_escape

    try:
        return parse_escape(value)
    except ValueError as exc:
        fail(f"--escape: {exc}", EXIT_USAGE)


def one_target(address: str, inventory: list[Path] | None, config: Path | None,
               line: str, connection: dict[str, Any]) -> Any:
    """The one host TARGET names (None for an address): exit 2 when a pattern names more."""
    kind, found = classify_target(address, inventory, config, line, False, connection=connection)
    if kind != "fleet":
        return found
    if len(found) != 1:
        fail(f"{address!r} matches {len(found)} hosts: an interactive session reaches one host"
             " (use rexec run for many)", EXIT_USAGE)
    return found[0]


def _options(address: str, target: Any, connection: dict[str, Any]) -> Any:
    if target is not None:
        from rexec.cli.fleet import with_flags

        return with_flags([target], connection)[0].options
    from rexec.client.options import ConnectOptions

    return ConnectOptions.resolve(address, **connection)


def run_on_pty(address: str, command: str | None, *, target: Any, connection: dict[str, Any],
               env: dict[str, str], cwd: str | None, timeout: float | None,
               escape: bytes | None, notes: Notes) -> int:
    """COMMAND (None: the login shell) on a remote PTY; the exit status for the CLI.

    The local terminal, when stdin is one, is in raw mode for the session and restored on every
    way out before anything is printed: the remote status, ~., SIGTERM or SIGHUP (255), a lost
    connection (255), an exception.
    """
    from rexec.client.blocking import BlockingClient, SessionEnded
    from rexec.client.terminal import RawMode, Terminated, terminal_type, window_size
    from rexec.errors import RexecError
    from rexec.wire.frames import Terminal

    terminal_fd = 0 if os.isatty(0) else 1 if os.isatty(1) else None
    rows, cols, width, height = window_size(terminal_fd) if terminal_fd is not None else (
        24, 80, 0, 0)
    pty = Terminal(term=terminal_type(), rows=rows, cols=cols, width=width, height=height)
    forwarded = {name: value for name, value in os.environ.items()
                 if name == "LANG" or name.startswith("LC_")}
    try:
        options = _options(address, target, connection)
        notes.detail(f"token from {options.token_source}")
        notes.detail(f"connecting to {options.host} port {options.port}")
        with BlockingClient.from_options(options) as client:
            def session() -> Any:
                return client.interact(command, pty=pty, stdin_fd=0, stdout_fd=1,
                                       escape=escape, env={**forwarded, **env}, cwd=cwd,
                                       timeout=timeout)

            if os.isatty(0):
                def resized() -> None:
                    client.request_resize(*window_size(0))

                with RawMode(0, on_resize=resized):
                    result = session()
            else:  # no terminal to put in raw mode: SIGTERM still ends the session cleanly
                previous = signal.signal(signal.SIGTERM, _terminated)
                try:
                    result = session()
                finally:
                    signal.signal(signal.SIGTERM, previous)
    except SessionEnded:
        print(f"rexec: connection to {address} closed (~.)", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    except Terminated as exc:
        print(f"rexec: {exc}: the session was ended", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # only without a local terminal (raw mode makes Ctrl-C a byte)
        return 130
    except BrokenPipeError:  # local stdout closed (rexec run -t host -- cmd | head)
        return EXIT_BROKEN_PIPE
    except RexecError as exc:
        fail(str(exc), status_for(exc))
    return int(result.exit_status)


def _terminated(signum: int, frame: object) -> None:
    from rexec.client.terminal import Terminated

    raise Terminated(signum)


def run_script(address: str, *, target: Any, connection: dict[str, Any], env: dict[str, str],
               cwd: str | None, timeout: float | None, notes: Notes) -> int:
    """The script on stdin, run by one login shell without a PTY; its exit status."""
    from rexec.client.blocking import BlockingClient
    from rexec.errors import RexecError

    try:
        options = _options(address, target, connection)
        notes.detail(f"token from {options.token_source}")
        with BlockingClient.from_options(options) as client:
            outputs = Outputs(client.request_cancel)
            result = client.shell_script(stdin=0, env=env, cwd=cwd, timeout=timeout,
                                         capture=False, on_stdout=outputs.stdout,
                                         on_stderr=outputs.stderr)
    except KeyboardInterrupt:
        return 130
    except RexecError as exc:
        fail(str(exc), status_for(exc))
    return int(result.exit_status)


class ShellCommand(RemoteCommand):
    """``rexec shell``: the command after ``--`` is optional."""

    usage = "[OPTIONS] TARGET [-- COMMAND...]"


def register(root: typer.Typer) -> None:
    """Add ``rexec shell`` to the root app."""
    root.command("shell", cls=ShellCommand, help=SHELL_HELP)(shell_command)
