"""Settings from TOML files, the environment and the command line, merged in one order.

The merge order, lowest to highest, is the same for the server and the client:

1. built-in defaults (the model's fields: ``rexec.server.settings``, ``rexec.client.settings``);
2. the config file's table (``[server]`` or ``[client]``);
3. the environment (``REXEC_TOKEN``);
4. command-line options.

Validation errors name the file and the field. Token values are kept as ``SecretStr`` so they never
show in a repr or a log line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from rexec.errors import ConfigError
from rexec.tokens import read_token_file
from rexec.wire.auth import check_token

KNOWN_TABLES = ("server", "client")
PATH_KEYS = ("token_file", "tls_cert", "tls_key", "tls_ca", "tls_client_ca", "audit_log",
             "known_hosts")
"""Settings that name files: relative paths in a config file are relative to that file."""


class _Settings(BaseModel):
    # defer_build: validators are built on first use, so the client never builds the server's.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    # A key given by a higher source drops these keys of the lower ones: a token file on the
    # command line wins over a token in the config file, not a conflict between the two.
    REPLACES: ClassVar[Mapping[str, tuple[str, ...]]] = {"token_file": ("token",)}

    token: SecretStr | None = None
    token_file: Path | None = None


SettingsT = TypeVar("SettingsT", bound=_Settings)


def read_toml_table(path: Path, table: str) -> dict[str, Any]:
    """Return one table of a TOML config file, resolving relative paths against its folder."""
    import tomllib  # only when there is a file: a one-shot CLI run usually has none

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    unknown = sorted(set(data) - set(KNOWN_TABLES))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown table(s) {', '.join(unknown)}"
            f" (expected: {', '.join(KNOWN_TABLES)})"
        )
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: '{table}' must be a table")
    for key in PATH_KEYS:
        if isinstance(section.get(key), str):
            section[key] = str(path.parent / Path(section[key]).expanduser())
    return section


def load_settings(
    model: type[SettingsT],
    table: str,
    path: Path | None = None,
    cli: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SettingsT:
    """Merge defaults, the file's table, the environment and CLI options into ``model``."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        merged.update(read_toml_table(path, table))
        source = f"config file {path}, table [{table}]"
    if environ.get("REXEC_TOKEN"):
        merged["token"] = environ["REXEC_TOKEN"]
        merged.pop("token_file", None)
    for key, value in (cli or {}).items():
        if value is not None:
            merged[key] = value
            for replaced in model.REPLACES.get(key, ()):
                merged.pop(replaced, None)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"invalid settings ({source}): {problems}") from None


def resolve_token(settings: _Settings, fallback: Path | None = None) -> str | None:
    """The token the settings name (inline, or from their token file), else the fallback file's.

    Returns None when nothing names a token and the fallback file does not exist.
    """
    if settings.token is not None:
        return check_token(settings.token.get_secret_value(), "the settings (token)")
    if settings.token_file is not None:
        return read_token_file(settings.token_file.expanduser())
    if fallback is not None and fallback.exists():
        return read_token_file(fallback)
    return None
