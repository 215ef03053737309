"""rexec-server as a process: start-up, tokens, config, logging, and frames that break the rules."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

from rexec.wire.codec import FrameDecoder, encode
from rexec.wire.frames import Error, Hello, Run
from tests.helpers import ROOT, TOKEN, run_cli, start_server, write_token


def read_frames(sock: socket.socket, timeout: float = 10.0) -> list:
    """Everything the server sends until it closes the connection, as frames."""
    sock.settimeout(timeout)
    decoder = FrameDecoder()
    frames = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # it closed with our bytes unread: closed all the same
            break
        if not data:
            break
        decoder.feed(data)
        while (frame := decoder.next_frame()) is not None:
            frames.append((frame.header, bytes(frame.body)))
    return frames


def send_raw(server, payload: bytes) -> list:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(payload)
        return read_frames(sock)


def assert_still_serving(server, tmp_path) -> None:
    token_file = write_token(tmp_path / "tok")
    r = run_cli("run", "--token-file", str(token_file), server.address, "--", "echo alive")
    assert (r.returncode, r.stdout) == (0, b"alive\n"), r.stderr


HELLO = encode(Hello(versions=[1], nonce="ab" * 32))


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (struct.pack(">I", 0), "bad_length"),
        (struct.pack(">I", 0xFFFFFFFF), "bad_length"),
        (struct.pack(">I", 64 * 1024 + 1), "bad_length"),
        (struct.pack(">I", 5) + b"\xff\xfe\xfd\xfc\xfb", "bad_header"),
        (struct.pack(">I", 8) + b"not json", "bad_header"),
        (struct.pack(">I", 2) + b"[]", "bad_header"),
        (struct.pack(">I", 30) + b'{"type":"hello","type":"hello"}'[:30], "bad_header"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_length"),
        (encode(Run(command="touch /tmp/rexec-must-not-exist")), "unexpected_frame"),
        (HELLO + HELLO, "unexpected_frame"),
    ],
    ids=["len0", "len-max", "len-over-cap", "not-utf8", "not-json", "not-object", "dup-key",
         "http", "run-before-auth", "hello-twice"],
)
def test_bad_frames_get_one_error_frame_and_the_server_keeps_serving(server, tmp_path, payload,
                                                                     code):
    frames = send_raw(server, payload)
    errors = [h for h, _ in frames if isinstance(h, Error)]
    assert len(errors) == 1, frames
    assert errors[0].code == code
    assert errors[0].fatal
    assert not os.path.exists("/tmp/rexec-must-not-exist")
    assert_still_serving(server, tmp_path)


@pytest.mark.parametrize(("depth", "code"), [(4000, "bad_header"), (60000, "bad_length")])
def test_nested_json_header_does_not_crash(server, tmp_path, depth, code):
    # Before authentication a header over 4 KiB is refused unread; one under it is parsed.
    header = b"[" * depth
    frames = send_raw(server, struct.pack(">I", len(header)) + header)
    assert [h.code for h, _ in frames] == [code]
    assert_still_serving(server, tmp_path)


def test_body_shorter_than_declared_then_eof(server, tmp_path):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        raw = json.dumps({"type": "stdin", "size": 1000}).encode()
        sock.sendall(struct.pack(">I", len(raw)) + raw + b"x" * 10)
        sock.shutdown(socket.SHUT_WR)
        read_frames(sock)
    assert_still_serving(server, tmp_path)


def test_valid_frames_one_byte_at_a_time(server):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in HELLO:
            sock.sendall(bytes([byte]))
        sock.settimeout(10)
        decoder = FrameDecoder()
        while (frame := decoder.next_frame()) is None:
            decoder.feed(sock.recv(4096))
    assert frame.header.type == "challenge"


def test_handshake_deadline(tmp_path):
    srv = start_server(tmp_path, "--config", str(_config(tmp_path, "handshake_timeout = 1")))
    try:
        with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
            started = time.monotonic()
            frames = read_frames(sock)
        assert [h.code for h, _ in frames] == ["handshake_timeout"]
        assert time.monotonic() - started < 5
    finally:
        assert srv.stop() == 0


def _config(tmp_path, *lines: str):
    path = tmp_path / "server.toml"
    path.write_text("[server]\n" + "\n".join(lines) + "\n")
    return path


def test_generates_a_private_token_when_none_is_configured(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "REXEC_HOME": str(home)}
    env.pop("REXEC_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on 127.0.0.1:")
        address = line.split()[-1]
        token_path = home / "token"
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        assert str(token_path).encode() in proc.stderr.readline()
        token = token_path.read_text().strip()
        assert len(token) >= 32
        # the client finds the generated token on its own, like ssh finds ~/.ssh keys
        r = run_cli("run", address, "--", "echo found", env={"REXEC_HOME": str(home)})
        assert (r.returncode, r.stdout) == (0, b"found\n"), r.stderr
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_empty_token_file_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "--port", "0", "--token-file",
                        str(empty)], capture_output=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    assert b"empty" in r.stderr


def test_config_file_sets_port_and_token(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_token(tmp_path / "cfg-token", "config-token-value")
    config = _config(tmp_path, f"port = {port}", 'token_file = "cfg-token"')
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == f"listening on 127.0.0.1:{port}"
        r = run_cli("run", f"127.0.0.1:{port}", "--", "echo cfg",
                    env={"REXEC_TOKEN": "config-token-value"})
        assert r.stdout == b"cfg\n"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_bad_config_names_file_and_field(tmp_path):
    config = _config(tmp_path, 'port = "eighty"', "colour = 1")
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "--config", str(config)],
                       capture_output=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    assert str(config).encode() in r.stderr
    assert b"port" in r.stderr
    assert b"colour" in r.stderr


def test_port_in_use_is_reported(server):
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "--port", str(server.port),
                        "--token-file", str(server.token_file)],
                       capture_output=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1
    assert b"cannot listen" in r.stderr


def test_one_structured_log_line_per_command(fresh_server, client_token_file):
    r = run_cli("run", "--token-file", str(client_token_file), fresh_server.address, "--",
                "printf 12345; exit 4")
    assert r.returncode == 4
    time.sleep(0.2)
    records = [json.loads(line.split(" ", 4)[-1]) for line in fresh_server.log().splitlines()
               if '"event": "command"' in line]
    assert len(records) == 1
    rec = records[0]
    assert rec["command"] == "printf 12345; exit 4"
    assert rec["exit_code"] == 4
    assert rec["stdout_bytes"] == 5
    assert rec["peer"].startswith("127.0.0.1:")
    assert rec["duration"] >= 0
    assert TOKEN not in fresh_server.log()


def test_timeout_sigkills_a_command_that_ignores_sigterm(tmp_path, client_token_file):
    srv = start_server(tmp_path, "--config", str(_config(tmp_path, "kill_grace = 1")))
    try:
        started = time.monotonic()
        r = run_cli("run", "--timeout", "0.5", "--token-file", str(client_token_file),
                    srv.address, "--", "trap '' TERM; echo trapped; sleep 30; echo never")
        elapsed = time.monotonic() - started
        assert r.returncode == 124
        assert r.stdout == b"trapped\n"
        assert elapsed < 10
    finally:
        assert srv.stop() == 0
