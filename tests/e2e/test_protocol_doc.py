"""docs/protocol.md is enough to talk to a real server: a client written from it alone.

Nothing here imports rexec: the frames, the handshake and the proofs are rebuilt from the document
with the standard library only.
"""

import hashlib
import hmac
import json
import secrets
import socket
import struct

MAX_HEADER = 64 * 1024
MAX_BODY = 1024 * 1024
VERSION = 1
CLIENT_CONTEXT = b"rexec-v1 client proof"
SERVER_CONTEXT = b"rexec-v1 server proof"


def send_frame(sock: socket.socket, header: dict, body: bytes = b"") -> None:
    """4-byte big-endian header length, UTF-8 JSON header, then exactly ``size`` body bytes."""
    raw = json.dumps({**header, "size": len(body)}, separators=(",", ":")).encode("utf-8")
    sock.sendall(struct.pack(">I", len(raw)) + raw + body)


def recv_exactly(sock: socket.socket, count: int) -> bytes | None:
    """``count`` bytes, or None if the peer closed before sending any of them."""
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            assert not data, f"connection closed in the middle of a frame ({len(data)} bytes)"
            return None
        data += chunk
    return bytes(data)


def recv_frame(sock: socket.socket) -> tuple[dict, bytes] | None:
    """The next frame as (header, body), or None if the server closed between frames."""
    prefix = recv_exactly(sock, 4)
    if prefix is None:
        return None
    (length,) = struct.unpack(">I", prefix)
    assert 1 <= length <= MAX_HEADER
    raw = recv_exactly(sock, length)
    assert raw is not None
    header = json.loads(raw.decode("utf-8"))
    assert isinstance(header, dict)
    size = header["size"]
    assert 0 <= size <= MAX_BODY
    body = recv_exactly(sock, size) if size else b""
    assert body is not None
    return header, body


def proof(token: str, context: bytes, client_nonce: str, server_nonce: str) -> str:
    """HMAC-SHA256(token, server nonce || client nonce || version u16 BE || context), hex."""
    message = (
        bytes.fromhex(server_nonce)
        + bytes.fromhex(client_nonce)
        + VERSION.to_bytes(2, "big")
        + context
    )
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def connect(server) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def say_hello(sock: socket.socket) -> tuple[str, dict]:
    """Send hello; return our nonce and the server's challenge."""
    nonce = secrets.token_hex(32)
    send_frame(sock, {"type": "hello", "versions": [VERSION], "nonce": nonce,
                      "agent": "protocol-doc-test"})
    frame = recv_frame(sock)
    assert frame is not None
    challenge, _ = frame
    assert challenge["type"] == "challenge"
    assert challenge["version"] == VERSION
    return nonce, challenge


def authenticate(sock: socket.socket, token: str) -> None:
    """The whole handshake, checking the server's proof too."""
    nonce, challenge = say_hello(sock)
    send_frame(sock, {"type": "auth",
                      "mac": proof(token, CLIENT_CONTEXT, nonce, challenge["nonce"])})
    frame = recv_frame(sock)
    assert frame is not None
    verdict, _ = frame
    assert verdict["type"] == "auth_ok", verdict
    expected = proof(token, SERVER_CONTEXT, nonce, challenge["nonce"])
    assert hmac.compare_digest(verdict["mac"], expected)


def frames_until_closed(sock: socket.socket) -> list[tuple[dict, bytes]]:
    frames = []
    while (frame := recv_frame(sock)) is not None:
        frames.append(frame)
    return frames


def test_run_a_command(server):
    with connect(server) as sock:
        authenticate(sock, server.token)
        send_frame(sock, {"type": "run", "command": "printf abc; printf err >&2; exit 3"})
        output = {"stdout": b"", "stderr": b""}
        while True:
            frame = recv_frame(sock)
            assert frame is not None, "the server closed before the exit frame"
            header, body = frame
            if header["type"] == "exit":
                break
            assert header["type"] in output, header
            output[header["type"]] += body
        assert output == {"stdout": b"abc", "stderr": b"err"}
        assert header["exit_code"] == 3
        assert header["signal"] is None
        assert header["timed_out"] is False
        assert header["duration"] >= 0
        assert (header["stdout_bytes"], header["stderr_bytes"]) == (3, 3)


def test_wrong_mac_is_refused(server):
    with connect(server) as sock:
        nonce, challenge = say_hello(sock)
        wrong = proof(server.token + "x", CLIENT_CONTEXT, nonce, challenge["nonce"])
        send_frame(sock, {"type": "auth", "mac": wrong})
        frames = frames_until_closed(sock)
    assert len(frames) == 1, frames
    error, body = frames[0]
    assert (error["type"], error["code"], error["fatal"]) == ("error", "auth_failed", True)
    assert body == b""


def test_run_before_authenticating_is_a_fatal_error(server):
    with connect(server) as sock:
        send_frame(sock, {"type": "run", "command": "echo should-not-run"})
        frames = frames_until_closed(sock)
    assert len(frames) == 1, frames
    error, _ = frames[0]
    assert (error["type"], error["code"], error["fatal"]) == ("error", "unexpected_frame", True)
