"""A fleet put's reader: every host gets every byte in order, the file is read once per pass,
at most ``limit`` bytes are held, and no host (slow, gone, late) stalls the others for long."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rexec.client.transfer import LocalSource
from rexec.errors import ConfigError, InvalidRequest, LocalFileError
from rexec.fleet.transfer import FanOut, HostShare, Relay, check_host_dirs, check_timeout, host_dir

# --- Relay: the bookkeeping of one pass, no I/O ---------------------------------------------


def pump(relay: Relay, data: bytes, reads: list[int]) -> None:
    """Read what the relay asks for from ``data``, recording each read's offset."""
    while count := relay.to_read():
        reads.append(relay.end)
        relay.feed(data[relay.end:relay.end + count])


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 5000), chunk=st.integers(1, 300), extra=st.integers(0, 900),
       members=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_every_member_gets_every_byte_read_once_and_never_more_than_the_limit_is_held(
        size: int, chunk: int, extra: int, members: int, seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    relay = Relay(size, chunk=chunk, limit=chunk + extra)
    ids = [relay.join() for _ in range(members)]
    relay.release()
    got = {m: bytearray() for m in ids}
    reads: list[int] = []
    while any(relay.remaining(m) for m in ids):
        pump(relay, data, reads)
        assert relay.held <= relay.limit
        member = rng.choice([m for m in ids if relay.remaining(m)])
        piece = relay.take(member, rng.randint(1, 2 * chunk))
        assert len(piece) <= chunk  # never across two chunks
        got[member] += piece
    assert all(bytes(g) == data for g in got.values())
    assert reads == list(range(0, size, chunk))  # each chunk once, in order
    assert relay.held <= relay.limit


def test_the_fastest_member_is_at_most_the_limit_ahead_until_the_slowest_leaves() -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    relay = Relay(len(data), chunk=1000, limit=3000)
    fast, slow = relay.join(), relay.join()
    relay.release()
    reads: list[int] = []
    taken = bytearray()
    for _ in range(10):
        pump(relay, data, reads)
        taken += relay.take(fast, 10_000)
    assert len(taken) == 3000 and relay.take(fast, 1) == b""  # held back by the slow one
    relay.take(slow, 1500)  # it passes the first chunk: one more may be read
    pump(relay, data, reads)
    taken += relay.take(fast, 10_000)
    assert len(taken) == 4000 and relay.held == 3000
    relay.leave(slow)  # it failed: nothing holds the fast one back any more
    while relay.remaining(fast):
        pump(relay, data, reads)
        taken += relay.take(fast, 10_000)
    assert bytes(taken) == data and relay.held <= 1000


def test_a_holding_pass_keeps_its_first_chunk_for_members_to_come() -> None:
    data = os.urandom(5000)
    relay = Relay(len(data), chunk=1000, limit=2000)
    first = relay.join()
    reads: list[int] = []
    pump(relay, data, reads)
    assert relay.take(first, 5000) == data[:1000]
    assert relay.take(first, 5000) == data[1000:2000]
    pump(relay, data, reads)
    assert relay.take(first, 5000) == b"" and relay.joinable  # held: it waits
    late = relay.join()
    assert relay.take(late, 5000) == data[:1000]
    relay.release()
    assert relay.base == 1000 and not relay.joinable  # the chunk both took is let go
    with pytest.raises(RuntimeError, match="start another"):
        relay.join()


def test_a_pass_nobody_listens_to_reads_nothing_and_bad_reads_are_refused() -> None:
    relay = Relay(100, chunk=10, limit=20)
    assert relay.to_read() == 0  # no member yet
    member = relay.join()
    assert relay.to_read() == 10
    with pytest.raises(ValueError, match="expected 10 bytes"):
        relay.feed(b"short")
    relay.leave(member)
    assert relay.to_read() == 0
    empty = Relay(0, chunk=10, limit=20)
    assert empty.take(empty.join(), 10) == b"" and empty.to_read() == 0
    with pytest.raises(ValueError, match="chunk <= limit"):
        Relay(10, chunk=20, limit=10)


# --- FanOut: passes on the event loop, over a real file -------------------------------------


@pytest.fixture
def source_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(300_000 + 17)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, data


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    reads: list[tuple[int, int]] = []
    real = LocalSource.read_at

    def read_at(self: LocalSource, offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return real(self, offset, size)

    monkeypatch.setattr(LocalSource, "read_at", read_at)
    return reads


async def drain(share: HostShare, *, delay: float = 0.0, stop_after: int | None = None,
                step: int = 7_000, close: bool = True) -> bytes:
    """What a host's feeder does: read until the share is exhausted (or ``stop_after`` bytes,
    as a host that fails), then leave it, and close it too unless the caller frees a fork
    slot first (as fleet.transfer.transfer_host does)."""
    got = bytearray()
    try:
        while share.remaining and (stop_after is None or len(got) < stop_after):
            got += await share.read(step)
            if delay:
                await asyncio.sleep(delay)
        return bytes(got)
    finally:
        share.leave()
        if close:
            share.close()


def fanout(path: Path, **kwargs: float) -> FanOut:
    options = {"chunk": 16_384, "limit": 65_536, "window": 5.0} | kwargs
    return FanOut(path, **options)  # type: ignore[arg-type]


def test_hosts_that_all_join_share_one_pass_and_the_file_is_read_once(
        source_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = source_file
    reads = count_reads(monkeypatch)

    async def main() -> tuple[list[bytes], FanOut]:
        out = fanout(path)
        await out.open()
        shares = [out.expect() for _ in range(8)]
        delays = [0.0, 0.0005, 0.0, 0.001, 0.0, 0.0, 0.0002, 0.0]
        got = await asyncio.gather(*(drain(s, delay=d) for s, d in zip(shares, delays,
                                                                      strict=True)))
        out.close()
        return got, out

    got, out = asyncio.run(asyncio.wait_for(main(), 20))
    assert got == [data] * 8
    assert out.passes == 1 and out.digest.size == len(data)
    assert [offset for offset, _ in reads] == list(range(0, len(data), 16_384))  # once


def test_a_host_that_joins_after_the_first_bytes_went_gets_a_pass_of_its_own(
        source_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = source_file
    reads = count_reads(monkeypatch)

    async def main() -> tuple[bytes, bytes, FanOut]:
        out = fanout(path)
        await out.open()
        early = await drain(out.expect())  # done before the next host had a fork slot
        late = await drain(out.expect())
        return early, late, out

    early, late, out = asyncio.run(asyncio.wait_for(main(), 20))
    assert early == late == data
    assert out.passes == 2 and len(reads) == 2 * len(range(0, len(data), 16_384))


@pytest.mark.parametrize(("hosts", "forks"), [(6, 2), (7, 3), (20, 5)])
def test_with_fewer_forks_than_hosts_the_hosts_go_in_waves_of_one_pass_each(
        source_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch, hosts: int,
        forks: int) -> None:
    path, data = source_file
    reads = count_reads(monkeypatch)

    async def main() -> tuple[list[bytes], FanOut]:
        out = fanout(path)
        await out.open()
        slots = asyncio.Semaphore(forks)  # as Group's forks cap

        async def host(n: int) -> bytes:
            async with slots:
                share = out.expect()
                await asyncio.sleep(0.001 * (n % 3))  # connecting takes a moment, unevenly
                got = await drain(share, delay=0.0002 * (n % 2), close=False)
            share.close()  # after the slot went to the next host
            return got

        got = await asyncio.gather(*(host(n) for n in range(hosts)))
        return got, out

    got, out = asyncio.run(asyncio.wait_for(main(), 30))
    assert got == [data] * hosts
    waves = -(-hosts // forks)
    assert out.passes == waves  # not a pass for each host that took a freed slot
    assert len(reads) == waves * len(range(0, len(data), 16_384))


def test_a_pass_waits_for_a_host_still_connecting_only_up_to_the_window(
        source_file: tuple[Path, bytes]) -> None:
    path, data = source_file

    async def main() -> tuple[bytes, float, FanOut]:
        out = fanout(path, window=0.3)
        await out.open()
        share, never = out.expect(), out.expect()  # the second never gets to read
        started = time.monotonic()
        got = await drain(share)
        never.close()
        return got, time.monotonic() - started, out

    got, took, out = asyncio.run(asyncio.wait_for(main(), 20))
    assert got == data and out.passes == 1
    assert 0.25 <= took < 3.0  # held for the window, then let go


def test_a_host_that_will_not_send_lets_the_pass_go_at_once(
        source_file: tuple[Path, bytes]) -> None:
    path, data = source_file

    async def main() -> tuple[bytes, float]:
        out = fanout(path, window=30.0)
        await out.open()
        share, unchanged = out.expect(), out.expect()

        async def answered() -> None:
            await asyncio.sleep(0.05)
            unchanged.close()  # its server had the file: it never joins

        started = time.monotonic()
        got, _ = await asyncio.gather(drain(share), answered())
        return got, time.monotonic() - started

    got, took = asyncio.run(asyncio.wait_for(main(), 20))
    assert got == data and took < 5.0  # not the 30 s window


def test_a_host_that_fails_mid_way_does_not_stall_the_others_and_nothing_is_held_long(
        source_file: tuple[Path, bytes]) -> None:
    path, data = source_file
    held: list[int] = []

    async def main() -> list[bytes]:
        out = fanout(path)
        await out.open()
        shares = [out.expect() for _ in range(4)]

        async def watch() -> None:
            while True:
                current = out._current
                if current is not None:
                    held.append(current.relay.held)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        try:
            return await asyncio.gather(drain(shares[0]), drain(shares[1], stop_after=50_000),
                                        drain(shares[2], delay=0.001), drain(shares[3]))
        finally:
            watcher.cancel()

    got = asyncio.run(asyncio.wait_for(main(), 20))
    assert got[0] == got[2] == got[3] == data
    assert got[1] == data[:len(got[1])] and 50_000 <= len(got[1]) < len(data)
    assert held and max(held) <= 65_536


def test_a_file_that_shrank_after_its_hash_fails_every_host_of_the_pass(
        source_file: tuple[Path, bytes]) -> None:
    path, _ = source_file

    async def main() -> list[BaseException | bytes]:
        out = fanout(path)
        await out.open()
        shares = [out.expect() for _ in range(3)]
        os.truncate(path, 100_000)
        return await asyncio.gather(*(drain(s) for s in shares), return_exceptions=True)

    results = asyncio.run(asyncio.wait_for(main(), 20))
    assert all(isinstance(r, LocalFileError) and r.code == "changed_while_reading"
               for r in results), results


def test_an_unreadable_local_file_is_refused_at_open(tmp_path: Path) -> None:
    with pytest.raises(LocalFileError, match="No such file"):
        asyncio.run(FanOut(tmp_path / "missing").open())
    with pytest.raises(LocalFileError, match="is a directory"):
        asyncio.run(FanOut(tmp_path).open())


# --- the rules around it -------------------------------------------------------------------


@pytest.mark.parametrize(("host", "folder"), [
    ("web01", "web01"), ("10.0.0.1", "10.0.0.1"), ("a/b", "a_b"), ("..", "_.."),
    (".", "_."), ("[::1]", "[::1]"),
])
def test_each_host_gets_a_directory_name_of_its_own(host: str, folder: str) -> None:
    assert host_dir(host) == folder


def test_hosts_that_would_share_a_directory_are_refused() -> None:
    check_host_dirs(["web01", "web02", "10.0.0.1"])
    with pytest.raises(ConfigError, match="'a/b' and 'a_b' would share"):
        check_host_dirs(["a/b", "a_b"])


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 1e8])
def test_a_bad_timeout_is_refused(timeout: float) -> None:
    with pytest.raises(InvalidRequest):
        check_timeout(timeout)
    check_timeout(None)
    check_timeout(0.5)
