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
