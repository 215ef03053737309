"""PtyChild reads its master from the event loop's callback (server/exec/pty).

The master stays registered with the loop from the first wait to the end, is read in the
callback as soon as it is readable, and is dropped from the loop when output arrives that
nobody waits for (so output held back for a slow client never spins the loop). These tests
drive real children on real PTYs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest

from rexec.server.exec.pty import PtyChild, popen_on_pty

STEP = 5.0  # seconds any one wait may take
WINDOW = (24, 80, 0, 0)
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "dumb"}


@contextlib.asynccontextmanager
async def _pty(script: str) -> AsyncIterator[PtyChild]:
    """``/bin/sh -c script`` on a new PTY; its group killed and the leader reaped on the way out."""
    popen, master, tty = popen_on_pty(["/bin/sh", "-c", script], ENV, None, window=WINDOW,
                                      umask=0o022, setup=None)
    child = PtyChild(popen, master, tty, kill_grace=0.5)
    try:
        yield child
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.close()
        async with asyncio.timeout(STEP):
            await child.reaped


def _watched(fd: int) -> bool:
    """Whether the running loop watches ``fd`` for reading."""
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    key = selector.get_map().get(fd)
    return key is not None and key.data[0] is not None


async def _read_all(child: PtyChild, buffer: bytearray) -> bytes:
    """Everything until end of file."""
    got = bytearray()
    async with asyncio.timeout(STEP):
        while (count := await child.read_into(1, buffer)) > 0:
            got += buffer[:count]
    return bytes(got)


def test_output_arrives_whole_in_few_reads_and_ends_at_eio() -> None:
    async def main() -> None:
        # 200,000 bytes: a terminal hands out a few KiB a read; the rest is read on at once
        async with _pty("head -c 200000 /dev/zero | tr '\\0' x; sleep 0.2") as child:
            buffer = bytearray(256 * 1024)
            await asyncio.sleep(0.3)  # the terminal fills up meanwhile (the writer then waits)
            async with asyncio.timeout(STEP):
                first = await child.read_into(1, buffer)
            assert first > 4096  # read on past the terminal's chunk, not one frame per chunk
            assert set(buffer[:first]) == {ord("x")}
            rest = await _read_all(child, buffer)
            assert b"x" * first + rest == b"x" * 200_000
            assert await child.read_into(1, bytearray(16)) == 0  # the end stays the end
            assert not _watched(child._master)  # closed at the end, not left on the loop

    asyncio.run(main())


def test_a_waiting_read_gets_what_is_typed_back() -> None:
    async def main() -> None:
        async with _pty("stty -echo; echo ready; read line; echo got:$line") as child:
            buffer = bytearray(4096)
            seen = b""
            async with asyncio.timeout(STEP):
                while b"ready\r\n" not in seen:  # the whole line: its end may come apart
                    seen += buffer[:await child.read_into(1, buffer)]
                reading = asyncio.ensure_future(child.read_into(1, buffer))
                await asyncio.sleep(0.05)
                assert not reading.done()  # nothing to read: it waits on the loop
                assert _watched(child._master)
                assert child.write_now(b"hello\r") == 6
                seen = b""
                count = await reading
                seen += buffer[:count]
                while b"got:hello" not in seen:
                    seen += buffer[:await child.read_into(1, buffer)]
            assert b"got:hello" in seen

    asyncio.run(main())


def test_output_nobody_waits_for_takes_the_master_off_the_loop() -> None:
    async def main() -> None:
        async with _pty("echo first; read x; echo second; sleep 5") as child:
            buffer = bytearray(4096)
            async with asyncio.timeout(STEP):
                assert b"first" in buffer[:await child.read_into(1, buffer)]
                # the next read registers the master and finds "first"'s echo drained
                reading = asyncio.ensure_future(child.read_into(1, buffer))
                await asyncio.sleep(0.05)
                assert _watched(child._master)
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
                child.write_now(b"go\r")  # the shell now writes "go" and "second" unread
                while _watched(child._master):  # one readiness with nobody waiting: dropped
                    await asyncio.sleep(0.01)
                got = b""
                while b"second" not in got:  # nothing was lost: the next read has it all
                    got += buffer[:await child.read_into(1, buffer)]
            assert b"second" in got

    asyncio.run(main())


@pytest.mark.parametrize("quiet", [0.2])
def test_a_background_holder_of_the_terminal_does_not_hang_the_read(quiet: float) -> None:
    async def main() -> None:
        # the leader exits; a background sleep that ignores the terminal's hangup keeps the
        # slave open, so no EIO comes until it ends
        # (ignored from the start: the ignored SIGHUP is inherited, so no race with the exit)
        async with _pty("trap '' HUP; sleep 30 & echo started") as child:
            buffer = bytearray(4096)
            got = b""
            async with asyncio.timeout(STEP):
                while b"started" not in got:
                    count = await child.read_into(1, buffer, quiet_after_exit=quiet)
                    assert count > 0
                    got += buffer[:count]
                await child.wait()
                while (count := await child.read_into(1, buffer, quiet_after_exit=quiet)) > 0:
                    pass  # what the shell wrote after "started", if anything
            assert count == -1  # quiet for `quiet` seconds after the leader's exit

    asyncio.run(main())
