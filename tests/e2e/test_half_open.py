"""A client that vanishes without a FIN or RST is found by TCP keepalive, and its command dies.

The client runs in a network namespace of the test's own, joined to the server by a veth pair;
deleting the veth makes the client vanish as a power cut would: no FIN, no RST. Needs root and
iproute2 (skipped otherwise). Traffic stays between the two ends of the test's own veth pair.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import ROOT, pids_in_group, reap, start_server, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns():
    tag = uuid.uuid4().hex[:6]
    ns, host_end, ns_end = f"rexec-{tag}", f"rxh{tag}", f"rxn{tag}"
    subnet = f"10.{int(tag[:2], 16) % 200 + 20}.{int(tag[2:4], 16)}"
    try:
        ip("netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", ns)
        ip("addr", "add", f"{subnet}.1/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", ns, "addr", "add", f"{subnet}.2/30", "dev", ns_end)
        ip("-n", ns, "link", "set", ns_end, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_end, f"{subnet}.1"
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_a_vanished_client_is_detected_and_its_command_killed(tmp_path, netns):
    ns, host_end, server_ip = netns
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nhost = "{server_ip}"\nkeepalive = 2\n'
                      "dangerously_allow_plaintext = true\nkill_grace = 1\n")
    srv = start_server(tmp_path, "--config", str(config))
    pidfile = tmp_path / "pid"
    token = tmp_path / "client-token"
    token.write_text(srv.token)
    token.chmod(0o600)
    client = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(ROOT / "client.py"), "run",
         "--token-file", str(token), srv.address, "--",
         f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile}; sleep 120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        assert wait_until(pidfile.exists, timeout=20), client.stderr
        pgid = int(pidfile.read_text())
        ip("link", "del", host_end)  # the client vanishes: no FIN, no RST ever reaches us
        # keepalive 2 s + 3 probes ~1 s apart: well under 20 s
        assert wait_until(lambda: not pids_in_group(pgid), timeout=20)
        assert "disconnected" in srv.log() or "connection" in srv.log()
    finally:
        reap(client)
        assert srv.stop() == 0
    assert not Path(f"/proc/{pgid}").exists()
