"""Starting the server process: settings, token, logging, signals. Used by ``rexec-server``."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys
from pathlib import Path

from rexec.auth import default_token_path, generate_token, write_token_file
from rexec.config import ServerSettings, load_settings, resolve_token
from rexec.server import Server


def server_setup(
    config: Path | None,
    host: str | None = None,
    port: int | None = None,
    token_file: Path | None = None,
    log_level: str | None = None,
) -> tuple[ServerSettings, str]:
    """Merge the settings and find (or generate) the token; ConfigError if they are bad."""
    settings = load_settings(
        ServerSettings, "server", config,
        cli={"host": host, "port": port, "token_file": token_file, "log_level": log_level},
    )
    token = resolve_token(settings)
    if token is None:
        path = default_token_path()
        token = resolve_token(settings, fallback=path)
        if token is None:
            token = generate_token()
            write_token_file(path, token)
            print(f"rexec-server: no token configured; generated one in {path}"
                  " (readable only by you)", file=sys.stderr, flush=True)
        else:
            print(f"rexec-server: no token configured; using the one generated earlier in {path}",
                  file=sys.stderr, flush=True)
    return settings, token


def format_address(host: str, port: int) -> str:
    """host:port, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def run_server(settings: ServerSettings, token: str) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit status."""
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return asyncio.run(_serve(settings, token))


async def _serve(settings: ServerSettings, token: str) -> int:
    from rexec.runner import Runner

    server = Server(token, settings.host, settings.port, Runner(settings.kill_grace),
                    handshake_timeout=settings.handshake_timeout)
    try:
        addresses = await server.start()
    except OSError as exc:
        where = format_address(settings.host, settings.port)
        print(f"rexec-server: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for host, port in addresses:
        print(f"listening on {format_address(host, port)}", flush=True)
        if not _is_loopback(host):
            logging.getLogger("rexec.server").warning(
                "listening on %s without TLS: the token is never sent, but commands and their"
                " output cross the network unencrypted; use a trusted network only", host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logging.getLogger("rexec.server").info('{"event": "shutdown"}')
    await server.close()
    return 0
