"""Import directions of docs/architecture.md that a fresh interpreter's sys.modules can show."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def modules_after(imports: str) -> set[str]:
    """The modules loaded by ``imports`` in a fresh interpreter."""
    code = f"import json, sys\n{imports}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    return set(json.loads(out))


def test_the_one_host_run_path_never_imports_asyncio() -> None:
    loaded = modules_after("import rexec.cli.main, rexec.cli.run\n"
                           "from rexec.client.blocking import BlockingClient")
    assert "rexec.client.blocking" in loaded
    assert "asyncio" not in loaded
    assert "ssl" not in loaded  # loaded only by a connection that uses TLS
    assert "sqlite3" not in loaded  # the run history is batch's and deploy's, not run's
    assert not {m for m in loaded if m.startswith("rexec.deploy")}
    assert not {m for m in loaded if m.startswith("rexec.server")}
    assert not {m for m in loaded if m.startswith(("ClusterShell", "rexec.fleet.inventory"))}


def test_a_host_port_target_loads_nothing_of_the_fleet() -> None:
    """``rexec run HOST:PORT`` is told from a pattern without importing the fleet's modules
    (they cost the one-host start-up about 6 ms)."""
    loaded = modules_after("import rexec.cli.run\n"
                           "assert rexec.cli.run.classify_target('web1:7878', None, None, 'true',"
                           " False) == ('address', None)")
    assert not {m for m in loaded if m.startswith(("rexec.fleet", "rexec.cli.fleet"))}


def test_telling_a_pattern_from_an_address_never_imports_clustershell() -> None:
    """``is_pattern`` decides single-host or fleet mode on every ``rexec run``: it is cheap,
    and ClusterShell (about 15 ms) loads only to expand or fold a pattern."""
    loaded = modules_after("from rexec.fleet.nodeset import is_pattern\n"
                           "assert not is_pattern('web1:7878')")
    assert not {m for m in loaded if m.startswith("ClusterShell")}
    assert "asyncio" not in loaded


def test_no_client_path_imports_cryptography() -> None:
    """Only the server and ``rexec tls init`` make keys: ``rexec run``, with TLS, pins and
    known_hosts included, never pays for loading cryptography."""
    loaded = modules_after("import rexec.cli.main, rexec.cli.run, rexec.client.trust,"
                           " rexec.client.aio, rexec.client.known_hosts\n"
                           "from rexec.client.blocking import BlockingClient")
    assert "rexec.client.trust" in loaded
    assert not {m for m in loaded if m.startswith(("cryptography", "rexec.pki"))}


def test_the_one_host_run_path_without_tls_never_imports_ssl() -> None:
    loaded = modules_after("import rexec.cli.main, rexec.cli.run, rexec.client.options\n"
                           "from rexec.client.blocking import BlockingClient")
    assert "ssl" not in loaded


def test_the_wire_and_the_client_core_do_no_io() -> None:
    loaded = modules_after("import rexec.wire.frames, rexec.wire.codec, rexec.wire.protocol,"
                           " rexec.wire.auth, rexec.wire.address, rexec.client.core")
    assert not loaded & {"asyncio", "socket", "select", "selectors", "ssl"}


def test_the_fleet_s_sans_io_modules_do_no_io() -> None:
    loaded = modules_after("import rexec.fleet.lines, rexec.fleet.batch, rexec.fleet.outcome")
    assert not loaded & {"asyncio", "socket", "select", "selectors", "ssl"}


def test_deploy_plans_and_schedules_make_no_connection() -> None:
    """``--check`` loads and schedules a plan: no event loop, no TLS, no client (pydantic
    itself loads socket, so import-linter's contract is the check for that)."""
    loaded = modules_after("import rexec.deploy.plan, rexec.deploy.schedule")
    assert not loaded & {"asyncio", "ssl"}
    assert not {m for m in loaded if m.startswith(("rexec.client", "rexec.fleet.inventory",
                                                   "rexec.server", "rexec.cli"))}


def test_import_rexec_and_its_fleet_names_stay_light() -> None:
    """``rexec.Group`` & co. are exported lazily: ``import rexec`` loads no asyncio."""
    loaded = modules_after("import rexec")
    assert "asyncio" not in loaded and "rexec.fleet.group" not in loaded


def test_the_server_handshake_does_no_io() -> None:
    loaded = modules_after("import rexec.server.handshake")
    assert not loaded & {"asyncio", "socket", "select", "selectors", "ssl"}


@pytest.mark.parametrize("module", ["runner", "child", "group", "shortcut", "env", "workdir",
                                    "guardian"])
def test_the_process_layer_knows_no_sessions_and_no_frames(module: str) -> None:
    loaded = modules_after(f"import rexec.server.exec.{module}")
    outside = {m for m in loaded if m.startswith(("rexec.server.", "rexec.wire", "rexec.client"))
               and not m.startswith("rexec.server.exec")}
    assert outside == set()


def test_the_defaults_modules_import_no_more_than_each_other() -> None:
    """Any module may read the defaults: rexec.server.exec.defaults imports nothing, and
    rexec.server.defaults only it (so settings.py loads no other module of the server)."""
    import ast
    from pathlib import Path

    server = Path(__file__).resolve().parents[2] / "rexec" / "server"
    for path, allowed in ((server / "exec" / "defaults.py", set()),
                          (server / "defaults.py", {"rexec.server.exec.defaults"})):
        tree = ast.parse(path.read_text())
        imported = {node.module if isinstance(node, ast.ImportFrom) else alias.name
                    for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                    for alias in node.names}
        assert imported == allowed, path


def test_nothing_inside_rexec_imports_the_package_face() -> None:
    """Rule 5: ``rexec/__init__.py`` is for users; modules inside import what they need from
    its home (import-linter cannot forbid a package without its descendants)."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "rexec"
    offenders = []
    for path in package.rglob("*.py"):
        if path == package / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            if "rexec" in names:
                offenders.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert not offenders


def test_the_one_host_run_path_loads_no_file_transfer_code() -> None:
    """``rexec run`` imports the blocking client, whose put and get import the transfer
    modules when called (about 14 ms of start-up otherwise)."""
    loaded = modules_after("import rexec.cli.main, rexec.cli.run\n"
                           "from rexec.client.blocking import BlockingClient")
    assert not loaded & {"rexec.client.transfer", "rexec.client.tree", "rexec.writeback"}
    loaded = modules_after("from rexec.client.blocking import BlockingClient\n"
                           "BlockingClient.put  # the methods are there; only calling loads")
    assert "rexec.client.transfer" not in loaded


PLUGIN_PROBE = (
    "import rexec.cli.main\n"
    "print(rexec.cli.main.without_pydantic_plugins(), file=sys.stderr)\n"
    "from rexec.wire.codec import decode_header, encode\n"
    "from rexec.wire.frames import Hello\n"
    "hello = Hello(agent='t', versions=[5], nonce='ab' * 32)\n"
    "assert decode_header(encode(hello)[4:]) == hello\n"
    "try:\n"
    "    decode_header(b'{\"type\": \"hello\", \"size\": -1}')\n"
    "except Exception as exc:\n"
    "    assert 'size' in str(exc), exc\n"
    "else:\n"
    "    raise AssertionError('a negative size was accepted')\n"
)


def test_the_console_script_validates_frames_without_looking_for_pydantic_plugins() -> None:
    """pydantic's plugin lookup imports importlib.metadata and reads every installed
    distribution (14-22 ms): the CLI runs without it, its frames validated all the same."""
    loaded = modules_after(PLUGIN_PROBE)
    assert "rexec.wire.frames" in loaded
    assert "importlib.metadata" not in loaded


def test_rexec_pydantic_plugins_1_lets_pydantic_look_for_its_plugins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_PYDANTIC_PLUGINS", "1")
    loaded = modules_after(PLUGIN_PROBE)
    assert "importlib.metadata" in loaded
    assert "pydantic.plugin._loader" in loaded


def test_connecting_to_an_ascii_host_never_loads_the_idna_codec() -> None:
    """A str host would be IDNA-encoded by getaddrinfo: the codec and unicodedata cost a
    one-shot run 1.5 ms, and an ASCII name needs neither."""
    loaded = modules_after(
        "import socket\n"
        "from rexec.client.blocking import BlockingClient\n"
        "from rexec.errors import ConnectError\n"
        "probe = socket.socket()\n"
        "probe.bind(('127.0.0.1', 0))\n"  # bound, never listening: the connect is refused
        "port = probe.getsockname()[1]\n"
        "for host in ('127.0.0.1', 'localhost'):\n"
        "    try:\n"
        "        BlockingClient(f'{host}:{port}', token='x' * 32).connect()\n"
        "    except ConnectError as exc:\n"
        "        assert 'refused' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('connected to a port nothing listens on')\n")
    assert "encodings.idna" not in loaded
