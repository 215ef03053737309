"""Ping and discover rexec servers over UDP: the client side of the datagram protocol.

A ``Pinger`` owns one UDP socket per address family, shared by every host it probes, and one
reader per socket that reads each datagram whole (``RECEIVE_BUFFER``, larger than any datagram:
Linux cuts a datagram silently to the buffer it is read into) and hands a reply to the probe
whose nonce it carries. A reply whose nonce it did not send is ignored and counted (``stray``;
``late`` when its probe's wait had ended). Probes to all hosts share one pacer, a bounded
global rate, so a thousand hosts are not probed in one burst.

With a token, a host's first probe names the identity (``default`` unless another is given)
and its reply gives the salt; the later probes are authenticated (a fresh nonce and clock each)
and an authenticated reply counts as such only if its server proof checks: one that does not
is taken for unauthenticated, its rich fields dropped, and counted as ``forged``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rexec.discovery.datagrams import (
    RECEIVE_BUFFER,
    DatagramError,
    Probe,
    Reply,
    authenticated_probe,
    encode_probe,
    new_nonce,
    parse_reply,
    reply_is_genuine,
)

DEFAULT_INTERVAL = 1.0
"""Seconds between two probes to one host (``rexec ping -i``)."""
DEFAULT_TIMEOUT = 1.0
"""Seconds a probe waits for its reply (``rexec ping -W``)."""
DEFAULT_RATE = 1000.0
"""Probes a second, to all hosts together."""
DISCOVER_TIMEOUT = 2.0
DISCOVER_ROUNDS = 3
DEFAULT_IDENTITY = "default"
"""The identity a probe names when a token is given without one (as the TCP handshake)."""
_EXPIRED_KEPT = 4096  # nonces whose wait ended, remembered to tell a late reply from a stray
_ASYNC_ERRORS = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
_RICH = {"auth": False, "name": None, "version": None, "uptime": None, "running": None,
         "load": None, "proof": None}

SockAddr = tuple[Any, ...]
"""(host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6."""
SocketFactory = Callable[[int], socket.socket]


@dataclass(frozen=True, slots=True)
class PingTarget:
    """One host to probe: the name the user knows it by, where it is, and its credentials."""

    name: str
    host: str
    port: int
    token: str | None = field(default=None, repr=False)
    identity: str | None = None

    @property
    def probe_identity(self) -> str | None:
        """The identity its probes name: None without a token (a salt would be of no use)."""
        return None if self.token is None else self.identity or DEFAULT_IDENTITY


@dataclass(slots=True)
class HostResult:
    """What one host's probes came to. ``authenticated`` and ``reply`` are the last reply's."""

    target: PingTarget
    address: str | None = None  # the IP address probed, once resolved
    sent: int = 0
    received: int = 0
    rtt_min: float | None = None  # milliseconds
    rtt_max: float | None = None
    rtt_sum: float = 0.0
    authenticated: bool = False
    reply: Reply | None = None
    forged: int = 0  # replies that said auth=True and failed their proof
    error: str | None = None
    unresolved: bool = False  # the host name did not resolve (error says why)

    @property
    def loss(self) -> float:
        """Per cent of the probes sent that got no reply (0 when none was sent)."""
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    @property
    def rtt_avg(self) -> float | None:
        """The mean round-trip time in ms, None without a reply."""
        return self.rtt_sum / self.received if self.received else None

    def add(self, rtt: float, reply: Reply, authenticated: bool) -> None:
        """Count one reply."""
        self.received += 1
        self.rtt_sum += rtt
        self.rtt_min = rtt if self.rtt_min is None else min(self.rtt_min, rtt)
        self.rtt_max = rtt if self.rtt_max is None else max(self.rtt_max, rtt)
        self.reply, self.authenticated = reply, authenticated


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """One counted probe's end: its reply (``rtt`` in ms), or none (timed out, or not sent)."""

    host: HostResult
    seq: int
    rtt: float | None = None
    reply: Reply | None = None
    authenticated: bool = False
    forged: bool = False
    error: str | None = None  # the probe could not be sent


@dataclass(slots=True)
class Server:
    """One server that answered a discovery: where, what it said, and whether it proved it."""

    address: str
    port: int
    reply: Reply
    rtt: float
    target: str  # the name of what was probed (an address, a host, a broadcast address)
    authenticated: bool = False
    forged: bool = False


@dataclass(slots=True)
class Discovery:
    """What a discovery found: the servers, in the order they answered, and the targets that
    could not be probed (name -> why)."""

    servers: list[Server] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    probed: int = 0  # targets resolved and probed (broadcast addresses included)


@dataclass(frozen=True, slots=True)
class _Answer:
    probe: Probe
    reply: Reply
    rtt: float
    source: SockAddr


@dataclass(slots=True)
class _Pending:
    probe: Probe
    deliver: Callable[[_Answer], None]
    many: bool  # a broadcast probe: every server's reply is delivered, until it is forgotten
    sent_at: float = 0.0


class _Pacer:
    """The global rate: each probe takes the next free slot, ``1/rate`` after the last one."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"the probe rate must be above 0, not {rate}")
        self.gap = 1.0 / rate
        self.next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.gap
        if slot > now:
            await asyncio.sleep(slot - now)


class _Credentials:
    """One server's side of the authenticated flow: the token, the identity and its salt."""

    def __init__(self, target: PingTarget) -> None:
        self.token = target.token
        self.identity = target.probe_identity
        self.salt: bytes | None = None
        self.used: dict[str, bytes] = {}  # nonce -> the salt its proof was made with

    def probe(self) -> Probe:
        """The next probe: plain without a token, naming the identity until its salt is known,
        then authenticated."""
        if self.token is None or self.identity is None:
            return Probe(nonce=new_nonce())
        if self.salt is None:
            return Probe(nonce=new_nonce(), identity=self.identity)
        probe = authenticated_probe(self.token, self.salt, self.identity,
                                    time.time_ns() // 1_000_000)
        self.used[probe.nonce] = self.salt
        return probe

    def judge(self, probe: Probe, reply: Reply) -> tuple[Reply, bool, bool]:
        """(the reply as far as it can be trusted, authenticated, forged); a salt it gives is
        learnt (a server whose token changed gives a new one)."""
        salt = self.used.pop(probe.nonce, None)
        if reply.salt is not None and self.token is not None:
            self.salt = bytes.fromhex(reply.salt)
        if not reply.auth:
            return reply, False, False
        if (self.token is not None and salt is not None
                and reply_is_genuine(reply, probe, self.token, salt)):
            return reply, True, False
        return reply.model_copy(update=_RICH), False, True


@dataclass(frozen=True, slots=True)
class _Peer:
    """One server as probed: its socket address and the credentials of the flow with it."""

    family: int
    sockaddr: SockAddr
    credentials: _Credentials


@dataclass(frozen=True, slots=True)
class _PingPlan:
    count: int | None
    interval: float
    timeout: float
    on_resolved: Callable[[HostResult], None] | None
    on_probe: Callable[[ProbeOutcome], None] | None


@dataclass(slots=True)
class _Search:
    """One discovery under way: what it found, until when, and its tasks."""

    found: Discovery
    deadline: float
    spacing: float
    tasks: asyncio.TaskGroup
    keys: dict[tuple[str, int], Server] = field(default_factory=dict)

    def record(self, address: str, port: int, target: PingTarget, answer: _Answer,
               credentials: _Credentials) -> Server:
        """The Server for (address, port), recorded once (its first answer is kept)."""
        server = self.keys.get((address, port))
        if server is None:
            reply, authenticated, forged = credentials.judge(answer.probe, answer.reply)
            server = self.keys[address, port] = Server(address, port, reply, answer.rtt,
                                                       target.name, authenticated, forged)
            self.found.servers.append(server)
        return server


def _default_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


class Pinger:
    """Probes rexec servers: ``ping()`` a list of hosts, or ``discover()`` who answers.

    Use it as ``async with Pinger() as pinger``: its sockets close at the end. ``rate``:
    probes a second to all hosts together; ``socket_factory(family)``: makes its sockets.
    """

    def __init__(self, *, rate: float = DEFAULT_RATE,
                 socket_factory: SocketFactory | None = None) -> None:
        self._pacer = _Pacer(rate)
        self._make_socket = socket_factory or _default_socket
        self._sockets: dict[int, socket.socket] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._pending: dict[str, _Pending] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._hosts: list[asyncio.Task[None]] = []
        self.stray = 0  # replies with a nonce never sent
        self.late = 0  # replies to a probe whose wait had ended
        self.invalid = 0  # datagrams that are not a reply

    async def __aenter__(self) -> Pinger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the readers and close the sockets."""
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for sock in self._sockets.values():
            sock.close()
        self._readers.clear()
        self._sockets.clear()

    # -- ping ------------------------------------------------------------------------------

    async def ping(self, targets: Sequence[PingTarget], *, count: int | None = None,
                   interval: float = DEFAULT_INTERVAL, timeout: float = DEFAULT_TIMEOUT,
                   on_resolved: Callable[[HostResult], None] | None = None,
                   on_probe: Callable[[ProbeOutcome], None] | None = None) -> list[HostResult]:
        """Probe every target ``count`` times (None: until ``stop()``), ``interval`` apart, each
        probe waiting ``timeout`` for its reply; the hosts in parallel. One result a target,
        in order. ``on_resolved(result)`` once a host's address is known, ``on_probe(outcome)``
        as each counted probe ends."""
        plan = _PingPlan(count, interval, timeout, on_resolved, on_probe)
        results = [HostResult(target) for target in targets]
        self._hosts = [asyncio.create_task(self._ping_host(result, plan)) for result in results]
        for outcome in await asyncio.gather(*self._hosts, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome
        return results

    def stop(self) -> None:
        """End ``ping()`` now (Ctrl-C): it returns what it has; a probe still waiting for its
        reply counts as sent and lost, as ping's does."""
        for task in self._hosts:
            task.cancel()

    async def _ping_host(self, result: HostResult, plan: _PingPlan) -> None:
        target = result.target
        try:
            peer = await self._peer(target)
        except OSError as exc:
            result.error, result.unresolved = _resolve_error(target.host, exc), True
            return
        result.address = peer.sockaddr[0]
        if plan.on_resolved is not None:
            plan.on_resolved(result)
        if peer.credentials.identity is not None:  # the salt, in an uncounted warm-up probe
            # One try, a third of the timeout: a host that is down costs that, not a whole
            # timeout more; if it is lost, the counted probes name the identity until a reply
            # gives the salt (their replies say auth=no until then).
            with contextlib.suppress(OSError):
                answer = await self._exchange(peer, plan.timeout / 3,
                                              time.monotonic() + plan.timeout / 3)
                if answer is not None:
                    peer.credentials.judge(answer.probe, answer.reply)
        start = time.monotonic()
        async with asyncio.TaskGroup() as waits:
            seq = 0
            while plan.count is None or seq < plan.count:
                seq += 1
                waits.create_task(self._counted_probe(result, peer, seq, plan))
                await asyncio.sleep(0)  # sent in order: the probe takes its pacer slot now
                if plan.count is None or seq < plan.count:
                    await asyncio.sleep(max(0.0, start + seq * plan.interval - time.monotonic()))

    async def _counted_probe(self, result: HostResult, peer: _Peer, seq: int,
                             plan: _PingPlan) -> None:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[_Answer] = loop.create_future()
        probe = peer.credentials.probe()
        result.sent += 1
        try:
            try:
                await self._send(probe, peer, _resolver(answered))
            except OSError as exc:
                result.error = f"cannot send to {peer.sockaddr[0]}: {exc.strerror or exc}"
                outcome = ProbeOutcome(result, seq, error=result.error)
            else:
                await asyncio.wait({answered}, timeout=plan.timeout)
                outcome = _ended(result, peer.credentials, seq, answered)
        finally:
            self._forget(probe.nonce)
        if plan.on_probe is not None:
            plan.on_probe(outcome)

    # -- discover --------------------------------------------------------------------------

    async def discover(self, targets: Sequence[PingTarget],
                       broadcast: Sequence[PingTarget] = (), *,
                       timeout: float = DISCOVER_TIMEOUT,
                       rounds: int = DISCOVER_ROUNDS) -> Discovery:
        """Probe each target (and each broadcast address) in up to ``rounds`` rounds within
        ``timeout`` seconds, a target that answered no more; each distinct (address, port)
        that answered is a Server. With a token, a server whose reply gave a salt is sent an
        authenticated probe too (retried as well), for its name, version and load."""
        found = Discovery()
        async with asyncio.TaskGroup() as tasks:
            search = _Search(found, time.monotonic() + timeout, timeout / max(1, rounds), tasks)
            for target in targets:
                tasks.create_task(self._discover_one(target, search))
            for target in broadcast:
                tasks.create_task(self._discover_broadcast(target, search))
        return found

    async def _discover_one(self, target: PingTarget, search: _Search) -> None:
        try:
            peer = await self._peer(target)
        except OSError as exc:
            search.found.errors[target.name] = _resolve_error(target.host, exc)
            return
        search.found.probed += 1
        try:
            answer = await self._exchange(peer, search.spacing, search.deadline)
        except OSError as exc:
            search.found.errors[target.name] = _send_error(peer, exc)
            return
        if answer is not None:
            server = search.record(peer.sockaddr[0], target.port, target, answer,
                                   peer.credentials)
            await self._authenticate(server, peer, search)

    async def _discover_broadcast(self, target: PingTarget, search: _Search) -> None:
        errors = search.found.errors
        try:
            peer = await self._peer(target)
        except OSError as exc:
            errors[target.name] = _resolve_error(target.host, exc)
            return
        if peer.family != socket.AF_INET:
            errors[target.name] = f"{target.host} is not an IPv4 address: IPv6 has no broadcast"
            return
        self._socket(peer.family).setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        search.found.probed += 1

        def deliver(answer: _Answer) -> None:
            address, port = answer.source[0], answer.source[1]
            if (address, port) in search.keys:
                return
            server_peer = _Peer(peer.family, answer.source, _Credentials(target))  # its own salt
            server = search.record(address, port, target, answer, server_peer.credentials)
            search.tasks.create_task(self._authenticate(server, server_peer, search))

        nonces = []
        try:
            while (left := search.deadline - time.monotonic()) > 0:
                probe = peer.credentials.probe()
                nonces.append(probe.nonce)
                await self._send(probe, peer, deliver, many=True)
                await asyncio.sleep(min(search.spacing, left))
        except OSError as exc:
            errors[target.name] = _send_error(peer, exc)
        finally:
            for nonce in nonces:
                self._forget(nonce)

    async def _authenticate(self, server: Server, peer: _Peer, search: _Search) -> None:
        """Ask a server that gave a salt again, authenticated; a server found late still gets
        one full wait for its answer."""
        if peer.credentials.salt is None or server.authenticated:
            return
        deadline = max(search.deadline, time.monotonic() + search.spacing)
        with contextlib.suppress(OSError):
            answer = await self._exchange(peer, search.spacing, deadline)
            if answer is not None:
                reply, authenticated, forged = peer.credentials.judge(answer.probe, answer.reply)
                server.authenticated, server.forged = authenticated, forged
                if authenticated:
                    server.reply = reply

    # -- datagrams -------------------------------------------------------------------------

    async def _exchange(self, peer: _Peer, spacing: float, deadline: float) -> _Answer | None:
        """Send the peer's next probe every ``spacing`` seconds until one of them is answered
        (the answer) or ``deadline`` passes (None). Every probe sent stays answerable to the
        end, so a slow reply to the first is not lost by sending the second."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[_Answer] = loop.create_future()
        nonces = []
        try:
            while (left := deadline - time.monotonic()) > 0:
                probe = peer.credentials.probe()
                nonces.append(probe.nonce)
                await self._send(probe, peer, _resolver(answered))
                await asyncio.wait({answered}, timeout=min(spacing, left))
                if answered.done():
                    return answered.result()
            return None
        finally:
            answered.cancel()
            for nonce in nonces:
                self._forget(nonce)

    async def _send(self, probe: Probe, peer: _Peer, deliver: Callable[[_Answer], None], *,
                    many: bool = False) -> None:
        """Send one probe at the pacer's rate, its reply to go to ``deliver``; OSError."""
        await self._pacer.wait()
        sock = self._socket(peer.family)
        pending = self._pending[probe.nonce] = _Pending(probe, deliver, many)
        pending.sent_at = time.perf_counter()
        try:
            await asyncio.get_running_loop().sock_sendto(sock, encode_probe(probe),
                                                         peer.sockaddr)
        except OSError:
            self._pending.pop(probe.nonce, None)
            raise

    def _forget(self, nonce: str) -> None:
        """The probe's wait is over: a reply to it from now on is late."""
        if self._pending.pop(nonce, None) is not None:
            self._expired[nonce] = None
            if len(self._expired) > _EXPIRED_KEPT:
                self._expired.popitem(last=False)

    def _socket(self, family: int) -> socket.socket:
        sock = self._sockets.get(family)
        if sock is None:
            sock = self._sockets[family] = self._make_socket(family)
            sock.setblocking(False)
            self._readers.append(asyncio.create_task(self._read(sock)))
        return sock

    async def _read(self, sock: socket.socket) -> None:
        """Read every datagram whole (RECEIVE_BUFFER) and hand it on."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, source = await loop.sock_recvfrom(sock, RECEIVE_BUFFER)
            except OSError as exc:
                if exc.errno in _ASYNC_ERRORS:  # an ICMP error for some probe: it times out
                    continue
                raise
            self._received(data, source, time.perf_counter())

    def _received(self, data: bytes, source: SockAddr, now: float) -> None:
        try:
            reply = parse_reply(data)
        except DatagramError:
            self.invalid += 1
            return
        pending = self._pending.get(reply.nonce)
        if pending is None:
            if reply.nonce in self._expired:
                self.late += 1
            else:
                self.stray += 1
            return
        if not pending.many:
            del self._pending[reply.nonce]
        pending.deliver(_Answer(pending.probe, reply, (now - pending.sent_at) * 1000, source))

    async def _peer(self, target: PingTarget) -> _Peer:
        """The target resolved, with its credentials (OSError if it does not resolve)."""
        family, sockaddr = await self._resolve(target.host, target.port)
        return _Peer(family, sockaddr, _Credentials(target))

    async def _resolve(self, host: str, port: int) -> tuple[int, SockAddr]:
        """(family, socket address) for a host: an IP address as it is, a name through the
        loop's resolver (OSError, socket.gaierror among them, if it does not resolve)."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            if ip.version == 4:
                return socket.AF_INET, (host, port)
            if "%" not in host:  # a scoped address needs the resolver for its scope id
                return socket.AF_INET6, (host, port, 0, 0)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_DGRAM)
        except UnicodeError as exc:
            raise OSError(f"not a host name ({exc})") from None
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr


def _resolver(future: asyncio.Future[_Answer]) -> Callable[[_Answer], None]:
    def deliver(answer: _Answer) -> None:
        if not future.done():
            future.set_result(answer)
    return deliver


def _ended(result: HostResult, credentials: _Credentials, seq: int,
           answered: asyncio.Future[_Answer]) -> ProbeOutcome:
    """A counted probe's outcome, once its wait is over (counted in ``result``)."""
    if not answered.done():
        answered.cancel()
        return ProbeOutcome(result, seq)
    answer = answered.result()
    reply, authenticated, forged = credentials.judge(answer.probe, answer.reply)
    result.add(answer.rtt, reply, authenticated)
    result.forged += forged
    return ProbeOutcome(result, seq, answer.rtt, reply, authenticated, forged)


def _send_error(peer: _Peer, exc: OSError) -> str:
    return f"cannot send to {peer.sockaddr[0]}: {exc.strerror or exc}"


def _resolve_error(host: str, exc: OSError) -> str:
    return f"cannot resolve {host}: {exc.strerror or exc}"


async def ping(targets: Sequence[PingTarget], *, count: int = 3,
               interval: float = DEFAULT_INTERVAL, timeout: float = DEFAULT_TIMEOUT,
               rate: float = DEFAULT_RATE) -> list[HostResult]:
    """Ping every target ``count`` times (one Pinger, closed at the end)."""
    async with Pinger(rate=rate) as pinger:
        return await pinger.ping(targets, count=count, interval=interval, timeout=timeout)


async def discover(targets: Sequence[PingTarget], broadcast: Sequence[PingTarget] = (), *,
                   timeout: float = DISCOVER_TIMEOUT, rounds: int = DISCOVER_ROUNDS,
                   rate: float = DEFAULT_RATE) -> Discovery:
    """Discover the servers among the targets and behind the broadcast addresses."""
    async with Pinger(rate=rate) as pinger:
        return await pinger.discover(targets, broadcast, timeout=timeout, rounds=rounds)
