"""rexec.Group against real servers: 20 loopback "hosts" (127.0.0.2-21) served by one process,
real children, a host with nothing listening and one with the wrong token."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import rexec
from rexec.client.options import ConnectOptions
from rexec.fleet.group import Group, run_group
from rexec.fleet.outcome import CommandOutcome
from rexec.fleet.target import Target
from tests.helpers import TOKEN, ManyServers, pids_in_group, start_many_servers, wait_until

HOSTS = 20


@pytest.fixture(scope="module")
def many() -> Iterator[ManyServers]:
    servers = start_many_servers(HOSTS)
    yield servers
    assert servers.stop() == 0


def targets(servers: ManyServers, count: int = HOSTS, *, token: str = TOKEN) -> list[Target]:
    return [Target(f"h{n:02d}", ConnectOptions.resolve(address, token=token))
            for n, address in enumerate(servers.addresses[:count], 1)]


def down_target() -> Target:
    """A host with nothing listening: a port just bound and closed again on 127.0.0.99."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.99", 0))
        port = sock.getsockname()[1]
    return Target("down", ConnectOptions.resolve(f"127.0.0.99:{port}", token=TOKEN))


def test_every_host_runs_and_the_down_and_refused_hosts_are_unreachable(
        many: ManyServers) -> None:
    wrong = Target("wrongtoken", ConnectOptions.resolve(many.addresses[0],
                                                       token="not-the-token-0123456789"))
    group = Group([*targets(many), down_target(), wrong], forks=8)
    done: list[rexec.HostOutcome] = []
    result = asyncio.run(group.run("echo hello; echo warn >&2", on_done=done.append))
    assert sorted(o.host for o in done) == sorted(t.name for t in group.targets)
    assert {o.host: o for o in done} == result.outcomes  # each reported once, as it finished
    assert set(result.unreachable) == {"down", "wrongtoken"}
    assert "refused" in result.unreachable["down"]
    assert "token" in result.unreachable["wrongtoken"].lower()
    assert result.succeeded == [f"h{n:02d}" for n in range(1, HOSTS + 1)]
    assert list(result) == result.succeeded  # the mapping: hosts that ran, in target order
    assert all(r.stdout == b"hello\n" and r.stderr == b"warn\n" for r in result.values())
    assert not result.ok and result.exit_status == 3
    outcome = result.outcomes["h01"]
    assert (outcome.address, outcome.status, outcome.error) == (many.addresses[0], "ok", None)
    assert all(d > 0 for d in result.durations.values())


def test_exit_statuses_all_ok_then_one_failed(many: ManyServers, tmp_path: Path) -> None:
    ok = asyncio.run(Group(targets(many)).run("true"))
    assert (ok.ok, ok.exit_status, ok.failed) == (True, 0, [])
    # exactly one host makes the directory: the other 19 fail, every host was reached
    once = asyncio.run(Group(targets(many)).run(f"mkdir {tmp_path / 'once'}"))
    assert (len(once.succeeded), len(once.failed), once.exit_status) == (1, HOSTS - 1, 1)
    assert all(once[host].exit_code == 1 for host in once.failed)


def test_a_host_that_times_out_keeps_its_output(many: ManyServers, tmp_path: Path) -> None:
    flag = tmp_path / "slow"
    command = f"echo started; if mkdir {flag}; then sleep 30; fi; echo done"
    result = asyncio.run(Group(targets(many, 5)).run(command, timeout=1.5))
    assert len(result.timed_out) == 1 and len(result.succeeded) == 4
    slow = result[result.timed_out[0]]
    assert slow.timed_out and slow.stdout == b"started\n"
    assert result.exit_status == 1


def _sleepers(folder: Path) -> str:
    return (f"echo $$ > {folder}/tmp.$$ && mv {folder}/tmp.$$ {folder}/pid.$$;"
            " sleep 60 & sleep 60")


def _pgids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("pid.*")]


@pytest.mark.parametrize("how", ["group.cancel", "task.cancel"])
def test_cancelling_stops_every_remote_command(many: ManyServers, tmp_path: Path,
                                               how: str) -> None:
    group = Group(targets(many))
    done: list[rexec.HostOutcome] = []

    async def main() -> rexec.GroupResult | None:
        task = asyncio.create_task(group.run(_sleepers(tmp_path), on_done=done.append))
        while len(_pgids(tmp_path)) < HOSTS:
            await asyncio.sleep(0.05)
        for _ in range(200):  # the pid file is written just before the sleeps start
            if all(len(pids_in_group(pgid)) >= 2 for pgid in _pgids(tmp_path)):
                break
            await asyncio.sleep(0.05)
        assert all(len(pids_in_group(pgid)) >= 2 for pgid in _pgids(tmp_path))
        if how == "group.cancel":
            group.cancel()
            return await task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return group.result

    result = asyncio.run(main())
    assert result is not None
    assert result.cancelled == [t.name for t in group.targets]
    assert result.exit_status == 130 and result.interrupted
    assert sorted(o.host for o in done) == result.cancelled
    for pgid in _pgids(tmp_path):
        assert wait_until(lambda pgid=pgid: not pids_in_group(pgid)), pgid


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_twenty_megabytes_of_stdin_reach_ten_hosts_in_bounded_memory(many: ManyServers) -> None:
    size, chunk = 20 << 20, 1 << 16
    seed = random.Random(12)
    blocks = [seed.randbytes(chunk) for _ in range(7)]  # cheap, and not one repeated block
    expected = hashlib.sha256()
    for n in range(size // chunk):
        expected.update(blocks[n % 7])

    async def source() -> AsyncIterator[bytes]:
        for n in range(size // chunk):
            yield blocks[n % 7]

    _peak_rss_reset()
    before = _peak_rss()
    result = asyncio.run(Group(targets(many, 10)).run("sha256sum", stdin=source()))
    growth = _peak_rss() - before
    assert result.ok, result.statuses
    sums = {r.stdout.split()[0].decode() for r in result.values()}
    assert sums == {expected.hexdigest()}
    assert growth < 20 << 20, f"client peak RSS grew {growth / 2**20:.1f} MB"


def test_stdin_from_a_file_reaches_more_hosts_than_forks(many: ManyServers,
                                                         tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "input"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    with path.open("rb") as fh:
        from_file = asyncio.run(Group(targets(many, 10), forks=3).run("sha256sum", stdin=fh))

    async def pipe_like() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100_000):
            yield data[start:start + 100_000]

    spooled = asyncio.run(Group(targets(many, 10), forks=3).run("sha256sum", stdin=pipe_like()))
    as_bytes = asyncio.run(Group(targets(many, 10)).run("sha256sum", stdin=data))
    for result in (from_file, spooled, as_bytes):
        assert {r.stdout.split()[0].decode() for r in result.values()} == {digest}
        assert len(result) == 10


def test_a_batch_stops_each_host_at_its_first_failure(many: ManyServers,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    connects = []
    real_connect = rexec.Client.connect

    async def counting(self: rexec.Client) -> None:
        connects.append(self.address)
        await real_connect(self)

    monkeypatch.setattr(rexec.Client, "connect", counting)
    text = "# a batch\necho one\n\nexit 3\necho \\\n  three\n"
    stopped = asyncio.run(Group(targets(many)).batch(text))
    assert len(connects) == HOSTS  # one connection per host for all its commands
    assert stopped.failed == [t.name for t in targets(many)] and stopped.exit_status == 1
    outcome = stopped.outcomes["h03"]
    assert [(c.line, c.command) for c in outcome.commands] == [(2, "echo one"), (4, "exit 3")]
    assert outcome.failed_line == 4 and stopped["h03"].exit_code == 3
    assert outcome.commands[0].result is not None
    assert outcome.commands[0].result.stdout == b"one\n"

    going = asyncio.run(Group(targets(many)).batch(text, keep_going=True))
    outcome = going.outcomes["h03"]
    assert [c.line for c in outcome.commands] == [2, 4, 5]
    assert outcome.failed_line == 4 and outcome.status == "failed"
    assert outcome.commands[2].result is not None
    assert outcome.commands[2].result.stdout == b"three\n"
    assert going["h03"].exit_code == 3  # the Result shown is the failing command's

    fine = asyncio.run(Group(targets(many, 3)).batch(["echo a", "echo b"], timeout=10))
    assert fine.ok and fine["h01"].stdout == b"b\n"
    assert fine.outcomes["h01"].failed_line is None


def test_a_batch_command_timeout_is_per_command(many: ManyServers) -> None:
    ended: list[tuple[str, int, str]] = []
    result = asyncio.run(Group(targets(many, 2)).batch(
        ["echo a", "sleep 30", "echo c"], timeout=1,
        on_command=lambda host, index, status, _: ended.append((host, index, status))))
    assert result.timed_out == ["h01", "h02"]
    assert result.outcomes["h01"].failed_line == 2
    assert sorted(ended) == [("h01", 0, "ok"), ("h01", 1, "timed_out"),
                             ("h02", 0, "ok"), ("h02", 1, "timed_out")]


def test_on_command_sees_each_command_as_it_ends_before_its_host_ends(
        many: ManyServers) -> None:
    seen: list[tuple[str, ...]] = []

    def on_command(host: str, index: int, status: str, outcome: CommandOutcome) -> None:
        assert outcome.result is not None
        seen.append((host, str(index), status, outcome.command, outcome.result.stdout.decode()))

    result = asyncio.run(Group(targets(many, 3)).batch(
        ["echo one", "echo two >&2; echo two", "echo three"], capture=True,
        on_command=on_command,
        on_done=lambda outcome: seen.append((outcome.host, "done", outcome.status))))
    assert result.ok
    for host in ("h01", "h02", "h03"):
        assert [item[1:] for item in seen if item[0] == host] == [
            ("0", "ok", "echo one", "one\n"),
            ("1", "ok", "echo two >&2; echo two", "two\n"),
            ("2", "ok", "echo three", "three\n"), ("done", "ok")]
    seen.clear()  # a host stopped at its failure: the command after it is never reported
    asyncio.run(Group(targets(many, 1)).batch(["true", "exit 4", "echo never"],
                                              on_command=on_command))
    assert [item[1:3] for item in seen] == [("0", "ok"), ("1", "failed")]


def test_the_live_stream_yields_each_hosts_output_and_then_the_result(
        many: ManyServers) -> None:
    async def main() -> tuple[list[tuple[str, str, bytes]], rexec.GroupResult | None]:
        seen = []
        async with Group(targets(many)).stream("echo out; echo err >&2") as live:
            async for item in live:
                seen.append(item)
        return seen, live.result

    seen, result = asyncio.run(main())
    assert sorted(seen) == sorted([(t.name, "stdout", b"out\n") for t in targets(many)]
                                  + [(t.name, "stderr", b"err\n") for t in targets(many)])
    assert result is not None and result.ok and len(result) == HOSTS
    assert result["h01"].stdout == b""  # stream() does not capture unless asked


def test_leaving_the_live_stream_early_cancels_every_host(many: ManyServers,
                                                          tmp_path: Path) -> None:
    async def main() -> rexec.GroupResult | None:
        async with Group(targets(many, 5)).stream(f"{_sleepers(tmp_path)}; echo x") as live:
            while len(_pgids(tmp_path)) < 5:
                await asyncio.sleep(0.05)
        return live.result

    result = asyncio.run(main())
    assert result is not None and len(result.cancelled) == 5
    for pgid in _pgids(tmp_path):
        assert wait_until(lambda pgid=pgid: not pids_in_group(pgid)), pgid


def test_on_output_sees_everything_and_capture_false_keeps_nothing(many: ManyServers) -> None:
    seen: list[tuple[str, str, bytes]] = []
    result = asyncio.run(Group(targets(many, 4)).run(
        "echo hi", capture=False, on_output=lambda *item: seen.append(item)))
    assert sorted(seen) == [(f"h0{n}", "stdout", b"hi\n") for n in range(1, 5)]
    assert all(r.stdout == b"" and r.stdout_bytes == 3 for r in result.values())


def test_run_group_blocks_and_resolves_a_pattern_through_an_inventory(
        many: ManyServers) -> None:
    class Inventory:
        def resolve(self, pattern: str) -> list[Target]:
            assert pattern == "@all"
            return targets(many)

    result = run_group("@all", "echo $((6 * 7))", inventory=Inventory(), forks=4)
    assert result.ok and {r.stdout for r in result.values()} == {b"42\n"}
    assert len(rexec.run_group(targets(many, 2), "true")) == 2


def test_the_caller_s_mistakes_are_found_before_anything_runs(many: ManyServers) -> None:
    group = Group(targets(many, 2))
    with pytest.raises(rexec.InvalidRequest, match="empty"):
        asyncio.run(group.run(""))
    with pytest.raises(rexec.InvalidRequest, match="no commands"):
        asyncio.run(group.batch("# only a comment\n\n"))
    with pytest.raises(rexec.ConfigError, match="inventory"):
        Group("@web")
    with pytest.raises(rexec.ConfigError, match="more than once"):
        Group(targets(many, 2) * 2)


def test_a_group_runs_one_command_at_a_time(many: ManyServers) -> None:
    async def main() -> rexec.GroupResult:
        group = Group(targets(many, 1))
        first = asyncio.create_task(group.run("sleep 0.3"))
        await asyncio.sleep(0)
        with pytest.raises(rexec.RexecError, match="already running"):
            await group.run("true")
        return await first

    assert asyncio.run(main()).ok


def test_a_command_the_server_cannot_start_fails_the_host_without_a_result(
        many: ManyServers, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    result = asyncio.run(Group(targets(many, 2)).batch(["true", "true"], cwd=missing,
                                                       keep_going=True))
    outcome = result.outcomes["h01"]
    assert outcome.status == "failed" and outcome.result is None and len(result) == 0
    assert outcome.error is not None and "missing" in outcome.error
    assert [c.error is not None for c in outcome.commands] == [True, True]
    assert outcome.failed_line == 1 and result.exit_status == 1


def test_the_readme_group_snippet_runs_as_written(many: ManyServers) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    snippet = next(block.split("```", 1)[0] for block in readme.split("```python\n")[1:]
                   if "rexec.Group(" in block)
    names = '("web01", "web02", "db01")'
    assert names in snippet and 'f"{name}:7878"' in snippet
    code = snippet.replace(names, repr(tuple(many.addresses[:3]))).replace('f"{name}:7878"',
                                                                           "name")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                       cwd=ROOT, env={**os.environ, "REXEC_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[3] == "{} [] 0" and lines[-2:] == ["True", "None"]


def test_hosts_waiting_for_a_fork_or_not_yet_begun_are_cancelled_too(many: ManyServers,
                                                                      tmp_path: Path) -> None:
    async def main() -> tuple[rexec.GroupResult, rexec.GroupResult, list[str]]:
        waiting = Group(targets(many), forks=2)
        task = asyncio.create_task(waiting.run(_sleepers(tmp_path)))
        while len(_pgids(tmp_path)) < 2:
            await asyncio.sleep(0.05)
        waiting.cancel()
        first = await task
        reported: list[str] = []
        unborn = Group(targets(many, 3))
        task = asyncio.create_task(unborn.run("true", on_done=lambda o: reported.append(o.host)))
        await asyncio.sleep(0)  # the run made its host tasks; none has begun
        unborn.cancel()
        return first, await task, reported

    first, unborn, reported = asyncio.run(main())
    assert len(first.cancelled) == HOSTS and len(first) == 2  # two had started their command
    assert all(first.outcomes[h].duration == 0 for h in first.cancelled if h not in first)
    assert unborn.cancelled == ["h01", "h02", "h03"] and reported == unborn.cancelled
    for pgid in _pgids(tmp_path):
        assert wait_until(lambda pgid=pgid: not pids_in_group(pgid)), pgid


def test_a_host_that_never_answers_is_unreachable_after_its_connect_timeout(
        many: ManyServers) -> None:
    with socket.socket() as silent:  # the kernel accepts; nobody ever speaks
        silent.bind(("127.0.0.98", 0))
        silent.listen()
        address = f"127.0.0.98:{silent.getsockname()[1]}"
        mute = Target("mute", ConnectOptions.resolve(address, token=TOKEN, connect_timeout=0.5))
        result = asyncio.run(Group([mute, *targets(many, 3)]).run("true"))
    assert list(result.unreachable) == ["mute"] and "0.5 s" in result.unreachable["mute"]
    assert result.succeeded == ["h01", "h02", "h03"] and result.exit_status == 3
    assert result.outcomes["mute"].duration < 5


def test_a_host_whose_server_dies_mid_command_is_unreachable_with_its_output_kept(
        many: ManyServers) -> None:
    doomed = start_many_servers(2, first=60)
    dying = [Target(f"d{n}", ConnectOptions.resolve(address, token=TOKEN))
             for n, address in enumerate(doomed.addresses, 1)]
    group = Group([*targets(many, 2), *dying])
    started: set[str] = set()

    def output(host: str, stream: str, data: bytes) -> None:
        started.add(host)
        if {"d1", "d2"} <= started and doomed.proc.poll() is None:
            doomed.proc.kill()  # the machine is gone: no exit frame, no goodbye

    try:
        result = asyncio.run(group.run("echo start; sleep 2.0117; echo end", on_output=output))
    finally:
        doomed.stop()
    assert result.succeeded == ["h01", "h02"]
    assert all(result[h].stdout == b"start\nend\n" for h in result.succeeded)
    assert sorted(result.unreachable) == ["d1", "d2"] and result.exit_status == 3
    for host in ("d1", "d2"):
        outcome = result.outcomes[host]
        assert "connection lost while running" in (outcome.error or ""), outcome.error
        assert outcome.result is not None and outcome.result.stdout == b"start\n"

    def orphans() -> bool:  # the dead server's children end on their own
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if b"sleep\x002.0117" in cmdline.read_bytes():
                    return True
            except OSError:
                continue  # it just ended
        return False

    assert wait_until(lambda: not orphans(), 10)
