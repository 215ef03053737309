"""HOST:PORT parsing (rexec/wire/address.py)."""

from __future__ import annotations

import pytest

from rexec.errors import ConfigError
from rexec.wire.address import DEFAULT_PORT, parse_address

SECRET = "s3cret-token-value-XYZ"


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
    """wire/address.py checks ``port_text.isdigit()`` and then calls ``int(port_text)``.

    ``"²".isdigit()`` is True but ``int("²")`` raises ValueError, so ``parse_address("h:²")``
    escapes as a bare ValueError (a traceback in the CLI) instead of a ConfigError.
    """
    with pytest.raises(ConfigError, match="is not a number"):
        parse_address("h:\u00b2")


