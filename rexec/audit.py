"""The audit log: one JSON object per line, appended and flushed per record.

Every command decision is recorded (run, refused, not started) with who asked, from where, what,
and how it ended; so is every failed authentication. Tokens never appear: records are built from
identity names, never from secrets. A write that fails is reported in the server log (once per
failure streak) and retried on the next record, never silently dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("rexec.server")


class AuditLog:
    """Appends JSON records to a file (or nowhere, when no path is configured)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._failing = False

    def record(self, event: str, **fields: Any) -> None:
        """Append one record now."""
        if self.path is None:
            return
        record = {"time": _utc_now(), "event": event, **fields}
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        try:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            self._close_quietly()
            if not self._failing:
                log.error(json.dumps({"event": "audit_write_failed", "path": str(self.path),
                                      "reason": str(exc), "lost_record": record}, default=str))
            self._failing = True
            return
        if self._failing:
            log.warning(json.dumps({"event": "audit_write_recovered", "path": str(self.path)}))
            self._failing = False

    def _close_quietly(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the file."""
        self._close_quietly()


def _utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
