"""``rexec tls init|fingerprint|forget`` in process (typer's CliRunner)."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from rexec.tls import certificate_fingerprint, parse_subject
from tests.unit.cli.test_cli import invoke

FILES = ["ca.crt", "ca.key", "ci.crt", "ci.key", "ops.crt", "ops.key", "server.crt", "server.key"]


def test_init_makes_the_ca_the_server_and_the_clients(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    status, out, err = invoke("tls", "init", str(folder), "--server-name", "web1.example",
                              "-s", "127.0.0.1", "--client", "ci", "-c", "ops")
    assert status == 0, err
    assert sorted(p.name for p in folder.iterdir()) == FILES
    for name in FILES:
        want = 0o600 if name.endswith(".key") else 0o644
        assert stat.S_IMODE((folder / name).stat().st_mode) == want, name
    server_part, *clients = out.split("\n# The config of a client logging in as ")
    server = tomllib.loads(server_part)["server"]
    assert server["tls_cert"] == str(folder / "server.crt")
    assert server["tls_key"] == str(folder / "server.key")
    assert server["tls_client_ca"] == str(folder / "ca.crt")
    assert {name: ident["certificate"] for name, ident in server["identities"].items()} == {
        "ci": "CN=ci", "ops": "CN=ops"}
    parse_subject(server["identities"]["ci"]["certificate"])
    assert len(clients) == 2
    ci = tomllib.loads(clients[0].split("\n", 1)[1])["client"]
    assert ci == {"tls_ca": str(folder / "ca.crt"), "tls_cert": str(folder / "ci.crt"),
                  "tls_key": str(folder / "ci.key"), "identity": "ci"}


def test_init_without_clients_prints_a_token_client(tmp_path: Path) -> None:
    status, out, _ = invoke("tls", "init", str(tmp_path), "-s", "localhost")
    assert status == 0
    assert "tls_client_ca" not in out and "identities" not in out
    assert "logs in with a token" in out


def test_identity_names_that_toml_must_quote(tmp_path: Path) -> None:
    status, out, _ = invoke("tls", "init", str(tmp_path), "-s", "localhost", "-c", "ops@x.y")
    assert status == 0
    server = tomllib.loads(out.split("\n# The config")[0])["server"]
    assert server["identities"]["ops@x.y"]["certificate"] == "CN=ops@x.y"


def test_init_refuses_to_overwrite_anything(tmp_path: Path) -> None:
    (tmp_path / "ci.key").write_text("mine")
    status, _, err = invoke("tls", "init", str(tmp_path), "-s", "localhost", "-c", "ci")
    assert status == 2
    assert f"not overwriting {tmp_path / 'ci.key'}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci.key"]  # nothing else written
    assert (tmp_path / "ci.key").read_text() == "mine"


@pytest.mark.parametrize(("args", "message"), [
    (["-s", "bad name"], "--server-name: 'bad name' is neither a host name nor an IP address"),
    (["-s", "localhost", "-c", "bad/name"], "--client 'bad/name': an identity is"),
    (["-s", "localhost", "-c", "server"], "not 'ca' or 'server'"),
    ([], "Missing option '--server-name'"),
])
def test_init_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    status, _, err = invoke("tls", "init", str(tmp_path / "pki"), *args)
    assert status == 2
    assert message in err
    assert not (tmp_path / "pki").exists()
    assert "Traceback" not in err


def test_fingerprint_prints_what_tls_pin_takes(tmp_path: Path) -> None:
    invoke("tls", "init", str(tmp_path), "-s", "localhost")
    status, out, _ = invoke("tls", "fingerprint", str(tmp_path / "server.crt"))
    assert status == 0
    assert out == certificate_fingerprint(tmp_path / "server.crt") + "\n"
    status, _, err = invoke("tls", "fingerprint", str(tmp_path / "missing.crt"))
    assert (status, err.strip()) == (2, f"rexec: certificate {tmp_path / 'missing.crt'} does"
                                         " not exist")


def test_forget(isolated_home: Path) -> None:
    pin = "SHA256:LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE"
    path = isolated_home / "known_hosts"
    path.write_text(f"web1:7878 {pin}\nweb2:7878 {pin}\n")
    status, out, _ = invoke("tls", "forget", "web1")
    assert status == 0
    assert out == f"removed {path}:1: web1:7878 {pin}\n"
    assert path.read_text() == f"web2:7878 {pin}\n"
    status, _, err = invoke("tls", "forget", "web1:7878")
    assert (status, err.strip()) == (1, f"rexec: web1:7878 is not in {path}")
    path.write_text("corrupt\n")
    status, _, err = invoke("tls", "forget", "web2:7878")
    assert status == 2 and f"known_hosts file {path}, line 1" in err
    other = isolated_home / "other"
    other.write_text(f"web3:1 {pin}\n")
    assert invoke("tls", "forget", "--known-hosts", str(other), "web3:1")[0] == 0
