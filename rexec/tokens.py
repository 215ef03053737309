"""Token files: read (refusing one that others can read), write, generate, and where they live."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from rexec.errors import ConfigError
from rexec.wire.auth import check_token


def read_token_file(path: Path) -> str:
    """Read a token file, refusing one that others can read (as ssh does for private keys)."""
    try:
        info = path.stat()
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from None
    refuse_shared(f"token file {path}", path, info)
    return check_token(text, f"token file {path}")


def refuse_shared(what: str, path: Path, info: os.stat_result) -> None:
    """ConfigError if a secret file (token, private key) is accessible by group or others."""
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} is accessible by others (mode {stat.S_IMODE(info.st_mode):04o});"
            f" run: chmod 600 {path}"
        )


def default_home() -> Path:
    """rexec's per-user folder: $REXEC_HOME, else ~/.rexec."""
    # os.path rather than Path.home() / ...: every Client asks, a thousand times for a fleet
    return Path(os.environ.get("REXEC_HOME") or os.path.join(os.path.expanduser("~"), ".rexec"))


def default_token_path() -> Path:
    """Where a server keeps the token it generated, and where clients look last."""
    return default_home() / "token"


def write_token_file(path: Path, token: str) -> None:
    """Write a token to a new file readable only by its owner, replacing any earlier one."""
    write_private_file(path, token.encode() + b"\n")


def write_private_file(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed), readable only by its owner.

    The folder is made (0700) if missing. ``replace=False`` refuses (FileExistsError) to put it
    where a file already is, even one made a moment ago.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists: no window to overwrite in
    finally:
        tmp.unlink(missing_ok=True)  # after os.replace there is nothing left to remove


def generate_token() -> str:
    """A new random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)
