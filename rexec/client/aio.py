"""The async client: ``async with Client("host:port") as c: result = await c.run("cmd")``.

One Client is one authenticated connection; commands on it run one after another (concurrent
``run`` calls queue on a lock). The protocol logic lives in ``rexec.client.core.ClientCore``,
shared with the blocking client; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from rexec.client import tree as tree_plans
from rexec.client.connect import describe_connect_error, no_handshake_error, tls_failure
from rexec.client.core import (
    CANCEL_WAIT,
    STDIN_CHUNK,
    Authenticated,
    ClientCore,
    DownloadStarted,
    Event,
    FileChunk,
    Finished,
    Output,
    TransferFinished,
    TreeEntry,
    UploadReady,
)
from rexec.client.options import ConnectOptions, OptionsClient
from rexec.client.transfer import (
    CHUNK,
    AtomicWriter,
    Digest,
    LocalSource,
    LocalTree,
    ProgressCallback,
    check_remote,
    get_destination,
    get_tree_destination,
    put_attributes,
    put_destination,
    put_tree_destination,
)
from rexec.client.trust import check_server, tls_context
from rexec.errors import (
    CommandFailed,
    InvalidRequest,
    LocalFileError,
    ProtocolError,
    RexecError,
    TransferFailed,
    map_socket_errors,
)
from rexec.result import Result, TransferResult, TreeResult
from rexec.sockets import READ_SIZE, STREAM_LIMIT, tune
from rexec.wire.frames import INLINE_PUT_MAX

StdinSource = bytes | str | IO[bytes] | Iterable[bytes] | AsyncIterable[bytes]
OutputCallback = Callable[[bytes | memoryview], object]


async def stdin_chunks(source: StdinSource) -> AsyncIterator[bytes]:
    """The chunks of any stdin source a command takes (the fan-out reads one source for all)."""
    if isinstance(source, str):
        yield source.encode()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif hasattr(source, "read"):
        while chunk := source.read(STDIN_CHUNK):
            yield chunk
    elif isinstance(source, AsyncIterable):
        async for chunk in source:
            yield chunk
    else:
        for chunk in source:
            yield chunk


class UploadSource(Protocol):
    """What a put sends: a Digest, declared first, then exactly its ``size`` bytes in order.

    ``put`` sends a LocalSource; a fleet put gives every host its share of one read of the
    file (``rexec.fleet.transfer``), which is why a read may have to wait.
    """

    @property
    def digest(self) -> Digest:
        """The size, SHA-256, mode and mtime of what is sent."""
        ...

    @property
    def remaining(self) -> int:
        """Bytes still to read."""
        ...

    async def read(self, size: int) -> bytes | memoryview:
        """The next bytes, at most ``size`` (LocalFileError if the source failed)."""
        ...

    async def hash_now(self) -> Digest:
        """Hash the source before any of it is read (one whose ``digest.sha256`` is empty)."""
        ...


async def _read_all(source: UploadSource, size: int) -> bytes:
    """All ``size`` bytes of a small source, in one piece (LocalFileError if it fails)."""
    pieces = []
    left = size
    while left:
        piece = await source.read(left)
        if not piece:
            raise LocalFileError(f"the file ended {left} bytes before its {size}",
                                 "changed_while_reading")
        pieces.append(bytes(piece))
        left -= len(piece)
    return b"".join(pieces)


class _LocalUpload:
    """A LocalSource as an UploadSource: its reads are of a regular file, never waited for."""

    def __init__(self, source: LocalSource) -> None:
        self._source = source
        self.digest = source.digest

    @property
    def remaining(self) -> int:
        return self._source.remaining

    async def read(self, size: int) -> bytes:
        return self._source.read(size)

    async def hash_now(self) -> Digest:
        self.digest = await asyncio.to_thread(self._source.hash_now)
        return self.digest


class _DataUpload:
    """Bytes in memory as an UploadSource (``Client.put_data``), hashed at once."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0
        now = time.time_ns()
        self.digest = Digest(len(data), hashlib.sha256(data).hexdigest(), 0o644, now)

    @property
    def remaining(self) -> int:
        return len(self._data) - self._at

    async def read(self, size: int) -> memoryview:
        piece = self._data[self._at:self._at + size]
        self._at += len(piece)
        return piece

    async def hash_now(self) -> Digest:
        return self.digest


class Client(OptionsClient):
    """An authenticated connection to a rexec server."""

    def _setup(self, options: ConnectOptions) -> None:
        super()._setup(options)
        self._core: ClientCore | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._credit = asyncio.Event()  # set while the core has stdin credit
        self.server_agent = ""

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and authenticate (ConnectError, AuthenticationError...)."""
        options = self.options
        timeout = options.connect_timeout
        context = tls_context(options)
        try:
            async with asyncio.timeout(timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, limit=STREAM_LIMIT, ssl=context,
                    server_hostname=self.host if context is not None else None,
                )
        except OSError as exc:  # TimeoutError and ssl.SSLError included
            raise describe_connect_error(exc, self.address, self.host, tls=context is not None,
                                         timeout=timeout) from None
        if context is not None:
            await self._check_server()
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            tune(sock, options.keepalive)
        self._core = ClientCore(options.token, identity=options.identity,
                                client_certificate=options.tls_cert is not None,
                                address=self.address)
        try:
            async with asyncio.timeout(timeout):
                event = await self._next_event()
        except TimeoutError:
            await self.close()
            raise no_handshake_error(self.address, timeout) from None
        except BaseException:
            await self.close()
            raise
        assert isinstance(event, Authenticated)
        self.server_agent = event.server_agent

    async def _check_server(self) -> None:
        """The pin or known_hosts check, before a byte of the protocol is sent."""
        assert self._writer is not None
        try:
            check_server(self.options,
                         self._writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (a running command's process group is killed by the server)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    def _flush(self, core: ClientCore) -> None:
        if core.pending and self._writer is not None:
            self._writer.write(core.data_to_send())

    async def _next_event(self) -> Event:
        core, reader = self._core, self._reader
        if core is None or reader is None:
            raise RexecError("the client is not connected: use 'async with Client(...)'")
        while True:
            event = core.next_event()
            if core.stdin_credit or core.file_credit:
                self._credit.set()
            self._flush(core)
            if event is not None:
                return event
            with map_socket_errors("connection to the server broke", core.received):
                try:
                    data = await reader.read(READ_SIZE)
                except ConnectionResetError:  # a close all the same (the blocking client's too):
                    data = b""  # the core says what was lost, and when
                except ssl.SSLError as exc:  # an alert or a bad record: say which
                    if (lost := tls_failure(exc, self.address, core.received,
                                            logged_in=core.ready,
                                            running=core.running)) is not None:
                        raise lost from None
                    raise
            if data:
                core.receive_data(data)
            else:
                core.receive_eof()

    async def run(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: StdinSource | None = None,
        check: bool = False,
        capture: bool = True,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Result:
        """Run ``command`` under the remote ``/bin/sh -c`` and return its Result.

        With ``check=True`` a failed command raises CommandFailed (carrying the Result).
        ``on_stdout``/``on_stderr`` see each chunk as it arrives; ``capture=False`` keeps memory
        constant by not storing output in the Result.
        """
        stream = self.stream(command, env=env, cwd=cwd, timeout=timeout, stdin=stdin,
                             capture=capture)
        async for chunk in stream:
            callback = on_stdout if chunk.stream == "stdout" else on_stderr
            if callback is not None:
                callback(chunk.data)
        assert stream.result is not None
        if check and not stream.result.ok:
            raise CommandFailed(stream.result)
        return stream.result

    async def put(self, local: str | Path, remote: str, *, mode: int | None = None,
                  preserve: bool = False, force: bool = False, check: bool = False,
                  on_progress: ProgressCallback | None = None) -> TransferResult:
        """Copy local file ``local`` to ``remote`` on the server, atomically.

        ``remote`` is absolute; one ending in ``/`` gets the local file's name appended (as cp
        does). ``mode`` (permission bits) is applied; ``preserve`` applies the local mode and
        mtime. The same content (and mode) there already is not sent again (``changed`` False)
        unless ``force``. ``on_progress(done, total)`` sees the bytes sent. A refusal or a
        failure on the server raises TransferFailed (its ``code`` says why), one on this side
        LocalFileError; the remote file is then as it was. ``check`` (a dry run; servers of
        protocol version 5) sends and writes nothing: ``changed`` says whether this put would
        write, after the same checks and refusals.
        """
        async with self._lock:
            core = self._connected()
            started = time.monotonic()
            destination = put_destination(local, remote)
            hashed = check or not core.hashes_uploads
            # opened here when not hashed (an open and an fstat): a thread cost more
            source = (await asyncio.to_thread(LocalSource.open, local, hashed=True) if hashed
                      else LocalSource.open(local, hashed=False))
            with source:
                wanted_mode, mtime_ns = put_attributes(source.digest, mode=mode,
                                                       preserve=preserve)
                event = await self._send_put(
                    core, _LocalUpload(source), destination, mode=wanted_mode,
                    mtime_ns=mtime_ns, force=force, on_progress=on_progress,
                    name=None if remote.endswith("/") else source.path.name, check=check)
        assert event.sha256 is not None  # the core checked the server's against its own
        return TransferResult(str(local), destination, event.file_size, event.sha256,
                              event.changed, time.monotonic() - started)

    async def put_data(self, data: bytes, remote: str, *, mode: int | None = None,
                       force: bool = False, check: bool = False, name: str | None = None,
                       on_progress: ProgressCallback | None = None) -> TransferResult:
        """``put`` of bytes in memory (a rendered template, a generated config) to the
        absolute ``remote``, atomically and verified as ``put`` is; the same content and mode
        there already is not sent again unless ``force``; ``check`` is put's dry run.
        ``name`` is the file's own name when ``remote`` ends in ``/`` or is a directory (as
        a put's local file name is)."""
        async with self._lock:
            core = self._connected()
            started = time.monotonic()
            destination = check_remote(remote)
            if destination.endswith("/"):
                if not name:
                    raise InvalidRequest(f"put_data needs the remote file's own name, not the"
                                         f" directory {remote!r}", "path")
                destination += name
            event = await self._send_put(core, _DataUpload(data), destination, mode=mode,
                                         mtime_ns=None, force=force, on_progress=on_progress,
                                         check=check,
                                         name=None if remote.endswith("/") else name)
        assert event.sha256 is not None  # the core checked the server's against its own
        return TransferResult("-", destination, event.file_size, event.sha256, event.changed,
                              time.monotonic() - started)

    async def stat(self, path: str) -> TreeEntry | None:
        """What is at the absolute remote ``path`` (a link followed, as ``test -e`` does,
        unless the identity has file_roots), or None when nothing is; no process is started
        (servers of protocol version 5). TransferFailed for a refusal."""
        async with self._lock:
            core = self._connected()
            core.start_stat(check_remote(path))
            self._flush(core)
            try:
                entry = await self._transfer_event()
            except TransferFailed as exc:
                if exc.code == "not_found":
                    return None
                raise
            assert isinstance(entry, TreeEntry)
            if not isinstance(await self._transfer_event(), TransferFinished):
                raise ProtocolError(f"{path}: the server answered a stat with more than one"
                                    " entry", "unexpected_frame")
            return entry

    async def _put_shared(self, source: UploadSource, local: str, remote: str, *,
                          mode: int | None = None, preserve: bool = False, force: bool = False,
                          on_progress: ProgressCallback | None = None) -> TransferResult:
        """``put`` of bytes the caller provides, hashed already (``source``) to the absolute
        ``remote``; ``local`` names them in the TransferResult. A fleet put's entry point."""
        async with self._lock:
            core = self._connected()
            started = time.monotonic()
            destination = check_remote(remote)
            wanted_mode, mtime_ns = put_attributes(source.digest, mode=mode, preserve=preserve)
            event = await self._send_put(
                core, source, destination, mode=wanted_mode, mtime_ns=mtime_ns, force=force,
                on_progress=on_progress,
                name=None if remote.endswith("/") else Path(local).name)
        assert event.sha256 is not None  # the core checked the server's against its own
        return TransferResult(local, destination, event.file_size, event.sha256,
                              event.changed, time.monotonic() - started)

    async def _send_put(self, core: ClientCore, source: UploadSource, path: str, *,
                        mode: int | None, mtime_ns: int | None, force: bool,
                        on_progress: ProgressCallback | None, base: str | None = None,
                        name: str | None = None, check: bool = False) -> TransferFinished:
        """Put an open source as ``path`` (or the entry ``path`` of ``base``; into the
        directory ``path`` as ``name``, when it is one). A source not hashed yet is hashed as
        it is sent, or first when the server asks (a file of that size is there)."""
        digest = source.digest
        if check and not digest.sha256:
            digest = await source.hash_now()
        if not check and core.inline_puts and 0 < digest.size <= INLINE_PUT_MAX:
            # a small file goes whole with its put: one round trip, answered TransferFinished
            data = await _read_all(source, digest.size)
            sha256 = digest.sha256 or hashlib.sha256(data).hexdigest()
            core.start_put(path, file_size=len(data), sha256=sha256, mode=mode,
                           mtime_ns=mtime_ns, force=force, base=base, name=name, data=data)
            self._flush(core)
            event = await self._transfer_event()
            if on_progress is not None:
                on_progress(len(data), len(data))
            assert isinstance(event, TransferFinished)
            return event
        core.start_put(path, file_size=digest.size, sha256=digest.sha256 or None, mode=mode,
                       mtime_ns=mtime_ns, force=force, base=base, name=name, check=check)
        self._flush(core)
        try:
            event = await self._transfer_event()
        except TransferFailed as exc:
            if exc.code != "digest_required" or digest.sha256:
                raise
            digest = await source.hash_now()
            core.start_put(path, file_size=digest.size, sha256=digest.sha256, mode=mode,
                           mtime_ns=mtime_ns, force=force, base=base, name=name)
            self._flush(core)
            event = await self._transfer_event()
        if isinstance(event, UploadReady):
            event = await self._upload(core, source, on_progress)
        assert isinstance(event, TransferFinished)
        return event

    async def get(self, remote: str, local: str | Path, *, preserve: bool = False,
                  on_progress: ProgressCallback | None = None) -> TransferResult:
        """Copy remote file ``remote`` (absolute) to ``local``, atomically.

        A ``local`` that is a directory receives the file under the remote base name. The bytes
        go to a temporary file beside it, renamed over it only once their size and SHA-256
        match the server's; on any failure the temporary file is removed and ``local`` is as it
        was. An existing ``local`` keeps its mode, a new one gets the remote mode less the
        umask; ``preserve`` applies the remote mode and mtime exactly.
        """
        async with self._lock:
            core = self._connected()
            started = time.monotonic()
            destination = get_destination(remote, local)
            done = await self._get_file(core, remote, destination, preserve=preserve,
                                        on_progress=on_progress)
        assert done.sha256 is not None  # the core checked the server's against its own
        return TransferResult(str(destination), remote, done.file_size, done.sha256, True,
                              time.monotonic() - started)

    async def _get_file(self, core: ClientCore, remote: str, destination: Path, *,
                        preserve: bool, on_progress: ProgressCallback | None,
                        base: str | None = None) -> TransferFinished:
        core.start_get(remote, base=base)
        self._flush(core)
        info = await self._transfer_event()
        assert isinstance(info, DownloadStarted)
        try:
            writer = AtomicWriter.create(destination, info.mode, info.file_size)
        except LocalFileError:
            await self._abandon(core)
            raise
        with writer:
            done = await self._download(core, writer, info.file_size, on_progress)
            await asyncio.to_thread(writer.commit, mode=info.mode if preserve else None,
                                    mtime_ns=info.mtime_ns if preserve else None)
        return done

    async def put_tree(self, local: str | Path, remote: str, *, preserve: bool = False,
                       force: bool = False,
                       on_progress: ProgressCallback | None = None) -> TreeResult:
        """Copy the local directory ``local`` to the remote directory ``remote`` (``-r``).

        ``remote`` (absolute) is made with its parents, or merged into when it exists; ending
        in ``/`` it gets the local directory's name appended. Every entry keeps its permission
        bits, links are sent as links (never followed; one leading out of the tree is refused),
        files the server holds already are not sent again (unless ``force``), and ``preserve``
        sets the mtimes too. An entry that fails is listed in the result's ``errors`` and the
        rest go on; what ends the connection raises. ``on_progress(done, total)`` counts the
        files' bytes.
        """
        async with self._lock:
            core = self._connected()
            root = put_tree_destination(local, remote)
            tree = await asyncio.to_thread(LocalTree.read, local)
            plan = tree_plans.put_tree(tree, root, preserve=preserve, force=force)
            return await self._carry_out(core, plan, tree.size, on_progress)

    async def get_tree(self, remote: str, local: str | Path, *, preserve: bool = False,
                       on_progress: ProgressCallback | None = None) -> TreeResult:
        """Copy the remote directory ``remote`` to the local directory ``local`` (``-r``).

        ``local`` is made with its parents, or merged into; ending in ``/`` it gets the remote
        directory's name appended. Every name the server lists is checked before anything is
        written (relative, no '..', links staying inside) and nothing is written through a
        symbolic link; each file is written atomically as ``get`` does. An entry that fails is
        listed in the result's ``errors`` and the rest go on.
        """
        async with self._lock:
            core = self._connected()
            destination = get_tree_destination(remote, local)
            plan = tree_plans.get_tree(remote, destination, preserve=preserve)
            return await self._carry_out(core, plan, None, on_progress)

    async def _carry_out(self, core: ClientCore, plan: tree_plans.Plan, total: int | None,
                         on_progress: ProgressCallback | None) -> TreeResult:
        """Run a directory transfer's plan on the connection, step by step."""
        runner = tree_plans.Runner(plan, total, on_progress)
        step: tree_plans.Step | None = runner.first()
        while step is not None:
            try:
                outcome = await self._step(core, step, runner.progress)
            except (TransferFailed, LocalFileError) as exc:
                outcome = runner.failed(step, exc)
            step = runner.next(outcome)
        assert runner.result is not None
        return runner.result

    async def _step(self, core: ClientCore, step: tree_plans.Step,
                    progress: ProgressCallback) -> tree_plans.Outcome:
        """One step of a plan (a refusal raises TransferFailed, as a put's does)."""
        if isinstance(step, tree_plans.SendFile):
            source = await asyncio.to_thread(LocalSource.open, step.local, follow=False,
                                             hashed=not core.hashes_uploads)
            with source:
                done = await self._send_put(core, _LocalUpload(source), step.path,
                                            mode=step.mode, mtime_ns=step.mtime_ns,
                                            force=step.force, on_progress=progress,
                                            base=step.base)
            return tree_plans.Done(done.changed, done.file_size)
        if isinstance(step, tree_plans.FetchFile):
            done = await self._get_file(core, step.path, step.local, base=step.base,
                                        preserve=step.preserve, on_progress=progress)
            return tree_plans.Done(True, done.file_size)
        tree_plans.start(core, step)
        self._flush(core)
        if isinstance(step, tree_plans.ListTree):
            entries = []
            while not isinstance(event := await self._transfer_event(), TransferFinished):
                assert isinstance(event, TreeEntry)
                entries.append(event)
            return tree_plans.Listing(tuple(entries))
        event = await self._transfer_event()
        assert isinstance(event, TransferFinished)
        return tree_plans.Done(event.changed)

    def _connected(self) -> ClientCore:
        if self._core is None or self._writer is None:
            raise RexecError("the client is not connected: use 'async with Client(...)'")
        return self._core

    async def _transfer_event(self) -> Event:
        """The next event of a transfer; a cancelled caller leaves no transfer half-done (the
        connection is closed, as a cancelled command's would be)."""
        try:
            return await self._next_event()
        except asyncio.CancelledError:
            await self.close()
            raise

    async def _upload(self, core: ClientCore, source: UploadSource,
                      on_progress: ProgressCallback | None) -> Event:
        """Send the put's bytes within the credit while the server's frames are read."""
        failure: list[LocalFileError] = []
        feeder = asyncio.create_task(self._feed_file(core, source, on_progress, failure))
        try:
            return await self._transfer_event()
        except RexecError:
            if failure:  # the server's "cancelled" answers this side's failure: say that one
                raise failure[0] from None
            raise
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, RexecError, OSError):
                await feeder

    async def _feed_file(self, core: ClientCore, source: UploadSource,
                         on_progress: ProgressCallback | None,
                         failure: list[LocalFileError]) -> None:
        writer = self._writer
        assert writer is not None
        size = source.digest.size
        try:
            while core.uploading and core.upload_remaining:
                if not core.file_credit:
                    self._credit.clear()
                    await self._credit.wait()
                    continue
                data = await source.read(min(core.file_credit, CHUNK))
                if not core.uploading:  # the server ended the put while the read waited
                    return
                core.send_file_data(data)
                self._flush(core)
                if on_progress is not None:
                    on_progress(size - source.remaining, size)
                with map_socket_errors("connection broke while sending a file"):
                    await writer.drain()
        except LocalFileError as exc:
            failure.append(exc)
            core.cancel()
            self._flush(core)

    async def _download(self, core: ClientCore, writer: AtomicWriter, size: int,
                        on_progress: ProgressCallback | None) -> TransferFinished:
        """Write the get's chunks as they come; the core checks them at the end."""
        while True:
            event = await self._transfer_event()
            if isinstance(event, TransferFinished):
                return event
            assert isinstance(event, FileChunk)
            try:
                writer.write(event.data)
            except LocalFileError:
                await self._abandon(core)
                raise
            if on_progress is not None:
                on_progress(writer.written, size)

    async def _abandon(self, core: ClientCore) -> None:
        """Cancel the transfer after a local failure and wait for the server's answer, so the
        connection stays usable; close it if the answer does not come."""
        core.cancel()
        self._flush(core)
        try:
            async with asyncio.timeout(CANCEL_WAIT):
                while core.transferring:
                    await self._next_event()
        except RexecError:
            pass  # the server's "cancelled", as asked (or the connection is gone)
        except TimeoutError:
            await self.close()

    def stream(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: StdinSource | None = None,
        capture: bool = False,
    ) -> CommandStream:
        """Run ``command`` and iterate over its output chunks as they arrive.

        ``async for chunk in c.stream("cmd")`` yields Output(stream, data); afterwards the stream's
        ``result`` holds the Result. Leaving the loop early cancels the remote command.
        """
        return CommandStream(self, command, env, cwd, timeout, stdin, capture)


class CommandStream:
    """Live output of one command; ``result`` is set once the iteration ends."""

    def __init__(self, client: Client, command: str, env: dict[str, str] | None,  # noqa: PLR0917
                 cwd: str | None, timeout: float | None, stdin: StdinSource | None,
                 capture: bool) -> None:
        self._client = client
        self._args = (command, env, cwd, timeout, capture)
        self._stdin = stdin
        self.result: Result | None = None

    def __aiter__(self) -> AsyncIterator[Output]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Output]:
        client = self._client
        command, env, cwd, timeout, capture = self._args
        async with client._lock:
            core = client._core
            if core is None or client._writer is None:
                raise RexecError("the client is not connected: use 'async with Client(...)'")
            core.start(command, env=env, cwd=cwd, timeout=timeout,
                       stdin=self._stdin is not None, capture=capture)
            client._flush(core)
            feeder = None
            if self._stdin is not None:
                feeder = asyncio.create_task(self._feed(core, self._stdin))
            try:
                while True:
                    event = await client._next_event()
                    if isinstance(event, Finished):
                        self.result = event.result
                        return
                    if isinstance(event, Output):
                        yield Output(event.stream, bytes(event.data))
            finally:
                if feeder is not None:
                    feeder.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RexecError, OSError):
                        await feeder
                if core.running:
                    await self._cancel(core)

    async def _feed(self, core: ClientCore, source: StdinSource) -> None:
        client = self._client
        writer = client._writer
        assert writer is not None
        async for chunk in stdin_chunks(source):
            view = memoryview(chunk)
            while view:
                if not core.running:
                    return
                if not core.stdin_credit:  # wait for the server to take what it was sent
                    client._credit.clear()
                    await client._credit.wait()
                    continue
                count = min(len(view), core.stdin_credit)
                core.send_stdin(view[:count])
                view = view[count:]
                client._flush(core)
                with map_socket_errors("connection broke while sending stdin"):
                    await writer.drain()
        if core.running:
            core.send_stdin_eof()
            self._client._flush(core)

    async def _cancel(self, core: ClientCore) -> None:
        """Stop the remote command; close the connection if it does not end in time."""
        core.cancel()
        self._client._flush(core)
        try:
            async with asyncio.timeout(CANCEL_WAIT):
                while not isinstance(await self._client._next_event(), Finished):
                    pass
        except (TimeoutError, RexecError):
            await self._client.close()  # the server kills the group when the connection drops
        except asyncio.CancelledError:
            await self._client.close()
            raise
