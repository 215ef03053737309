"""The responder's decision (sans-I/O) and its sockets: sizes, proofs, replays, rate limits."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rexec.discovery.datagrams import (
    CLOCK_WINDOW,
    MAX_REPLY,
    RECEIVE_BUFFER,
    Probe,
    authenticated_probe,
    encode_probe,
    new_nonce,
    parse_reply,
    reply_is_genuine,
)
from rexec.discovery.responder import RateLimits, Responder, Status, _source_key
from rexec.wire.auth import TokenVerifier, decoy_salt

TOKEN = "a-discovery-test-token"
VERIFIER = TokenVerifier.from_token(TOKEN)
DECOY_SECRET = b"decoys"


def keys(identity: str) -> tuple[bytes, TokenVerifier | None]:
    if identity == "default":
        return VERIFIER.salt, VERIFIER
    return decoy_salt(DECOY_SECRET, identity), None


def status() -> Status:
    return Status(name="node-a", version="9.9.9", uptime=12.3456, running=2,
                  load=(0.123, 1.0, 2.5))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def responder(**kwargs: object) -> Responder:
    base: dict[str, object] = {"status": status, "keys": keys, "protocol": 5, "tls": False}
    base.update(kwargs)
    return Responder(**base)  # type: ignore[arg-type]


def now_ms() -> int:
    return int(time.time() * 1000)


def test_a_plain_probe_gets_what_anyone_may_know() -> None:
    r = responder(tls=True)
    probe = Probe(nonce=new_nonce())
    data = encode_probe(probe)
    reply = parse_reply(r.handle(data, "127.0.0.1", 7878) or b"")
    assert (reply.nonce, reply.protocol, reply.port, reply.tls) == (probe.nonce, 5, 7878, True)
    assert not reply.auth and reply.salt is None and reply.name is None and reply.load is None
    assert r.counters == {"answered": 1}


def test_naming_an_identity_gives_its_salt_and_a_stable_decoy_for_an_unknown_one() -> None:
    r = responder()
    known = parse_reply(r.handle(encode_probe(Probe(nonce=new_nonce(), identity="default")),
                                 "127.0.0.1", 1) or b"")
    assert known.salt == VERIFIER.salt.hex()
    unknown = [parse_reply(r.handle(encode_probe(Probe(nonce=new_nonce(), identity="ghost")),
                                    "127.0.0.1", 1) or b"") for _ in range(2)]
    assert unknown[0].salt == unknown[1].salt == decoy_salt(DECOY_SECRET, "ghost").hex()
    assert not any(reply.auth for reply in (known, *unknown))


def test_an_authenticated_probe_gets_the_rich_reply_with_the_servers_proof() -> None:
    r = responder()
    probe = authenticated_probe(TOKEN, VERIFIER.salt, "default", now_ms())
    reply = parse_reply(r.handle(encode_probe(probe), "127.0.0.1", 7000) or b"")
    assert reply.auth and reply.salt is None
    assert (reply.name, reply.version, reply.running) == ("node-a", "9.9.9", 2)
    assert reply.uptime == 12.346 and reply.load == (0.12, 1.0, 2.5)
    assert reply_is_genuine(reply, probe, TOKEN, VERIFIER.salt)
    assert not reply_is_genuine(reply, probe, "another token", VERIFIER.salt)
    forged = reply.model_copy(update={"running": 0})
    assert not reply_is_genuine(forged, probe, TOKEN, VERIFIER.salt)
    assert r.counters == {"answered": 1, "authenticated": 1}


def test_a_replayed_probe_gets_only_the_unauthenticated_reply() -> None:
    r = responder()
    data = encode_probe(authenticated_probe(TOKEN, VERIFIER.salt, "default", now_ms()))
    first = parse_reply(r.handle(data, "127.0.0.1", 1) or b"")
    again = parse_reply(r.handle(data, "127.0.0.9", 1) or b"")
    assert first.auth and not again.auth
    assert again.name is None and again.proof is None and again.salt == VERIFIER.salt.hex()
    assert r.counters["replayed"] == 1 and r.counters["authenticated"] == 1


@pytest.mark.parametrize("case", ["wrong token", "unknown identity", "stale", "future",
                                  "altered nonce"])
def test_a_badly_proved_probe_is_answered_as_unauthenticated(case: str) -> None:
    r = responder()
    ts = now_ms()
    if case == "wrong token":
        probe = authenticated_probe("not the token", VERIFIER.salt, "default", ts)
    elif case == "unknown identity":
        probe = authenticated_probe(TOKEN, VERIFIER.salt, "ghost", ts)
    elif case in ("stale", "future"):
        shift = int((CLOCK_WINDOW + 5) * 1000)
        probe = authenticated_probe(TOKEN, VERIFIER.salt, "default",
                                    ts - shift if case == "stale" else ts + shift)
    else:
        probe = authenticated_probe(TOKEN, VERIFIER.salt, "default", ts)
        probe = probe.model_copy(update={"nonce": new_nonce()})
    reply = parse_reply(r.handle(encode_probe(probe), "127.0.0.1", 1) or b"")
    assert not reply.auth and reply.proof is None and reply.name is None
    reason = "stale" if case in ("stale", "future") else "bad_proof"
    assert r.counters[reason] == 1 and "authenticated" not in r.counters


def test_nonces_are_forgotten_only_after_their_window() -> None:
    clock = Clock()
    r = responder(monotonic=clock)
    data = encode_probe(authenticated_probe(TOKEN, VERIFIER.salt, "default", now_ms()))
    assert parse_reply(r.handle(data, "127.0.0.1", 1) or b"").auth
    clock.now += 2 * CLOCK_WINDOW - 1
    assert not parse_reply(r.handle(data, "127.0.0.1", 1) or b"").auth
    assert len(r._nonces) == 1
    clock.now += 2  # past 2 x CLOCK_WINDOW: no timestamp it could carry is still accepted
    fresh = authenticated_probe(TOKEN, VERIFIER.salt, "default", now_ms())
    assert parse_reply(r.handle(encode_probe(fresh), "127.0.0.1", 1) or b"").auth
    assert list(r._nonces) == [("default", fresh.nonce)]


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"x" * 1401, "oversize"),
    (b'{"v":1,"type":"probe","nonce":"ab', "truncated"),
    (b"\x00\xff garbage", "not_json"),
    (b"[1,2,3]", "not_json"),
    (b'{"v":2,"type":"probe","nonce":"' + b"0" * 32 + b'"}', "wrong_version"),
    (b'{"v":1,"type":"probe","nonce":"short"}', "invalid"),
    (b'{"v":1,"type":"reply","nonce":"' + b"0" * 32 + b'"}', "invalid"),
    (b'{"v":1,"type":"probe","nonce":"' + b"0" * 32 + b'","extra":1}', "invalid"),
])
def test_bad_datagrams_are_dropped_and_counted(data: bytes, reason: str) -> None:
    r = responder()
    assert r.handle(data, "127.0.0.1", 1) is None
    assert r.counters == {reason: 1}


def test_a_probe_too_small_for_its_reply_gets_none() -> None:
    r = responder()
    probe = Probe(nonce=new_nonce(), identity="default")
    tight = encode_probe(probe, size=0)  # no padding: smaller than the reply with its salt
    assert r.handle(tight, "127.0.0.1", 7878) is None
    assert r.counters == {"too_small": 1}


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 1500), identity=st.none() | st.sampled_from(["default", "ghost"]),
       authenticated=st.booleans(), port=st.integers(1, 65535),
       name=st.text(min_size=0, max_size=80))
def test_no_reply_is_ever_larger_than_its_probe(size: int, identity: str | None,
                                                authenticated: bool, port: int,
                                                name: str) -> None:
    def rich_status() -> Status:
        return Status(name=name or "x", version="1.0", uptime=1e9, running=10**6,
                      load=(123.456, 99999.99, 0.0))

    r = responder(status=rich_status, limits=RateLimits(per_source_burst=10**9,
                                                         global_burst=10**9))
    if identity is not None and authenticated:
        probe = authenticated_probe(TOKEN, VERIFIER.salt, identity, now_ms())
    else:
        probe = Probe(nonce=new_nonce(), identity=identity)
    data = encode_probe(probe, size)
    reply = r.handle(data, "127.0.0.1", port)
    if reply is not None:
        assert len(reply) <= min(len(data), MAX_REPLY)
        assert parse_reply(reply).nonce == probe.nonce
    else:
        assert len(data) > 1400 or r.counters["too_small"] == 1


def test_one_source_flooding_does_not_starve_another() -> None:
    clock = Clock()
    r = responder(monotonic=clock, limits=RateLimits(per_source_rate=10, per_source_burst=20,
                                                     global_rate=1000, global_burst=100))
    answered = sum(r.handle(encode_probe(Probe(nonce=new_nonce())), "10.0.0.1", 1) is not None
                   for _ in range(500))
    assert answered == 20
    assert r.counters["rate_limited_source"] == 480
    assert r.handle(encode_probe(Probe(nonce=new_nonce())), "10.0.0.2", 1) is not None
    clock.now += 1.0  # 10 tokens back for the flooder
    answered = sum(r.handle(encode_probe(Probe(nonce=new_nonce())), "10.0.0.1", 1) is not None
                   for _ in range(50))
    assert answered == 10


def test_the_global_limit_holds_across_many_sources() -> None:
    clock = Clock()
    r = responder(monotonic=clock, limits=RateLimits(per_source_burst=5, global_rate=1,
                                                     global_burst=30))
    answered = sum(r.handle(encode_probe(Probe(nonce=new_nonce())), f"10.0.{i // 250}.{i % 250}",
                            1) is not None for i in range(100))
    assert answered == 30 and r.counters["rate_limited_global"] == 70


def test_the_source_table_is_bounded() -> None:
    clock = Clock()
    r = responder(monotonic=clock, limits=RateLimits(max_sources=50))
    for i in range(1000):
        clock.now += 0.001
        r.handle(b"", f"10.1.{i // 250}.{i % 250}", 1)
    assert len(r._sources) <= 50


def test_ipv6_sources_are_limited_per_64() -> None:
    assert _source_key("2001:db8::1") == _source_key("2001:db8::ffff") == "2001:db8::/64"
    assert _source_key("2001:db8:0:1::1") != _source_key("2001:db8::1")
    assert _source_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert _source_key("10.0.0.1") == "10.0.0.1"


def test_drops_are_logged_at_most_once_an_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    r = responder(monotonic=clock, log_interval=10.0)
    with caplog.at_level(logging.WARNING, logger="rexec.server.discovery"):
        for _ in range(100):
            r.handle(b"", "127.0.0.1", 1)
        clock.now += 10
        r.handle(b"junk", "127.0.0.1", 1)
        r.log_drops()
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines == ["event=discovery_dropped count=1 reasons='empty 1'",
                     "event=discovery_dropped count=100 reasons='empty 99, not_json 1'"]


# -- real sockets ---------------------------------------------------------------------------


async def _exchange(sock: socket.socket, datagrams: list[bytes], address: tuple[str, int],
                    expect: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    for data in datagrams:
        await loop.sock_sendto(sock, data, address)
    replies: list[bytes] = []
    try:
        while len(replies) < expect + 1:
            replies.append(await asyncio.wait_for(loop.sock_recv(sock, RECEIVE_BUFFER), 0.3))
    except TimeoutError:
        pass
    return replies


def _client(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def _serving(r: Responder) -> tuple[str, int]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    await r.listen("127.0.0.1", port)
    return "127.0.0.1", port


def test_over_real_sockets_boundaries_are_kept_and_garbage_is_unanswered() -> None:
    async def main() -> None:
        r = responder()
        address = await _serving(r)
        with _client() as sock:
            probes = [Probe(nonce=new_nonce()) for _ in range(2)]
            garbage = [b"", b"{}", b"\xff" * 100, b" " * 1401]
            replies = await _exchange(sock, [encode_probe(probes[0]), *garbage,
                                             encode_probe(probes[1])], address, 2)
        r.close()
        assert [parse_reply(data).nonce for data in replies] == [p.nonce for p in probes]
        assert all(json.loads(data)["port"] == address[1] for data in replies)
        assert r.counters == {"answered": 2, "empty": 1, "invalid": 1, "not_json": 1,
                              "oversize": 1}

    asyncio.run(main())


def test_over_real_sockets_a_flood_is_cut_while_another_source_is_answered() -> None:
    async def main() -> None:
        r = responder(limits=RateLimits(per_source_rate=20, per_source_burst=40))
        address = await _serving(r)
        with _client("127.0.0.1") as flooder, _client("127.0.0.2") as other:
            loop = asyncio.get_running_loop()
            data = encode_probe(Probe(nonce=new_nonce()))
            started = time.monotonic()
            for sent in range(1000):  # bounded flood, in runs the responder reads between
                await loop.sock_sendto(flooder, data, address)
                if sent % 20 == 19:
                    await asyncio.sleep(0.001)
                if sent == 500:
                    await loop.sock_sendto(other, encode_probe(Probe(nonce=new_nonce())),
                                           address)
            elapsed = time.monotonic() - started
            answered = await _exchange(other, [], address, 1)
            flooded = 0
            try:
                while flooded < 1000:
                    await asyncio.wait_for(loop.sock_recv(flooder, RECEIVE_BUFFER), 0.3)
                    flooded += 1
            except TimeoutError:
                pass
        r.close()
        assert len(answered) == 1
        assert 40 <= flooded <= 40 + 20 * (elapsed + 0.1) + 1  # the burst, and its refill
        assert r.counters["rate_limited_source"] == 1000 - flooded

    asyncio.run(main())
