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
    output: Annotated[Path, typer.Argument(
        metavar="FILE", show_default=False,
        help="Write the new token to FILE (mode 0600); - prints it on stdout.")],
) -> None:
    """Generate a token into FILE and print the token_hash line for the server's config."""
    from rexec.tokens import generate_token, write_token_file

    if str(output) == "-":
        token = generate_token()
        print(token, flush=True)
        print(_hash_line(token), file=sys.stderr)  # stdout holds the token alone
        return
    if output.exists():
        fail(f"{output} exists; not overwriting a token", EXIT_USAGE)
    folder = output.parent
    if not folder.is_dir():  # as ssh-keygen: a mistyped directory is not created silently
        why = ("is not a directory" if folder.exists()
               else f"does not exist (create it first: mkdir -m 700 {folder})")
        fail(f"cannot write {output}: {folder} {why}", EXIT_USAGE)
    token = generate_token()
    try:
        write_token_file(output, token)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE)
    print(_hash_line(token))


@app.command("hash", cls=Command)
def hash_token(
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", metavar="FILE", help="Read the token from FILE, not stdin."),
    ] = None,
) -> None:
    """Print the token_hash line for a token (read from stdin or --token-file).

    On a terminal, the token is asked for without echo.
    """
    from rexec.errors import ConfigError
    from rexec.tokens import read_token_file
    from rexec.wire.auth import check_token

    try:
        if token_file is not None:
            token = read_token_file(token_file)
        elif sys.stdin.isatty():
            import getpass

            token = check_token(getpass.getpass("Token: "), "the prompt")
        else:
            token = check_token(sys.stdin.read(), "standard input")
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    except (EOFError, KeyboardInterrupt):
        fail("no token given", EXIT_USAGE)
    print(_hash_line(token))


def register(root: typer.Typer) -> None:
    """Add ``rexec token new|hash`` to the root app."""
    root.add_typer(app, name="token")
