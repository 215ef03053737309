"""ChildProcess keeps its exited leader unreaped while it may signal its group (server/exec/child).

The group's ID is the leader's PID, which Linux gives out again only once the leader is reaped
and no process is left in the group: so a signal sent while the leader is kept reaches the
command's remaining processes, or nobody, and never another group that took the ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rexec.server.exec.child import ChildProcess

STEP = 5.0  # seconds any one wait may take
PIDFD_OPEN = os.pidfd_open  # the test's own, whatever the watch fixture does to ChildProcess's


def _state(pid: int) -> str:
    """The state letter of ``pid`` ("Z" for a zombie), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _alive(pid: int) -> bool:
    return _state(pid) not in ("Z", "X", "gone")


async def _dead(pid: int) -> bool:
    """Whether ``pid`` (not our child: its reaper is init) ends within STEP seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STEP):
            while _alive(pid):
                await asyncio.sleep(0.02)
    return not _alive(pid)


def _start(script: str, kill_grace: float = 5.0) -> ChildProcess:
    popen = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True, close_fds=True)
    return ChildProcess(popen, kill_grace)


async def _member(child: ChildProcess) -> tuple[int, int]:
    """The PID the command printed (a process it left in its group) and a pidfd of it."""
    buffer = bytearray(4096)
    async with asyncio.timeout(STEP):
        count = await child.read_into(1, buffer)
    pid = int(buffer[:count])
    return pid, PIDFD_OPEN(pid)  # at once, while it surely runs: cleanup kills by pidfd


async def _end(child: ChildProcess, *pidfds: int) -> None:
    """Kill what is left (by pidfd: a bare PID may be someone else's by now) and reap."""
    for pidfd in pidfds:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
    if not child.reaped.done():
        os.kill(child.pid, signal.SIGKILL)  # unreaped: the PID is still the leader's
    child.close()
    child.kill_now()
    async with asyncio.timeout(STEP):
        await child.reaped


@pytest.fixture(params=["pidfd", "thread", "poll"])
def watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """How the leader's exit is watched: pidfd, else a thread in waitid(), else polling."""
    if request.param != "pidfd":
        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(38, "pidfd_open: not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
        if request.param == "poll":
            monkeypatch.delattr(os, "waitid")
    yield request.param


def test_a_signal_after_the_leader_exits_reaches_the_group_left(watch: str) -> None:
    async def main() -> None:
        child = _start("sleep 30 >/dev/null 2>&1 & echo $!")
        pid, pidfd = await _member(child)
        try:
            async with asyncio.timeout(STEP):
                assert (await child.wait()).exit_code == 0
            subprocess.run(["true"], check=True)  # subprocess's own reaping leaves it alone
            if watch == "poll":  # reaped at once: the ID may be reused, so it is not signalled
                assert _state(child.pid) == "gone"
                assert not child.signal_group(signal.SIGTERM)
                await asyncio.sleep(0.2)
                assert _alive(pid)
                return
            assert _state(child.pid) == "Z"  # kept: the group's ID stays the command's
            assert child.signal_group(signal.SIGTERM)
            assert await _dead(pid)
            assert _state(child.pid) == "Z"
        finally:
            await _end(child, pidfd)
        assert _state(child.pid) == "gone"

    asyncio.run(main())


def test_no_signal_once_closed_even_while_a_member_runs() -> None:
    async def main() -> None:
        child = _start("sleep 30 >/dev/null 2>&1 & echo $!")
        pid, pidfd = await _member(child)
        try:
            async with asyncio.timeout(STEP):
                await child.wait()
            child.close()
            assert child.reaped.done()  # nothing due: reaped at once
            assert _state(child.pid) == "gone"
            assert not child.signal_group(signal.SIGKILL)
            child.terminate()
            await asyncio.sleep(0.2)
            assert _alive(pid)  # untouched: the server let the group go
        finally:
            await _end(child, pidfd)

    asyncio.run(main())


def test_a_sigkill_due_at_close_goes_out_before_the_leader_is_reaped() -> None:
    told: list[str] = []

    async def main() -> None:
        # the member prints its PID once it ignores SIGTERM
        child = _start("(trap '' TERM; exec /bin/sh -c 'echo $$; exec sleep 30') & exec sleep 30",
                       kill_grace=0.5)
        child.on_close = lambda pgid: told.append(_state(pgid))  # the guardian's forget
        pid, pidfd = await _member(child)
        try:
            child.terminate()
            async with asyncio.timeout(STEP):
                assert (await child.wait()).signal == signal.SIGTERM
            child.close()
            assert not child.reaped.done()  # a SIGKILL is due: the zombie keeps the ID
            assert _state(child.pid) == "Z"
            assert _alive(pid)  # it ignores SIGTERM
            async with asyncio.timeout(STEP):
                await child.reaped
            assert await _dead(pid)  # the SIGKILL reached it
            assert _state(child.pid) == "gone"
        finally:
            await _end(child, pidfd)

    asyncio.run(main())
    assert told == ["Z"]  # told once, while the ID was still the group's


def test_a_leader_reaped_behind_our_back_is_not_signalled_again() -> None:
    async def main() -> None:
        child = _start("sleep 30 >/dev/null 2>&1 & echo $!")
        pid, pidfd = await _member(child)
        try:
            async with asyncio.timeout(STEP):
                await child.wait()
            os.waitpid(child.pid, 0)  # as a stray waitpid(-1) or SIGCHLD ignored would
            assert not child.signal_group(signal.SIGTERM)
            assert child.reaped.done()
            assert _alive(pid)
        finally:
            await _end(child, pidfd)

    asyncio.run(main())


def test_live_groups_are_those_with_a_process_that_is_not_a_zombie() -> None:
    from rexec.server.exec.child import live_groups

    running = subprocess.Popen(["sleep", "30"], start_new_session=True)
    ended = subprocess.Popen(["true"], start_new_session=True)
    try:
        os.waitid(os.P_PID, ended.pid, os.WEXITED | os.WNOWAIT)  # a zombie, alone in its group
        assert live_groups({running.pid, ended.pid}) == {running.pid}
    finally:
        running.kill()
        running.wait()
        ended.wait()


def test_a_pipe_output_counts_what_waits_even_after_its_writer_closed() -> None:
    """ready() says how many bytes wait; bytes left by a writer that has closed are counted
    (not taken for the end of file), and the end of file comes once they are taken."""

    async def main() -> tuple[int, bytes, int, int, object]:
        child = _start("printf abcdefgh; printf xyz >&2")
        async with asyncio.timeout(STEP):
            await child.wait()  # exited: its pipes hung up, their bytes still in them
        out = child.pipe_output(1)
        assert out is not None
        waiting = await out.ready()
        buffer = bytearray(3)
        taken = out.take(memoryview(buffer))
        rest = await out.ready()
        out.take(memoryview(bytearray(16)))
        end = await out.ready()
        closed = child.pipe_output(1)  # None once its end of file was seen
        err = child.pipe_output(2)
        assert err is not None and await err.ready() == 3
        await _end(child)
        return waiting, bytes(buffer[:taken]), rest, end, closed

    assert asyncio.run(main()) == (8, b"abc", 5, 0, None)


def test_a_quiet_pipe_after_the_leader_exited_is_let_go() -> None:
    """As read_into: a background process holding the pipe open, quiet for the grace."""

    async def main() -> int:
        child = _start("sleep 5 & exit 0")
        async with asyncio.timeout(STEP):
            await child.wait()
        out = child.pipe_output(1)
        assert out is not None
        async with asyncio.timeout(STEP):
            count = await out.ready(quiet_after_exit=0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        await _end(child)
        return count

    assert asyncio.run(main()) == -1
