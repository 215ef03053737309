"""The example config files under config/ load as documented."""

from __future__ import annotations

from rexec.client.settings import ClientSettings
from rexec.config import load_settings
from rexec.server.settings import ServerSettings
from tests.helpers import ROOT


def test_example_server_config_loads():
    settings = load_settings(ServerSettings, "server", ROOT / "config" / "server.toml", environ={})
    assert (settings.host, settings.port) == ("127.0.0.1", 7878)
    assert settings.token is None
    assert settings.kill_grace == 5.0
    assert (settings.max_startups, settings.per_source_max_startups) == ("128:30:512", 64)


def test_example_client_config_loads():
    settings = load_settings(ClientSettings, "client", ROOT / "config" / "client.toml", environ={})
    assert settings.connect_timeout == 10.0
