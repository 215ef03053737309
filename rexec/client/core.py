"""The client's side of the conversation, sans-I/O: shared by the async and the blocking client.

Feed it bytes from the server (``receive_data``), take events out (``next_event``) and send what it
queues (``data_to_send``). It answers the server's challenge by itself, checks the server's proof,
counts and optionally captures output, verifies the byte counts of the exit frame, and turns the
server's error frames into exceptions.

File transfer (protocol version 3) is here too, as far as the wire goes: ``start_put`` then
``send_file_data`` within ``file_credit``, ``start_get`` then the file's chunks as events; the core
counts and hashes what a get receives and checks it against the server's ``transfer_done``.
Reading and writing local files is ``rexec.client.transfer``'s part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from pydantic import ValidationError

from rexec._version import __version__
from rexec.errors import (
    AuthenticationError,
    CommandNotStarted,
    ConnectionLost,
    InvalidRequest,
    ProtocolError,
    RemoteError,
    TransferFailed,
)
from rexec.result import Result
from rexec.wire.auth import (
    auth_message,
    client_proof,
    expected_server_proof,
    new_nonce,
    proofs_match,
)
from rexec.wire.codec import HeaderTooLarge, encode_prefix
from rexec.wire.frames import (
    CHECK_VERSION,
    FILE_VERSION,
    FILE_WINDOW,
    INLINE_PUT_MAX,
    INLINE_VERSION,
    MAX_BODY_SIZE,
    MAX_COMMAND_LENGTH,
    MAX_ENV_ENTRIES,
    MAX_HEADER_SIZE,
    MAX_PATH_LENGTH,
    PROTOCOL_VERSION,
    PROTOCOL_VERSIONS,
    PTY_VERSION,
    STDIN_WINDOW,
    TREE_VERSION,
    Auth,
    Cancel,
    Challenge,
    Error,
    Exit,
    FileData,
    FileInfo,
    FileList,
    Get,
    Header,
    Hello,
    Put,
    PutDir,
    PutEnd,
    PutLink,
    Resize,
    Run,
    Shell,
    Signal,
    SignalName,
    Stat,
    Stdin,
    StdinEof,
    Terminal,
    TransferDone,
    Window,
)
from rexec.wire.protocol import Connection, Role, State

AGENT = f"rexec/{__version__}"
STDIN_CHUNK = 256 * 1024
"""The most of local stdin either driver reads at once (within the server's credit)."""
OWNED_CHUNK_MIN = 64 * 1024
"""A get's smallest chunk that ``receive_file_into`` receives into a buffer of the caller's:
the server sends a large file in chunks of MAX_BODY_SIZE, and only its last is smaller."""
CANCEL_WAIT = 10.0
"""Seconds either driver waits for the exit frame after cancelling, before it closes."""
StreamName: TypeAlias = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class Output:
    """A chunk of a command's output, as it arrived.

    From ``ClientCore`` and in blocking-client callbacks ``data`` is a memoryview valid until
    more bytes are received; ``Client.stream()`` yields Outputs whose ``data`` is bytes.
    """

    stream: StreamName
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The handshake succeeded; both sides proved they hold the token."""

    server_agent: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The command ended; ``result`` holds everything known about it."""

    result: Result


@dataclass(frozen=True, slots=True)
class UploadReady:
    """The server wants the put's bytes (``put_ready``): send them within ``file_credit``."""


@dataclass(frozen=True, slots=True)
class DownloadStarted:
    """A get's file is coming (``file_info``): its size, permission bits and mtime."""

    file_size: int
    mode: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class FileChunk:
    """Bytes of a get's file, in order; ``data`` is valid until more bytes are received,
    unless it is ``owned``: received into a buffer of ``receive_file_into``'s allocator, which
    the core never touches again."""

    data: memoryview
    owned: bool = False


@dataclass(frozen=True, slots=True)
class TransferFinished:
    """The put or get succeeded: the server's ``transfer_done``, checked by the core. For a
    directory step (put_dir, put_link) ``sha256`` is None, and for a listing too (its
    ``file_size`` is the sum of the files' sizes)."""

    changed: bool
    file_size: int
    sha256: str | None
    duration: float


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One entry of a remote directory being listed (``file_entry``), as the server named it:
    ``path`` is relative to the directory and not yet checked (the caller must, before it
    touches its disk). ``kind`` is "dir", "file" or "link" (or "other", answering a stat)."""

    kind: str
    path: str
    mode: int
    file_size: int
    mtime_ns: int
    target: str | None


Event: TypeAlias = (Authenticated | Output | Finished | UploadReady | DownloadStarted | FileChunk
                    | TransferFinished | TreeEntry)


@dataclass(slots=True)
class _Transfer:
    """The put or get in progress, as the core counts it."""

    kind: Literal["put", "get", "put_dir", "put_link", "file_list", "stat"]
    path: str
    size: int = 0  # a put's declared size; a get's, once file_info said it
    sha256: str = ""  # a put's declared digest
    moved: int = 0  # bytes sent (put) or received (get)
    digest: Any = field(default_factory=hashlib.sha256)  # a get's bytes, as they arrive
    # (None: the caller hashes them, ``hash_download_elsewhere``)
    started: bool = False  # put_ready or file_info arrived
    cancelled: bool = False  # a cancel was sent
    inline: bool = False  # a put whose file went in its frame's body (version 6)


def checksum_mismatch(path: str, here: str, there: str | None) -> ProtocolError:
    """The error for a transfer whose SHA-256 on this side is not the server's."""
    return ProtocolError(f"{path}: the SHA-256 of the bytes differs from the server's ({here}"
                         f" here, {there} there)", "checksum_mismatch")


def _joined(path: str, base: str | None) -> str:
    return path if base is None else f"{base.rstrip('/')}/{path}"


STDIN_HINT = "send a long script on stdin instead (rexec run HOST -- sh -s < script.sh)"
TIMEOUT_MAX = 10_000_000  # Run.timeout's bound: about 116 days


_TIMEOUT_RANGE = (f"the timeout must be more than 0 and at most {TIMEOUT_MAX} seconds"
                  " (about 116 days)")
_PROBLEMS: dict[tuple[str, str], Callable[[Any], str]] = {
    ("command", "string_too_short"): lambda v: "the command is empty",
    ("command", "string_too_long"): lambda v: (
        f"the command is {len(v)} characters long, more than the protocol's"
        f" {MAX_COMMAND_LENGTH}: {STDIN_HINT}"),
    ("cwd", "string_too_short"): lambda v: "the working directory is empty",
    ("cwd", "string_too_long"): lambda v: (
        f"the working directory is {len(v)} characters long, more than 4096"),
    ("env", "too_long"): lambda v: (
        f"{len(v)} environment variables, more than the protocol's {MAX_ENV_ENTRIES}"),
    ("timeout", "finite_number"): lambda v: (
        f"the timeout must be a finite number of seconds, not {v}"),
    ("timeout", "greater_than"): lambda v: f"{_TIMEOUT_RANGE}, not {v:g}",
    ("timeout", "less_than_equal"): lambda v: f"{_TIMEOUT_RANGE}, not {v:g}",
    ("path", "string_too_short"): lambda v: "the remote path is empty",
    ("path", "string_too_long"): lambda v: (
        f"the remote path is {len(v)} characters long, more than {MAX_PATH_LENGTH}"),
    ("mode", "less_than_equal"): lambda v: (
        f"the mode must be permission bits, at most 0o7777, not {oct(v)}"),
}
"""What is wrong with a request, and the fix, for the validation errors a user can cause."""


def build_run(command: str, *, env: dict[str, str] | None = None, cwd: str | None = None,
              timeout: float | None = None, stdin: bool = False,
              pty: Terminal | None = None) -> Run:
    """The ``run`` frame for a command; InvalidRequest (naming the field) if no server would
    take it. Callers that want to check a request before connecting call this first."""
    values = {"command": command, "env": env or {}, "cwd": cwd, "timeout": timeout}
    try:
        return Run(command=command, env=env or {}, cwd=cwd, timeout=timeout, stdin=stdin,
                   pty=pty)
    except ValidationError as exc:
        raise _invalid(exc, values) from None


def build_shell(*, env: dict[str, str] | None = None, cwd: str | None = None,
                timeout: float | None = None, pty: Terminal | None = None) -> Shell:
    """The ``shell`` frame: the login shell on a PTY, or (``pty`` None) reading a script from
    stdin; InvalidRequest naming the field if no server would take it."""
    values = {"env": env or {}, "cwd": cwd, "timeout": timeout}
    try:
        return Shell(env=env or {}, cwd=cwd, timeout=timeout, stdin=True, pty=pty)
    except ValidationError as exc:
        raise _invalid(exc, values) from None


def _invalid(exc: ValidationError, values: dict[str, Any]) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    field = str(error["loc"][0]) if error["loc"] else "command"
    say = _PROBLEMS.get((field, error["type"]))
    message = say(values.get(field)) if say else str(error["msg"]).removeprefix("Value error, ")
    return InvalidRequest(message, field)


def _too_large(exc: HeaderTooLarge) -> InvalidRequest:
    return InvalidRequest(
        f"the command and its environment take {exc.size} bytes in the run frame, more than"
        f" the protocol's {MAX_HEADER_SIZE}: send long scripts and data on stdin instead",
        "command")


def check_request(command: str, *, env: dict[str, str] | None = None, cwd: str | None = None,
                  timeout: float | None = None, stdin: bool = False) -> Run:
    """``build_run``, and the frame's size too: every check ``ClientCore.start`` makes, for a
    caller (the CLI) that checks a request before it connects."""
    run = build_run(command, env=env, cwd=cwd, timeout=timeout, stdin=stdin)
    try:
        encode_prefix(run)
    except HeaderTooLarge as exc:
        raise _too_large(exc) from None
    return run


class ClientCore:
    """One client connection's protocol logic, with no I/O."""

    def __init__(self, token: str | None, agent: str = AGENT, *, identity: str | None = None,
                 client_certificate: bool = False, address: str = "") -> None:
        """``client_certificate``: a TLS client certificate was presented, so the server may
        accept it instead of a token. ``token`` may be None only then. ``address`` names the
        server in messages."""
        if token is not None and not token:
            raise ValueError("an empty token is refused")
        if token is None and not client_certificate:
            raise ValueError("no token: without a token, a client certificate must prove who"
                             " the client is")
        self.conn = Connection(Role.CLIENT)
        self.server_agent = ""
        self.identity = identity  # the server names the identity it chose in auth_ok
        self.received = 0
        self._token = token
        self._client_certificate = client_certificate
        self._nonce = new_nonce()
        self._expected_server_proof: str | None = None
        self._outgoing = bytearray()
        self._eof = False
        self._run: Run | Shell | None = None
        self.pty = False  # the running command has a PTY: its output is one stream
        self.stdin_credit = 0  # stdin bytes we may still send before the server credits more
        self._capture = False
        self._captured: dict[StreamName, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._counts: dict[StreamName, int] = {"stdout": 0, "stderr": 0}
        self.version = PROTOCOL_VERSION  # the version the server chose, once it has
        self.address = address
        self._transfer: _Transfer | None = None
        self.file_credit = 0  # upload bytes we may still send before the server credits more
        self._send(Hello(versions=list(PROTOCOL_VERSIONS), nonce=self._nonce, agent=agent,
                         identity=identity))

    # --- what to send ----------------------------------------------------------------------

    def _send(self, header: Header, body: bytes | memoryview = b"") -> None:
        self._outgoing += self.conn.send(header, body)

    def data_to_send(self) -> bytes:
        """Take all the bytes queued for the server."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    @property
    def pending(self) -> int:
        """How many bytes are queued for the server."""
        return len(self._outgoing)

    def start(self, command: str, *, env: dict[str, str] | None = None, cwd: str | None = None,
              timeout: float | None = None, stdin: bool = False, capture: bool = True,
              pty: Terminal | None = None) -> None:
        """Queue a ``run`` frame (validated here: a bad argument raises before anything is sent).

        With ``pty``, the command runs on a pseudo-terminal of that type and size: its output
        (stdout and stderr alike) arrives as stdout, and ``resize`` follows the local window.
        """
        if self.conn.state is not State.READY:
            raise RuntimeError(f"cannot start a command in state {self.conn.state.value}")
        self._begin(build_run(command, env=env, cwd=cwd, timeout=timeout, stdin=stdin, pty=pty),
                    capture)

    def start_shell(self, *, env: dict[str, str] | None = None, cwd: str | None = None,
                    timeout: float | None = None, capture: bool = True,
                    pty: Terminal | None = None) -> None:
        """Queue a ``shell`` frame: the identity's login shell, interactive on a PTY of type and
        size ``pty``, or (``pty`` None) a shell reading its script from stdin."""
        if self.conn.state is not State.READY:
            raise RuntimeError(f"cannot start a shell in state {self.conn.state.value}")
        self._begin(build_shell(env=env, cwd=cwd, timeout=timeout, pty=pty), capture)

    def resize(self, rows: int, cols: int, width: int = 0, height: int = 0) -> None:
        """Tell the server the local window's new size (a PTY command; no-op otherwise)."""
        if self.conn.state is State.RUNNING and self.pty:
            self._send(Resize(window=Window(rows=rows, cols=cols, width=width, height=height)))

    def _begin(self, run: Run | Shell, capture: bool) -> None:
        if (run.pty is not None or isinstance(run, Shell)) and self.version < PTY_VERSION:
            raise ProtocolError(
                f"the server speaks protocol version {self.version}, which has no PTY sessions"
                f" or login shells ({self.server_agent or 'an older server'}): upgrade"
                " rexec-server, or run the command without -t", "unsupported_version")
        try:
            self._send(run)
        except HeaderTooLarge as exc:
            raise _too_large(exc) from None
        self._run = run
        self.pty = run.pty is not None
        self.stdin_credit = STDIN_WINDOW if run.stdin else 0
        self._capture = capture
        self._captured = {"stdout": bytearray(), "stderr": bytearray()}
        self._counts = {"stdout": 0, "stderr": 0}

    def send_stdin(self, data: bytes | memoryview) -> None:
        """Queue bytes for the command's standard input, at most ``stdin_credit`` of them."""
        view = memoryview(data)
        if len(view) > self.stdin_credit:
            raise ValueError(
                f"{len(view)} bytes of stdin exceed the credit of {self.stdin_credit}: wait for"
                " the server to credit more (flow control, see docs/protocol.md)"
            )
        self.stdin_credit -= len(view)
        for start in range(0, len(view), MAX_BODY_SIZE):
            piece = view[start : start + MAX_BODY_SIZE]
            self._send(Stdin(size=len(piece)), piece)

    def send_stdin_eof(self) -> None:
        """Queue the end of the command's standard input."""
        self._send(StdinEof())

    def cancel(self) -> None:
        """Ask the server to stop the running command or transfer (no-op if none is)."""
        if self.conn.state is State.RUNNING:
            self._send(Cancel())
        elif self._transfer is not None and not self._transfer.cancelled:
            self._transfer.cancelled = True  # once: the server answers each with an error
            self._send(Cancel())

    # --- file transfer (protocol version 3) --------------------------------------------------

    def _check_transfer(self, what: str) -> None:
        if self.conn.state is not State.READY:
            raise RuntimeError(f"cannot start a {what} in state {self.conn.state.value}")
        self._need(FILE_VERSION, "file transfer")

    def _need(self, version: int, feature: str) -> None:
        """ProtocolError ``unsupported_version`` when the server's version is below
        ``version``, the first with ``feature``."""
        if self.version < version:
            server = f"the server at {self.address}" if self.address else "the server"
            raise ProtocolError(
                f"{server} speaks protocol version {self.version}, without {feature}"
                f" ({self.server_agent or 'an older server'}): upgrade rexec-server",
                "unsupported_version")

    def _check_tree(self, what: str) -> None:
        self._check_transfer(what)
        self._need(TREE_VERSION, "directory transfers")

    def _check_check(self, sha256: str | None) -> None:
        self._check_transfer("put")
        if sha256 is None:
            raise ValueError("a put that only checks needs the file's SHA-256")
        self._need(CHECK_VERSION, "puts that only check")

    @property
    def hashes_uploads(self) -> bool:
        """Whether a put may leave its SHA-256 to the end (``sha256=None``: version 4)."""
        return self.version >= TREE_VERSION

    def start_put(self, path: str, *, file_size: int, sha256: str | None,
                  mode: int | None = None, mtime_ns: int | None = None, force: bool = False,
                  base: str | None = None, name: str | None = None,
                  check: bool = False, data: bytes | memoryview | None = None) -> bool:
        """Queue a ``put``: ``file_size`` bytes whose SHA-256 is ``sha256`` for remote ``path``.

        ``sha256`` None (version 4, ``hashes_uploads``): the core hashes the bytes as they are
        sent and sends the digest after the last (``put_end``); a server that finds a file of
        that size there answers TransferFailed with code ``digest_required``, and the caller
        puts again with the digest. ``base`` (version 4): ``path`` is an entry relative to the
        remote directory ``base``. ``name`` (version 4): if ``path`` is a directory, the file
        goes in it under ``name``. The server answers with UploadReady (then
        ``send_file_data``, exactly ``file_size`` bytes in all), TransferFinished (nothing to
        send), or TransferFailed. ``check`` (version 5, ``sha256`` given): nothing is sent or
        written; TransferFinished says whether this put would change anything.

        ``data``, the file's bytes in hand: where the server takes them with the put (version
        6, ``inline_puts``; ``sha256`` given, no ``check``, INLINE_PUT_MAX bytes at most) they
        go in its body, and the answer is TransferFinished or TransferFailed, never
        UploadReady. Returns whether they went.
        """
        if check:
            self._check_check(sha256)
        if base is not None or sha256 is None:
            self._check_tree("put")
        else:
            self._check_transfer("put")
        if self.version < TREE_VERSION:
            name = None  # an earlier server cannot put a file into a directory it names
        inline = (data is not None and self.inline_puts and 0 < file_size <= INLINE_PUT_MAX
                  and len(data) == file_size and sha256 is not None and not check)
        try:
            put = Put(path=path, base=base, name=name, file_size=file_size, sha256=sha256,
                      mode=mode, mtime_ns=mtime_ns, force=force, check=check or None,
                      size=file_size if inline else 0)
        except ValidationError as exc:
            raise _invalid(exc, {"path": path, "mode": mode}) from None
        if inline:
            assert data is not None
            self._send(put, data)
        else:
            self._send(put)
        self._transfer = _Transfer("put", _joined(path, base), file_size, sha256 or "",
                                   moved=file_size if inline else 0, started=inline,
                                   inline=inline)
        self.file_credit = 0
        return inline

    @property
    def inline_puts(self) -> bool:
        """Whether a small file's bytes may go with its put (version 6)."""
        return self.version >= INLINE_VERSION

    def start_get(self, path: str, *, base: str | None = None) -> None:
        """Queue a ``get`` of remote ``path`` (an entry of the directory ``base``, when given):
        DownloadStarted, FileChunks and TransferFinished follow (or TransferFailed)."""
        if base is not None:
            self._check_tree("get")
        else:
            self._check_transfer("get")
        try:
            get = Get(path=path, base=base)
        except ValidationError as exc:
            raise _invalid(exc, {"path": path}) from None
        self._send(get)
        self._transfer = _Transfer("get", _joined(path, base))

    def hash_download_elsewhere(self) -> None:
        """The get under way (its DownloadStarted in, no FileChunk yet) is hashed by the caller,
        on another thread, say: the core counts the bytes but leaves the SHA-256 to it, and the
        caller must compare its digest with TransferFinished.sha256 before it keeps the file."""
        transfer = self._transfer
        if transfer is None or transfer.kind != "get" or not transfer.started or transfer.moved:
            raise RuntimeError("hash_download_elsewhere() belongs right after DownloadStarted")
        transfer.digest = None

    def receive_file_into(self, allocate: Callable[[int], memoryview] | None,
                          at: int = OWNED_CHUNK_MIN) -> None:
        """From the next frame on, a get's chunks of ``at`` bytes or more are received straight
        into buffers from ``allocate(size)`` (a writable view of exactly ``size`` bytes, at
        most MAX_BODY_SIZE) and come as ``FileChunk(owned=True)``: the caller may keep them
        (hashed and written on other threads, say) with no copy, and recycle them. None: the
        chunks come in the core's own buffer again. The caller sets it after DownloadStarted
        and clears it when the get is over, however it ends."""
        self.conn.detach_bodies(at if allocate is not None else None, allocate)

    def start_put_dir(self, path: str, *, base: str | None = None, mode: int | None = None,
                      mtime_ns: int | None = None) -> None:
        """Queue a ``put_dir`` (version 4): make the remote directory ``path`` (with its
        parents, when no ``base``), or the entry ``path`` of ``base``. TransferFinished or
        TransferFailed follows."""
        self._check_tree("put_dir")
        try:
            frame = PutDir(path=path, base=base, mode=mode, mtime_ns=mtime_ns)
        except ValidationError as exc:
            raise _invalid(exc, {"path": path, "mode": mode}) from None
        self._send(frame)
        self._transfer = _Transfer("put_dir", _joined(path, base))

    def start_put_link(self, path: str, *, base: str, target: str) -> None:
        """Queue a ``put_link`` (version 4): the entry ``path`` of ``base`` becomes a symbolic
        link to ``target``. TransferFinished or TransferFailed follows."""
        self._check_tree("put_link")
        try:
            frame = PutLink(path=path, base=base, target=target)
        except ValidationError as exc:
            raise _invalid(exc, {"path": path}) from None
        self._send(frame)
        self._transfer = _Transfer("put_link", _joined(path, base))

    def start_list(self, path: str) -> None:
        """Queue a ``file_list`` (version 4) of the remote directory ``path``: a TreeEntry for
        each entry beneath it, then TransferFinished (or TransferFailed)."""
        self._check_tree("list")
        try:
            frame = FileList(path=path)
        except ValidationError as exc:
            raise _invalid(exc, {"path": path}) from None
        self._send(frame)
        self._transfer = _Transfer("file_list", path)

    def start_stat(self, path: str) -> None:
        """Queue a ``stat`` (version 5) of the remote ``path``: a TreeEntry for what is there
        (its ``path`` the last component), then TransferFinished; TransferFailed with code
        ``not_found`` when nothing is."""
        self._check_transfer("stat")
        self._need(CHECK_VERSION, "stat")
        try:
            frame = Stat(path=path)
        except ValidationError as exc:
            raise _invalid(exc, {"path": path}) from None
        self._send(frame)
        self._transfer = _Transfer("stat", path)

    @property
    def stats(self) -> bool:
        """Whether the server answers ``stat`` (version 5)."""
        return self.version >= CHECK_VERSION

    @property
    def transferring(self) -> bool:
        """Whether a put or get is under way (asked, and not yet done or failed)."""
        return self._transfer is not None

    @property
    def uploading(self) -> bool:
        """Whether the server is waiting for a put's bytes."""
        return self.conn.state is State.UPLOADING

    @property
    def upload_remaining(self) -> int:
        """Bytes of the put still to send."""
        transfer = self._transfer
        return transfer.size - transfer.moved if transfer and transfer.kind == "put" else 0

    def send_file_data(self, data: bytes | memoryview) -> None:
        """Queue bytes of the put's file, at most ``file_credit`` and ``upload_remaining``."""
        view = memoryview(data)
        self._take_file_data(view)
        for start in range(0, len(view), MAX_BODY_SIZE):
            piece = view[start : start + MAX_BODY_SIZE]
            self._send(FileData(size=len(piece)), piece)
        self._end_upload_if_done()

    def send_file_prefix(self, data: bytes | memoryview) -> None:
        """Like ``send_file_data`` for one frame's worth (at most MAX_BODY_SIZE), but only the
        frame's header is queued: the caller writes ``data`` itself, right after the bytes of
        ``data_to_send()`` and before anything queued later, then calls ``file_data_sent()``.
        A put's body goes from the caller's buffer to the socket without being copied here."""
        view = memoryview(data)
        if len(view) > MAX_BODY_SIZE:
            raise ValueError(f"{len(view)} bytes are more than one frame's body"
                             f" ({MAX_BODY_SIZE})")
        self._take_file_data(view)
        self._outgoing += self.conn.send_prefix(FileData(size=len(view)), len(view))

    def file_data_sent(self) -> None:
        """The body announced by ``send_file_prefix`` is written: what follows it may go."""
        self._end_upload_if_done()

    def _take_file_data(self, view: memoryview) -> None:
        """Check ``view`` against the credit and the declared size, count and hash it."""
        if not self.uploading:
            raise RuntimeError(f"cannot send file data in state {self.conn.state.value}")
        if len(view) > self.file_credit:
            raise ValueError(f"{len(view)} bytes of file data exceed the credit of"
                             f" {self.file_credit}: wait for the server's file_credit")
        if len(view) > self.upload_remaining:
            raise ValueError(f"{len(view)} bytes of file data, but only"
                             f" {self.upload_remaining} of the declared size are left")
        transfer = self._transfer
        assert transfer is not None
        self.file_credit -= len(view)
        transfer.moved += len(view)
        if not transfer.sha256:  # announced without a digest: hashed as it goes
            transfer.digest.update(view)

    def _end_upload_if_done(self) -> None:
        transfer = self._transfer
        assert transfer is not None
        if not transfer.sha256 and transfer.moved == transfer.size:
            self._send(PutEnd(sha256=transfer.digest.hexdigest()))

    def send_signal(self, name: SignalName) -> None:
        """Ask the server to signal the command's process group (e.g. "INT", "HUP")."""
        if self.conn.state is State.RUNNING:
            self._send(Signal(signal=name))

    # --- what arrives ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes that arrived from the server."""
        self.received += len(data)
        self.conn.receive_data(data)

    def get_buffer(self) -> memoryview:
        """Space to receive into directly, without a copy (then call ``buffer_updated``)."""
        return self.conn.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """Record ``nbytes`` received into the last ``get_buffer()``."""
        self.received += nbytes
        self.conn.buffer_updated(nbytes)

    def receive_eof(self) -> None:
        """Record that the server closed the connection."""
        self._eof = True
        self.conn.receive_eof()

    def passable_output(self) -> tuple[StreamName, int] | None:
        """The output frame being received, when the rest of its body may be moved straight
        to where it goes (``pass_output``): its stream, and how many bytes are still to come.
        Never while output is captured."""
        got = None if self._capture else self.conn.passable()
        if got is None or got[0].type not in ("stdout", "stderr"):
            return None
        name: StreamName = got[0].type
        return name, got[1]

    def pass_output(self) -> memoryview:
        """Begin passing that body: the part received so far (to be written at once); report
        the rest as it is moved with ``output_passed``. Its bytes are counted when it ends."""
        return self.conn.pass_body()

    @property
    def missing(self) -> int:
        """Bytes the frame being received still lacks (0: none is half received)."""
        return self.conn.missing

    @property
    def passing(self) -> int | None:
        """Bytes of a passed output body still to be moved (None: none is being passed)."""
        return self.conn.passing

    def output_passed(self, nbytes: int) -> None:
        """Record ``nbytes`` more of the passed body moved (received, and already written)."""
        self.received += nbytes
        self.conn.passed(nbytes)

    @property
    def running(self) -> bool:
        """Whether a command is running."""
        return self.conn.state is State.RUNNING

    @property
    def ready(self) -> bool:
        """Whether the connection is authenticated and idle."""
        return self.conn.state is State.READY

    def next_event(self) -> Event | None:
        """The next event, None if more bytes are needed; raises on errors and on EOF."""
        while True:
            try:
                frame = self.conn.next_frame()
            except ProtocolError as exc:
                if exc.code == "truncated":  # the server went away mid-frame
                    raise ConnectionLost(self._lost_message(), self.received) from None
                raise
            if frame is None:
                if self._eof:
                    raise ConnectionLost(self._lost_message(), self.received)
                return None
            if frame.passed:  # an output body the reader moved itself: counted, not handed on
                header = frame.header
                assert header.type in ("stdout", "stderr")
                self._counts[header.type] += frame.passed
                continue
            event = self._handle(frame.header, frame.body, frame.detached)
            if event is not None:
                return event

    def _handle(self, header: Header, body: memoryview, detached: bool = False
                ) -> Event | None:
        if header.type == "challenge":
            self._answer(header)
        elif header.type == "auth_ok":
            return self._verify_server(header.mac, header.identity)
        elif header.type == "stdin_credit":
            self.stdin_credit += header.amount
        elif header.type in ("stdout", "stderr"):
            name: StreamName = header.type
            self._counts[name] += len(body)
            if self._capture:
                self._captured[name] += body
            return Output(name, body)
        elif header.type == "exit":
            return Finished(self._finish(header))
        elif header.type == "error":
            raise self._remote_error(header)
        elif self._transfer is not None:
            return self._handle_transfer(self._transfer, header, body, detached)
        return None

    def _handle_transfer(self, transfer: _Transfer, header: Header,
                         body: memoryview, detached: bool = False) -> Event | None:
        """The frames of a put or get (the state table already let only these through)."""
        if header.type == "put_ready":
            if transfer.inline:
                raise ProtocolError(f"the server asked for the bytes of {transfer.path}, which"
                                    " came with its put", "unexpected_frame")
            transfer.started = True
            self.file_credit = FILE_WINDOW
            return UploadReady()
        if header.type == "file_credit":
            self.file_credit += header.amount
        elif header.type == "file_info":
            return self._file_info(transfer, header)
        elif header.type == "file_data":
            transfer.moved += len(body)
            if transfer.moved > transfer.size:
                raise ProtocolError(
                    f"the server sent more than the {transfer.size} bytes it announced for"
                    f" {transfer.path}", "size_mismatch")
            if transfer.digest is not None:
                transfer.digest.update(body)
            return FileChunk(body, owned=detached)
        elif header.type == "transfer_done":
            return self._transfer_done(transfer, header)
        elif header.type == "file_entry":
            transfer.moved += header.file_size if header.kind == "file" else 0
            return TreeEntry(header.kind, header.path, header.mode, header.file_size,
                             header.mtime_ns, header.target)
        return None

    def _file_info(self, transfer: _Transfer, info: FileInfo) -> DownloadStarted:
        transfer.started = True
        transfer.size = info.file_size
        return DownloadStarted(info.file_size, info.mode, info.mtime_ns)

    def _transfer_done(self, transfer: _Transfer, done: TransferDone) -> TransferFinished:
        """Check the server's account of the transfer against what this side counted."""
        self._transfer = None
        self.file_credit = 0
        if transfer.kind in ("put_dir", "put_link", "file_list", "stat"):
            if transfer.kind in ("file_list", "stat") and done.file_size != transfer.moved:
                raise ProtocolError(
                    f"{transfer.path}: the server reports {done.file_size} bytes of files, its"
                    f" entries add up to {transfer.moved}", "size_mismatch")
            return TransferFinished(done.changed, done.file_size, None, done.duration)
        if transfer.kind == "put":
            expected_size = transfer.size
            expected_sha = transfer.sha256 or transfer.digest.hexdigest()
            sent_all = transfer.moved == transfer.size or not transfer.started
            if not sent_all:
                raise ProtocolError(
                    f"the server reported the put of {transfer.path} done after {transfer.moved}"
                    f" of its {transfer.size} bytes", "size_mismatch")
        else:
            expected_size = transfer.moved
            # hashed by the caller, who compares its digest with the one returned
            expected_sha = (transfer.digest.hexdigest() if transfer.digest is not None
                            else done.sha256)
            if transfer.moved != transfer.size:
                raise ProtocolError(
                    f"{transfer.path}: {transfer.moved} bytes arrived, but the server announced"
                    f" {transfer.size}", "size_mismatch")
        if done.file_size != expected_size:
            raise ProtocolError(
                f"{transfer.path}: the server reports {done.file_size} bytes, this side counted"
                f" {expected_size}", "size_mismatch")
        if done.sha256 != expected_sha:
            raise checksum_mismatch(transfer.path, expected_sha, done.sha256)
        return TransferFinished(done.changed, done.file_size, done.sha256, done.duration)

    def _verify_server(self, mac: str | None, identity: str) -> Authenticated:
        expected = self._expected_server_proof
        if expected is not None and (mac is None or not proofs_match(expected, mac)):
            self.conn.close()  # never usable: the server is unverified
            raise AuthenticationError(
                "the server's proof of the token is wrong: it is not the server you"
                " think it is, or its token differs", "server_auth_failed")
        self.identity = identity
        return Authenticated(self.server_agent)

    def _answer(self, challenge: Challenge) -> None:
        if challenge.version not in PROTOCOL_VERSIONS:
            raise ProtocolError(
                f"the server chose protocol version {challenge.version}, which this client"
                f" does not speak (it speaks {', '.join(map(str, sorted(PROTOCOL_VERSIONS)))})",
                "unsupported_version")
        self.version = challenge.version
        self.server_agent = challenge.agent
        message = auth_message(self._nonce, challenge.nonce, self.version,
                               self.identity or "")
        if challenge.method == "certificate":
            if not self._client_certificate:  # it cannot have checked one we never sent
                raise ProtocolError("the server offered certificate authentication, but this"
                                    " client presented no certificate", "unexpected_frame")
            self._send(Auth(mac=None))
            return
        if challenge.salt is None:
            raise ProtocolError("the server's token challenge has no salt", "bad_header")
        if self._token is None:
            # Only the certificate to offer (a core has one or the other), and the server did
            # not take it for this identity: answer with no proof, so that its refusal names
            # the subject it saw.
            self._send(Auth(mac=None))
            return
        salt = bytes.fromhex(challenge.salt)
        self._expected_server_proof = expected_server_proof(self._token, salt, message)
        self._send(Auth(mac=client_proof(self._token, salt, message)))

    def _finish(self, exit_frame: Exit) -> Result:
        assert self._run is not None
        declared = {"stdout": exit_frame.stdout_bytes, "stderr": exit_frame.stderr_bytes}
        for name, count in self._counts.items():
            if declared[name] != count:
                raise ProtocolError(
                    f"the server reports {declared[name]} bytes of {name} but {count} arrived:"
                    " output was lost", "byte_count_mismatch")
        result = Result(
            command=self._run.command if isinstance(self._run, Run) else "",
            exit_code=exit_frame.exit_code,
            signal=exit_frame.signal,
            timed_out=exit_frame.timed_out,
            exceeded=exit_frame.exceeded,
            duration=exit_frame.duration,
            stdout=bytes(self._captured["stdout"]),
            stderr=bytes(self._captured["stderr"]),
            stdout_bytes=exit_frame.stdout_bytes,
            stderr_bytes=exit_frame.stderr_bytes,
        )
        self._run = None
        self.stdin_credit = 0
        self._captured = {"stdout": bytearray(), "stderr": bytearray()}
        return result

    def _remote_error(self, error: Error) -> RemoteError:
        message = f"server: {error.message}"
        if error.code == "auth_failed":
            return AuthenticationError(message, error.code)
        if not error.fatal and self._transfer is not None:
            path = self._transfer.path
            self._transfer = None
            self.file_credit = 0
            if path not in message:
                message = f"server: {path}: {error.message}"
            return TransferFailed(message, error.code, path)
        if not error.fatal:
            self._run = None
            return CommandNotStarted(message, error.code)
        return RemoteError(message, error.code)

    def _lost_message(self) -> str:
        state = self.conn.state
        if state is State.AWAIT_CHALLENGE and not self.received:
            # What a TLS server does to a newcomer when too many connections wait to log in
            # (a plaintext one says so in an error frame): closes, before a word is said.
            return ("the server closed the connection before the handshake: it may be busy"
                    " (too many unauthenticated connections; try again later), or not a"
                    " rexec server")
        if state in (State.AWAIT_CHALLENGE, State.AWAIT_VERDICT, State.AWAIT_AUTH):
            return (f"the server closed the connection during the handshake after"
                    f" {self.received} bytes (is it a rexec server, and plaintext?)")
        if state is State.RUNNING:
            got = self._counts["stdout"] + self._counts["stderr"]
            return (f"the server closed the connection after {got} bytes of output, while the"
                    " command was running: its outcome is unknown")
        if self._transfer is not None:
            transfer = self._transfer
            moved = "sent" if transfer.kind == "put" else "received"
            return (f"the server closed the connection during the {transfer.kind} of"
                    f" {transfer.path}, after {transfer.moved} bytes {moved}: the transfer did"
                    " not complete")
        return "the server closed the connection"
