"""``rexec``: the client command line. Each command group lives in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from rexec import __version__
from rexec.cli import token
from rexec.cli.run import run_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run commands on rexec servers.",
)
app.command("run")(run_command)
app.add_typer(token.app, name="token")


def _version(value: bool) -> None:
    if value:
        print(f"rexec {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Run commands on rexec servers."""


def main() -> None:
    """Console-script entry point."""
    app()
