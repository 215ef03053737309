"""How the client trusts a server: a CA, a pinned fingerprint, or known_hosts (trust on first use).

With a CA (``tls_ca``) the TLS handshake itself checks the chain and the host name. With a pin
(``tls_pin``) or trust on first use (``tls = "tofu"``) the context checks nothing and
``check_server`` compares the SHA-256 fingerprint of the server's certificate right after the
handshake, before the client sends a single byte of the rexec protocol. Both drivers call these
two functions; only the TLS paths import this module (it loads ssl).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from rexec.client.known_hosts import add_known_host, read_known_hosts
from rexec.client.options import ConnectOptions
from rexec.errors import ConnectError
from rexec.tls import client_context, fingerprint
from rexec.wire.address import format_address

log = logging.getLogger("rexec.client")


def tls_context(options: ConnectOptions) -> ssl.SSLContext | None:
    """The client's TLS context for ``options`` (None: plaintext); ConfigError on bad files."""
    if not options.uses_tls:
        return None
    return client_context(options.tls_ca, options.tls_cert, options.tls_key)


def check_server(options: ConnectOptions, certificate: bytes | None) -> None:
    """Check the server certificate (DER) against the pin or known_hosts; ConnectError if not.

    On first use (tofu, no line for the address) the fingerprint is recorded and a notice
    logged on ``rexec.client`` (which Python's last-resort handler prints on stderr).
    """
    if options.tls_pin is None and not options.tls_tofu:
        return  # a CA: the handshake verified the chain and the host name
    if certificate is None:  # pragma: no cover - a TLS 1.2+ server always sends one
        raise ConnectError(f"{options.address}: the server sent no TLS certificate")
    seen = fingerprint(certificate)
    if options.tls_pin is not None:
        if seen != options.tls_pin:
            raise ConnectError(
                f"{options.address}: the server's TLS certificate has fingerprint {seen}, not the"
                f" pinned {options.tls_pin}: refusing to connect (the certificate changed, or"
                " someone is intercepting the connection)")
        return
    path = options.known_hosts
    address = format_address(options.host, options.port)
    recorded = [e for e in read_known_hosts(path) if e.address == address]
    if any(e.fingerprint == seen for e in recorded):
        return
    if recorded:
        raise ConnectError(changed_warning(address, seen, path, recorded[0].line,
                                           recorded[0].text))
    add_known_host(path, address, seen)
    log.warning("rexec: %s: first connection; its TLS certificate fingerprint %s is now"
                " recorded in %s (trust on first use)", address, seen, path)


def changed_warning(address: str, seen: str, path: Path, line: int, text: str) -> str:
    """ssh's warning for a changed host key, for a server certificate that changed."""
    bar = "@" * 59
    return "\n".join((
        f"{address}: the server's TLS certificate is not the one recorded in known_hosts",
        bar,
        "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
        bar,
        "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!",
        "Someone could be eavesdropping on you right now (man-in-the-middle attack)!",
        "It is also possible that the server's TLS certificate has just been changed.",
        f"The fingerprint of the TLS certificate sent by {address} is",
        f"{seen}.",
        "Please contact your system administrator.",
        f"Offending line in {path}:{line}:",
        f"  {text}",
        f"To trust the new certificate, remove that line: rexec tls forget {address}",
        "Certificate verification failed: refusing to connect.",
    ))

