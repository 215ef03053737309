"""The audit log: one JSON object per line, appended and flushed per record.

Every decision is recorded (a login, a refused connection, a command started, refused or not
started, and how it ended) and so is every connection's end, with who, from where, what, and
why. Tokens never appear: records are built from identity names, never from secrets, and the
environment a client sends is kept with secret-looking values hidden (``exec.env.audit_env``).

Records are pure ASCII (``ensure_ascii``): a command line holding U+2028 or U+0085 cannot split a
record for readers that cut lines at every Unicode line break, as Python's ``splitlines`` does.

The file is created mode 0600 (a ``run_as`` user must not read other identities' commands); an
existing file that others may read is refused. The server opens it before it listens and will
not start without it; a write that fails later is reported in the server log (once per failure
streak) and makes ``record`` return False, so that no command starts unaudited; every record
tries the file again, so the log recovers once it is writable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import IO, Any

from rexec.errors import ConfigError

log = logging.getLogger("rexec.server")
# One encoder for every line and record: json.dumps(..., default=str) would make a new one
# (and its C encoder) per call. ensure_ascii, as json.dumps does by default.
_JSON = json.JSONEncoder(default=str, ensure_ascii=True)


def log_event(level: int, event: str, **fields: Any) -> None:
    """Write one structured (JSON) log line."""
    if log.isEnabledFor(level):
        log.log(level, _JSON.encode({"event": event, **fields}))


class AuditLog:
    """Appends JSON records to a file (or nowhere, when no path is configured)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._failing = False

    def open(self) -> None:
        """Open (or create, mode 0600) the file now; ConfigError naming it if that fails."""
        if self.path is None:
            return
        try:
            self._file = self._open()
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {self.path}:"
                              f" {exc.strerror or exc}") from None
        mode = stat.S_IMODE(os.fstat(self._file.fileno()).st_mode)
        if mode & stat.S_IRWXO:
            self._close_quietly()
            raise ConfigError(f"the audit log {self.path} is accessible by others (mode"
                              f" {mode:04o}); run: chmod 600 {self.path}")

    def _open(self) -> IO[str]:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", encoding="ascii")

    def record(self, event: str, **fields: Any) -> bool:
        """Append one record now; False if it could not be written."""
        if self.path is None:
            return True
        record = {"time": _utc_now(), "event": event, **fields}
        line = _JSON.encode(record) + "\n"
        try:
            if self._file is None:
                self._file = self._open()
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            self._close_quietly()
            if not self._failing:
                log.error(json.dumps({"event": "audit_write_failed", "path": str(self.path),
                                      "reason": str(exc), "lost_record": record}, default=str))
            self._failing = True
            return False
        if self._failing:
            log.warning(json.dumps({"event": "audit_write_recovered", "path": str(self.path)}))
            self._failing = False
        return True

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
