"""The ``[client]`` table, and the client's settings and token merged in the one order."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rexec.config import _Settings, load_settings, resolve_token
from rexec.errors import ConfigError
from rexec.sockets import KEEPALIVE
from rexec.tokens import default_home, default_token_path


def parse_pin(value: str | None) -> str | None:
    """A ``tls_pin`` setting as kept: None, or the fingerprint parsed (ValueError if bad)."""
    if value is None:
        return None
    from rexec.tls import parse_fingerprint  # loads ssl: only when a pin is given

    return parse_fingerprint(value)


class ClientSettings(_Settings):
    """What ``rexec`` and ``rexec.Client`` run with."""

    connect_timeout: float = Field(10.0, gt=0, le=3600)
    # Seconds of silence before a dead server is looked for (TCP keepalive probes, and
    # TCP_USER_TIMEOUT for unacknowledged data): it is given up after about twice that. 0: off.
    keepalive: float = Field(KEEPALIVE, ge=0, le=3600)
    identity: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")] | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls: Literal["tofu"] | None = None  # "tofu": trust on first use, recorded in known_hosts
    tls_pin: str | None = None  # the server certificate's SHA-256 fingerprint
    known_hosts: Path | None = None  # default: ~/.rexec/known_hosts

    # How the server is trusted is one choice: the command line's replaces the file's.
    REPLACES: ClassVar[Mapping[str, tuple[str, ...]]] = {
        **_Settings.REPLACES, "tls_ca": ("tls_pin", "tls"), "tls_pin": ("tls_ca", "tls"),
        "tls": ("tls_ca", "tls_pin"),
    }

    _pin_parses = field_validator("tls_pin")(parse_pin)

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> ClientSettings:
        trusts = [name for name, value in (("tls_ca", self.tls_ca), ("tls_pin", self.tls_pin),
                                           ("tls = \"tofu\"", self.tls)) if value is not None]
        if len(trusts) > 1:
            raise ValueError(f"{' and '.join(trusts)} are different ways to trust the server:"
                             " choose one")
        if self.tls_cert is not None and not trusts:
            raise ValueError("tls_cert needs tls_ca, tls_pin or tls = \"tofu\": a client"
                             " certificate is only sent over TLS")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert")
        return self


def default_client_config() -> Path | None:
    """The client's config file: $REXEC_CONFIG, else ~/.rexec/client.toml if it exists."""
    env = os.environ.get("REXEC_CONFIG")
    if env:
        return Path(env)
    path = default_home() / "client.toml"
    return path if path.exists() else None


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


def client_settings(
    *,
    token: str | None = None,
    token_file: str | Path | None = None,
    config: str | Path | None = None,
    connect_timeout: float | None = None,
    keepalive: float | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_pin: str | None = None,
    tls_tofu: bool | None = None,
    identity: str | None = None,
    token_required: bool = True,
) -> tuple[ClientSettings, str | None, str]:
    """The client's merged settings, its token, and where the token came from, said without
    its value (for -v and an authentication failure): "REXEC_TOKEN", "--token-file FILE", the
    config file, the default file, or a client certificate alone. ConfigError if no token can
    be found.

    The arguments are the command line's (or the API caller's): they override the config file.
    The token may be None only when a client certificate is configured (certificate identities),
    or when ``token_required`` is false (ping and discover, which work without one).
    """
    trusts = [flag for flag, value in (("tls_ca", tls_ca), ("tls_pin", tls_pin),
                                       ("tls_tofu", tls_tofu)) if value]
    if len(trusts) > 1:  # given together, one would silently replace the other (REPLACES)
        raise ConfigError(f"{' and '.join(trusts)} are different ways to trust the server:"
                          " choose one")
    config_path = _path(config)
    if config_path is None:
        config_path = default_client_config()
    settings = load_settings(
        ClientSettings,
        "client",
        config_path,
        cli={"token": token, "token_file": _path(token_file), "connect_timeout": connect_timeout,
             "keepalive": keepalive, "tls_ca": _path(tls_ca), "tls_cert": _path(tls_cert),
             "tls_key": _path(tls_key), "tls_pin": tls_pin, "tls": "tofu" if tls_tofu else None,
             "identity": identity},
    )
    resolved = resolve_token(settings)
    if token is not None:
        source = "the token argument"
    elif token_file is not None:
        source = f"--token-file {settings.token_file}"
    elif os.environ.get("REXEC_TOKEN"):
        source = "REXEC_TOKEN"
    elif resolved is not None:
        where = f" (token_file {settings.token_file})" if settings.token_file else ""
        source = f"the config file {config_path}{where}"
    else:  # the default file is the last place: looked up only when needed
        resolved = resolve_token(settings, fallback=default_token_path())
        source = (str(default_token_path()) if resolved is not None
                  else "no token: the client certificate alone" if settings.tls_cert is not None
                  else "no token")
    if resolved is None and settings.tls_cert is None and token_required:
        raise ConfigError(
            "no token: set REXEC_TOKEN, pass --token-file FILE, put token_file in the client"
            f" config, or copy the server's token to {default_token_path()}"
        )
    return settings, resolved, source
