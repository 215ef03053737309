"""``rexec batch TARGET FILE``: a file of commands, run in order on one host or many."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
from rexec.cli.run import Forks, Gather, InventoryFiles, OutDir, Summary, _render_options

BATCH_HELP = """Run the commands of FILE in order on TARGET, one host or many, over one
connection per host; a host stops at its first failing command unless -k.

FILE (or - for stdin) holds one shell command a line; blank lines and lines starting with #
are skipped, and a line ending in a backslash continues on the next. TARGET is as for
rexec run. Output is prefixed with its host in fleet mode (and with --prefix for one host);
the summary names, for each failed host, the line that failed and its exit status.

Exit status: 0 every host ran every command; 1 a command failed on a host; 3 a host was
unreachable; 2 bad usage; 130 after Ctrl-C.
"""


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
    options = _render_options(json_output, gather, out_dir, summary, quiet or kind != "fleet")
    options["prefix"] = kind == "fleet" or prefix
    raise typer.Exit(run_fleet(targets, commands=commands, command=None, forks=forks,
                               timeout=timeout, env={}, cwd=None, stdin=None,
                               keep_going=keep_going, renderer_options=options))


def register(root: typer.Typer) -> None:
    """Add ``rexec batch`` to the root app."""
    root.command("batch", cls=Command, help=BATCH_HELP)(batch_command)
