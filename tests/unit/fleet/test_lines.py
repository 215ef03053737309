"""The fan-out's line splitter: whole lines out, cut at MAX_LINE, nothing lost or invented."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.fleet.lines import MAX_LINE, HostLines, LineSplitter, Unterminated


def split(chunks: list[bytes], max_line: int = MAX_LINE) -> list[bytes]:
    splitter = LineSplitter(max_line)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.flush()


def restore(lines: list[bytes]) -> bytes:
    """The input again: every line, less the newlines rexec added."""
    return b"".join(line[:-1] if isinstance(line, Unterminated) else line for line in lines)


@pytest.mark.parametrize(("chunks", "expected"), [
    ([b"a\nb\n"], [b"a\n", b"b\n"]),
    ([b"a", b"b\nc"], [b"ab\n", b"c\n"]),
    ([b"\n\n"], [b"\n", b"\n"]),
    ([b""], []),
    ([b"no newline"], [b"no newline\n"]),
    ([b"\0\xff\r\n\x80"], [b"\0\xff\r\n", b"\x80\n"]),
])
def test_lines_are_split_on_newline_only(chunks: list[bytes], expected: list[bytes]) -> None:
    assert split(chunks) == expected


def test_whole_lines_come_out_of_feed_and_the_rest_waits_for_flush() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == [b"one\n"]
    assert splitter.buffered == 2
    assert splitter.feed(b"o") == []
    assert splitter.flush() == [b"two\n"]
    assert splitter.flush() == []


def test_a_last_line_without_newline_is_marked_unterminated() -> None:
    lines = split([b"x\ny"])
    assert not isinstance(lines[0], Unterminated)
    assert isinstance(lines[1], Unterminated)


def test_a_long_line_is_cut_into_max_line_pieces() -> None:
    data = b"x" * (2 * MAX_LINE + 10) + b"\n"
    lines = split([data])
    assert [len(line) for line in lines] == [MAX_LINE + 1, MAX_LINE + 1, 11]
    assert [isinstance(line, Unterminated) for line in lines] == [True, True, False]


def test_a_line_of_exactly_max_line_bytes_is_not_cut_even_fed_byte_by_byte() -> None:
    data = b"y" * 8 + b"\n"
    assert split([bytes([b]) for b in data], max_line=8) == [data]
    assert split([b"y" * 8, b"\n"], max_line=8) == [data]


def test_memory_stays_bounded_by_max_line() -> None:
    splitter = LineSplitter(max_line=100)
    for _ in range(1000):
        splitter.feed(b"z" * 37)
        assert splitter.buffered <= 100


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LineSplitter(0)


def test_host_lines_keep_hosts_and_streams_apart() -> None:
    lines = HostLines()
    assert lines.feed("a", "stdout", b"a1") == []
    assert lines.feed("b", "stdout", b"b1\n") == [b"b1\n"]
    assert lines.feed("a", "stderr", b"e") == []
    assert lines.feed("a", "stdout", b"-end\n") == [b"a1-end\n"]
    assert lines.flush("a") == [("stderr", b"e\n")]
    assert lines.flush("b") == []


chunked = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"a", b"\n")), max_size=30)


@given(chunked, st.integers(min_value=1, max_value=12))
def test_the_lines_less_added_newlines_are_the_input(chunks: list[bytes], max_line: int) -> None:
    lines = split(chunks, max_line)
    assert restore(lines) == b"".join(chunks)
    assert all(line.endswith(b"\n") for line in lines)
    assert all(len(line) <= max_line + 1 for line in lines)
    assert all(b"\n" not in line[:-1] for line in lines)


@given(chunked, st.integers(min_value=1, max_value=12))
def test_the_lines_do_not_depend_on_how_the_input_was_chunked(chunks: list[bytes],
                                                              max_line: int) -> None:
    whole = b"".join(chunks)
    assert split(chunks, max_line) == split([whole], max_line)
    byte_by_byte = split([whole[i:i + 1] for i in range(len(whole))], max_line)
    assert [type(line) for line in byte_by_byte] == [type(line) for line in split([whole],
                                                                                   max_line)]
