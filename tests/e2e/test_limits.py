"""Limits against abuse: the unauthenticated-connection cap, idle timeout, auth penalties."""

from __future__ import annotations

import socket
import time

import pytest

import rexec
from rexec import AuthenticationError, ConnectionLost, RemoteError
from tests.conftest import start_server


def _server(tmp_path, *settings: str):
    config = tmp_path / "server.toml"
    config.write_text("[server]\n" + "\n".join(settings) + "\n")
    return start_server(tmp_path, "--config", str(config))


def test_idle_unauthenticated_connections_make_room_for_a_real_client(tmp_path):
    srv = _server(tmp_path, "max_startups = 20", "handshake_timeout = 60")
    sockets = []
    try:
        for _ in range(200):  # idle squatters, ten times the cap
            sockets.append(socket.create_connection((srv.host, srv.port), timeout=10))
        started = time.monotonic()
        assert rexec.run(srv.address, "echo in", token=srv.token).stdout == b"in\n"
        assert time.monotonic() - started < 10
        # the oldest squatters were dropped to make room
        sockets[0].settimeout(10)
        assert sockets[0].recv(1) == b""
        assert "dropped" in srv.log()
    finally:
        for s in sockets:
            s.close()
        assert srv.stop() == 0


def test_trickling_connections_do_not_lock_out_a_real_client(tmp_path):
    srv = _server(tmp_path, "max_startups = 10", "handshake_timeout = 60")
    sockets = []
    try:
        for _ in range(30):
            s = socket.create_connection((srv.host, srv.port), timeout=10)
            s.sendall(b"\x00")  # one byte of a length, then nothing for a long time
            sockets.append(s)
        assert rexec.run(srv.address, "echo through", token=srv.token).stdout == b"through\n"
    finally:
        for s in sockets:
            s.close()
        assert srv.stop() == 0


def test_idle_authenticated_connections_are_closed_but_running_ones_are_not(tmp_path):
    srv = _server(tmp_path, "idle_timeout = 1")
    try:
        with rexec.BlockingClient(srv.address, token=srv.token) as busy:
            assert busy.run("sleep 2; echo done").stdout == b"done\n"  # longer than idle
            time.sleep(2.0)  # now idle past the limit
            with pytest.raises((RemoteError, ConnectionLost)):
                busy.run("echo too late")
        assert "idle_timeout" in srv.log()
    finally:
        assert srv.stop() == 0


def test_failed_authentications_are_penalised_capped_and_forgiven(tmp_path):
    srv = _server(tmp_path, "auth_penalty_max = 1.0")
    try:
        durations = []
        for _ in range(6):
            started = time.monotonic()
            with pytest.raises(AuthenticationError):
                rexec.run(srv.address, "true", token="wrong-token", connect_timeout=10)
            durations.append(time.monotonic() - started)
        assert max(durations) < 5  # every attempt is answered within seconds
        assert durations[-1] > durations[0] + 0.5  # and later ones wait for the penalty
        started = time.monotonic()
        assert rexec.run(srv.address, "echo right", token=srv.token).stdout == b"right\n"
        assert time.monotonic() - started < 5  # the right token still works, within the cap
        assert '"recent_failures": 6' in srv.log()
    finally:
        assert srv.stop() == 0
