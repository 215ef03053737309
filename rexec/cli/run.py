"""``rexec run ADDRESS -- COMMAND...``: run one command, as ``ssh host command`` does."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Annotated, Any

import typer

from rexec.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ClientConfig,
    ConnectTimeout,
    Identity,
    TlsCa,
    TlsCert,
    TlsKey,
    TlsPin,
    TlsTofu,
    TokenFile,
    fail,
)


def _parse_env(pairs: list[str]) -> dict[str, str]:
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


class _Outputs:
    """Writes remote output to local stdout/stderr; a closed stdout cancels the command."""

    def __init__(self, cancel: Any) -> None:
        self.cancel = cancel
        self.broken_pipe = False

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


def run_command(  # noqa: PLR0917 - typer maps parameters to arguments and options
    address: Annotated[str, typer.Argument(help="The server, as HOST:PORT.", show_default=False)],
    command: Annotated[
        list[str],
        typer.Argument(help="The command; its words are joined with spaces, as ssh does.",
                       show_default=False),
    ],
    timeout: Annotated[
        float | None, typer.Option(help="Kill the command after SECONDS (exit status 124).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="Set KEY=VALUE (repeatable).")
    ] = None,
    cwd: Annotated[str | None, typer.Option(help="Remote working directory.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with the whole result.")
    ] = False,
    no_stdin: Annotated[
        bool, typer.Option("--no-stdin", "-n", help="Do not forward local stdin.")
    ] = False,
    token_file: TokenFile = None,
    config: ClientConfig = None,
    connect_timeout: ConnectTimeout = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_pin: TlsPin = None,
    tls_tofu: TlsTofu = False,
    identity: Identity = None,
) -> None:
    """Run COMMAND on the server at ADDRESS and exit with its status.

    Exit status: the remote exit code; 128+N if it died of signal N; 124 if it timed out;
    130 if interrupted; 2 if the known_hosts file is corrupt; 255 if the connection,
    authentication or protocol failed.
    """
    if not command:
        raise typer.BadParameter("no command given", param_hint="COMMAND")
    if timeout is not None and timeout <= 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint="'--timeout'")
    code = execute(
        address, " ".join(command), timeout=timeout, env=_parse_env(env or []), cwd=cwd,
        json_output=json_output, stdin_fd=None if no_stdin else _stdin_fd(),
        connection={"token_file": token_file, "config": config,
                    "connect_timeout": connect_timeout, "tls_ca": tls_ca, "tls_cert": tls_cert,
                    "tls_key": tls_key, "tls_pin": tls_pin, "tls_tofu": tls_tofu or None,
                    "identity": identity},
    )
    raise typer.Exit(code)


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
) -> int:
    """Run one command through the blocking client; return the CLI's exit status.

    rexec's own failures (connecting, authenticating, refused) exit through ``fail()``.
    """
    import gc

    from rexec.client.blocking import BlockingClient
    from rexec.client.options import ConnectOptions
    from rexec.errors import KnownHostsError, RexecError

    # Start-up ran with the collector off (rexec/cli/client.py): what it made stays, frozen out
    # of every future collection; a long-running command's own garbage is collected as usual.
    gc.freeze()
    gc.enable()
    interrupts = 0
    try:
        options = ConnectOptions.resolve(address, **connection)
        with BlockingClient.from_options(options) as client:
            outputs = _Outputs(client.request_cancel)

            def on_sigint(signum: int, frame: FrameType | None) -> None:
                nonlocal interrupts
                interrupts += 1
                if interrupts > 1:
                    raise KeyboardInterrupt
                client.request_cancel()

            previous = signal.signal(signal.SIGINT, on_sigint)
            try:
                result = client.run(
                    command, env=env, cwd=cwd, timeout=timeout, stdin=stdin_fd,
                    capture=json_output,
                    on_stdout=None if json_output else outputs.stdout,
                    on_stderr=None if json_output else outputs.stderr,
                )
            finally:
                signal.signal(signal.SIGINT, previous)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except KnownHostsError as exc:  # a local file refused before any work, as a usage error
        fail(exc, EXIT_USAGE)
    except RexecError as exc:
        fail(exc, EXIT_INTERRUPTED if interrupts else EXIT_FAILURE)
    if json_output:
        from rexec.cli.output import result_json

        _write_all(1, result_json(result).encode() + b"\n")
    if result.exceeded is not None:
        print(f"rexec: the server stopped the command: its output went over the limit"
              f" ({result.exceeded})", file=sys.stderr, flush=True)
    if interrupts:
        return EXIT_INTERRUPTED
    if outputs.broken_pipe:
        return EXIT_BROKEN_PIPE
    return result.exit_status


def register(root: typer.Typer) -> None:
    """Add ``rexec run`` to the root app."""
    root.command("run")(run_command)
