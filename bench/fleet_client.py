"""One fan-out contender of bench/suite.py's fleet row, in a cold process of its own.

    python bench/fleet_client.py rexec HOSTS_FILE PORT TOKEN_FILE
    python bench/fleet_client.py rexec-group HOSTS_FILE PORT TOKEN_FILE   # where rexec.Group exists
    python bench/fleet_client.py asyncssh HOSTS_FILE PORT KEY KNOWN_HOSTS
    python bench/fleet_client.py pssh HOSTS_FILE PORT KEY POOL_SIZE

HOSTS_FILE holds one address a line. Every host is asked to run `hostname` at once (rexec and
asyncssh: one connection each, opened together with asyncio.gather, each authenticating,
running the command and closing; parallel-ssh: its ParallelSSHClient with POOL_SIZE
connections at a time). The output is checked against this machine's host name. Prints one JSON
line: hosts, ok, the first errors, the seconds from the first connect to the last result (the
interpreter's start-up and imports are outside it; the suite times the whole process too) and
the process's peak RSS (VmHWM, KiB) at the end.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

EXPECTED = (socket.gethostname() + "\n").encode()
DEADLINE = 240.0  # seconds the whole fan-out may take


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def gathered(hosts: list[str], one: Callable[[str], Awaitable[str | None]]
                   ) -> list[str]:
    """``one(host)`` for every host at once; the errors."""
    async with asyncio.timeout(DEADLINE):
        results = await asyncio.gather(*(one(h) for h in hosts), return_exceptions=True)
    return [f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else r
            for r in results if r is not None]


async def by_rexec(hosts: list[str], port: int, token_file: str) -> list[str]:
    import rexec

    token = Path(token_file).read_text().strip()

    async def one(host: str) -> str | None:
        async with rexec.Client(f"{host}:{port}", token=token, connect_timeout=60) as c:
            r = await c.run("hostname")
        return None if r.exit_code == 0 and r.stdout == EXPECTED else f"{host}: {r!r}"

    return await gathered(hosts, one)


async def by_rexec_group(hosts: list[str], port: int, token_file: str) -> list[str]:
    """rexec's fleet API: one Group of every host, forks = the host count (rexec.Client's
    concurrency here)."""
    import rexec
    from rexec.client.options import ConnectOptions

    token = Path(token_file).read_text().strip()
    targets = [rexec.Target(host, ConnectOptions.resolve(  # type: ignore[attr-defined]
        f"{host}:{port}", token=token, connect_timeout=60)) for host in hosts]
    group = rexec.Group(targets, forks=len(targets))  # type: ignore[attr-defined]
    results = await group.run("hostname")
    errors = [f"{host}: unreachable: {why}" for host, why in results.unreachable.items()]
    return errors + [f"{host}: {r!r}" for host, r in results.items()
                     if r.exit_code != 0 or r.stdout != EXPECTED]


async def by_asyncssh(hosts: list[str], port: int, key: str, known_hosts: str) -> list[str]:
    import asyncssh

    client_key = asyncssh.read_private_key(key)
    trusted = asyncssh.import_known_hosts(Path(known_hosts).read_text())

    async def one(host: str) -> str | None:
        async with asyncssh.connect(host, port, username="root", client_keys=[client_key],
                                    known_hosts=trusted, config=None, agent_path=None,
                                    connect_timeout=60) as conn:
            r = await conn.run("hostname", encoding=None)
        return (None if r.exit_status == 0 and r.stdout == EXPECTED
                else f"{host}: exit {r.exit_status} {r.stdout!r} {r.stderr!r}")

    return await gathered(hosts, one)


def by_pssh(hosts: list[str], port: int, key: str, pool_size: int) -> list[str]:
    from pssh.clients import ParallelSSHClient

    # parallel-ssh (ssh2-python) checks no host key: it is given none to check.
    client = ParallelSSHClient(hosts, user="root", port=port, pkey=key, pool_size=pool_size,
                               num_retries=1, timeout=60)
    output = client.run_command("hostname", stop_on_errors=False)
    client.join(output, timeout=DEADLINE)
    errors = []
    for host_out in output:
        if host_out.exception is not None:
            errors.append(f"{host_out.host}: {type(host_out.exception).__name__}:"
                          f" {host_out.exception}")
            continue
        stdout = "".join(line + "\n" for line in host_out.stdout)
        # exit_code may read None after join() (upstream issue #424): the output decides
        if stdout.encode() != EXPECTED or host_out.exit_code not in (0, None):
            errors.append(f"{host_out.host}: exit {host_out.exit_code} {stdout!r}")
    return errors


def main() -> int:
    kind, hosts_file, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rest = sys.argv[4:]
    hosts = Path(hosts_file).read_text().split()
    preload = {"rexec": "rexec.client.aio", "rexec-group": "rexec.client.aio",
               "asyncssh": "asyncssh", "pssh": "pssh.clients"}
    __import__(preload[kind])  # imports are start-up: outside the figure
    started = time.perf_counter()
    errors: list[str]
    runs: dict[str, Callable[[], Any]] = {
        "rexec": lambda: asyncio.run(by_rexec(hosts, port, rest[0])),
        "rexec-group": lambda: asyncio.run(by_rexec_group(hosts, port, rest[0])),
        "asyncssh": lambda: asyncio.run(by_asyncssh(hosts, port, rest[0], rest[1])),
        "pssh": lambda: by_pssh(hosts, port, rest[0], int(rest[1])),
    }
    errors = runs[kind]()
    elapsed = time.perf_counter() - started
    print(json.dumps({"hosts": len(hosts), "ok": len(hosts) - len(errors),
                      "errors": errors[:3], "seconds": elapsed,
                      "peak_rss_kib": peak_rss_kib()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
