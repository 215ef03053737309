"""One stdin for many hosts: read once, every host gets every chunk, at most two held."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

from rexec.fleet.stdin import Broadcast, shared_stdin


def test_every_listener_gets_every_chunk_and_the_source_is_read_once() -> None:
    reads: list[int] = []

    async def source() -> AsyncIterator[bytes]:
        for n in range(50):
            reads.append(n)
            yield b"%d," % n

    async def listener(stdin: Broadcast, delay: float) -> bytes:
        chunks, release = stdin.for_host()
        got = bytearray()
        taken = 0
        async for chunk in chunks:  # type: ignore[union-attr]
            taken += 1
            assert len(reads) <= taken + 1  # at most one chunk read ahead of any listener
            got += chunk
            await asyncio.sleep(delay)
        release()
        return bytes(got)

    async def main() -> list[bytes]:
        stdin = Broadcast(source())
        return await asyncio.gather(listener(stdin, 0), listener(stdin, 0.001),
                                    listener(stdin, 0))

    expected = b"".join(b"%d," % n for n in range(50))
    assert asyncio.run(main()) == [expected] * 3
    assert reads == list(range(50))


def test_a_listener_that_leaves_does_not_stall_the_others() -> None:
    async def main() -> bytes:
        stdin = Broadcast([b"a", b"b", b"c"])
        quitter, release = stdin.for_host()
        stayer, _ = stdin.for_host()
        first = await anext(quitter)  # type: ignore[arg-type]
        assert first == b"a"
        release()  # its host ended (it never asked for more)
        return b"".join([chunk async for chunk in stayer])  # type: ignore[union-attr]

    assert asyncio.run(asyncio.wait_for(main(), 5)) == b"abc"


def test_a_source_that_fails_ends_every_listener_and_is_kept() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x"
        raise OSError("read error")

    async def main() -> tuple[bytes, BaseException | None]:
        stdin = Broadcast(broken())
        chunks, _ = stdin.for_host()
        got = b"".join([chunk async for chunk in chunks])  # type: ignore[union-attr]
        return got, stdin.error

    got, error = asyncio.run(main())
    assert got == b"x" and isinstance(error, OSError)


def test_bytes_are_shared_not_copied_and_files_are_read_with_pread(tmp_path: Path) -> None:
    data = b"same object"
    assert shared_stdin(data, live=True).for_host()[0] is data
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")

    async def read_all(source: object) -> bytes:
        return b"".join([c async for c in source])  # type: ignore[attr-defined]

    with path.open("rb") as fh:
        fh.read(3)  # a file already partly read is sent from where it stands
        shared = shared_stdin(fh, live=False)
        one, two = shared.for_host()[0], shared.for_host()[0]
        assert asyncio.run(read_all(one)) == asyncio.run(read_all(two)) == b"3456789"
    assert isinstance(shared_stdin(io.BytesIO(b"x"), live=True), Broadcast)
