"""What every command shares: the exit-status table, ``fail()``, and the options declared once.

The options' flags are spelled here once for ``rexec`` and ``rexec-server``; where the two tools
say different things about the same flag, the help text is the caller's (``*_option(help)``).
The client's connection options are whole ``Annotated`` types, ready for any client command.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer._click.core import Context  # typer vendors click (0.29): its classes are these
from typer._click.exceptions import NoSuchOption
from typer.core import TyperArgument, TyperCommand, TyperOption

# The exit statuses of README's table. A remote command's own status passes through unchanged.
EXIT_OK = 0
EXIT_USAGE = 2  # bad command-line usage (click's own), or a local file refused before any work
EXIT_TIMED_OUT = 124  # the command ran over --timeout (Result.exit_status says so)
EXIT_OVER_LIMIT = 125  # the server stopped the command at one of its limits
EXIT_INTERRUPTED = 130  # Ctrl-C: the remote command was stopped too
EXIT_BROKEN_PIPE = 128 + 13  # local stdout closed: the remote command was cancelled
EXIT_FAILURE = 255  # rexec itself failed: connection, authentication, TLS, protocol, refusal

EXIT_TABLE: tuple[tuple[str, str], ...] = (
    ("N", "the remote command exited with N"),
    ("128+N", "the remote command died of signal N"),
    (str(EXIT_USAGE), "bad usage or local input (an option, address, config or token file, or a"
                      " command the client will not send)"),
    (str(EXIT_TIMED_OUT), "the command timed out (--timeout, or the identity's max_timeout)"),
    (str(EXIT_OVER_LIMIT), "the server stopped the command at one of its limits (max_output)"),
    (str(EXIT_INTERRUPTED), "interrupted (Ctrl-C): the remote command was stopped too"),
    (str(EXIT_BROKEN_PIPE), "local stdout closed: the remote command was cancelled"),
    (str(EXIT_FAILURE), "rexec failed: connection, authentication, TLS, protocol, or the command"
                        " was refused or could not start"),
)
"""The exit statuses, as --help and the README list them (a test keeps the two the same)."""


def exit_help() -> str:
    """The exit-status table as a help paragraph (click keeps a \\b block as written)."""
    import textwrap

    rows = "\n".join(textwrap.fill(meaning, 76, initial_indent=f"  {status:<6} ",
                                    subsequent_indent=" " * 9)
                     for status, meaning in EXIT_TABLE)
    return f"Exit status:\n\n\b\n{rows}"


def fail(error: object, status: int = EXIT_FAILURE, *, prog: str = "rexec") -> NoReturn:
    """Say ``PROG: ERROR`` on stderr in one line and exit with ``status``."""
    print(f"{prog}: {error}", file=sys.stderr, flush=True)
    raise typer.Exit(status)


def status_for(error: BaseException) -> int:
    """The exit status for one of rexec's errors: local input is usage (2), the rest 255."""
    from rexec.errors import ConfigError

    return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILURE


class Command(TyperCommand):
    """A command whose help reads as a user types it: no Python type tags on arguments,
    and, with ``usage``, the usage line given (``[OPTIONS] ADDRESS -- COMMAND...``)."""

    usage: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):  # "ADDRESS <str>" -> "ADDRESS"
                param.display_type_rich = _no_type  # type: ignore[method-assign]

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        if self.usage is not None:
            return [self.usage]
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper() if param.name else "ARG"
                name = name if param.required else f"[{name}]"
                pieces.append(f"{name}..." if param.nargs != 1 else name)
        return pieces


def _no_type(ctx: Context) -> str | None:
    return None


class RemoteCommand(Command):
    """A command that takes ``ADDRESS -- COMMAND...``: an option it does not know, found after
    the address, is most likely the remote command's own: the error says to put ``--`` first."""

    usage = "[OPTIONS] TARGET -- COMMAND..."

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        original = list(args)
        try:
            return super().parse_args(ctx, args)
        except NoSuchOption as exc:
            hint = _dash_dash_hint(ctx, original, exc.option_name)
            if hint:
                raise NoSuchOption(exc.option_name, f"{exc.message}\n{hint}",
                                         ctx=ctx) from None
            raise


def _dash_dash_hint(ctx: Context, args: list[str], option: str) -> str | None:
    """``put -- before the command: rexec run h -- ls -l /`` when ``option`` follows words
    that are the address and the start of a command."""
    if "--" in args:
        return None
    takes_value = {name for param in ctx.command.params if isinstance(param, TyperOption)
                   and not param.is_flag and not param.count for name in param.opts}
    words, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == option or arg.startswith(option + "=") or (
                len(option) == 2 and arg.startswith(option) and not arg.startswith("--")):
            break  # -l, --long=x, or -l in a cluster of short options (-la)
        elif arg.startswith("-"):
            skip = arg in takes_value
        else:
            words.append(i)
    else:
        return None
    if len(words) < 2:  # the option came before the address and a command word
        return None
    head, command = args[:words[1]], args[words[1]:]
    suggestion = shlex.join([*ctx.command_path.split(), *head, "--", *command])
    return f"If {option} is the remote command's, put -- before the command:\n  {suggestion}"


def token_file_option(help: str) -> Any:
    """``--token-file FILE``."""
    return typer.Option("--token-file", metavar="FILE", help=help)


def config_option(help: str) -> Any:
    """``--config FILE``."""
    return typer.Option("--config", metavar="FILE", help=help)


def history_option(help: str) -> Any:
    """``--history FILE``: the run history (rexec.deploy.history) to write or read."""
    return typer.Option("--history", metavar="FILE", show_default=False, help=help)


NoHistory = Annotated[bool, typer.Option(
    "--no-history", help="Do not record this run in the history.")]


def tls_cert_option(help: str) -> Any:
    """``--tls-cert FILE``: the client's certificate, or the server's."""
    return typer.Option("--tls-cert", metavar="FILE", help=help)


def tls_key_option(help: str) -> Any:
    """``--tls-key FILE``: the private key of ``--tls-cert``."""
    return typer.Option("--tls-key", metavar="FILE", help=help)


# The client's connection options (client/options.py ConnectOptions resolves them).
TokenFile = Annotated[Path | None, token_file_option("Read the token from FILE.")]
ClientConfig = Annotated[
    Path | None, config_option("Client config file (TOML, [client] table).")
]
ConnectTimeout = Annotated[
    float | None,
    typer.Option(metavar="SECONDS", help="Seconds to connect and authenticate.  [default: 10]"),
]
Keepalive = Annotated[
    float | None,
    typer.Option(metavar="SECONDS",
                 help="Seconds of silence before probing for a dead server, which is given up"
                      " after about twice that (as ssh's ServerAliveInterval); 0: off."
                      "  [default: 30]"),
]
TlsCa = Annotated[
    Path | None,
    typer.Option("--tls-ca", metavar="FILE", help="Use TLS; trust servers signed by this CA."),
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
    str | None,
    typer.Option("--identity", "-i", metavar="NAME", help="Log in as this named identity."),
]


def connection_keywords(*, token_file: Path | None, config: Path | None,
                        connect_timeout: float | None, keepalive: float | None,
                        tls_ca: Path | None,
                        tls_cert: Path | None, tls_key: Path | None, tls_pin: str | None,
                        tls_tofu: bool, identity: str | None) -> dict[str, Any]:
    """The connection flags as ConnectOptions.resolve's keywords (None: not given)."""
    return {"token_file": token_file, "config": config, "connect_timeout": connect_timeout,
            "keepalive": keepalive, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key,
            "tls_pin": tls_pin, "tls_tofu": tls_tofu or None, "identity": identity}
