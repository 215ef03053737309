"""Every rendering of results for people and programs: today the ``--json`` document.

Later renderings (host-prefixed lines, summaries, JSON Lines, progress bars) live here too,
with rich imported only when stdout is a terminal.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Container, Sequence
from typing import Any, Protocol


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


# --- fleet mode: many hosts' output ---------------------------------------------------------
#
# The renderers below take what the fan-out reports (rexec.fleet.group): each host's output as
# it arrives (``output(host, stream, data)``), each host's outcome when it ends (``done``), and
# the whole GroupResult at the end (``finish``). They write bytes to the file descriptors, one
# os.write per line, so that a line is never split by another host's output.


class Outcome(Protocol):
    """What the renderers read of one host's end (rexec.fleet.outcome.HostOutcome)."""

    @property
    def host(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def duration(self) -> float: ...
    @property
    def result(self) -> Any: ...


def write_fd(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (a line at a time: one write unless the pipe is full)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


LINES_FLUSH_SIZE = 64 * 1024
"""Bytes of whole lines held before they are written without waiting for the loop's pass."""


class LineWriter:
    """Whole lines for stdout and stderr, written together once per pass of the event loop.

    A fan-out's hosts end in bursts: a write per line woke the reader of a pipe (``| grep``,
    a script, the benchmark's parent) once per line, and on two cores the woken reader took
    the CPU from rexec each time (1,000 hosts: 0.1-0.2 s of the run inside write()). Lines
    queued in one pass go out in one write per run of lines for the same descriptor, so the
    order across stdout and stderr is kept, and a line is still never split. Outside a
    running event loop every line is written at once.

    ``on_broken_pipe`` is called once when stdout's reader has gone; stdout's lines are then
    dropped. A closed stderr drops its lines silently.
    """

    def __init__(self, on_broken_pipe: Any = None) -> None:
        self.on_broken_pipe = on_broken_pipe
        self.broken_pipe = False
        self._parts: list[tuple[int, bytes]] = []
        self._size = 0
        self._scheduled: Any = None  # the event loop a flush is due on

    def write(self, fd: int, data: bytes) -> None:
        """Queue whole lines for ``fd`` (1 or 2)."""
        if fd == 1 and self.broken_pipe:
            return
        import asyncio  # here, not at the top: `rexec run --json` imports this module, and
        # the one-host path never loads asyncio (fleet mode has it loaded already)

        self._parts.append((fd, data))
        self._size += len(data)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self._size >= LINES_FLUSH_SIZE:
            self.flush()
        elif self._scheduled is not loop:
            loop.call_soon(self._pass_ended)
            self._scheduled = loop

    def _pass_ended(self) -> None:
        self._scheduled = None
        self.flush()

    def flush(self) -> None:
        """Write everything queued, in order."""
        parts, self._parts, self._size = self._parts, [], 0
        start = 0
        while start < len(parts):
            fd = parts[start][0]
            end = start + 1
            while end < len(parts) and parts[end][0] == fd:
                end += 1
            if not (fd == 1 and self.broken_pipe):
                try:
                    write_fd(fd, b"".join(data for _, data in parts[start:end]))
                except BrokenPipeError:  # `rexec run @web -- yes | head`: stop, as one host does
                    if fd == 1:
                        self.broken_pipe = True
                        if self.on_broken_pipe is not None:
                            self.on_broken_pipe()
            start = end


def outcome_json(outcome: Outcome) -> str:
    """One --json line of fleet mode: the host, how it ended, its output and the error."""
    result = outcome.result
    stdout, stdout_encoding = text_or_base64(result.stdout if result is not None else b"")
    stderr, stderr_encoding = text_or_base64(result.stderr if result is not None else b"")
    return json.dumps({
        "host": outcome.host,
        "address": outcome.address,
        "status": outcome.status,
        "exit_code": result.exit_code if result is not None else None,
        "signal": result.signal if result is not None else None,
        "exit_status": result.exit_status if result is not None else None,
        "duration": round(outcome.duration, 6),
        "stdout": stdout,
        "stdout_encoding": stdout_encoding,
        "stderr": stderr,
        "stderr_encoding": stderr_encoding,
        "error": outcome.error,
        **_commands_json(outcome),
    })


def transfer_json(outcome: Outcome, local: str | None, remote: str | None) -> str:
    """One --json line of a fleet put or get: the host, how it ended, the file's ``local`` and
    ``remote`` paths, and ``bytes``, ``sha256``, ``changed`` (null unless it was done)."""
    return _transfer_line(outcome, local, remote, ("bytes", "sha256", "changed"))


def tree_json(outcome: Outcome, local: str | None, remote: str | None) -> str:
    """One --json line of a fleet put -r or get -r: the host, how it ended, the trees' paths,
    the counts (null unless the host's transfer ran), its failed entries and the error."""
    result = outcome.result
    errors = [{"path": e.path, "code": e.code, "message": e.message}
              for e in result.errors] if result is not None else []
    return _transfer_line(outcome, local, remote,
                          ("files", "directories", "links", "bytes", "changed"), errors=errors)


def _transfer_line(outcome: Outcome, local: str | None, remote: str | None,
                   names: tuple[str, ...], **more: Any) -> str:
    result = outcome.result
    return json.dumps({
        "host": outcome.host,
        "address": outcome.address,
        "status": outcome.status,
        "local": result.local if result is not None else local,
        "remote": result.remote if result is not None else remote,
        **{name: getattr(result, name) if result is not None else None for name in names},
        **more,
        "duration": round(outcome.duration, 6),
        "error": outcome.error,
    })


def _commands_json(outcome: Any) -> dict[str, Any]:
    """A batch's per-command results, for its host's --json line."""
    commands = getattr(outcome, "commands", ())
    if not commands:
        return {}
    listed = []
    for item in commands:
        r = item.result
        out, out_encoding = text_or_base64(r.stdout if r is not None else b"")
        err, err_encoding = text_or_base64(r.stderr if r is not None else b"")
        listed.append({"line": item.line, "command": item.command,
                       "exit_code": r.exit_code if r is not None else None,
                       "signal": r.signal if r is not None else None,
                       "exit_status": r.exit_status if r is not None else None,
                       "timed_out": r.timed_out if r is not None else False,
                       "duration": r.duration if r is not None else None,
                       "stdout": out, "stdout_encoding": out_encoding,
                       "stderr": err, "stderr_encoding": err_encoding,
                       "error": item.error})
    return {"commands": listed, "failed_line": outcome.failed_line}


def gathered(outputs: dict[str, tuple[bytes, int | None]], fold: Any) -> bytes:
    """``-b/--gather``: hosts with the same stdout and exit status printed once, under a header
    naming them as a folded node set, as ``clush -b`` and ``dshbak -c`` do; the largest group
    first, then by first host."""
    groups: dict[tuple[bytes, int | None], list[str]] = {}
    for host, key in outputs.items():
        groups.setdefault(key, []).append(host)
    out = bytearray()
    for (stdout, status), hosts in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        name = fold(hosts)
        label = f"{name} ({len(hosts)})" if len(hosts) > 1 else name
        if status not in (0, None):
            label += f" exit {status}"
        rule = "-" * min(max(len(label), 15), 78)
        out += f"{rule}\n{label}\n{rule}\n".encode()
        out += stdout if stdout.endswith(b"\n") or not stdout else stdout + b"\n"
    return bytes(out)


def summary_lines(result: Any, fold: Any, *, quiet: bool = False, slowest: int = 3,
                  batch: bool = False) -> list[str]:
    """The end-of-run summary: counts, the failed and unreachable hosts as folded node sets
    (with why, when all share one reason), the slowest hosts; only the failures with quiet."""
    statuses: dict[str, str] = dict(result.statuses)
    total = len(statuses)
    by: dict[str, list[str]] = {}
    for host, status in statuses.items():
        by.setdefault(status, []).append(host)
    lines = []
    if not quiet:
        counts = ", ".join(f"{len(by[s])} {s.replace('_', ' ')}" for s in
                           ("ok", "failed", "timed_out", "unreachable", "cancelled") if by.get(s))
        lines.append(f"{total} host{'s' if total != 1 else ''}: {counts}")
    for status in ("failed", "timed_out", "cancelled"):
        if by.get(status):
            line = f"{status.replace('_', ' ')}: {fold(by[status])}"
            details = []
            if status == "failed":
                codes = {_failure(result, host, batch) for host in by[status]}
                if len(codes) == 1:
                    line += f" ({codes.pop()})"
                else:  # a line each, as the unreachable hosts' reasons
                    details = [f"  {host}: {_failure(result, host, batch)}"
                               for host in by[status]]
            lines += [line, *details]
    if by.get("unreachable"):
        reasons = {result.unreachable[h] for h in by["unreachable"]}
        why = f" ({reasons.pop()})" if len(reasons) == 1 else ""
        lines.append(f"unreachable: {fold(by['unreachable'])}{why}")
        if not why:
            lines += [f"  {h}: {result.unreachable[h]}" for h in by["unreachable"]]
    durations = dict(result.durations)
    if not quiet and len(durations) > 1:
        slow = sorted(durations.items(), key=lambda kv: -kv[1])[:slowest]
        lines.append("slowest: " + ", ".join(f"{h} {d:.2f} s" for h, d in slow))
    return lines


def _failure(result: Any, host: str, batch: bool) -> str:
    """How one failed host failed: its exit status, the batch line, or the error."""
    outcome = result.outcomes.get(host)
    r = result.get(host)
    where = ""
    if batch and outcome is not None and getattr(outcome, "failed_line", None) is not None:
        where = f"line {outcome.failed_line}: "
    if r is None:
        return where + (outcome.error if outcome is not None and outcome.error else "failed")
    if r.signal is not None:
        return f"{where}signal {r.signal}"
    return f"{where}exit {r.exit_status}"


def summary_table(outcomes: list[Outcome]) -> str:
    """``--summary``: host, status, exit, duration and bytes for every host, aligned."""
    rows = [("HOST", "STATUS", "EXIT", "SECONDS", "STDOUT", "STDERR")]
    for o in outcomes:
        r = o.result
        rows.append((o.host, o.status,
                     "" if r is None else str(r.exit_status),
                     f"{o.duration:.3f}",
                     "" if r is None else str(r.stdout_bytes),
                     "" if r is None else str(r.stderr_bytes)))
    return aligned(rows, right=range(2, 6))


def aligned(rows: Sequence[Sequence[str]], right: Container[int] = ()) -> str:
    """``rows`` as columns two spaces apart, those numbered in ``right`` right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     .rstrip() for row in rows) + "\n"


# --- the run history (rexec history) --------------------------------------------------------


def local_time(when: float) -> str:
    """A unix time as this machine's local time, ``2025-01-31 14:05:09``."""
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def run_json(run: Any) -> dict[str, Any]:
    """One run of the history (a RunRecord) as ``rexec history --json`` shows it."""
    return {"id": run.id, "kind": run.kind, "name": run.name, "targets": run.targets,
            "status": run.status, "exit_status": run.exit_status, "hosts": run.hosts,
            "started": run.started, "ended": run.ended, "duration": run.duration,
            "user": run.user, "hostname": run.hostname, "pid": run.pid,
            "plan_sha256": run.plan_sha256, "options": run.options}


def step_json(result: Any) -> dict[str, Any]:
    """One host x step result of the history (a ResultRecord), its output tails as text,
    or base64 when not UTF-8 (as ``rexec run --json``)."""
    stdout, stdout_encoding = text_or_base64(result.stdout_tail)
    stderr, stderr_encoding = text_or_base64(result.stderr_tail)
    return {"host": result.host, "step_index": result.step_index, "step": result.step,
            "status": result.status, "changed": result.changed,
            "exit_code": result.exit_code, "duration": result.duration,
            "attempts": result.attempts, "stdout": stdout, "stdout_encoding": stdout_encoding,
            "stderr": stderr, "stderr_encoding": stderr_encoding, "error": result.error,
            "recorded": result.recorded}


class Progress:
    """The done/total bar on a terminal (rich), below the streaming lines, gone at the end.

    Lines for the same terminal are printed through rich's console while the bar is shown, so
    they appear above it; lines for somewhere else (stdout redirected) go straight there.
    With ``moved``, a column says how many bytes have moved (``moved(text)``: a fleet put or
    get).
    """

    def __init__(self, total: int, *, moved: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self.console = Console(file=sys.stderr)
        columns = [TextColumn("rexec"), BarColumn(), MofNCompleteColumn(),
                   *([TextColumn("{task.fields[moved]}")] if moved else []),
                   TextColumn("{task.fields[failures]}"), TimeElapsedColumn()]
        self._bar = Bar(*columns, console=self.console, transient=True, auto_refresh=True,
                        refresh_per_second=8)
        self._task = self._bar.add_task("hosts", total=total, failures="", moved="")
        self.failed = self.unreachable = 0
        self.shared = _same_terminal(1, 2)
        self._bar.start()

    def line(self, fd: int, data: bytes) -> None:
        """Print one line above the bar (or straight to ``fd`` when it is elsewhere)."""
        if fd == 2 or self.shared:
            self.console.out(data.decode("utf-8", "replace"), end="", highlight=False)
        else:
            write_fd(fd, data)

    def done(self, status: str) -> None:
        """One host ended."""
        if status == "unreachable":
            self.unreachable += 1
        elif status != "ok":
            self.failed += 1
        notes = [f"{self.failed} failed"] if self.failed else []
        notes += [f"{self.unreachable} unreachable"] if self.unreachable else []
        self._bar.update(self._task, advance=1, failures=", ".join(notes))

    def moved(self, text: str) -> None:
        """What the bytes column says now."""
        self._bar.update(self._task, moved=text)

    def stop(self) -> None:
        """Remove the bar (transient: nothing is left of it on the terminal)."""
        self._bar.stop()


def _same_terminal(a: int, b: int) -> bool:
    try:
        return os.isatty(a) and os.isatty(b) and os.ttyname(a) == os.ttyname(b)
    except OSError:
        return False
