"""ConnectOptions: the one resolution of a connection's options, shared by both clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from rexec.client.aio import Client
from rexec.client.blocking import BlockingClient
from rexec.client.options import ConnectOptions
from rexec.errors import ConfigError


def test_keywords_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REXEC_TOKEN", "env-token")
    options = ConnectOptions.resolve("web1:1234", connect_timeout=3, identity="ops")
    assert (options.host, options.port, options.address) == ("web1", 1234, "web1:1234")
    assert (options.token, options.identity, options.connect_timeout) == ("env-token", "ops", 3.0)
    assert options.tls_ca is None
    assert ConnectOptions.resolve("web1", token="kw-token").token == "kw-token"


def test_keepalive_comes_from_the_keyword_or_the_config_file_and_zero_turns_it_off(
        tmp_path: Path) -> None:
    assert ConnectOptions.resolve("web1:1", token="t").keepalive == 30.0
    config = tmp_path / "client.toml"
    config.write_text("[client]\nkeepalive = 4.5\n")
    assert ConnectOptions.resolve("web1:1", token="t", config=config).keepalive == 4.5
    assert ConnectOptions.resolve("web1:1", token="t", config=config, keepalive=0).keepalive == 0
    config.write_text("[client]\nkeepalive = -1\n")
    with pytest.raises(ConfigError, match="keepalive"):
        ConnectOptions.resolve("web1:1", token="t", config=config)


def test_the_token_never_shows_in_the_repr() -> None:
    options = ConnectOptions.resolve("web1:1", token="s3cret-token")
    assert "s3cret-token" not in repr(options)
    assert "web1" in repr(options)


def test_a_bad_address_is_reported_before_a_missing_token() -> None:
    with pytest.raises(ConfigError, match="port"):
        ConnectOptions.resolve("web1:notaport")
    with pytest.raises(ConfigError, match="no token"):
        ConnectOptions.resolve("web1:1")


def test_relative_tls_paths_are_paths(tmp_path: Path) -> None:
    options = ConnectOptions.resolve("web1:1", token="t", tls_ca=tmp_path / "ca.pem")
    assert options.tls_ca == tmp_path / "ca.pem"


@pytest.mark.parametrize("client_class", [Client, BlockingClient])
def test_both_clients_resolve_their_keywords_to_the_same_options(
    client_class: type[Client] | type[BlockingClient],
) -> None:
    options = ConnectOptions.resolve("web1:1", token="t", identity="ops", connect_timeout=2)
    by_keywords = client_class("web1:1", token="t", identity="ops", connect_timeout=2)
    by_options = client_class.from_options(options)
    assert by_keywords.options == by_options.options == options
    assert (by_options.host, by_options.port, by_options.settings) == ("web1", 1, options.settings)
    if isinstance(by_keywords, BlockingClient) and isinstance(by_options, BlockingClient):
        by_keywords.close()
        by_options.close()


# --- how the server is trusted: a CA, a pin or trust on first use (issue 11) ------------------

PIN = "SHA256:LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE"
PIN_HEX = ("2D:71:16:42:B7:26:B0:44:01:62:7C:A9:FB:AC:32:F5:C8:53:0F:B1:90:3C:C4:DB:02:25:87:17"
           ":92:1A:48:81")


def test_a_pin_is_kept_canonical() -> None:
    options = ConnectOptions.resolve("h:1", token="t" * 20, tls_pin=PIN_HEX)
    assert options.tls_pin == PIN and options.uses_tls and not options.tls_tofu
    with pytest.raises(ConfigError, match=r"^--tls-pin: .*is not a SHA-256 fingerprint"):
        ConnectOptions.resolve("h:1", token="t" * 20, tls_pin="SHA256:short")


def test_one_way_to_trust_the_server_per_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_ca and tls_pin are different ways"):
        ConnectOptions.resolve("h:1", token="t" * 20, tls_ca=tmp_path / "ca", tls_pin=PIN)
    with pytest.raises(ConfigError, match="tls_pin and tls_tofu are different ways"):
        ConnectOptions.resolve("h:1", token="t" * 20, tls_tofu=True, tls_pin=PIN)
    config = tmp_path / "client.toml"
    config.write_text(f'[client]\ntls = "tofu"\ntls_pin = "{PIN}"\n')
    with pytest.raises(ConfigError, match='tls_pin and tls = "tofu" are different ways'):
        ConnectOptions.resolve("h:1", token="t" * 20, config=config)


def test_the_command_line_s_trust_replaces_the_config_file_s(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text('[client]\ntls_ca = "ca.pem"\ntls_cert = "me.crt"\n')
    options = ConnectOptions.resolve("h:1", token="t" * 20, config=config, tls_pin=PIN)
    assert (options.tls_ca, options.tls_pin, options.tls_cert) == (None, PIN, tmp_path / "me.crt")
    options = ConnectOptions.resolve("h:1", token="t" * 20, config=config, tls_tofu=True)
    assert (options.tls_ca, options.tls_tofu) == (None, True)
    config.write_text('[client]\ntls = "tofu"\n')
    options = ConnectOptions.resolve("h:1", token="t" * 20, config=config, tls_ca="ca.pem")
    assert (options.tls_ca, options.tls_tofu) == (Path("ca.pem"), False)


def test_a_client_certificate_goes_with_any_way_of_trusting(tmp_path: Path) -> None:
    cert = tmp_path / "me.crt"
    assert ConnectOptions.resolve("h:1", tls_pin=PIN, tls_cert=cert).tls_cert == cert
    assert ConnectOptions.resolve("h:1", tls_tofu=True, tls_cert=cert).tls_tofu
    with pytest.raises(ConfigError, match='tls_cert needs tls_ca, tls_pin or tls = "tofu"'):
        ConnectOptions.resolve("h:1", tls_cert=cert)


def test_known_hosts_lives_in_rexec_home(isolated_home: Path) -> None:
    assert ConnectOptions.resolve("h:1", token="t" * 20).known_hosts == (
        isolated_home / "known_hosts")


def test_both_clients_take_pin_and_tofu() -> None:
    for client in (Client("h:1", token="t" * 20, tls_pin=PIN),
                   BlockingClient("h:1", token="t" * 20, tls_tofu=True)):
        assert client.options.uses_tls
