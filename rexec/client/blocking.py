"""The blocking client: plain sockets and poll(), on the same ClientCore as the async Client.

It never imports asyncio, so the one-shot ``rexec run`` starts fast. One loop does everything: it
reads the server, writes queued frames, and forwards local stdin only while the send queue is
small, so neither side can deadlock on a full buffer and memory stays constant.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, TYPE_CHECKING, Any

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
    checksum_mismatch,
)
from rexec.client.escape import EscapeFilter, escape_help
from rexec.client.options import ConnectOptions, OptionsClient
from rexec.errors import (
    CommandFailed,
    ConnectError,
    ConnectionLost,
    LocalFileError,
    RexecError,
    TransferFailed,
)
from rexec.result import Result, TransferResult, TreeResult
from rexec.sockets import READ_SIZE, tune
from rexec.wire.codec import PEEK_SIZE
from rexec.wire.frames import INLINE_PUT_MAX, MAX_BODY_SIZE, Terminal

if TYPE_CHECKING:  # the transfer modules are imported by the methods that use them:
    # `rexec run` never loads them (about 14 ms of its start-up)
    import queue

    from rexec.client import tree as tree_plans
    from rexec.client.transfer import AtomicWriter, LocalSource, ProgressCallback

SEND_HIGH_WATER = 1024 * 1024  # stop reading local stdin while this much waits to be sent
PIPELINE_AT = 4 * 1024 * 1024
"""A get of this many bytes or more is hashed on a thread of its own and written on another."""
PIPELINE_DEPTH = 4
"""The most received chunks (1 MiB each, at most) queued for each of those threads."""
PIPELINE_BUFFERS = 2 * PIPELINE_DEPTH + 3
"""The buffers a large get receives its chunks into and uses again: both queues full, one
chunk in each thread's hands, one being received."""
PASS_AT = 32 * 1024
"""An output body with this much still to come goes from the socket to a descriptor given as
``on_stdout``/``on_stderr`` in the kernel (``os.splice``), where that descriptor allows it. Under a
pipe-full 64 KiB body (what reaches the client after its header and a PEEK_SIZE read), so that
those are passed too."""
SPLICE = hasattr(os, "splice")
_IN, _OUT = select.POLLIN | select.POLLHUP | select.POLLERR, select.POLLOUT

OutputCallback = Callable[[bytes | memoryview], object]
BlockingStdin = bytes | str | int | IO[bytes]

_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
                "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}


class BlockingClient(OptionsClient):
    """An authenticated connection for scripts: ``with BlockingClient(addr) as c: c.run(...)``."""

    def _setup(self, options: ConnectOptions) -> None:
        super()._setup(options)
        self._sock: socket.socket | None = None
        self._core: ClientCore | None = None
        self._out = bytearray()
        # A put's frame body, written from the upload's buffer after _out (send_file_prefix);
        # while it is, what the core queues waits in the core (_take_outgoing).
        self._body: memoryview | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._cancel_requested = False
        self._window: tuple[int, int, int, int] | None = None  # a resize to send, if any
        self._ssl: ModuleType | None = None  # the ssl module, once the connection uses TLS
        self.server_agent = ""
        self.timings: dict[str, float] = {}  # seconds: connect, tls, login (after connect())
        self.broken_pipe = False  # an output descriptor's reader went away (see run())
        self._passing: _FdSink | None = None  # where a passed output body is being moved
        self._frame_reads = False  # read a frame's rest and a peek, not READ_SIZE (_drive)

    def __enter__(self) -> BlockingClient:
        try:
            self.connect()
        except BaseException:
            self.close()  # __exit__ will not run: release the wake-up pipe now
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection and authenticate."""
        options = self.options
        timeout = options.connect_timeout
        started = time.monotonic()
        # An ASCII host goes to getaddrinfo as bytes: a str would be IDNA-encoded first, and
        # importing that codec (with unicodedata) is 1.5 ms of a one-shot run's start-up.
        host: str | bytes = self.host.encode("ascii") if self.host.isascii() else self.host
        try:
            # (typeshed says str; create_connection passes it to getaddrinfo, which takes bytes)
            sock = socket.create_connection((host, self.port),  # type: ignore[arg-type]
                                            timeout=timeout)
        except OSError as exc:  # TimeoutError and socket.gaierror included
            raise self._connect_error(exc, tls=False) from None
        tune(sock, options.keepalive)
        self.timings["connect"] = time.monotonic() - started
        if options.uses_tls:
            sock = self._wrap_tls(sock)
            self.timings["tls"] = time.monotonic() - started - self.timings["connect"]
        sock.setblocking(False)
        self._sock = sock
        self._core = ClientCore(options.token, identity=options.identity,
                                client_certificate=options.tls_cert is not None,
                                address=self.address)
        try:
            event = self._drive(deadline=time.monotonic() + timeout)
        except BaseException:
            self.close()
            raise
        if event is None:
            self.close()
            raise no_handshake_error(self.address, timeout)
        assert isinstance(event, Authenticated)
        self.server_agent = event.server_agent
        self.timings["login"] = time.monotonic() - started - sum(self.timings.values())

    @property
    def tls_version(self) -> str | None:
        """The TLS version of the connection (e.g. "TLSv1.3"), or None without TLS."""
        version = getattr(self._sock, "version", None)
        return version() if callable(version) else None

    @property
    def server_fingerprint(self) -> str | None:
        """The SHA-256 fingerprint of the server's certificate (SHA256:...), or None."""
        get = getattr(self._sock, "getpeercert", None)
        der = get(binary_form=True) if callable(get) else None
        if not der:
            return None
        from rexec.tls import fingerprint

        return fingerprint(der)

    @property
    def server_subject(self) -> str | None:
        """The subject of the server's certificate, as "CN=...,O=...", or None."""
        get = getattr(self._sock, "getpeercert", None)
        cert = get() if callable(get) else None
        if not cert:
            return None
        return ",".join(f"{_SHORT_NAMES.get(key, key)}={value}"
                        for rdn in cert.get("subject", ()) for key, value in rdn)

    def _wrap_tls(self, sock: socket.socket) -> socket.socket:
        """Do the TLS handshake (blocking, within the connect timeout), then the pin check."""
        import ssl

        from rexec.client.trust import check_server, tls_context

        context = tls_context(self.options)
        assert context is not None
        try:
            wrapped = context.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:  # ssl.SSLError and TimeoutError included
            sock.close()
            raise self._connect_error(exc, tls=True) from None
        try:
            check_server(self.options, wrapped.getpeercert(binary_form=True))
        except BaseException:
            wrapped.close()
            raise
        self._ssl = ssl
        return wrapped

    def _connect_error(self, exc: OSError, *, tls: bool) -> ConnectError:
        return describe_connect_error(exc, self.address, self.host, tls=tls,
                                      timeout=self.options.connect_timeout)

    def close(self) -> None:
        """Close the connection and the wake-up pipe."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def request_resize(self, rows: int, cols: int, width: int = 0, height: int = 0) -> None:
        """Send the running PTY command the window's new size; safe from a signal handler."""
        self._window = (rows, cols, width, height)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def interact(
        self,
        command: str | None,
        *,
        pty: Terminal,
        stdin_fd: int,
        stdout_fd: int,
        escape: bytes | None = b"~",
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        """An interactive session on a remote PTY: ``command`` (None: the login shell).

        Keystrokes read from ``stdin_fd`` go to the remote terminal unchanged but for the
        escapes (``rexec.client.escape``); what the terminal shows is written to ``stdout_fd``.
        ``~.`` raises SessionEnded (the caller closes the connection: the server then stops
        the session's processes). Putting the local terminal in raw mode is the caller's part
        (``rexec.client.terminal.RawMode``), as is calling ``request_resize`` on SIGWINCH.
        """
        core = self._core
        if core is None:
            raise RexecError("the client is not connected: use 'with BlockingClient(...)'")
        if command is None:
            core.start_shell(env=env, cwd=cwd, timeout=timeout, capture=False, pty=pty)
        else:
            core.start(command, env=env, cwd=cwd, timeout=timeout, stdin=True, capture=False,
                       pty=pty)
        self._cancel_requested = False
        self._window = None
        source = _KeyboardSource(stdin_fd, stdout_fd, EscapeFilter(escape),
                                 escape.decode() if escape else "~")
        write = functools.partial(_write_all, stdout_fd)
        event = self._drive(source=source, callbacks={"stdout": write, "stderr": write})
        assert isinstance(event, Finished)
        return event.result

    def shell_script(
        self,
        *,
        stdin: BlockingStdin,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        capture: bool = True,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Result:
        """The login shell without a PTY, reading its script from ``stdin`` (so ``cd`` and
        variables carry from line to line), stdout and stderr apart as with ``run``."""
        core = self._core
        if core is None:
            raise RexecError("the client is not connected: use 'with BlockingClient(...)'")
        core.start_shell(env=env, cwd=cwd, timeout=timeout, capture=capture)
        self._cancel_requested = False
        event = self._drive(source=_StdinSource(stdin),
                            callbacks={"stdout": on_stdout, "stderr": on_stderr})
        assert isinstance(event, Finished)
        return event.result

    def request_cancel(self) -> None:
        """Ask for the running command to be cancelled; safe to call from a signal handler."""
        self._cancel_requested = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def run(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: BlockingStdin | None = None,
        check: bool = False,
        capture: bool = True,
        on_stdout: OutputCallback | int | None = None,
        on_stderr: OutputCallback | int | None = None,
    ) -> Result:
        """Run ``command`` remotely and return its Result (see ``rexec.Client.run``).

        ``stdin`` may be bytes, text, a file descriptor or a binary file; it is streamed.
        ``on_stdout`` and ``on_stderr`` may be file descriptors rather than callbacks: the
        output is written there, and without ``capture`` a large body goes from the socket
        to a pipe, a regular file or /dev/null in the kernel (``os.splice``, plaintext). When
        such a descriptor's reader goes away (EPIPE), that stream's output is dropped, the
        command is cancelled and ``broken_pipe`` is set.
        """
        core = self._core
        if core is None:
            raise RexecError("the client is not connected: use 'with BlockingClient(...)'")
        core.start(command, env=env, cwd=cwd, timeout=timeout, stdin=stdin is not None,
                   capture=capture)
        self._cancel_requested = False
        self.broken_pipe = False
        callbacks: dict[str, OutputCallback | None] = {
            name: _FdSink(given, self) if isinstance(given, int) else given
            for name, given in (("stdout", on_stdout), ("stderr", on_stderr))}
        source = _StdinSource(stdin) if stdin is not None else None
        try:
            event = self._drive(source=source, callbacks=callbacks)
        finally:
            self._passing = None  # (mid-body only if the connection broke)
            for sink in callbacks.values():
                if isinstance(sink, _FdSink):
                    sink.close()
        assert isinstance(event, Finished)
        if check and not event.result.ok:
            raise CommandFailed(event.result)
        return event.result

    def put(self, local: str | Path, remote: str, *, mode: int | None = None,
            preserve: bool = False, force: bool = False, check: bool = False,
            on_progress: ProgressCallback | None = None) -> TransferResult:
        """Copy local file ``local`` to ``remote`` (absolute; ending in ``/`` or naming a
        directory: the local name inside it), atomically: see ``rexec.Client.put`` (and its
        dry run, ``check``)."""
        from rexec.client import transfer as files

        core = self._connected()
        started = time.monotonic()
        destination = files.put_destination(local, remote)
        self._cancel_requested = False  # before the hashing: a cancel meanwhile is kept
        with files.LocalSource.open(local, hashed=check or not core.hashes_uploads) as source:
            wanted_mode, mtime_ns = files.put_attributes(source.digest, mode=mode,
                                                         preserve=preserve)
            event = self._put_source(core, source, destination, mode=wanted_mode,
                                     mtime_ns=mtime_ns, force=force, on_progress=on_progress,
                                     name=None if remote.endswith("/") else source.path.name,
                                     check=check)
        assert event.sha256 is not None  # the core checked the server's against its own
        return TransferResult(str(local), destination, event.file_size, event.sha256,
                              event.changed, time.monotonic() - started)

    def _put_source(self, core: ClientCore, source: LocalSource, path: str, *,
                    mode: int | None, mtime_ns: int | None, force: bool,
                    on_progress: ProgressCallback | None, base: str | None = None,
                    name: str | None = None, check: bool = False) -> TransferFinished:
        digest = source.digest
        if not check and core.inline_puts and 0 < digest.size <= INLINE_PUT_MAX:
            # a small file goes whole with its put: one round trip, answered TransferFinished
            data = source.read_rest()
            core.start_put(path, file_size=len(data), mode=mode, mtime_ns=mtime_ns, force=force,
                           sha256=digest.sha256 or hashlib.sha256(data).hexdigest(),
                           base=base, name=name, data=data)
            event = self._drive()
            if on_progress is not None:
                on_progress(len(data), len(data))
            assert isinstance(event, TransferFinished)
            return event
        core.start_put(path, file_size=digest.size, sha256=digest.sha256 or None, mode=mode,
                       mtime_ns=mtime_ns, force=force, base=base, name=name, check=check)
        try:
            event = self._drive()
        except TransferFailed as exc:
            if exc.code != "digest_required" or digest.sha256:
                raise
            # a file of that size is there: hash first, so that the same one is not sent
            digest = source.hash_now()
            core.start_put(path, file_size=digest.size, sha256=digest.sha256, mode=mode,
                           mtime_ns=mtime_ns, force=force, base=base, name=name)
            event = self._drive()
        if isinstance(event, UploadReady):
            try:
                event = self._drive(source=_UploadSource(source, on_progress))
            except LocalFileError:
                self._abandon(core)
                raise
        assert isinstance(event, TransferFinished)
        return event

    def get(self, remote: str, local: str | Path, *, preserve: bool = False,
            on_progress: ProgressCallback | None = None) -> TransferResult:
        """Copy remote file ``remote`` to ``local`` (an existing directory: the remote name
        inside it), atomically: see ``rexec.Client.get``."""
        from rexec.client import transfer as files

        core = self._connected()
        started = time.monotonic()
        destination = files.get_destination(remote, local)
        self._cancel_requested = False
        done = self._get_file(core, remote, destination, preserve=preserve,
                              on_progress=on_progress)
        assert done.sha256 is not None  # the core checked the server's against its own
        return TransferResult(str(destination), remote, done.file_size, done.sha256, True,
                              time.monotonic() - started)

    def _get_file(self, core: ClientCore, remote: str, destination: Path, *, preserve: bool,
                  on_progress: ProgressCallback | None,
                  base: str | None = None) -> TransferFinished:
        from rexec.client.transfer import AtomicWriter

        core.start_get(remote, base=base)
        info = self._drive()
        assert isinstance(info, DownloadStarted)
        try:
            writer = AtomicWriter.create(destination, info.mode, info.file_size)
        except LocalFileError:
            self._abandon(core)
            raise
        with writer:
            if info.file_size >= PIPELINE_AT:
                # a large file is hashed and written on a thread of its own while this one
                # receives (and decrypts) the next bytes: one after the other, they took turns
                # chunks received into the pipeline's own buffers, kept there, not copied
                core.hash_download_elsewhere()
                pipeline = _WritePipeline(writer)
                core.receive_file_into(pipeline.allocate)
                callbacks = pipeline.callbacks(info.file_size, on_progress)
            else:
                pipeline = None

                def write(data: bytes | memoryview) -> None:
                    writer.write(data)
                    if on_progress is not None:
                        on_progress(writer.written, info.file_size)

                callbacks = {"file": write}
            try:
                try:
                    done = self._drive(callbacks=callbacks)
                except LocalFileError:
                    self._abandon(core)
                    raise
                # a failed last write is raised here: the download is over, the connection
                # ready, the file not kept
                digest = pipeline.finish() if pipeline is not None else None
            finally:
                if pipeline is not None:
                    core.receive_file_into(None)
                    pipeline.close()
            assert isinstance(done, TransferFinished)
            if digest is not None and digest != done.sha256:
                raise checksum_mismatch(remote, digest, done.sha256)
            writer.commit(mode=info.mode if preserve else None,
                          mtime_ns=info.mtime_ns if preserve else None)
        return done

    def put_tree(self, local: str | Path, remote: str, *, preserve: bool = False,
                 force: bool = False, on_progress: ProgressCallback | None = None) -> TreeResult:
        """Copy the local directory ``local`` to the remote directory ``remote``: see
        ``rexec.Client.put_tree``."""
        from rexec.client import transfer as files
        from rexec.client import tree as tree_plans

        core = self._connected()
        root = files.put_tree_destination(local, remote)
        self._cancel_requested = False
        tree = files.LocalTree.read(local)
        plan = tree_plans.put_tree(tree, root, preserve=preserve, force=force)
        return self._carry_out(core, plan, tree.size, on_progress)

    def get_tree(self, remote: str, local: str | Path, *, preserve: bool = False,
                 on_progress: ProgressCallback | None = None) -> TreeResult:
        """Copy the remote directory ``remote`` to the local directory ``local``: see
        ``rexec.Client.get_tree``."""
        from rexec.client import transfer as files
        from rexec.client import tree as tree_plans

        core = self._connected()
        destination = files.get_tree_destination(remote, local)
        self._cancel_requested = False
        plan = tree_plans.get_tree(remote, destination, preserve=preserve)
        return self._carry_out(core, plan, None, on_progress)

    def _carry_out(self, core: ClientCore, plan: tree_plans.Plan, total: int | None,
                   on_progress: ProgressCallback | None) -> TreeResult:
        from rexec.client import tree as tree_plans

        runner = tree_plans.Runner(plan, total, on_progress)
        step: tree_plans.Step | None = runner.first()
        while step is not None:
            if self._cancel_requested:  # between two steps: the next is not started
                raise TransferFailed("the directory transfer was cancelled", "cancelled",
                                     tree_plans.entry_of(step))
            try:
                outcome = self._step(core, step, runner.progress)
            except (TransferFailed, LocalFileError) as exc:
                outcome = runner.failed(step, exc)
            step = runner.next(outcome)
        assert runner.result is not None
        return runner.result

    def _step(self, core: ClientCore, step: tree_plans.Step,
              progress: ProgressCallback) -> tree_plans.Outcome:
        from rexec.client import tree as tree_plans
        from rexec.client.transfer import LocalSource

        if isinstance(step, tree_plans.SendFile):
            with LocalSource.open(step.local, follow=False,
                                  hashed=not core.hashes_uploads) as source:
                done = self._put_source(core, source, step.path, mode=step.mode,
                                        mtime_ns=step.mtime_ns, force=step.force,
                                        on_progress=progress, base=step.base)
            return tree_plans.Done(done.changed, done.file_size)
        if isinstance(step, tree_plans.FetchFile):
            done = self._get_file(core, step.path, step.local, base=step.base,
                                  preserve=step.preserve, on_progress=progress)
            return tree_plans.Done(True, done.file_size)
        tree_plans.start(core, step)
        if isinstance(step, tree_plans.ListTree):
            entries = []
            while not isinstance(event := self._drive(), TransferFinished):
                assert isinstance(event, TreeEntry)
                entries.append(event)
            return tree_plans.Listing(tuple(entries))
        event = self._drive()
        assert isinstance(event, TransferFinished)
        return tree_plans.Done(event.changed)

    def _connected(self) -> ClientCore:
        if self._core is None:
            raise RexecError("the client is not connected: use 'with BlockingClient(...)'")
        return self._core

    def _abandon(self, core: ClientCore) -> None:
        """Cancel the transfer after a local failure and wait for the server's answer, so the
        connection stays usable; give up (closing it) if the answer does not come."""
        core.cancel()
        try:
            answer = self._drive(deadline=time.monotonic() + CANCEL_WAIT)
        except RexecError:
            return  # the server's "cancelled", as asked (or the connection is gone)
        if answer is None:
            self.close()

    def _drive(
        self,
        deadline: float | None = None,
        source: _StdinSource | None = None,
        callbacks: dict[str, OutputCallback | None] | None = None,
    ) -> Event | None:
        """Move bytes until an Authenticated or Finished event (None: the deadline passed)."""
        core, sock = self._core, self._sock
        assert core is not None and sock is not None
        poller = select.poll()
        poller.register(self._wake_r, _IN)
        cancel_sent = False
        # Output going to a descriptor that takes splices: read up to the next header and a
        # peek of its body, so that a large body stays on the wire to be passed rather than
        # half received by a full read (which left up to 85% of a stream copied through here).
        self._frame_reads = bool(callbacks) and self._ssl is None and any(
            isinstance(sink, _FdSink) and sink.splices for sink in (callbacks or {}).values())
        while True:
            event = self._dispatch(core, sock, callbacks or {})
            if event is not None:
                return event
            if callbacks and self._ssl is None and self._passing is None:
                self._begin_pass(core, callbacks)
            if self._window is not None:
                core.resize(*self._window)
                self._window = None
            if self._cancel_requested and not cancel_sent:
                core.cancel()
                cancel_sent = True
                deadline = time.monotonic() + CANCEL_WAIT
            self._queue(core, source)
            # Sent now: a poll() for POLLOUT first cost each request (a run frame, say) a
            # system call and a pass of this loop before its first byte left.
            self._flush_now(sock, core)
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait == 0.0:
                if cancel_sent:
                    raise ConnectionLost(
                        "the server did not end the command after it was cancelled", core.received)
                return None
            if self._more_input_ready(core, source):
                wait = 0.0  # input in hand is pumped on the next pass: poll, never block
            self._poll(poller, sock, core, source, wait)

    def _dispatch(
        self, core: ClientCore, sock: socket.socket, callbacks: dict[str, OutputCallback | None]
    ) -> Event | None:
        """Hand decoded output to the callbacks; return the first other event."""
        while (event := core.next_event()) is not None:
            if isinstance(event, FileChunk):
                keep = callbacks.get("file_owned") if event.owned else None
                if keep is not None:
                    keep(event.data)
                elif (write := callbacks.get("file")) is not None:
                    write(event.data)
                continue
            if not isinstance(event, Output):
                self._take_outgoing(core)
                self._flush_now(sock, core)
                return event
            callback = callbacks.get(event.stream)
            if callback is not None:
                callback(event.data)
        return None

    def _take_outgoing(self, core: ClientCore) -> None:
        """Move what the core queued to _out, unless a body is being written (it waits)."""
        if self._body is None:
            self._out += core.data_to_send()

    def _queue(self, core: ClientCore, source: _StdinSource | None) -> None:
        """Collect what the core wants sent, plus stdin that needs no polling, if there is room."""
        self._take_outgoing(core)
        if self._more_input_ready(core, source):
            assert source is not None
            source.pump(core)
            self._take_outgoing(core)
            self._body = source.take_body()

    def _more_input_ready(self, core: ClientCore, source: _StdinSource | None) -> bool:
        """Whether stdin in hand (or a file) can be pumped now: the credit and room allow."""
        return (self._body is None and source is not None and source.ready_without_poll
                and source.can_send(core) and len(self._out) < SEND_HIGH_WATER)

    def _poll(self, poller: select.poll, sock: socket.socket, core: ClientCore,
              source: _StdinSource | None, wait: float | None) -> None:
        """Wait for the socket, stdin or a wake-up, and serve whichever is ready."""
        if self._ssl is not None and sock.pending():  # type: ignore[attr-defined]
            self._receive(sock, core)  # decrypted bytes poll() cannot see
            return
        poller.register(sock, _IN | (_OUT if self._out or self._body is not None else 0))
        if source is not None and source.fd is not None:
            if len(self._out) < SEND_HIGH_WATER and core.running and core.stdin_credit:
                poller.register(source.fd, _IN)
            else:
                with contextlib.suppress(KeyError):
                    poller.unregister(source.fd)
        for fd, mask in poller.poll(None if wait is None else wait * 1000):
            if fd == sock.fileno():
                if mask & _OUT:
                    self._flush_now(sock, core)
                if mask & _IN:
                    self._receive(sock, core)
            elif fd == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            elif source is not None and fd == source.fd:
                with contextlib.suppress(KeyError):
                    poller.unregister(fd)
                source.pump(core)
                # Sent now, not after another poll() for POLLOUT: a keystroke reaches the
                # server one system call and one pass of this loop sooner.
                self._take_outgoing(core)
                self._flush_now(sock, core)

    def _begin_pass(self, core: ClientCore, callbacks: dict[str, OutputCallback | None]
                    ) -> None:
        """When an output body with PASS_AT or more still to come is going to a descriptor
        that can take it from the socket, write what came of it and move the rest there."""
        if (passable := core.passable_output()) is None or passable[1] < PASS_AT:
            return
        sink = callbacks.get(passable[0])
        if isinstance(sink, _FdSink) and sink.splices:
            sink(core.pass_output())
            self._passing = sink

    def _receive_passed(self, sock: socket.socket, core: ClientCore) -> None:
        """Move what has come of a passed body from the socket to its descriptor."""
        sink, left = self._passing, core.passing
        assert sink is not None and left is not None
        try:
            moved = sink.splice_from(sock, left)
        except BlockingIOError:
            return
        except OSError as exc:
            if isinstance(exc, ConnectionError) and not isinstance(exc, BrokenPipeError):
                core.receive_eof()  # reset by the server: the core says what was lost
                self._passing = None
                return
            raise
        if not moved:
            self._passing = None
            core.receive_eof()
            return
        core.output_passed(moved)
        if not core.passing:
            self._passing = None

    def _receive(self, sock: socket.socket, core: ClientCore) -> None:
        """Receive what is ready, up to READ_SIZE, straight into the decoder's buffer.

        A plain socket's one read takes all the kernel holds. A TLS socket's read returns one
        record (16 KiB at most), so it reads on until TLS would block: a stream decoded one
        record per pass of the poll loop cost more CPU than the decryption itself.
        """
        if self._passing is not None:
            self._receive_passed(sock, core)
            return
        buffer = core.get_buffer()
        limit = min(len(buffer), READ_SIZE)
        if self._frame_reads:
            limit = min(limit, core.missing + PEEK_SIZE)
        total = 0
        ended = False
        failure: OSError | None = None
        while total < limit:
            try:
                count = sock.recv_into(buffer[total:limit])
            except BlockingIOError:
                break
            except OSError as exc:
                if not self._tls_would_block(exc):
                    failure, ended = exc, True
                break
            if not count:
                ended = True
                break
            total += count
            if self._ssl is None:
                break
        if total:
            core.buffer_updated(total)
        if failure is not None:
            self._raise_tls_failure(failure, core)
        if ended:
            core.receive_eof()  # let the core say what was lost, and when

    def _flush_now(self, sock: socket.socket, core: ClientCore) -> None:
        """Send what is queued, _out then a put's body, until the socket would block."""
        while self._out or self._body is not None:
            out, body = self._out, self._body
            try:
                if body is not None and out and self._ssl is None:
                    sent = sock.sendmsg([out, body])  # the header and its body: one call
                else:
                    data = out if out else body
                    assert data is not None
                    sent = sock.send(data)
            except BlockingIOError:
                return
            except OSError as exc:
                if not self._tls_would_block(exc):
                    self._raise_tls_failure(exc, core)
                    self._out.clear()  # the peer is gone; reading will report how
                    self._body = None
                return
            wanted = len(out) + (len(body) if body is not None and (not out or (
                self._ssl is None)) else 0)
            from_out = min(sent, len(out))
            del out[:from_out]
            if body is not None and sent > from_out:
                body = self._body = body[sent - from_out:]
            if body is not None and not out and not body:
                self._body = None
                core.file_data_sent()  # what waited behind the body may go now
                self._out += core.data_to_send()
            if sent < wanted:
                return  # the socket took what it could

    def _tls_would_block(self, exc: OSError) -> bool:
        """TLS's want-read/want-write: the TLS twin of BlockingIOError."""
        ssl = self._ssl
        return ssl is not None and isinstance(exc, ssl.SSLWantReadError | ssl.SSLWantWriteError)

    def _raise_tls_failure(self, exc: OSError, core: ClientCore) -> None:
        """Raise ConnectionLost explaining a TLS error (an alert, a bad record), if it is one."""
        if (lost := tls_failure(exc, self.address, core.received,
                                logged_in=core.ready,
                                running=core.running)) is not None:
            raise lost from None


class _StdinSource:
    """Local standard input for a command: a file descriptor to poll, or data already in hand."""

    def __init__(self, stdin: BlockingStdin) -> None:
        self.fd: int | None = None
        self._data: memoryview | None = None
        self._file: IO[bytes] | None = None
        if isinstance(stdin, int):
            self.fd = stdin
        elif isinstance(stdin, str):
            self._data = memoryview(stdin.encode())
        elif isinstance(stdin, bytes | bytearray | memoryview):
            self._data = memoryview(bytes(stdin))
        else:
            self._file = stdin
        self.ready_without_poll = self.fd is None
        if self.fd is not None and _is_regular_file(self.fd):
            self.ready_without_poll = True  # a file is always readable; poll says so too

    def can_send(self, core: ClientCore) -> bool:
        """Whether the server's credit lets ``pump`` send anything."""
        return bool(core.stdin_credit)

    def take_body(self) -> memoryview | None:
        """A frame body ``pump`` left for the client to write itself (an upload's)."""
        return None

    def pump(self, core: ClientCore) -> None:
        """Move one chunk of stdin (within the credit) into the core; send EOF at its end."""
        if not core.running:
            self._finish()
            return
        if not core.stdin_credit:
            return
        chunk = self._read(min(STDIN_CHUNK, core.stdin_credit))
        if chunk is None:
            return  # a non-blocking descriptor with nothing to read yet
        if chunk:
            core.send_stdin(chunk)
        else:
            core.send_stdin_eof()
            self._finish()

    def _read(self, size: int) -> bytes | None:
        if self._data is not None:
            chunk, self._data = bytes(self._data[:size]), self._data[size:]
            return chunk
        if self._file is not None:
            return self._file.read(size) or b""
        assert self.fd is not None
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None
        except OSError:
            return b""  # an unreadable stdin ends like an empty one

    def _finish(self) -> None:
        self.fd = None
        self._data = None
        self._file = None
        self.ready_without_poll = False


class _UploadSource(_StdinSource):
    """A put's bytes: a local file, read within the server's file credit, never polled."""

    def __init__(self, source: LocalSource, on_progress: ProgressCallback | None) -> None:
        from rexec.client.transfer import CHUNK

        super().__init__(b"")
        self._buffer = bytearray(CHUNK)  # one buffer, reused: a new 1 MiB object per chunk
        self._body: memoryview | None = None  # cost the client 2.9 s of page faults per GiB
        self.ready_without_poll = True
        self._source = source
        self._on_progress = on_progress

    def can_send(self, core: ClientCore) -> bool:
        return core.uploading and core.file_credit > 0 and core.upload_remaining > 0

    def take_body(self) -> memoryview | None:
        body, self._body = self._body, None
        return body

    def pump(self, core: ClientCore) -> None:
        if not self.can_send(core):
            return
        view = memoryview(self._buffer)[:core.file_credit]
        self._body = self._source.read_into(view)  # (CHUNK at most: one frame)
        core.send_file_prefix(self._body)
        if self._on_progress is not None:
            size = self._source.digest.size
            self._on_progress(size - self._source.remaining, size)


class SessionEnded(RexecError):
    """The user ended an interactive session from this side (the ``~.`` escape)."""


class _KeyboardSource(_StdinSource):
    """Keystrokes for a remote terminal: read as they come, escapes acted on here."""

    def __init__(self, fd: int, out_fd: int, escapes: EscapeFilter, char: str) -> None:
        super().__init__(fd)
        self.ready_without_poll = False  # a terminal: poll it
        self._out_fd = out_fd
        self._escapes = escapes
        self._char = char

    def pump(self, core: ClientCore) -> None:
        if not core.running:
            self._finish()
            return
        if core.stdin_credit < 2:  # one keystroke may send two bytes (an escape that was not)
            return
        chunk = self._read(min(STDIN_CHUNK, core.stdin_credit - 1))
        if chunk is None:
            return
        if not chunk:  # the local input ended (not a terminal, or it went away)
            core.send_stdin_eof()
            self._finish()
            return
        data = self._escapes.feed(chunk)
        if data:
            core.send_stdin(data)
        while self._escapes.actions:
            action = self._escapes.actions.pop(0)
            if action == "help":
                _write_all(self._out_fd, escape_help(self._char).encode())
            else:
                raise SessionEnded("the session was ended with the escape sequence"
                                   f" {self._char}.")


class _FdSink:
    """A descriptor given as ``on_stdout``/``on_stderr``: written to, or spliced into.

    A pipe takes a body straight from the socket; a regular file or /dev/null through a pipe
    of the sink's own (socket to pipe, pipe to file: the pages are moved, not copied). A
    terminal, a socket, a non-blocking pipe or a file opened for appending is written to.
    """

    def __init__(self, fd: int, client: BlockingClient) -> None:
        self.fd = fd
        self._client = client
        self._pipe: tuple[int, int] | None = None
        self.broken = False
        self.direct = self.through_pipe = False
        if SPLICE:
            try:
                info, flags = os.fstat(fd), fcntl.fcntl(fd, fcntl.F_GETFL)
            except OSError:
                return
            ordinary = not flags & (os.O_NONBLOCK | os.O_APPEND)
            self.direct = stat.S_ISFIFO(info.st_mode) and ordinary
            self.through_pipe = ordinary and (stat.S_ISREG(info.st_mode) or _is_null(info))

    @property
    def splices(self) -> bool:
        """Whether bodies may be moved here from the socket (not after EPIPE: dropped then)."""
        return (self.direct or self.through_pipe) and not self.broken

    def __call__(self, data: bytes | memoryview) -> None:
        if self.broken:
            return
        try:
            _write_all(self.fd, data)
        except BrokenPipeError:
            self._broke()

    def _broke(self) -> None:
        self.broken = True
        self._client.broken_pipe = True
        self._client.request_cancel()

    def splice_from(self, sock: socket.socket, count: int) -> int:
        """Move up to ``count`` bytes that have arrived on ``sock`` here; how many that was
        (0: the server closed the connection; BlockingIOError: nothing has arrived)."""
        if self.broken:  # the reader is gone: the body is received and dropped
            return len(sock.recv(min(count, READ_SIZE)))
        if self.direct:
            try:  # blocks while the pipe is full, as a write would
                return os.splice(sock.fileno(), self.fd, count, flags=os.SPLICE_F_MOVE)
            except BrokenPipeError:
                self._broke()
                return len(sock.recv(min(count, READ_SIZE)))
        if self._pipe is None:
            self._pipe = os.pipe2(os.O_CLOEXEC)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._pipe[1], fcntl.F_SETPIPE_SZ, 1024 * 1024)
        read_end, write_end = self._pipe
        moved = os.splice(sock.fileno(), write_end, count,
                          flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
        left = moved
        while left:
            left -= os.splice(read_end, self.fd, left, flags=os.SPLICE_F_MOVE)
        return moved

    def close(self) -> None:
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


class _WritePipeline:
    """A download's bytes hashed on one thread and written on another (PIPELINE_DEPTH chunks
    queued for each thread at most), so that receiving and decrypting, hashing and writing all
    go on at once: hashlib and the writes let go of the GIL, and the hash and an O_DIRECT
    write of the same bytes take about as long as each other.

    The chunks are received straight into the pipeline's own buffers (``allocate``, given to
    ``ClientCore.receive_file_into``) and queued as they are (``put_owned``); each buffer is
    used again once its bytes are written, so a large get neither copies a chunk nor faults in
    new memory for it. A chunk in the core's buffer (``put``) is copied. A failure of a write
    is raised by the next ``put`` or by ``finish``."""

    def __init__(self, writer: AtomicWriter) -> None:
        import queue  # a large get's only: off `rexec run`'s start-up

        from rexec.writeback import BufferPool

        self._writer = writer
        self._digest = hashlib.sha256()
        self._hashes: queue.Queue[bytes | memoryview | None] = queue.Queue(PIPELINE_DEPTH)
        self._writes: queue.Queue[bytes | memoryview | None] = queue.Queue(PIPELINE_DEPTH)
        # every buffer queued on both threads, one in each thread's hands and one filling
        self._buffers = BufferPool(MAX_BODY_SIZE, PIPELINE_BUFFERS)
        self.allocate = self._buffers.allocate
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._hash, name="rexec-get-hasher", daemon=True),
            threading.Thread(target=self._write, name="rexec-get-writer", daemon=True)]
        for thread in self._threads:
            thread.start()

    def _hash(self) -> None:
        while (chunk := self._hashes.get()) is not None:
            self._digest.update(chunk)
            self._writes.put(chunk)
        self._writes.put(None)

    def _write(self) -> None:
        while (chunk := self._writes.get()) is not None:
            # from the start of one of our buffers (not a one-off of allocate's, nor a copy)
            ours = self._buffers.owns(chunk)
            if self._error is None:
                try:
                    self._writer.write(chunk, aligned=ours)
                except BaseException as exc:  # raised on the receiving thread
                    self._error = exc
            if ours:  # free for the next chunk
                self._buffers.give_back(chunk)  # type: ignore[arg-type]

    def _raise(self) -> None:
        if self._error is not None:  # and again at every call: nothing more is written
            raise self._error

    def put(self, data: bytes | memoryview) -> None:
        """Queue a copy of ``data`` (the decoder's buffer is reused); raise what failed."""
        self._raise()
        self._hashes.put(bytes(data))

    def put_owned(self, data: memoryview) -> None:
        """Queue ``data``, received into a buffer of ``allocate``'s, as it is."""
        self._raise()
        self._hashes.put(data)

    def callbacks(self, size: int, on_progress: ProgressCallback | None
                  ) -> dict[str, OutputCallback | None]:
        """``_drive``'s callbacks for a get of ``size`` bytes into this pipeline."""
        moved = 0

        def write(data: bytes | memoryview) -> None:
            nonlocal moved
            self.put(data)
            moved += len(data)
            if on_progress is not None:
                on_progress(moved, size)

        def keep(data: bytes | memoryview) -> None:
            nonlocal moved
            assert isinstance(data, memoryview)  # an owned FileChunk's
            self.put_owned(data)
            moved += len(data)
            if on_progress is not None:
                on_progress(moved, size)

        return {"file": write, "file_owned": keep}

    def finish(self) -> str:
        """Wait until everything queued is hashed and written; the SHA-256 (hex) of it all."""
        self.close()
        self._raise()
        return self._digest.hexdigest()

    def close(self) -> None:
        """Let the threads end once what is queued is done (idempotent)."""
        self._buffers.close()
        if self._threads[0].is_alive():
            self._hashes.put(None)
        for thread in self._threads:
            thread.join()


def _is_null(info: os.stat_result) -> bool:
    """Whether ``info`` is /dev/null's (a character device that discards what it is given)."""
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == null.st_rdev


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (a terminal or pipe), waiting while it is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def _is_regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def run(
    address: str,
    command: str,
    *,
    token: str | None = None,
    token_file: str | Path | None = None,
    config: str | Path | None = None,
    connect_timeout: float | None = None,
    keepalive: float | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_pin: str | None = None,
    tls_tofu: bool | None = None,
    identity: str | None = None,
    **run_options: Any,
) -> Result:
    """Connect, run one command, and return its Result: the blocking one-liner for scripts.

    ``run_options`` are those of ``BlockingClient.run`` (env, cwd, timeout, stdin, check...).
    """
    options = ConnectOptions.resolve(
        address, token=token, token_file=token_file, config=config,
        connect_timeout=connect_timeout, keepalive=keepalive, tls_ca=tls_ca, tls_cert=tls_cert,
        tls_key=tls_key, tls_pin=tls_pin, tls_tofu=tls_tofu, identity=identity,
    )
    with BlockingClient.from_options(options) as client:
        return client.run(command, **run_options)
