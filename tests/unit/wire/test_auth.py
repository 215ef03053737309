"""Key derivation, proofs, the verifier's text form, decoy salts and nonces (rexec/wire/auth.py)."""


from __future__ import annotations

import hashlib
import hmac

import pytest

from rexec import tokens as token_files
from rexec.wire import auth

SECRET = "s3cret-token-value-XYZ"
CN, SN = "11" * 32, "22" * 32
SALT = bytes(range(16))
MESSAGE = auth.auth_message(CN, SN, 1, "alice")


def verifier(token: str = SECRET, salt: bytes = SALT) -> auth.TokenVerifier:
    return auth.TokenVerifier.from_token(token, salt)


# --- key derivation and proofs -------------------------------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def test_derive_keys_is_the_documented_salted_hmac() -> None:
    salted = _hmac(SECRET.encode(), b"rexec salted token:" + SALT)
    client_key, server_key = auth.derive_keys(SECRET, SALT)
    assert client_key == _hmac(salted, b"Client Key")
    assert server_key == _hmac(salted, b"Server Key")
    assert client_key != server_key
    assert auth.derive_keys(SECRET, bytes(16)) != (client_key, server_key)  # salted
    assert auth.derive_keys(SECRET + "x", SALT) != (client_key, server_key)


def test_verifier_keeps_the_salt_the_stored_key_and_the_server_key() -> None:
    client_key, server_key = auth.derive_keys(SECRET, SALT)
    v = verifier()
    assert v == auth.TokenVerifier(SALT, hashlib.sha256(client_key).digest(), server_key)
    fresh = {auth.TokenVerifier.from_token(SECRET) for _ in range(5)}
    assert len({v.salt for v in fresh}) == 5  # a fresh random salt each time
    assert all(len(v.salt) == auth.SALT_BYTES for v in fresh)
    assert len({v.stored_key for v in fresh}) == 5


def test_auth_message_layout() -> None:
    message = auth.auth_message(CN, SN, 1, "alice")
    assert message == (bytes.fromhex(SN) + bytes.fromhex(CN) + b"\x00\x01" + b"alice\x00"
                       + b"rexec-v1 auth")
    assert auth.auth_message(CN, SN, 258, "") == (bytes.fromhex(SN) + bytes.fromhex(CN)
                                                  + b"\x01\x02" + b"\x00rexec-v1 auth")


def test_client_proof_verifies_for_the_right_token_salt_and_message() -> None:
    proof = auth.client_proof(SECRET, SALT, MESSAGE)
    assert len(proof) == 64
    assert proof == proof.lower()
    assert int(proof, 16) >= 0
    assert auth.client_proof(SECRET, SALT, MESSAGE) == proof  # deterministic
    assert verifier().check(MESSAGE, proof)
    # the recovered ClientKey is the token's: proof XOR HMAC(StoredKey, message)
    client_key, _ = auth.derive_keys(SECRET, SALT)
    signature = _hmac(hashlib.sha256(client_key).digest(), MESSAGE)
    assert bytes(a ^ b for a, b in zip(bytes.fromhex(proof), signature, strict=True)) == client_key


WRONG_PROOFS = {
    "another-token": auth.client_proof(SECRET + "x", SALT, MESSAGE),
    "another-salt": auth.client_proof(SECRET, bytes(16), MESSAGE),
    "another-client-nonce": auth.client_proof(SECRET, SALT,
                                              auth.auth_message("33" * 32, SN, 1, "alice")),
    "another-server-nonce": auth.client_proof(SECRET, SALT,
                                              auth.auth_message(CN, "33" * 32, 1, "alice")),
    "nonces-swapped": auth.client_proof(SECRET, SALT, auth.auth_message(SN, CN, 1, "alice")),
    "another-identity": auth.client_proof(SECRET, SALT, auth.auth_message(CN, SN, 1, "bob")),
    "no-identity": auth.client_proof(SECRET, SALT, auth.auth_message(CN, SN, 1, "")),
    "identity-prefix": auth.client_proof(SECRET, SALT, auth.auth_message(CN, SN, 1, "alic")),
    "another-version": auth.client_proof(SECRET, SALT, auth.auth_message(CN, SN, 2, "alice")),
    "server-proof": verifier().server_proof(MESSAGE),
    "zeros": "0" * 64,
}


@pytest.mark.parametrize("proof", WRONG_PROOFS.values(), ids=WRONG_PROOFS.keys())
def test_a_proof_for_anything_else_fails(proof: str) -> None:
    assert proof != auth.client_proof(SECRET, SALT, MESSAGE)
    assert not verifier().check(MESSAGE, proof)


@pytest.mark.parametrize("message", [
    auth.auth_message("33" * 32, SN, 1, "alice"),
    auth.auth_message(CN, "33" * 32, 1, "alice"),
    auth.auth_message(CN, SN, 1, "bob"),
    auth.auth_message(CN, SN, 2, "alice"),
    MESSAGE + b"x",
], ids=["client-nonce", "server-nonce", "identity", "version", "longer"])
def test_a_good_proof_fails_for_another_message(message: bytes) -> None:
    proof = auth.client_proof(SECRET, SALT, MESSAGE)
    assert not verifier().check(message, proof)


def test_a_proof_fails_against_another_tokens_verifier() -> None:
    proof = auth.client_proof(SECRET, SALT, MESSAGE)
    assert not verifier(SECRET + "x").check(MESSAGE, proof)
    assert not verifier(salt=bytes(16)).check(MESSAGE, proof)


GOOD = auth.client_proof(SECRET, SALT, MESSAGE)


@pytest.mark.parametrize("proof", [
    GOOD[:-2], GOOD[:-1], GOOD[:2], "", GOOD + "00", GOOD + GOOD, "g" + GOOD[1:], "zz" * 32,
    GOOD[:-1] + "\u00e9", "0x" + GOOD[2:],
], ids=["one-byte-short", "odd-length", "one-byte", "empty", "one-byte-long", "doubled",
        "one-non-hex", "non-hex", "non-ascii", "0x-prefix"])
def test_a_truncated_or_non_hex_proof_fails(proof: str) -> None:
    assert not verifier().check(MESSAGE, proof)


def test_the_server_proof_differs_from_the_client_proof_and_depends_on_everything() -> None:
    v = verifier()
    server = v.server_proof(MESSAGE)
    client = auth.client_proof(SECRET, SALT, MESSAGE)
    assert server != client
    assert len(server) == 64
    assert server == auth.expected_server_proof(SECRET, SALT, MESSAGE)
    assert server == _hmac(auth.derive_keys(SECRET, SALT)[1], MESSAGE).hex()
    others = {
        verifier(SECRET + "x").server_proof(MESSAGE),
        verifier(salt=bytes(16)).server_proof(MESSAGE),
        v.server_proof(auth.auth_message(CN, SN, 1, "bob")),
        v.server_proof(auth.auth_message(SN, CN, 1, "alice")),
        v.server_proof(auth.auth_message(CN, SN, 2, "alice")),
    }
    assert server not in others
    assert len(others) == 5


def test_proofs_match() -> None:
    mac = auth.client_proof(SECRET, SALT, MESSAGE)
    assert auth.proofs_match(mac, mac)
    assert auth.proofs_match(mac, str(mac))
    assert not auth.proofs_match(mac, verifier().server_proof(MESSAGE))
    assert not auth.proofs_match(mac, mac[:-1])
    assert not auth.proofs_match(mac, mac.upper())


# Known answers, as in docs/protocol.md (checked there with openssl).
EXAMPLE = {
    "token": "correct horse battery staple",
    "salt": "f0e1d2c3b4a5968778695a4b3c2d1e0f",
    "client_nonce": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "server_nonce": "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf",
    "identity": "alice",
    "client_key": "1c690dbf7137fdf3ebf0ec48e64c886cb1da37db39e7ff0ddaf0daf9269df37f",
    "server_key": "cda2a1c798b56fcee36eaf1c38240e47c0ac5d38f28ab719b4d656e1e22091dc",
    "stored_key": "76ad1917d0c6d4d989b113f6b6a02e7c39f3c9e7a27622cc10c56dad0852dd30",
    "client_proof": "f01f6e63fbb0b14a93c7af382a7db729201f1d79b9d20dff05dd84f7ca18d219",
    "server_proof": "997c193f3bc105bbe9b4df65d48292aa97c501a9678e837c25ba61a0883aad69",
}


def test_the_worked_example_of_the_protocol_document() -> None:
    salt = bytes.fromhex(EXAMPLE["salt"])
    client_key, server_key = auth.derive_keys(EXAMPLE["token"], salt)
    assert (client_key.hex(), server_key.hex()) == (EXAMPLE["client_key"], EXAMPLE["server_key"])
    v = auth.TokenVerifier.from_token(EXAMPLE["token"], salt)
    assert v.stored_key.hex() == EXAMPLE["stored_key"]
    assert v.format() == "$".join(("rexec-sha256", EXAMPLE["salt"], EXAMPLE["stored_key"],
                                   EXAMPLE["server_key"]))
    message = auth.auth_message(EXAMPLE["client_nonce"], EXAMPLE["server_nonce"], 1,
                                EXAMPLE["identity"])
    assert len(message) == 85
    assert auth.client_proof(EXAMPLE["token"], salt, message) == EXAMPLE["client_proof"]
    assert v.server_proof(message) == EXAMPLE["server_proof"]
    assert v.check(message, EXAMPLE["client_proof"])


# --- the verifier's text form, and what it does not give away ------------------------------


def test_verifier_format_and_parse_round_trip() -> None:
    v = auth.TokenVerifier.from_token(SECRET)
    text = v.format()
    scheme, salt, stored, server = text.split("$")
    assert scheme == auth.HASH_SCHEME == "rexec-sha256"
    assert (salt, stored, server) == (v.salt.hex(), v.stored_key.hex(), v.server_key.hex())
    assert (len(salt), len(stored), len(server)) == (32, 64, 64)
    assert auth.TokenVerifier.parse(text) == v
    assert auth.TokenVerifier.parse(f"  {text}\n") == v
    assert auth.TokenVerifier.parse(text.upper().replace("REXEC-SHA256", "rexec-sha256")) == v


_S, _K = "ab" * 16, "cd" * 32
BAD_HASHES = [
    ("empty", "", "looks like"),
    ("the-token-itself", SECRET, "looks like"),
    ("wrong-scheme", f"rexec-sha1${_S}${_K}${_K}", "looks like"),
    ("scheme-case", f"REXEC-SHA256${_S}${_K}${_K}", "looks like"),
    ("no-scheme", f"${_S}${_K}${_K}", "looks like"),
    ("three-fields", f"rexec-sha256${_S}${_K}", "looks like"),
    ("five-fields", f"rexec-sha256${_S}${_K}${_K}${_K}", "looks like"),
    ("non-hex-salt", f"rexec-sha256${'zz' * 16}${_K}${_K}", "hexadecimal"),
    ("non-hex-key", f"rexec-sha256${_S}${_K[:-1]}g${_K}", "hexadecimal"),
    ("odd-length", f"rexec-sha256${_S}${_K}${_K[:-1]}", "hexadecimal"),
    ("short-salt", f"rexec-sha256${_S[:-2]}${_K}${_K}", "16-byte salt"),
    ("long-salt", f"rexec-sha256${_S}00${_K}${_K}", "16-byte salt"),
    ("short-stored-key", f"rexec-sha256${_S}${_K[:-2]}${_K}", "32-byte keys"),
    ("long-server-key", f"rexec-sha256${_S}${_K}${_K}00", "32-byte keys"),
    ("empty-fields", "rexec-sha256$$$", "16-byte salt"),
]


@pytest.mark.parametrize(("name", "text", "fragment"), BAD_HASHES, ids=[b[0] for b in BAD_HASHES])
def test_verifier_parse_refuses_malformed_text(name: str, text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        auth.TokenVerifier.parse(text)
    assert SECRET not in str(info.value)


def test_a_verifier_does_not_contain_the_token_or_the_client_key() -> None:
    v = verifier()
    text = v.format()
    client_key, _ = auth.derive_keys(SECRET, SALT)
    assert SECRET not in text
    assert SECRET.encode().hex() not in text
    assert client_key.hex() not in text
    assert client_key not in (v.salt, v.stored_key, v.server_key)
    assert SECRET not in repr(v)


@pytest.mark.parametrize("part", ["stored_key", "server_key"])
def test_a_stolen_verifier_cannot_make_a_client_proof(part: str) -> None:
    v = verifier()
    key: bytes = getattr(v, part)
    # used as if it were the token, in its text form or its bytes decoded as Latin-1
    for as_token in (key.hex(), key.decode("latin-1"), v.format()):
        assert not v.check(MESSAGE, auth.client_proof(as_token, v.salt, MESSAGE))
    # used as if it were the ClientKey: key XOR HMAC(StoredKey, message)
    forged = bytes(a ^ b for a, b in zip(key, _hmac(v.stored_key, MESSAGE), strict=True))
    assert not v.check(MESSAGE, forged.hex())
    assert v.check(MESSAGE, auth.client_proof(SECRET, SALT, MESSAGE))  # while the token can


def test_known_property_a_verifier_and_a_recorded_proof_give_the_client_key() -> None:
    """As in SCRAM (and docs/protocol.md): StoredKey plus one recorded ClientProof reveal
    ClientKey, which then proves any later handshake, without the token."""
    v = verifier()
    recorded = bytes.fromhex(auth.client_proof(SECRET, SALT, MESSAGE))
    client_key = bytes(a ^ b for a, b in zip(recorded, _hmac(v.stored_key, MESSAGE),
                                             strict=True))
    later = auth.auth_message("44" * 32, "55" * 32, 1, "alice")
    forged = bytes(a ^ b for a, b in zip(client_key, _hmac(v.stored_key, later), strict=True))
    assert v.check(later, forged.hex())


# --- decoy salts ---------------------------------------------------------------------------


def test_decoy_salt_is_stable_per_name_and_differs_between_names_and_secrets() -> None:
    secret = b"k" * 32
    alice = auth.decoy_salt(secret, "alice")
    assert alice == auth.decoy_salt(secret, "alice")
    assert len(alice) == auth.SALT_BYTES
    names = ["alice", "bob", "alice2", "", "Alice"]
    assert len({auth.decoy_salt(secret, n) for n in names}) == len(names)
    assert auth.decoy_salt(b"j" * 32, "alice") != alice
    assert alice == _hmac(secret, b"alice")[:16]


def test_nonces_and_tokens_are_fresh() -> None:
    nonces = {auth.new_nonce() for _ in range(20)}
    assert len(nonces) == 20
    assert all(len(n) == 64 and int(n, 16) >= 0 for n in nonces)
    tokens = {token_files.generate_token() for _ in range(20)}
    assert len(tokens) == 20
    assert all(len(t) >= 43 for t in tokens)


