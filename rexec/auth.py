"""The shared token: loading it, generating it, and the HMAC challenge-response proofs.

The token never crosses the wire. Each side proves it holds the token by an HMAC-SHA256 over both
fresh nonces, the protocol version and a context string that differs by direction, so a recorded
handshake cannot be replayed and one side's proof cannot be reflected back as the other's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from rexec.errors import ConfigError

CLIENT_CONTEXT = b"rexec-v1 client proof"
SERVER_CONTEXT = b"rexec-v1 server proof"


def new_nonce() -> str:
    """32 fresh random bytes, hex encoded."""
    return secrets.token_hex(32)


def _proof(token: str, context: bytes, client_nonce: str, server_nonce: str, version: int) -> str:
    message = b"".join(
        (
            bytes.fromhex(server_nonce),
            bytes.fromhex(client_nonce),
            version.to_bytes(2, "big"),
            context,
        )
    )
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def client_proof(token: str, client_nonce: str, server_nonce: str, version: int) -> str:
    """The MAC a client sends in its ``auth`` frame."""
    return _proof(token, CLIENT_CONTEXT, client_nonce, server_nonce, version)


def server_proof(token: str, client_nonce: str, server_nonce: str, version: int) -> str:
    """The MAC a server sends in its ``auth_ok`` frame."""
    return _proof(token, SERVER_CONTEXT, client_nonce, server_nonce, version)


def proofs_match(expected: str, received: str) -> bool:
    """Compare two MACs in constant time."""
    return hmac.compare_digest(expected.encode(), received.encode())


def check_token(token: str, source: str) -> str:
    """Strip surrounding white space and refuse an empty token, naming where it came from."""
    token = token.strip()
    if not token:
        raise ConfigError(f"the token from {source} is empty; an empty token is refused")
    return token


def read_token_file(path: Path) -> str:
    """Read a token file, refusing one that others can read (as ssh does for private keys)."""
    try:
        info = path.stat()
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"token file {path} is accessible by others (mode {stat.S_IMODE(info.st_mode):04o});"
            f" run: chmod 600 {path}"
        )
    return check_token(text, f"token file {path}")


def default_home() -> Path:
    """rexec's per-user folder: $REXEC_HOME, else ~/.rexec."""
    return Path(os.environ.get("REXEC_HOME") or Path.home() / ".rexec")


def default_token_path() -> Path:
    """Where a server keeps the token it generated, and where clients look last."""
    return default_home() / "token"


def write_token_file(path: Path, token: str) -> None:
    """Write a token to a new file readable only by its owner, replacing any earlier one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


def generate_token() -> str:
    """A new random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)
