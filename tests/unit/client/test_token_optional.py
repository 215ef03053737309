"""token_required=False: ping and discover resolve a host's options without a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from rexec.client.options import ConnectOptions
from rexec.errors import ConfigError
from rexec.fleet.inventory import Inventory, InventoryError
from tests.helpers import write_token


def test_an_address_resolves_without_a_token_when_none_is_required() -> None:
    with pytest.raises(ConfigError, match="no token"):
        ConnectOptions.resolve("web1:1")
    options = ConnectOptions.resolve("web1:1", token_required=False, identity="ops")
    assert (options.token, options.token_source, options.identity) == (None, "no token", "ops")


def test_a_token_found_is_still_used_when_none_is_required(tmp_path: Path) -> None:
    token_file = write_token(tmp_path / "token")
    options = ConnectOptions.resolve("web1:1", token_file=token_file, token_required=False)
    assert options.token is not None


def test_an_inventory_host_resolves_without_a_token_when_none_is_required(
        tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text('[hosts.a]\naddress = "127.0.0.2"\n')
    with pytest.raises(InventoryError, match="no token"):
        Inventory.load([path]).resolve("a")
    (target,) = Inventory.load([path], token_required=False).resolve("a")
    assert (target.options.address, target.options.token) == ("127.0.0.2:7878", None)
