"""Key derivation, token verifiers and the challenge-response proofs (sans-I/O).

The handshake is SCRAM-like (RFC 5802, with HMAC-SHA256 and a salted-HMAC key derivation, since
rexec tokens are long and random): from a token and a salt come a ClientKey and a ServerKey. The
server stores only ``(salt, StoredKey = SHA256(ClientKey), ServerKey)``, so its configuration does
not reveal tokens and a stolen copy does not let anyone log in as a client. On each connection:

    AuthMessage  = server_nonce || client_nonce || version (2 bytes) || identity || NUL || context
    ClientProof  = ClientKey XOR HMAC(StoredKey, AuthMessage)          (client -> server)
    ServerProof  = HMAC(ServerKey, AuthMessage)                        (server -> client)

The server recovers ClientKey from the proof and checks its hash; the token never crosses the
wire, fresh nonces on both sides make a recorded handshake useless, and the server proves it
holds the ServerKey. See docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from rexec.errors import ConfigError

CONTEXT = b"rexec-v1 auth"
SALT_BYTES = 16
HASH_SCHEME = "rexec-sha256"


def new_nonce() -> str:
    """32 fresh random bytes, hex encoded."""
    return secrets.token_hex(32)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    """Two 32-byte strings XORed (as integers: a generator over bytes is 10x slower)."""
    return (int.from_bytes(a) ^ int.from_bytes(b)).to_bytes(32)


def derive_keys(token: str, salt: bytes) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) for a token and a salt."""
    salted = _hmac(token.encode(), b"rexec salted token:" + salt)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


@dataclass(frozen=True)
class TokenVerifier:
    """What a server keeps of a token: enough to check proofs, not enough to make one."""

    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_token(cls, token: str, salt: bytes | None = None) -> TokenVerifier:
        """Hash a token with a fresh (or the given) salt."""
        salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
        client_key, server_key = derive_keys(token, salt)
        return cls(salt, hashlib.sha256(client_key).digest(), server_key)

    @classmethod
    def parse(cls, text: str) -> TokenVerifier:
        """Read ``rexec-sha256$SALT$STOREDKEY$SERVERKEY`` (hex); ValueError if malformed."""
        parts = text.strip().split("$")
        if len(parts) != 4 or parts[0] != HASH_SCHEME:
            raise ValueError(f"a token hash looks like {HASH_SCHEME}$SALT$STOREDKEY$SERVERKEY"
                             " (make one with: rexec token hash)")
        try:
            salt, stored, server = (bytes.fromhex(p) for p in parts[1:])
        except ValueError:
            raise ValueError("a token hash's fields must be hexadecimal") from None
        if len(salt) != SALT_BYTES or len(stored) != 32 or len(server) != 32:
            raise ValueError("a token hash has a 16-byte salt and two 32-byte keys")
        return cls(salt, stored, server)

    def format(self) -> str:
        """The text form stored in config files."""
        return "$".join((HASH_SCHEME, self.salt.hex(), self.stored_key.hex(),
                         self.server_key.hex()))

    def check(self, message: bytes, proof_hex: str) -> bool:
        """Whether a client's proof for ``message`` comes from the token (constant time)."""
        try:
            proof = bytes.fromhex(proof_hex)
        except ValueError:
            return False
        if len(proof) != 32:
            return False
        signature = _hmac(self.stored_key, message)
        client_key = _xor(proof, signature)
        return hmac.compare_digest(
            hashlib.sha256(client_key).digest(), self.stored_key
        )

    def server_proof(self, message: bytes) -> str:
        """The proof the server sends back in ``auth_ok``."""
        return _hmac(self.server_key, message).hex()


def auth_message(client_nonce: str, server_nonce: str, version: int, identity: str) -> bytes:
    """The bytes both proofs cover: both nonces, the version and the identity name."""
    return b"".join((bytes.fromhex(server_nonce), bytes.fromhex(client_nonce),
                     version.to_bytes(2, "big"), identity.encode(), b"\0", CONTEXT))


def client_proof(token: str, salt: bytes, message: bytes) -> str:
    """The proof a client sends in ``auth``: ClientKey XOR HMAC(StoredKey, message)."""
    client_key, _ = derive_keys(token, salt)
    signature = _hmac(hashlib.sha256(client_key).digest(), message)
    return _xor(client_key, signature).hex()


def expected_server_proof(token: str, salt: bytes, message: bytes) -> str:
    """The proof a client expects in ``auth_ok``."""
    _, server_key = derive_keys(token, salt)
    return _hmac(server_key, message).hex()


def proofs_match(expected: str, received: str) -> bool:
    """Compare two proofs in constant time."""
    return hmac.compare_digest(expected.encode(), received.encode())


def decoy_salt(secret: bytes, identity: str) -> bytes:
    """A stable salt for an identity that does not exist, so challenges do not reveal that."""
    return _hmac(secret, identity.encode())[:SALT_BYTES]


def check_token(token: str, source: str) -> str:
    """Strip surrounding white space and refuse an empty token, naming where it came from."""
    token = token.strip()
    if not token:
        raise ConfigError(f"the token from {source} is empty; an empty token is refused")
    return token
