"""FileOp's bookkeeping without a network: the upload window, and who may transfer at all."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rexec.errors import ProtocolError
from rexec.server.file_ops import (
    CREDIT_BATCH,
    HASH_APART_AT,
    WRITE_BATCH,
    FileOp,
    FileThread,
    roots_for,
)
from rexec.server.identity import Identity, Policy
from rexec.server.patterns import Pattern
from rexec.server.transfer import TransferError
from rexec.wire.auth import TokenVerifier
from rexec.wire.frames import (
    FILE_WINDOW,
    MAX_BODY_SIZE,
    Error,
    FileCredit,
    Header,
    Put,
    PutReady,
    TransferDone,
)

VERIFIER = TokenVerifier.from_token("a-token-for-the-file-op-tests-0123456789")


def identity(**policy: Any) -> Identity:
    return Identity("someone", VERIFIER, None, Policy(**policy))


class Link:
    """Records what the transfer sends and reports."""

    def __init__(self) -> None:
        self.lost = False
        self.file_thread = FileThread()
        self.sent: list[Header] = []
        self.reports: list[tuple[str, str, str]] = []
        self.allocate: Callable[[int], memoryview] | None = None  # the decoder's, as set

    def send(self, header: Header, body: bytes | memoryview = b"") -> None:
        self.sent.append(header)

    async def drain(self) -> None:
        pass

    def receive_bodies_into(self, allocate: Callable[[int], memoryview] | None) -> None:
        self.allocate = allocate

    def transfer_report(self, op: str, path: str, result: str, **fields: Any) -> bool:
        self.reports.append((op, path, result))
        return True


def test_the_client_may_not_send_more_than_the_window_without_credit(tmp_path: Path) -> None:
    async def main() -> None:
        link = Link()
        target = tmp_path / "f"
        op = FileOp(link, identity(), Put(path=str(target), file_size=4 * FILE_WINDOW,
                                          sha256=hashlib.sha256(b"").hexdigest()))
        chunk = memoryview(b"x" * MAX_BODY_SIZE)
        for _ in range(FILE_WINDOW // MAX_BODY_SIZE):  # no credit came back yet: just fits
            op.data(chunk)
        with pytest.raises(ProtocolError) as caught:
            op.data(memoryview(b"x"))
        assert caught.value.code == "file_overflow"
        op.cancel()
        async with asyncio.timeout(10):
            await op.task
        assert isinstance(link.sent[0], PutReady)
        assert isinstance(link.sent[-1], Error) and link.sent[-1].code == "cancelled"
        assert link.reports == [("put", str(target), "started"), ("put", str(target), "cancelled")]
        assert list(tmp_path.iterdir()) == []  # the temporary file went with the cancel

    asyncio.run(main())


def test_an_upload_is_written_in_order_and_credited_in_batches(tmp_path: Path) -> None:
    # The client sends whatever its credit allows; the server writes the queued bodies a
    # batch at a time and credits each batch back. A body the decoder reuses the buffer of is
    # copied (the buffer is scribbled over right after); a detached one is kept as it is.
    data = random.Random(5).randbytes(3 * FILE_WINDOW + 12345)
    target = tmp_path / "f"

    async def main() -> None:
        link = Link()
        op = FileOp(link, identity(), Put(path=str(target), file_size=len(data),
                                          sha256=hashlib.sha256(data).hexdigest()))
        sent, allowed, seen = 0, FILE_WINDOW, 0
        async with asyncio.timeout(30):
            while sent < len(data):
                while sent < min(allowed, len(data)):
                    buffer = bytearray(data[sent : sent + MAX_BODY_SIZE])
                    detached = (sent // MAX_BODY_SIZE) % 2 == 0
                    op.data(memoryview(buffer), detached=detached)
                    if not detached:
                        buffer[:] = bytes(len(buffer))  # the decoder's next read
                    sent += len(buffer)
                while not (credits := [h for h in link.sent[seen:]
                                       if isinstance(h, FileCredit)]) and sent < len(data):
                    await asyncio.sleep(0.001)
                seen = len(link.sent)
                allowed += sum(c.amount for c in credits)
            await op.task
        amounts = [h.amount for h in link.sent if isinstance(h, FileCredit)]
        assert amounts and all(CREDIT_BATCH <= a <= WRITE_BATCH for a in amounts), amounts
        assert isinstance(link.sent[-1], TransferDone) and link.sent[-1].changed

    asyncio.run(main())
    assert target.read_bytes() == data


async def _feed(op: FileOp, link: Link, data: bytes) -> None:
    """Send ``data`` as a client does: as far as the window and the credits allow."""
    sent, allowed, seen = 0, FILE_WINDOW, 0
    while sent < len(data) and not op.task.done():
        while sent < min(allowed, len(data)):
            piece = data[sent : sent + MAX_BODY_SIZE]
            if link.allocate is None:
                body = memoryview(piece)
            else:  # received into the transfer's buffer, as the decoder then does
                body = link.allocate(len(piece))
                body[:] = piece
            op.data(body, detached=True)
            sent = min(sent + MAX_BODY_SIZE, len(data))
        while (not (credits := [h for h in link.sent[seen:] if isinstance(h, FileCredit)])
               and sent < len(data) and not op.task.done()):
            await asyncio.sleep(0.001)
        seen = len(link.sent)
        allowed += sum(c.amount for c in credits)


@pytest.mark.parametrize("digest", ["in the put", "at the end"])
@pytest.mark.parametrize("sent", ["intact", "one byte changed"])
def test_a_large_upload_hashed_beside_its_writes_is_checked(tmp_path: Path, digest: str,
                                                            sent: str) -> None:
    # From HASH_APART_AT bytes on, the upload is hashed on another thread while it is
    # written: the digest it is checked against must still be of every byte, in order.
    data = random.Random(7).randbytes(2 * FILE_WINDOW + HASH_APART_AT + 4321)
    body = bytearray(data)
    if sent != "intact":
        body[len(body) // 2 + 17] ^= 0x40
    target = tmp_path / "f"
    target.write_bytes(b"the old file")
    sha256 = hashlib.sha256(data).hexdigest()

    async def main() -> None:
        link = Link()
        op = FileOp(link, identity(), Put(path=str(target), file_size=len(data),
                                          sha256=sha256 if digest == "in the put" else None,
                                          force=True))
        async with asyncio.timeout(30):
            await _feed(op, link, bytes(body))
            if digest == "at the end":
                op.end(sha256)
            await op.task
        done = link.sent[-1]
        if sent == "intact":
            assert isinstance(done, TransferDone) and done.changed, link.sent
        else:
            assert isinstance(done, Error) and done.code == "checksum_mismatch", link.sent

    asyncio.run(main())
    assert target.read_bytes() == (data if sent == "intact" else b"the old file")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary file left


def test_a_large_upload_is_received_into_a_few_buffers_used_again(tmp_path: Path) -> None:
    # Once the put is ready, the decoder receives its bodies into the transfer's own page-
    # aligned buffers, each given back once written and hashed: a window's worth of them
    # carries a file of any size; the decoder gets its own allocation back at the end.
    data = random.Random(9).randbytes(4 * FILE_WINDOW + 777)
    target = tmp_path / "f"
    buffers: set[int] = set()

    async def main() -> None:
        link = Link()
        op = FileOp(link, identity(), Put(path=str(target), file_size=len(data),
                                          sha256=hashlib.sha256(data).hexdigest()))
        async with asyncio.timeout(30):
            while not any(isinstance(h, PutReady) for h in link.sent):
                await asyncio.sleep(0.001)
            assert link.allocate is not None
            allocate = link.allocate

            def spy(size: int) -> memoryview:
                body = allocate(size)
                buffers.add(id(body.obj))
                return body

            link.allocate = spy
            await _feed(op, link, data)
            await op.task
        assert isinstance(link.sent[-1], TransferDone) and link.sent[-1].changed, link.sent
        assert link.allocate is None

    asyncio.run(main())
    assert target.read_bytes() == data
    assert len(buffers) <= FILE_WINDOW // MAX_BODY_SIZE + 2 < len(data) // MAX_BODY_SIZE


def test_who_may_transfer_and_where() -> None:
    assert roots_for(identity()).paths is None  # type: ignore[union-attr]
    confined = roots_for(identity(allow=(Pattern("true"),), file_roots=("/srv/app",)))
    assert not isinstance(confined, TransferError) and confined.paths == ("/srv/app",)
    held = roots_for(identity(allow=(Pattern("true"),)))
    assert isinstance(held, TransferError) and "file_roots" in str(held)
    # run_as is a command policy too: with file_roots, beneath them (as that user), else none
    switched = roots_for(identity(run_as="nobody", file_roots=("/tmp",)))
    assert not isinstance(switched, TransferError) and switched.paths == ("/tmp",)
    unconfined = roots_for(identity(run_as="nobody"))
    assert isinstance(unconfined, TransferError) and unconfined.code == "refused"
    assert "run_as) and no file_roots" in str(unconfined)


class CountingThread(FileThread):
    """A FileThread that counts the calls made on it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def submit(self, call: Any) -> Any:
        self.calls += 1
        return super().submit(call)


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.mark.parametrize("kind", ["new", "unchanged", "changed", "forced", "corrupt", "too large",
                                  "refused", "no folder"])
def test_a_put_that_carries_its_file_takes_one_call_and_no_put_ready(tmp_path: Path,
                                                                     kind: str) -> None:
    # Version 6: the file comes in the put's body; the server answers transfer_done (or an
    # error) after one call on the thread, never put_ready; a failure leaves the old file.
    data = b"listen 8080\n"
    old = b"listen 80\n"
    target = tmp_path / ("missing" if kind == "no folder" else "") / "app.conf"
    if kind in ("unchanged", "forced"):
        target.write_bytes(data)
    elif kind != "no folder":
        target.write_bytes(old)
    if target.exists():
        target.chmod(0o644)
    sent = b"listen 8081\n" if kind == "corrupt" else data  # not what the digest says
    policy: dict[str, Any] = {"max_file_size": 5} if kind == "too large" else {}
    if kind == "refused":
        policy["put"] = False

    async def main() -> None:
        link = Link()
        link.file_thread = thread = CountingThread()
        before = open_fds()
        op = FileOp(link, identity(**policy),
                    Put(path=str(target), file_size=len(data), mode=0o644, size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(), force=kind == "forced"),
                    memoryview(sent))
        async with asyncio.timeout(10):
            await op.task
        assert not any(isinstance(h, PutReady) for h in link.sent), link.sent
        done = link.sent[-1]
        if kind in ("new", "unchanged", "changed", "forced"):
            assert isinstance(done, TransferDone), link.sent
            assert done.changed == (kind != "unchanged")
            assert thread.calls == 1
            assert link.reports[-1] == ("put", str(target), "ok")
        else:
            assert isinstance(done, Error) and not done.fatal
            assert done.code == {"corrupt": "checksum_mismatch", "too large": "too_large",
                                 "refused": "refused", "no folder": "not_found"}[kind]
            assert thread.calls <= 1
        assert open_fds() == before

    asyncio.run(main())
    if kind == "no folder":
        assert not target.parent.exists()
        return
    assert target.read_bytes() == (data if kind in ("new", "unchanged", "changed", "forced")
                                   else old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]  # no temporary file


@pytest.mark.parametrize("kind", ["new", "unchanged", "check", "changed"])
def test_a_small_put_takes_two_calls_on_the_thread_at_most(tmp_path: Path, kind: str) -> None:
    # Each call on the transfer's thread costs the loop two wake-ups, more than a small put's
    # own work: a new file is opened, checked and created in one call and written and
    # committed in another; a file already there is answered after one; and no descriptor
    # (the folder's) is left open in any case.
    data = b"listen 8080\n"
    target = tmp_path / "app.conf"
    if kind != "new":
        target.write_bytes(data if kind != "changed" else b"listen 80\n")
        target.chmod(0o644)

    async def main() -> None:
        link = Link()
        link.file_thread = thread = CountingThread()
        before = open_fds()
        op = FileOp(link, identity(), Put(path=str(target), file_size=len(data), mode=0o644,
                                          sha256=hashlib.sha256(data).hexdigest(),
                                          check=kind == "check"))
        if kind in ("new", "changed"):
            op.data(memoryview(data))
        async with asyncio.timeout(10):
            await op.task
        done = link.sent[-1]
        assert isinstance(done, TransferDone), link.sent
        assert done.changed == (kind in ("new", "changed"))
        assert thread.calls == (2 if kind in ("new", "changed") else 1)
        assert open_fds() == before
        assert link.reports[-1] == ("put", str(target), "ok")

    asyncio.run(main())
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]  # no temporary file
