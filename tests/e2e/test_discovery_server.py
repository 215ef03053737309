"""rexec-server's UDP responder, as a real process: on every address, off with --no-discovery,
garbage unanswered and counted, authenticated replies for the server's own token."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from rexec.discovery.datagrams import (
    RECEIVE_BUFFER,
    Probe,
    authenticated_probe,
    encode_probe,
    new_nonce,
    parse_reply,
    reply_is_genuine,
)
from tests.helpers import TOKEN, start_server


def _ask(address: str, data: bytes, timeout: float = 1.0) -> bytes | None:
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, (host, int(port)))
        try:
            return sock.recv(RECEIVE_BUFFER)
        except TimeoutError:
            return None


def _udp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as fh:
            inodes |= {line.split()[9] for line in list(fh)[1:]}
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def test_every_address_answers_and_garbage_is_counted_not_answered(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--host", "127.0.0.1", "--host", "127.0.0.3", listeners=2)
    try:
        for address in server.addresses:
            probe = Probe(nonce=new_nonce(), identity="default")
            reply = parse_reply(_ask(address, encode_probe(probe)) or b"")
            assert reply.nonce == probe.nonce and reply.port == int(address.rpartition(":")[2])
            assert not reply.auth and reply.salt is not None and not reply.tls
            for garbage in (b"", b"not json", b"{" * 1500):
                assert _ask(address, garbage, timeout=0.3) is None
            signed = authenticated_probe(TOKEN, bytes.fromhex(reply.salt), "default",
                                         int(time.time() * 1000))
            rich = parse_reply(_ask(address, encode_probe(signed)) or b"")
            assert rich.auth and rich.running == 0 and rich.version
            assert reply_is_genuine(rich, signed, TOKEN, bytes.fromhex(reply.salt))
            replayed = parse_reply(_ask(address, encode_probe(signed)) or b"")
            assert not replayed.auth and replayed.name is None
    finally:
        server.stop()
    stopped = [json.loads(line.split(" ", 4)[4]) for line in server.log().splitlines()
               if '"discovery_stopped"' in line]
    assert stopped == [{"event": "discovery_stopped", "answered": 6, "authenticated": 2,
                        "empty": 2, "not_json": 2, "oversize": 2, "replayed": 2}]


def test_no_discovery_binds_no_udp_socket(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--no-discovery")
    try:
        assert not _socket_inodes(server.proc.pid) & _udp_inodes()
        assert _ask(server.address, encode_probe(Probe(nonce=new_nonce())), 0.3) is None
    finally:
        server.stop()
    on = start_server(tmp_path)
    try:
        assert _socket_inodes(on.proc.pid) & _udp_inodes()
    finally:
        on.stop()
