"""Session faults found by writing the protocol doc: stdin flow control, errors mid-handshake,
and a fatal error while output is backed up."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import rexec
from rexec.client.core import Authenticated, ClientCore
from rexec.wire.codec import FrameDecoder, encode
from rexec.wire.frames import Error, Hello
from tests.helpers import ROOT, pids_in_group, reap, run_cli, wait_until


def test_cancel_is_not_stuck_behind_stdin_the_command_never_reads(server):
    with rexec.BlockingClient(server.address, token=server.token) as c:
        timer = threading.Timer(1.0, c.request_cancel)
        timer.start()
        started = time.monotonic()
        try:
            r = c.run("sleep 30", stdin=b"z" * 20_000_000)
        finally:
            timer.cancel()
        assert time.monotonic() - started < 10
        assert r.signal == 15
        assert c.run("echo next").stdout == b"next\n"


def test_ctrl_c_with_unread_stdin_exits_130_promptly(server, client_token_file, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"y" * 30_000_000)
    pidfile = tmp_path / "pid"
    with big.open("rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "client.py"), "run", "--token-file",
             str(client_token_file), server.address, "--",
             f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile}; sleep 60"],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    try:
        assert wait_until(pidfile.exists, timeout=20)
        pgid = int(pidfile.read_text())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 130
        assert wait_until(lambda: not pids_in_group(pgid))
    finally:
        reap(proc)


def _authenticated_socket(server) -> tuple[socket.socket, ClientCore]:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    core = ClientCore(server.token)
    while True:
        event = core.next_event()
        sock.sendall(core.data_to_send())
        if isinstance(event, Authenticated):
            return sock, core
        core.receive_data(sock.recv(65536))


def test_client_error_frame_during_handshake_is_handled(fresh_server, client_token_file):
    with socket.create_connection((fresh_server.host, fresh_server.port), timeout=10) as sock:
        sock.sendall(encode(Hello(versions=[1], nonce="cd" * 32)))
        decoder = FrameDecoder()
        while (frame := decoder.next_frame()) is None:
            decoder.feed(sock.recv(4096))
        assert frame.header.type == "challenge"
        sock.sendall(encode(Error(code="client_gave_up", message="bye")))
        assert sock.recv(4096) == b""  # closed, no reply
    r = run_cli("run", "--token-file", str(client_token_file), fresh_server.address, "--",
                "echo fine")
    assert r.stdout == b"fine\n"
    assert "Traceback" not in fresh_server.log()
    assert "Unhandled" not in fresh_server.log()


def test_fatal_error_while_output_is_backed_up_leaves_the_server_healthy(fresh_server):
    sock, core = _authenticated_socket(fresh_server)
    with sock:
        core.start("yes")
        sock.sendall(core.data_to_send())
        time.sleep(1.0)  # let the server's send buffer fill while we do not read
        sock.sendall(b"\x00\x00\x00\x05garbg")  # a protocol error: the server must give up
        sock.settimeout(10)
        decoder = FrameDecoder()
        codes = []
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                if frame.header.type == "error":
                    codes.append(frame.header.code)
    assert codes == ["bad_header"]
    for n in range(3):  # later commands get their pipes watched properly
        r = rexec.run(fresh_server.address, f"echo hi {n}", token=fresh_server.token,
                      connect_timeout=5)
        assert r.stdout == f"hi {n}\n".encode()
    assert "Traceback" not in fresh_server.log()


def test_stdin_overflow_is_a_protocol_error(fresh_server):
    from rexec.wire.frames import MAX_BODY_SIZE, Stdin

    sock, core = _authenticated_socket(fresh_server)
    with sock:
        core.start("sleep 10", stdin=True)
        sock.sendall(core.data_to_send())
        body = b"o" * MAX_BODY_SIZE
        for _ in range(2):  # two full frames: twice the window, no credit asked
            sock.sendall(core.conn.send(Stdin(size=len(body)), body))
        sock.settimeout(15)
        decoder = FrameDecoder()
        codes = []
        while data := sock.recv(65536):
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                if frame.header.type == "error":
                    codes.append(frame.header.code)
    assert codes == ["stdin_overflow"]
