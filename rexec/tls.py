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
_ESCAPABLE = _ESCAPED | {" ", "#", "=", "/"}
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


def _skip_spaces(text: str, i: int) -> int:
    while text.startswith(" ", i):
        i += 1
    return i


def _escaped(text: str, i: int, raw: bytearray) -> int:
    """Append the escape at ``text[i]`` (a backslash) to ``raw``; return where it ends."""
    pair = text[i + 1:i + 3]
    if _HEX_PAIR.fullmatch(pair):
        raw.append(int(pair, 16))
        return i + 3
    if text[i + 1:i + 2] in _ESCAPABLE:
        raw += text[i + 1].encode()
        return i + 2
    raise ValueError(f"bad escape {text[i:i + 2]!r}: escape one of"
                     " \\ , + \" ; < > # = / space, or write two hex digits")


def _parse_quoted(text: str, i: int) -> tuple[bytearray, int]:
    """A value in double quotes (as openssl prints one with separators) from ``text[i]``."""
    raw = bytearray()
    i += 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\":
            i = _escaped(text, i, raw)
        else:
            raw += text[i].encode()
            i += 1
    if i == len(text):
        raise ValueError("a quoted value has no closing '\"'")
    return raw, i + 1


def _parse_value(text: str, i: int, rdn_separator: str) -> tuple[str, int]:
    """The string value starting at ``text[i]``, and where it ends.

    Spaces that are not escaped are dropped at either end: RFC 4514 does not allow them there,
    so ``CN = ci`` can only mean ``CN=ci``; a space that belongs to the value is written ``\\ ``.
    """
    if text.startswith('"', i):
        raw, i = _parse_quoted(text, i)
        i = _skip_spaces(text, i)
        if i < len(text) and text[i] not in (rdn_separator, "+"):
            raise ValueError(f"expected {rdn_separator!r} or '+' after a quoted value at"
                             f" {text[i:]!r}")
        keep = len(raw)
    else:
        if text.startswith("#", i):
            raise ValueError("a value starting with '#' would be hex-encoded BER, which rexec"
                             " does not take: write \\# for a '#'")
        must_escape = _MUST_ESCAPE | ({","} if rdn_separator == "/" else set())
        raw, keep = bytearray(), 0
        while i < len(text) and text[i] not in (rdn_separator, "+"):
            char = text[i]
            if char == "\\":
                i = _escaped(text, i, raw)
            elif char in must_escape:
                raise ValueError(f"{char!r} must be escaped in a value ({_escape(char)})")
            else:
                raw += char.encode()
                i += 1
                if char == " ":
                    continue  # kept only if more of the value follows
            keep = len(raw)
    try:
        return raw[:keep].decode(), i
    except UnicodeDecodeError:
        raise ValueError("the \\XX escapes are not UTF-8") from None


_LABEL = re.compile(r" *subject *[=:] *", re.IGNORECASE)  # what openssl prints before one


def parse_subject(text: str) -> Subject:
    """A subject written as ``CN=ci,O=Example`` (RFC 4514 escaping, the certificate's order).

    Also as openssl prints it: ``subject=CN = ci, O = Example`` (spaces around separators,
    values with separators in double quotes) and ``/CN=ci/O=Example`` (``-subj``; then a
    comma in a value must be escaped, ``\\,``, so it is never read as a separator).
    """
    label = _LABEL.match(text)
    i = _skip_spaces(text, label.end() if label else 0)
    if i == len(text):
        raise ValueError("the subject is empty")
    separator = ","
    if text.startswith("/", i):
        separator, i = "/", i + 1
    rdns: list[list[tuple[str, str]]] = [[]]
    while True:
        i = _skip_spaces(text, i)
        equals = text.find("=", i)
        name = (text[i:equals] if equals >= 0 else text[i:]).rstrip(" ")
        if equals < 0 or not _TYPE.fullmatch(name):
            raise ValueError(f"expected TYPE=value at {text[i:]!r}")
        value, i = _parse_value(text, _skip_spaces(text, equals + 1), separator)
        rdns[-1].append((name, value))
        if i == len(text):
            return make_subject(rdns)
        if text[i] == separator:
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
