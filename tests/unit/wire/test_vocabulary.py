"""The protocol's vocabulary as types: the documented codes, the ones the code uses, and the
one way the state changes."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

from rexec.wire import frames as f
from rexec.wire.protocol import Connection, Role, State

ROOT = Path(__file__).resolve().parents[3]
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def _errors_section() -> str:
    return PROTOCOL.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]


def test_the_documented_server_codes_are_exactly_the_typed_ones() -> None:
    documented = re.findall(r"^\| `([a-z_]+)` \| (?:yes|no) \|", _errors_section(), re.M)
    assert documented and len(documented) == len(set(documented))
    assert set(documented) == set(get_args(f.ServerErrorCode))


def test_the_documented_client_codes_are_exactly_the_typed_ones() -> None:
    paragraph = _errors_section().split("The reference client never sends", 1)[1]
    paragraph = paragraph.split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", paragraph)) - set(get_args(f.AuthMethod))
    assert named == set(get_args(f.ClientErrorCode))


def _used_codes() -> list[tuple[str, int, str]]:
    """(file, line, code) of every literal error code given in rexec/ (constructors of the
    error types, error frames, handshake refusals and fatal sends)."""
    found = []
    second = {"ProtocolError", "AuthenticationError", "RemoteError"}
    first = {"HandshakeRefusal", "_Refused", "send_fatal"}
    for path in (ROOT / "rexec").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            args = list(node.args)
            candidates = [k.value for k in node.keywords
                          if k.arg == "code" and name in second | first | {"Error"}]
            if name in second and len(args) >= 2:
                candidates.append(args[1])
            if name in first and args:
                candidates.append(args[0])
            for value in candidates:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.append((str(path.relative_to(ROOT)), node.lineno, value.value))
    return found


def test_every_error_code_the_code_uses_is_in_the_vocabulary() -> None:
    used = _used_codes()
    assert len(used) > 20  # the scan finds them (it would pass vacuously otherwise)
    assert [u for u in used if u[2] not in f.ERROR_CODES] == []


def test_the_signal_names_are_the_signal_frames() -> None:
    assert get_args(f.Signal.model_fields["signal"].annotation) == f.SIGNAL_NAMES
    for name in f.SIGNAL_NAMES:
        assert f.Signal(signal=name).signal == name


def test_the_state_changes_only_through_the_connection() -> None:
    conn = Connection(Role.CLIENT)
    with pytest.raises(AttributeError):
        conn.state = State.CLOSED  # type: ignore[misc]
    conn.close()
    assert conn.state is State.CLOSED
