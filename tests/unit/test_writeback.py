"""Writeback asks the kernel to start writing a growing file every STEP bytes, never waiting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rexec import writeback


def test_writeback_is_asked_for_every_step_of_what_was_written(tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    calls: list[tuple[int, int, int, int]] = []
    monkeypatch.setattr(writeback, "_sync_file_range",
                        lambda fd, offset, count, flags: calls.append((fd, offset, count, flags))
                        or 0)
    monkeypatch.setattr(writeback, "STEP", 100)
    w = writeback.Writeback(7)
    for _ in range(25):
        w.wrote(10)  # 250 bytes in all
    assert calls == [(7, 0, 100, 2), (7, 100, 100, 2)]  # the last 50 wait for the fsync


def test_the_real_call_accepts_a_real_file(tmp_path: Path) -> None:
    if writeback._sync_file_range is None:  # not Linux: nothing to ask, nothing to check
        return
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 4096)
        assert writeback._sync_file_range(fd, 0, 4096, 2) == 0
        w = writeback.Writeback(fd)
        w.wrote(writeback.STEP)  # one request, no error raised
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"x" * 4096


def test_loading_the_call_starts_no_child_process(monkeypatch: Any) -> None:
    """libc's sync_file_range comes from the process's own symbols; ctypes.util.find_library
    would run `ldconfig -p` in a child on every get, put and deploy."""
    import subprocess
    import sys

    spawned: list[object] = []
    real = subprocess.Popen.__init__

    def spy(self: subprocess.Popen[bytes], *args: Any, **kwargs: Any) -> None:
        spawned.append(args[0] if args else kwargs.get("args"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    call = writeback._load()
    if sys.platform.startswith("linux"):
        assert call is not None
    assert spawned == []
