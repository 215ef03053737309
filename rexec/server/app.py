"""Starting the server process: settings, token, logging, signals (SIGHUP reloads)."""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rexec.config import load_settings, resolve_token
from rexec.errors import ConfigError
from rexec.server.audit import log_event
from rexec.server.exec.guardian import Guardian
from rexec.server.listener import Server
from rexec.server.reload import Configuration, reload
from rexec.server.settings import ServerSettings
from rexec.tls import server_context
from rexec.tokens import default_token_path, generate_token, write_token_file
from rexec.wire.address import format_address

if TYPE_CHECKING:
    from rexec.discovery.responder import RateLimits, Responder
    from rexec.wire.auth import TokenVerifier

UDP_BIND_ATTEMPTS = 20
"""With port 0, how many times the listener is bound again when the UDP port of the TCP port's
number is taken (by someone else's UDP socket), before giving up."""


@dataclass(frozen=True)
class ConfigSource:
    """Where the settings come from: kept, so that SIGHUP loads them again the same way."""

    config: Path | None
    cli: dict[str, object] = field(default_factory=dict)
    env_token: str | None = None
    """REXEC_TOKEN as the server found it: it removes the variable from its environment, and
    the token stays valid across reloads."""

    @classmethod
    def capture(cls, config: Path | None, **cli: object) -> ConfigSource:
        """The config file and command-line options (``cli``), with REXEC_TOKEN as it is now."""
        return cls(config, cli, os.environ.get("REXEC_TOKEN") or None)

    def load(self) -> tuple[ServerSettings, str | None]:
        """Merge the settings and find or generate the token.

        With no token configured, a token is generated, unless the config names identities:
        then they alone can log in.
        """
        environ = {"REXEC_TOKEN": self.env_token} if self.env_token else {}
        settings = load_settings(ServerSettings, "server", self.config, cli=self.cli,
                                 environ=environ)
        forget_token_variable()
        token = resolve_token(settings)
        if token is None and not settings.identities:
            token = _generated_token(settings)
        return settings, token


def _generated_token(settings: ServerSettings) -> str:
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
    return token


def forget_token_variable() -> None:
    """Remove REXEC_TOKEN from this process's environment once the settings have it.

    Commands never inherit the server's environment, but a process's environment stays
    readable in /proc/PID/environ, which shows the block the process started with whatever
    the C library's environ says now: that block is overwritten too (best effort).
    """
    if os.environ.pop("REXEC_TOKEN", None) is None:
        return
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end: see proc(5)
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            block = mem.read(end - start)
            offset = 0
            for entry in block.split(b"\0"):
                if entry.startswith(b"REXEC_TOKEN="):
                    mem.seek(start + offset)
                    mem.write(b"\0" * len(entry))
                offset += len(entry) + 1
    except (OSError, ValueError, IndexError):
        pass


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _plaintext_refused(addresses: list[tuple[str, int]], settings: ServerSettings,
                       tls: ssl.SSLContext | None) -> bool:
    """Refuse (say why, return True) or warn about plaintext off loopback."""
    exposed = [host for host, _ in addresses if not _is_loopback(host)]
    if not exposed or tls is not None:
        return False
    if not settings.dangerously_allow_plaintext:
        print(f"rexec-server: refusing to listen on {', '.join(exposed)} without TLS: anyone"
              " on the network could read and alter commands and output. Give --tls-cert and"
              " --tls-key, or listen on 127.0.0.1; on a network you fully trust,"
              " --dangerously-allow-plaintext overrides this.", file=sys.stderr)
        return True
    logging.getLogger("rexec.server").warning(
        "DANGER: listening on %s WITHOUT TLS (--dangerously-allow-plaintext): commands and"
        " their output cross the network unencrypted and can be altered in transit",
        ", ".join(exposed))
    return False


def discovery_limits(settings: ServerSettings) -> RateLimits:
    """The responder's token buckets, from the settings."""
    from rexec.discovery.responder import RateLimits

    return RateLimits(per_source_rate=settings.discovery_rate,
                      per_source_burst=settings.discovery_burst,
                      global_rate=settings.discovery_global_rate,
                      global_burst=settings.discovery_global_burst)


async def answer_probes(
    server: Server, settings: ServerSettings, tls: bool, addresses: list[tuple[str, int]],
) -> tuple[Responder, list[tuple[str, int]]]:
    """A UDP responder on each address the listener bound, on the same port numbers; and the
    addresses, new ones if port 0 had to be bound again (OSError when a port is taken)."""
    from rexec._version import __version__
    from rexec.discovery.responder import Responder, Status
    from rexec.wire.frames import PROTOCOL_VERSION

    started = time.monotonic()
    name = settings.name or socket.gethostname()

    def status() -> Status:
        return Status(name=name, version=__version__, uptime=time.monotonic() - started,
                      running=server.running_commands, load=os.getloadavg())

    def keys(identity: str) -> tuple[bytes, TokenVerifier | None]:
        return server.state.identities.discovery_key(identity)  # as the last reload left them

    responder = Responder(status=status, keys=keys, protocol=PROTOCOL_VERSION, tls=tls,
                          limits=discovery_limits(settings))
    for attempt in range(UDP_BIND_ATTEMPTS):
        try:
            for host, port in addresses:
                await responder.listen(host, port)
        except OSError as exc:
            responder.close()
            if exc.errno != errno.EADDRINUSE or settings.port != 0 \
                    or attempt == UDP_BIND_ATTEMPTS - 1:
                raise OSError(exc.errno, f"{exc.strerror} (UDP, for discovery; discovery ="
                                         " false turns it off)") from None
            addresses = await server.rebind()  # another free TCP port, maybe free in UDP too
        else:
            break
    return responder, addresses


def run_server(
    settings: ServerSettings, token: str | None, tls: ssl.SSLContext | None = None,
    source: ConfigSource | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, reloading on SIGHUP; return the process exit status.

    ``source`` is where ``settings`` came from; without it, SIGHUP reloads nothing (logged).
    """
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # What the format does not show is not gathered for each line (the logging HOWTO's
    # "Optimization"): the caller's frame, the thread and process names. A deploy of 100
    # hosts logs a line for each host and step; this is about a third of each line's cost.
    logging._srcfile = None  # the documented switch that skips findCaller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # An ignored SIGCHLD, inherited from whatever started the server, has the kernel reap its
    # children at once: every exit status would read 0, and an exited leader could not be kept
    # to hold its group's ID (rexec.server.exec.child.ChildProcess).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return asyncio.run(_serve(settings, token, tls, source))


def tls_setup(settings: ServerSettings) -> ssl.SSLContext | None:
    """The server's TLS context, if the settings turn TLS on (ConfigError on bad files)."""
    if settings.tls == "auto":
        from rexec.pki import auto_certificate  # cryptography: only for --tls auto

        auto = auto_certificate(settings.hosts)
        print(f"rexec-server: {auto.describe()}", file=sys.stderr, flush=True)
        return server_context(auto.cert, auto.key, settings.tls_client_ca)
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


async def _listen(server: Server, settings: ServerSettings,
                  tls: bool) -> tuple[list[tuple[str, int]], Responder | None]:
    """Bind the TCP listener, and the UDP responder unless discovery is off."""
    addresses = await server.start()
    if not settings.discovery:
        return addresses, None
    responder, addresses = await answer_probes(server, settings, tls, addresses)
    log_event(logging.INFO, "discovery", udp=[format_address(h, p) for h, p in addresses])
    return addresses, responder


@dataclass(eq=False)
class _Running:
    """What the signal handlers change: the configuration (SIGHUP), the stop (SIGTERM/INT)."""

    server: Server
    config: Configuration
    source: ConfigSource | None
    responder: Responder | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)

    def on_hangup(self) -> None:  # on the event loop, as the others: between two callbacks
        if self.stop.is_set():
            log_event(logging.WARNING, "reload_failed", reason="the server is shutting down")
        elif self.source is None:
            log_event(logging.WARNING, "reload_failed", reason="started without a settings"
                      " source: nothing to reload from")
        else:
            self.config = reload(self.server, self.config, self.source.load, tls_setup)
            if self.responder is not None:
                self.responder.limits = discovery_limits(self.config.settings)

    def on_signal(self) -> None:  # runs on the event loop, not in a signal handler
        if not self.stop.is_set():
            self.stop.set()
        elif not self.hurry.is_set():
            log_event(logging.INFO, "shutdown_hurried", running=self.server.running_commands)
            self.hurry.set()


def _stop_answering(responder: Responder | None, *, quiet: bool = False) -> None:
    """Close the UDP sockets; log what they answered and dropped (``discovery_stopped``)."""
    if responder is None:
        return
    responder.close()
    if not quiet:
        log_event(logging.INFO, "discovery_stopped", **responder.counters)


async def _serve(
    settings: ServerSettings, token: str | None, tls: ssl.SSLContext | None,
    source: ConfigSource | None,
) -> int:
    from rexec.server.exec.runner import Runner
    from rexec.wire.frames import build_all

    build_all()
    # What start-up made (modules, pydantic schemas) lives as long as the server: out of the
    # collector's sight, a fan-out's full collections no longer walk it (about 10% of the
    # server's CPU for 500 connections at once, docs/benchmarks.md)
    gc.freeze()
    try:
        config = Configuration.build(settings, token, tls)  # fail closed: no audit log, no server
    except ConfigError as exc:
        print(f"rexec-server: {exc}", file=sys.stderr)
        return 2
    guardian = Guardian(settings.kill_grace) if sys.platform == "linux" else None
    server = Server(config.identities, settings.host, settings.port,
                    runner=Runner(settings.kill_grace, guardian),
                    handshake_timeout=settings.handshake_timeout,
                    drain_grace=settings.drain_grace, keepalive=settings.keepalive,
                    splice=settings.splice,
                    tls=tls, limits=config.limits, audit=config.audit,
                    child_env=config.child_env, umask=settings.umask)
    running = _Running(server, config, source)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, running.on_hangup)  # before the first "listening on"
    try:
        addresses, running.responder = await _listen(server, settings, tls is not None)
    except OSError as exc:
        await server.close()
        if guardian is not None:
            guardian.close()
        config.audit.close()
        where = ", ".join(format_address(host, settings.port) for host in settings.hosts)
        print(f"rexec-server: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if _plaintext_refused(addresses, settings, tls):
        _stop_answering(running.responder, quiet=True)
        await server.close()
        if guardian is not None:
            guardian.close()
        return 2
    # Before "listening on": a supervisor that stops the server as soon as it says it listens
    # gets the graceful shutdown, not the default action of SIGTERM (exit -15).
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, running.on_signal)
    for host, port in addresses:
        print(f"listening on {format_address(host, port)}", flush=True)
    await running.stop.wait()
    _stop_answering(running.responder)
    grace = running.config.settings.shutdown_grace  # as the last reload left it
    log_event(logging.INFO, "shutdown", running=server.running_commands, grace=grace)
    await server.shutdown(grace, running.hurry)
    if guardian is not None:
        guardian.close()
    log_event(logging.INFO, "stopped")
    return 0
