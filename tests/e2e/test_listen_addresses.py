"""One server process listening on several addresses (``--host`` given more than once)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rexec
from tests.helpers import ROOT, TOKEN, start_server

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def test_a_server_given_three_hosts_serves_a_command_on_each(tmp_path: Path) -> None:
    extra = [arg for host in HOSTS for arg in ("--host", host)]
    server = start_server(tmp_path, *extra, env={"REXEC_HOME": str(tmp_path)},
                          listeners=len(HOSTS))
    try:
        # one line each, in the order given; with --port 0 each host has a port of its own
        assert [address.rpartition(":")[0] for address in server.addresses] == list(HOSTS)
        for address in server.addresses:
            with rexec.BlockingClient(address, token=TOKEN) as client:
                result = client.run(f"echo served on {address}")
            assert (result.exit_code, result.stdout) == (0, f"served on {address}\n".encode())
    finally:
        assert server.stop() == 0, server.log()


def test_a_host_list_in_the_config_file_and_one_fixed_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port free on 127.0.0.2; the others are likely free too
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nhost = ["127.0.0.2", "[::1]"]\nport = {port}\n')
    server = start_server(tmp_path, "--config", str(config), "--port", str(port),
                          env={"REXEC_HOME": str(tmp_path)}, listeners=2)
    try:
        assert server.addresses == [f"127.0.0.2:{port}", f"[::1]:{port}"]
        with rexec.BlockingClient(f"[::1]:{port}", token=TOKEN) as client:
            assert client.run("true").exit_code == 0
    finally:
        assert server.stop() == 0, server.log()


def test_the_same_host_twice_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.2",
                           "--host", "127.0.0.2", "--port", "0"], capture_output=True,
                          text=True, timeout=30, cwd=ROOT, env={"REXEC_HOME": str(tmp_path),
                                                                "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "rexec-server: --host: 127.0.0.2 given twice"
