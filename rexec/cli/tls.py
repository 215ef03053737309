"""``rexec tls``: a small CA with server and client certificates, fingerprints, known_hosts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from rexec.cli.common import EXIT_USAGE, Command, fail

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Make TLS certificates, show fingerprints, edit known_hosts.")

IDENTITY = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"  # as [server.identities.NAME] and --identity


def _toml(path: Path) -> str:
    return json.dumps(str(path))  # a JSON string is a TOML basic string


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)  # "ops@x.y"


def config_lines(folder: Path, identities: list[str]) -> str:
    """The [server] and [client] lines that use the files ``init`` wrote into ``folder``."""
    lines = ["# The server's config (rexec-server --config FILE):", "[server]",
             f"tls_cert = {_toml(folder / 'server.crt')}",
             f"tls_key = {_toml(folder / 'server.key')}"]
    if identities:
        lines.append(f"tls_client_ca = {_toml(folder / 'ca.crt')}")
    for name in identities:
        lines += ["", f"[server.identities.{_toml_key(name)}]", f'certificate = "CN={name}"']
    client = ["[client]", f"tls_ca = {_toml(folder / 'ca.crt')}"]
    if not identities:
        lines += ["", "# A client's config (~/.rexec/client.toml; it logs in with a token):",
                  *client]
    for name in identities:
        lines += ["", f"# The config of a client logging in as {name} (~/.rexec/client.toml):",
                  *client, f"tls_cert = {_toml(folder / f'{name}.crt')}",
                  f"tls_key = {_toml(folder / f'{name}.key')}", f'identity = "{name}"']
    return "\n".join(lines)


@app.command("init", cls=Command)
def init(
    folder: Annotated[Path, typer.Argument(
        metavar="DIR", help="Write the CA and certificates here.", show_default=False)],
    server_names: Annotated[
        list[str],
        typer.Option("--server-name", "-s", metavar="NAME",
                     help="A host name or IP address clients connect to (repeatable; the first"
                          " is the CN).", show_default=False),
    ],
    clients: Annotated[
        list[str] | None,
        typer.Option("--client", "-c", metavar="IDENTITY",
                     help="Make a client certificate with subject CN=IDENTITY (repeatable).",
                     show_default=False),
    ] = None,
) -> None:
    """Make a CA, a server certificate and client certificates in DIR; print their config.

    Writes ca.crt, ca.key, server.crt, server.key and IDENTITY.crt, IDENTITY.key for each
    --client (keys mode 0600); refuses to overwrite any file.
    """
    identities = list(dict.fromkeys(clients or []))
    for name in identities:
        if not re.fullmatch(IDENTITY, name) or name in ("ca", "server"):
            fail(f"--client {name!r}: an identity is 1-64 letters, digits and _.@- (starting"
                 " with a letter or digit), and not 'ca' or 'server'", EXIT_USAGE)
    targets = [folder / f"{stem}.{ext}" for stem in ("ca", "server", *identities)
               for ext in ("crt", "key")]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        fail(f"not overwriting {', '.join(existing)}: choose another folder, or remove them",
             EXIT_USAGE)
    from rexec.pki import issue_client, issue_server, new_ca, subject_alt_name

    try:
        subject_alt_name(server_names)
    except ValueError as exc:
        fail(f"--server-name: {exc}", EXIT_USAGE)
    ca = new_ca()
    try:
        ca.write(folder / "ca.crt", folder / "ca.key")
        issue_server(ca, server_names).write(folder / "server.crt", folder / "server.key")
        for name in identities:
            issue_client(ca, name).write(folder / f"{name}.crt", folder / f"{name}.key")
    except OSError as exc:
        fail(f"cannot write into {folder}: {exc}", EXIT_USAGE)
    print(config_lines(folder.resolve(), identities))


@app.command("fingerprint", cls=Command)
def fingerprint(
    certificate: Annotated[Path, typer.Argument(metavar="FILE", help="A certificate file (PEM).",
                                                show_default=False)],
) -> None:
    """Print a certificate's fingerprint, as --tls-pin and known_hosts take it."""
    from rexec.errors import ConfigError
    from rexec.tls import certificate_fingerprint

    try:
        print(certificate_fingerprint(certificate))
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)


@app.command("forget", cls=Command)
def forget(
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="The server, as HOST:PORT.",
                                           show_default=False)],
    known_hosts: Annotated[
        Path | None,
        typer.Option("--known-hosts", metavar="FILE",
                     help="The file.  [default: ~/.rexec/known_hosts]"),
    ] = None,
) -> None:
    """Remove a server's lines from known_hosts, so the next --tls-tofu trusts it anew."""
    from rexec.client.known_hosts import default_known_hosts, forget_known_host
    from rexec.errors import ConfigError

    path = known_hosts or default_known_hosts()
    try:
        removed = forget_known_host(path, address)
    except ValueError as exc:
        fail(exc, EXIT_USAGE)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    if not removed:
        fail(f"{address} is not in {path}", 1)
    for entry in removed:
        print(f"removed {path}:{entry.line}: {entry.text}")


def register(root: typer.Typer) -> None:
    """Add ``rexec tls init|fingerprint|forget`` to the root app."""
    root.add_typer(app, name="tls")
