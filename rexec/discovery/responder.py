"""The server's UDP responder: one socket per listening address, rate limits, replay window.

``Responder.handle`` is the whole decision, sans-I/O (a datagram and its source in, the reply's
bytes or None out); ``Responder.listen`` binds a socket and runs it on the event loop. The
responder knows no sessions and no server: it is handed a ``status()`` callable for what an
authenticated reply tells, and a ``keys(identity)`` callable for an identity's salt and token
verifier (a decoy salt and None for an identity that does not exist, or has no token).

In order, a datagram is:
1. counted against its source's token bucket, then against the global one (a source that
   floods spends only its own tokens, so it does not starve the others);
2. parsed (empty, oversize, truncated, not JSON, wrong version, invalid: dropped);
3. if it carries a proof, checked: a known identity's valid proof, a timestamp within
   CLOCK_WINDOW, a nonce not seen in that window. A probe that fails any of them is answered
   as an unauthenticated one (that reply is what anyone gets anyway) and counted;
4. answered only if the reply is no larger than the probe (``fit_reply``).
Nothing is ever sent for a datagram that is dropped, and no reply is larger than its probe.
Drops are counted by reason and logged at most once per ``log_interval``, as a summary.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from rexec.discovery.datagrams import (
    CLOCK_WINDOW,
    RECEIVE_BUFFER,
    DatagramError,
    Probe,
    Reply,
    check_probe,
    fit_reply,
    parse_probe,
    sign_reply,
)
from rexec.wire.auth import TokenVerifier

log = logging.getLogger("rexec.server.discovery")

MAX_NONCES = 100_000
"""Authenticated probes' nonces remembered at most (each for 2 x CLOCK_WINDOW): a full table
answers new authenticated probes as unauthenticated ones until it drains (``nonces_full``)."""
LOG_INTERVAL = 10.0
READ_BATCH = 64
"""Datagrams read at most per wake-up of the event loop (then the other work gets its turn)."""
SOCKET_BUFFER = 4 << 20
"""Bytes of datagrams the kernel may hold for a responder's socket (about 3,000 probes)."""


@dataclass(frozen=True)
class Status:
    """What an authenticated reply says of the server."""

    name: str
    version: str
    uptime: float
    running: int
    load: tuple[float, float, float]


@dataclass(frozen=True)
class RateLimits:
    """Token buckets: a source's, and the responder's for all sources together (per second,
    and the burst a full bucket allows)."""

    per_source_rate: float = 50.0
    per_source_burst: float = 100.0
    global_rate: float = 2000.0
    global_burst: float = 4000.0
    max_sources: int = 10_000
    """Sources tracked at most: beyond, the buckets that are full again are forgotten first,
    then the oldest (a spoofed-source flood cannot grow the table without bound)."""


@dataclass
class _Bucket:
    tokens: float
    stamp: float

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


Keys = Callable[[str], tuple[bytes, TokenVerifier | None]]


@dataclass(eq=False)
class Responder:
    """Answers probes for one server, on every address it listens on."""

    status: Callable[[], Status]
    keys: Keys
    protocol: int
    tls: bool
    limits: RateLimits = field(default_factory=RateLimits)
    log_interval: float = LOG_INTERVAL
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    counters: Counter[str] = field(default_factory=Counter)
    """Every datagram counted once: "answered" (and "authenticated" of those), or the reason
    it was dropped; "replayed", "bad_proof", "stale" and "nonces_full" count probes answered
    as unauthenticated ones; "send_failed", replies the kernel refused."""
    _sources: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _global: _Bucket | None = None
    _nonces: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)
    _unlogged: Counter[str] = field(default_factory=Counter)
    _last_log: float = float("-inf")
    _flush: asyncio.TimerHandle | None = None
    _sockets: list[socket.socket] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _buffer: bytearray = field(default_factory=lambda: bytearray(RECEIVE_BUFFER))

    # -- the decision (sans-I/O) ---------------------------------------------------------------

    def handle(self, data: bytes, source: str, port: int) -> bytes | None:
        """The reply to send to ``source`` for ``data`` received on ``port``, or None."""
        now = self.monotonic()
        refused = self._rate_limited(source, now)
        if refused is not None:
            self._drop(refused, now)
            return None
        try:
            probe = parse_probe(data)
        except DatagramError as exc:
            self._drop(exc.reason, now)
            return None
        reply = Reply(nonce=probe.nonce, protocol=self.protocol, port=port, tls=self.tls)
        if probe.identity is not None:
            salt, verifier = self.keys(probe.identity)
            if probe.proof is not None:
                verdict = self._verdict(probe, verifier, now)
                if verdict is None:
                    assert verifier is not None
                    return self._answer(self._rich(reply, probe, verifier), len(data), now,
                                        authenticated=True)
                self.counters[verdict] += 1
                self._unlogged[verdict] += 1
            reply = reply.model_copy(update={"salt": salt.hex()})
        return self._answer(reply, len(data), now)

    def _rate_limited(self, source: str, now: float) -> str | None:
        limits = self.limits
        key = _source_key(source)
        bucket = self._sources.get(key)
        if bucket is None:
            if len(self._sources) >= limits.max_sources:
                self._forget_sources(now)
            bucket = self._sources[key] = _Bucket(limits.per_source_burst, now)
        else:
            self._sources.move_to_end(key)
        if not bucket.take(now, limits.per_source_rate, limits.per_source_burst):
            return "rate_limited_source"
        if self._global is None:
            self._global = _Bucket(limits.global_burst, now)
        if not self._global.take(now, limits.global_rate, limits.global_burst):
            return "rate_limited_global"
        return None

    def _forget_sources(self, now: float) -> None:
        limits = self.limits
        refill = limits.per_source_burst / limits.per_source_rate if limits.per_source_rate else 0
        for key in [k for k, b in self._sources.items() if now - b.stamp >= refill]:
            del self._sources[key]  # full again: forgetting it changes nothing
        while len(self._sources) >= limits.max_sources:
            self._sources.popitem(last=False)  # least recently heard from

    def _verdict(self, probe: Probe, verifier: TokenVerifier | None, now: float) -> str | None:
        """None for an authenticated probe, else why it is not one."""
        if verifier is None or not check_probe(probe, verifier):
            return "bad_proof"
        assert probe.ts is not None and probe.identity is not None
        if abs(self.wall() - probe.ts / 1000) > CLOCK_WINDOW:
            return "stale"
        while self._nonces and next(iter(self._nonces.values())) <= now:
            self._nonces.popitem(last=False)
        key = (probe.identity, probe.nonce)
        if key in self._nonces:
            return "replayed"
        if len(self._nonces) >= MAX_NONCES:
            return "nonces_full"
        self._nonces[key] = now + 2 * CLOCK_WINDOW  # outlives the timestamp's window
        return None

    def _rich(self, reply: Reply, probe: Probe, verifier: TokenVerifier) -> Reply:
        status = self.status()
        rich = reply.model_copy(update={
            "auth": True, "name": status.name[:64], "version": status.version[:64],
            "uptime": round(status.uptime, 3), "running": status.running,
            "load": tuple(round(x, 2) for x in status.load)})
        return sign_reply(rich, probe, verifier)

    def _answer(self, reply: Reply, probe_size: int, now: float, *,
                authenticated: bool = False) -> bytes | None:
        data = fit_reply(reply, probe_size)
        if data is None:
            self._drop("too_small", now)
            return None
        self.counters["answered"] += 1
        if authenticated:
            self.counters["authenticated"] += 1
        return data

    def _drop(self, reason: str, now: float) -> None:
        self.counters[reason] += 1
        self._unlogged[reason] += 1
        if now - self._last_log >= self.log_interval:
            self.log_drops(now)
        elif self._flush is None and self._sockets:  # on the loop: log the rest later
            self._flush = asyncio.get_running_loop().call_later(
                self._last_log + self.log_interval - now, self._flush_later)

    def _flush_later(self) -> None:
        self._flush = None
        self.log_drops(self.monotonic())

    def log_drops(self, now: float | None = None) -> None:
        """Log what was dropped (or answered as unauthenticated) since the last such line."""
        now = self.monotonic() if now is None else now
        if self._unlogged:
            reasons = ", ".join(f"{reason} {count}" for reason, count
                                in sorted(self._unlogged.items()))
            log.warning("event=discovery_dropped count=%d reasons=%r",
                        sum(self._unlogged.values()), reasons)
            self._unlogged.clear()
        self._last_log = now

    # -- sockets -------------------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> None:
        """Answer on UDP ``host``:``port`` (a numeric address, as the TCP listener bound it);
        OSError if the port is taken."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        _grow_receive_buffer(sock)
        # The socket is read by hand, not through an asyncio transport: up to READ_BATCH
        # datagrams a wake-up, into one buffer, so a flood costs a recvfrom each, not an
        # event-loop turn each (in make bench-ping, 14 us of CPU a dropped datagram, not 74).
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable, sock, port)
        self._sockets.append(sock)

    def _readable(self, sock: socket.socket, port: int) -> None:
        buffer, view = self._buffer, memoryview(self._buffer)
        for _ in range(READ_BATCH):
            try:
                size, addr = sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an earlier reply's ICMP error (port unreachable...)
                self.counters["send_failed"] += 1
                continue
            host, source_port = str(addr[0]), int(addr[1])
            if source_port == 0:  # nowhere to answer: a forged source
                self.counters["invalid_source"] += 1
                continue
            reply = self.handle(bytes(view[:size]), host, port)
            if reply is not None:
                try:
                    sock.sendto(reply, addr)
                except OSError:  # the send buffer is full, or the route gone: UDP may lose it
                    self.counters["send_failed"] += 1

    def close(self) -> None:
        """Close every socket, and log the drops not logged yet."""
        for sock in self._sockets:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self.log_drops()

    def summary(self) -> str:
        """The counters as one line, for the shutdown log."""
        return ", ".join(f"{key} {value}" for key, value in sorted(self.counters.items()))


def _grow_receive_buffer(sock: socket.socket) -> None:
    """Room for SOCKET_BUFFER bytes of datagrams waiting: a flood's burst while the process is
    not on a core then overflows later, if at all, and another source's probe is not lost in
    it. As root past net.core.rmem_max (SO_RCVBUFFORCE); otherwise up to it."""
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            return
        except OSError:  # not permitted: the next way
            continue


def _source_key(source: str) -> str:
    """What a source is limited as: its IPv4 address, or its IPv6 /64 (one host's share)."""
    if ":" not in source:
        return source
    try:
        network = ipaddress.IPv6Network((source.partition("%")[0], 64), strict=False)
    except ValueError:
        return source
    mapped = ipaddress.IPv6Address(source.partition("%")[0]).ipv4_mapped
    return str(mapped) if mapped is not None else str(network)
