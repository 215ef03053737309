"""Command output spliced from the child's pipes into the socket, beside the same output read
and sent (``splice = false``): a real Server in the test's event loop, real children, a real
rexec.Client, and ``os.splice`` counted (wrapped, never replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

import rexec
from rexec.server.audit import AuditLog
from rexec.server.exec.child import PipeOutput
from rexec.server.identity import Identities, Identity, Policy
from rexec.server.listener import Server
from rexec.wire.auth import TokenVerifier
from tests.helpers import TOKEN
from tests.helpers import interleaved_output as expected
from tests.helpers import interleaved_writer as writer_command

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice is Linux's")

@dataclass
class Counts:
    """What the wrapped os.splice and PipeOutput.take saw."""

    spliced: int = 0  # bytes os.splice moved
    full: int = 0  # times it found the socket full (the body waited for room)
    taken: int = 0  # bytes read from a pipe by a pump that could not splice them then
    calls: list[int] = field(default_factory=list)


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counts:
    seen = Counts()
    real_splice, real_take = os.splice, PipeOutput.take

    def splice(src: int, dst: int, count: int, *args: object, **kwargs: object) -> int:
        try:
            moved = real_splice(src, dst, count, *args, **kwargs)  # type: ignore[arg-type]
        except BlockingIOError:
            seen.full += 1
            raise
        seen.spliced += moved
        seen.calls.append(moved)
        return moved

    def take(self: PipeOutput, view: memoryview) -> int:
        count = real_take(self, view)
        seen.taken += count
        return count

    monkeypatch.setattr(os, "splice", splice)
    monkeypatch.setattr(PipeOutput, "take", take)
    return seen


@contextlib.asynccontextmanager
async def serving(*, splice: bool) -> AsyncIterator[str]:
    identities = Identities({"default": Identity("default", TokenVerifier.from_token(TOKEN),
                                                 policy=Policy())})
    log = AuditLog(None)
    log.open()
    server = Server(identities, port=0, audit=log, splice=splice)
    host, port = (await server.start())[0]
    try:
        yield f"{host}:{port}"
    finally:
        await server.close()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("splice", [True, False], ids=["spliced", "read"])
def test_interleaved_streams_arrive_byte_exact_spliced_or_read(splice: bool,
                                                                counts: Counts) -> None:
    out, err = expected(seed=17, chunks=60)

    async def main() -> rexec.Result:
        async with serving(splice=splice) as address, \
                rexec.Client(address, token=TOKEN) as client:
            return await client.run(writer_command(17, 60))

    result = asyncio.run(main())
    assert result.exit_code == 0, result.stderr[-500:]
    assert (len(result.stdout), len(result.stderr)) == (len(out), len(err))
    assert digest(result.stdout) == digest(out)
    assert digest(result.stderr) == digest(err)
    assert (result.stdout_bytes, result.stderr_bytes) == (len(out), len(err))
    if splice:
        # Most of it moved in the kernel; a frame never carries more than the protocol's 1 MiB.
        assert counts.spliced > (len(out) + len(err)) // 2, counts
        assert max(counts.calls) <= 1024 * 1024
    else:
        assert counts.spliced == 0
        assert counts.taken == 0  # the copying pump reads through read_into, not take()


TICKER = ("import os, time\nfor i in range(300):\n    os.write(2, b'%05d\\n' % i)\n"
          "    time.sleep(0.005)")


def test_a_slow_reader_gets_every_byte_while_bodies_wait_for_room(counts: Counts) -> None:
    """The client stops reading for a while: the socket fills, and a spliced stdout body
    waits for room while a second process goes on writing stderr, whose frames are read
    and held behind the body (not spliced meanwhile). Nothing is lost or interleaved
    mid-frame when the client reads again."""
    out, _ = expected(seed=5, chunks=90)
    ticks = b"".join(b"%05d\n" % i for i in range(300))
    command = (f"{writer_command(5, 90)} 2>/dev/null & "
               f"{sys.executable} -c \"{TICKER}\"; wait")
    got: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    async def main() -> rexec.Result:
        async with serving(splice=True) as address, \
                rexec.Client(address, token=TOKEN) as client:
            stream = client.stream(command)
            paused = False
            async for chunk in stream:
                got[chunk.stream] += chunk.data
                if not paused and chunk.stream == "stdout":
                    paused = True
                    await asyncio.sleep(0.5)  # the kernel's buffers fill meanwhile
            assert stream.result is not None
            return stream.result

    result = asyncio.run(main())
    assert result.exit_code == 0
    assert digest(bytes(got["stdout"])) == digest(out)
    assert bytes(got["stderr"]) == ticks
    assert counts.full > 0, "the socket never filled: the wait for room was not exercised"
    assert counts.spliced + counts.taken == len(out) + len(ticks)
    assert counts.taken > 0, "no frame was sent the other way while a body was on its way"


def test_the_output_budget_is_exact_when_spliced(counts: Counts) -> None:
    from rexec.server.limits import ServerLimits

    identities = Identities({"default": Identity("default", TokenVerifier.from_token(TOKEN),
                                                 policy=Policy())})

    async def main() -> rexec.Result:
        log = AuditLog(None)
        log.open()
        server = Server(identities, port=0, audit=log, limits=ServerLimits(max_output=3_000_001))
        host, port = (await server.start())[0]
        try:
            async with rexec.Client(f"{host}:{port}", token=TOKEN) as client:
                return await client.run("head -c 50000000 /dev/zero")
        finally:
            await server.close()

    result = asyncio.run(main())
    assert result.exceeded == "max_output"
    assert len(result.stdout) == result.stdout_bytes == 3_000_001
    assert counts.spliced > 0

