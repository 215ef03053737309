"""Limits against abuse: who may wait unauthenticated, the idle timeout, auth penalties.

Several loopback addresses stand for several sources: the cap on unauthenticated connections is
per source address (per_source_max_startups) as well as server-wide (max_startups).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import deque
from pathlib import Path

import pytest

import rexec
from rexec import AuthenticationError, ConnectionLost, RemoteError
from rexec.client.core import Authenticated, ClientCore, Finished
from rexec.wire.codec import FrameDecoder
from rexec.wire.frames import Header
from tests.helpers import ServerProcess, run_cli, start_server, wait_until, write_server_pki

ATTACKER, OTHER, DISTANT = "127.0.0.2", "127.0.0.3", "127.0.0.4"
"""Sources besides 127.0.0.1, where rexec.run and the CLI connect from."""


def _server(tmp_path, *settings: str, extra: tuple[str, ...] = ()) -> ServerProcess:
    config = tmp_path / "server.toml"
    config.write_text("[server]\n" + "\n".join(settings) + "\n")
    return start_server(tmp_path, "--config", str(config), *extra)


def connect_from(srv: ServerProcess, source: str, timeout: float = 10) -> socket.socket:
    """A connection to the server from the loopback address ``source``."""
    return socket.create_connection((srv.host, srv.port), timeout=timeout,
                                    source_address=(source, 0))


def frames_until_close(sock: socket.socket) -> list[Header]:
    """Every frame the server sends until it closes (a reset counts as a close)."""
    decoder, frames = FrameDecoder(), []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return frames
        decoder.feed(data)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame.header)


def still_waiting(sock: socket.socket) -> bool:
    """The server has neither closed ``sock`` nor sent on it."""
    return not select.select([sock], [], [], 0)[0]


def audit_records(path: Path, event: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["event"] == event]


def test_squatters_from_one_source_cannot_lock_out_another(tmp_path):
    srv = _server(tmp_path, 'max_startups = "20:30:40"', "per_source_max_startups = 10",
                  "handshake_timeout = 60", 'audit_log = "audit.jsonl"')
    sockets = []
    try:
        for _ in range(200):  # idle squatters from one source, twenty times its cap
            sockets.append(connect_from(srv, ATTACKER))
        started = time.monotonic()
        assert rexec.run(srv.address, "echo in", token=srv.token).stdout == b"in\n"
        assert time.monotonic() - started < 10
        # nobody is pushed out to make room: the first ten still wait...
        assert all(still_waiting(s) for s in sockets[:10])
        # ...and the rest were refused at once, and told why
        for sock in sockets[10:12] + sockets[-2:]:
            refused = frames_until_close(sock)
            assert [(f.type, f.code) for f in refused] == [("error", "too_many_startups")]
            assert "per_source_max_startups" in refused[0].message
        assert wait_until(lambda: srv.log().count('"code": "per_source_max_startups"') == 190)
    finally:
        for s in sockets:
            s.close()
        assert srv.stop() == 0
    refusals = audit_records(tmp_path / "audit.jsonl", "connection_refused")
    assert len(refusals) == 190
    assert {(r["code"], str(r["peer"]).partition(":")[0]) for r in refusals} == {
        ("per_source_max_startups", ATTACKER)}


def test_trickling_connections_from_two_sources_do_not_lock_out_a_third(tmp_path):
    srv = _server(tmp_path, 'max_startups = "12:30:40"', "per_source_max_startups = 5",
                  "handshake_timeout = 60")
    sockets = []
    try:
        for n in range(30):
            s = connect_from(srv, (ATTACKER, OTHER)[n % 2])
            s.sendall(b"\x00")  # one byte of a length, then nothing for a long time
            sockets.append(s)
        assert rexec.run(srv.address, "echo through", token=srv.token).stdout == b"through\n"
        assert all(still_waiting(s) for s in sockets[:10])  # five from each source wait on
    finally:
        for s in sockets:
            s.close()
        assert srv.stop() == 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1."""
    ca, cert, key = write_server_pki(tmp_path_factory.mktemp("pki"))
    return {"ca": ca, "cert": cert, "key": key}


BUSY = {  # the cap that is full: where the one connection already waiting comes from, and
    # the one line the CLI prints when it is refused
    "max_startups": (ATTACKER, b"rexec: server: busy: too many unauthenticated connections"
                               b" (max_startups), try again later\n"),
    "per_source_max_startups": ("127.0.0.1", b"rexec: server: busy: too many unauthenticated"
                                b" connections from your address (per_source_max_startups),"
                                b" try again later\n"),
    "tls": (ATTACKER, b"TLS handshake failed: the server closed the connection (it may be busy,"
                      b" with too many unauthenticated connections: try again later)\n"),
}


@pytest.mark.parametrize("case", list(BUSY))
def test_a_refused_client_says_the_server_is_busy(tmp_path, pki, client_token_file, case):
    squatter, expected = BUSY[case]
    settings = ["max_startups = 1", "handshake_timeout = 60"]
    if case == "per_source_max_startups":
        settings = ["per_source_max_startups = 1", "handshake_timeout = 60"]
    tls = ("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])) if case == "tls" else ()
    srv = _server(tmp_path, *settings, extra=tls)
    try:
        with connect_from(srv, squatter) as waiting:
            options = ("--tls-ca", str(pki["ca"])) if case == "tls" else ()
            r = run_cli("run", "--token-file", str(client_token_file), *options, srv.address,
                        "--", "echo must-not-run")
            assert (r.returncode, r.stdout) == (255, b""), r
            assert r.stderr.endswith(expected), r.stderr
            assert r.stderr.count(b"\n") == 1, r.stderr
            assert still_waiting(waiting)
        assert f'"code": "{"max_startups" if case == "tls" else case}"' in srv.log()
    finally:
        assert srv.stop() == 0


def churn(srv: ServerProcess, stop: threading.Event, opened: list[int], *, rate: float,
          limit: int, hold: float = 1.0) -> None:
    """New connections from ATTACKER, ``rate`` a second, each held ``hold`` seconds, until
    ``stop`` is set or ``limit`` have been opened."""
    held: deque[tuple[float, socket.socket]] = deque()
    next_at = time.monotonic()
    try:
        while not stop.is_set() and opened[0] < limit:
            try:
                sock = connect_from(srv, ATTACKER, timeout=2)
            except OSError:
                continue
            now = time.monotonic()
            held.append((now, sock))
            opened[0] += 1
            while held and held[0][0] < now - hold:
                held.popleft()[1].close()
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        for _, sock in held:
            sock.close()


def distant_client(srv: ServerProcess, command: str, delay: float = 0.15) -> bytes:
    """A client ``delay`` seconds away: each frame it sends leaves that long after what it
    answers arrived, so it stays unauthenticated for two such delays at least."""
    core = ClientCore(srv.token)
    with connect_from(srv, DISTANT) as sock:
        while True:
            event = core.next_event()
            if isinstance(event, Authenticated):
                core.start(command)
            if out := core.data_to_send():
                time.sleep(delay)
                sock.sendall(out)
            if isinstance(event, Finished):
                return event.result.stdout
            if event is None:
                data = sock.recv(65536)
                if data:
                    core.receive_data(data)
                else:
                    core.receive_eof()


def test_a_churn_from_one_source_does_not_shut_out_distant_clients(tmp_path):
    # The review's case: max_startups = 16, some 190 new connections a second from one
    # source, clients 150 ms away. Dropping the oldest to make room shut every client out.
    srv = _server(tmp_path, "max_startups = 16", "per_source_max_startups = 8")
    stop, opened = threading.Event(), [0]
    attacker = threading.Thread(target=churn, args=(srv, stop, opened),
                                kwargs={"rate": 200.0, "limit": 3000}, daemon=True)
    try:
        attacker.start()
        time.sleep(1.0)  # the churn is at full speed
        for n in range(5):
            assert distant_client(srv, f"echo ok{n}") == f"ok{n}\n".encode()
        assert rexec.run(srv.address, "echo near", token=srv.token).stdout == b"near\n"
        stop.set()
        attacker.join(30)
        assert opened[0] > 400  # the churn ran: some 200 a second for over two seconds
        assert srv.log().count('"code": "per_source_max_startups"') > opened[0] / 2
    finally:
        stop.set()
        attacker.join(30)
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
