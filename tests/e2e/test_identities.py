"""Named identities, command policy, limits and the audit log, against real servers."""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trustme

import rexec
from rexec import AuthenticationError, CommandNotStarted, RemoteError
from rexec.wire.auth import TokenVerifier
from tests.helpers import ROOT, run_cli, start_server

DEPLOY_TOKEN = "deploy-token-with-enough-entropy-0123456789"
OPS_TOKEN = "ops-token-with-enough-entropy-9876543210"


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    work = tmp / "work"
    (work / "sub").mkdir(parents=True)
    config = tmp / "server.toml"
    config.write_text(f"""
[server]
audit_log = "audit.jsonl"
max_env_bytes = 200
max_command_length = 300

[server.identities.deploy]
token_hash = "{TokenVerifier.from_token(DEPLOY_TOKEN).format()}"
allow = {_toml_list(["echo [a-z ]*", "id -un", "pwd", "yes", "sleep [0-9]+", "touch [a-z/_.-]+",
                     "printf [a-z]+"])}
deny = {_toml_list(["echo evil.*"])}
cwd = ["{work}"]
max_timeout = 1
max_output = 100000
max_connections = 2
max_commands = 1

[server.identities.plain]
token_hash = "{TokenVerifier.from_token(OPS_TOKEN).format()}"
shell = false
""")
    srv = start_server(tmp, "--config", str(config))
    srv.work = work  # type: ignore[attr-defined]
    srv.audit = tmp / "audit.jsonl"  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, srv.log()


def deploy(srv, command: str, **kwargs) -> rexec.Result:
    return rexec.run(srv.address, command, token=DEPLOY_TOKEN, identity="deploy", **kwargs)


def audit_records(srv) -> list[dict]:
    return [json.loads(line) for line in srv.audit.read_text().splitlines()]


def test_identity_logs_in_with_its_own_token(policy_server):
    assert deploy(policy_server, "echo hello").stdout == b"hello\n"
    r = run_cli("run", "-i", "deploy", policy_server.address, "--", "echo", "from cli",
                env={"REXEC_TOKEN": DEPLOY_TOKEN})
    assert (r.returncode, r.stdout) == (0, b"from cli\n"), r.stderr


def test_wrong_token_and_unknown_identity_look_the_same(policy_server):
    messages = []
    for identity, token in (("deploy", OPS_TOKEN), ("nobody-here", DEPLOY_TOKEN)):
        with pytest.raises(AuthenticationError) as info:
            rexec.run(policy_server.address, "echo x", token=token, identity=identity)
        messages.append(str(info.value))
    # no hint which identities exist: the same words, but the count of this address's failures
    assert "(1 recent failure from your address" in messages[0]
    assert "(2 recent failures from your address" in messages[1]
    assert messages[0].split(" (")[0] == messages[1].split(" (")[0]


def test_the_config_holds_no_token(policy_server):
    config = Path(policy_server.log_path).parent / "server.toml"
    text = config.read_text()
    assert DEPLOY_TOKEN not in text
    assert OPS_TOKEN not in text


def test_deny_rule_refuses_and_names_the_rule(policy_server):
    marker = policy_server.work / "evil"
    r = run_cli("run", "-i", "deploy", policy_server.address, "--", f"echo evil > {marker}",
                env={"REXEC_TOKEN": DEPLOY_TOKEN})
    assert r.returncode == 255
    assert b"deny[0]" in r.stderr
    assert not marker.exists()
    refused = [rec for rec in audit_records(policy_server) if rec.get("decision") == "refused"]
    assert any(rec["rule"] == "deny[0]" and rec["identity"] == "deploy" for rec in refused)


def test_allow_list_is_anchored(policy_server, tmp_path):
    with pytest.raises(CommandNotStarted, match="allow list"):
        deploy(policy_server, "rm -rf /tmp/nothing")
    with pytest.raises(CommandNotStarted, match="allow list"):
        deploy(policy_server, "echo ok; id")  # ';' is not in [a-z ]
    assert deploy(policy_server, "id -un").ok


def test_working_directories(policy_server):
    work = policy_server.work
    assert deploy(policy_server, "pwd").stdout == f"{work}\n".encode()  # the first allowed one
    assert deploy(policy_server, "pwd", cwd=str(work / "sub")).stdout == f"{work}/sub\n".encode()
    for outside in ("/", str(work / ".."), "/tmp"):
        with pytest.raises(CommandNotStarted, match="outside"):
            deploy(policy_server, "pwd", cwd=outside)


def test_max_timeout_caps_the_clients_timeout(policy_server):
    started = time.monotonic()
    r = deploy(policy_server, "sleep 30", timeout=600)
    assert r.timed_out
    assert time.monotonic() - started < 10


def test_max_output_stops_the_command_and_says_why(policy_server):
    r = deploy(policy_server, "yes")
    assert r.exceeded == "max_output"
    assert r.stdout_bytes == 100000
    assert len(r.stdout) == 100000
    assert not r.ok
    cli = run_cli("run", "-i", "deploy", policy_server.address, "--", "yes",
                  env={"REXEC_TOKEN": DEPLOY_TOKEN})
    assert len(cli.stdout) == 100000
    assert b"max_output" in cli.stderr
    assert any(rec.get("exceeded") == "max_output" for rec in audit_records(policy_server))


def test_max_commands_per_identity(policy_server):
    first = threading.Thread(target=deploy, args=(policy_server, "sleep 1"))
    first.start()
    try:
        time.sleep(0.4)
        with pytest.raises(CommandNotStarted, match="max_commands"):
            deploy(policy_server, "echo second")
    finally:
        first.join()
    assert deploy(policy_server, "echo after").ok


def test_max_connections_per_identity(policy_server):
    clients = [rexec.BlockingClient(policy_server.address, token=DEPLOY_TOKEN, identity="deploy")
               for _ in range(3)]
    try:
        clients[0].connect()
        clients[1].connect()
        with pytest.raises(RemoteError, match="max_connections"):
            clients[2].connect()
    finally:
        for c in clients:
            c.close()
    time.sleep(0.3)
    assert deploy(policy_server, "echo room again").ok


def test_argv_mode_runs_without_a_shell(policy_server):
    r = rexec.run(policy_server.address, "echo $HOME; id", token=OPS_TOKEN, identity="plain")
    assert r.stdout == b"$HOME; id\n"


def test_server_limits_on_environment_size_and_command_length(policy_server):
    with pytest.raises(CommandNotStarted, match="max_env_bytes"):
        deploy(policy_server, "echo x", env={"BIG": "x" * 500})
    with pytest.raises(CommandNotStarted, match="max_command_length"):
        deploy(policy_server, "echo " + "x" * 400)
    assert deploy(policy_server, "echo " + "x" * 200).ok


def test_audit_records_have_every_field_and_never_a_token(policy_server):
    deploy(policy_server, "printf abc")
    records = audit_records(policy_server)
    ran = [r for r in records if r.get("command") == "printf abc"][-1]
    for key in ("time", "identity", "peer", "command", "cwd", "decision", "exit_code", "signal",
                "timed_out", "stdout_bytes", "stderr_bytes", "duration"):
        assert key in ran, key
    assert ran["decision"] == "run"
    assert ran["stdout_bytes"] == 3
    text = policy_server.audit.read_text()
    assert DEPLOY_TOKEN not in text
    assert OPS_TOKEN not in text


def test_a_server_without_its_audit_log_does_not_start(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    shared = tmp_path / "shared.jsonl"
    shared.write_text("")
    shared.chmod(0o644)
    for path, expected in ((not_a_dir / "audit.jsonl", "Not a directory"),
                           (shared, "accessible by others")):
        r = subprocess.run([sys.executable, str(ROOT / "server.py"), "--port", "0",
                            "--audit-log", str(path)], capture_output=True, timeout=30,
                           env={**os.environ, "REXEC_TOKEN": DEPLOY_TOKEN})
        assert r.returncode == 2, r.stderr
        assert str(path).encode() in r.stderr
        assert expected.encode() in r.stderr
        assert b"listening" not in r.stdout


def test_the_audit_log_is_created_private(policy_server):
    assert stat.S_IMODE(policy_server.audit.stat().st_mode) == 0o600


def test_an_audit_log_that_fails_refuses_commands_until_it_recovers(tmp_path):
    audit = tmp_path / "audit.jsonl"
    # Larger than the server's own log will grow, so the size limit below fails only the audit.
    audit.write_text('{"event": "padding"}\n' * 50_000)
    audit.chmod(0o600)
    srv = start_server(tmp_path, "--audit-log", str(audit))
    try:
        assert rexec.run(srv.address, "echo audited", token=srv.token).ok
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # the file may not grow any more: every further write fails with EFBIG
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (audit.stat().st_size, hard))
        marker = tmp_path / "ran"
        with pytest.raises(CommandNotStarted, match="audit log") as info:
            rexec.run(srv.address, f"touch {marker}", token=srv.token)
        assert info.value.code == "audit_unavailable"
        assert not marker.exists()
        assert "audit_write_failed" in srv.log()
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        assert rexec.run(srv.address, f"touch {marker}", token=srv.token).ok
        assert marker.exists()
        assert "audit_write_recovered" in srv.log()
        assert any(r.get("command") == f"touch {marker}" for r in
                   map(json.loads, audit.read_text().splitlines()))
    finally:
        assert srv.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_another_user(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f"""[server.identities.guest]
token_hash = "{TokenVerifier.from_token(DEPLOY_TOKEN).format()}"
run_as = "nobody"
cwd = ["/tmp"]
""")
    srv = start_server(tmp_path, "--config", str(config))
    try:
        r = rexec.run(srv.address, 'id -un; echo "$HOME"', token=DEPLOY_TOKEN,
                      identity="guest")
        assert r.stdout.splitlines()[0] == b"nobody"
        assert r.stdout.splitlines()[1] == b"/nonexistent"  # nobody's home, set for the child
        status = Path(f"/proc/{srv.proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["0", "0", "0", "0"]  # the server itself stayed root
    finally:
        assert srv.stop() == 0


def test_certificate_identity_needs_no_token(tmp_path):
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("robot@example.com", common_name="robot")
    paths = {}
    for name, blob in (("ca", ca.cert_pem), ("srv.crt", server_cert.cert_chain_pems[0]),
                       ("srv.key", server_cert.private_key_pem),
                       ("cli.crt", client_cert.cert_chain_pems[0]),
                       ("cli.key", client_cert.private_key_pem)):
        paths[name] = tmp_path / name
        blob.write_to_path(paths[name])
        paths[name].chmod(0o600)
    config = tmp_path / "server.toml"
    # first learn the subject string the server sees, from its log
    probe = start_server(tmp_path, "--tls-cert", str(paths["srv.crt"]), "--tls-key",
                         str(paths["srv.key"]), "--tls-client-ca", str(paths["ca"]))
    try:
        rexec.run(probe.address, "true", token=probe.token, tls_ca=paths["ca"],
                  tls_cert=paths["cli.crt"], tls_key=paths["cli.key"])
        line = next(li for li in probe.log().splitlines() if '"authenticated"' in li)
        subject_text = json.loads(line.split(" ", 4)[-1])["subject"]
    finally:
        assert probe.stop() == 0
    assert "CN=robot" in subject_text
    config.write_text(f"[server.identities.robot]\ncertificate = {json.dumps(subject_text)}\n")
    (tmp_path / "server.log").unlink()
    srv = start_server(tmp_path, "--config", str(config), "--tls-cert", str(paths["srv.crt"]),
                       "--tls-key", str(paths["srv.key"]), "--tls-client-ca", str(paths["ca"]))
    try:
        with rexec.BlockingClient(srv.address, tls_ca=paths["ca"], tls_cert=paths["cli.crt"],
                                  tls_key=paths["cli.key"], token=None) as c:
            assert c.run("echo robot").stdout == b"robot\n"
        assert '"identity": "robot"' in srv.log()
    finally:
        assert srv.stop() == 0
