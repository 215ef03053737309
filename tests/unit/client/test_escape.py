"""The escape character of interactive sessions (ssh's rules), keystrokes in, bytes out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.client.escape import EscapeFilter, escape_help, parse_escape


def feed_all(filt: EscapeFilter, *pieces: bytes) -> bytes:
    return b"".join(filt.feed(piece) for piece in pieces)


def test_tilde_dot_at_a_line_start_disconnects_and_nothing_after_it_is_sent() -> None:
    filt = EscapeFilter()
    assert filt.feed(b"ls\r~.rm -rf /\r") == b"ls\r"
    assert filt.actions == ["disconnect"]


def test_the_first_keystroke_of_a_session_is_a_line_start() -> None:
    filt = EscapeFilter()
    assert filt.feed(b"~.") == b""
    assert filt.actions == ["disconnect"]


def test_a_tilde_inside_a_line_is_just_a_tilde() -> None:
    filt = EscapeFilter()
    assert filt.feed(b"echo ~/x~.\r") == b"echo ~/x~.\r"
    assert filt.actions == []


def test_tilde_tilde_sends_one_and_tilde_question_asks_for_help() -> None:
    filt = EscapeFilter()
    assert filt.feed(b"~~a") == b"~a"
    assert filt.feed(b"\n~?") == b"\n"
    assert filt.actions == ["help"]
    assert filt.feed(b"~.") == b""  # still at a line start after the help: ssh's rule
    assert filt.actions == ["help", "disconnect"]


def test_an_escape_split_across_reads_is_still_seen() -> None:
    filt = EscapeFilter()
    assert feed_all(filt, b"x\n", b"~", b".") == b"x\n"
    assert filt.actions == ["disconnect"]


def test_a_tilde_followed_by_anything_else_sends_both() -> None:
    filt = EscapeFilter()
    assert feed_all(filt, b"~", b"x") == b"~x"
    assert filt.actions == []


def test_another_escape_character_and_none() -> None:
    percent = EscapeFilter(b"%")
    assert percent.feed(b"~.\r%.") == b"~.\r"
    assert percent.actions == ["disconnect"]
    off = EscapeFilter(None)
    assert off.feed(b"~.~?~~") == b"~.~?~~" and off.actions == []


@given(st.binary(max_size=200))
def test_without_the_escape_character_every_byte_passes_unchanged(data: bytes) -> None:
    data = data.replace(b"~", b"")
    filt = EscapeFilter()
    assert filt.feed(data) == data and filt.actions == []


@given(st.lists(st.binary(max_size=20), max_size=20))
def test_escapes_off_pass_everything_in_any_pieces(pieces: list[bytes]) -> None:
    filt = EscapeFilter(None)
    assert feed_all(filt, *pieces) == b"".join(pieces)


def test_parse_escape() -> None:
    assert parse_escape("~") == b"~"
    assert parse_escape("none") is None
    assert parse_escape("^]") == b"\x1d"
    for bad in ("", "ab", "é"):
        with pytest.raises(ValueError, match="one ASCII character"):
            parse_escape(bad)
    assert "%." in escape_help("%") and "\r\n" in escape_help("~")
