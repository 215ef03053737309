"""Hosts in network namespaces of their own: ``rexec run PATTERN`` across a real link.

Where the tests run as root with ``ip netns``, each of three "hosts" is a network namespace
with a veth pair to this one, an address of its own (10.X.K.2, a /30 nobody else uses) and a
real ``rexec-server`` inside, over TLS as off loopback it must be. Deleting a host's link
mid-run makes it vanish without a FIN or a RST, as a cut cable or a dead machine does: the
fleet run must report it unreachable (its output so far kept) within the keepalive bound,
while the other hosts finish. Skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, stop_process, write_token
from tests.netns import free_subnet, ip, netns_unavailable

COUNT = 3
KEEPALIVE = 2  # seconds: a dead host is given up after about 2 + 3 * 1 s


@dataclass
class NsHost:
    name: str  # the inventory name: ns1, ns2...
    namespace: str
    link: str  # the veth end in this namespace (deleting it deletes the pair)
    address: str
    port: int
    server: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def netns_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[NsHost], Path]]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    import trustme

    folder = tmp_path_factory.mktemp("netns")
    token_file = write_token(folder / "token")
    x, tag = free_subnet(), os.getpid() % 100000
    # off loopback, the server wants TLS: one certificate for the three addresses
    ca = trustme.CA()
    cert = ca.issue_cert(*(f"10.{x}.{k}.2" for k in range(1, COUNT + 1)))
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "server.crt", folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    key_pem.chmod(0o600)
    hosts: list[NsHost] = []
    namespaces: list[str] = []
    try:
        for k in range(1, COUNT + 1):
            ns, link, peer = f"rexec-{tag}-{k}", f"rx{tag}h{k}", f"rx{tag}n{k}"
            namespaces.append(ns)
            near, far = f"10.{x}.{k}.1", f"10.{x}.{k}.2"
            ip("netns", "add", ns)
            ip("link", "add", link, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", ns)
            ip("addr", "add", f"{near}/30", "dev", link)
            ip("link", "set", link, "up")
            ip("-n", ns, "addr", "add", f"{far}/30", "dev", peer)
            ip("-n", ns, "link", "set", peer, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            log = (folder / f"{ns}.log").open("wb")
            server = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(ROOT / "server.py"),
                 "--host", far, "--port", "0", "--token-file", str(token_file),
                 "--tls-cert", str(cert_pem), "--tls-key", str(key_pem)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT)
            log.close()
            assert server.stdout is not None
            line = server.stdout.readline().decode()
            if not line.startswith("listening on "):
                stop_process(server, 5)
                raise RuntimeError(f"the server in {ns} did not start: {line!r}\n"
                                   + (folder / f"{ns}.log").read_text())
            port = int(line.split()[-1].rpartition(":")[2])
            hosts.append(NsHost(f"ns{k}", ns, link, far, port, server))
        tables = [f'[defaults]\ntoken_file = "{token_file}"\ntls_ca = "{ca_pem}"\n'
                  f"connect_timeout = 5\nkeepalive = {KEEPALIVE}\n"]
        tables += [f'[hosts.{h.name}]\naddress = "{h.address}"\nport = {h.port}\n'
                   for h in hosts]
        inventory = folder / "inventory.toml"
        inventory.write_text("\n".join(tables))
        yield hosts, inventory
    finally:
        for host in hosts:
            stop_process(host.server, 10)
        for k, ns in enumerate(namespaces, 1):
            ip("link", "del", f"rx{tag}h{k}", check=False)
            ip("netns", "del", ns, check=False)


def _rexec(inventory: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "client.py"), "run", "--inventory", str(inventory),
            *args]


def test_a_host_whose_link_is_cut_mid_run_is_unreachable_with_its_output_kept(
        netns_hosts: tuple[list[NsHost], Path]) -> None:
    hosts, inventory = netns_hosts
    # every host prints "start", then "end" 4 s later: ns3's link is cut in between
    argv = _rexec(inventory, "-n", "ns[1-3]", "--", "echo start; sleep 4; echo end")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    started = set()
    try:
        deadline = time.monotonic() + 20
        while len(started) < COUNT and time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            assert line, f"the run ended early: {proc.stderr.read() if proc.stderr else ''!r}"
            assert line.endswith(": start\n"), line
            started.add(line.split(":")[0])
        assert started == {"ns1", "ns2", "ns3"}
        cut = time.monotonic()
        ip("link", "del", hosts[2].link)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - cut
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err  # one host unreachable
    lines = out.decode().splitlines()
    assert sorted(lines) == ["ns1: end", "ns2: end"]
    summary = err.decode()
    assert "unreachable" in summary and "ns3" in summary, summary
    assert "connection lost" in summary, summary
    # given up within the keepalive bound (2 s idle, 3 probes 1 s apart, or the user timeout),
    # never the kernel's default of many minutes
    assert took < 4 + KEEPALIVE * 4 + 5, took


def test_a_host_whose_link_is_gone_before_the_run_is_unreachable_at_once(
        netns_hosts: tuple[list[NsHost], Path]) -> None:
    hosts, inventory = netns_hosts
    if ip("link", "show", hosts[2].link, check=False).returncode == 0:
        ip("link", "del", hosts[2].link)  # when run alone
    started = time.monotonic()
    done = subprocess.run(_rexec(inventory, "-n", "--json", "ns[1-3]", "--", "echo $((6*7))"),
                          capture_output=True, timeout=30, cwd=ROOT, check=False)
    took = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    by_host = {o["host"]: o for o in map(json.loads, done.stdout.decode().splitlines())}
    assert set(by_host) == {"ns1", "ns2", "ns3"}
    for name in ("ns1", "ns2"):
        assert by_host[name]["status"] == "ok"
        assert by_host[name]["stdout"] == "42\n"
    lost = by_host["ns3"]
    assert lost["status"] == "unreachable"
    assert lost["exit_code"] is None
    assert "cannot connect" in lost["error"] or "unreachable" in lost["error"], lost["error"]
    assert took < 5 + 3, took  # no route: refused at once, not after the connect timeout
