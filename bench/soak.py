"""Soak: many clients hammer one rexec server for minutes; every answer is checked.

    make soak                                            # 16 clients, 10 minutes
    python bench/soak.py --minutes 0.5 --clients 4 --interval 10

Runs a private rexec server on a free loopback port (temporary REXEC_HOME, generated token),
then CLIENTS asyncio clients, each on a persistent connection (re-opened now and then) with
about one command in five on a fresh connection of its own, run this mix until the deadline:

    true                          latency measured (p50/p99)
    echo TAG                      small output, compared
    tail -c +K FILE | head -c N   1-3 MB of random bytes from a file the script wrote, SHA-256
                                  compared with the same slice made locally
    cat                           a few hundred KB of stdin, which must come back unchanged
    echo oops >&2; exit 3         must exit 3 with its stderr
    sleep 5, timeout 0.2 s        (rarely) must report timed_out, quickly

Every INTERVAL seconds it prints one line (elapsed, commands, errors, p50/p99 of `true` over the
interval, server RSS and fd count); at the end a summary: totals, the errors (deduplicated with
counts; messages that differ only in numbers count as one), latencies, and the server's RSS and
fds at start, peak and end. It exits 1 if any error happened, the server's fd count ended above
its start, a command's process outlived the run, or the server did not stop cleanly.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import platform
import random
import re
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from procinfo import (  # bench/ is on sys.path when a script here runs
    children,
    cmdline,
    fd_count,
    proc_status,
    resting_fd_count,
)

import rexec

BIN = Path(sys.executable).parent
MIB = 1024 * 1024
BLOB_SIZE = 4 * MIB  # random bytes in a file on the server's side; big outputs are slices of it
BIG_MIN, BIG_MAX = 1_000_000, 3_000_000
STDIN_MIN, STDIN_MAX = 100_000, 500_000
COMMAND_LIMIT = 60.0  # a command taking longer than this is an error (and is abandoned)
SETTLE = 10.0  # how long the server gets to close fds and reap children after the load
FRESH_SHARE = 0.2  # share of commands run on a connection of their own
RECONNECT_EVERY = 200  # commands on a persistent connection before it is re-opened
MAX_ERROR_LINES = 30  # kinds of error listed in the summary (numbers aside, each is one kind)
# (kind, weight); the timeout case is "occasional": about 1 command in 100
MIX = [("true", 30), ("echo", 20), ("big", 15), ("stdin", 15), ("fail", 10), ("timeout", 1)]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def still_alive(processes: set[str]) -> list[str]:
    """Those of ``processes`` ("PID: COMMAND LINE") still running."""
    return sorted(p for p in processes
                  if cmdline(int(p.split(":")[0])) == p.split(": ", 1)[1])


def marked_processes(marker: bytes) -> list[str]:
    """Live processes whose environment holds ``marker``: every command gets it, so any such
    process is a command (or a grandchild of one) still running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@dataclass
class Stats:
    """Everything the clients and the monitor measured."""

    done: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    true_ms: list[float] = field(default_factory=list)  # the whole run
    true_ms_window: list[float] = field(default_factory=list)  # since the last report line
    fresh_ms: list[float] = field(default_factory=list)  # connect + authenticate + `true`
    big_bytes: int = 0
    stdin_bytes: int = 0
    connections: int = 0
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    examples: dict[str, str] = field(default_factory=dict)

    def error(self, message: str) -> None:
        """Count an error; messages that differ only in their numbers count as one."""
        key = re.sub(r"\d+", "N", message)
        self.errors[key] += 1
        self.examples.setdefault(key, message)


class Verification(Exception):
    """A command's answer was not the expected one."""


class Soak:
    """The clients' side: runs and checks commands, records what it finds in ``stats``."""

    def __init__(self, *, address: str, token: str, blob_path: Path, blob: bytes, marker: str,
                 stats: Stats) -> None:
        self.address = address
        self.token = token
        self.blob_path = blob_path
        self.blob = blob
        name, _, value = marker.partition("=")
        self.env = {name: value}
        self.stats = stats
        self.kinds: dict[str, Callable[[rexec.Client, random.Random], Awaitable[None]]] = {
            "true": self.run_true, "echo": self.run_echo, "big": self.run_big,
            "stdin": self.run_stdin, "fail": self.run_fail, "timeout": self.run_timeout,
        }

    def connect(self) -> rexec.Client:
        self.stats.connections += 1
        return rexec.Client(self.address, token=self.token, connect_timeout=30)

    async def command(self, c: rexec.Client, kind: str, rng: random.Random) -> None:
        """Run one command of ``kind`` on ``c`` and check its answer (Verification if wrong)."""
        await self.kinds[kind](c, rng)
        self.stats.done += 1
        self.stats.by_kind[kind] += 1

    async def run_true(self, c: rexec.Client, rng: random.Random) -> None:
        started = time.perf_counter()
        r = await c.run("true", env=self.env)
        ms = (time.perf_counter() - started) * 1000
        if r.exit_code != 0 or r.stdout or r.stderr:
            raise Verification(f"true: exit {r.exit_code}, output {r.stdout[:80]!r}"
                               f" {r.stderr[:80]!r}")
        self.stats.true_ms.append(ms)
        self.stats.true_ms_window.append(ms)

    async def run_echo(self, c: rexec.Client, rng: random.Random) -> None:
        tag = f"soak-{rng.randrange(10**9)}"
        r = await c.run(f"echo {tag}", env=self.env)
        if r.exit_code != 0 or r.stdout != f"{tag}\n".encode() or r.stderr:
            raise Verification(f"echo: exit {r.exit_code}, stdout {r.stdout[:80]!r}")

    async def run_big(self, c: rexec.Client, rng: random.Random) -> None:
        offset = rng.randrange(BLOB_SIZE - BIG_MAX)
        size = rng.randint(BIG_MIN, BIG_MAX)
        digest = hashlib.sha256()
        received = 0

        def on_stdout(data: bytes | memoryview) -> None:
            nonlocal received
            received += len(data)
            digest.update(data)

        r = await c.run(f"tail -c +{offset + 1} {self.blob_path} | head -c {size}",
                        env=self.env, capture=False, on_stdout=on_stdout)
        if r.exit_code != 0 or received != size or r.stdout_bytes != size:
            raise Verification(f"big: exit {r.exit_code}, {received} bytes received,"
                               f" {r.stdout_bytes} counted, {size} expected")
        expected = hashlib.sha256(memoryview(self.blob)[offset:offset + size]).digest()
        if digest.digest() != expected:
            raise Verification("big: SHA-256 of the output differs from the file's slice")
        self.stats.big_bytes += size

    async def run_stdin(self, c: rexec.Client, rng: random.Random) -> None:
        offset = rng.randrange(BLOB_SIZE - STDIN_MAX)
        data = self.blob[offset:offset + rng.randint(STDIN_MIN, STDIN_MAX)]
        r = await c.run("cat", env=self.env, stdin=data)
        if r.exit_code != 0 or r.stdout != data:
            raise Verification(f"stdin: exit {r.exit_code}, {len(r.stdout)} bytes back of"
                               f" {len(data)}, equal prefix {r.stdout == data[:len(r.stdout)]}")
        self.stats.stdin_bytes += len(data)

    async def run_fail(self, c: rexec.Client, rng: random.Random) -> None:
        r = await c.run("echo oops >&2; exit 3", env=self.env)
        if r.exit_code != 3 or r.ok or r.stderr != b"oops\n" or r.timed_out:
            raise Verification(f"fail: exit {r.exit_code}, stderr {r.stderr[:80]!r},"
                               f" timed_out {r.timed_out}")

    async def run_timeout(self, c: rexec.Client, rng: random.Random) -> None:
        started = time.monotonic()
        r = await c.run("sleep 5", env=self.env, timeout=0.2)
        took = time.monotonic() - started
        if not r.timed_out or r.exit_status != 124 or took > 3.0:
            raise Verification(f"timeout: timed_out {r.timed_out}, status {r.exit_status},"
                               f" took {took:.1f} s (sleep 5 with timeout 0.2)")

    async def checked(self, kind: str, coro: Callable[[], Awaitable[object]]) -> bool:
        """Await ``coro()`` within COMMAND_LIMIT; record any failure; True if it went well."""
        try:
            async with asyncio.timeout(COMMAND_LIMIT):
                await coro()
        except Verification as exc:
            self.stats.error(str(exc))
        except TimeoutError:
            self.stats.error(f"{kind}: no answer within {COMMAND_LIMIT:g} s")
        except Exception as exc:  # every failure is a finding, whatever its type
            self.stats.error(f"{kind}: {type(exc).__name__}: {exc}")
        else:
            return True
        return False

    async def client(self, number: int, seed: int, deadline: float) -> None:
        """One client's loop, until the deadline."""
        rng = random.Random(seed * 1000 + number)  # noqa: S311 (a reproducible mix)
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        persistent: rexec.Client | None = None
        used = 0
        try:
            while time.monotonic() < deadline:
                kind = rng.choices(kinds, weights)[0]
                if rng.random() < FRESH_SHARE:
                    await self.checked(kind, lambda k=kind: self.fresh(k, rng))
                    continue
                if persistent is None or used >= RECONNECT_EVERY:
                    if persistent is not None:
                        await close(persistent)
                    persistent, used = self.connect(), 0
                    if not await self.checked("connect", persistent.connect):
                        persistent = None
                        await asyncio.sleep(0.5)  # do not spin on a refusing server
                        continue
                used += 1
                c = persistent
                if not await self.checked(kind, lambda k=kind, c=c: self.command(c, k, rng)):
                    await close(persistent)  # its state is unknown: start afresh
                    persistent = None
        finally:
            if persistent is not None:
                await close(persistent)

    async def fresh(self, kind: str, rng: random.Random) -> None:
        """Connect, run one command, close; a fresh `true` is timed from connect to close."""
        started = time.perf_counter()
        async with self.connect() as c:
            await self.command(c, kind, rng)
        if kind == "true":
            self.stats.fresh_ms.append((time.perf_counter() - started) * 1000)


async def close(c: rexec.Client) -> None:
    """Close a connection, giving up after a few seconds (the server notices either way)."""
    with contextlib.suppress(TimeoutError, rexec.RexecError, OSError):
        async with asyncio.timeout(5):
            await c.close()


async def monitor(pid: int, stats: Stats, started: float, deadline: float,
                  interval: float) -> None:
    """Sample the server every second; print a line every ``interval`` seconds."""
    next_line = started + interval
    last_done, last_at = 0, started
    while (now := time.monotonic()) < deadline:
        stats.rss.append(proc_status(pid, "VmRSS") * 1024)
        stats.fds.append(fd_count(pid))
        if now >= next_line:
            window, stats.true_ms_window = stats.true_ms_window, []
            rate = (stats.done - last_done) / (now - last_at)
            last_done, last_at = stats.done, now
            print(f"[{now - started:7.1f} s] commands ok {stats.done:>8} ({rate:6.1f}/s)"
                  f"  errors {sum(stats.errors.values()):>4}"
                  f"  true p50 {percentile(window, 50):6.2f} ms p99 {percentile(window, 99):7.2f}"
                  f" ms  server RSS {stats.rss[-1] / MIB:6.1f} MiB  fds {stats.fds[-1]:>4}",
                  flush=True)
            next_line += interval
        await asyncio.sleep(max(0.0, min(1.0, deadline - now, next_line - now)))


async def soak(soak: Soak, *, pid: int, clients: int, seconds: float, interval: float,
               seed: int) -> float:
    started = time.monotonic()
    deadline = started + seconds
    watcher = asyncio.create_task(monitor(pid, soak.stats, started, deadline, interval))
    # each client stops by itself at the deadline; the last command may run up to COMMAND_LIMIT
    await asyncio.gather(*(soak.client(n, seed, deadline) for n in range(clients)))
    await watcher
    return time.monotonic() - started


def start_server(home: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start rexec-server on a free loopback port; return it and its address."""
    token_file = home / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    env = {**os.environ, "REXEC_HOME": str(home)}
    env.pop("REXEC_TOKEN", None)
    env.pop("REXEC_CONFIG", None)
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [str(BIN / "rexec-server"), "--host", "127.0.0.1", "--port", "0",
             "--token-file", str(token_file), "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env,
        )
    assert server.stdout is not None
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(server.stdout, selectors.EVENT_READ)
        end = time.monotonic() + 20
        while time.monotonic() < end and sel.select(end - time.monotonic()):
            line = server.stdout.readline()
            if line.startswith(b"listening on ") or not line:
                break
    if not line.startswith(b"listening on "):
        stop_server(server)
        raise SystemExit(f"the server did not start: {line!r}\n"
                         f"{(home / 'server.log').read_text(errors='replace')[-2000:]}")
    return server, line.decode().split()[-1]


def stop_server(server: subprocess.Popen[bytes]) -> int:
    """SIGTERM the server we started (by its PID), SIGKILL it if it lingers; its exit status."""
    if server.poll() is None:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(5)
    if server.stdout is not None:
        server.stdout.close()
    return server.returncode


def settle(check: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def fmt_ms(values: Iterable[float]) -> str:
    values = list(values)
    return (f"p50 {percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms,"
            f" max {max(values, default=float('nan')):.2f} ms (n={len(values)})")


@dataclass
class Report:
    """What one soak run found about the server."""

    seed: int
    clients: int
    elapsed: float = 0.0
    rss_start: int = 0
    rss_end: int = 0
    hwm: int = 0
    fds_start: int = 0
    fds_end: int = 0
    settled: bool = False
    status: int | None = None
    problems: list[str] = field(default_factory=list)
    log_tail: str = ""
    interrupted: bool = False


def run(args: argparse.Namespace, seed: int, stats: Stats) -> Report:
    """Start the server, soak it, measure it, stop it, look for leftovers."""
    report = Report(seed=seed, clients=args.clients)
    marker = f"REXEC_SOAK_RUN={secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="rexec-soak-") as tmp:
        home = Path(tmp)
        blob = os.urandom(BLOB_SIZE)
        blob_path = home / "blob"
        blob_path.write_bytes(blob)
        token = secrets.token_urlsafe(32)
        server, address = start_server(home, token)
        pid = server.pid
        try:
            # one command first, so lazy imports and first allocations are in the start figures
            warm = rexec.run(address, "echo warm", token=token)
            if warm.stdout != b"warm\n":
                report.problems.append(f"warm-up answered {warm!r}")
            # the server may keep helpers of its own (a guardian): those are no command's
            settle(lambda: not any("echo warm" in c for c in children(pid)), 5)
            resident = children(pid)
            report.fds_start = resting_fd_count(pid)
            report.rss_start = proc_status(pid, "VmRSS") * 1024
            print(f"server {address} pid {pid}: RSS {report.rss_start / MIB:.1f} MiB,"
                  f" fds {report.fds_start}", flush=True)
            soaker = Soak(address=address, token=token, blob_path=blob_path, blob=blob,
                          marker=marker, stats=stats)
            started = time.monotonic()
            try:
                report.elapsed = asyncio.run(soak(soaker, pid=pid, clients=args.clients,
                                                  seconds=args.minutes * 60,
                                                  interval=args.interval, seed=seed))
            except KeyboardInterrupt:  # Ctrl-C: stop early, but still clean up and report
                report.interrupted = True
                report.elapsed = time.monotonic() - started
            report.settled = settle(
                lambda: fd_count(pid) <= report.fds_start and children(pid) <= resident, SETTLE)
            report.rss_end, report.fds_end = proc_status(pid, "VmRSS") * 1024, fd_count(pid)
            report.hwm = proc_status(pid, "VmHWM") * 1024
            if left := sorted(children(pid) - resident):
                report.problems.append(f"{len(left)} child process(es) of the server left"
                                       f" after {SETTLE:g} s: {left}")
            if report.fds_end > report.fds_start:
                report.problems.append(
                    f"the server's fds ended at {report.fds_end}, above the {report.fds_start}"
                    f" it started with (not settled after {SETTLE:g} s)")
            if server.poll() is not None and not report.interrupted:  # Ctrl-C reaches it too
                report.problems.append(f"the server died during the run"
                                       f" (status {server.returncode})")
        finally:
            report.status = stop_server(server)
            report.log_tail = (home / "server.log").read_text(errors="replace")[-3000:]
        if report.status != 0:
            report.problems.append(f"the server exited with status {report.status} when stopped")
        if not settle(lambda: not still_alive(resident), 5):
            report.problems.append(f"helpers of the server outlived it: {still_alive(resident)}")
        if not settle(lambda: not marked_processes(marker.encode()), 5):
            report.problems.append(f"command processes outlived the server:"
                                   f" {marked_processes(marker.encode())[:5]}")
    return report


def summary(report: Report, stats: Stats) -> int:
    """Print the summary; 1 if anything went wrong, else 0."""
    errors = sum(stats.errors.values())
    elapsed = report.elapsed or float("nan")
    print()
    print(f"## summary: {report.elapsed:.1f} s, {report.clients} clients, seed {report.seed}")
    kinds = ", ".join(f"{k} {stats.by_kind[k]}" for k, _ in MIX)
    print(f"commands: {stats.done} ok ({stats.done / elapsed:.1f}/s): {kinds}")
    print(f"verified: {stats.big_bytes / 1e9:.2f} GB of big outputs,"
          f" {stats.stdin_bytes / 1e9:.2f} GB of stdin round trips;"
          f" connections opened: {stats.connections}")
    print(f"errors: {errors}")
    for key, count in stats.errors.most_common(MAX_ERROR_LINES):
        print(f"  {count:>6} x {stats.examples[key]}")
    if len(stats.errors) > MAX_ERROR_LINES:
        print(f"  ... and {len(stats.errors) - MAX_ERROR_LINES} other kinds of error")
    print(f"true on a persistent connection: {fmt_ms(stats.true_ms)}")
    print(f"true on a fresh connection (connect+auth+run+close): {fmt_ms(stats.fresh_ms)}")
    rss_peak = max([report.rss_start, *stats.rss, report.rss_end])
    fds_peak = max([report.fds_start, *stats.fds, report.fds_end])
    print(f"server RSS: start {report.rss_start / MIB:.1f} MiB, peak {rss_peak / MIB:.1f} MiB"
          f" (sampled each second; VmHWM {report.hwm / MIB:.1f} MiB),"
          f" end {report.rss_end / MIB:.1f} MiB")
    print(f"server fds: start {report.fds_start}, peak {fds_peak} (sampled each second),"
          f" end {report.fds_end}{'' if report.settled else ' (not settled)'}")
    print(f"server stopped (SIGTERM): exit status {report.status}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    failed = bool(errors or report.problems)
    if failed:
        print(f"--- server log (last lines) ---\n{report.log_tail}")
    if report.interrupted:
        print("INTERRUPTED" + (" (and FAILED)" if failed else ""))
        return 130
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0, help="fractions allowed: 0.5")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between lines")
    parser.add_argument("--seed", type=int, default=None, help="of the command mix")
    args = parser.parse_args()
    if args.clients < 1 or args.minutes <= 0 or args.interval <= 0:
        parser.error("--clients, --minutes and --interval must be positive")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"# rexec soak, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()},"
          f" {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"clients: {args.clients}, minutes: {args.minutes:g}, interval: {args.interval:g} s,"
          f" seed: {seed}", flush=True)
    stats = Stats()
    report = run(args, seed, stats)
    return summary(report, stats)


if __name__ == "__main__":
    sys.exit(main())
