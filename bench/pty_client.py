"""bench/suite.py's PTY row (8): clients on a real terminal, driven from a process of its own.

    python bench/pty_client.py echo SPEC_JSON              # keystroke echo latency, interleaved
    python bench/pty_client.py cat BYTES LINES -- ARGV...  # a client's output on a PTY, counted

Each client runs on a pseudo-terminal of this process (pexpect: a new session, the slave as its
controlling terminal, stdin, stdout and stderr); this process holds the master end and reads it
with os.read, as a terminal emulator does.

echo: SPEC_JSON is {"keys": N, "rounds": R, "contenders": [{"name": ..., "argv": [...]}, ...]}.
Every contender's session is started and made idle first: once the client has put the terminal
in raw mode (its ECHO flag off), `PS1='READY> '` is typed and the prompt awaited. Then R rounds,
the contenders' order rotated each round, of N/R keystrokes per contender: one printable byte is
written and timed until it comes back (what comes back must be exactly that byte), then a DEL
erases it and its erase sequence (readline's "\\b\\x1b[K", or "\\b \\b") is awaited, so that the
next keystroke meets an empty line. Prints one JSON line: seconds per keystroke per contender,
and each session's seconds from spawn to its first prompt.

cat: runs ARGV with its stdout the PTY, reads and counts (and discards) everything until end of
file (EIO once the client has closed the slave), and reaps it. Prints one JSON line: bytes and
newlines received, the exit status, seconds from spawn to exit and from spawn to the first byte.
It exits 1 when the counts are not BYTES and LINES or the client failed.

Every wait has a deadline; every client started here is ended by its PID (pexpect's terminate:
SIGHUP, SIGINT, then SIGKILL) on every way out.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

import pexpect

PROMPT = b"READY> "
SETUP = b"unset PROMPT_COMMAND; PS1='READ''Y> '\r"  # the quotes: its echo is not the prompt
KEYS = b"abcdefghijklmnopqrstuvwxyz0123456789"  # printable, none of them an escape character
ERASE = b"\x7f"
ERASED = (b"\x08\x1b[K", b"\x08 \x08")  # readline's echo of erasing the line's last character
WINDOW = (24, 80)
START_TIMEOUT = 60.0  # spawn to the first prompt (the login shell reads its rc files)
KEY_TIMEOUT = 5.0  # one keystroke's echo, or its erase
EXIT_TIMEOUT = 15.0
READ_SIZE = 1 << 16


class DriverError(Exception):
    """A client misbehaved: wrong echo, early exit, a deadline passed."""


def spawn(argv: list[str]) -> pexpect.spawn:
    """argv on a new PTY of this process (TERM=xterm, 24x80)."""
    env = {**os.environ, "TERM": "xterm"}
    return pexpect.spawn(argv[0], argv[1:], env=env, dimensions=WINDOW, echo=True)


def end(child: pexpect.spawn) -> None:
    """Stop the child by its PID if it still runs, and close the master."""
    if child.isalive():
        child.terminate(force=True)
    child.close(force=True)


def read_until(child: pexpect.spawn, done: Callable[[bytes], bool], timeout: float,
               what: str) -> bytes:
    """Read the master until ``done(everything read)``; DriverError at end of file or deadline."""
    got = b""
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([child.child_fd], [], [], left)[0]:
            raise DriverError(f"{what}: nothing more after {timeout:g} s; got {got[-200:]!r}")
        try:
            chunk = os.read(child.child_fd, READ_SIZE)
        except OSError:
            chunk = b""  # EIO: every holder of the slave closed it
        if not chunk:
            raise DriverError(f"{what}: the client closed the terminal; got {got[-200:]!r}")
        got += chunk
    return got


def pending(child: pexpect.spawn) -> bytes:
    """What the master holds right now, without waiting."""
    got = b""
    while select.select([child.child_fd], [], [], 0)[0]:
        try:
            chunk = os.read(child.child_fd, READ_SIZE)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got


def wait_raw(child: pexpect.spawn, timeout: float) -> None:
    """Wait until the client has put the terminal in raw mode (its ECHO flag off)."""
    deadline = time.monotonic() + timeout
    while child.getecho():
        if not child.isalive() or time.monotonic() > deadline:
            raise DriverError(f"the client did not put the terminal in raw mode in {timeout:g} s"
                              f" (alive: {child.isalive()}); output {pending(child)[-300:]!r}")
        time.sleep(0.005)


def start_session(argv: list[str]) -> tuple[pexpect.spawn, float]:
    """An idle shell session showing the READY> prompt, and the seconds it took."""
    started = time.perf_counter()
    child = spawn(argv)
    try:
        wait_raw(child, START_TIMEOUT)
        os.write(child.child_fd, SETUP)
        read_until(child, lambda got: got.endswith(PROMPT), START_TIMEOUT, "the READY> prompt")
        ready = time.perf_counter() - started
        time.sleep(0.2)
        pending(child)  # anything the shell printed after its prompt: not a keystroke's echo
    except BaseException:
        end(child)
        raise
    return child, ready


def keystroke(child: pexpect.spawn, key: bytes, name: str) -> float:
    """Seconds from writing ``key`` to its echo; then erase it and wait for the erase."""
    if stray := pending(child):
        raise DriverError(f"{name}: unexpected output before a keystroke: {stray[-200:]!r}")
    started = time.perf_counter()
    os.write(child.child_fd, key)
    echo = read_until(child, lambda got: key in got, KEY_TIMEOUT, f"{name}: the echo of {key!r}")
    elapsed = time.perf_counter() - started
    if echo != key:
        raise DriverError(f"{name}: sent {key!r}, the terminal showed {echo!r}")
    os.write(child.child_fd, ERASE)
    erased = read_until(child, lambda got: got.endswith(ERASED), KEY_TIMEOUT,
                        f"{name}: the erase of {key!r}")
    if erased not in ERASED:
        raise DriverError(f"{name}: erasing {key!r} showed {erased!r}")
    return elapsed


def close_session(child: pexpect.spawn, name: str) -> None:
    """Type `exit`, wait for the client to end; DriverError unless it exits 0."""
    os.write(child.child_fd, b"\x15exit\r")
    read_to_eof(child, EXIT_TIMEOUT, lambda chunk: None)
    reap(child, EXIT_TIMEOUT)
    child.close()
    if child.exitstatus != 0:
        raise DriverError(f"{name}: exited {child.exitstatus} (signal {child.signalstatus})"
                          " after `exit`")


def echo(spec: dict[str, Any]) -> dict[str, Any]:
    """The echo measurement of SPEC_JSON (see the module's docstring)."""
    contenders: list[tuple[str, list[str]]] = [(c["name"], c["argv"]) for c in spec["contenders"]]
    keys, rounds = int(spec["keys"]), int(spec["rounds"])
    sessions: dict[str, pexpect.spawn] = {}
    samples: dict[str, list[float]] = {name: [] for name, _ in contenders}
    ready: dict[str, float] = {}
    try:
        for name, argv in contenders:
            sessions[name], ready[name] = start_session(argv)
        sent = 0
        for r in range(rounds):
            batch = keys // rounds + (1 if r < keys % rounds else 0)
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for name, _ in order:
                for i in range(batch):
                    key = KEYS[(sent + i) % len(KEYS):][:1]
                    samples[name].append(keystroke(sessions[name], key, name))
            sent += batch
        for name, child in sessions.items():
            close_session(child, name)
    finally:
        for child in sessions.values():
            end(child)
    return {"samples": samples, "ready": ready}


def reap(child: pexpect.spawn, timeout: float) -> None:
    """Wait (bounded) for the child to exit after its end of file."""
    deadline = time.monotonic() + timeout
    while child.isalive():
        if time.monotonic() > deadline:
            raise DriverError(f"the client closed its terminal but still ran after {timeout:g} s")
        time.sleep(0.001)


def read_to_eof(child: pexpect.spawn, timeout: float, on_chunk: Callable[[bytes], None]
                ) -> None:
    """Hand everything the master shows to ``on_chunk`` until end of file (EIO: the client,
    and everything it started, closed the terminal); DriverError at the deadline."""
    fd = child.child_fd
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise DriverError(f"no end of file on the terminal after {timeout:g} s")
        try:
            chunk = os.read(fd, READ_SIZE)
        except OSError:
            return
        if not chunk:
            return
        on_chunk(chunk)


def cat(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run argv on a PTY, count what it shows until end of file, reap it (see the docstring)."""
    counts = {"bytes": 0, "newlines": 0}
    first: list[float] = []

    def count(chunk: bytes) -> None:
        if not first:
            first.append(time.perf_counter())
        counts["bytes"] += len(chunk)
        counts["newlines"] += chunk.count(b"\n")

    started = time.perf_counter()
    child = spawn(argv)
    try:
        read_to_eof(child, timeout, count)
        reap(child, EXIT_TIMEOUT)
        seconds = time.perf_counter() - started
        child.close()
    finally:
        end(child)
    return {**counts, "exit_status": child.exitstatus, "signal": child.signalstatus,
            "seconds": seconds, "first_byte": (first or [started + seconds])[0] - started}


def main(args: list[str]) -> int:
    """Run one mode; print its JSON line (or the error, exit 1)."""
    try:
        if args[:1] == ["echo"] and len(args) == 2:
            print(json.dumps(echo(json.loads(args[1]))))
            return 0
        if args[:1] == ["cat"] and len(args) > 4 and args[3] == "--":
            got = cat(args[4:], timeout=300.0)
            print(json.dumps(got))
            want = {"bytes": int(args[1]), "newlines": int(args[2]), "exit_status": 0}
            wrong = {k: got[k] for k, v in want.items() if got[k] != v}
            if wrong:
                print(f"pty_client cat: expected {want}, got {wrong}", file=sys.stderr)
                return 1
            return 0
    except DriverError as exc:
        print(f"pty_client: {exc}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
