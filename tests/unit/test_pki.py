"""Keys and certificates (rexec/pki.py): the server's automatic certificate and the small CA."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from rexec.errors import ConfigError
from rexec.pki import (
    auto_certificate,
    issue_client,
    issue_server,
    new_ca,
    server_names,
    subject_alt_name,
)
from rexec.tls import certificate_fingerprint, parse_subject, server_context, subject_of


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_automatic_certificate_is_made_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = auto_certificate("127.0.0.1", home)
    assert first.created
    assert (first.cert, first.key) == (home / "server.crt", home / "server.key")
    assert (mode(first.key), mode(first.cert), mode(home)) == (0o600, 0o644, 0o700)
    assert first.fingerprint == certificate_fingerprint(first.cert)
    assert first.fingerprint in first.describe() and "generated" in first.describe()
    again = auto_certificate("127.0.0.1", home)
    assert (again.created, again.fingerprint) == (False, first.fingerprint)
    assert "using the TLS certificate" in again.describe()
    server_context(again.cert, again.key)  # a usable pair


def test_the_automatic_certificate_names_the_host_and_never_expires(tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate(auto_certificate("10.1.2.3", tmp_path).cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost"} <= set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1", "10.1.2.3"} <= ips
    assert cert.not_valid_after_utc.year == 9999


@pytest.mark.parametrize("present", ["server.crt", "server.key"])
def test_a_lone_file_is_not_replaced(tmp_path: Path, present: str) -> None:
    (tmp_path / present).write_text("kept")
    with pytest.raises(ConfigError, match=r"exists but .* does not"):
        auto_certificate("127.0.0.1", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [present]


def test_server_names_skip_the_any_address() -> None:
    any_address = "0.0.0.0"  # noqa: S104 - a name, not a bind
    assert any_address not in server_names(any_address)
    assert "::" not in server_names("::")
    assert server_names("web1.example")[-1] == "web1.example"


def test_a_ca_signs_server_and_client_certificates(tmp_path: Path) -> None:
    ca = new_ca()
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    server = issue_server(ca, ["web1.example", "127.0.0.1"])
    client = issue_client(ca, "ci")
    for name, issued in (("server", server), ("ci", client)):
        issued.write(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        assert mode(tmp_path / f"{name}.key") == 0o600
        issued.certificate.verify_directly_issued_by(ca.certificate)
    usage = client.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    context = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    context.load_cert_chain(tmp_path / "ci.crt", tmp_path / "ci.key")
    decoded = ssl._ssl._test_decode_cert(str(tmp_path / "ci.crt"))  # type: ignore[attr-defined]
    assert subject_of(decoded) == parse_subject("CN=ci")


def test_write_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_text("mine")
    with pytest.raises(FileExistsError):
        new_ca().write(tmp_path / "ca.crt", tmp_path / "ca.key")
    assert (tmp_path / "ca.key").read_text() == "mine"


@pytest.mark.parametrize("name", ["bad name", "-x.example", "a..b", "", "x" * 64 + ".example"])
def test_what_is_no_host_name(name: str) -> None:
    with pytest.raises(ValueError, match="neither a host name nor an IP address"):
        subject_alt_name([name])
