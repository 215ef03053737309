"""``rexec discover --broadcast`` across network namespaces on one bridge.

Where the tests run as root with ``ip netns``, four "hosts" are network namespaces, each
with a veth pair whose near end is a port of a Linux bridge in this namespace: one broadcast
domain, 10.X.0.0/24, the client at 10.X.0.1. Each host runs a real ``rexec-server`` on
0.0.0.0 (a socket bound to a single address never sees a broadcast) and the same port, as a
fleet does; three answer probes, the fourth runs with ``--no-discovery``. A single broadcast
from here must find exactly the three, each from its own address, with the names their
configs give when the probe is authenticated. Skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, stop_process, write_token
from tests.netns import free_subnet, ip, netns_unavailable

ANSWERING = 3  # hosts 1..3 answer; host 4 runs with --no-discovery
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 - inside a namespace of its own: broadcasts need it


@dataclass
class Domain:
    subnet: int  # X of 10.X.0.0/24
    port: int  # every server's port, TCP and UDP
    token_file: Path
    servers: list[subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def broadcast_domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Domain]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("netns-broadcast")
    token_file = write_token(folder / "token")
    x, tag = free_subnet(), os.getpid() % 100000
    port = 20000 + os.getpid() % 20000  # each namespace is a fresh stack: the port is free
    bridge = f"rxb{tag}"
    namespaces: list[str] = []
    links: list[str] = []
    servers: list[subprocess.Popen[bytes]] = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"10.{x}.0.1/24", "brd", f"10.{x}.0.255", "dev", bridge)
        ip("link", "set", bridge, "up")
        for k in range(1, ANSWERING + 2):
            ns, link, peer = f"rexec-b{tag}-{k}", f"rx{tag}b{k}", f"rx{tag}p{k}"
            namespaces.append(ns)
            ip("netns", "add", ns)
            ip("link", "add", link, "type", "veth", "peer", "name", peer)
            links.append(link)
            ip("link", "set", link, "master", bridge)
            ip("link", "set", link, "up")
            ip("link", "set", peer, "netns", ns)
            ip("-n", ns, "addr", "add", f"10.{x}.0.{k + 1}/24", "brd", f"10.{x}.0.255",
                "dev", peer)
            ip("-n", ns, "link", "set", peer, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            config = folder / f"server{k}.toml"
            config.write_text(f'[server]\nname = "node{k}"\n')
            flags = ["--no-discovery"] if k > ANSWERING else []
            log = (folder / f"{ns}.log").open("wb")
            server = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(ROOT / "server.py"),
                 "--config", str(config), "--host", EVERY_ADDRESS, "--port", str(port),
                 "--token-file", str(token_file), "--dangerously-allow-plaintext", *flags],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT)
            log.close()
            servers.append(server)
            assert server.stdout is not None
            line = server.stdout.readline().decode()
            if not line.startswith("listening on "):
                raise RuntimeError(f"the server in {ns} did not start: {line!r}\n"
                                   + (folder / f"{ns}.log").read_text())
        yield Domain(x, port, token_file, servers)
    finally:
        for server in servers:
            stop_process(server, 10)
        for link in links:
            ip("link", "del", link, check=False)
        for ns in namespaces:
            ip("netns", "del", ns, check=False)
        ip("link", "del", bridge, check=False)


def _discover(domain: Domain, *flags: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(ROOT / "client.py"), "discover", "--broadcast",
         f"10.{domain.subnet}.0.255", "--port", str(domain.port), "--timeout", "1.5",
         "--json", *flags],
        capture_output=True, timeout=30, cwd=ROOT, check=False,
        env={**os.environ, "REXEC_CONFIG": os.devnull, "REXEC_TOKEN": ""})


def test_one_broadcast_finds_every_answering_server_on_the_bridge(
        broadcast_domain: Domain) -> None:
    done = _discover(broadcast_domain, "--token-file", str(broadcast_domain.token_file))
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.decode().splitlines()]
    x = broadcast_domain.subnet
    # the three that answer, each once, from its own address; not the one with discovery off
    assert sorted(s["address"] for s in found) == [f"10.{x}.0.{k + 1}"
                                                   for k in range(1, ANSWERING + 1)]
    for server in found:
        k = int(server["address"].rpartition(".")[2]) - 1
        assert server["port"] == broadcast_domain.port
        assert server["authenticated"] is True
        assert server["forged"] is False
        assert server["name"] == f"node{k}"
        assert server["tls"] is False
    assert "3 servers answered" in done.stderr.decode()


def test_without_a_token_the_broadcast_gets_the_anonymous_replies(
        broadcast_domain: Domain) -> None:
    done = _discover(broadcast_domain)
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(found) == ANSWERING
    for server in found:
        assert server["authenticated"] is False
        assert server["name"] is None  # a stranger learns no name
        assert server["port"] == broadcast_domain.port
