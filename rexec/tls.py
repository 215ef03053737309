"""TLS contexts for the server and the client, built from certificate files.

Both sides require TLS 1.2 or later and keep the ssl module's modern defaults (certificate and
hostname verification on the client, forward-secret AEAD suites). Mutual TLS: a server given a
client CA requires a client certificate signed by it, and the certificate's subject becomes the
client's identity. Every file problem becomes a ConfigError naming the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rexec.errors import ConfigError
from rexec.tokens import refuse_shared

# The first byte of every TLS record a client sends first (a handshake record).
TLS_HANDSHAKE_RECORD = 0x16


def _load(what: str, path: Path, action: Any) -> None:
    try:
        action()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot load {what} {path}: {exc}") from None


def _check_key(key: Path) -> None:
    """Refuse a private key others can read, as ssh does (the key is the server's identity)."""
    try:
        info = key.stat()
    except FileNotFoundError:
        raise ConfigError(f"TLS key {key} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS key {key}: {exc.strerror or exc}") from None
    refuse_shared(f"TLS key {key}", key, info)


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context presenting ``cert``; with ``client_ca``, client certs are required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _check_key(key)
    _load("TLS certificate/key", cert, lambda: context.load_cert_chain(cert, key))
    if client_ca is not None:
        _load("client CA file", client_ca, lambda: context.load_verify_locations(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context trusting only ``ca``, checking the host name, maybe presenting a cert.

    With ``ca`` None the context verifies nothing (no chain, no host name): the caller must
    check the server certificate's fingerprint (a pin, known_hosts) before sending anything.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load("CA file", ca, lambda: context.load_verify_locations(ca))
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        _check_key(key if key is not None else cert)
        _load("client certificate/key", cert, lambda: context.load_cert_chain(cert, key))
    return context


FINGERPRINT_PREFIX = "SHA256:"
_HEX_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}")
_B64_FINGERPRINT = re.compile(r"[A-Za-z0-9+/]{43}")


def format_fingerprint(digest: bytes) -> str:
    """A SHA-256 digest as ssh writes key fingerprints: ``SHA256:`` + base64 without padding."""
    return FINGERPRINT_PREFIX + base64.b64encode(digest).decode().rstrip("=")


def fingerprint(der: bytes) -> str:
    """A certificate's fingerprint: the SHA-256 of its DER bytes, as ``SHA256:<base64>``."""
    return format_fingerprint(hashlib.sha256(der).digest())


def parse_fingerprint(text: str) -> str:
    """A fingerprint in its canonical ``SHA256:<base64>`` form (ValueError if it is not one).

    Takes that form, or the 32 hex pairs ``openssl x509 -fingerprint -sha256`` prints (colons
    optional, its ``sha256 Fingerprint=`` label or a ``SHA256:`` prefix allowed).
    """
    body = text.strip()
    label, sep, rest = body.partition("=")
    if sep and label.strip().lower() == "sha256 fingerprint":
        body = rest.strip()
    if body[:7].upper() == FINGERPRINT_PREFIX:
        body = body[7:]
        if _B64_FINGERPRINT.fullmatch(body):
            try:
                return format_fingerprint(base64.b64decode(body + "=", validate=True))
            except binascii.Error:
                pass
    if _HEX_FINGERPRINT.fullmatch(body):
        return format_fingerprint(bytes.fromhex(body.replace(":", "")))
    raise ValueError(f"{text!r} is not a SHA-256 fingerprint: expected SHA256: and 43 base64"
                     " characters (as rexec prints them) or 32 hex pairs (as openssl does)")


def certificate_fingerprint(path: Path) -> str:
    """The fingerprint of the first certificate in a PEM file (ConfigError naming the file)."""
    try:
        pem = path.read_text("ascii")
        der = ssl.PEM_cert_to_DER_cert(pem[pem.index("-----BEGIN CERTIFICATE-----"):])
    except FileNotFoundError:
        raise ConfigError(f"certificate {path} does not exist") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, no PEM block, bad base64
        raise ConfigError(f"cannot read certificate {path}: {exc}") from None
    return fingerprint(der)


Subject = tuple[tuple[tuple[str, str], ...], ...]
"""A certificate subject: its RDNs in the certificate's order, each a sorted tuple of
(attribute type, value) pairs. Types are OpenSSL's long names, as ``getpeercert()`` gives them."""

# (the short name written, OpenSSL's long name, the OID): the attributes of people and machines.
_ATTRIBUTES = (
    ("CN", "commonName", "2.5.4.3"),
    ("SN", "surname", "2.5.4.4"),
    ("serialNumber", "serialNumber", "2.5.4.5"),
    ("C", "countryName", "2.5.4.6"),
    ("L", "localityName", "2.5.4.7"),
    ("ST", "stateOrProvinceName", "2.5.4.8"),
    ("street", "streetAddress", "2.5.4.9"),
    ("O", "organizationName", "2.5.4.10"),
    ("OU", "organizationalUnitName", "2.5.4.11"),
    ("title", "title", "2.5.4.12"),
    ("GN", "givenName", "2.5.4.42"),
    ("pseudonym", "pseudonym", "2.5.4.65"),
    ("organizationIdentifier", "organizationIdentifier", "2.5.4.97"),
    ("UID", "userId", "0.9.2342.19200300.100.1.1"),
    ("DC", "domainComponent", "0.9.2342.19200300.100.1.25"),
    ("emailAddress", "emailAddress", "1.2.840.113549.1.9.1"),
)
_LONG_NAMES = {key.lower(): long for short, long, oid in _ATTRIBUTES for key in (short, long, oid)}
_SHORT_NAMES = {long: short for short, long, _ in _ATTRIBUTES}
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
_ESCAPED = frozenset('\\"+,;<>')  # escaped anywhere in a value (RFC 4514 section 2.4)
_ESCAPABLE = _ESCAPED | {" ", "#", "="}
_MUST_ESCAPE = frozenset('";<>\0')  # not allowed unescaped inside a value
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")


def make_subject(rdns: Iterable[Iterable[tuple[str, str]]]) -> Subject:
    """A Subject from RDNs of (type, value) pairs: types made canonical, each RDN sorted."""
    return tuple(tuple(sorted((_LONG_NAMES.get(name.lower(), name), value)
                              for name, value in rdn)) for rdn in rdns)


def subject_of(peercert: dict[str, Any] | None) -> Subject | None:
    """A verified certificate's subject (None without a certificate)."""
    if not peercert or "subject" not in peercert:
        return None
    return make_subject(((str(name), str(value)) for name, value in rdn)
                        for rdn in peercert["subject"])


def _escape(value: str) -> str:
    out = []
    for i, char in enumerate(value):
        if char in _ESCAPED or (i == 0 and char in " #") or (i == len(value) - 1 and char == " "):
            out.append("\\" + char)
        elif not char.isprintable():  # NUL, controls, bidi marks: shown, never hidden in a log
            out.append("".join(f"\\{byte:02X}" for byte in char.encode()))
        else:
            out.append(char)
    return "".join(out)


def format_subject(subject: Subject) -> str:
    """The subject as ``CN=ci\\,O=Example`` (RFC 4514 escaping, the certificate's RDN order)."""
    return ",".join("+".join(f"{_SHORT_NAMES.get(name, name)}={_escape(value)}"
                             for name, value in rdn) for rdn in subject)


def _parse_value(text: str, i: int) -> tuple[str, int]:
    """The RFC 4514 string value starting at ``text[i]``, and where it ends."""
    if text.startswith("#", i):
        raise ValueError("a value starting with '#' would be hex-encoded BER, which rexec does"
                         " not take: write \\# for a '#'")
    if text.startswith(" ", i):
        raise ValueError("a leading space must be escaped (\\ )")
    raw, trailing_space = bytearray(), False
    while i < len(text) and text[i] not in ",+":
        char = text[i]
        if char == "\\":
            pair = text[i + 1:i + 3]
            if _HEX_PAIR.fullmatch(pair):
                raw.append(int(pair, 16))
                i += 3
            elif text[i + 1:i + 2] in _ESCAPABLE:
                raw += text[i + 1].encode()
                i += 2
            else:
                raise ValueError(f"bad escape {text[i:i + 2]!r}: escape one of"
                                 " \\ , + \" ; < > # = space, or write two hex digits")
            trailing_space = False
            continue
        if char in _MUST_ESCAPE:
            raise ValueError(f"{char!r} must be escaped in a value ({_escape(char)})")
        raw += char.encode()
        trailing_space = char == " "
        i += 1
    if trailing_space:
        raise ValueError("a trailing space must be escaped (\\ )")
    try:
        return raw.decode(), i
    except UnicodeDecodeError:
        raise ValueError("the \\XX escapes are not UTF-8") from None


def parse_subject(text: str) -> Subject:
    """A subject written as ``CN=ci,O=Example`` (RFC 4514 escaping, the certificate's order)."""
    if not text:
        raise ValueError("the subject is empty")
    rdns: list[list[tuple[str, str]]] = [[]]
    i = 0
    while True:
        equals = text.find("=", i)
        name = text[i:equals] if equals >= 0 else text[i:]
        if equals < 0 or not _TYPE.fullmatch(name):
            raise ValueError(f"expected TYPE=value at {text[i:]!r} (no spaces around , + =)")
        value, i = _parse_value(text, equals + 1)
        rdns[-1].append((name, value))
        if i == len(text):
            return make_subject(rdns)
        if text[i] == ",":
            rdns.append([])
        i += 1


CLOSED_IN_HANDSHAKE = (
    "TLS handshake failed: the server closed the connection (it may be busy, with too many"
    " unauthenticated connections: try again later)"
)
"""A TLS server refusing a newcomer (max_startups) can only close: there is no channel yet."""


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """A one-line explanation of a TLS failure, naming the likely cause."""
    reason = getattr(exc, "reason", None) or ""
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"):
        return "TLS handshake failed: the server does not speak TLS (a plaintext rexec server?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS handshake failed: the server's certificate is not trusted:"
                f" {exc.verify_message}")
    if "CERTIFICATE_REQUIRED" in reason or "certificate required" in str(exc):
        return "TLS handshake failed: the server requires a client certificate (--tls-cert)"
    if reason.endswith(("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_UNKNOWN")):
        return "TLS handshake failed: the server rejected the client certificate"
    if reason.endswith("ALERT_HANDSHAKE_FAILURE"):
        return ("TLS handshake failed: the server refused the handshake (a client certificate"
                " may be required)")
    return f"TLS handshake failed: {exc.reason or exc}"
