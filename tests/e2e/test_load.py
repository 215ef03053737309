"""Load: 48 clients at once on one server, each streaming megabytes it checks byte for byte.

Every command prints N pseudo-random bytes (1-3 MB) made from a seed by the local Python (the
server is local, so its absolute path works in the remote command line); the test makes the
same bytes from the same seed and compares SHA-256 digests of what arrived with what was sent.
Afterwards the server must be back to its resting state: the file descriptors it had before,
no child process but those it had at rest (its guardian), and a peak resident memory within a
generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import rexec
from tests.helpers import ServerProcess, fd_count, live_children, proc_status, wait_until

CLIENTS = 48
COMMANDS = 5  # per client, one after another on the client's own connection
MIN_SIZE, MAX_SIZE = 1_000_000, 3_000_000
MIB = 1024 * 1024
PEAK_MEMORY_LIMIT = 150 * MIB  # how far above its resting RSS the server may peak
TIME_LIMIT = 120.0  # for the whole load; it takes well under 60 s on 2 cores
SEED = 20240611
PY = shlex.quote(sys.executable)


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


def generate(seed: int, size: int) -> bytes:
    """The bytes the remote command prints for (seed, size): the test makes them again."""
    return random.Random(seed).randbytes(size)


def command_for(seed: int, size: int, tag: str) -> str:
    """A remote command printing generate(seed, size) on stdout and ``tag`` on stderr."""
    script = f"import random,sys; sys.stdout.buffer.write(random.Random({seed}).randbytes({size}))"
    return f"{PY} -I -S -c {shlex.quote(script)} && echo {tag} >&2"


@dataclass
class Job:
    client: int
    number: int
    seed: int
    size: int

    @property
    def tag(self) -> str:
        return f"done-{self.client}-{self.number}"


@dataclass
class Outcome:
    job: Job
    exit_code: int | None
    ok: bool
    stdout_bytes: int
    received: int
    digest: str
    stderr: bytes


def plan(rng: random.Random) -> list[list[Job]]:
    return [[Job(c, n, rng.randrange(2**32), rng.randint(MIN_SIZE, MAX_SIZE))
             for n in range(COMMANDS)] for c in range(CLIENTS)]


async def load(server: ServerProcess, jobs: list[list[Job]]) -> tuple[list[object], int]:
    """Run every client's jobs at once; return each client's outcomes (or exception) and the
    server's fd count sampled while all CLIENTS connections were open together."""
    connected = 0
    everyone_in = asyncio.Event()
    fds_with_all_connected = 0

    async def client(mine: list[Job]) -> list[Outcome]:
        nonlocal connected, fds_with_all_connected
        async with rexec.Client(server.address, token=server.token, connect_timeout=30) as c:
            connected += 1
            if connected == CLIENTS:  # the last one in: every connection is open right now
                fds_with_all_connected = fd_count(server.proc.pid)
                everyone_in.set()
            await everyone_in.wait()
            outcomes = []
            for job in mine:
                digest = hashlib.sha256()
                received = 0
                stderr: list[bytes] = []

                def on_stdout(data: bytes | memoryview, digest=digest) -> None:
                    nonlocal received
                    received += len(data)
                    digest.update(data)

                result = await c.run(command_for(job.seed, job.size, job.tag), capture=False,
                                     on_stdout=on_stdout,
                                     on_stderr=lambda d, s=stderr: s.append(bytes(d)))
                outcomes.append(Outcome(job, result.exit_code, result.ok, result.stdout_bytes,
                                        received, digest.hexdigest(), b"".join(stderr)))
            return outcomes

    async with asyncio.timeout(TIME_LIMIT):
        results = await asyncio.gather(*(client(mine) for mine in jobs), return_exceptions=True)
    return list(results), fds_with_all_connected


@pytest.mark.slow
def test_48_clients_stream_verified_megabytes_and_the_server_returns_to_rest(fresh_server):
    server = fresh_server
    pid = server.proc.pid
    # one command first, so that lazy imports and first-use allocations count in the baseline
    warm = rexec.run(server.address, "echo warm", token=server.token)
    assert warm.stdout == b"warm\n"
    # the server may keep helpers of its own (a guardian process): those are no command's
    assert wait_until(lambda: not any("echo warm" in c for c in live_children(pid)), timeout=5)
    resident = set(live_children(pid))
    fd_baseline = resting_fd_count(pid)
    rss_baseline = proc_status(pid, "VmRSS")
    with contextlib.suppress(OSError):  # VmHWM restarts from the current RSS (Linux 4.0+)
        Path(f"/proc/{pid}/clear_refs").write_text("5")

    jobs = plan(random.Random(SEED))
    started = time.monotonic()
    results, fds_with_all_connected = asyncio.run(load(server, jobs))
    elapsed = time.monotonic() - started

    errors = [f"client {n}: {r!r}" for n, r in enumerate(results) if isinstance(r, BaseException)]
    assert not errors, "\n".join(errors[:10]) + f"\n{server.log()[-3000:]}"
    outcomes = [o for r in results if isinstance(r, list) for o in r]
    assert len(outcomes) == CLIENTS * COMMANDS
    expected = {}
    for o in outcomes:
        key = (o.job.seed, o.job.size)
        if key not in expected:
            expected[key] = hashlib.sha256(generate(*key)).hexdigest()
    bad = [
        f"{o.job.tag}: exit {o.exit_code}, {o.received}/{o.job.size} bytes received"
        f" ({o.stdout_bytes} counted by the server), stderr {o.stderr[-200:]!r}"
        for o in outcomes
        if not o.ok or o.exit_code != 0 or o.received != o.job.size
        or o.stdout_bytes != o.job.size or o.stderr != f"{o.job.tag}\n".encode()
        or o.digest != expected[(o.job.seed, o.job.size)]
    ]
    assert not bad, f"{len(bad)} bad command(s):\n" + "\n".join(bad[:10])
    total = sum(o.received for o in outcomes)
    assert total >= CLIENTS * COMMANDS * MIN_SIZE

    # every connection was open at once: one socket each, at least
    assert fds_with_all_connected >= fd_baseline + CLIENTS, (fds_with_all_connected, fd_baseline)

    # the server logged every command as run, exited 0 and delivered
    logged = [json.loads(line[line.index("{"):]) for line in server.log().splitlines()
              if '"event": "command"' in line]
    runs = [e for e in logged if e.get("command", "").endswith(">&2") and "done-" in e["command"]]
    assert len(runs) == CLIENTS * COMMANDS, len(runs)
    assert all(e["decision"] == "run" and e["exit_code"] == 0 and e["delivered"] for e in runs)

    # back at rest: same fds, no children, memory peak bounded, still serving
    assert wait_until(lambda: fd_count(pid) <= fd_baseline, timeout=10), \
        f"fds: {fd_count(pid)} now, {fd_baseline} before: {sorted(os.listdir(f'/proc/{pid}/fd'))}"
    fd_settled = fd_count(pid)
    assert wait_until(lambda: set(live_children(pid)) <= resident, timeout=10), \
        f"children left: {set(live_children(pid)) - resident}"
    peak = proc_status(pid, "VmHWM") - rss_baseline
    assert peak < PEAK_MEMORY_LIMIT, f"the server's RSS peaked {peak / MIB:.1f} MiB above rest"
    assert server.proc.poll() is None, server.log()[-3000:]
    after = rexec.run(server.address, "echo still here", token=server.token)
    assert after.stdout == b"still here\n"
    print(f"\n{CLIENTS} clients x {COMMANDS} commands, {total / 1e6:.0f} MB verified in"
          f" {elapsed:.1f} s; fds {fd_baseline} -> {fds_with_all_connected} (all connected) ->"
          f" {fd_settled}; RSS peak {peak / MIB:+.1f} MiB over {rss_baseline / MIB:.1f} MiB")
