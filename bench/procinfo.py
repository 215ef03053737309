"""Facts about a process from /proc, shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, name: str) -> int:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in KiB; 0 if the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    """How many file descriptors the process has open; -1 if it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cmdline(pid: int) -> str | None:
    """The command line of a live (non-zombie) process, None if there is none."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return None


def resting_fd_count(pid: int, steady: float = 0.5, timeout: float = 5.0) -> int:
    """The fd count once it has held still for ``steady`` seconds (a closing connection
    lingers for a moment after its client has gone)."""
    deadline = time.monotonic() + timeout
    count, since = fd_count(pid), time.monotonic()
    while time.monotonic() - since < steady and time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := fd_count(pid)) != count:
            count, since = now, time.monotonic()
    return count


def _child_stats(pid: int) -> Iterator[tuple[int, list[str]]]:
    """(PID, /proc/PID/stat fields after the command name) of each direct child of ``pid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            yield int(entry.name), fields


def children(pid: int) -> set[str]:
    """"PID: COMMAND LINE" of the live (non-zombie) direct children of ``pid``."""
    return {f"{child}: {line}" for child, fields in _child_stats(pid)
            if fields[0] != "Z" and (line := cmdline(child))}


def child_pids(pid: int) -> set[int]:
    """PIDs of the direct children of ``pid``, zombies (not yet reaped) included."""
    return {child for child, _ in _child_stats(pid)}


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and of the children it has reaped; NaN if gone.

    /proc/PID/stat's utime, stime, cutime and cstime: a child's time (with its own reaped
    descendants') reaches its parent's cutime/cstime when the parent reaps it, not before."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS  # fields 14-17 of proc(5)
