"""A child writing faster than the client reads is slowed by its pipe, not buffered in memory."""

from __future__ import annotations

import time
from pathlib import Path

import rexec


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_server_memory_stays_flat_while_the_client_does_not_read(fresh_server):
    pid = fresh_server.proc.pid
    samples: list[int] = []
    received = 0
    with rexec.BlockingClient(fresh_server.address, token=fresh_server.token) as c:
        baseline = rss_kib(pid)

        def slow_reader(data) -> None:
            nonlocal received
            received += len(data)
            if not samples:
                # stop reading for 3 s while `yes` could produce gigabytes
                for _ in range(6):
                    time.sleep(0.5)
                    samples.append(rss_kib(pid))
                c.request_cancel()

        r = c.run("yes", on_stdout=slow_reader, capture=False)
    assert not r.ok  # cancelled
    assert r.stdout_bytes == received  # every byte the server read reached the client
    assert max(samples) - baseline < 32 * 1024, (baseline, samples)
