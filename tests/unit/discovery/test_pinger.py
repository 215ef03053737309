"""The pinger against UDP responders in the test's own loop (loopback only, ephemeral ports):
replies matched by nonce and read whole, loss through a dropping relay, the salt and proof
flow, a forged authenticated reply, names that do not resolve, broadcast and the rate."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from rexec.discovery.datagrams import (
    CLOCK_WINDOW,
    RECEIVE_BUFFER,
    DatagramError,
    Probe,
    Reply,
    check_probe,
    encode_reply,
    new_nonce,
    parse_probe,
    sign_reply,
)
from rexec.discovery.pinger import Discovery, HostResult, Pinger, PingTarget, ProbeOutcome
from rexec.wire.auth import TokenVerifier, decoy_salt

TOKEN = "pinger-test-token-0123456789"
T = TypeVar("T")


def run(coroutine: Awaitable[T], limit: float = 20.0) -> T:
    """Run a test's coroutine, never longer than ``limit`` seconds."""
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, limit)
    return asyncio.run(bounded())


class Responder(asyncio.DatagramProtocol):
    """A rexec responder's rules, from datagrams.py: same nonce, salt for a named identity
    (a decoy for an unknown one), the rich signed reply for a valid, fresh, unseen proof.

    ``drop(n)``: how many of the first datagrams to ignore; ``pad``: pad each reply with
    spaces to that size; ``stray``: send a reply with an unknown nonce before each one;
    ``forge``: sign rich replies with another token; ``delay``: seconds before replying.
    """

    def __init__(self, tokens: dict[str, str] | None = None, *, name: str = "srv",
                 drop: int = 0, pad: int = 0, stray: bool = False, forge: bool = False,
                 delay: float = 0.0) -> None:
        self.verifiers = {identity: TokenVerifier.from_token(token)
                          for identity, token in (tokens or {}).items()}
        self.forger = TokenVerifier.from_token("not-the-token")
        self.name, self.drop, self.pad, self.stray = name, drop, pad, stray
        self.forge, self.delay = forge, delay
        self.seen: set[str] = set()
        self.probes: list[tuple[float, Probe]] = []
        self.port = 0
        self.transport: Any = None
        self.reply_from: Any = None  # another transport to answer from (a broadcast's)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            probe = parse_probe(data)
        except DatagramError:
            return
        self.probes.append((time.monotonic(), probe))
        if len(self.probes) <= self.drop:
            return
        out = self.reply_from or self.transport
        data = encode_reply(self.answer(probe))
        if self.pad:
            data = data.ljust(self.pad, b" ")
        if self.stray:
            out.sendto(encode_reply(Reply(nonce=new_nonce(), protocol=5, port=1, tls=False)),
                       addr)
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, out.sendto, data, addr)
        else:
            out.sendto(data, addr)

    def answer(self, probe: Probe) -> Reply:
        base = Reply(nonce=probe.nonce, protocol=5, port=self.port, tls=False)
        verifier = self.verifiers.get(probe.identity or "")
        if probe.proof is not None and probe.ts is not None and verifier is not None:
            fresh = abs(time.time() * 1000 - probe.ts) <= CLOCK_WINDOW * 1000
            if fresh and probe.nonce not in self.seen and check_probe(probe, verifier):
                self.seen.add(probe.nonce)
                rich = Reply(nonce=probe.nonce, protocol=5, port=self.port, tls=False,
                             auth=True, name=self.name, version="0.1.0", uptime=1.5,
                             running=0, load=(0.0, 0.0, 0.0))
                return sign_reply(rich, probe, self.forger if self.forge else verifier)
        if probe.identity is not None:
            salt = verifier.salt if verifier else decoy_salt(b"secret", probe.identity)
            return Reply(nonce=probe.nonce, protocol=5, port=self.port, tls=False,
                         salt=salt.hex())
        return base


async def serve(responder: Responder, host: str = "127.0.0.2", port: int = 0,
                **options: Any) -> Any:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: responder,
                                                       local_addr=(host, port), **options)
    return transport


class LossyRelay(asyncio.DatagramProtocol):
    """A UDP forwarder that drops ``loss`` of the datagrams each way (a seeded random)."""

    def __init__(self, upstream: tuple[str, int], loss: float, seed: int) -> None:
        self.upstream, self.loss, self.random = upstream, loss, random.Random(seed)
        self.client: Any = None
        self.front: Any = None
        self.back: Any = None
        self.dropped = self.passed = 0

    def connection_made(self, transport: Any) -> None:
        self.front = transport

    def keep(self) -> bool:
        if self.random.random() < self.loss:
            self.dropped += 1
            return False
        self.passed += 1
        return True

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        if self.keep():
            self.back.sendto(data, self.upstream)

    async def start(self, host: str) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if relay.client is not None and relay.keep():
                    relay.front.sendto(data, relay.client)

        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=(host, 0))
        port: int = self.front.get_extra_info("sockname")[1]
        return port

    def close(self) -> None:
        self.front.close()
        self.back.close()


def target(responder: Responder, host: str = "127.0.0.2", token: str | None = None,
           identity: str | None = None, name: str | None = None) -> PingTarget:
    return PingTarget(name or host, host, responder.port, token, identity)


async def ping(targets: list[PingTarget], **options: Any) -> tuple[list[HostResult],
                                                                   list[ProbeOutcome], Pinger]:
    outcomes: list[ProbeOutcome] = []
    options = {"count": 3, "interval": 0.02, "timeout": 0.5, **options}
    async with Pinger(rate=options.pop("rate", 1000)) as pinger:
        results = await pinger.ping(targets, on_probe=outcomes.append, **options)
    return results, outcomes, pinger


# -- replies, whole and matched --------------------------------------------------------------


class RecordingSocket(socket.socket):
    """A socket that records the buffer size of every recvfrom."""

    sizes: list[int]

    def recvfrom(self, bufsize: int, flags: int = 0) -> Any:
        self.sizes.append(bufsize)
        return super().recvfrom(bufsize, flags)


def test_two_probes_get_two_replies_each_read_whole_into_the_64_kib_buffer() -> None:
    made: list[RecordingSocket] = []

    def factory(family: int) -> socket.socket:
        sock = RecordingSocket(family, socket.SOCK_DGRAM)
        sock.sizes = []
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: the read is not
        made.append(sock)
        return sock

    async def main() -> tuple[list[HostResult], list[ProbeOutcome], Responder]:
        responder = Responder(pad=1400)  # a reply far above a 512-byte read, kept whole
        transport = await serve(responder)
        outcomes: list[ProbeOutcome] = []
        try:
            async with Pinger(socket_factory=factory) as pinger:
                results = await pinger.ping([target(responder)], count=2, interval=0.0,
                                            timeout=1.0, on_probe=outcomes.append)
        finally:
            transport.close()
        return results, outcomes, responder

    (result,), outcomes, responder = run(main())
    assert (result.sent, result.received, result.loss) == (2, 2, 0.0)
    assert sorted(o.seq for o in outcomes) == [1, 2]
    nonces = [probe.nonce for _, probe in responder.probes]
    assert len(set(nonces)) == 2
    assert {o.reply.nonce for o in outcomes if o.reply} == set(nonces)  # each its own reply
    assert all(o.rtt is not None and 0 < o.rtt < 1000 for o in outcomes)
    assert result.rtt_min is not None and result.rtt_max is not None
    assert result.rtt_min <= (result.rtt_avg or 0) <= result.rtt_max
    assert result.address == "127.0.0.2"
    assert result.reply is not None and (result.reply.protocol, result.reply.tls) == (5, False)
    assert not result.authenticated
    (sock,) = made
    assert sock.sizes and set(sock.sizes) == {RECEIVE_BUFFER}


def test_replies_with_unknown_nonces_are_ignored_and_counted() -> None:
    async def main() -> tuple[list[HostResult], Pinger]:
        responder = Responder(stray=True)
        transport = await serve(responder)
        try:
            results, _, pinger = await ping([target(responder)], count=3)
        finally:
            transport.close()
        return results, pinger

    (result,), pinger = run(main())
    assert (result.sent, result.received) == (3, 3)
    assert pinger.stray == 3


def test_a_reply_after_the_wait_is_a_lost_probe_and_counted_late() -> None:
    async def main() -> tuple[list[HostResult], list[ProbeOutcome], Pinger]:
        responder = Responder(delay=0.3)
        transport = await serve(responder)
        outcomes: list[ProbeOutcome] = []
        try:
            async with Pinger() as pinger:
                results = await pinger.ping([target(responder)], count=2, timeout=0.1,
                                            interval=0.05, on_probe=outcomes.append)
                await asyncio.sleep(0.4)  # the late replies arrive
        finally:
            transport.close()
        return results, outcomes, pinger

    (result,), outcomes, pinger = run(main())
    assert (result.sent, result.received, result.loss) == (2, 0, 100.0)
    assert all(o.rtt is None and o.reply is None for o in outcomes)
    assert pinger.late == 2 and pinger.stray == 0


def test_many_hosts_are_pinged_in_parallel_and_one_down_is_all_loss() -> None:
    async def main() -> list[HostResult]:
        responders = [Responder(name=f"s{i}") for i in range(4)]
        transports = [await serve(r, f"127.0.0.{2 + i}") for i, r in enumerate(responders)]
        targets = [target(r, f"127.0.0.{2 + i}") for i, r in enumerate(responders)]
        transports[2].close()  # nothing listens there any more
        started = time.monotonic()
        try:
            results, _, _ = await ping(targets, count=3, interval=0.1, timeout=0.3)
        finally:
            for t in transports:
                t.close()
        assert time.monotonic() - started < 1.5  # in parallel, not one after the other
        return results

    results = run(main())
    assert [r.target.name for r in results] == [f"127.0.0.{2 + i}" for i in range(4)]
    assert [r.received for r in results] == [3, 3, 0, 3]
    assert results[2].loss == 100.0 and results[2].error is None


def test_a_name_that_does_not_resolve_is_recorded_not_raised() -> None:
    async def main() -> tuple[list[HostResult], Discovery]:
        results, outcomes, _ = await ping([PingTarget("gone", "nohost.invalid", 7878)])
        assert outcomes == []
        async with Pinger() as pinger:
            found = await pinger.discover([PingTarget("gone", "nohost.invalid", 7878)],
                                          timeout=0.2)
        return results, found

    (result,), found = run(main())
    assert result.unresolved and result.sent == 0
    assert result.error is not None and "nohost.invalid" in result.error
    assert found.servers == [] and "nohost.invalid" in found.errors["gone"]


def test_probes_to_many_hosts_keep_to_the_global_rate() -> None:
    async def main() -> list[float]:
        responder = Responder()
        transport = await serve(responder)
        targets = [target(responder, name=f"h{i}") for i in range(40)]
        try:
            results, _, _ = await ping(targets, count=1, rate=100)
        finally:
            transport.close()
        assert all(r.received == 1 for r in results)
        return [when for when, _ in responder.probes]

    times = run(main())
    assert len(times) == 40
    assert max(times) - min(times) >= 0.3  # 40 probes at 100/s: about 0.39 s, not a burst


# -- loss --------------------------------------------------------------------------------------


def test_ping_through_a_lossy_relay_reports_the_loss() -> None:
    async def main() -> tuple[HostResult, LossyRelay]:
        responder = Responder()
        transport = await serve(responder)
        relay = LossyRelay(("127.0.0.2", responder.port), 0.3, seed=16)
        port = await relay.start("127.0.0.3")
        try:
            (result,), _, _ = await ping([PingTarget("lossy", "127.0.0.3", port)], count=80,
                                         interval=0.005, timeout=0.25)
        finally:
            relay.close()
            transport.close()
        return result, relay

    result, relay = run(main())
    assert result.sent == 80
    assert relay.dropped > 0
    # 30% each way: about 51% of the probes get no reply
    assert 30 <= result.loss <= 72, result.loss


def test_discover_finds_every_server_behind_lossy_relays_thanks_to_its_retries() -> None:
    async def main() -> tuple[Discovery, list[int]]:
        responders = [Responder(name=f"s{i}") for i in range(5)]
        transports = [await serve(r) for r in responders]
        relays = [LossyRelay(("127.0.0.2", r.port), 0.3, seed=i) for i, r in
                  enumerate(responders)]
        ports = [await relay.start("127.0.0.3") for relay in relays]
        try:
            async with Pinger() as pinger:
                found = await pinger.discover(
                    [PingTarget(f"r{i}", "127.0.0.3", port) for i, port in enumerate(ports)],
                    timeout=2.0, rounds=8)
        finally:
            for relay in relays:
                relay.close()
            for t in transports:
                t.close()
        return found, ports

    found, ports = run(main())
    assert sorted((s.address, s.port) for s in found.servers) == [("127.0.0.3", p)
                                                                  for p in sorted(ports)]
    assert found.probed == 5 and not found.errors


def test_discover_collects_each_server_once_and_stops_probing_those_that_answered() -> None:
    async def main() -> tuple[Discovery, list[Responder]]:
        responders = [Responder() for _ in range(3)]
        transports = [await serve(r, f"127.0.0.{10 + i}") for i, r in enumerate(responders)]
        targets = [target(r, f"127.0.0.{10 + i}") for i, r in enumerate(responders)]
        targets.append(PingTarget("nobody", "127.0.0.20", 9))  # no answer: probed each round
        try:
            async with Pinger() as pinger:
                found = await pinger.discover([*targets, targets[0]], timeout=0.6, rounds=3)
        finally:
            for t in transports:
                t.close()
        return found, responders

    found, responders = run(main())
    assert sorted(s.address for s in found.servers) == ["127.0.0.10", "127.0.0.11",
                                                        "127.0.0.12"]
    assert [len(r.probes) for r in responders][1:] == [1, 1]
    assert all(not s.authenticated and s.reply.salt is None for s in found.servers)


def test_discover_by_broadcast_finds_every_server_listening_for_it() -> None:
    async def main() -> Discovery:
        responders = [Responder(name=f"b{i}") for i in range(2)]
        port = 0
        transports = []
        for i, responder in enumerate(responders):
            listener = await serve(responder, "127.255.255.255", port, reuse_port=True)
            port = responder.port
            unicast, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(f"127.0.0.{30 + i}", port))
            responder.reply_from = unicast
            transports += [listener, unicast]
        try:
            async with Pinger() as pinger:
                return await pinger.discover(
                    [], [PingTarget("broadcast", "127.255.255.255", port)], timeout=0.6)
        finally:
            for t in transports:
                t.close()

    found = run(main())
    assert not found.errors
    assert sorted(s.address for s in found.servers) == ["127.0.0.30", "127.0.0.31"]
    assert {s.target for s in found.servers} == {"broadcast"}


# -- the authenticated flow ----------------------------------------------------------------------


def ping_one(responder: Responder, *, token: str | None = TOKEN, identity: str | None = None,
             **options: Any) -> tuple[HostResult, list[ProbeOutcome]]:
    async def main() -> tuple[HostResult, list[ProbeOutcome]]:
        transport = await serve(responder)
        try:
            (result,), outcomes, _ = await ping(
                [target(responder, token=token, identity=identity)], **options)
        finally:
            transport.close()
        return result, sorted(outcomes, key=lambda o: o.seq)

    return run(main())


def test_with_the_token_the_salt_comes_first_then_every_counted_probe_is_authenticated() -> None:
    responder = Responder({"default": TOKEN}, name="web01")
    result, outcomes = ping_one(responder)
    probes = [probe for _, probe in responder.probes]
    assert probes[0].identity == "default" and probes[0].proof is None  # the warm-up
    assert len(probes) == 4 and all(p.proof is not None for p in probes[1:])
    assert len({p.nonce for p in probes}) == 4
    assert all(abs(time.time() * 1000 - (p.ts or 0)) < 10_000 for p in probes[1:])
    assert (result.sent, result.received) == (3, 3)  # the warm-up is not counted
    assert result.authenticated and all(o.authenticated for o in outcomes)
    assert result.reply is not None and (result.reply.name, result.reply.version) == (
        "web01", "0.1.0")
    assert result.forged == 0


def test_a_named_identity_is_the_one_probed() -> None:
    responder = Responder({"ops": TOKEN})
    result, _ = ping_one(responder, identity="ops")
    assert result.authenticated
    assert {probe.identity for _, probe in responder.probes} == {"ops"}


def test_without_a_token_probes_name_no_identity_and_replies_are_unauthenticated() -> None:
    responder = Responder({"default": TOKEN})
    result, outcomes = ping_one(responder, token=None)
    assert all(p.identity is None and p.proof is None for _, p in responder.probes)
    assert len(responder.probes) == 3 and result.received == 3
    assert not result.authenticated and not any(o.authenticated for o in outcomes)
    assert result.reply is not None and result.reply.name is None


@pytest.mark.parametrize("tokens", [{"default": "another-token"}, {"ops": TOKEN}],
                         ids=["wrong token", "unknown identity (a decoy salt)"])
def test_a_proof_the_server_does_not_accept_gets_the_unauthenticated_reply(
        tokens: dict[str, str]) -> None:
    responder = Responder(tokens)
    result, outcomes = ping_one(responder)
    assert result.received == 3 and not result.authenticated and result.forged == 0
    assert all(o.reply is not None and o.reply.salt is not None for o in outcomes)
    assert all(p.proof is not None for _, p in responder.probes[1:])  # it kept trying


def test_a_forged_authenticated_reply_is_not_taken_for_authenticated() -> None:
    responder = Responder({"default": TOKEN}, forge=True)
    result, outcomes = ping_one(responder)
    assert result.received == 3
    assert not result.authenticated and result.forged == 3
    assert all(o.forged and not o.authenticated for o in outcomes)
    assert result.reply is not None and not result.reply.auth and result.reply.name is None


def test_a_lost_warm_up_still_pings_and_the_first_salt_switches_to_proofs() -> None:
    responder = Responder({"default": TOKEN}, drop=1)  # the warm-up's one try
    result, outcomes = ping_one(responder, timeout=0.3, interval=0.05)
    probes = [probe for _, probe in responder.probes]
    # a lost warm-up is not tried again (a host that is down would cost a timeout more):
    # the first counted probe names the identity, its reply's salt makes the rest proofs
    assert len(probes) == 4
    assert all(p.identity == "default" and p.proof is None for p in probes[:2])
    assert all(p.proof is not None for p in probes[2:])
    assert [o.authenticated for o in outcomes] == [False, True, True]
    assert result.received == 3 and result.authenticated


def test_discover_sends_one_authenticated_probe_to_each_server_that_gave_a_salt() -> None:
    async def main() -> tuple[Discovery, list[Responder]]:
        responders = [Responder({"default": TOKEN}, name="a"),
                      Responder({"default": "other"}, name="b"),
                      Responder({"default": TOKEN}, name="c", forge=True)]
        transports = [await serve(r, f"127.0.0.{40 + i}") for i, r in enumerate(responders)]
        targets = [target(r, f"127.0.0.{40 + i}", token=TOKEN)
                   for i, r in enumerate(responders)]
        try:
            async with Pinger() as pinger:
                found = await pinger.discover(targets, timeout=0.6)
        finally:
            for t in transports:
                t.close()
        return found, responders

    found, responders = run(main())
    servers = {s.address: s for s in found.servers}
    assert servers["127.0.0.40"].authenticated and servers["127.0.0.40"].reply.name == "a"
    assert not servers["127.0.0.41"].authenticated and not servers["127.0.0.41"].forged
    assert not servers["127.0.0.42"].authenticated and servers["127.0.0.42"].forged
    assert servers["127.0.0.42"].reply.name is None
    assert [len(r.probes) for r in responders] == [2, 2, 2]  # the salt, then one proof


def test_every_loop_is_bounded_even_for_a_server_that_never_answers() -> None:
    async def main() -> float:
        started = time.monotonic()
        async with Pinger() as pinger:
            found = await pinger.discover([PingTarget("x", "127.0.0.50", 9, TOKEN)],
                                          timeout=0.3)
        assert found.servers == [] and found.probed == 1
        return time.monotonic() - started

    assert run(main()) < 1.0


def test_stop_ends_an_endless_ping_with_what_it_has() -> None:
    async def main() -> HostResult:
        responder = Responder()
        transport = await serve(responder)
        try:
            async with Pinger() as pinger:
                asyncio.get_running_loop().call_later(0.25, pinger.stop)
                (result,) = await pinger.ping([target(responder)], count=None, interval=0.05)
        finally:
            transport.close()
        return result

    result = run(main())
    assert 3 <= result.sent <= 7 and result.received >= result.sent - 1
