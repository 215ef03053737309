"""Batch files: commands with their line numbers, comments and blanks skipped, continuations."""

from __future__ import annotations

import pytest

from rexec.fleet.batch import BatchCommand, parse_batch


@pytest.mark.parametrize(("text", "expected"), [
    ("uptime\nhostname\n", [(1, "uptime"), (2, "hostname")]),
    ("\n  \n# a comment\n   # indented comment\nls\n", [(5, "ls")]),
    ("ls \\\n  -l\nid\n", [(1, "ls   -l"), (3, "id")]),
    ("a\\\nb\\\nc\n", [(1, "abc")]),
    ("echo x \\\\\nid\n", [(1, "echo x \\\\"), (2, "id")]),
    ("echo \\\n# not a comment here\n", [(1, "echo # not a comment here")]),
    ("last \\", [(1, "last ")]),
    ("crlf\r\nline\r\n", [(1, "crlf"), (2, "line")]),
    ("", []),
    ("echo '#' # keeps its comment\n", [(1, "echo '#' # keeps its comment")]),
])
def test_batch_files_parse_as_the_shell_reads_lines(text: str,
                                                    expected: list[tuple[int, str]]) -> None:
    assert parse_batch(text) == [BatchCommand(line, command) for line, command in expected]


def test_lines_of_a_file_parse_as_its_text() -> None:
    text = "a\n\n# c\nb \\\n c\n"
    assert parse_batch(text.splitlines(keepends=True)) == parse_batch(text)
