"""The server's sans-I/O handshake driven in memory against the real ClientCore."""

from __future__ import annotations

from collections import Counter

import pytest

from rexec.client.core import Authenticated, ClientCore
from rexec.errors import AuthenticationError, ProtocolError
from rexec.server.handshake import Accepted, Challenged, HandshakeRefusal, ServerHandshake
from rexec.server.identity import Identities, Identity, Policy
from rexec.server.limits import AuthPenalty
from rexec.tls import Subject, parse_subject
from rexec.wire import frames as f
from rexec.wire.auth import TokenVerifier
from rexec.wire.protocol import Connection, Role

TOKEN = "handshake-test-token"
SOURCE = "192.0.2.7"
ROBOT = parse_subject("CN=robot,O=Example")
SALT = bytes.fromhex("00112233445566778899aabbccddeeff")  # fixed: decoys derive from the keys


def identities() -> Identities:
    return Identities({
        "default": Identity("default", TokenVerifier.from_token(TOKEN, SALT)),
        "robot": Identity("robot", certificate=ROBOT),
        "ops": Identity("ops", TokenVerifier.from_token(TOKEN, SALT),
                        policy=Policy(max_connections=1)),
    })


class Pair:
    """A ClientCore and a ServerHandshake joined by a server-role Connection."""

    def __init__(self, core: ClientCore, subject: Subject | None = None,
                 active: Counter[str] | None = None) -> None:
        self.core = core
        self.conn = Connection(Role.SERVER)
        self.penalty = AuthPenalty(max_delay=8.0)
        self.shake = ServerHandshake(identities(), self.penalty, source=SOURCE, subject=subject,
                                     active_connections=active or Counter())

    def receive(self) -> f.Header:
        """The one frame the client queued."""
        self.conn.receive_data(self.core.data_to_send())
        frame = self.conn.next_frame()
        assert frame is not None and self.conn.next_frame() is None
        return frame.header

    def send(self, header: f.Header) -> None:
        self.core.receive_data(self.conn.send(header))

    def challenge(self) -> Challenged:
        hello = self.receive()
        assert isinstance(hello, f.Hello)
        challenged = self.shake.receive_hello(hello)
        assert isinstance(challenged, Challenged)
        self.send(challenged.challenge)
        assert self.core.next_event() is None  # the core answers the challenge by itself
        return challenged

    def verdict(self) -> Accepted | HandshakeRefusal:
        auth = self.receive()
        assert isinstance(auth, f.Auth)
        return self.shake.receive_auth(auth)


def test_the_right_token_is_accepted_and_the_server_proves_itself() -> None:
    pair = Pair(ClientCore(TOKEN))
    challenged = pair.challenge()
    assert challenged.delay == 0.0
    assert challenged.challenge.method == "token"
    accepted = pair.verdict()
    assert isinstance(accepted, Accepted)
    assert (accepted.identity.name, accepted.method) == ("default", "token")
    pair.send(accepted.auth_ok)
    assert isinstance(pair.core.next_event(), Authenticated)  # it checked the server's proof
    assert pair.core.ready and pair.core.identity == "default"


def test_a_wrong_token_is_refused_and_counted_against_the_source() -> None:
    pair = Pair(ClientCore("not-the-token"))
    pair.challenge()
    refusal = pair.verdict()
    assert refusal == HandshakeRefusal(
        "auth_failed",
        "authentication failed: unknown identity, wrong token or wrong certificate (1 recent"
        " failure from your address: the server delays its next logins by 0.25 s, for 30 s"
        " after the last failure)",
        recent_failures=1, next_delay=0.25)
    assert pair.penalty.delay(SOURCE) == 0.25
    again = Pair(ClientCore(TOKEN))
    again.penalty = pair.penalty
    again.shake = ServerHandshake(identities(), pair.penalty, source=SOURCE, subject=None,
                                  active_connections=Counter())
    assert again.challenge().delay == 0.25  # the source's next challenge waits
    pair.send(f.Error(code=refusal.code, message=refusal.message, fatal=True))
    with pytest.raises(AuthenticationError):
        pair.core.next_event()


def test_an_unknown_identity_gets_a_stable_decoy_salt_and_is_refused() -> None:
    salts = []
    for _ in range(2):
        pair = Pair(ClientCore(TOKEN, identity="nobody"))
        challenged = pair.challenge()
        assert challenged.challenge.method == "token"
        salts.append(challenged.challenge.salt)
        refusal = pair.verdict()
        assert isinstance(refusal, HandshakeRefusal) and refusal.code == "auth_failed"
        assert pair.shake.claimed_identity == "nobody"
    assert salts[0] == salts[1] is not None
    assert salts[0] != SALT.hex()


def test_a_certificate_identity_is_challenged_without_a_salt() -> None:
    pair = Pair(ClientCore(None, identity="robot", client_certificate=True), subject=ROBOT)
    challenged = pair.challenge()
    assert (challenged.challenge.method, challenged.challenge.salt) == ("certificate", None)
    accepted = pair.verdict()
    assert isinstance(accepted, Accepted)
    assert (accepted.identity.name, accepted.method, accepted.auth_ok.mac) == (
        "robot", "certificate", None)
    pair.send(accepted.auth_ok)
    assert isinstance(pair.core.next_event(), Authenticated)


def test_a_certificate_identity_without_its_certificate_is_refused() -> None:
    pair = Pair(ClientCore(TOKEN, identity="robot", client_certificate=True),
                subject=parse_subject("CN=someone-else"))
    assert pair.challenge().challenge.method == "token"  # nothing revealed: a decoy salt
    refusal = pair.verdict()
    assert isinstance(refusal, HandshakeRefusal) and refusal.code == "auth_failed"


def test_max_connections_refuses_a_proven_identity_at_its_limit() -> None:
    pair = Pair(ClientCore(TOKEN, identity="ops"), active=Counter({"ops": 1}))
    pair.challenge()
    refusal = pair.verdict()
    assert refusal == HandshakeRefusal(
        "too_many_connections", "identity 'ops' already has 1 connection(s) (max_connections)")
    assert pair.penalty.delay(SOURCE) == 0.0  # a proven client is not penalised


def test_an_unsupported_version_is_refused_before_any_challenge() -> None:
    shake = ServerHandshake(identities(), AuthPenalty(8.0), source=SOURCE, subject=None,
                            active_connections=Counter())
    hello = f.Hello(versions=[99], nonce="ab" * 32, agent="future/1", identity="ops")
    refusal = shake.receive_hello(hello)
    assert refusal == HandshakeRefusal(
        "unsupported_version",
        "this server speaks protocol versions 1, 2, 3, 4, 5, 6; the client offered [99]")
    assert shake.claimed_identity is None


@pytest.mark.parametrize(("offered", "chosen"), [([1], 1), ([2], 2), ([1, 2], 2), ([9, 1], 1)])
def test_the_server_chooses_the_newest_version_both_speak(offered: list[int],
                                                          chosen: int) -> None:
    shake = ServerHandshake(identities(), AuthPenalty(8.0), source=SOURCE, subject=None,
                            active_connections=Counter())
    challenged = shake.receive_hello(f.Hello(versions=offered, nonce="ab" * 32))
    assert not isinstance(challenged, HandshakeRefusal)
    assert challenged.challenge.version == chosen == shake.version


def test_auth_before_hello_is_a_bug_in_the_caller() -> None:
    shake = ServerHandshake(identities(), AuthPenalty(8.0), source=SOURCE, subject=None,
                            active_connections=Counter())
    with pytest.raises(RuntimeError):
        shake.receive_auth(f.Auth(mac=None))


def test_the_client_refuses_a_challenge_in_a_version_it_does_not_speak() -> None:
    pair = Pair(ClientCore(TOKEN))
    pair.receive()
    pair.send(f.Challenge(version=7, nonce="cd" * 32, agent="x", method="token",
                          salt="00" * 16))
    with pytest.raises(ProtocolError):
        pair.core.next_event()
