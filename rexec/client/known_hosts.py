"""The known_hosts file: the certificate fingerprint each server showed the first time.

As ssh's known_hosts holds host keys, one line per server: ``HOST:PORT SHA256:<base64>``
(the address as ``rexec.wire.address.format_address`` writes it, ``[::1]:7878`` for IPv6).
Lines starting with ``#`` and blank lines are skipped. A line that does not parse makes the
whole file an error naming it and the line: a trust file is never half-read. The file is
rewritten atomically, mode 0600.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rexec.errors import ConfigError, KnownHostsError
from rexec.tokens import default_home, write_private_file
from rexec.wire.address import format_address, parse_address


@dataclass(frozen=True, slots=True)
class KnownHost:
    """One line of a known_hosts file."""

    address: str  # canonical HOST:PORT
    fingerprint: str  # canonical SHA256:<base64>
    line: int  # 1-based line number
    text: str  # the line as written, for the message that says which one to remove


def default_known_hosts() -> Path:
    """Where the client records servers it trusts on first use: ~/.rexec/known_hosts."""
    return default_home() / "known_hosts"


def canonical_address(address: str) -> str:
    """``HOST:PORT`` as known_hosts writes it (ValueError for something that is not one)."""
    try:
        return format_address(*parse_address(address))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def parse_known_hosts(text: str, path: Path) -> list[KnownHost]:
    """The entries of a known_hosts file's text; KnownHostsError naming the file and the line."""
    from rexec.tls import parse_fingerprint  # loads ssl: options.py imports this module

    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError(f"expected 'HOST:PORT SHA256:...', found {len(fields)} field(s)")
            address, print_ = canonical_address(fields[0]), parse_fingerprint(fields[1])
        except ValueError as exc:
            raise KnownHostsError(f"known_hosts file {path}, line {number}: {exc} (fix or remove"
                              " the line)") from None
        entries.append(KnownHost(address, print_, number, line))
    return entries


def read_text(path: Path) -> str:
    """The file's text, '' if it does not exist yet (KnownHostsError if it cannot be read)."""
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise KnownHostsError(f"cannot read known_hosts file {path}: {exc}") from None


def read_known_hosts(path: Path) -> list[KnownHost]:
    """The entries of the file at ``path`` (none if it does not exist)."""
    return parse_known_hosts(read_text(path), path)


def _write(path: Path, text: str) -> None:
    try:
        write_private_file(path, text.encode())
    except OSError as exc:
        raise KnownHostsError(
            f"cannot write known_hosts file {path}: {exc.strerror or exc}") from None


def add_known_host(path: Path, address: str, fingerprint: str) -> None:
    """Append ``address fingerprint`` to the file (re-read first, so nothing is lost)."""
    text = read_text(path)
    parse_known_hosts(text, path)  # never extend a file that does not parse
    if text and not text.endswith("\n"):
        text += "\n"
    _write(path, f"{text}{address} {fingerprint}\n")


def forget_known_host(path: Path, address: str) -> list[KnownHost]:
    """Remove every line for ``address``; return what was removed (the file is kept)."""
    text = read_text(path)
    address = canonical_address(address)
    removed = [e for e in parse_known_hosts(text, path) if e.address == address]
    if removed:
        drop = {e.line for e in removed}
        kept = [line for n, line in enumerate(text.splitlines(keepends=True), 1)
                if n not in drop]
        _write(path, "".join(kept))
    return removed

