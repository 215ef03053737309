"""``rexec put`` and ``rexec get`` in process: usage errors, exit statuses, --json, and a real
transfer against the scripted version-3 peer of tests/unit/client/test_transfer_clients.py."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.unit.cli.test_cli import closed_port, invoke
from tests.unit.client.test_transfer_clients import TOKEN, Peer, Stored, peer
from tests.unit.test_imports import modules_after

__all__ = ["peer"]  # the fixture, used by name


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_TOKEN", TOKEN)


@pytest.mark.parametrize(("args", "message"), [
    (["put", "-r", "--mode", "0640", "h:1", "a", "/b"], "--mode applies to one file"),
    (["get", "--recursive", "h:1", "relative", "b"], "REMOTE: the remote path must be absolute"),
    (["put", "-r", "h:1", "/", "/b/"], "has no name to give the directory"),
    (["put", "-r", "--mode", "0640", "web[1-3]", "a", "/b"], "--mode applies to one file"),
    (["get", "@web", "/a", "no-such-dir"], "LOCAL: a fleet get writes each host's file to"
                                            " LOCAL/HOST/a, so LOCAL must be an existing"),
    (["get", "web[1-2]", "/", "."], "REMOTE: '/' names no file"),
    (["put", "--timeout", "5", "h:1", "a", "/b"], "--timeout is per host in fleet mode"),
    (["put", "h:1", "a", "relative/b"], "REMOTE: the remote path must be absolute"),
    (["get", "h:1", "relative", "b"], "REMOTE: the remote path must be absolute"),
    (["put", "--mode", "0999", "h:1", "a", "/b"], "--mode: expected octal"),
    (["put", "--mode", "17777", "h:1", "a", "/b"], "--mode: permission bits are at most 7777"),
])
def test_usage_errors_exit_2_in_one_line(args: list[str], message: str) -> None:
    status, stdout, stderr = invoke(*args)
    assert status == 2
    assert stderr.startswith("rexec: ") and message in stderr and stderr.count("\n") == 1
    assert stdout == ""


def test_a_refused_connection_exits_255_as_rexec_run_says_it(token: None,
                                                             tmp_path: Path) -> None:
    port = closed_port()
    status, _, stderr = invoke("get", f"127.0.0.1:{port}", "/etc/hostname", str(tmp_path))
    assert status == 255
    assert stderr == f"rexec: cannot connect to 127.0.0.1:{port}: Connection refused\n"
    status, stdout, _ = invoke("put", "--json", f"127.0.0.1:{port}", "/etc/hostname", "/x/")
    doc = json.loads(stdout)
    assert status == 255
    assert doc["remote"] == "/x/hostname" and doc["error_type"] == "ConnectError"
    assert doc["bytes"] is None and doc["changed"] is None


def test_put_and_get_with_json(peer: tuple[Peer, str], token: None, tmp_path: Path) -> None:
    scripted, address = peer
    src = tmp_path / "app.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    status, stdout, stderr = invoke("put", "--json", address, str(src), "/srv/")
    assert (status, stderr) == (0, "")
    doc = json.loads(stdout)
    assert doc == {"target": address, "local": str(src), "remote": "/srv/app.bin",
                   "bytes": 300_000, "sha256": digest, "changed": True,
                   "duration": doc["duration"], "error": None}
    status, stdout, _ = invoke("put", "--json", address, str(src), "/srv/app.bin")
    assert json.loads(stdout)["changed"] is False
    status, stdout, _ = invoke("put", "--json", "--no-skip", "--mode", "0640", address,
                               str(src), "/srv/app.bin")
    assert json.loads(stdout)["changed"] is True
    assert scripted.puts[-1].mode == 0o640 and scripted.puts[-1].force
    into = tmp_path / "into"
    into.mkdir()
    status, stdout, stderr = invoke("get", address, "/srv/app.bin", str(into))
    assert (status, stdout, stderr) == (0, "", "")  # quiet on success, as cp
    assert (into / "app.bin").read_bytes() == data


def test_get_preserves_mode_and_mtime_with_p(peer: tuple[Peer, str], token: None,
                                             tmp_path: Path) -> None:
    scripted, address = peer
    scripted.files["/etc/tool"] = Stored(b"#!/bin/sh\n", 0o750, 1_600_000_000_000_000_007)
    out = tmp_path / "tool"
    assert invoke("get", "-p", address, "/etc/tool", str(out))[0] == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert out.stat().st_mtime_ns == 1_600_000_000_000_000_007


def test_a_missing_remote_file_exits_255_naming_it(peer: tuple[Peer, str], token: None,
                                                   tmp_path: Path) -> None:
    _, address = peer
    status, _, stderr = invoke("get", address, "/no/such/file", str(tmp_path / "x"))
    assert status == 255
    assert stderr.startswith("rexec: server: /no/such/file") and stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_missing_local_file_exits_255_naming_it(peer: tuple[Peer, str], token: None,
                                                  tmp_path: Path) -> None:
    _, address = peer
    status, _, stderr = invoke("put", address, str(tmp_path / "nope"), "/srv/x")
    assert status == 255
    assert stderr.startswith(f"rexec: {tmp_path / 'nope'}: No such file")


def test_put_and_get_are_registered_from_one_module_once() -> None:
    status, stdout, _ = invoke("--help")
    assert status == 0 and "put" in stdout and "get" in stdout
    assert invoke("put", "--help")[0] == 0


def test_the_put_get_path_never_imports_asyncio() -> None:
    loaded = modules_after("import rexec.cli.main, rexec.cli.transfer, rexec.cli.shell\n"
                           "from rexec.client.blocking import BlockingClient\n"
                           "import rexec.client.transfer")
    assert "rexec.client.transfer" in loaded
    assert "asyncio" not in loaded
    assert not {m for m in loaded if m.startswith("rexec.server")}
