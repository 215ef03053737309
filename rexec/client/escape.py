"""The escape character of an interactive session, as ssh's: sans-I/O, keystrokes in, bytes out.

The escape character (``~`` unless chosen otherwise) is recognised only at the start of a line
(the session's first keystroke, or after a carriage return or newline): then ``~.`` ends the
session from this side, ``~?`` lists the escapes and ``~~`` sends one ``~``. Anything else
after it sends both, as typed. Every other byte goes to the remote side unchanged: Ctrl-C,
Ctrl-Z, Ctrl-D and Ctrl-\\ included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["disconnect", "help"]
LINE_ENDS = frozenset(b"\r\n")


def escape_help(char: str) -> str:
    """What ``~?`` prints (lines end in CRLF: the terminal is in raw mode)."""
    return (f"Supported escape sequences:\r\n"
            f" {char}.   - end the session (the remote side is stopped)\r\n"
            f" {char}?   - this message\r\n"
            f" {char}{char}   - send the escape character by typing it twice\r\n"
            f"(Note that escapes are only recognized immediately after newline.)\r\n")


def parse_escape(value: str) -> bytes | None:
    """``-e``'s value: one character (or ``^X`` for a control character), or "none"."""
    if value == "none":
        return None
    if len(value) == 2 and value[0] == "^" and "@" <= value[1].upper() <= "_":
        return bytes([ord(value[1].upper()) & 0x1F])
    if len(value) != 1 or ord(value) > 0x7F:
        raise ValueError(f"the escape character must be one ASCII character, ^X or 'none',"
                         f" not {value!r}")
    return value.encode()


@dataclass
class EscapeFilter:
    """Turns keystrokes into what to send and what to do, one ``feed`` at a time."""

    char: bytes | None = b"~"  # None: no escapes at all
    _line_start: bool = True
    _pending: bool = False  # an escape character was typed at a line start: what comes next?
    actions: list[Action] = field(default_factory=list)

    def feed(self, data: bytes) -> bytes:
        """The bytes to send for ``data``; the escapes found are appended to ``actions``."""
        if self.char is None:
            return data
        escape = self.char[0]
        out = bytearray()
        for byte in data:
            if self._pending:
                self._pending = False
                if byte == ord("."):
                    self.actions.append("disconnect")
                    return bytes(out)  # nothing typed after it is sent
                if byte == ord("?"):
                    self.actions.append("help")
                    self._line_start = True  # ssh: another escape may follow at once
                    continue
                if byte == escape:
                    out.append(escape)
                    self._line_start = False
                    continue
                out.append(escape)  # not an escape after all: both go, as typed
            elif self._line_start and byte == escape:
                self._pending = True
                continue
            out.append(byte)
            self._line_start = byte in LINE_ENDS
        return bytes(out)
