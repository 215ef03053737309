"""The datagram side's messages: probe and reply models, size caps, the amplification rule and
the proofs of an authenticated probe (sans-I/O: bytes in, bytes out).

A probe and a reply are each one UDP datagram holding one JSON object. A probe is padded with
ASCII spaces after its object, to ``PROBE_SIZE`` bytes by rexec's client, because the rule that
keeps a responder from being a reflector is a size rule: a reply is never larger than the probe
that caused it (``fit_reply``), and never larger than ``MAX_REPLY``. So the client pays for the
room of its reply, and a forged source address gets back at most what was sent in its name.

An authenticated probe proves that its sender holds the token of an identity the server knows,
as the TCP handshake does (rexec.wire.auth), in one datagram. It needs the identity's salt,
which the server gives in any reply to a probe that names an identity (a decoy salt for an
unknown one, as the TCP challenge does), so a client's first probe to a server names its
identity and its later ones carry the proof:

    message     = CONTEXT || nonce (16 bytes) || timestamp (decimal text) || NUL || identity
    ClientProof = ClientKey XOR HMAC(StoredKey, message)               (probe.proof)
    ServerProof = HMAC(ServerKey, "reply" || message || the reply's other fields, canonical)

The token never leaves the client; the nonce is remembered by the server for as long as the
timestamp is within ``CLOCK_WINDOW``, so a recorded probe cannot be replayed; the server proof
lets the client check that the rich reply comes from a server that holds the identity's
verifier and was not altered on the way. See docs/protocol.md, "Ping and discovery".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rexec.wire.auth import TokenVerifier, client_proof, derive_keys

DISCOVERY_VERSION: Literal[1] = 1
"""The version of the probe and reply objects (``v``), apart from the TCP protocol's."""
MAX_DATAGRAM = 1400
"""The largest probe a responder looks at: a larger datagram is dropped (``oversize``)."""
MAX_REPLY = 512
"""The largest reply a responder sends, whatever the probe's size."""
PROBE_SIZE = 512
"""What rexec's client pads every probe to: room for the richest reply."""
RECEIVE_BUFFER = 64 * 1024
"""What a client reads a reply into: no datagram is larger, so none is ever truncated (Linux
silently cuts a datagram to the buffer it is read into)."""
CLOCK_WINDOW = 30.0
"""Seconds an authenticated probe's timestamp may be off the server's clock, either way."""
NONCE_BYTES = 16
CONTEXT = b"rexec-v1 discovery\0"

_Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
_Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_Name = Annotated[str, Field(min_length=1, max_length=64)]
_Short = Annotated[str, Field(max_length=64)]


class Probe(BaseModel):
    """What a client sends: a nonce, and for an authenticated probe an identity's proof."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = DISCOVERY_VERSION
    type: Literal["probe"] = "probe"
    nonce: _Hex32
    identity: _Name | None = None
    """Names the identity: the reply gives its salt; with ``ts`` and ``proof``, authenticates."""
    ts: Annotated[int, Field(ge=0, le=2**53)] | None = None
    """With ``proof``: the client's clock, in milliseconds since the epoch."""
    proof: _Hex64 | None = None


class Reply(BaseModel):
    """What a responder answers. The first five fields are what anyone who can reach the port
    may know; the rest only an authenticated probe gets (``auth`` true, ``proof`` set)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = DISCOVERY_VERSION
    type: Literal["reply"] = "reply"
    nonce: _Hex32
    protocol: Annotated[int, Field(ge=1, le=65535)]
    """The newest TCP protocol version the server speaks."""
    port: Annotated[int, Field(ge=1, le=65535)]
    """The server's TCP port (the same number as the UDP one, in rexec's server)."""
    tls: bool
    """Whether the TCP listener requires TLS."""
    salt: _Hex32 | None = None
    """The salt of the identity the probe named (a decoy for an unknown one), for its proof;
    only when the probe named one and was not authenticated."""
    auth: bool = False
    name: _Short | None = None
    version: _Short | None = None
    uptime: Annotated[float, Field(ge=0)] | None = None
    running: Annotated[int, Field(ge=0)] | None = None
    load: tuple[float, float, float] | None = None
    proof: _Hex64 | None = None


class DatagramError(ValueError):
    """A datagram that is not a valid probe or reply; ``reason`` names why, as counted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


DROP_REASONS = ("empty", "oversize", "truncated", "not_json", "invalid", "wrong_version")
"""Why a datagram is not read at all (each counted under its name by the responder)."""


def new_nonce() -> str:
    """A fresh nonce: 16 random bytes, hex."""
    return secrets.token_hex(NONCE_BYTES)


def encode_probe(probe: Probe, size: int = PROBE_SIZE) -> bytes:
    """A probe as one datagram, padded with spaces to ``size`` bytes (never cut below its
    object: a probe larger than ``size`` is sent as it is)."""
    data = probe.model_dump_json(exclude_none=True).encode()
    return data.ljust(min(max(size, len(data)), MAX_DATAGRAM), b" ")


def encode_reply(reply: Reply) -> bytes:
    """A reply as one datagram (no padding): compact JSON in the model's field order (the
    proofs cover the sorted form, ``_compact``, whatever order a datagram's keys arrive in)."""
    return reply.model_dump_json(exclude_none=True).encode()


_SORTED = json.JSONEncoder(separators=(",", ":"), sort_keys=True)  # made once: 40% faster


def _compact(value: dict[str, Any]) -> bytes:
    return _SORTED.encode(value).encode()


def _parse(data: bytes, model: type[Probe] | type[Reply]) -> Any:
    if not data:
        raise DatagramError("empty")
    if len(data) > MAX_DATAGRAM:
        raise DatagramError("oversize", f"{len(data)} bytes, over {MAX_DATAGRAM}")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        kind, loc, message = first["type"], first["loc"], first["msg"]
    if kind == "json_invalid":
        # a cut datagram ends inside its object; anything else is not JSON at all
        reason = "truncated" if "EOF while parsing" in message else "not_json"
        raise DatagramError(reason, message)
    if kind == "model_type":
        raise DatagramError("not_json", "not a JSON object")
    if loc[:1] == ("v",):
        raise DatagramError("wrong_version", message)
    where = ".".join(str(part) for part in loc) or "object"
    raise DatagramError("invalid", f"{where}: {message}")


def parse_probe(data: bytes) -> Probe:
    """The probe a datagram holds; DatagramError (its ``reason`` one of DROP_REASONS)."""
    probe: Probe = _parse(data, Probe)
    return probe


def parse_reply(data: bytes) -> Reply:
    """The reply a datagram holds; DatagramError."""
    reply: Reply = _parse(data, Reply)
    return reply


def fit_reply(reply: Reply, probe_size: int) -> bytes | None:
    """The amplification rule: ``reply`` encoded if it is no larger than the probe that caused
    it (and than MAX_REPLY), else None: a probe too small for its answer gets none."""
    data = encode_reply(reply)
    return data if len(data) <= min(probe_size, MAX_REPLY) else None


# -- proofs ---------------------------------------------------------------------------------


def proof_message(nonce: str, ts: int, identity: str) -> bytes:
    """The bytes both proofs cover."""
    return b"".join((CONTEXT, bytes.fromhex(nonce), str(ts).encode(), b"\0", identity.encode()))


def authenticated_probe(token: str, salt: bytes, identity: str, ts: int,
                        nonce: str | None = None) -> Probe:
    """A probe that proves ``identity``'s token (``ts``: the clock, in ms since the epoch)."""
    nonce = new_nonce() if nonce is None else nonce
    message = proof_message(nonce, ts, identity)
    return Probe(nonce=nonce, identity=identity, ts=ts, proof=client_proof(token, salt, message))


def check_probe(probe: Probe, verifier: TokenVerifier) -> bool:
    """Whether an authenticated probe's proof comes from the verifier's token (constant time;
    the timestamp and the nonce's freshness are the responder's to check)."""
    if probe.identity is None or probe.ts is None or probe.proof is None:
        return False
    return verifier.check(proof_message(probe.nonce, probe.ts, probe.identity), probe.proof)


def _reply_signed(reply: Reply, probe: Probe) -> bytes:
    assert probe.identity is not None and probe.ts is not None
    body = _compact(reply.model_dump(exclude_none=True, exclude={"proof"}))
    return b"reply" + proof_message(probe.nonce, probe.ts, probe.identity) + body


def sign_reply(reply: Reply, probe: Probe, verifier: TokenVerifier) -> Reply:
    """``reply`` with the server's proof over it and the probe (an authenticated probe's)."""
    mac = hmac.new(verifier.server_key, _reply_signed(reply, probe), hashlib.sha256).hexdigest()
    return reply.model_copy(update={"proof": mac})


def reply_is_genuine(reply: Reply, probe: Probe, token: str, salt: bytes) -> bool:
    """Whether an authenticated reply was made by a server holding the token's verifier, for
    this probe, and arrived unaltered (constant time)."""
    if not reply.auth or reply.proof is None or probe.identity is None or probe.ts is None:
        return False
    _, server_key = derive_keys(token, salt)
    expected = hmac.new(server_key, _reply_signed(reply, probe), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, reply.proof)
