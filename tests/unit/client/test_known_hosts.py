"""known_hosts (rexec/client/known_hosts.py): parsing, corrupt files, atomic 0600 writes."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.client.known_hosts import (
    add_known_host,
    canonical_address,
    forget_known_host,
    parse_known_hosts,
    read_known_hosts,
)
from rexec.errors import ConfigError, KnownHostsError
from rexec.tls import format_fingerprint

A = format_fingerprint(hashlib.sha256(b"a").digest())
B = format_fingerprint(hashlib.sha256(b"b").digest())
FILE = Path("/home/u/.rexec/known_hosts")


def test_lines_comments_and_blanks() -> None:
    text = f"# servers\n\nweb1:7878 {A}\n  [::1]:9000   {B}  \n# the end"
    entries = parse_known_hosts(text, FILE)
    assert [(e.address, e.fingerprint, e.line) for e in entries] == [
        ("web1:7878", A, 3), ("[::1]:9000", B, 4)]
    assert entries[1].text == f"[::1]:9000   {B}"


def test_hex_fingerprints_and_addresses_are_made_canonical() -> None:
    digest = hashlib.sha256(b"a").digest()
    colons = ":".join(f"{byte:02X}" for byte in digest)
    entries = parse_known_hosts(f"web1 {colons}\n", FILE)
    assert (entries[0].address, entries[0].fingerprint) == ("web1:7878", A)


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("web1:7878\n", 1, "expected 'HOST:PORT SHA256:...', found 1 field(s)"),
    (f"# ok\nweb1:7878 {A} extra\n", 2, "found 3 field(s)"),
    ("web1:7878 SHA256:nope\n", 1, "is not a SHA-256 fingerprint"),
    (f"web1:7878 {A}\nweb1:99999 {A}\n", 2, "is not a number 1-65535"),
    (f"[::1 {A}\n", 1, "bad address"),
    (f"{A} web1:7878\n", 1, ""),  # the fields swapped
])
def test_a_corrupt_line_names_the_file_and_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(KnownHostsError) as info:
        parse_known_hosts(text, FILE)
    assert f"known_hosts file {FILE}, line {line}: " in str(info.value)
    assert reason in str(info.value)
    assert isinstance(info.value, ConfigError)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_known_hosts_error(text: str) -> None:
    try:
        entries = parse_known_hosts(text, FILE)
    except KnownHostsError as exc:
        assert str(FILE) in str(exc)
    else:
        assert all(e.fingerprint.startswith("SHA256:") for e in entries)


HOSTS = st.tuples(st.sampled_from(["web1", "10.0.0.1", "[::1]", "a.example"]),
                  st.integers(1, 65535))
DIGESTS = st.binary(min_size=32, max_size=32).map(format_fingerprint)


@given(st.lists(st.tuples(HOSTS, DIGESTS), max_size=8))
def test_written_lines_read_back(entries: list[tuple[tuple[str, int], str]]) -> None:
    text = "".join(f"{host}:{port} {print_}\n" for (host, port), print_ in entries)
    parsed = parse_known_hosts(text, FILE)
    assert [(e.address, e.fingerprint) for e in parsed] == [
        (canonical_address(f"{host}:{port}"), print_) for (host, port), print_ in entries]


def test_a_missing_file_has_no_entries(tmp_path: Path) -> None:
    assert read_known_hosts(tmp_path / "none") == []


def test_add_makes_the_folder_and_a_0600_file_and_keeps_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "home" / "known_hosts"
    add_known_host(path, "web1:7878", A)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.write_text(f"# mine\nweb1:7878 {A}")  # no final newline
    add_known_host(path, "web2:7878", B)
    assert path.read_text() == f"# mine\nweb1:7878 {A}\nweb2:7878 {B}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["known_hosts"]  # no temporary left


def test_add_never_extends_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("garbage\n")
    with pytest.raises(KnownHostsError, match="line 1"):
        add_known_host(path, "web1:7878", A)
    assert path.read_text() == "garbage\n"


def test_forget_removes_every_line_of_one_address(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# keep\nweb1:7878 {A}\nweb2:7878 {B}\nweb1 {B}\n")
    removed = forget_known_host(path, "web1:7878")
    assert [e.line for e in removed] == [2, 4]
    assert path.read_text() == f"# keep\nweb2:7878 {B}\n"
    assert forget_known_host(path, "web3:7878") == []
    with pytest.raises(ValueError, match="bad address"):
        forget_known_host(path, "web1:x")
