"""TLS contexts for the server and the client, built from certificate files.

Both sides require TLS 1.2 or later and keep the ssl module's modern defaults (certificate and
hostname verification on the client, forward-secret AEAD suites). Mutual TLS: a server given a
client CA requires a client certificate signed by it, and the certificate's subject becomes the
client's identity. Every file problem becomes a ConfigError naming the file.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from rexec.errors import ConfigError

# The first byte of every TLS record a client sends first (a handshake record).
TLS_HANDSHAKE_RECORD = 0x16


def _load(what: str, path: Path, action: Any) -> None:
    try:
        action()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot load {what} {path}: {exc}") from None


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context presenting ``cert``; with ``client_ca``, client certs are required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load("TLS certificate/key", cert, lambda: context.load_cert_chain(cert, key))
    if client_ca is not None:
        _load("client CA file", client_ca, lambda: context.load_verify_locations(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context trusting only ``ca``, checking the host name, maybe presenting a cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load("CA file", ca, lambda: context.load_verify_locations(ca))
    if cert is not None:
        _load("client certificate/key", cert, lambda: context.load_cert_chain(cert, key))
    return context


_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "emailAddress",
}


def subject_of(peercert: dict[str, Any] | None) -> str | None:
    """A certificate's subject as ``CN=alice,O=Example`` (None without a certificate)."""
    if not peercert or "subject" not in peercert:
        return None
    parts = []
    for rdn in peercert["subject"]:
        for name, value in rdn:
            parts.append(f"{_SHORT_NAMES.get(name, name)}={value}")
    return ",".join(parts)


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
