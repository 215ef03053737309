"""The server's side of the handshake, sans-I/O: hello -> challenge -> proof -> ok | refusal.

The session receives the frames and sends what this returns; every decision is made here: the
protocol version, the identity a client claims and how it is challenged (an unknown name gets a
decoy salt, so the challenge reveals nothing), the source's penalty delay, the proof check and
the identity's max_connections. Nothing here does I/O or sleeps: the session waits out the delay.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rexec._version import __version__
from rexec.server.identity import Identities, Identity
from rexec.server.limits import PENALTY_WINDOW, AuthPenalty
from rexec.wire.auth import auth_message, new_nonce
from rexec.wire.frames import (
    PROTOCOL_VERSION,
    PROTOCOL_VERSIONS,
    Auth,
    AuthMethod,
    AuthOk,
    Challenge,
    Hello,
    ServerErrorCode,
)

if TYPE_CHECKING:
    from rexec.tls import Subject  # a tuple type: no need to load ssl at run time

AGENT = f"rexec-server/{__version__}"
AUTH_FAILED = "authentication failed: unknown identity, wrong token or wrong certificate"


@dataclass(frozen=True)
class HandshakeRefusal:
    """The handshake fails: the code and message the client is sent in a fatal error."""

    code: ServerErrorCode
    message: str
    recent_failures: int | None = None  # auth_failed: this source's recent failures, this one in
    next_delay: float = 0.0  # auth_failed: what this source's next challenge waits


@dataclass(frozen=True)
class Challenged:
    """Send ``challenge``, after waiting ``delay`` seconds (recent failures from this source)."""

    challenge: Challenge
    delay: float


@dataclass(frozen=True)
class Accepted:
    """The client proved ``identity``: send ``auth_ok``; it may now run commands."""

    identity: Identity
    auth_ok: AuthOk
    method: AuthMethod  # how it proved itself
    agent: str  # the client's, from its hello


def delay_note(failures: int, delay: float) -> str:
    """What a refused client is told of the penalty its address now pays."""
    noun = "failure" if failures == 1 else "failures"
    return (f"{failures} recent {noun} from your address: the server delays its next logins"
            f" by {delay:g} s, for {PENALTY_WINDOW:g} s after the last failure")


def proved(identity: Identity, auth: Auth, message: bytes, subject: Subject | None) -> bool:
    """Whether ``auth`` (and the TLS certificate) prove ``identity``."""
    if identity.certificate is not None and identity.certificate != subject:
        return False
    if identity.verifier is None:
        return auth.mac is None
    return auth.mac is not None and identity.verifier.check(message, auth.mac)


class ServerHandshake:
    """One connection's handshake decisions: feed it the client's hello, then its auth."""

    def __init__(self, identities: Identities, penalty: AuthPenalty, *, source: str,
                 subject: Subject | None, active_connections: Counter[str],
                 agent: str = AGENT, subject_text: str | None = None) -> None:
        """``source``: the peer's address (the penalty's key); ``subject``: its certificate's
        (``subject_text``: as logs write it, ``rexec.tls.format_subject``)."""
        self._identities = identities
        self._penalty = penalty
        self._source = source
        self._subject = subject
        self._subject_text = subject_text
        self._active_connections = active_connections
        self._agent = agent
        self.claimed_identity: str | None = None  # the name the hello gave, once accepted
        self.version = PROTOCOL_VERSION  # the version chosen, once the hello is in
        self._hello: Hello | None = None
        self._identity: Identity | None = None
        self._method: AuthMethod = "token"
        self._nonce = ""

    def receive_hello(self, hello: Hello) -> Challenged | HandshakeRefusal:
        """Negotiate the version and choose the challenge for the identity the client claims."""
        common = [version for version in PROTOCOL_VERSIONS if version in hello.versions]
        if not common:
            return HandshakeRefusal(
                "unsupported_version",
                f"this server speaks protocol versions"
                f" {', '.join(map(str, sorted(PROTOCOL_VERSIONS)))};"
                f" the client offered {hello.versions}",
            )
        self.version = common[0]  # the newest both speak
        self._hello, self.claimed_identity = hello, hello.identity
        self._identity = self._identities.resolve(hello.identity, self._subject)
        self._method, salt = self._identities.challenge_for(self._identity, hello.identity,
                                                            self._subject)
        self._nonce = new_nonce()
        challenge = Challenge(version=self.version, nonce=self._nonce, agent=self._agent,
                              method=self._method,
                              salt=salt.hex() if salt is not None else None)
        return Challenged(challenge, self._penalty.delay(self._source))

    def _failed_message(self, failures: int, delay: float) -> str:
        """AUTH_FAILED, with the certificate subject as this server compares it (if one came)
        and the delay this address's logins now wait.

        The refusal itself tells a client what its own certificate is seen as, which it knows
        already, and its own address's failures: nothing about the server's identities.
        """
        notes = [delay_note(failures, delay)]
        if self._subject_text is not None:
            notes.insert(0, f"this server sees your certificate's subject as"
                            f" {self._subject_text}")
        return f"{AUTH_FAILED} ({'; '.join(notes)})"

    def receive_auth(self, auth: Auth) -> Accepted | HandshakeRefusal:
        """Check the client's proof and its identity's max_connections."""
        hello, identity = self._hello, self._identity
        if hello is None:
            raise RuntimeError("auth received before hello")  # the state table forbids it
        message = auth_message(hello.nonce, self._nonce, self.version, hello.identity or "")
        if identity is None or not proved(identity, auth, message, self._subject):
            failures = self._penalty.failed(self._source)
            delay = self._penalty.delay(self._source)
            return HandshakeRefusal("auth_failed", self._failed_message(failures, delay),
                                    failures, delay)
        limit = identity.policy.max_connections
        if limit is not None and self._active_connections[identity.name] >= limit:
            return HandshakeRefusal("too_many_connections", f"identity {identity.name!r} already"
                                    f" has {limit} connection(s) (max_connections)")
        proof = identity.verifier.server_proof(message) if identity.verifier else None
        return Accepted(identity, AuthOk(mac=proof, identity=identity.name), self._method,
                        hello.agent)
