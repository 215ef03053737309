"""Token files: read, mode checks, write, where they live (rexec/tokens.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rexec import tokens as token_files
from rexec.errors import ConfigError
from tests.helpers import make_token_file

SECRET = "s3cret-token-value-XYZ"


# --- token files ---------------------------------------------------------------------------


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    path = make_token_file(tmp_path / "t", f"  {SECRET}\n\n")
    assert token_files.read_token_file(path) == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o001])
def test_token_file_readable_by_others_is_refused_with_a_chmod_hint(
    tmp_path: Path, mode: int
) -> None:
    path = make_token_file(tmp_path / "t", SECRET, mode)
    with pytest.raises(ConfigError) as info:
        token_files.read_token_file(path)
    message = str(info.value)
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message
    assert SECRET not in message


@pytest.mark.parametrize("text", ["", "\n", "  \t\n"])
def test_empty_token_file_is_refused(tmp_path: Path, text: str) -> None:
    path = make_token_file(tmp_path / "t", text)
    with pytest.raises(ConfigError, match="empty") as info:
        token_files.read_token_file(path)
    assert str(path) in str(info.value)


def test_missing_token_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "token"
    with pytest.raises(ConfigError) as info:
        token_files.read_token_file(path)
    assert str(info.value) == f"token file {path} does not exist"


def test_unreadable_token_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(b"\xff\xfe" + SECRET.encode())
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="cannot read token file") as info:
        token_files.read_token_file(path)
    assert SECRET not in str(info.value)


def test_write_token_file_is_owner_only_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "home" / "token"
    old_umask = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        token_files.write_token_file(path, "first")
        token_files.write_token_file(path, SECRET)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == SECRET + "\n"
    assert token_files.read_token_file(path) == SECRET
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]  # no temp file left


def test_default_token_path_follows_rexec_home(isolated_home: Path) -> None:
    assert token_files.default_token_path() == isolated_home / "token"


