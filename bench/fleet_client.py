"""One fan-out contender of bench/suite.py's fleet row, in a cold process of its own.

    python bench/fleet_client.py rexec HOSTS_FILE PORT TOKEN_FILE
    python bench/fleet_client.py rexec-group HOSTS_FILE PORT TOKEN_FILE   # where rexec.Group exists
    python bench/fleet_client.py asyncssh HOSTS_FILE PORT KEY KNOWN_HOSTS
    python bench/fleet_client.py pssh HOSTS_FILE PORT KEY POOL_SIZE
    python bench/fleet_client.py cli HOSTS_FILE PORT TOKEN_FILE lines|json  # `rexec run PATTERN`
    python bench/fleet_client.py rexec-put HOSTS_FILE PORT TOKEN_FILE SRC DST

HOSTS_FILE holds one address a line. Every host is asked to run `hostname` at once (rexec and
asyncssh: one connection each, opened together with asyncio.gather, each authenticating,
running the command and closing; parallel-ssh: its ParallelSSHClient with POOL_SIZE
connections at a time). The output is checked against this machine's host name. Prints one JSON
line: hosts, ok, the first errors, the seconds from the first connect to the last result (the
interpreter's start-up and imports are outside it; the suite times the whole process too) and
the process's peak RSS (VmHWM, KiB) at the end.

``cli`` runs the real CLI, `rexec run -q -f N --inventory INV 'h[1-N]' -- hostname`, with its
default prefixed lines or with --json, over an inventory written for the hosts: its figure is
the CLI's whole process (start-up included) and its peak RSS the CLI's, so the two modes
compare the cost of line output against JSON Lines.

``rexec-put`` is the fleet put row's baseline: one ``rexec.Client.put(SRC, DST, force=True)``
per host under asyncio.gather, each hashing and reading SRC for itself (what a fan-out without
``rexec put PATTERN``'s shared read does).
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


def child_rss_kib() -> int:
    """The peak RSS of the largest child that ended (the CLI), KiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


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


def by_cli(hosts: list[str], port: int, token_file: str, mode: str) -> list[str]:
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="rexec-bench-inv-"))
    inventory = folder / "inventory.toml"
    tables = [f'[defaults]\nport = {port}\ntoken_file = "{token_file}"\nconnect_timeout = 60\n']
    tables += [f'[hosts.h{i}]\naddress = "{host}"\n' for i, host in enumerate(hosts, 1)]
    inventory.write_text("\n".join(tables))
    rexec = Path(sys.executable).with_name("rexec")
    argv = [str(rexec), "run", "-q", "-n", "-f", str(len(hosts)), "--inventory", str(inventory),
            *(["--json"] if mode == "json" else []), f"h[1-{len(hosts)}]", "--", "hostname"]
    done = subprocess.run(argv, capture_output=True, timeout=DEADLINE, check=False)
    lines = done.stdout.splitlines()
    errors = [] if done.returncode == 0 else [f"exit {done.returncode}: {done.stderr[-300:]!r}"]
    if mode == "json":
        good = sum(1 for line in lines if json.loads(line)["stdout"].encode() == EXPECTED)
    else:
        good = sum(1 for line in lines if line.split(b": ", 1)[-1] + b"\n" == EXPECTED)
    errors += [f"{len(hosts) - good} hosts without the expected line"] * (good != len(hosts))
    inventory.unlink()
    folder.rmdir()
    return errors * len(hosts) if errors else []


async def by_rexec_put(hosts: list[str], port: int, token_file: str, src: str,
                      dst: str) -> list[str]:
    import rexec

    token = Path(token_file).read_text().strip()
    size = Path(src).stat().st_size

    async def one(host: str) -> str | None:
        async with rexec.Client(f"{host}:{port}", token=token, connect_timeout=60) as c:
            r = await c.put(src, dst, force=True)
        return None if r.bytes == size and r.changed else f"{host}: {r!r}"

    return await gathered(hosts, one)


def main() -> int:
    kind, hosts_file, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rest = sys.argv[4:]
    hosts = Path(hosts_file).read_text().split()
    preload = {"rexec": "rexec.client.aio", "rexec-group": "rexec.client.aio",
               "rexec-put": "rexec.client.aio",
               "asyncssh": "asyncssh", "pssh": "pssh.clients", "cli": "subprocess"}
    __import__(preload[kind])  # imports are start-up: outside the figure
    started = time.perf_counter()
    errors: list[str]
    runs: dict[str, Callable[[], Any]] = {
        "rexec": lambda: asyncio.run(by_rexec(hosts, port, rest[0])),
        "rexec-group": lambda: asyncio.run(by_rexec_group(hosts, port, rest[0])),
        "asyncssh": lambda: asyncio.run(by_asyncssh(hosts, port, rest[0], rest[1])),
        "pssh": lambda: by_pssh(hosts, port, rest[0], int(rest[1])),
        "cli": lambda: by_cli(hosts, port, rest[0], rest[1]),
        "rexec-put": lambda: asyncio.run(by_rexec_put(hosts, port, *rest[:3])),
    }
    errors = runs[kind]()
    elapsed = time.perf_counter() - started
    print(json.dumps({"hosts": len(hosts), "ok": len(hosts) - len(errors),
                      "errors": errors[:3], "seconds": elapsed,
                      "peak_rss_kib": child_rss_kib() if kind == "cli" else peak_rss_kib()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
