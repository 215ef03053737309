"""asyncssh's SFTP for bench/suite.py's file transfer row (9), in a cold process of its own.

    python bench/transfer_client.py put HOST PORT USER KEY KNOWN_HOSTS LOCAL REMOTE
    python bench/transfer_client.py get HOST PORT USER KEY KNOWN_HOSTS REMOTE LOCAL

Connects (the host key checked against KNOWN_HOSTS), opens an SFTP session and copies one file
with asyncssh's own defaults (``SFTPClient.put``/``get``: its block size and parallel requests).
Prints one JSON line: the bytes of the destination, the seconds from connected to copied, and
the seconds the connection took. Exits 1 with the error on a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


async def copy(direction: str, host: str, port: int, user: str, key: str,  # noqa: PLR0917
               known_hosts: str, source: str, destination: str) -> dict[str, float]:
    import asyncssh

    started = time.perf_counter()
    async with asyncssh.connect(host, port, username=user, client_keys=[key],
                                known_hosts=known_hosts, config=None, agent_path=None,
                                connect_timeout=60) as conn:
        connected = time.perf_counter()
        async with conn.start_sftp_client() as sftp:
            if direction == "put":
                await sftp.put(source, destination)
                size = (await sftp.stat(destination)).size or 0
            else:
                await sftp.get(source, destination)
                size = os.stat(destination).st_size
        done = time.perf_counter()
    return {"bytes": size, "seconds": done - connected, "connect": connected - started}


def main(args: list[str]) -> int:
    if len(args) != 8 or args[0] not in ("put", "get"):
        print(__doc__, file=sys.stderr)
        return 2
    direction, host, port, user, key, known_hosts, source, destination = args
    try:
        got = asyncio.run(copy(direction, host, int(port), user, key, known_hosts, source,
                               destination))
    except Exception as exc:  # one line for the suite's error column
        print(f"transfer_client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(got))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
