"""``rexec``: the client command line. Each command group lives in its own module.

Start-up is most of a one-shot run's time (docs/benchmarks.md, table 2), so this module turns
the cyclic garbage collector off before the imports (every object they make lives to the end of
the process: collecting finds nothing), ``execute`` freezes those objects and turns it back on
before a command runs, and ``main`` ends the process with ``os._exit`` once its output is
flushed, skipping the interpreter's teardown of ~200 modules it would never use again.
"""

from __future__ import annotations

import gc

gc.disable()

import os  # noqa: E402 - after gc.disable(), on purpose
import sys  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

from rexec._version import __version__  # noqa: E402
from rexec.cli import token  # noqa: E402
from rexec.cli.run import run_command  # noqa: E402

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


def _exit_status(code: object) -> int:
    """What the interpreter would exit with for ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def main() -> None:
    """Console-script entry point: run the app, flush, and exit without interpreter teardown."""
    try:
        app()
    except SystemExit as exc:
        status = _exit_status(exc.code)
    else:  # pragma: no cover - typer's standalone mode always raises SystemExit
        status = 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: as the interpreter does, exit 120
            status = status or 120
    os._exit(status)
