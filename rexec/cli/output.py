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


def result_json(result: Any) -> str:
    """The --json document for a Result."""
    stdout, stdout_encoding = text_or_base64(result.stdout)
    stderr, stderr_encoding = text_or_base64(result.stderr)
    return json.dumps({
        "command": result.command,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "exceeded": result.exceeded,
        "exit_status": result.exit_status,
        "duration": result.duration,
        "stdout": stdout,
        "stdout_encoding": stdout_encoding,
        "stderr": stderr,
        "stderr_encoding": stderr_encoding,
        "stdout_bytes": result.stdout_bytes,
        "stderr_bytes": result.stderr_bytes,
    })
