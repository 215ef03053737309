"""Certificate identities compare structured subjects (issue 9, finding 7), with real mTLS.

The old server compared comma-joined subject strings without escaping: a certificate whose
single CN is ``ci,O=Example`` logged in as the identity with ``certificate = "CN=ci,O=Example"``.
trustme makes the CA; the client certificates are made here, since their subjects are the point
(trustme always adds its own O and OU).
"""

from __future__ import annotations

import datetime
import json

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import rexec
from rexec import RexecError
from tests.helpers import start_server

CN, ORG = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME


def issue(ca: trustme.CA, rdns: list[list[tuple[x509.ObjectIdentifier, str]]], folder, name):
    """A client certificate signed by ``ca`` with exactly the subject ``rdns``, written out."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)
                                                         for oid, value in rdn]) for rdn in rdns])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("subjects-pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(d / "ca.pem")
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(d / "server.crt")
    server.private_key_pem.write_to_path(d / "server.key")
    (d / "server.key").chmod(0o600)  # rexec refuses private keys others can read
    return {
        "dir": d,
        "real": issue(ca, [[(CN, "ci")], [(ORG, "Example")]], d, "real"),
        "forged": issue(ca, [[(CN, "ci,O=Example")]], d, "forged"),
        "multi": issue(ca, [[(CN, "ci"), (ORG, "Example")]], d, "multi"),
    }


@pytest.fixture(scope="module")
def srv(tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("subjects-server")
    config = tmp / "server.toml"
    # "comma" is written as the server logs the forged certificate's subject (see below).
    config.write_text("""
[server.identities.ci]
certificate = "CN=ci,O=Example"

[server.identities.comma]
certificate = 'CN=ci\\,O=Example'
""")
    d = pki["dir"]
    server = start_server(tmp, "--config", str(config), "--tls-cert", str(d / "server.crt"),
                          "--tls-key", str(d / "server.key"), "--tls-client-ca", str(d / "ca.pem"))
    yield server
    assert server.stop() == 0, server.log()


def login(srv, pki, who: str, **kwargs) -> bytes:
    crt, key = pki[who]
    with rexec.BlockingClient(srv.address, tls_ca=pki["dir"] / "ca.pem", tls_cert=crt,
                              tls_key=key, **{"token": None, **kwargs}) as client:
        return client.run("echo in").stdout


def logins(srv) -> list[tuple[str, str]]:
    """(identity, subject) of each authenticated connection, from the server's log."""
    found = []
    for line in srv.log().splitlines():
        if '"authenticated"' in line:
            record = json.loads(line.split(" ", 4)[-1])
            found.append((record["identity"], record["subject"]))
    return found


def test_the_real_subject_logs_in(srv, pki):
    assert login(srv, pki, "real") == b"in\n"
    assert login(srv, pki, "real", identity="ci") == b"in\n"
    assert logins(srv).count(("ci", "CN=ci,O=Example")) == 2


@pytest.mark.parametrize("who", ["forged", "multi"])
def test_a_look_alike_subject_does_not_log_in_as_ci(srv, pki, who):
    """The old server logged both in as ci: it wrote either subject as CN=ci,O=Example."""
    with pytest.raises(RexecError):
        login(srv, pki, who, identity="ci")  # challenged for a (decoy) token it does not have
    if who == "forged":
        login(srv, pki, who)  # by its certificate alone it is "comma", written as logged
        assert logins(srv)[-1][0] == "comma"
    else:
        with pytest.raises(RexecError, match="token"):
            login(srv, pki, who)  # it matches no identity, so it is "default": a token is asked
    assert all(subject == "CN=ci,O=Example" for identity, subject in logins(srv)
               if identity == "ci")


def test_the_logged_subject_is_escaped_and_matches_exactly_when_copied(srv, pki):
    login(srv, pki, "forged", token=srv.token, identity="default")
    assert logins(srv)[-1] == ("default", "CN=ci\\,O=Example")
    assert login(srv, pki, "forged") == b"in\n"  # the config's "comma" is that spelling
    assert logins(srv)[-1] == ("comma", "CN=ci\\,O=Example")
    login(srv, pki, "multi", token=srv.token, identity="default")
    assert logins(srv)[-1] == ("default", "CN=ci+O=Example")
