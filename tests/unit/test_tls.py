"""Certificate subjects as structures (rexec/tls.py): parsing, RFC 4514 escaping, round trips.

Issue 9, finding 7: subjects were compared as comma-joined strings without escaping, so a
certificate whose single CN is ``ci,O=Example`` logged in as ``certificate = "CN=ci,O=Example"``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.config import load_settings
from rexec.errors import ConfigError
from rexec.server.identity import Identities, Identity
from rexec.server.settings import ServerSettings
from rexec.tls import (
    _ATTRIBUTES,
    Subject,
    certificate_fingerprint,
    fingerprint,
    format_fingerprint,
    format_subject,
    make_subject,
    parse_fingerprint,
    parse_subject,
    subject_of,
)

CN, ORG, OU = "commonName", "organizationName", "organizationalUnitName"


def peercert(*rdns: tuple[tuple[str, str], ...]) -> dict[str, object]:
    """What ssl's getpeercert() gives: RDNs of (long name, value) pairs, in certificate order."""
    return {"subject": rdns, "issuer": ((("commonName", "CA"),),)}


# --- the attack ----------------------------------------------------------------------------


def test_a_comma_inside_a_value_is_not_a_second_attribute() -> None:
    configured = parse_subject("CN=ci,O=Example")
    forged = subject_of(peercert(((CN, "ci,O=Example"),)))
    real = subject_of(peercert(((CN, "ci"),), ((ORG, "Example"),)))
    assert configured == ((("commonName", "ci"),), (("organizationName", "Example"),))
    assert forged == ((("commonName", "ci,O=Example"),),)
    assert forged != configured
    assert real == configured
    assert forged is not None
    assert format_subject(forged) == r"CN=ci\,O=Example"  # what the log says, to copy exactly
    assert parse_subject(r"CN=ci\,O=Example") == forged
    ids = Identities({"ci": Identity("ci", None, configured)})
    assert ids.resolve(None, forged) is None
    assert ids.challenge_for(ids.by_name["ci"], "ci", forged)[0] == "token"  # i.e. a decoy
    assert ids.challenge_for(ids.by_name["ci"], "ci", real) == ("certificate", None)


@pytest.mark.parametrize(("forged_rdns", "configured"), [
    ((((CN, "ci+O=Example"),),), "CN=ci+O=Example"),  # a multi-valued RDN
    ((((ORG, "Example"), (OU, "ops")),), "O=Example,OU=ops"),  # two RDNs, not one
    ((((ORG, "Example"),), ((OU, "ops"),)), "O=Example+OU=ops"),
    ((((CN, "ci"), (ORG, "Example")),), "CN=ci,O=Example"),  # the old code joined both with ","
])
def test_other_forgeries_of_the_same_string(forged_rdns, configured: str) -> None:
    forged = subject_of(peercert(*forged_rdns))
    assert forged != parse_subject(configured)


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "subject"), [
    ("CN=alice", (((CN, "alice"),),)),
    ("CN=carol,O=Example", (((CN, "carol"),), ((ORG, "Example"),))),
    ("O=Example,CN=carol", (((ORG, "Example"),), ((CN, "carol"),))),  # order matters
    ("cn=alice", (((CN, "alice"),),)),  # type names are case-insensitive...
    ("commonName=alice", (((CN, "alice"),),)),  # ...short, long...
    ("2.5.4.3=alice", (((CN, "alice"),),)),  # ...or the OID
    ("CN=Alice", (((CN, "Alice"),),)),  # values are compared exactly
    ("DC=example,DC=com,UID=ci", ((("domainComponent", "example"),),
                                  (("domainComponent", "com"),), (("userId", "ci"),))),
    ("emailaddress=a@b.c", ((("emailAddress", "a@b.c"),),)),
    ("CN=a+UID=b", (((CN, "a"), ("userId", "b")),)),
    ("UID=b+CN=a", (((CN, "a"), ("userId", "b")),)),  # one RDN's attributes: any order
    (r"CN=ci\,O=Example", (((CN, "ci,O=Example"),),)),
    (r"CN=a\+b\"c\\d\;e\<f\>g\=h", (((CN, 'a+b"c\\d;e<f>g=h'),),)),
    ("CN=a=b", (((CN, "a=b"),),)),
    (r"CN=\#1,O=\ x\ ", (((CN, "#1"),), ((ORG, " x "),))),
    ("CN=a#b c", (((CN, "a#b c"),),)),  # '#' and spaces inside need no escape
    (r"CN=caf\C3\A9", (((CN, "café"),),)),  # hex pairs are UTF-8 bytes
    (r"CN=caf\c3\a9", (((CN, "café"),),)),
    (r"CN=\2C", (((CN, ","),),)),
    ("CN=café", (((CN, "café"),),)),
    ("CN=", (((CN, ""),),)),
    ("1.3.6.1.4.1.99999.1=x", ((("1.3.6.1.4.1.99999.1", "x"),),)),  # unknown to OpenSSL
    ("businessCategory=x", ((("businessCategory", "x"),),)),  # other types: as logged
    ("O=trustme v1.2.1,OU=Testing cert #Ab_1-2,CN=robot",  # what the old server logged
     (((ORG, "trustme v1.2.1"),), ((OU, "Testing cert #Ab_1-2"),), ((CN, "robot"),))),
])
def test_parse(text: str, subject: Subject) -> None:
    assert parse_subject(text) == subject


@pytest.mark.parametrize("text", [
    "CN=ci,O=Example",
    "CN = ci, O = Example",  # openssl x509 -noout -subject
    "subject=CN = ci, O = Example",
    "Subject: CN = ci, O = Example",  # openssl x509 -text
    " CN=ci ,O=Example ",
    "/CN=ci/O=Example",  # openssl req -subj, and old openssl's output
    "subject= /CN=ci/O=Example",
    'CN = "ci", O = Example',
    "cn=ci,o=Example",
])
def test_the_common_spellings_of_one_subject(text: str) -> None:
    """Spaces where RFC 4514 allows none unescaped, quotes and slashes cannot mean anything else."""
    assert parse_subject(text) == (((CN, "ci"),), ((ORG, "Example"),))


@pytest.mark.parametrize(("text", "subject"), [
    ('UID = 3 + CN = "ci, inc/x", O = Ex',  # openssl prints a value with a comma quoted
     (((CN, "ci, inc/x"), ("userId", "3")), ((ORG, "Ex"),))),
    (r'CN="a\"b"', (((CN, 'a"b'),),)),
    (r"/CN=a\/b\,c+UID=d", (((CN, "a/b,c"), ("userId", "d")),)),
    ("CN=a\\ ", (((CN, "a "),),)),  # an escaped space is kept, an unescaped one is not
    ("CN = a b", (((CN, "a b"),),)),
])
def test_openssl_spellings_keep_their_meaning(text: str, subject: Subject) -> None:
    assert parse_subject(text) == subject


@pytest.mark.parametrize(("text", "reason"), [
    ("", "the subject is empty"),
    ("CN", "expected TYPE=value at 'CN'"),
    ("=alice", "expected TYPE=value at '=alice'"),
    ("CN=a,", "expected TYPE=value at ''"),
    ("CN=a+", "expected TYPE=value at ''"),
    ("CN=#04026869", "hex-encoded BER"),
    ("/CN=ci,O=Example", "',' must be escaped"),  # never read as one CN or as two RDNs
    ('CN="a" b', "expected ',' or '+' after a quoted value"),
    ('CN="a', "no closing"),
    ("subject=", "the subject is empty"),

    ("CN=a;O=b", "';' must be escaped in a value (\\;)"),
    ('CN=a"b', "'\"' must be escaped"),
    ("CN=a<b>", "'<' must be escaped"),
    ("CN=a\0", r"must be escaped in a value (\00)"),
    ("CN=a\\", "bad escape '\\\\'"),
    ("CN=\\q", "bad escape '\\\\q'"),
    ("CN=\\C3", "not UTF-8"),
    ("1CN=a", "expected TYPE=value"),
    ("C_N=a", "expected TYPE=value"),
    ("01.2=a", "expected TYPE=value"),
])
def test_parse_refuses_what_is_not_one_subject(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_subject(text)
    assert reason in str(info.value)


# --- formatting ----------------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "text"), [
    ((((CN, "alice"),),), "CN=alice"),
    ((((CN, "ci"),), ((ORG, "Example"),)), "CN=ci,O=Example"),
    ((((CN, "a"), ("userId", "b")),), "CN=a+UID=b"),
    ((((CN, 'a,b+c"d\\e;f<g>h=i'),),), r'CN=a\,b\+c\"d\\e\;f\<g\>h=i'),
    ((((CN, "#x y "),),), r"CN=\#x y\ "),
    ((((CN, " "),),), r"CN=\ "),
    ((((CN, "a\0b\nc\x7f"),),), r"CN=a\00b\0Ac\7F"),
    ((((CN, "evil\u202etxt.exe"),),), r"CN=evil\E2\80\AEtxt.exe"),  # no hidden bidi override
    ((((CN, "café"),),), "CN=café"),
    (((("streetAddress", "1 Main St"),),), r"street=1 Main St"),
    (((("1.2.3.4", "x"), ("businessCategory", "y")),), "1.2.3.4=x+businessCategory=y"),
])
def test_format(subject: Subject, text: str) -> None:
    assert format_subject(subject) == text
    assert parse_subject(text) == make_subject(subject)


TYPES = st.one_of(
    st.sampled_from([long for _, long, _ in _ATTRIBUTES]),
    st.from_regex(r"[0-2](\.(0|[1-9][0-9]{0,3})){1,5}", fullmatch=True),
    st.from_regex(r"x[A-Za-z0-9-]{0,10}", fullmatch=True),  # types outside the table
)
VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
SUBJECTS = st.lists(st.lists(st.tuples(TYPES, VALUES), min_size=1, max_size=3),
                    min_size=1, max_size=5).map(make_subject)


@given(SUBJECTS)
def test_format_then_parse_gives_back_the_structure(subject: Subject) -> None:
    """So no two subjects are ever written the same: the log's spelling matches just one."""
    text = format_subject(subject)
    assert parse_subject(text) == subject
    assert make_subject(subject) == subject


def _spaced(subject: Subject, gap: str) -> str:
    """The subject as format_subject writes it, with ``gap`` around every = , and +."""
    from rexec.tls import _SHORT_NAMES, _escape

    return f"{gap},{gap}".join(f"{gap}+{gap}".join(
        f"{_SHORT_NAMES.get(name, name)}{gap}={gap}{_escape(value)}" for name, value in rdn)
        for rdn in subject)


@given(SUBJECTS, st.sampled_from([" ", "  "]))
def test_spaces_around_separators_never_change_the_subject(subject: Subject, gap: str) -> None:
    """What openssl prints (CN = ci, O = x) means the same subject, whatever the values hold."""
    assert parse_subject(_spaced(subject, gap)) == subject
    assert parse_subject("subject=" + _spaced(subject, gap)) == subject


@given(SUBJECTS, SUBJECTS)
def test_different_subjects_are_written_differently(a: Subject, b: Subject) -> None:
    assert (format_subject(a) == format_subject(b)) == (a == b)


@given(st.lists(st.tuples(st.sampled_from(["CN", "O", "OU"]),
                          st.sampled_from(["ci", "O=Example", ""])), min_size=1, max_size=4))
def test_one_value_with_separators_is_never_several_attributes(pairs) -> None:
    joined = ",".join(f"{name}={value}" for name, value in pairs)
    one = subject_of(peercert(((CN, joined),)))
    assert one is not None
    assert len(one) == 1
    assert parse_subject(format_subject(one)) == one


# --- the certificate side ------------------------------------------------------------------


def test_subject_of_keeps_the_certificates_order() -> None:
    cert = peercert(((ORG, "Example"),), ((OU, "ops"),), ((CN, "ci"),))
    assert subject_of(cert) == (((ORG, "Example"),), ((OU, "ops"),), ((CN, "ci"),))
    assert subject_of(None) is None
    assert subject_of({}) is None
    assert subject_of({"issuer": ()}) is None


def test_the_attribute_table_agrees_with_openssl() -> None:
    """subject_of relies on getpeercert() naming each attribute by OpenSSL's long name."""
    for short, long, oid in _ATTRIBUTES:
        obj = ssl._ASN1Object(oid)  # private, but what getpeercert's names come from
        assert (obj.longname, obj.oid) == (long, oid), short
        assert short in (obj.shortname, obj.longname)


# --- the config ----------------------------------------------------------------------------


def settings(tmp_path: Path, certificate: str) -> ServerSettings:
    config = tmp_path / "server.toml"
    config.write_text(f"[server.identities.ci]\ncertificate = {certificate}\n")
    return load_settings(ServerSettings, "server", config, environ={})


@pytest.mark.parametrize(("value", "subject"), [
    ('"CN=ci,O=Example"', (((CN, "ci"),), ((ORG, "Example"),))),
    ("'CN=ci\\,O=Example'", (((CN, "ci,O=Example"),),)),  # a TOML literal string
    ('"CN=ci\\\\,O=Example"', (((CN, "ci,O=Example"),),)),  # a basic string: \\ is \
    ('"CN = ci, O = Example"', (((CN, "ci"),), ((ORG, "Example"),))),  # copied from openssl
])
def test_the_config_parses_the_subject_once(tmp_path: Path, value: str, subject: Subject) -> None:
    identity = settings(tmp_path, value).identities["ci"].identity("ci")
    assert identity.certificate == subject


@pytest.mark.parametrize(("value", "fragment"), [
    ('"/CN=ci,O=Example"', "bad certificate subject '/CN=ci,O=Example': ',' must be escaped"),
    ('""', "bad certificate subject '': the subject is empty"),
    ('"CN=a;b"', "';' must be escaped"),
    ('{CN = "ci", O = "Example"}', "Input should be a valid string"),  # no table form
])
def test_a_bad_subject_is_a_config_error_naming_the_identity(
    tmp_path: Path, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, value)
    assert "identities.ci.certificate: " in str(info.value)
    assert fragment in str(info.value)


# --- fingerprints (issue 11) ---------------------------------------------------------------


def test_a_fingerprint_is_ssh_s_form_of_the_der_s_sha256() -> None:
    import base64
    import hashlib

    der = b"any DER bytes"
    digest = hashlib.sha256(der).digest()
    assert fingerprint(der) == "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    assert len(fingerprint(der)) == 7 + 43


@given(st.binary(min_size=32, max_size=32))
def test_every_spelling_of_a_fingerprint_parses_to_the_canonical_one(digest: bytes) -> None:
    canonical = format_fingerprint(digest)
    colons = ":".join(f"{byte:02X}" for byte in digest)
    for text in (canonical, f"  {canonical} ", "sha256:" + canonical[7:], colons,
                 colons.lower(), digest.hex(), f"sha256 Fingerprint={colons}",
                 f"SHA256 Fingerprint={colons}", f"SHA256:{colons}"):
        assert parse_fingerprint(text) == canonical


@pytest.mark.parametrize("text", [
    "", "SHA256:", "SHA256:abc", "SHA1:" + "A" * 43, "SHA256:" + "A" * 42 + "=",
    "SHA256:" + "A" * 44, "AB" * 31, "AB:" * 31 + "A", "AB" * 32 + "AB", "SHA256:" + "*" * 43,
    "MD5 Fingerprint=" + "AB:" * 15 + "AB",
])
def test_what_is_not_a_fingerprint(text: str) -> None:
    with pytest.raises(ValueError, match="is not a SHA-256 fingerprint"):
        parse_fingerprint(text)


def test_the_fingerprint_of_a_pem_file(tmp_path: Path) -> None:
    import trustme

    cert = trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0]
    path = tmp_path / "server.crt"
    path.write_bytes(b"junk before the block\n" + cert.bytes())
    der = ssl.PEM_cert_to_DER_cert(cert.bytes().decode())
    assert certificate_fingerprint(path) == fingerprint(der)
    with pytest.raises(ConfigError, match="does not exist"):
        certificate_fingerprint(tmp_path / "missing.crt")
    (tmp_path / "bad.crt").write_text("no certificate here")
    with pytest.raises(ConfigError, match="cannot read certificate"):
        certificate_fingerprint(tmp_path / "bad.crt")
