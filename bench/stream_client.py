"""One Python-API contender of bench/suite.py's streaming row, in a process of its own.

    python bench/stream_client.py asyncssh HOST PORT USER KEY KNOWN_HOSTS SIZE
    python bench/stream_client.py rexec ADDRESS CA_OR_- SIZE      # token: $REXEC_HOME/token

Connects (asyncssh with its defaults, as users get them; rexec.BlockingClient, over TLS when a
CA file is given), runs `head -c SIZE /dev/zero`, discards its stdout as it arrives (asyncssh:
reads of 1 MiB; rexec: capture=False with an on_stdout callback that counts), and prints one JSON
line: bytes received, exit status, seconds to connect and seconds from connected to the end of
the stream. The interpreter's start-up and the imports are outside both figures; the suite also
times the whole process, as it does the CLIs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


async def by_asyncssh(host: str, port: int, user: str, key: str, known_hosts: str,  # noqa: PLR0917
                      size: int) -> dict[str, Any]:
    import asyncssh

    started = time.perf_counter()
    async with asyncssh.connect(host, port=port, username=user, client_keys=[key],
                                known_hosts=known_hosts, config=None, agent_path=None) as conn:
        connected = time.perf_counter()
        received = 0
        async with conn.create_process(f"head -c {size} /dev/zero", encoding=None) as proc:
            proc.stdin.write_eof()
            while data := await proc.stdout.read(1 << 20):
                received += len(data)
            await proc.wait()
            status = proc.exit_status
    done = time.perf_counter()
    return {"bytes": received, "exit_status": status, "connect": connected - started,
            "stream": done - connected}


def by_rexec(address: str, ca: str, size: int) -> dict[str, Any]:
    import rexec

    received = 0

    def count(data: bytes | memoryview) -> None:
        nonlocal received
        received += len(data)

    started = time.perf_counter()
    with rexec.BlockingClient(address, tls_ca=None if ca == "-" else ca,
                              connect_timeout=60) as client:
        connected = time.perf_counter()
        result = client.run(f"head -c {size} /dev/zero", capture=False, on_stdout=count,
                            timeout=600)
    done = time.perf_counter()
    return {"bytes": received, "exit_status": result.exit_code, "connect": connected - started,
            "stream": done - connected}


def main() -> int:
    kind, *args = sys.argv[1:]
    if kind == "asyncssh":
        host, port, user, key, known_hosts, size = args
        result = asyncio.run(asyncio.wait_for(
            by_asyncssh(host, int(port), user, key, known_hosts, int(size)), timeout=600))
    elif kind == "rexec":
        address, ca, size = args
        result = by_rexec(address, ca, int(size))
    else:
        raise SystemExit(f"unknown contender {kind!r}: asyncssh or rexec")
    print(json.dumps(result))
    return 0 if result["exit_status"] == 0 and result["bytes"] == int(size) else 1


if __name__ == "__main__":
    sys.exit(main())
