"""One put or get on a connection: frames in and out, the disk through ``rexec.server.transfer``.

A ``FileOp`` runs as a task of its session, as a command does. Its filesystem calls run on the
connection's transfer thread (``FileThread``: one per connection, so they stay in order and the
event loop never waits on the disk: an fsync, a slow or network file system). An upload's
``file_data`` bodies are queued as they arrive (at most FILE_WINDOW bytes: the client may not
send more without credit; large ones as the decoder received them, without a copy), written in
order a batch at a time, and credited back once written. A download reads a chunk, sends it and
waits for the client to take it (TCP backpressure) before reading the next. Whatever fails
becomes one non-fatal error frame (``TransferError``'s code and message); the connection stays
usable, and an upload that did not complete leaves the destination as it was.

For an identity with ``run_as`` the transfer's thread reads and writes as that user from its
first filesystem call on (``rexec.server.fsuser``), and ends with the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

from rexec.errors import ConnectionLost, ProtocolError
from rexec.server.fsuser import become
from rexec.server.identity import Identity
from rexec.server.transfer import (
    DigestCache,
    FileRoots,
    TransferError,
    Tree,
    Upload,
    entry_path,
    open_source,
    open_target,
    put_directory,
    put_link,
    remember_digest,
    same_size,
    stat_entry,
    unchanged,
)
from rexec.wire.frames import (
    FILE_WINDOW,
    MAX_BODY_SIZE,
    EntryKind,
    Error,
    FileCredit,
    FileData,
    FileEntry,
    FileInfo,
    FileList,
    Get,
    Header,
    Put,
    PutDir,
    PutLink,
    PutReady,
    Stat,
    TransferDone,
)
from rexec.writeback import BufferPool

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CREDIT_BATCH = 1024 * 1024  # credit an upload back in batches, not per frame
WRITE_BATCH = FILE_WINDOW // 2
"""The most queued bytes of an upload one call on its thread writes: each call costs two
thread wake-ups and a credit frame, and with half the window the client still has the rest to
send meanwhile."""
HASH_APART_AT = 4 * 1024 * 1024
"""An upload of at least this many bytes is hashed on another thread while it is written: the
hash (SHA-256) and the O_DIRECT writes each take about as long as the other, and both let go
of the GIL. A smaller one is hashed where it is written, in the same call."""
READ_CHUNK = MAX_BODY_SIZE  # a download's frames: as large as a frame may be
T = TypeVar("T")
FileRequest = Put | Get | PutDir | PutLink | FileList | Stat
"""The frames that start a transfer: one file, or one step of a directory transfer."""


SHARED_FILE_THREADS = 32
"""Threads of the pool the connections without ``run_as`` share for their filesystem calls."""
_shared: ThreadPoolExecutor | None = None


def _shared_pool() -> ThreadPoolExecutor:
    global _shared  # noqa: PLW0603 - one pool for the process, made at the first transfer
    if _shared is None:
        _shared = ThreadPoolExecutor(SHARED_FILE_THREADS, thread_name_prefix="rexec-file")
    return _shared


class FileThread:
    """Where a connection's transfers make their filesystem calls.

    The transfers of one connection run one after another, each call awaited before the next,
    so they never overlap. Connections share a pool of threads (a deploy's hundreds of
    connections each put a small file or two: a thread started for each cost more than the
    put). An identity with ``run_as`` gets a thread of its own (``dedicate``) that reads and
    writes as that user from its first call on (``switched``); the identity cannot change on
    a connection, so neither does the thread's user. ``close()`` lets it end once its last
    call returns.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self.switched = False
        self.digests = DigestCache()  # what this connection hashed of the files already there

    def dedicate(self) -> None:
        """From now on, one thread of this connection's own (before ``run_as`` switches it)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="rexec-file-as")

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``call`` on the connection's thread; its result as a future of the running
        loop."""
        pool = self._pool if self._pool is not None else _shared_pool()
        return asyncio.get_running_loop().run_in_executor(pool, call)

    def close(self) -> None:
        """No more calls: a dedicated thread ends after the ones queued."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class FileLink(Protocol):
    """What a transfer needs of its connection (the Session)."""

    lost: bool
    file_thread: FileThread

    def send(self, header: Header, body: bytes | memoryview = b"") -> None:
        """Queue a frame (ConnectionLost or ProtocolError once the connection is closing)."""

    async def drain(self) -> None:
        """Wait until the queued frames are written (backpressure)."""

    def receive_bodies_into(self, allocate: Callable[[int], memoryview] | None) -> None:
        """Receive the large bodies of the next frames into ``allocate``'s buffers (None: new
        ones)."""

    def transfer_report(self, op: str, path: str, result: str, **fields: Any) -> bool:
        """The transfer's log line and audit record; False if the audit log failed."""


def roots_for(identity: Identity) -> FileRoots | TransferError:
    """Where ``identity`` may put and get files, or why it may not at all.

    An identity held to a command policy (``run_as`` is one) may transfer files only beneath
    its ``file_roots``: without them a put could write any file the server's user can (a new
    crontab, say), which its command policy exists to prevent. One with ``run_as`` reads and
    writes as that user (``FileOp`` switches its thread, see ``rexec.server.fsuser``).
    """
    policy = identity.policy
    if policy.file_roots is None:
        if policy.restricted:
            return TransferError("refused", f"refused: identity {identity.name!r} has a"
                                 " command policy (allow, deny, shell = false, cwd or run_as)"
                                 " and no file_roots, so it may not transfer files")
        return FileRoots(None)
    return FileRoots(policy.file_roots)


class FileOp:
    """One put, get, put_dir, put_link or file_list, from its first frame to its
    transfer_done or error frame."""

    def __init__(self, link: FileLink, identity: Identity, header: FileRequest,
                 body: memoryview | bytes = b"") -> None:
        self.link = link
        self.identity = identity
        self.header = header
        # a version-6 put's file, copied: the decoder's buffer goes on to the next frames
        self._inline = bytes(body)
        self.path = entry_path(header.path, getattr(header, "base", None))  # for messages
        self.started = time.monotonic()
        self._queue: deque[bytes | memoryview] = deque()
        self._received = 0  # bytes of the upload received
        self._allowed = FILE_WINDOW  # what the client may have sent: the window and the credit
        self._wake = asyncio.Event()
        self._cancelled = False
        self._end_digest: str | None = None  # put_end's, for a put without sha256
        self._head_start: Callable[[], None] | None = None  # to hash after digest_required
        self._hasher: hashlib._Hash | None = None  # a large upload's, hashed beside its writes
        self.task: asyncio.Task[None] = asyncio.create_task(self._run())

    # what the client's frames ask of it

    def data(self, body: memoryview, *, detached: bool = False) -> None:
        """A ``file_data`` frame of the upload, queued as it is if ``detached`` (a buffer of its
        own), else copied (the body is the decoder's)."""
        if not isinstance(self.header, Put) or self.task.done():
            return  # late bytes of an upload that ended (an error crossed them): dropped
        self._received += len(body)
        if self._received > self._allowed:
            raise ProtocolError(f"the client sent more than {FILE_WINDOW} bytes of the file"
                                " without credit", "file_overflow")
        self._queue.append(body if detached else bytes(body))
        self._wake.set()

    def end(self, sha256: str) -> None:
        """A ``put_end``: the digest of an upload announced without one, after its bytes."""
        header = self.header
        if self.task.done():
            return  # the upload ended already (an error crossed the client's last frames)
        if not isinstance(header, Put) or header.sha256 is not None:
            raise ProtocolError("put_end for an upload whose put gave its SHA-256",
                                "unexpected_frame")
        if self._received != header.file_size or self._end_digest is not None:
            raise ProtocolError(f"put_end after {self._received} of the {header.file_size}"
                                " bytes announced", "unexpected_frame")
        self._end_digest = sha256
        self._wake.set()

    def cancel(self) -> None:
        """The client asked to stop (or is gone): the transfer ends with ``cancelled``."""
        self._cancelled = True
        self._wake.set()

    # the transfer

    async def _disk(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` on the transfer's own thread; the loop serves the others meanwhile."""
        return await self.link.file_thread.submit(functools.partial(call, *args, **kwargs))

    async def _run(self) -> None:
        header = self.header
        op = header.type
        fields: dict[str, Any] = {}
        try:
            # audited before anything is touched, as a command's start is: without an audit
            # log that works, nothing is transferred
            if not self.link.transfer_report(op, self.path, "started"):
                raise TransferError("audit_unavailable", "refused: the server cannot write its"
                                    " audit log; no file is transferred until it can",
                                    self.path)
            roots = roots_for(self.identity)
            if isinstance(roots, TransferError):
                raise roots
            self._check_allowed(op)
            thread = self.link.file_thread
            if self.identity.policy.run_as is not None and not thread.switched:
                # first on the thread, before any file
                thread.dedicate()
                await self._disk(become, self.identity.policy.run_as, self.path)
                thread.switched = True
            if isinstance(header, Put):
                fields = await self._put(header, roots)
            elif isinstance(header, Get):
                fields = await self._get(header, roots)
            elif isinstance(header, FileList):
                fields = await self._list(header, roots)
            elif isinstance(header, Stat):
                fields = await self._stat(header, roots)
            else:
                fields = await self._make(header, roots)
        except TransferError as exc:
            self._reply_error(op, exc.code, str(exc), fields)
            if self._head_start is not None:
                # digest_required: the client hashes its file now, and asks again; the
                # connection's thread hashes the one here meanwhile, once the answer is out
                self.link.file_thread.submit(self._head_start)
        except (ConnectionLost, ProtocolError):
            self.link.transfer_report(op, self.path, "disconnected", **fields,
                                      duration=self._duration())

    def _check_allowed(self, op: str) -> None:
        writes = op in ("put", "put_dir", "put_link")
        if not (self.identity.policy.put if writes else self.identity.policy.get):
            verb = "put" if writes else "get"
            raise TransferError("refused", f"refused: identity {self.identity.name!r} may not"
                                f" {verb} files", self.path)

    def _duration(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def _reply_error(self, op: str, code: str, message: str, fields: dict[str, Any]) -> None:
        self.link.transfer_report(op, self.path, code, reason=message, **fields,
                                  duration=self._duration())
        if not self.link.lost:
            with contextlib.suppress(ConnectionLost, ProtocolError):
                self.link.send(Error(code=code, message=message[:4000], fatal=False))

    def _check_size(self, size: int) -> None:
        limit = self.identity.policy.max_file_size
        if limit is not None and size > limit:
            raise TransferError("too_large", f"{self.path}: {size} bytes is more than"
                                f" this identity's max_file_size of {limit}", self.path)

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise TransferError("cancelled", f"{self.path}: cancelled by the client",
                                self.path)

    async def _put(self, put: Put, roots: FileRoots) -> dict[str, Any]:
        self._check_size(put.file_size)
        sha256 = EMPTY_SHA256 if put.sha256 is None and not put.file_size else put.sha256
        if put.size:  # the file came with the put: one call on the thread does it all
            assert sha256 is not None  # the frame's validator requires it
            changed = await self._disk(self._put_inline, put, roots, sha256)
            return self._done("put", changed=changed, size=put.file_size, sha256=sha256)
        # one call on the thread decides (and closes the folder when nothing is to be written)
        upload, changed = await self._disk(self._prepare_put, put, roots, sha256)
        if upload is None:  # a dry run, or the file is there already
            return self._done("put", changed=changed, size=put.file_size,
                              sha256=sha256, **({"check": True} if put.check else {}))
        try:
            if put.file_size:
                await self._receive(put, upload, sha256)
            if not upload.committed:
                if sha256 is None:
                    sha256 = await self._digest_at_end()
                self._check_cancelled()
                await self._disk(upload.commit, sha256, self._received_sha256())
        except BaseException:
            await asyncio.shield(self._disk(upload.abort))
            raise
        return self._done("put", changed=True, size=put.file_size, sha256=sha256)

    def _put_inline(self, put: Put, roots: FileRoots, sha256: str) -> bool:
        """On the thread: a put that carried its file (version 6), decided, written and
        committed in one call; whether it changed the file. A mismatch (size, SHA-256) or any
        failure leaves the destination as it was."""
        upload, changed = self._prepare_put(put, roots, sha256)
        if upload is None:
            return changed
        try:
            upload.write(self._inline)
            upload.commit(sha256)
        except BaseException:
            upload.abort()
            raise
        return True

    def _prepare_put(self, put: Put, roots: FileRoots, sha256: str | None
                     ) -> tuple[Upload | None, bool]:
        """On the thread: open the put's folder and tell whether it writes: (the Upload that
        writes, which owns the folder from then on, True), or (None, whether the put would
        change the file) with the folder closed again when nothing is to be written: a dry
        run, or the same file already there. Each step here was a call of its own, and each
        call on the thread costs the loop two wake-ups, more than a small put's own work."""
        parent = open_target(roots, put.path, base=put.base, name=put.name)
        self.path = parent.path
        try:
            digests = self.link.file_thread.digests
            if put.check or (not put.force and sha256 is not None):
                assert sha256 is not None  # a check's frame validator requires it
                same = not put.force and unchanged(
                    parent, size=put.file_size, sha256_hex=sha256, mode=put.mode,
                    cache=digests)
                if put.check or same:
                    parent.close()
                    return None, not same
            elif sha256 is None and not put.force and same_size(
                    parent, size=put.file_size, mode=put.mode):
                self._head_start = functools.partial(  # after the answer: see _run
                    remember_digest, roots, put.path, base=put.base, name=put.name,
                    cache=digests)
                raise TransferError("digest_required", f"{self.path}: a file of the same size"
                                    " is there: send its SHA-256 first, to tell whether it is"
                                    " the same", self.path)
            return Upload(parent, size=put.file_size, mode=put.mode, mtime_ns=put.mtime_ns,
                          max_size=self.identity.policy.max_file_size, owns_parent=True,
                          hashed_apart=put.file_size >= HASH_APART_AT), True
        except BaseException:
            parent.close()
            raise

    async def _digest_at_end(self) -> str:
        """The client's put_end digest, once it comes."""
        while self._end_digest is None:
            self._check_cancelled()
            self._wake.clear()
            await self._wake.wait()
        return self._end_digest

    async def _receive(self, put: Put, upload: Upload, sha256: str | None) -> None:
        """Write the upload's bytes as they come, crediting them back, until all are in; the
        last batch is committed by the same call on the thread when the digest is known."""
        # a large upload's bodies received into buffers used again once written and hashed
        # (no new memory faulted in per MiB, and O_DIRECT writes them as they are)
        pool = BufferPool(MAX_BODY_SIZE, FILE_WINDOW // MAX_BODY_SIZE + 2) \
            if upload.hashed_apart else None
        if pool is not None:
            self.link.receive_bodies_into(pool.allocate)
        try:
            await self._receive_into(put, upload, sha256, pool)
        finally:
            if pool is not None:
                self.link.receive_bodies_into(None)
                pool.close()

    async def _receive_into(self, put: Put, upload: Upload, sha256: str | None,
                            pool: BufferPool | None) -> None:
        self.link.send(PutReady())
        if upload.hashed_apart:
            self._hasher = hashlib.sha256()
        received = credit = 0
        while received < put.file_size:
            while not self._queue:
                self._check_cancelled()
                self._wake.clear()
                await self._wake.wait()
            chunks = self._take_batch()
            size = sum(len(chunk) for chunk in chunks)
            if self._hasher is not None:  # hashed on a thread of the pool while written
                hashed = asyncio.get_running_loop().run_in_executor(
                    _shared_pool(), _hash_all, self._hasher, chunks)
                try:
                    await self._disk(_write_all, upload, chunks)  # size_mismatch past file_size
                finally:
                    await hashed  # never left updating a digest that is read next
                if received + size == put.file_size and sha256 is not None:
                    self._check_cancelled()
                    await self._disk(upload.commit, sha256, self._received_sha256())
            elif received + size == put.file_size and sha256 is not None:
                self._check_cancelled()
                await self._disk(_write_all, upload, chunks, commit=sha256)
            else:
                await self._disk(_write_all, upload, chunks)  # size_mismatch past file_size
            if pool is not None:  # written and hashed: their buffers take the next bodies
                for chunk in chunks:
                    if pool.owns(chunk):
                        pool.give_back(cast(memoryview, chunk))
            received += size
            credit += size
            if credit >= CREDIT_BATCH and received < put.file_size:
                self.link.send(FileCredit(amount=credit))
                self._allowed += credit
                credit = 0

    def _received_sha256(self) -> str | None:
        """The digest of a large upload's bytes hashed apart (None: the Upload hashed them)."""
        return None if self._hasher is None else self._hasher.hexdigest()

    def _take_batch(self) -> list[bytes | memoryview]:
        """The queued chunks to write next: one at least, up to WRITE_BATCH bytes."""
        chunks = [self._queue.popleft()]
        size = len(chunks[0])
        while self._queue and size + len(self._queue[0]) <= WRITE_BATCH:
            chunks.append(self._queue.popleft())
            size += len(chunks[-1])
        return chunks

    async def _get(self, get: Get, roots: FileRoots) -> dict[str, Any]:
        download = await self._disk(open_source, roots, get.path, base=get.base)
        try:
            self._check_size(download.size)
            self.link.send(FileInfo(file_size=download.size, mode=download.mode,
                                    mtime_ns=max(0, download.mtime_ns)))
            buffer = bytearray(READ_CHUNK)
            view = memoryview(buffer)
            try:
                while count := await self._disk(download.read_into, buffer):
                    self._check_cancelled()
                    self.link.send(FileData(size=count), view[:count])  # copied or sent now
                    await self.link.drain()
            finally:
                view.release()
            sha256 = await self._disk(download.finish)
        finally:
            await asyncio.shield(self._disk(download.close))
        return self._done("get", changed=True, size=download.size, sha256=sha256)

    async def _make(self, header: PutDir | PutLink, roots: FileRoots) -> dict[str, Any]:
        if isinstance(header, PutDir):
            changed = await self._disk(put_directory, roots, header.path, base=header.base,
                                       mode=header.mode, mtime_ns=header.mtime_ns)
        else:
            changed = await self._disk(put_link, roots, header.path, base=header.base,
                                       target=header.target)
        return self._done(header.type, changed=changed, size=0, sha256=None)

    async def _list(self, listing: FileList, roots: FileRoots) -> dict[str, Any]:
        """Send the tree's entries, each directory before what it holds, as they are read."""
        tree = await self._disk(Tree.open, roots, listing.path)
        total = count = 0
        try:
            entries = tree.walk()
            while batch := await self._disk(_next_batch, entries):
                for entry in batch:
                    self._check_cancelled()
                    self.link.send(FileEntry(kind=entry.kind, path=entry.path, mode=entry.mode,
                                             file_size=entry.size, mtime_ns=max(0, entry.mtime_ns),
                                             target=entry.target or None))
                    total += entry.size
                    count += 1
                await self.link.drain()
        finally:
            await asyncio.shield(self._disk(tree.close))
        return self._done("file_list", changed=False, size=total, sha256=None, entries=count)

    async def _stat(self, request: Stat, roots: FileRoots) -> dict[str, Any]:
        """One file_entry for what is at the path (not_found: nothing is)."""
        entry = await self._disk(stat_entry, roots, request.path)
        kind = cast(EntryKind, entry.kind)
        self.link.send(FileEntry(kind=kind, path=entry.path, mode=entry.mode,
                                 file_size=entry.size, mtime_ns=entry.mtime_ns,
                                 target=entry.target or None))
        return self._done("stat", changed=False, size=entry.size, sha256=None,
                          kind=entry.kind)

    def _done(self, op: str, *, changed: bool, size: int, sha256: str | None,
              **more: Any) -> dict[str, Any]:
        duration = self._duration()
        self.link.send(TransferDone(changed=changed, file_size=size, sha256=sha256,
                                    duration=duration))
        fields: dict[str, Any] = {"bytes": size, "changed": changed, **more}
        if sha256 is not None:
            fields["sha256"] = sha256
        self.link.transfer_report(op, self.path, "ok", **fields, duration=duration)
        return fields


LIST_BATCH = 256  # entries of a listing read from the disk at a time


def _write_all(upload: Upload, chunks: list[bytes | memoryview], *,
               commit: str | None = None) -> None:
    """Write the chunks in order (on the transfer's thread), then, given the SHA-256 of the
    whole upload, commit it."""
    for chunk in chunks:
        upload.write(chunk, aligned=BufferPool.owns(chunk))
    if commit is not None:
        upload.commit(commit)


def _hash_all(hasher: hashlib._Hash, chunks: list[bytes | memoryview]) -> None:
    """Add the chunks to ``hasher``, in order (on a thread: hashlib lets go of the GIL)."""
    for chunk in chunks:
        hasher.update(chunk)


def _next_batch(entries: Iterator[T]) -> list[T]:
    """Up to LIST_BATCH more entries of a walk (on the transfer's thread)."""
    return list(itertools.islice(entries, LIST_BATCH))
