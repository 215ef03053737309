"""``rexec token``: make tokens for named identities, and the hashes servers keep of them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rexec.cli.common import EXIT_USAGE, Command, fail

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Make tokens and the hashes a server's identities keep of them.")


def _hash_line(token: str) -> str:
    from rexec.wire.auth import TokenVerifier

    return f'token_hash = "{TokenVerifier.from_token(token).format()}"'


@app.command("new", cls=Command)
def new(
    output: Annotated[Path, typer.Argument(metavar="FILE", show_default=False,
                                           help="Write the new token to FILE (mode 0600).")],
) -> None:
    """Generate a token into FILE and print the token_hash line for the server's config."""
    from rexec.tokens import generate_token, write_token_file

    if output.exists():
        fail(f"{output} exists; not overwriting a token", EXIT_USAGE)
    token = generate_token()
    write_token_file(output, token)
    print(_hash_line(token))


@app.command("hash", cls=Command)
def hash_token(
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", metavar="FILE", help="Read the token from FILE, not stdin."),
    ] = None,
) -> None:
    """Print the token_hash line for a token (read from stdin or --token-file)."""
    from rexec.errors import ConfigError
    from rexec.tokens import read_token_file
    from rexec.wire.auth import check_token

    try:
        token = (read_token_file(token_file) if token_file is not None
                 else check_token(sys.stdin.read(), "standard input"))
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    print(_hash_line(token))


def register(root: typer.Typer) -> None:
    """Add ``rexec token new|hash`` to the root app."""
    root.add_typer(app, name="token")
