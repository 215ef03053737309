"""Token proofs and files; addresses; settings merged from defaults, file, environment and CLI."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rexec import auth
from rexec.config import (
    DEFAULT_PORT,
    ClientSettings,
    ServerSettings,
    client_settings,
    load_settings,
    parse_address,
    resolve_token,
)
from rexec.errors import ConfigError

SECRET = "s3cret-token-value-XYZ"
CN, SN = "11" * 32, "22" * 32


# --- proofs --------------------------------------------------------------------------------


def test_proofs_differ_by_direction() -> None:
    client = auth.client_proof(SECRET, CN, SN, 1)
    server = auth.server_proof(SECRET, CN, SN, 1)
    assert client != server
    assert len(client) == len(server) == 64
    assert int(client, 16) >= 0
    assert auth.client_proof(SECRET, CN, SN, 1) == client  # deterministic


@pytest.mark.parametrize("proof", [auth.client_proof, auth.server_proof])
def test_proofs_differ_by_nonce_version_and_token(proof: object) -> None:
    assert callable(proof)
    base = proof(SECRET, CN, SN, 1)
    variants = {
        proof(SECRET, "33" * 32, SN, 1),
        proof(SECRET, CN, "33" * 32, 1),
        proof(SECRET, SN, CN, 1),  # nonces swapped
        proof(SECRET, CN, SN, 2),
        proof(SECRET + "x", CN, SN, 1),
    }
    assert base not in variants
    assert len(variants) == 5


def test_proofs_match() -> None:
    mac = auth.client_proof(SECRET, CN, SN, 1)
    assert auth.proofs_match(mac, mac)
    assert auth.proofs_match(mac, str(mac))
    assert not auth.proofs_match(mac, auth.server_proof(SECRET, CN, SN, 1))
    assert not auth.proofs_match(mac, mac[:-1])
    assert not auth.proofs_match(mac, mac.upper())


def test_nonces_and_tokens_are_fresh() -> None:
    nonces = {auth.new_nonce() for _ in range(20)}
    assert len(nonces) == 20
    assert all(len(n) == 64 and int(n, 16) >= 0 for n in nonces)
    tokens = {auth.generate_token() for _ in range(20)}
    assert len(tokens) == 20
    assert all(len(t) >= 43 for t in tokens)


# --- token files ---------------------------------------------------------------------------


def make_token_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    path = make_token_file(tmp_path / "t", f"  {SECRET}\n\n")
    assert auth.read_token_file(path) == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o001])
def test_token_file_readable_by_others_is_refused_with_a_chmod_hint(
    tmp_path: Path, mode: int
) -> None:
    path = make_token_file(tmp_path / "t", SECRET, mode)
    with pytest.raises(ConfigError) as info:
        auth.read_token_file(path)
    message = str(info.value)
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message
    assert SECRET not in message


@pytest.mark.parametrize("text", ["", "\n", "  \t\n"])
def test_empty_token_file_is_refused(tmp_path: Path, text: str) -> None:
    path = make_token_file(tmp_path / "t", text)
    with pytest.raises(ConfigError, match="empty") as info:
        auth.read_token_file(path)
    assert str(path) in str(info.value)


def test_missing_token_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "token"
    with pytest.raises(ConfigError) as info:
        auth.read_token_file(path)
    assert str(info.value) == f"token file {path} does not exist"


def test_unreadable_token_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(b"\xff\xfe" + SECRET.encode())
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="cannot read token file") as info:
        auth.read_token_file(path)
    assert SECRET not in str(info.value)


def test_write_token_file_is_owner_only_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "home" / "token"
    old_umask = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        auth.write_token_file(path, "first")
        auth.write_token_file(path, SECRET)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == SECRET + "\n"
    assert auth.read_token_file(path) == SECRET
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]  # no temp file left


def test_default_token_path_follows_rexec_home(isolated_home: Path) -> None:
    assert auth.default_token_path() == isolated_home / "token"


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "expected"), [
    ("h:1", ("h", 1)),
    ("web1.example.com:65535", ("web1.example.com", 65535)),
    ("[::1]:7878", ("::1", 7878)),
    ("[fe80::1%eth0]:22", ("fe80::1%eth0", 22)),
    ("[::1]", ("::1", DEFAULT_PORT)),
    ("host", ("host", DEFAULT_PORT)),
    ("  10.0.0.1:80  ", ("10.0.0.1", 80)),
])
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


def test_parse_address_default_port_is_a_parameter() -> None:
    assert parse_address("host", default_port=9) == ("host", 9)


@pytest.mark.parametrize(("address", "fragment"), [
    ("", "empty address"),
    ("   ", "empty address"),
    ("h:0", "port '0' is not a number 1-65535"),
    ("h:65536", "port '65536'"),
    ("h:-1", "port '-1'"),
    ("h:http", "port 'http'"),
    ("h:80:81", "write an IPv6 address as [ADDR]:PORT"),
    ("::1", "write an IPv6 address as [ADDR]:PORT"),
    ("fe80::1:7878", "write an IPv6 address"),
    ("[::1", "expected [IPV6]:PORT"),
    ("[::1]7878", "expected [IPV6]:PORT"),
    (":80", "the host is empty"),
    ("[]:80", "the host is empty"),
])
def test_parse_address_refuses(address: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(address)
    assert fragment in str(info.value)


def test_parse_address_non_ascii_digit_port_raises_config_error() -> None:
    """config.py line 155 checks ``port_text.isdigit()`` and then calls ``int(port_text)``.

    ``"²".isdigit()`` is True but ``int("²")`` raises ValueError, so ``parse_address("h:²")``
    escapes as a bare ValueError (a traceback in the CLI) instead of a ConfigError.
    """
    with pytest.raises(ConfigError, match="is not a number"):
        parse_address("h:\u00b2")


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


def test_unknown_field_names_the_file_table_and_field(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[server]\nprot = 1\n')
    with pytest.raises(ConfigError) as info:
        load_settings(ServerSettings, "server", config, environ={})
    message = str(info.value)
    assert f"config file {config}, table [server]" in message
    assert "prot: Extra inputs are not permitted" in message


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
    with pytest.raises(ConfigError, match=r"invalid settings \(defaults\): connect_timeout"):
        load_settings(ClientSettings, "client", cli={"connect_timeout": 0}, environ={})


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
    assert client_settings()[1] == "home-token"

    config = write_config(tmp_path / "c.toml", '[client]\nconnect_timeout = 3\ntoken_file = "t"\n')
    make_token_file(tmp_path / "t", "config-token")
    settings, token = client_settings(config=config)
    assert (settings.connect_timeout, token) == (3.0, "config-token")

    monkeypatch.setenv("REXEC_TOKEN", "env-token")
    assert client_settings(config=config)[1] == "env-token"
    assert client_settings(token="cli-token", config=config)[1] == "cli-token"
    monkeypatch.setenv("REXEC_CONFIG", str(config))
    assert client_settings(connect_timeout=7)[0].connect_timeout == 7.0
