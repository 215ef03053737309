"""What every command shares: the exit-status table, ``fail()``, and the options declared once.

The options' flags are spelled here once for ``rexec`` and ``rexec-server``; where the two tools
say different things about the same flag, the help text is the caller's (``*_option(help)``).
The client's connection options are whole ``Annotated`` types, ready for any client command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

# The exit statuses of README's table. A remote command's own status passes through unchanged.
EXIT_OK = 0
EXIT_USAGE = 2  # bad command-line usage (click's own), or a local file refused before any work
EXIT_TIMED_OUT = 124  # the command ran over --timeout (Result.exit_status says so)
EXIT_OVER_LIMIT = 125  # the server stopped the command at one of its limits
EXIT_INTERRUPTED = 130  # Ctrl-C: the remote command was stopped too
EXIT_BROKEN_PIPE = 128 + 13  # local stdout closed: the remote command was cancelled
EXIT_FAILURE = 255  # rexec itself failed: connection, authentication, TLS, protocol, refusal


def fail(error: object, status: int = EXIT_FAILURE, *, prog: str = "rexec") -> NoReturn:
    """Say ``PROG: ERROR`` on stderr in one line and exit with ``status``."""
    print(f"{prog}: {error}", file=sys.stderr, flush=True)
    raise typer.Exit(status)


def token_file_option(help: str) -> Any:
    """``--token-file FILE``."""
    return typer.Option("--token-file", help=help)


def config_option(help: str) -> Any:
    """``--config FILE``."""
    return typer.Option("--config", help=help)


def tls_cert_option(help: str) -> Any:
    """``--tls-cert FILE``: the client's certificate, or the server's."""
    return typer.Option("--tls-cert", help=help)


def tls_key_option(help: str) -> Any:
    """``--tls-key FILE``: the private key of ``--tls-cert``."""
    return typer.Option("--tls-key", help=help)


# The client's connection options (client/options.py ConnectOptions resolves them).
TokenFile = Annotated[Path | None, token_file_option("Read the token from FILE.")]
ClientConfig = Annotated[
    Path | None, config_option("Client config file (TOML, [client] table).")
]
ConnectTimeout = Annotated[
    float | None, typer.Option(help="Seconds to connect and authenticate.  [default: 10]")
]
TlsCa = Annotated[
    Path | None, typer.Option("--tls-ca", help="Use TLS; trust servers signed by this CA.")
]
TlsPin = Annotated[
    str | None,
    typer.Option("--tls-pin", metavar="SHA256:...",
                 help="Use TLS; trust only the server certificate with this fingerprint."),
]
TlsTofu = Annotated[
    bool,
    typer.Option("--tls-tofu",
                 help="Use TLS; trust the server's certificate on first use, as ssh does"
                      " (~/.rexec/known_hosts)."),
]
TlsCert = Annotated[Path | None, tls_cert_option("Client certificate (PEM) for mutual TLS.")]
TlsKey = Annotated[Path | None, tls_key_option("The client certificate's private key.")]
Identity = Annotated[
    str | None, typer.Option("--identity", "-i", help="Log in as this named identity.")
]
