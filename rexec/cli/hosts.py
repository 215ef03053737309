"""``rexec hosts PATTERN``: what a pattern expands to, one host a line or each host's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rexec.cli.common import EXIT_USAGE, ClientConfig, Command, fail

if TYPE_CHECKING:
    from rexec.fleet.target import Target

InventoryFiles = Annotated[
    list[Path] | None,
    typer.Option("--inventory", metavar="FILE",
                 help="Inventory file (TOML); repeat it to extend one with the next."
                      "  [default: $REXEC_INVENTORY, else ~/.rexec/inventory.toml]"),
]


def hosts(
    pattern: Annotated[str, typer.Argument(
        metavar="PATTERN", show_default=False,
        help="Hosts, a range such as web[01-20], @GROUP, joined by , (union), ! (difference)"
             " and & (intersection).")],
    inventory: InventoryFiles = None,
    config: ClientConfig = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Each host's resolved settings as a JSON list (no token values).")
    ] = False,
) -> None:
    """Print the hosts PATTERN expands to, one a line, in the order they appear."""
    from rexec.errors import ConfigError
    from rexec.fleet.inventory import Inventory

    try:
        found = Inventory.load(inventory, config=config)
        if not as_json:
            names = found.expand(pattern)
        else:
            targets = found.resolve(pattern)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    if as_json:
        print(json.dumps([describe(target) for target in targets], indent=2))
    else:
        print("\n".join(names))


def describe(target: Target) -> dict[str, Any]:
    """One host's resolved settings, as ``--json`` shows them: where the token comes from,
    never the token."""
    options = target.options

    def path(value: Path | None) -> str | None:
        return None if value is None else str(value)

    return {
        "name": target.name, "address": options.address, "host": options.host,
        "port": options.port, "identity": options.identity,
        "tls": options.uses_tls, "tls_ca": path(options.tls_ca),
        "tls_cert": path(options.tls_cert), "tls_key": path(options.tls_key),
        "tls_pin": options.tls_pin, "tls_tofu": options.tls_tofu,
        "connect_timeout": options.connect_timeout, "keepalive": options.keepalive,
        "token_source": options.token_source,
        "vars": dict(target.vars),
    }


def register(root: typer.Typer) -> None:
    """Add ``rexec hosts`` to the root app."""
    root.command("hosts", cls=Command)(hosts)
