"""The CLI a newcomer meets, against real servers (issue 11): -v says where things came from and
never a secret, timeouts and failed logins explain themselves, -q hushes rexec, the README's
Python snippet runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from rexec.wire.auth import TokenVerifier
from tests.helpers import ROOT, TOKEN, run_cli, start_server, write_token

OPS_TOKEN = "newcomer-ops-token-0123456789abcdef"


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("limited")
    config = tmp / "server.toml"
    config.write_text(f"""
[server.identities.ops]
token_hash = "{TokenVerifier.from_token(OPS_TOKEN).format()}"
max_timeout = 1
""")
    srv = start_server(tmp, "--config", str(config), env={"REXEC_HOME": str(tmp)})
    yield srv
    assert srv.stop() == 0, srv.log()


def test_verbose_says_where_everything_came_from_and_no_secret(server, tmp_path):
    token_file = write_token(tmp_path / "tok", server.token)
    r = run_cli("run", "-v", "--token-file", str(token_file), server.address, "--", "echo hi")
    assert r.returncode == 0 and r.stdout == b"hi\n"
    err = r.stderr.decode()
    assert f"rexec: token from --token-file {token_file}" in err
    assert f"connecting to {server.host} port {server.port} (plaintext)" in err
    assert re.search(r"logged in as default to rexec-server/\S+ \(connect [0-9.]+ ms, login"
                     r" [0-9.]+ ms\)", err), err
    assert re.search(r"ran in [0-9.]+ ms .*exit status 0", err), err
    assert server.token not in err


def test_verbose_names_the_environment_variable(server):
    r = run_cli("run", "-v", server.address, "--", "true", env={"REXEC_TOKEN": server.token})
    assert r.returncode == 0
    assert b"rexec: token from REXEC_TOKEN\n" in r.stderr
    assert server.token.encode() not in r.stderr


def test_a_failed_login_names_the_token_source_and_the_delay(limited_server):
    r = run_cli("run", "-i", "ops", limited_server.address, "--", "true",
                env={"REXEC_TOKEN": "not-the-ops-token-0123456789"})
    assert r.returncode == 255
    err = r.stderr.decode()
    assert err.count("\n") == 1, err
    assert "authentication failed" in err
    assert "tried identity 'ops' with the token from REXEC_TOKEN" in err
    assert "recent failure" in err and "delays its next logins by" in err


def test_the_clients_timeout_says_so(server):
    r = run_cli("run", "--timeout", "0.5", server.address, "--", "sleep 30",
                env={"REXEC_TOKEN": server.token})
    assert r.returncode == 124
    assert r.stderr == b"rexec: the command timed out after 0.5 s (--timeout 0.5) and was stopped\n"


def test_the_identitys_max_timeout_says_so_and_quiet_hushes_it(limited_server):
    env = {"REXEC_TOKEN": OPS_TOKEN}
    r = run_cli("run", "-i", "ops", "--timeout", "30", limited_server.address, "--", "sleep 30",
                env=env)
    assert r.returncode == 124
    assert re.fullmatch(rb"rexec: the server stopped the command after [0-9.]+ s: the time"
                        rb" limit of identity 'ops' \(its max_timeout\) is shorter than"
                        rb" --timeout 30\n", r.stderr), r.stderr
    quiet = run_cli("run", "-q", "-i", "ops", limited_server.address, "--", "sleep 30", env=env)
    assert quiet.returncode == 124 and quiet.stderr == b""


def test_json_says_the_status_rexec_exits_with(server):
    r = run_cli("run", "--json", "--timeout", "0.5", server.address, "--", "sleep 30",
                env={"REXEC_TOKEN": server.token})
    document = json.loads(r.stdout)
    assert r.returncode == document["exit_status"] == 124 and document["timed_out"]
    assert document["error"] is None


def test_the_readme_python_snippet_runs_as_written(server, tmp_path):
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'ADDRESS = "web1:7878"' in snippet
    home = tmp_path / "home"
    write_token((home / ".rexec").mkdir(parents=True) or home / ".rexec" / "token", TOKEN)
    code = snippet.replace('ADDRESS = "web1:7878"', f'ADDRESS = "{server.address}"', 1)
    env = {**os.environ, "HOME": str(home)}
    env.pop("REXEC_TOKEN", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert out.startswith(f"0 b'{os.uname().release}\\n' True\n")
    assert "stdout b'total" in out and "Filesystem" in out


def test_json_on_a_connection_failure_is_one_object(server):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    r = run_cli("run", "--json", f"127.0.0.1:{port}", "--", "true",
                env={"REXEC_TOKEN": server.token})
    assert r.returncode == 255
    document = json.loads(r.stdout)  # one object, alone on stdout
    assert document["exit_status"] == 255 and document["error_type"] == "ConnectError"
    assert document["error"].startswith(f"cannot connect to 127.0.0.1:{port}")


def test_json_after_ctrl_c_says_130(server, tmp_path):
    import signal
    import time

    marker = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--json", server.address, "--",
         f"touch {marker}; sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env={**os.environ, "REXEC_TOKEN": server.token})
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    document = json.loads(out)
    assert document["exit_status"] == 130 and document["signal"] is not None
