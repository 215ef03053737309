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
from collections.abc import Iterable, Mapping
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


def read_toml(path: Path, what: str = "config file",
              error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """A whole TOML file; ``error`` says "WHAT PATH does not exist" or what does not parse."""
    import tomllib  # only when there is a file: a one-shot CLI run usually has none

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise error(f"{what} {path}: {exc}") from None


def read_toml_table(path: Path, table: str) -> dict[str, Any]:
    """Return one table of a TOML config file, resolving relative paths against its folder."""
    data = read_toml(path)
    loose = sorted(key for key, value in data.items()
                   if not isinstance(value, dict) and key not in KNOWN_TABLES)
    if loose:
        raise ConfigError(
            f"config file {path}: {', '.join(loose)} outside any table: settings go under"
            f" [{table}] (tables: {', '.join(KNOWN_TABLES)})"
        )
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
    origin: dict[str, str] = {}  # where each key's value came from, for the error messages
    if path is not None:
        merged.update(read_toml_table(path, table))
        origin = dict.fromkeys(merged, f"config file {path}: [{table}]")
    if environ.get("REXEC_TOKEN"):
        merged["token"] = environ["REXEC_TOKEN"]
        origin["token"] = "REXEC_TOKEN"  # noqa: S105 - a variable name, not a token
        merged.pop("token_file", None)
    for key, value in (cli or {}).items():
        if value is not None:
            merged[key] = value
            origin[key] = "--" + key.replace("_", "-")
            for replaced in model.REPLACES.get(key, ()):
                merged.pop(replaced, None)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(_describe(err, origin, model)
                             for err in exc.errors(include_url=False, include_input=False))
        raise ConfigError(problems) from None


def _describe(error: Any, origin: dict[str, str], model: type[BaseModel]) -> str:
    """One settings error, naming where the value came from (a flag, a variable, the file's
    table and key) and, for an unknown key, the known one it is closest to."""
    loc = [str(part) for part in error["loc"]]
    key = loc[0] if loc else ""
    where = origin.get(key)
    if where is None:
        where = "the settings"
    elif where.startswith("config file"):
        where = f"{where} {'.'.join(loc)}"
    elif len(loc) > 1:
        where = f"{where} ({'.'.join(loc[1:])})"
    if error["type"] == "extra_forbidden":
        known = [name for name in model.model_fields if name not in ("token",)]
        if len(loc) > 1:  # a nested table's key (an identity's): its model's fields
            annotation = model.model_fields.get(loc[0])
            known = _nested_fields(annotation.annotation) if annotation else known
        return f"{where}: unknown setting {loc[-1]!r}{did_you_mean(loc[-1], known)}"
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``"; did you mean 'NAME'?"`` for the known name closest to a misspelt one, else ``""``."""
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _nested_fields(annotation: Any) -> list[str]:
    """The field names of the settings model a nested table holds (dict[str, Model])."""
    from typing import get_args

    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return list(arg.model_fields)
    return []


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
