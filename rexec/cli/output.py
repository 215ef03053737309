"""Every rendering of results for people and programs: today the ``--json`` document.

Later renderings (host-prefixed lines, summaries, JSON Lines, progress bars) live here too,
with rich imported only when stdout is a terminal.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def text_or_base64(data: bytes) -> tuple[str, str]:
    """``data`` as text and ``"utf-8"``, or, when it is not UTF-8, as base64 and ``"base64"``."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def result_json(result: Any, exit_status: int | None = None) -> str:
    """The --json document for a Result; ``exit_status`` is the status rexec exits with, when
    that is not the command's own (130 after Ctrl-C)."""
    stdout, stdout_encoding = text_or_base64(result.stdout)
    stderr, stderr_encoding = text_or_base64(result.stderr)
    return json.dumps({
        "command": result.command,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "exceeded": result.exceeded,
        "exit_status": result.exit_status if exit_status is None else exit_status,
        "duration": result.duration,
        "stdout": stdout,
        "stdout_encoding": stdout_encoding,
        "stderr": stderr,
        "stderr_encoding": stderr_encoding,
        "stdout_bytes": result.stdout_bytes,
        "stderr_bytes": result.stderr_bytes,
        "error": None,
    })


def error_json(command: str, error: BaseException, exit_status: int) -> str:
    """The --json document when rexec failed before or instead of a result: the same keys, the
    command's fields null, ``error`` the one-line message and ``error_type`` its class."""
    return json.dumps({
        "command": command,
        "exit_code": None,
        "signal": None,
        "timed_out": False,
        "exceeded": None,
        "exit_status": exit_status,
        "duration": None,
        "stdout": "",
        "stdout_encoding": "utf-8",
        "stderr": "",
        "stderr_encoding": "utf-8",
        "stdout_bytes": 0,
        "stderr_bytes": 0,
        "error": str(error),
        "error_type": type(error).__name__,
    })
