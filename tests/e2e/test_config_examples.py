"""The example config files under config/ load as documented."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from rexec.cli import server as server_cli
from rexec.client.settings import ClientSettings
from rexec.config import load_settings
from rexec.server import defaults
from rexec.server.settings import IdentitySettings, ServerSettings
from rexec.wire.auth import TokenVerifier
from tests.helpers import ROOT


def test_example_server_config_loads():
    settings = load_settings(ServerSettings, "server", ROOT / "config" / "server.toml", environ={})
    assert (settings.host, settings.port) == ("127.0.0.1", 7878)
    assert settings.token is None
    assert settings.kill_grace == 5.0
    assert (settings.max_startups, settings.per_source_max_startups) == ("128:30:512", 64)


def test_example_client_config_loads():
    settings = load_settings(ClientSettings, "client", ROOT / "config" / "client.toml", environ={})
    assert settings.connect_timeout == 10.0


def _load_inventory(path: Path) -> object:
    from rexec.fleet.inventory import Inventory

    return Inventory.load([path])


def _load_plan(path: Path) -> object:
    from rexec.deploy.plan import Plan

    return Plan.load(path)


EXAMPLE_LOADERS = {
    "server.toml": lambda path: load_settings(ServerSettings, "server", path, environ={}),
    "client.toml": lambda path: load_settings(ClientSettings, "client", path, environ={}),
    "inventory.toml": _load_inventory,
    "deploy-example.toml": _load_plan,
}
"""Every example TOML file under config/ and the model that loads it."""


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_file_loads_with_its_model(path: Path):
    assert path.name in EXAMPLE_LOADERS, f"config/{path.name}: add its loader to this test"
    assert EXAMPLE_LOADERS[path.name](path) is not None


def test_the_example_inventory_uses_every_feature(tmp_path: Path):
    from rexec.fleet.inventory import GroupEntry, HostEntry, Inventory

    path = ROOT / "config" / "inventory.toml"
    text = path.read_text()
    missing = [name for name in (*HostEntry.model_fields, *GroupEntry.model_fields)
               if not _named(text, name)]
    assert not missing, f"config/inventory.toml does not show: {missing}"
    inventory = Inventory.load([path])
    assert inventory.expand("@prod") == [
        "build", "web01", "web02", "web03", "web04", "db-primary", "db-replica1.example.net",
        "db-replica2.example.net"]
    assert inventory.hosts["web03"].address == "127.0.0.4"
    assert inventory.vars("web01") == {"site": "par1", "role": "web", "env": "prod",
                                       "tier": "front", "canary": True}
    assert inventory.defaults.token_file == ROOT / "config" / "tokens" / "fleet.token"


SERVER_TOML = ROOT / "config" / "server.toml"
UNIT = ROOT / "config" / "rexec-server.service"


def _named(text: str, field: str) -> bool:
    """Whether ``field = ...`` is set, or shown commented out, in ``text``."""
    return re.search(rf"^#? *{re.escape(field)} = ", text, re.MULTILINE) is not None


def test_the_example_server_config_names_every_setting_with_its_default():
    text = SERVER_TOML.read_text()
    server_part, _, identity_part = text.partition("[server.identities.")
    missing = [name for name in ServerSettings.model_fields
               if name != "identities" and not _named(server_part, name)]
    assert not missing, f"config/server.toml does not show: {missing}"
    assert identity_part, "config/server.toml has no [server.identities.NAME] example"
    missing = [name for name in IdentitySettings.model_fields if not _named(identity_part, name)]
    assert not missing, f"the identity example in config/server.toml does not show: {missing}"
    # every line set (not commented out) is the built-in default
    loaded = load_settings(ServerSettings, "server", SERVER_TOML, environ={})
    assert loaded == ServerSettings()


def test_the_example_identity_tables_load_once_uncommented(tmp_path):
    _, _, identities = SERVER_TOML.read_text().partition("\n# [server.identities.")
    lines = [line.removeprefix("# ") for line in ("# [server.identities." + identities).splitlines()
             if re.match(r"# ?(\[|[a-z_]+ = )", line)]
    config = tmp_path / "server.toml"
    text = "[server]\n" + "\n".join(lines) + "\n"
    config.write_text(text.replace("rexec-sha256$...$...$...",
                                   TokenVerifier.from_token("t" * 32).format())
                      .replace('run_as = "deploy"', 'run_as = "root"'))
    settings = load_settings(ServerSettings, "server", config, environ={})
    assert set(settings.identities) == {"deploy", "ci"}


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys keep case
    parser.read_string(UNIT.read_text())
    return parser


def test_the_systemd_unit_runs_the_real_console_script_with_real_flags():
    unit = _unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    program, *args = shlex.split(service["ExecStart"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(program).name == "rexec-server" and "rexec-server" in scripts
    options = {opt for param in typer.main.get_command(server_cli.app).params
               for opt in param.opts}
    assert {arg for arg in args if arg.startswith("-")} <= options
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"  # SIGTERM to the server alone, which has a grace
    stop = float(service["TimeoutStopSec"].removesuffix("s"))
    assert stop > defaults.SHUTDOWN_GRACE + defaults.KILL_GRACE
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables"):
        assert service[hardening] == "yes"
    assert service["ProtectSystem"] in ("full", "strict")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    script = Path(sys.executable).parent / "rexec-server"
    if not script.exists():
        pytest.skip("rexec-server is not installed beside this Python")
    unit = tmp_path / "rexec-server.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/rexec-server", str(script)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "rexec-server.service" not in result.stderr, result.stderr
