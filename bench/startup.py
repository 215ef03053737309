"""Start-up probes for table 2 of bench/suite.py: what a fresh typer + pydantic CLI pays here.

    python bench/startup.py app ADDRESS -- COMMAND...       # a bare typer app, doing nothing
    python bench/startup.py app-fast ADDRESS -- COMMAND...  # the same, started as rexec starts
    python bench/startup.py stages ADDRESS -- COMMAND...    # `rexec run`, stamped stage by stage
    python bench/startup.py registry [ROUNDS]               # `rexec run` beside 24 more commands

``app`` is the floor of the prescribed stack: one typer command with an ``address: str`` and a
``command: list[str]`` argument (typer 0.29 builds a pydantic TypeAdapter for each) and an empty
body, exiting as any typer app does. ``app-fast`` is the same app with what rexec.cli.main
does to start faster: the cyclic collector off while importing, ``os._exit`` after flushing.

``stages`` runs ``rexec run ADDRESS -- COMMAND...`` as the ``rexec`` console script does (the
collector off while importing, ``os._exit`` after flushing), but imports what it needs one stage
at a time, in the order of STAGES, and stamps the end of each with ``time.perf_counter()``
(CLOCK_MONOTONIC on Linux: one clock for every process, so the parent's timestamp from before it
started this process compares with these) and ``time.process_time()`` (this process's CPU, user
+ system). A module two stages need is counted in the first. The run is split where typer hands
the parsed arguments to ``rexec.cli.run.execute`` (wrapped here, not changed). Time spent
building pydantic schemas, validators and serializers (pydantic's ``complete_model_class`` for a
model, ``TypeAdapter._init_core_attrs`` for an adapter; outermost calls only) is added up too,
when this pydantic has both. The last line of stdout is one JSON object: {"stamps": [[stage,
perf_counter s, CPU s, schema-build s], ...], "status": N, "schema_hooked": bool}.

``registry`` shows that the lazy command registry (rexec.cli.main.build_app) keeps the start-up
of ``rexec run`` flat as commands are added: in fresh processes (median of ROUNDS, default 15) it
times start to the moment typer hands the parsed arguments to ``rexec.cli.run.execute`` (which
then exits at once: no server is needed), with the real registry and with 24 more commands of 12
options each, registered lazily (only ``run``, as ``rexec run`` does) and eagerly (all of them,
as ``rexec --help`` does, and as the CLI did before it was lazy). It prints a Markdown table.

Nothing is imported at the top of this file but what the interpreter has loaded before it runs.
"""

import gc
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not loaded when this script starts: not imported for annotations
    from collections.abc import Callable
    from typing import Any

STAGES = (
    # (key, what the stage ending at this stamp did), in the order stages() runs them
    ("start", "Python start-up until the script's first line (the interpreter, `site`, the"
              " venv's .pth files)"),
    ("typer", "`import typer` (with the click it vendors, and the stdlib modules they use)"),
    ("pydantic", "`from pydantic import BaseModel` (pydantic, pydantic_core, annotated_types,"
                 " typing_extensions, typing_inspection)"),
    ("adapters", "`import typer._adapters`: what else of pydantic typer's parameter conversion"
                 " uses (TypeAdapter, its validators)"),
    ("cli", "`import rexec.cli.main`, `rexec.cli.run`: rexec's CLI modules"),
    ("client", "`from rexec.client.blocking import BlockingClient`: rexec's client, protocol core,"
               " config and frame models (their schemas deferred)"),
    ("parse", "typer parses `run ADDRESS -- true`: click's parser, and a TypeAdapter built for"
              " each parameter of `rexec run`"),
    ("run", "connect, handshake, authenticate, run `true` and wait for its exit (the frame"
            " models' deferred schemas are built here, on first use)"),
)


def minimal_app(args: list[str], *, fast: bool) -> None:
    if fast:
        gc.disable()
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def main(address: str, command: list[str]) -> None:
        """Do nothing."""

    if not fast:
        app(args=args, prog_name="startup")
        return
    status = 0
    try:
        app(args=args, prog_name="startup")
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class _SchemaClock:
    """Adds up the time pydantic spends building schemas (outermost calls only)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.depth = 0
        self.hooked = False

    def wrap(self, fn: "Callable[..., Any]") -> "Callable[..., Any]":
        def timed(*args: "Any", **kwargs: "Any") -> "Any":
            self.depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if not self.depth:
                    self.total += time.perf_counter() - started

        return timed

    def install(self) -> None:
        from pydantic import type_adapter
        from pydantic._internal import _model_construction

        complete = getattr(_model_construction, "complete_model_class", None)
        init_core = getattr(type_adapter.TypeAdapter, "_init_core_attrs", None)
        if complete is None or init_core is None:  # another pydantic: no schema figures
            return
        _model_construction.complete_model_class = self.wrap(complete)
        type_adapter.TypeAdapter._init_core_attrs = self.wrap(init_core)
        self.hooked = True


def stages(args: list[str]) -> None:
    stamps: list[tuple[str, float, float, float]] = []
    schemas = _SchemaClock()

    def stamp(key: str) -> None:
        stamps.append((key, time.perf_counter(), time.process_time(), schemas.total))

    stamp("start")
    gc.disable()  # as rexec.cli.main does before its imports
    import typer

    stamp("typer")
    from pydantic import BaseModel  # noqa: F401

    schemas.install()  # pydantic.main is loaded now; the schema builds from here on are timed
    stamp("pydantic")
    import typer._adapters  # noqa: F401

    stamp("adapters")
    import rexec.cli.main
    import rexec.cli.run

    stamp("cli")
    from rexec.client.blocking import BlockingClient  # noqa: F401

    stamp("client")
    execute = rexec.cli.run.execute

    def stamped_execute(*a: "Any", **kw: "Any") -> int:
        stamp("parse")
        return execute(*a, **kw)

    rexec.cli.run.execute = stamped_execute  # run_command looks it up when called
    rexec.cli.main.without_pydantic_plugins()  # as rexec.cli.main.main does
    try:
        rexec.cli.main.build_app(["run", *args])(args=["run", *args], prog_name="rexec")
    except SystemExit as exc:
        status = rexec.cli.main._exit_status(exc.code)
    else:
        status = 0
    stamp("run")
    import json  # loaded already, by rexec.cli.run

    sys.stdout.write("\n" + json.dumps({"stamps": stamps, "status": status,
                                        "schema_hooked": schemas.hooked}) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # as rexec.cli.main.main does


DUMMY_COMMANDS = 24
DUMMY_OPTIONS = 12


def _write_dummy_modules(directory: str) -> None:
    """DUMMY_COMMANDS command modules like rexec's, each registering one command of DUMMY_OPTIONS
    options, written as real files (imported, and byte-compiled once, as rexec's own are)."""
    options = ", ".join(f"opt{n}: Annotated[str | None, typer.Option(help='Option {n}.')] = None"
                        for n in range(DUMMY_OPTIONS))
    for index in range(DUMMY_COMMANDS):
        with open(os.path.join(directory, f"_bench_dummy_{index}.py"), "w") as module:
            module.write(f"from typing import Annotated\nimport typer\n\n\n"
                         f"def command({options}) -> None:\n    'Dummy command {index}.'\n\n\n"
                         f"def register(root):\n    root.command('dummy{index}')(command)\n")


def registry_probe(mode: str, dummies: str, args: list[str]) -> None:
    """One fresh start of `rexec run ARGS`: print perf_counter when typer calls execute.

    ``dummies`` is the directory of _write_dummy_modules, or "" for the real registry alone.
    """
    gc.disable()
    import rexec.cli.main
    import rexec.cli.run

    commands = dict(rexec.cli.main.COMMANDS)
    if dummies:
        sys.path.insert(0, dummies)
        commands.update({f"dummy{n}": f"_bench_dummy_{n}" for n in range(DUMMY_COMMANDS)})

    def parsed(*a: "Any", **kw: "Any") -> int:
        sys.stdout.write(f"{time.perf_counter()!r}\n")
        sys.stdout.flush()
        os._exit(0)

    rexec.cli.run.execute = parsed
    rexec.cli.main.without_pydantic_plugins()
    argv = ["run", *args] if mode == "lazy" else []
    rexec.cli.main.build_app(argv, commands)(args=["run", *args], prog_name="rexec")


def registry(rounds: int) -> None:
    """Print the Markdown table of registry_probe's start-up, median of ROUNDS fresh processes."""
    import statistics
    import subprocess
    import tempfile

    extra = f"+ {DUMMY_COMMANDS} commands x {DUMMY_OPTIONS} options"
    with tempfile.TemporaryDirectory() as directory:
        _write_dummy_modules(directory)
        cases = [("lazy", "", "the real registry (run, token)"),
                 ("lazy", directory, f"{extra}, lazy (only `run` registered)"),
                 ("eager", directory, f"{extra}, eager (all registered)")]
        times: list[list[float]] = [[] for _ in cases]
        for _ in range(rounds + 1):  # the first round byte-compiles the modules: not counted
            for series, (mode, dummies, _label) in zip(times, cases, strict=True):
                started = time.perf_counter()  # interleaved cases: the same machine load
                out = subprocess.run(
                    [sys.executable, __file__, "registry-probe", mode, dummies,
                     "127.0.0.1:1", "--", "true"], capture_output=True, check=True, text=True)
                series.append(float(out.stdout.split()[-1]) - started)
    print("| `rexec run` start-up, to parsed arguments | median ms | min ms |")
    print("| --- | ---: | ---: |")
    for (_mode, _dummies, label), series in zip(cases, times, strict=True):
        print(f"| {label} | {statistics.median(series[1:]) * 1000:.1f} |"
              f" {min(series[1:]) * 1000:.1f} |")

if __name__ == "__main__":
    mode, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if mode in {"app", "app-fast"}:
        minimal_app(rest, fast=mode == "app-fast")
    elif mode == "stages":
        stages(rest)
    elif mode == "registry":
        registry(int(rest[0]) if rest else 15)
    elif mode == "registry-probe":
        registry_probe(rest[0], rest[1], rest[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} app|app-fast|stages|registry ADDRESS -- COMMAND...")
