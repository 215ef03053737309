"""Unauthenticated connections cannot make the server buffer what they send (security review,
issue 9, item 4), and what a real client sends ahead is never left behind.

The attack: a source earns the failed-login penalty with a few wrong tokens, then opens bursts of
64 connections, each sending its hello followed by megabytes of junk or a huge declared header.
The server holds each of them for the penalty before it answers the hello; a server that kept
reading its sockets meanwhile would buffer every byte they send. Its resident memory must stay
flat, at its peak too, and a real client must still be served, over plaintext and over TLS.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import rexec
from rexec import AuthenticationError
from rexec.client.core import ClientCore
from rexec.wire.codec import FrameDecoder, encode
from rexec.wire.frames import Header, Run
from tests.helpers import (
    ServerProcess,
    fd_count,
    proc_status,
    start_server,
    wait_until,
    write_server_pki,
)

MIB = 1024 * 1024
ATTACKER = "127.0.0.2"  # a loopback address of its own: the penalty is per source
FAILURES = 4  # wrong tokens first: the attacker's later connections then wait 2 s each
BURSTS = 3
BURST = 64
JUNK = 4 * MIB  # what each connection tries to send after its hello
CHUNK = 64 * 1024
GROWTH_LIMIT = 25 * MIB
"""How far above its resting RSS the server may be, after the bursts and at its peak."""


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(CA, server certificate, server key) for 127.0.0.1."""
    yield write_server_pki(tmp_path_factory.mktemp("pki"))


def connect(srv: ServerProcess, ca: Path | None, timeout: float) -> socket.socket:
    """A connection from the attacker's address, in TLS when ``ca`` is given."""
    sock = socket.create_connection((srv.host, srv.port), timeout=timeout,
                                    source_address=(ATTACKER, 0))
    if ca is None:
        return sock
    try:
        return ssl.create_default_context(cafile=str(ca)).wrap_socket(
            sock, server_hostname=srv.host)
    except BaseException:
        sock.close()
        raise


def wrong_login(srv: ServerProcess, ca: Path | None) -> None:
    """One complete handshake with a wrong token, from the attacker's address."""
    core = ClientCore("wrong-token")
    with connect(srv, ca, timeout=15) as sock, pytest.raises(AuthenticationError):
        while True:
            event = core.next_event()  # raises at the server's auth_failed
            if out := core.data_to_send():
                sock.sendall(out)
            if event is None:
                data = sock.recv(65536)
                if data:
                    core.receive_data(data)
                else:
                    core.receive_eof()


def pour(srv: ServerProcess, ca: Path | None, kind: str, until: float) -> int:
    """One hostile connection: hello, then junk (``kind``) while it can; held until ``until``.

    Returns how many bytes it got the kernel to take (-1: it could not connect).
    """
    try:
        sock = connect(srv, ca, timeout=5)
    except OSError:
        return -1
    sent = 0
    with sock:
        sock.settimeout(0.5)
        head = ClientCore("any-token").data_to_send()  # the hello: the server then waits
        if kind == "huge-header":
            head += struct.pack(">I", 0xFFFF) + b'{"type":"hello"' + b" " * 0xFFF0
        junk = os.urandom(CHUNK) if kind == "garbage" else b" " * CHUNK
        with contextlib.suppress(OSError):  # timeouts included: the server stopped reading
            sock.sendall(head)
            sent = len(head)
            while sent < JUNK and time.monotonic() < until:
                sock.sendall(junk)
                sent += len(junk)
        while time.monotonic() < until:  # stay while the server holds us in the penalty
            try:
                if not sock.recv(65536):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
    return sent


def attack(srv: ServerProcess, ca: Path | None) -> str:
    """The penalty, then the bursts; checks the server's memory; returns the figures."""
    pid = srv.proc.pid
    for _ in range(FAILURES):
        wrong_login(srv, ca)
    time.sleep(0.5)
    fds = fd_count(pid)
    baseline = proc_status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM restarts from VmRSS
    figures = [f"baseline {baseline / MIB:.1f} MiB"]
    kinds = ["garbage", "huge-header"] * (BURST // 2)
    with ThreadPoolExecutor(BURST) as pool:
        for burst in range(BURSTS):
            until = time.monotonic() + 3.0
            sent = list(pool.map(functools.partial(pour, srv, ca, until=until), kinds))
            assert min(sent) > 0, f"burst {burst}: some connections could not pour: {sent}"
            assert wait_until(lambda: fd_count(pid) <= fds + 2, timeout=20), fd_count(pid)
            figures.append(f"burst {burst + 1}: RSS {proc_status(pid, 'VmRSS') / MIB:.1f} MiB"
                           f" ({sum(sent) / MIB:.0f} MiB sent)")
    grown = proc_status(pid, "VmRSS") - baseline
    peak = proc_status(pid, "VmHWM") - baseline
    figures.append(f"peak {proc_status(pid, 'VmHWM') / MIB:.1f} MiB")
    report = "; ".join(figures)
    print(report)
    assert srv.proc.poll() is None, f"the server died: {srv.log()[-3000:]}"
    assert grown < GROWTH_LIMIT, f"RSS grew by {grown / MIB:.1f} MiB: {report}"
    assert peak < GROWTH_LIMIT, f"RSS peaked {peak / MIB:.1f} MiB above the baseline: {report}"
    return report


def start(tmp_path: Path, *extra: str) -> ServerProcess:
    config = tmp_path / "server.toml"
    config.write_text("[server]\n" + "\n".join([
        "auth_penalty_max = 2",
        "handshake_timeout = 30",  # the penalty, not the deadline, is what holds them
        # room for every burst: the memory bound must hold for connections the gate lets in
        "max_startups = 1000",
        "per_source_max_startups = 1000",
    ]) + "\n")
    return start_server(tmp_path, "--config", str(config), *extra)


def test_penalised_connections_pouring_junk_leave_memory_flat(tmp_path):
    srv = start(tmp_path)
    try:
        assert rexec.run(srv.address, "true", token=srv.token).exit_code == 0  # warm up
        attack(srv, None)
        result = rexec.run(srv.address, "echo ok", token=srv.token, connect_timeout=5)
        assert result.stdout == b"ok\n"
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]


def test_penalised_tls_connections_pouring_junk_leave_memory_flat(tmp_path, ca_file):
    ca, cert, key = ca_file
    srv = start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert rexec.run(srv.address, "true", token=srv.token, tls_ca=ca).exit_code == 0
        attack(srv, ca)
        result = rexec.run(srv.address, "echo ok", token=srv.token, tls_ca=ca, connect_timeout=5)
        assert result.stdout == b"ok\n"
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]


def test_a_command_sent_with_the_auth_is_not_left_behind(tmp_path, ca_file):
    # Before auth_ok the server reads 4 KiB at a time, and TLS passes on 4 KiB of what it
    # decrypted; a long run frame right behind the auth, in the same TLS record, must still be
    # read once the client is authenticated: nothing will come from the socket to say so.
    ca, cert, key = ca_file
    srv = start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        for attempt in range(3):
            core = ClientCore(srv.token)
            with connect(srv, ca, timeout=10) as sock:
                sock.sendall(core.data_to_send())  # hello
                while (out := core.data_to_send()) == b"":  # until the challenge is answered
                    data = sock.recv(65536)
                    assert data, "the server closed the connection"
                    core.receive_data(data)
                    assert core.next_event() is None
                command = f"echo {'x' * 20_000} >/dev/null; echo done{attempt}"
                sock.sendall(out + encode(Run(command=command)))  # auth, run: one write
                decoder, frames = FrameDecoder(), list[Header]()
                while not frames or frames[-1].type != "exit":
                    data = sock.recv(65536)
                    assert data, f"the server closed the connection after {frames}"
                    decoder.feed(data)
                    while (frame := decoder.next_frame()) is not None:
                        frames.append(frame.header)
                        if frame.header.type == "stdout":
                            assert bytes(frame.body) == f"done{attempt}\n".encode()
            assert [f.type for f in frames] == ["auth_ok", "stdout", "exit"], frames
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]
