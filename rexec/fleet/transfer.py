"""Fleet put and get: one file to many hosts read once, or one file from many hosts kept apart.

Put. ``FanOut`` hashes the local file once (every host's ``put`` frame declares the SHA-256
first, so a host that holds the file already answers "unchanged" and is sent nothing), then
reads it in chunks and hands each chunk to every host still sending. The chunks are read in
*passes*: a ``Relay`` (sans-I/O) holds one pass's chunks, at most ``limit`` bytes, until every
host in it has taken them, so the slowest host paces the read and the fastest is never more
than ``limit`` bytes ahead; a host that fails or is cancelled leaves its pass and the others go
on. Hosts join a pass when their server is ready for the bytes, and a pass keeps its first
chunk for more hosts to join, for up to ``window`` seconds after its first host joined, while
any host holding a fork slot is outside it: still connecting, or in an earlier pass (its slot
is about to go to a host that can share this one). With every host within
``--forks`` and reachable in time, that is one pass: the file is hashed once and read once.
With more hosts than forks, the hosts go in waves of about ``forks``, one pass each, so the
file is read about hosts / forks times (from the page cache, usually), never once per host; a
host later than the window (a slow connection) gets a pass of its own. Each pass holds at
most ``limit`` bytes.

Get. Each host's file goes to ``LOCAL/HOST/NAME`` (``host_dir`` makes HOST a safe directory
name; two hosts that would share one are refused before anything starts), so no host's file
ever lands on another's; the directory is made once the host is connected, and removed again
if it was made for a transfer that failed.

Either way, each host's part ends in one HostOutcome: "ok" with its TransferResult, "failed"
(the server refused the transfer, a local file error, a checksum), "timed_out" (``timeout``
seconds from the request on), "unreachable" (no connection, no login, or the connection lost
mid-transfer) or "cancelled".
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import posixpath
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from rexec.client.aio import Client
from rexec.client.transfer import Digest, LocalSource, ProgressCallback, check_remote, local_error
from rexec.errors import ConfigError, ConnectionLost, InvalidRequest, LocalFileError, RexecError
from rexec.fleet.outcome import HostOutcome
from rexec.fleet.target import HostStatus, Target
from rexec.result import TransferResult, TreeResult

RELAY_CHUNK = 256 * 1024
"""Bytes read at once: small, since every host's connection may hold one chunk unsent."""
RELAY_LIMIT = 4 * 1024 * 1024
"""The most bytes one pass holds: how far the fastest host may run ahead of the slowest."""
JOIN_WINDOW = 1.0
"""Seconds a pass waits, after its first host joined, for the hosts still connecting."""
MAX_TIMEOUT = 10_000_000  # as a command's --timeout

OnTransferProgress = Callable[[str, int, int], object]
"""``on_progress(host, done, total)``: bytes of that host's file moved so far, of its size."""


class Relay:
    """One pass over a file, sans-I/O: chunks read once, held until every member took them.

    ``to_read()`` says how many bytes to read next (at offset ``end``), ``feed()`` takes them;
    ``take(member, n)`` hands a member its next bytes (a view of a held chunk). Chunks are let
    go once every member has taken them, never while ``holding`` (members may still join: the
    pass then still starts at byte 0), and at most ``limit`` bytes are held.
    """

    def __init__(self, size: int, *, chunk: int = RELAY_CHUNK, limit: int = RELAY_LIMIT) -> None:
        if chunk < 1 or limit < chunk:
            raise ValueError(f"a relay needs 1 <= chunk <= limit, not {chunk} and {limit}")
        self.size = size
        self.chunk = chunk
        self.limit = limit
        self.holding = True
        self.base = 0  # the offset of the first chunk held
        self.end = 0  # the offset after the last chunk read: how much has been read
        self._chunks: deque[bytes] = deque()
        self._cursors: dict[int, int] = {}  # member -> the offset of its next byte
        self._next_member = 0

    @property
    def joinable(self) -> bool:
        """Whether a new member can still start at byte 0 (nothing has been let go)."""
        return self.base == 0

    @property
    def held(self) -> int:
        """Bytes held now."""
        return self.end - self.base

    @property
    def members(self) -> int:
        """How many members the pass has."""
        return len(self._cursors)

    def join(self) -> int:
        """A new member, at byte 0."""
        if not self.joinable:
            raise RuntimeError("this pass has let its first bytes go: start another one")
        member = self._next_member
        self._next_member += 1
        self._cursors[member] = 0
        return member

    def leave(self, member: int) -> None:
        """``member`` takes no more (done, failed or cancelled): what it held back goes."""
        self._cursors.pop(member, None)
        self._trim()

    def release(self) -> None:
        """Stop holding the first chunk for members to come."""
        self.holding = False
        self._trim()

    def remaining(self, member: int) -> int:
        """Bytes ``member`` has still to take."""
        return self.size - self._cursors[member]

    def to_read(self) -> int:
        """Bytes to read next at offset ``end``: 0 when the file is read, nobody is listening,
        or the pass holds as much as it may."""
        if not self._cursors or self.end >= self.size:
            return 0
        count = min(self.chunk, self.size - self.end)
        return count if self.held + count <= self.limit else 0

    def feed(self, data: bytes) -> None:
        """The ``to_read()`` bytes read at offset ``end``."""
        expected = self.to_read()
        if len(data) != expected:
            raise ValueError(f"expected {expected} bytes at offset {self.end}, not {len(data)}")
        self._chunks.append(data)
        self.end += len(data)

    def take(self, member: int, size: int) -> memoryview:
        """``member``'s next bytes, at most ``size``, from one chunk; empty when it has taken
        everything read so far (or everything)."""
        position = self._cursors[member]
        if position >= self.end or size <= 0:
            return memoryview(b"")
        index, start = divmod(position - self.base, self.chunk)  # every chunk but the last
        piece = memoryview(self._chunks[index])[start:start + size]  # is ``chunk`` bytes
        self._cursors[member] = position + len(piece)
        self._trim()
        return piece

    def _trim(self) -> None:
        if self.holding:
            return
        lowest = min(self._cursors.values(), default=self.end)
        while self._chunks and self.base + len(self._chunks[0]) <= lowest:
            self.base += len(self._chunks.popleft())


class _Pass:
    """A Relay on the event loop: the members waiting for its next read, and its failure."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.error: LocalFileError | None = None
        self.slots = 0  # hosts that joined it and still hold their fork slot
        self._wake = asyncio.Event()

    async def changed(self) -> None:
        """Wait until the relay has more to give (or failed)."""
        await self._wake.wait()

    def notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()


class FanOut:
    """A fleet put's local file: hashed once (``open``), then read in passes for the hosts
    (``expect`` gives each its ``HostShare``); see the module docstring."""

    def __init__(self, path: str | Path, *, chunk: int = RELAY_CHUNK, limit: int = RELAY_LIMIT,
                 window: float = JOIN_WINDOW) -> None:
        Relay(0, chunk=chunk, limit=limit)  # the sizes are checked before anything is read
        self.path = Path(path)
        self.chunk, self.limit, self.window = chunk, limit, window
        self.passes = 0  # passes started: how many times the file was read after its hash
        self._source: LocalSource | None = None
        self._digest: Digest | None = None
        self._current: _Pass | None = None  # the newest pass, the one hosts join
        self._slots = 0  # hosts holding a fork slot (with a share)

    async def open(self) -> None:
        """Open and hash the file (LocalFileError when it cannot be read)."""
        self._source = await asyncio.to_thread(LocalSource.open, self.path)
        self._digest = self._source.digest

    @property
    def digest(self) -> Digest:
        """The file's size, SHA-256, mode and mtime, as hashed by ``open``."""
        if self._digest is None:
            raise RuntimeError("the fan-out is not open")
        return self._digest

    def close(self) -> None:
        """Close the file (every host's share must be closed first)."""
        if self._source is not None:
            self._source.close()
            self._source = None

    def expect(self) -> HostShare:
        """The share of a host that has just taken a fork slot: the newest pass waits for it
        (up to ``window``), and ``HostShare.close`` says when the slot is given back."""
        self._slots += 1
        return HostShare(self)

    def _join(self) -> tuple[_Pass, int]:
        current = self._current
        if current is None or current.error is not None or not current.relay.joinable:
            current = self._current = _Pass(Relay(self.digest.size, chunk=self.chunk,
                                                  limit=self.limit))
            self.passes += 1
            asyncio.get_running_loop().call_later(self.window, self._release, current)
        member = current.relay.join()
        current.slots += 1
        self._settle()
        return current, member

    def _slot_freed(self, joined: _Pass | None) -> None:
        # Counted as held until the loop's next turn: the host waiting for this slot takes
        # it (and is expected) in the task step that the semaphore's release has scheduled
        # before this callback, so no pass is let go in between for want of that host.
        asyncio.get_running_loop().call_soon(self._forget_slot, joined)

    def _forget_slot(self, joined: _Pass | None) -> None:
        self._slots -= 1
        if joined is not None:
            joined.slots -= 1
        self._settle()

    def _settle(self) -> None:
        """The newest pass waits for no one once every host holding a slot is in it."""
        current = self._current
        if current is not None and current.slots == self._slots:
            self._release(current)

    def _release(self, current: _Pass) -> None:
        current.relay.release()
        self._fill(current)

    def _fill(self, current: _Pass) -> None:
        """Read what the pass has room for, and wake its members if anything changed. The
        reads are of a regular file (a page-cache copy, as LocalSource's), made in the loop."""
        relay, source = current.relay, self._source
        if source is None:  # closed: every host has gone
            return
        before = relay.held, relay.base
        while current.error is None and (count := relay.to_read()):
            try:
                relay.feed(source.read_at(relay.end, count))
            except LocalFileError as exc:
                current.error = exc
        if (relay.held, relay.base) != before or current.error is not None:
            current.notify()


class HostShare:
    """One host's part of a FanOut, as the Client's UploadSource: it joins a pass at its first
    read; ``leave()`` as soon as the host takes no more (the others go on without it), and
    ``close()`` once its fork slot has been given back (however the host ended)."""

    def __init__(self, fanout: FanOut) -> None:
        self._fanout = fanout
        self._pass: _Pass | None = None
        self._member = -1
        self._left = False
        self._closed = False

    @property
    def digest(self) -> Digest:
        return self._fanout.digest

    @property
    def remaining(self) -> int:
        if self._pass is None:
            return self.digest.size
        return self._pass.relay.remaining(self._member)

    async def hash_now(self) -> Digest:
        """The file was hashed once for all hosts before any was sent: its digest."""
        return self.digest

    @property
    def joined(self) -> bool:
        """Whether this host joined a pass (its server wanted the bytes)."""
        return self._pass is not None

    async def read(self, size: int) -> memoryview:
        """The host's next bytes, at most ``size``: waits while the slowest host of its pass
        has not taken what is held, or the pass waits for hosts still to join."""
        if self._left:
            raise RuntimeError("this host has left its share")
        if self._pass is None:
            self._pass, self._member = self._fanout._join()
        current, fanout = self._pass, self._fanout
        while True:
            fanout._fill(current)  # fill, then take: nothing may notify between an empty
            # take and the wait below, or this host would sleep through its own wake-up
            if current.error is not None:
                raise current.error
            piece = current.relay.take(self._member, size)
            if piece:
                fanout._fill(current)  # what it took may have made room for the next chunk
                return piece
            if not current.relay.remaining(self._member):
                return piece
            await current.changed()

    def leave(self) -> None:
        """This host takes no more bytes: done, failed or cancelled (idempotent)."""
        if self._left:
            return
        self._left = True
        if self._pass is not None:
            self._pass.relay.leave(self._member)
            self._fanout._fill(self._pass)

    def close(self) -> None:
        """The host's fork slot has been given back; ``leave()`` too (idempotent)."""
        if self._closed:
            return
        self.leave()
        self._closed = True
        self._fanout._slot_freed(self._pass)


# --- each host's part ---------------------------------------------------------------------


def check_timeout(timeout: float | None) -> None:
    """A per-host transfer timeout: positive, finite, at most MAX_TIMEOUT (InvalidRequest)."""
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise InvalidRequest(f"the timeout must be a positive number of seconds up to"
                             f" {MAX_TIMEOUT:,}, not {timeout!r}", "timeout")


def host_dir(host: str) -> str:
    """The directory name a fleet get gives ``host``'s file: its name, with ``/`` as ``_`` and
    never ``.`` or ``..`` (a host named so still gets a directory of its own)."""
    name = host.replace("/", "_").replace("\0", "_")
    return f"_{name}" if name in ("", ".", "..") else name


def check_host_dirs(hosts: Sequence[str]) -> None:
    """ConfigError when two hosts would write to the same ``LOCAL/HOST`` directory."""
    seen: dict[str, str] = {}
    for host in hosts:
        other = seen.setdefault(host_dir(host), host)
        if other != host:
            raise ConfigError(f"hosts {other!r} and {host!r} would share the directory"
                              f" {host_dir(host)!r}: a fleet get keeps each host's file apart")


def get_name(remote: str) -> str:
    """The file name a fleet get keeps: ``remote``'s base name (InvalidRequest if none)."""
    name = posixpath.basename(check_remote(remote).rstrip("/"))
    if not name:
        raise InvalidRequest(f"{remote!r} names no file", "path")
    return name


Done = TypeVar("Done", TransferResult, TreeResult)
Transfer = Callable[[Client, Target, HostShare | None, ProgressCallback | None], Awaitable[Done]]
"""One host's transfer on its connected Client: with its share of the file for a put, and a
progress callback that already names the host; a file's TransferResult or a tree's TreeResult."""


async def transfer_host(target: Target, forks: asyncio.Semaphore, transfer: Transfer[Done], *,
                        timeout: float | None, on_progress: OnTransferProgress | None,
                        fanout: FanOut | None = None) -> HostOutcome[Done]:
    """One host's whole part: a fork slot (and, for a put, its share of ``fanout``), the
    connection, the transfer within ``timeout`` from the request; never raises but for a bug."""
    started = 0.0
    progress = None
    if on_progress is not None:
        def progress(done: int, total: int) -> None:
            on_progress(target.name, done, total)
    share = None
    try:
        async with forks:
            started = time.monotonic()
            client = Client.from_options(target.options)
            share = fanout.expect() if fanout is not None else None  # its pass waits for it
            try:
                try:
                    await client.connect()
                except RexecError as exc:
                    return _outcome(target, "unreachable", started, error=str(exc))
                status, result, error = await _timed(
                    lambda: transfer(client, target, share, progress), timeout)
                return _outcome(target, status, started, result=result, error=error)
            finally:
                if share is not None:
                    share.leave()  # at once: its pass goes on without it
                await client.close()
    except asyncio.CancelledError:  # only Group.cancel() cancels a host's task
        return _outcome(target, "cancelled", started)
    finally:
        if share is not None:
            share.close()  # the fork slot is free now (FanOut._slot_freed)


async def _timed(transfer: Callable[[], Awaitable[Done]], timeout: float | None
                 ) -> tuple[HostStatus, Done | None, str | None]:
    """The transfer's status, result and error (what the host's outcome says). A tree some of
    whose entries failed is "failed", with its result (what was transferred) kept."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            result = await transfer()
    except TimeoutError:
        if not scope.expired():
            raise
        return "timed_out", None, f"the transfer did not end within its {timeout:g} s timeout"
    except ConnectionLost as exc:  # a reset, keepalive, EOF: Ansible's UNREACHABLE
        return "unreachable", None, f"connection lost during the transfer: {exc}"
    except RexecError as exc:  # refused, a local file, a checksum, a protocol error
        return "failed", None, str(exc)
    if isinstance(result, TreeResult) and not result.ok:
        count, first = len(result.errors), result.errors[0]
        more = f" (and {count - 1} more)" if count > 1 else ""
        what = "1 entry" if count == 1 else f"{count} entries"
        return "failed", result, f"{what} failed: {first.message}{more}"
    return "ok", result, None


def _outcome(target: Target, status: HostStatus, started: float, *,
             result: Done | None = None, error: str | None = None) -> HostOutcome[Done]:
    return HostOutcome(host=target.name, address=target.options.address, status=status,
                       result=result, error=error,
                       duration=time.monotonic() - started if started else 0.0)


def put_transfer(local: str, remote: str, *, mode: int | None, preserve: bool,
                 force: bool) -> Transfer[TransferResult]:
    """What a fleet put does on each host: send its share of the file to ``remote``."""

    async def transfer(client: Client, target: Target, share: HostShare | None,
                       progress: ProgressCallback | None) -> TransferResult:
        assert share is not None
        return await client._put_shared(share, local, remote, mode=mode, preserve=preserve,
                                        force=force, on_progress=progress)

    return transfer


def get_transfer(remote: str, local_dir: Path, *, preserve: bool) -> Transfer[TransferResult]:
    """What a fleet get does on each host: ``remote`` into ``local_dir/HOST/NAME``."""
    name = get_name(remote)

    async def transfer(client: Client, target: Target, share: HostShare | None,
                       progress: ProgressCallback | None) -> TransferResult:
        folder = local_dir / host_dir(target.name)
        made = await asyncio.to_thread(_make_dir, folder)
        try:
            return await client.get(remote, folder / name, preserve=preserve,
                                    on_progress=progress)
        except BaseException:
            if made:
                with contextlib.suppress(OSError):  # not empty: something else is there now
                    folder.rmdir()
            raise

    return transfer


def _make_dir(folder: Path) -> bool:
    """Make ``folder`` (its parent exists); whether it was made now (LocalFileError)."""
    try:
        os.mkdir(folder, 0o755)
    except FileExistsError:
        if not folder.is_dir():
            raise LocalFileError(f"{folder}: exists and is not a directory", "not_a_directory",
                                 str(folder)) from None
        return False
    except OSError as exc:
        raise local_error(exc, folder) from None
    return True


def put_tree_transfer(local: str, remote: str, *, preserve: bool,
                      force: bool) -> Transfer[TreeResult]:
    """What a fleet ``put -r`` does on each host: the local tree to ``remote`` (each host reads
    the tree itself; a file it holds already is skipped as with one host)."""

    async def transfer(client: Client, target: Target, share: HostShare | None,
                       progress: ProgressCallback | None) -> TreeResult:
        return await client.put_tree(local, remote, preserve=preserve, force=force,
                                     on_progress=progress)

    return transfer


def get_tree_transfer(remote: str, local_dir: Path, *, preserve: bool) -> Transfer[TreeResult]:
    """What a fleet ``get -r`` does on each host: ``remote`` into ``local_dir/HOST/NAME``."""
    name = get_name(remote)

    async def transfer(client: Client, target: Target, share: HostShare | None,
                       progress: ProgressCallback | None) -> TreeResult:
        folder = local_dir / host_dir(target.name)
        await asyncio.to_thread(_make_dir, folder)
        return await client.get_tree(remote, folder / name, preserve=preserve,
                                     on_progress=progress)

    return transfer
