"""Batch files, sans-I/O: one shell command a line, each kept with the line it starts on.

The rules of ``rexec batch TARGET FILE``:

- blank lines, and lines whose first non-blank character is ``#``, are skipped;
- a line ending in a backslash (an odd number of them: ``\\\\`` is an escaped backslash)
  continues on the next one, as in the shell: the backslash and the newline are removed and
  the two lines joined with nothing between them (``ls \\`` then ``  -l`` is ``ls   -l``); a
  continued line is part of the command even when it starts with ``#``; a backslash on the
  last line of the file is dropped;
- every other line is a command, run by the remote ``/bin/sh -c`` as it is written.

``Group.batch()`` runs them in order on each host over one connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchCommand:
    """One command of a batch and the (1-based) line of the file it starts on."""

    line: int
    command: str


def parse_batch(text: str | Iterable[str]) -> list[BatchCommand]:
    """The commands of a batch file's ``text`` (or its lines), in order."""
    lines = text.splitlines() if isinstance(text, str) else (
        line.rstrip("\r\n") for line in text)
    commands: list[BatchCommand] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(lines, 1):
        if not pending:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            start = number
        if _continues(line):
            pending.append(line[:-1])
            continue
        pending.append(line)
        commands.append(BatchCommand(start, "".join(pending)))
        pending = []
    if pending and (command := "".join(pending)).strip():
        commands.append(BatchCommand(start, command))
    return commands


def _continues(line: str) -> bool:
    """Whether ``line`` ends in an unescaped backslash (an odd number of them)."""
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1
