"""Keys and certificates, made with the ``cryptography`` package.

The server's self-signed certificate of ``rexec-server --tls auto`` (made once into its home,
as sshd makes its host keys) and the small CA, server and client certificates of
``rexec tls init``. Only the server and ``rexec tls init`` import this module: a client never
needs cryptography (``tests/unit/test_imports.py`` checks the one-host path). Keys are ECDSA
P-256, written mode 0600 atomically; certificates are PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rexec.errors import ConfigError
from rexec.tls import certificate_fingerprint
from rexec.tokens import default_home, write_private_file

CA_DAYS = 3650  # ten years: a small private CA is replaced by hand, not renewed by a robot
LEAF_DAYS = 3650
# RFC 5280 4.1.2.5: a certificate with no well-defined expiry, as a host key has none.
NO_EXPIRY = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
_DNS_NAME = re.compile(r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}"
                       r"(?<!-))*\.?|\*\.[A-Za-z0-9.-]+")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, not yet written."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        """The certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key, PEM (PKCS#8, unencrypted: the file's mode protects it)."""
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, cert: Path, key: Path, *, replace: bool = False) -> None:
        """Write the key (0600) and the certificate (0644), never over a file unless ``replace``."""
        write_private_file(key, self.key_pem(), replace=replace)
        write_private_file(cert, self.cert_pem(), replace=replace)
        cert.chmod(0o644)  # a certificate is public


def subject_alt_name(names: Sequence[str]) -> x509.SubjectAlternativeName:
    """Host names and IP addresses as a SAN extension (ValueError for a name that is neither)."""
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not _DNS_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is neither a host name nor an IP address") from None
            general.append(x509.DNSName(name.rstrip(".")))
    return x509.SubjectAlternativeName(general)


def _build(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: Issued | None,
           days: int | None) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew
        .not_valid_after(NO_EXPIRY if days is None else now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            (issuer.key if issuer else key).public_key()), critical=False)
    )


def _leaf(builder: x509.CertificateBuilder,
          usage: x509.ObjectIdentifier) -> x509.CertificateBuilder:
    return (builder
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(common_name: str = "rexec CA") -> Issued:
    """A self-signed CA that signs only end certificates (path length 0)."""
    key = new_key()
    builder = (_build(_name(common_name), key, None, CA_DAYS)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=False, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                   crl_sign=True, encipher_only=False, decipher_only=False), critical=True))
    return Issued(builder.sign(key, hashes.SHA256()), key)


def issue_server(ca: Issued, names: Sequence[str]) -> Issued:
    """A server certificate signed by ``ca`` for ``names`` (CN: the first)."""
    key = new_key()
    builder = _leaf(_build(_name(names[0]), key, ca, LEAF_DAYS), ExtendedKeyUsageOID.SERVER_AUTH)
    builder = builder.add_extension(subject_alt_name(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def issue_client(ca: Issued, identity: str) -> Issued:
    """A client certificate signed by ``ca`` whose subject is exactly ``CN=identity``."""
    key = new_key()
    builder = _leaf(_build(_name(identity), key, ca, LEAF_DAYS), ExtendedKeyUsageOID.CLIENT_AUTH)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def self_signed_server(names: Sequence[str]) -> Issued:
    """A self-signed server certificate for ``names`` that never expires (as a host key).

    It is its own CA too (``tls_ca`` may name it, host names then checked); clients usually pin
    its fingerprint or trust it on first use instead.
    """
    key = new_key()
    builder = (_build(_name(names[0]), key, None, None)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(subject_alt_name(names), critical=False))
    return Issued(builder.sign(key, hashes.SHA256()), key)


def _unspecified(host: str) -> bool:
    """Whether ``host`` is the any-address (0.0.0.0, ::), which no client connects to."""
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def server_names(host: str | Sequence[str]) -> list[str]:
    """What the automatic certificate names: this machine, localhost, loopback and ``host``
    (each of them, for a server listening on several addresses)."""
    names = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    names += [name for name in ([host] if isinstance(host, str) else host)
              if not _unspecified(name)]
    valid = []
    for name in names:
        try:
            subject_alt_name([name])
        except ValueError:
            continue  # an odd host name: pinning does not need it
        if name not in valid:
            valid.append(name)
    return valid


@dataclass(frozen=True)
class AutoCertificate:
    """The server's automatic certificate: where it is, its fingerprint, whether it is new."""

    cert: Path
    key: Path
    fingerprint: str
    created: bool

    def describe(self) -> str:
        """What the server says at start: where its certificate is and its fingerprint."""
        done = "generated a TLS certificate" if self.created else "using the TLS certificate"
        return (f"{done} {self.cert} (key {self.key}, readable only by you); its fingerprint"
                f" is {self.fingerprint} (clients: --tls-pin {self.fingerprint}, or --tls-tofu)")


def auto_certificate(host: str | Sequence[str], home: Path | None = None) -> AutoCertificate:
    """The server's own certificate in ``home`` (server.crt, server.key), made on first start.

    ConfigError when only one of the two files exists: a lost key is not silently replaced,
    since clients that pinned the old certificate would all be told it changed.
    """
    home = default_home() if home is None else home
    cert, key = home / "server.crt", home / "server.key"
    present = [path for path in (cert, key) if path.exists()]
    created = False
    if len(present) == 1:
        missing = key if present[0] == cert else cert
        raise ConfigError(f"tls = \"auto\": {present[0]} exists but {missing} does not;"
                          " restore it, or remove both to make a new certificate (clients"
                          " that pinned or recorded the old one will refuse the new one)")
    if not present:
        try:
            self_signed_server(server_names(host)).write(cert, key)
        except FileExistsError:
            pass  # another server made it a moment ago: use theirs
        except OSError as exc:
            raise ConfigError(f"tls = \"auto\": cannot write {key}: {exc.strerror or exc}")\
                from None
        else:
            created = True
    return AutoCertificate(cert, key, certificate_fingerprint(cert), created)
