"""``rexec-server``: serve commands to authenticated clients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rexec.cli.common import (
    EXIT_USAGE,
    Command,
    config_option,
    fail,
    tls_cert_option,
    tls_key_option,
    token_file_option,
)
from rexec.errors import ConfigError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        from rexec._version import __version__

        print(f"rexec-server {__version__}")
        raise typer.Exit()


@app.command(cls=Command)
def serve(  # noqa: PLR0917 - typer maps parameters to options
    host: Annotated[
        list[str] | None,
        typer.Option(metavar="ADDRESS",
                     help="Address to listen on; repeat it to listen on several (with --port"
                          " 0, each may get its own port).  [default: 127.0.0.1]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(metavar="PORT",
                                 help="TCP port; 0 picks a free one.  [default: 7878]")
    ] = None,
    token_file: Annotated[
        Path | None, token_file_option("Read the shared token from FILE.")
    ] = None,
    config: Annotated[
        Path | None, config_option("TOML config file (see config/server.toml).")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(metavar="LEVEL",
                                 help="debug, info, warning or error.  [default: info]")
    ] = None,
    tls_cert: Annotated[
        Path | None, tls_cert_option("Serve TLS with this certificate (PEM).")
    ] = None,
    tls_key: Annotated[
        Path | None, tls_key_option("The certificate's private key (PEM).")
    ] = None,
    tls: Annotated[
        str | None,
        typer.Option("--tls", metavar="auto",
                     help="auto: serve TLS with a self-signed certificate made once into"
                          " ~/.rexec (server.crt, server.key); its fingerprint is printed."),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option("--tls-client-ca", metavar="FILE",
                     help="Require client certificates signed by this CA."),
    ] = None,
    audit_log: Annotated[
        Path | None, typer.Option("--audit-log", metavar="FILE",
                                  help="Append one JSON record per decision.")
    ] = None,
    dangerously_allow_plaintext: Annotated[
        bool,
        typer.Option("--dangerously-allow-plaintext",
                     help="Listen off loopback WITHOUT TLS. Only on a network you fully trust."),
    ] = False,
    discovery: Annotated[
        bool | None,
        typer.Option("--discovery/--no-discovery",
                     help="Answer UDP probes (rexec ping, rexec discover) on the same port"
                          " number, on every address; --no-discovery binds no UDP socket."
                          "  [default: on]"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="Show the version.")
    ] = False,
) -> None:
    """Run the rexec server until SIGTERM or Ctrl-C; SIGHUP reloads the config file.

    The token comes from --token-file, then REXEC_TOKEN, then the config file; with none of
    them the server generates one into ~/.rexec/token (or reuses the one it generated before).
    """
    from rexec.server.app import ConfigSource, run_server, tls_setup

    source = ConfigSource.capture(
        config, host=host or None, port=port, token_file=token_file, log_level=log_level,
        tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, tls=tls,
        audit_log=audit_log, dangerously_allow_plaintext=dangerously_allow_plaintext or None,
        discovery=discovery,
    )
    try:
        settings, token = source.load()
        context = tls_setup(settings)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE, prog="rexec-server")
    raise typer.Exit(run_server(settings, token, context, source))


def main() -> None:
    """Console-script entry point."""
    app()
