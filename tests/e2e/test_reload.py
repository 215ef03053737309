"""SIGHUP: the server loads its config file again without dropping connections or commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import rexec
from rexec import AuthenticationError, CommandNotStarted
from rexec.wire.auth import TokenVerifier
from tests.helpers import ROOT, ServerProcess, reap, start_server, wait_until, write_token

DEPLOY_TOKEN = "deploy-token-0123456789abcdef"
DEPLOY_HASH = TokenVerifier.from_token(DEPLOY_TOKEN).format()
DEPLOY = f'[server.identities.deploy]\ntoken_hash = "{DEPLOY_HASH}"\n'


def _config(tmp_path: Path, *lines: str) -> Path:
    config = tmp_path / "server.toml"
    config.write_text("[server]\n" + "\n".join(lines) + "\n")
    return config


def _events(path: Path, event: str) -> list[dict[str, object]]:
    """The JSON records of one event in a server log or an audit log."""
    found = []
    for line in path.read_text().splitlines():
        start = line.find("{")
        if start >= 0 and f'"event": "{event}"' in line:
            found.append(json.loads(line[start:]))
    return found


def _hangup(srv: ServerProcess, event: str = "reload") -> dict[str, object]:
    """SIGHUP the server and return the log record of its reload (or reload_failed)."""
    before = len(_events(srv.log_path, event))
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: len(_events(srv.log_path, event)) > before), srv.log()
    return _events(srv.log_path, event)[-1]


def _client(srv: ServerProcess, command: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--token-file",
         str(write_token(tmp_path / "client-token", srv.token)), srv.address, "--", command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )


def test_a_new_identity_works_at_once_while_a_running_command_completes(tmp_path):
    audit_a, audit_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    config = _config(tmp_path, f'audit_log = "{audit_a}"')
    srv = start_server(tmp_path, "--config", str(config))
    marker = tmp_path / "started"
    client = _client(srv, f"touch {marker}; sleep 2; echo finished", tmp_path)
    try:
        with rexec.BlockingClient(srv.address, token=srv.token) as before:
            assert wait_until(marker.exists, timeout=20)
            with pytest.raises(AuthenticationError):
                rexec.run(srv.address, "true", token=DEPLOY_TOKEN, identity="deploy")
            config.write_text(f'[server]\naudit_log = "{audit_b}"\n{DEPLOY}')
            record = _hangup(srv)
            assert record["identities_added"] == ["deploy"]
            assert record["identities"] == ["default", "deploy"]
            assert record["needs_restart"] == []
            assert "audit_log" in record["changed"]  # type: ignore[operator]
            r = rexec.run(srv.address, "echo $REXEC_IDENTITY", token=DEPLOY_TOKEN,
                          identity="deploy")
            assert r.stdout == b"deploy\n"
            assert before.run("echo still here").stdout == b"still here\n"
        out, err = client.communicate(timeout=30)
        assert (client.returncode, out) == (0, b"finished\n"), err
    finally:
        reap(client)
        assert srv.stop() == 0, srv.log()
    # the audit log moved: the old file says where, the new one has what came after
    assert _events(audit_a, "reload")[-1]["audit_log"] == str(audit_b)
    assert _events(audit_b, "reload")
    commands = {(c["identity"], c["decision"]) for c in _events(audit_b, "command")}
    assert ("deploy", "run") in commands
    assert ("default", "run") in commands  # the command running across the reload ended here


def test_a_bad_config_is_refused_and_the_old_one_kept(tmp_path):
    config = _config(tmp_path, "idle_timeout = 600", DEPLOY)
    srv = start_server(tmp_path, "--config", str(config))
    try:
        for bad, reason in [("[server]\nidle_timeout = -1\n", "idle_timeout"),
                            ("[server\n", str(config)),
                            ('[server]\naudit_log = "/nonexistent/audit.jsonl"\n',
                             "cannot open the audit log /nonexistent/audit.jsonl"),
                            (f"[server]\n{DEPLOY}allow = ['(a)\\1']\n", "allow[0]")]:
            config.write_text(bad)
            record = _hangup(srv, "reload_failed")
            assert reason in str(record["reason"]), record
            assert record["kept"] == "the running configuration"
            assert rexec.run(srv.address, "true", token=DEPLOY_TOKEN, identity="deploy").ok
            assert rexec.run(srv.address, "true", token=srv.token).ok
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0, srv.log()


def test_a_session_keeps_its_identity_when_a_reload_removes_it(tmp_path):
    config = _config(tmp_path, DEPLOY)
    srv = start_server(tmp_path, "--config", str(config))
    try:
        with rexec.BlockingClient(srv.address, token=DEPLOY_TOKEN, identity="deploy") as c:
            assert c.run("true").ok
            config.write_text("[server]\n")
            assert _hangup(srv)["identities_removed"] == ["deploy"]
            assert c.run("echo $REXEC_IDENTITY").stdout == b"deploy\n"  # policy as of login
            with pytest.raises(AuthenticationError):
                rexec.run(srv.address, "true", token=DEPLOY_TOKEN, identity="deploy")
    finally:
        assert srv.stop() == 0, srv.log()


def test_a_token_from_rexec_token_stays_valid_across_reloads(tmp_path):
    config = _config(tmp_path, "idle_timeout = 600")
    srv = start_server(tmp_path, "--config", str(config), token_in_env=True)
    try:
        config.write_text("[server]\nidle_timeout = 300\n")
        record = _hangup(srv)
        assert record["changed"] == ["idle_timeout"]
        assert record["identities"] == ["default"]
        assert rexec.run(srv.address, "true", token=srv.token).ok
    finally:
        assert srv.stop() == 0, srv.log()


def test_what_needs_a_restart_is_named_and_kept(tmp_path):
    config = _config(tmp_path, "kill_grace = 2")
    srv = start_server(tmp_path, "--config", str(config))
    try:
        config.write_text("[server]\nkill_grace = 3\nport = 1\nhost = \"localhost\"\n"
                          "max_command_length = 10\n")
        record = _hangup(srv)
        # --port 0 on the command line wins over the file, on a reload as at start
        assert record["needs_restart"] == ["host", "kill_grace"]
        assert record["changed"] == ["max_command_length"]
        with pytest.raises(CommandNotStarted, match="max_command_length"):  # the same port
            rexec.run(srv.address, "echo 0123456789", token=srv.token)
        # the next reload names them again: they still differ from what runs
        assert _hangup(srv)["needs_restart"] == ["host", "kill_grace"]
    finally:
        assert srv.stop() == 0, srv.log()


def test_sighup_after_logrotate_reopens_the_audit_log(tmp_path):
    audit = tmp_path / "audit.jsonl"
    srv = start_server(tmp_path, "--config", str(_config(tmp_path, f'audit_log = "{audit}"')))
    try:
        assert rexec.run(srv.address, "echo one", token=srv.token).ok
        audit.rename(tmp_path / "audit.jsonl.1")  # what logrotate does before its postrotate
        _hangup(srv)
        assert rexec.run(srv.address, "echo two", token=srv.token).ok
    finally:
        assert srv.stop() == 0, srv.log()
    rotated = [c["command"] for c in _events(tmp_path / "audit.jsonl.1", "command")]
    fresh = [c["command"] for c in _events(audit, "command")]
    assert "echo one" in rotated and "echo two" not in rotated
    assert "echo two" in fresh and "echo one" not in fresh
    assert audit.stat().st_mode & 0o777 == 0o600
