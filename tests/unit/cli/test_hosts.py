"""``rexec hosts PATTERN``: one host a line, --json with resolved settings, errors exit 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from rexec.cli import common
from tests.helpers import TOKEN, write_token
from tests.unit.cli.test_cli import invoke

INVENTORY = """
    [defaults]
    token_file = "fleet.token"
    vars = { site = "par1" }
    [hosts."web[01-04]"]
    address = "127.0.0.[2-5]"
    port = 7001
    [hosts.db]
    identity = "dba"
    tls_tofu = true
    [groups.web]
    hosts = ["web[01-04]"]
    vars = { tier = "front" }
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    write_token(tmp_path / "fleet.token")
    path = tmp_path / "inventory.toml"
    path.write_text(textwrap.dedent(INVENTORY))
    return path


def test_hosts_prints_one_name_a_line_in_order(inventory: Path) -> None:
    assert invoke("hosts", "--inventory", str(inventory), "@web,!web03,db") == (
        0, "web01\nweb02\nweb04\ndb\n", "")


def test_hosts_json_shows_each_hosts_settings_and_token_source_but_never_the_token(
        inventory: Path, tmp_path: Path) -> None:
    status, stdout, stderr = invoke("hosts", "--inventory", str(inventory), "--json",
                                    "web02,db,other")
    assert (status, stderr) == (0, "")
    assert TOKEN not in stdout
    web02, db, other = json.loads(stdout)
    assert web02["name"] == "web02" and web02["address"] == "127.0.0.3:7001"
    assert web02["token_source"] == f"token_file {tmp_path / 'fleet.token'}"
    assert web02["vars"] == {"site": "par1", "tier": "front"}
    assert (db["identity"], db["tls"], db["tls_tofu"], db["port"]) == ("dba", True, True, 7878)
    assert other["address"] == "other:7878" and other["vars"] == {"site": "par1"}
    assert set(web02) == {"name", "address", "host", "port", "identity", "tls", "tls_ca",
                          "tls_cert", "tls_key", "tls_pin", "tls_tofu", "connect_timeout",
                          "keepalive", "token_source", "vars"}


def test_hosts_json_names_rexec_token_as_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_TOKEN", TOKEN)
    status, stdout, _ = invoke("hosts", "--json", "127.0.0.[2-3]")
    assert status == 0 and TOKEN not in stdout
    assert [host["token_source"] for host in json.loads(stdout)] == ["REXEC_TOKEN"] * 2


def test_the_inventory_comes_from_rexec_inventory(inventory: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_INVENTORY", str(inventory))
    assert invoke("hosts", "@web") == (0, "web01\nweb02\nweb03\nweb04\n", "")


def test_inventory_files_given_twice_extend_each_other(inventory: Path, tmp_path: Path) -> None:
    extra = tmp_path / "more.toml"
    extra.write_text('[groups.web]\nhosts = ["web09"]\n')
    status, stdout, _ = invoke("hosts", "--inventory", str(inventory), "--inventory", str(extra),
                               "@web")
    assert (status, stdout.split()) == (0, ["web01", "web02", "web03", "web04", "web09"])


@pytest.mark.parametrize(("pattern", "message"), [
    ("web[5-1]", "rexec: bad range 'web[5-1]': invalid values in range \"5-1\"\n"),
    ("@nope", "rexec: pattern '@nope': unknown group '@nope'\n"),
    ("web[01-04]!@web", "rexec: pattern 'web[01-04]!@web' matches no host\n"),
    ("a,,b", "rexec: pattern 'a,,b': an empty item after ',' (item 2)\n"),
])
def test_a_bad_pattern_is_one_line_and_exit_2(inventory: Path, pattern: str,
                                              message: str) -> None:
    assert invoke("hosts", "--inventory", str(inventory), pattern) == (
        common.EXIT_USAGE, "", message)


def test_a_bad_inventory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[hosts.a]\nprot = 1\n")
    status, stdout, stderr = invoke("hosts", "--inventory", str(bad), "a")
    assert (status, stdout) == (common.EXIT_USAGE, "")
    assert stderr == (f"rexec: inventory {bad}: [hosts.a] prot: unknown setting 'prot';"
                      " did you mean 'port'?\n")


def test_no_token_for_json_is_a_usage_error(tmp_path: Path) -> None:
    status, _, stderr = invoke("hosts", "--json", "web1")
    assert status == common.EXIT_USAGE
    assert stderr.startswith("rexec: host 'web1': no token") and stderr.count("\n") == 1
