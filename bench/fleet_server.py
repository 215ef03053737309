"""Many loopback "hosts" served by one process, for bench/suite.py's fleet row.

    python bench/fleet_server.py --port PORT --token-file FILE --config FILE ADDRESS...

rexec-server listens on one --host today; a fleet of 1,000 loopback addresses cannot be 1,000
server processes on a 2-core machine. So this builds what rexec-server builds (the same
settings load, Configuration, guardian and Runner, and gc.freeze as rexec.server.app does) and
starts one rexec Server per address in one event loop, sharing the runner and one ServerState,
as a multi-address rexec-server would. It prints "listening on N addresses" once all are
bound, and stops on SIGTERM or SIGINT (every session ended, the guardian released).

When rexec-server takes several --host, bench/suite.py should start it instead (see
``start_fleet_servers`` there).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from rexec.server.app import ConfigSource
from rexec.server.exec.guardian import Guardian
from rexec.server.exec.runner import Runner
from rexec.server.listener import Server
from rexec.server.reload import Configuration
from rexec.wire.frames import build_all


async def serve(addresses: list[str], port: int, token_file: Path, config: Path) -> int:
    source = ConfigSource.capture(config, host=addresses[0], port=port, token_file=token_file)
    settings, token = source.load()
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    build_all()
    gc.freeze()
    conf = Configuration.build(settings, token, None)
    guardian = Guardian(settings.kill_grace)
    runner = Runner(settings.kill_grace, guardian)
    servers = [Server(conf.identities, host, port, runner=runner,
                      handshake_timeout=settings.handshake_timeout,
                      drain_grace=settings.drain_grace, keepalive=settings.keepalive,
                      limits=conf.limits, audit=conf.audit, child_env=conf.child_env,
                      umask=settings.umask) for host in addresses]
    for server in servers[1:]:  # one server's state (counters, gate, buffers), as one
        server.state = servers[0].state  # rexec-server listening on many addresses keeps
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        for server in servers:
            await server.start()
        print(f"listening on {len(servers)} addresses, port {port}", flush=True)
        await stop.wait()
    finally:
        await asyncio.gather(*(server.close() for server in servers))
        runner.close()
        guardian.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("addresses", nargs="+")
    args = parser.parse_args()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # as rexec.server.app: exit statuses kept
    return asyncio.run(serve(args.addresses, args.port, args.token_file, args.config))


if __name__ == "__main__":
    sys.exit(main())
