"""How the client trusts a server certificate (rexec/client/trust.py): pin and trust on first use.

The certificate is any DER bytes here: only its SHA-256 matters. Real handshakes are in
tests/e2e/test_tls_easy.py.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from rexec.client.options import ConnectOptions
from rexec.client.trust import check_server, tls_context
from rexec.errors import ConfigError, ConnectError, KnownHostsError
from rexec.tls import fingerprint

CERT, OTHER = b"certificate one", b"certificate two"
TOKEN = "test-token-0123456789abcdef"


def options(**kwargs: object) -> ConnectOptions:
    return ConnectOptions.resolve("127.0.0.1:7878", token=TOKEN, **kwargs)  # type: ignore[arg-type]


def test_a_pinned_fingerprint_matches() -> None:
    check_server(options(tls_pin=fingerprint(CERT)), CERT)


def test_a_different_certificate_is_refused_by_the_pin() -> None:
    with pytest.raises(ConnectError) as info:
        check_server(options(tls_pin=fingerprint(CERT)), OTHER)
    assert f"has fingerprint {fingerprint(OTHER)}, not the pinned {fingerprint(CERT)}" in str(
        info.value)


def test_first_use_records_and_says_so(isolated_home: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "rexec.client"):
        check_server(options(tls_tofu=True), CERT)
    path = isolated_home / "known_hosts"
    assert path.read_text() == f"127.0.0.1:7878 {fingerprint(CERT)}\n"
    assert "first connection" in caplog.text and str(path) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "rexec.client"):
        check_server(options(tls_tofu=True), CERT)  # a match: nothing said, nothing written
    assert caplog.text == ""
    assert path.read_text().count("\n") == 1


def test_a_changed_certificate_is_refused_with_ssh_s_warning(isolated_home: Path) -> None:
    path = isolated_home / "known_hosts"
    path.write_text(f"# servers\nweb1:7878 {fingerprint(OTHER)}\n127.0.0.1:7878"
                    f" {fingerprint(OTHER)}\n")
    with pytest.raises(ConnectError) as info:
        check_server(options(tls_tofu=True), CERT)
    message = str(info.value)
    assert "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!" in message
    assert fingerprint(CERT) in message
    assert f"Offending line in {path}:3:\n  127.0.0.1:7878 {fingerprint(OTHER)}" in message
    assert "rexec tls forget 127.0.0.1:7878" in message
    assert fingerprint(CERT) not in path.read_text()  # nothing recorded


def test_other_servers_lines_do_not_count(isolated_home: Path) -> None:
    (isolated_home / "known_hosts").write_text(f"127.0.0.1:7879 {fingerprint(OTHER)}\n")
    check_server(options(tls_tofu=True), CERT)
    assert f"127.0.0.1:7878 {fingerprint(CERT)}" in (isolated_home / "known_hosts").read_text()


def test_a_corrupt_known_hosts_is_refused(isolated_home: Path) -> None:
    (isolated_home / "known_hosts").write_text("127.0.0.1:7878\n")
    with pytest.raises(KnownHostsError, match=r"known_hosts, line 1: "):
        check_server(options(tls_tofu=True), CERT)


def test_the_config_can_name_the_known_hosts_file(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text('[client]\ntls = "tofu"\nknown_hosts = "trusted"\n')
    resolved = options(config=config)
    assert resolved.tls_tofu and resolved.known_hosts == tmp_path / "trusted"
    check_server(resolved, CERT)
    assert (tmp_path / "trusted").exists()


def test_with_a_ca_nothing_is_checked_after_the_handshake(tmp_path: Path) -> None:
    check_server(ConnectOptions.resolve("h:1", token=TOKEN, tls_ca=tmp_path / "ca.pem"), CERT)


def test_pin_and_tofu_contexts_verify_nothing_a_ca_context_everything(tmp_path: Path) -> None:
    pinned = tls_context(options(tls_pin=fingerprint(CERT)))
    assert pinned is not None
    assert pinned.verify_mode == ssl.CERT_NONE and not pinned.check_hostname
    assert tls_context(options()) is None
    with pytest.raises(ConfigError, match="CA file"):
        tls_context(options(tls_ca=tmp_path / "missing.pem"))
