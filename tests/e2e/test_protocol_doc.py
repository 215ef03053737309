"""docs/protocol.md is enough to talk to a real server: a client written from it alone.

Nothing here imports rexec: the frames, the handshake, the key derivation and the proofs are
rebuilt from the document with the standard library only.
"""

import hashlib
import hmac
import itertools
import json
import secrets
import socket
import struct

import pytest

from tests.helpers import start_server

MAX_HEADER = 64 * 1024
MAX_BODY = 1024 * 1024
VERSION = 1
CONTEXT = b"rexec-v1 auth"
ALICE_TOKEN = "alice-token-for-the-protocol-document"
ALICE_SALT = bytes.fromhex("00112233445566778899aabbccddeeff")


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


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def derive_keys(token: str, salt: bytes) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey): HMACs of "Client Key"/"Server Key" keyed with SaltedKey."""
    salted = _hmac(token.encode("utf-8"), b"rexec salted token:" + salt)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


def token_hash(token: str, salt: bytes) -> str:
    """The ``token_hash`` a server config holds: rexec-sha256$SALT$STOREDKEY$SERVERKEY."""
    client_key, server_key = derive_keys(token, salt)
    return "$".join(("rexec-sha256", salt.hex(), hashlib.sha256(client_key).hexdigest(),
                     server_key.hex()))


def auth_message(client_nonce: str, server_nonce: str, identity: str | None,
                 version: int = VERSION) -> bytes:
    """Ns || Nc || version u16 BE || identity (UTF-8, empty if null) || NUL || "rexec-v1 auth"."""
    return (bytes.fromhex(server_nonce) + bytes.fromhex(client_nonce)
            + version.to_bytes(2, "big") + (identity or "").encode("utf-8") + b"\0" + CONTEXT)


def client_proof(token: str, salt: bytes, message: bytes) -> str:
    """ClientKey XOR HMAC(StoredKey, AuthMessage), hex."""
    client_key, _ = derive_keys(token, salt)
    signature = _hmac(hashlib.sha256(client_key).digest(), message)
    return bytes(a ^ b for a, b in zip(client_key, signature, strict=True)).hex()


def server_proof(token: str, salt: bytes, message: bytes) -> str:
    """HMAC(ServerKey, AuthMessage), hex."""
    return _hmac(derive_keys(token, salt)[1], message).hex()


_SOURCES = itertools.count()


def connect(server) -> socket.socket:
    """A connection from a loopback address of its own (127.0.1.1, 127.0.1.2, ...).

    The server may slow down a source after failed handshakes; the refusals these tests provoke
    on purpose must not delay the tests that follow.
    """
    n = next(_SOURCES)
    source = f"127.0.{1 + n // 250}.{1 + n % 250}"
    return socket.create_connection((server.host, server.port), timeout=10,
                                    source_address=(source, 0))


def say_hello(sock: socket.socket, identity: str | None = None) -> tuple[str, dict]:
    """Send hello; return our nonce and the server's challenge."""
    nonce = secrets.token_hex(32)
    send_frame(sock, {"type": "hello", "versions": [VERSION], "nonce": nonce,
                      "agent": "protocol-doc-test", "identity": identity})
    frame = recv_frame(sock)
    assert frame is not None
    challenge, _ = frame
    assert challenge["type"] == "challenge"
    assert challenge["version"] == VERSION
    return nonce, challenge


def token_challenge_salt(challenge: dict) -> bytes:
    assert challenge["method"] == "token", challenge
    assert len(challenge["salt"]) == 32
    return bytes.fromhex(challenge["salt"])


def authenticate(sock: socket.socket, token: str, identity: str | None = None) -> dict:
    """The whole handshake, checking the server's proof too; return the auth_ok header."""
    nonce, challenge = say_hello(sock, identity)
    salt = token_challenge_salt(challenge)
    message = auth_message(nonce, challenge["nonce"], identity)
    send_frame(sock, {"type": "auth", "mac": client_proof(token, salt, message)})
    frame = recv_frame(sock)
    assert frame is not None
    verdict, _ = frame
    assert verdict["type"] == "auth_ok", verdict
    assert hmac.compare_digest(verdict["mac"], server_proof(token, salt, message))
    return verdict


def refused(sock: socket.socket) -> dict:
    """The fatal auth_failed error the server ends with (and nothing else)."""
    frames = frames_until_closed(sock)
    assert len(frames) == 1, frames
    error, body = frames[0]
    assert (error["type"], error["code"], error["fatal"]) == ("error", "auth_failed", True)
    assert body == b""
    return error


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with the shared token (identity "default"), a token identity "alice" whose hash
    is made here, and a certificate-only identity "robot"."""
    tmp = tmp_path_factory.mktemp("doc-server")
    config = tmp / "server.toml"
    config.write_text(f"""[server.identities.alice]
token_hash = "{token_hash(ALICE_TOKEN, ALICE_SALT)}"

[server.identities.robot]
certificate = "CN=robot"
""")
    srv = start_server(tmp, "--config", str(config), env={"REXEC_HOME": str(tmp)})
    yield srv
    assert srv.stop() == 0, srv.log()


def frames_until_closed(sock: socket.socket) -> list[tuple[dict, bytes]]:
    frames = []
    while (frame := recv_frame(sock)) is not None:
        frames.append(frame)
    return frames


def run_and_collect(sock: socket.socket, command: str) -> tuple[dict, dict[str, bytes]]:
    send_frame(sock, {"type": "run", "command": command})
    output = {"stdout": b"", "stderr": b""}
    while True:
        frame = recv_frame(sock)
        assert frame is not None, "the server closed before the exit frame"
        header, body = frame
        if header["type"] == "exit":
            return header, output
        assert header["type"] in output, header
        output[header["type"]] += body


def test_run_a_command(server):
    with connect(server) as sock:
        verdict = authenticate(sock, server.token)
        assert verdict["identity"] == "default"
        header, output = run_and_collect(sock, "printf abc; printf err >&2; exit 3")
        assert output == {"stdout": b"abc", "stderr": b"err"}
        assert header["exit_code"] == 3
        assert header["signal"] is None
        assert header["timed_out"] is False
        assert header["duration"] >= 0
        assert (header["stdout_bytes"], header["stderr_bytes"]) == (3, 3)


def test_the_worked_example():
    """The document's example values, from the document's formulas."""
    token = "correct horse battery staple"
    salt = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")
    nc = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    ns = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    message = auth_message(nc, ns, "alice")
    assert len(message) == 85
    assert token_hash(token, salt) == (
        "rexec-sha256$f0e1d2c3b4a5968778695a4b3c2d1e0f"
        "$76ad1917d0c6d4d989b113f6b6a02e7c39f3c9e7a27622cc10c56dad0852dd30"
        "$cda2a1c798b56fcee36eaf1c38240e47c0ac5d38f28ab719b4d656e1e22091dc")
    assert client_proof(token, salt, message) == (
        "f01f6e63fbb0b14a93c7af382a7db729201f1d79b9d20dff05dd84f7ca18d219")
    assert server_proof(token, salt, message) == (
        "997c193f3bc105bbe9b4df65d48292aa97c501a9678e837c25ba61a0883aad69")


def test_a_named_identity_logs_in_with_the_salt_of_its_token_hash(server):
    with connect(server) as sock:
        verdict = authenticate(sock, ALICE_TOKEN, "alice")
        assert verdict["identity"] == "alice"
        _, output = run_and_collect(sock, "echo hi")
        assert output["stdout"] == b"hi\n"
    with connect(server) as sock:
        _, challenge = say_hello(sock, "alice")
        assert token_challenge_salt(challenge) == ALICE_SALT


def test_the_default_identitys_salt_is_the_same_on_every_connection(server):
    salts = set()
    for identity in (None, None, "default"):
        with connect(server) as sock:
            _, challenge = say_hello(sock, identity)
            salts.add(token_challenge_salt(challenge))
    assert len(salts) == 1
    assert ALICE_SALT not in salts
    with connect(server) as sock:  # "default" named: the name is in the AuthMessage
        assert authenticate(sock, server.token, "default")["identity"] == "default"


def test_wrong_mac_is_refused(server):
    with connect(server) as sock:
        nonce, challenge = say_hello(sock)
        salt = token_challenge_salt(challenge)
        message = auth_message(nonce, challenge["nonce"], None)
        send_frame(sock, {"type": "auth", "mac": client_proof(server.token + "x", salt, message)})
        refused(sock)


@pytest.mark.parametrize(("token", "claimed", "signed"), [
    (ALICE_TOKEN, "alice", None),  # a proof for another identity name in the AuthMessage
    (ALICE_TOKEN, "alice", "default"),
    (ALICE_TOKEN, None, None),  # alice's token is not the shared one
    ("shared", "alice", "alice"),  # the shared token does not open alice
], ids=["alice-signed-as-none", "alice-signed-as-default", "alice-token-as-default",
        "shared-token-as-alice"])
def test_a_proof_for_another_identity_is_refused(server, token, claimed, signed):
    token = server.token if token == "shared" else token
    with connect(server) as sock:
        nonce, challenge = say_hello(sock, claimed)
        salt = token_challenge_salt(challenge)
        message = auth_message(nonce, challenge["nonce"], signed)
        send_frame(sock, {"type": "auth", "mac": client_proof(token, salt, message)})
        refused(sock)


def test_a_token_identity_needs_a_proof(server):
    with connect(server) as sock:
        say_hello(sock, "alice")
        send_frame(sock, {"type": "auth", "mac": None})
        refused(sock)


def test_an_unknown_identity_gets_a_stable_decoy_salt_and_the_same_refusal(server):
    salts = {}
    for name in ("nobody", "nobody", "somebody-else"):
        with connect(server) as sock:
            nonce, challenge = say_hello(sock, name)
            salt = token_challenge_salt(challenge)
            salts.setdefault(name, set()).add(salt)
            message = auth_message(nonce, challenge["nonce"], name)
            send_frame(sock, {"type": "auth", "mac": client_proof(ALICE_TOKEN, salt, message)})
            unknown = refused(sock)
    assert len(salts["nobody"]) == 1  # stable per name
    assert salts["nobody"] != salts["somebody-else"]
    assert ALICE_SALT not in salts["nobody"] | salts["somebody-else"]
    with connect(server) as sock:  # a wrong token for a real identity looks the same
        nonce, challenge = say_hello(sock, "alice")
        message = auth_message(nonce, challenge["nonce"], "alice")
        send_frame(sock, {"type": "auth",
                          "mac": client_proof("wrong", token_challenge_salt(challenge), message)})
        assert refused(sock)["message"] == unknown["message"]


def test_a_certificate_identity_over_plaintext_cannot_log_in(server):
    with connect(server) as sock:
        _, challenge = say_hello(sock, "robot")
        # without its certificate, a certificate identity is challenged like an unknown name
        assert challenge["method"] == "token"
        assert len(challenge["salt"]) == 32
        send_frame(sock, {"type": "auth", "mac": None})  # no certificate was ever shown
        refused(sock)


def test_run_before_authenticating_is_a_fatal_error(server):
    with connect(server) as sock:
        send_frame(sock, {"type": "run", "command": "echo should-not-run"})
        frames = frames_until_closed(sock)
    assert len(frames) == 1, frames
    error, _ = frames[0]
    assert (error["type"], error["code"], error["fatal"]) == ("error", "unexpected_frame", True)
