"""The one merge order of settings, and resolving the token (rexec/config.py, the wings'
settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rexec.client.settings import ClientSettings, client_settings
from rexec.config import load_settings, resolve_token
from rexec.errors import ConfigError
from rexec.server.settings import ServerSettings
from rexec.wire.address import DEFAULT_PORT
from tests.helpers import make_token_file

SECRET = "s3cret-token-value-XYZ"


# --- settings ------------------------------------------------------------------------------


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_file_env_or_cli() -> None:
    settings = load_settings(ServerSettings, "server", environ={})
    assert settings == ServerSettings()
    assert (settings.host, settings.port, settings.token) == ("127.0.0.1", DEFAULT_PORT, None)


def test_merge_order_defaults_file_env_cli(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", """
[server]
host = "10.1.2.3"
port = 1111
kill_grace = 1.5
token = "from-file"
""")
    from_file = load_settings(ServerSettings, "server", config, environ={})
    assert (from_file.host, from_file.port, from_file.kill_grace) == ("10.1.2.3", 1111, 1.5)
    assert from_file.log_level == "info"  # default kept
    assert from_file.token is not None
    assert from_file.token.get_secret_value() == "from-file"

    from_env = load_settings(ServerSettings, "server", config, environ={"REXEC_TOKEN": "env"})
    assert from_env.token is not None
    assert from_env.token.get_secret_value() == "env"
    assert from_env.port == 1111

    from_cli = load_settings(ServerSettings, "server", config,
                             cli={"token": "cli", "port": 2222, "host": None},
                             environ={"REXEC_TOKEN": "env"})
    assert from_cli.token is not None
    assert from_cli.token.get_secret_value() == "cli"
    assert (from_cli.port, from_cli.host) == (2222, "10.1.2.3")  # None means "not given"


def test_empty_rexec_token_is_ignored(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[client]\ntoken = "file"\n')
    settings = load_settings(ClientSettings, "client", config, environ={"REXEC_TOKEN": ""})
    assert settings.token is not None
    assert settings.token.get_secret_value() == "file"


def test_a_token_source_replaces_the_other_kind_from_a_lower_layer(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[client]\ntoken_file = "tok"\n')
    env = load_settings(ClientSettings, "client", config, environ={"REXEC_TOKEN": "env"})
    assert env.token_file is None
    cli = load_settings(ClientSettings, "client", config, cli={"token_file": Path("/x/t")},
                        environ={"REXEC_TOKEN": "env"})
    assert cli.token is None
    assert cli.token_file == Path("/x/t")


def test_relative_token_file_is_resolved_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = write_config(tmp_path / "etc" / "c.toml", '[client]\ntoken_file = "keys/tok"\n')
    settings = load_settings(ClientSettings, "client", config, environ={})
    assert settings.token_file == tmp_path / "etc" / "keys" / "tok"


def test_other_table_is_ignored_but_must_be_known(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[server]\nport = 1\n[client]\n')
    assert load_settings(ClientSettings, "client", config, environ={}) == ClientSettings()


def test_unknown_table_names_the_file_and_table(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[clinet]\ntoken = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(ClientSettings, "client", config, environ={})
    message = str(info.value)
    assert str(config) in message
    assert "unknown table(s) clinet" in message
    assert "expected: server, client" in message


def test_a_setting_outside_any_table_is_told_to_go_under_the_table(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", 'name = "web01"\n[server]\nport = 1\n')
    with pytest.raises(ConfigError) as info:
        load_settings(ClientSettings, "server", config, environ={})
    message = str(info.value)
    assert str(config) in message
    assert "name outside any table" in message
    assert "under [server]" in message


def test_unknown_field_names_the_file_table_and_field(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[server]\nprot = 1\n')
    with pytest.raises(ConfigError) as info:
        load_settings(ServerSettings, "server", config, environ={})
    message = str(info.value)
    assert message == (f"config file {config}: [server] prot: unknown setting 'prot';"
                       " did you mean 'port'?")


@pytest.mark.parametrize(("text", "fragment"), [
    ('[server]\nport = 70000\n', "port: Input should be less than or equal to 65535"),
    ('[server]\nlog_level = "loud"\n', "log_level"),
    ('[server]\nkill_grace = -1\n', "kill_grace"),
    ("server = 5\n", "'server' must be a table"),
    ("[server\n", "config file"),
])
def test_bad_values_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    config = write_config(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(ServerSettings, "server", config, environ={})
    assert fragment in str(info.value)
    assert str(config) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(ClientSettings, "client", tmp_path / "none.toml", environ={})


def test_cli_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--connect-timeout: Input should be greater than 0$"):
        load_settings(ClientSettings, "client", cli={"connect_timeout": 0}, environ={})


def test_an_unknown_key_far_from_every_known_one_gets_no_guess(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[client]\nxyzzy = 1\n')
    with pytest.raises(ConfigError) as info:
        load_settings(ClientSettings, "client", config, environ={})
    assert str(info.value) == f"config file {config}: [client] xyzzy: unknown setting 'xyzzy'"


@pytest.mark.parametrize("where", ["file", "env", "cli"])
def test_token_never_shows_in_errors_or_reprs(tmp_path: Path, where: str) -> None:
    lines = ["[client]", "connect_timeout = -5"]
    environ: dict[str, str] = {}
    cli: dict[str, object] = {}
    if where == "file":
        lines.append(f'token = "{SECRET}"')
    elif where == "env":
        environ["REXEC_TOKEN"] = SECRET
    else:
        cli["token"] = SECRET
    config = write_config(tmp_path / "c.toml", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(ClientSettings, "client", config, cli=cli, environ=environ)
    assert "connect_timeout" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)

    good = write_config(tmp_path / "ok.toml", "\n".join(lines[:1] + lines[2:]) + "\n")
    settings = load_settings(ClientSettings, "client", good, cli=cli, environ=environ)
    assert settings.token is not None
    assert settings.token.get_secret_value() == SECRET
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert SECRET not in text


def test_token_of_a_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", f'[client]\ntoken = ["{SECRET}"]\n')
    with pytest.raises(ConfigError, match="token") as info:
        load_settings(ClientSettings, "client", config, environ={})
    assert SECRET not in str(info.value)


# --- resolving the token -------------------------------------------------------------------


def test_resolve_token_sources(tmp_path: Path) -> None:
    token_file = make_token_file(tmp_path / "t", "from-file\n")
    fallback = make_token_file(tmp_path / "fallback", "from-fallback\n")
    inline = ClientSettings.model_validate({"token": " inline "})
    assert resolve_token(inline, fallback) == "inline"
    assert resolve_token(ClientSettings(token_file=token_file), fallback) == "from-file"
    assert resolve_token(ClientSettings(), fallback) == "from-fallback"
    assert resolve_token(ClientSettings(), tmp_path / "missing") is None
    assert resolve_token(ClientSettings()) is None
    with pytest.raises(ConfigError, match="empty"):
        resolve_token(ClientSettings.model_validate({"token": "  "}))


def test_client_settings_finds_the_token(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as info:
        client_settings()
    assert "REXEC_TOKEN" in str(info.value)
    assert str(isolated_home / "token") in str(info.value)

    make_token_file(isolated_home / "token", "home-token\n")
    assert client_settings()[1:] == ("home-token", str(isolated_home / "token"))

    config = write_config(tmp_path / "c.toml", '[client]\nconnect_timeout = 3\ntoken_file = "t"\n')
    make_token_file(tmp_path / "t", "config-token")
    settings, token, source = client_settings(config=config)
    assert (settings.connect_timeout, token) == (3.0, "config-token")
    assert source == f"the config file {config} (token_file {tmp_path / 't'})"

    monkeypatch.setenv("REXEC_TOKEN", "env-token")
    assert client_settings(config=config)[1:] == ("env-token", "REXEC_TOKEN")
    assert client_settings(token="cli-token", config=config)[1:] == (
        "cli-token", "the token argument")
    monkeypatch.setenv("REXEC_CONFIG", str(config))
    assert client_settings(connect_timeout=7)[0].connect_timeout == 7.0
