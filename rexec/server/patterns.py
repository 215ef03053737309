"""Allow/deny patterns, compiled by RE2: matching takes time linear in the command's length.

Python's ``re`` backtracks: ``cat ([a-z0-9/._-]+ ?)+`` against a 30-byte command that almost
matches takes seconds, and the server checks commands on its event loop, so one such command
froze every connection. RE2 (google-re2) runs a DFA, falling back to an NFA simulation: the cost
is at most proportional to the pattern's program size times the command's length, whatever
the command. It refuses what it cannot do in linear time (backreferences, lookaround,
repetition counts over 1000), so such a pattern is a config error, with RE2's reason.

Only the server imports this module: the client's start-up never pays for RE2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import re2

# \C matches one byte: inside a UTF-8 character, and a newline even under never_nl.
_ANY_BYTE = re.compile(r"(?<!\\)(?:\\\\)*\\C")


class PatternError(ValueError):
    """A pattern RE2 cannot compile; the message is RE2's reason."""


def _options(never_nl: bool) -> Any:
    options = re2.Options()
    options.log_errors = False  # otherwise absl writes every bad pattern to stderr
    options.never_capture = True  # only "does it match" is asked: the DFA alone answers it
    options.never_nl = never_nl
    return options


@dataclass(frozen=True)
class Pattern:
    """One anchored pattern; ``pattern`` is its source text, for messages."""

    pattern: str
    never_nl: bool = False  # allow patterns: nothing in the pattern matches a newline
    _regexp: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _ANY_BYTE.search(self.pattern):
            raise PatternError(r"\C (any byte) is not supported: it matches parts of characters")
        try:
            regexp = re2.compile(self.pattern, _options(self.never_nl))
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            raise PatternError(text) from None
        object.__setattr__(self, "_regexp", regexp)

    def fullmatch(self, text: str) -> bool:
        """Whether the pattern matches the whole of ``text``."""
        return self._regexp.fullmatch(text) is not None
