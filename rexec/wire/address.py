"""Addresses: the default port, ``host:port`` parsed and formatted (IPv6 in brackets)."""

from __future__ import annotations

from rexec.errors import ConfigError

DEFAULT_PORT = 7878


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port``; a bare host takes the default port)."""
    text = address.strip()
    if not text:
        raise ConfigError("empty address: expected HOST:PORT")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad address {address!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ConfigError(f"bad address {address!r}: write an IPv6 address as [ADDR]:PORT")
    else:
        host, port_text = text, ""
    if not host:
        raise ConfigError(f"bad address {address!r}: the host is empty")
    if not port_text:
        if text.endswith(":"):
            raise ConfigError(f"bad address {address!r}: the port after ':' is empty")
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad address {address!r}: port {port_text!r} is not a number 1-65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """host:port, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
