"""``rexec``: the root app, ``--version``, and the lazy registry of command modules.

typer builds the click objects of every registered command at start (about 29 ms for 24
commands of 12 options here), so ``build_app`` imports and registers only the command module
that ``argv`` names; ``--help``, completion and anything it does not recognise get them all.

Start-up is most of a one-shot run's time (docs/benchmarks.md, table 2), so this module turns
the cyclic garbage collector off before the imports (every object they make lives to the end of
the process: collecting finds nothing), ``rexec.cli.run.execute`` freezes those objects and
turns it back on before a command runs, and ``main`` ends the process with ``os._exit`` once its
output is flushed, skipping the interpreter's teardown of ~200 modules it would never use again.

``main`` also keeps pydantic's plugins unloaded (``without_pydantic_plugins``): looking for them
imports ``importlib.metadata`` and scans every installed distribution, 14-22 ms here, before the
first validator of the run is built.
"""

from __future__ import annotations

import gc

gc.disable()

import os  # noqa: E402 - after gc.disable(), on purpose
import sys  # noqa: E402
import types  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

from rexec._version import __version__  # noqa: E402

# Command name -> the module whose register(root) adds it, in the order --help lists them.
COMMANDS: Mapping[str, str] = {
    "run": "rexec.cli.run",
    "shell": "rexec.cli.shell",
    "put": "rexec.cli.transfer",
    "get": "rexec.cli.transfer",
    "batch": "rexec.cli.batch",
    "deploy": "rexec.cli.deploy",
    "history": "rexec.cli.history",
    "hosts": "rexec.cli.hosts",
    "ping": "rexec.cli.discovery",
    "discover": "rexec.cli.discovery",
    "token": "rexec.cli.token",
    "tls": "rexec.cli.tls",
}
HELP = "Run commands on rexec servers."


def _version(value: bool) -> None:
    if value:
        print(f"rexec {__version__}")
        raise typer.Exit()


def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Run commands on rexec servers."""


def wanted(argv: Sequence[str], commands: Mapping[str, str] = COMMANDS) -> list[str]:
    """The commands to register for ``argv``: the one it names, else all of them."""
    completing = any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ)
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    if first is not None and first in commands and not completing:
        return [first]
    return list(commands)


def build_app(argv: Sequence[str], commands: Mapping[str, str] = COMMANDS) -> typer.Typer:
    """The root app with the command modules that ``argv`` needs imported and registered."""
    # rich_markup_mode=None: help is plain text, so "[client]" or "[default: 10]" in a help
    # string is shown as written, not taken for rich markup.
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=HELP,
                      rich_markup_mode=None)
    app.callback()(root)
    # One module may hold several commands (put and get): it registers them all, once.
    for module in dict.fromkeys(commands[name] for name in wanted(argv, commands)):
        # __import__, not importlib.import_module: -X importtime profiles only the former
        __import__(module, fromlist=["register"]).register(app)
    return app


PLUGINS_ENV = "REXEC_PYDANTIC_PLUGINS"  # "1": load pydantic's plugins as any program would
_PLUGIN_LOADER = "pydantic.plugin._loader"


def without_pydantic_plugins() -> bool:
    """Have pydantic find no plugins in this process, unless $REXEC_PYDANTIC_PLUGINS is 1.

    pydantic looks its plugins up (``pydantic.plugin._loader.get_plugins``) when it builds the
    first validator: that imports ``importlib.metadata`` (with email, zipfile, csv, tempfile) and
    reads the entry points of every installed distribution, 14-22 ms of a 250 ms run here. A
    pydantic plugin observes validations (logfire's, for one); rexec's frames and parameters are
    not what one is for, and typer already builds its parameter adapters with plugins off. So
    the console script puts a loader that finds none in place of pydantic's, as
    ``PYDANTIC_DISABLE_PLUGINS=__all__`` would, without paying for the import. Returns whether
    it did (not when asked not to, or when pydantic's loader is imported already).
    """
    if os.environ.get(PLUGINS_ENV) == "1" or _PLUGIN_LOADER in sys.modules:
        return False
    loader = types.ModuleType(_PLUGIN_LOADER, "rexec's CLI: pydantic's plugins are not loaded")

    def get_plugins() -> tuple[()]:
        return ()

    loader.get_plugins = get_plugins  # type: ignore[attr-defined]
    sys.modules[_PLUGIN_LOADER] = loader
    return True


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
    without_pydantic_plugins()
    try:
        build_app(sys.argv[1:])()
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
