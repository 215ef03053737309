"""Frame headers: one pydantic model per frame type, joined in one union discriminated on ``type``.

Headers are validated when built and immutable after (frozen, extra keys forbidden, strict types,
bounded fields). Every header carries ``size``, the number of body bytes that follow it on the wire;
control frames have no body, so their ``size`` can only be 0. See docs/protocol.md.

No ``from __future__ import annotations`` here, on purpose: with the annotations already evaluated,
pydantic need not turn each one back from a string when it creates the classes, which takes this
module's import from about 12 to 9 ms, and every ``rexec run`` imports it.
"""

from functools import cache
from typing import Annotated, Any, Literal, TypeAlias, cast, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

PROTOCOL_VERSION = 6
"""The newest protocol version this implementation speaks: 2 adds PTY sessions (the ``shell``
and ``resize`` frames, ``run.pty``) to version 1, 3 file transfer (``put``, ``get`` and
their replies), 4 directory transfers (``put_dir``, ``put_link``, ``file_list``,
``file_entry``, ``put.base``, ``put.name``, ``get.base``) and uploads hashed as they are sent
(``put.sha256`` null, ``put_end``), 5 puts that only check (``put.check``: would this
put change anything? nothing is written) and ``stat``, and 6 small files carried whole in
their ``put`` frame's body (one round trip, no ``put_ready``)."""
PROTOCOL_VERSIONS: tuple[int, ...] = (6, 5, 4, 3, 2, 1)
"""Every version this implementation speaks, newest first."""
PTY_VERSION = 2
"""The first version with PTY sessions."""
FILE_VERSION = 3
"""The first version with file transfer."""
TREE_VERSION = 4
"""The first version with directory transfers."""
CHECK_VERSION = 5
"""The first version with puts that only check (``put.check``) and ``stat``."""
INLINE_VERSION = 6
"""The first version whose ``put`` may carry a small file whole as its body."""
INLINE_PUT_MAX = 64 * 1024
"""The largest file a ``put`` carries in its body (version 6); a larger one is sent after
``put_ready`` in ``file_data`` frames."""

MAX_HEADER_SIZE = 64 * 1024
"""Largest header (JSON bytes) a peer may declare; checked before the header is read."""

HANDSHAKE_MAX_HEADER = 4 * 1024
"""Largest header a client may declare before it is authenticated: hello and auth take at most
about 1.5 KiB, so an unauthenticated client cannot make the server hold a 64 KiB header."""

MAX_BODY_SIZE = 1024 * 1024
"""Largest body one frame may carry; checked before the body is read."""

STDIN_WINDOW = 1024 * 1024
"""Stdin bytes a client may send for a command beyond those the server has credited back."""
FILE_WINDOW = 8 * 1024 * 1024
"""Bytes of an upload a client may send beyond those the server has credited back (written)."""
MAX_PATH_LENGTH = 4096
MAX_FILE_SIZE = 2**63 - 1

MAX_COMMAND_LENGTH = 32 * 1024
MAX_WINDOW_CELLS = 10_000  # rows or columns of a terminal window
MAX_WINDOW_PIXELS = 65_535  # its width or height in pixels (struct winsize holds 16 bits)
MAX_ENV_ENTRIES = 256
NONCE_HEX_LENGTH = 64  # 32 random bytes, hex encoded
MAC_HEX_LENGTH = 64  # HMAC-SHA256, hex encoded

# --- the protocol's vocabulary, as types (docs/protocol.md) ---------------------------------

SignalName: TypeAlias = Literal["HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT",
                                "STOP"]
"""The signals a client may send to a command's process group (``signal.signal``)."""
SIGNAL_NAMES: tuple[SignalName, ...] = get_args(SignalName)

AuthMethod: TypeAlias = Literal["token", "certificate"]
"""How a client proves who it is (``challenge.method``)."""

ExceededLimit: TypeAlias = Literal["max_output"]
"""A server limit that stopped a command (``exit.exceeded``)."""

ServerErrorCode: TypeAlias = Literal[
    "bad_length", "bad_header", "truncated", "unexpected_frame", "stdin_overflow",
    "unsupported_version", "auth_failed", "handshake_timeout", "too_many_startups",
    "tls_required", "too_many_connections", "idle_timeout", "shutting_down", "refused",
    "spawn_failed", "audit_unavailable", "internal_error", "file_overflow",
    # a file transfer that could not be done (non-fatal; rexec.server.transfer's codes)
    "bad_path", "bad_mode", "not_found", "permission_denied", "is_a_directory",
    "not_a_directory", "not_a_regular_file", "exists", "too_large", "no_space",
    "checksum_mismatch", "size_mismatch", "changed_while_reading", "io_error", "cancelled",
    "digest_required",
]
"""The codes of the error frames the server sends (docs/protocol.md, Errors)."""

ClientErrorCode: TypeAlias = Literal[
    "bad_length", "bad_header", "unexpected_frame", "unsupported_version",
    "server_auth_failed", "byte_count_mismatch",
]
"""The codes of the protocol errors the client detects and reports locally (it sends none)."""

ErrorCode: TypeAlias = ServerErrorCode | ClientErrorCode
ERROR_CODES: frozenset[str] = frozenset(get_args(ServerErrorCode) + get_args(ClientErrorCode))
"""Every code this implementation uses. ``error.code`` on the wire stays any well-formed code,
so that a newer peer's codes still parse."""

Hex64 = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
ShortText = Annotated[str, Field(max_length=200)]


def _check_text(value: str, what: str) -> str:
    """Refuse strings a shell or the OS cannot take: NUL bytes and lone surrogates."""
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate at {exc.start})") from None
    return value


def _valid_cwd(value: str | None) -> str | None:
    return None if value is None else _check_text(value, "cwd")


def _valid_env(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        _check_text(key, "env name")
        if not key or "=" in key:
            raise ValueError(f"env name {key!r} must be non-empty and contain no '='")
        _check_text(item, f"env value of {key}")
    return value


class _Header(BaseModel):
    # defer_build: a model's validator and serializer are built when it is first used, not at
    # import; a one-shot CLI run uses half of the frame types and skips building the rest.
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, defer_build=True
    )


class _Control(_Header):
    # An int bounded to 0 rather than Literal[0]: a Literal compares by equality and would let
    # false and 0.0 through, where every other number field is strict.
    size: int = Field(default=0, ge=0, le=0)


class _Data(_Header):
    size: int = Field(ge=0, le=MAX_BODY_SIZE)


# --- handshake -----------------------------------------------------------------------------


IdentityName = Annotated[str, Field(min_length=1, max_length=64,
                                    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")]


class Hello(_Control):
    """Client -> server, first frame: the versions the client speaks, its nonce, who it is."""

    type: Literal["hello"] = "hello"
    versions: list[Annotated[int, Field(ge=1, le=65535)]] = Field(min_length=1, max_length=16)
    nonce: Hex64
    agent: ShortText = ""
    identity: IdentityName | None = None


class Challenge(_Control):
    """Server -> client: the chosen version, a fresh nonce, and how to prove who you are.

    ``method`` "token": prove the token, hashed with ``salt``. "certificate": the TLS client
    certificate already proved it; ``auth`` carries no proof.
    """

    type: Literal["challenge"] = "challenge"
    version: int = Field(ge=1, le=65535)
    nonce: Hex64
    agent: ShortText = ""
    method: AuthMethod = "token"
    salt: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None


class Auth(_Control):
    """Client -> server: the proof that the client holds the token (none for certificates)."""

    type: Literal["auth"] = "auth"
    mac: Hex64 | None = None


class AuthOk(_Control):
    """Server -> client: accepted, with the server's own proof (none for certificates)."""

    type: Literal["auth_ok"] = "auth_ok"
    mac: Hex64 | None = None
    identity: IdentityName = "default"


# --- commands ------------------------------------------------------------------------------


TermName = Annotated[str, Field(min_length=1, max_length=64,
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")]
WindowCells = Annotated[int, Field(ge=1, le=MAX_WINDOW_CELLS)]
WindowPixels = Annotated[int, Field(ge=0, le=MAX_WINDOW_PIXELS)]


class Window(BaseModel):
    """A terminal window's size: ``rows`` and ``cols`` in cells, optionally in pixels."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)
    rows: WindowCells
    cols: WindowCells
    width: WindowPixels = 0
    height: WindowPixels = 0


class Terminal(Window):
    """A pseudo-terminal request: the terminal type (TERM) and the window's size."""

    term: TermName = "xterm"


class Run(_Control):
    """Client -> server: run ``command`` under ``/bin/sh -c`` (on a PTY when ``pty`` is given)."""

    type: Literal["run"] = "run"
    command: str = Field(min_length=1, max_length=MAX_COMMAND_LENGTH)
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV_ENTRIES)
    cwd: str | None = Field(default=None, min_length=1, max_length=4096)
    timeout: float | None = Field(default=None, gt=0, le=10_000_000)
    stdin: bool = False
    pty: Terminal | None = None  # version 2; never sent when null (codec), as version 1 has none

    @field_validator("command")
    @classmethod
    def _command_text(cls, value: str) -> str:
        return _check_text(value, "command")

    _cwd_text = field_validator("cwd")(_valid_cwd)
    _env_text = field_validator("env")(_valid_env)


class Shell(_Control):
    """Client -> server: the identity's login shell, interactive on a PTY (``pty``), or
    without one reading a script from stdin (``pty`` null)."""

    type: Literal["shell"] = "shell"
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV_ENTRIES)
    cwd: str | None = Field(default=None, min_length=1, max_length=4096)
    timeout: float | None = Field(default=None, gt=0, le=10_000_000)
    stdin: bool = True
    pty: Terminal | None = None

    _cwd_text = field_validator("cwd")(_valid_cwd)
    _env_text = field_validator("env")(_valid_env)


class Resize(_Control):
    """Client -> server: the local window changed size (a PTY command; ignored otherwise)."""

    type: Literal["resize"] = "resize"
    window: Window


class Stdin(_Data):
    """Client -> server: ``size`` bytes for the command's standard input."""

    type: Literal["stdin"] = "stdin"


class StdinEof(_Control):
    """Client -> server: no more standard input; the command's stdin is closed."""

    type: Literal["stdin_eof"] = "stdin_eof"


class Signal(_Control):
    """Client -> server: deliver a signal to the command's whole process group."""

    type: Literal["signal"] = "signal"
    signal: SignalName


class Cancel(_Control):
    """Client -> server: stop the command (SIGTERM to its group, then SIGKILL after a grace)."""

    type: Literal["cancel"] = "cancel"


class StdinCredit(_Control):
    """Server -> client: ``amount`` more bytes of stdin may be sent (the command consumed them)."""

    type: Literal["stdin_credit"] = "stdin_credit"
    amount: int = Field(ge=1, le=STDIN_WINDOW)


class Stdout(_Data):
    """Server -> client: ``size`` bytes the command wrote to standard output."""

    type: Literal["stdout"] = "stdout"


class Stderr(_Data):
    """Server -> client: ``size`` bytes the command wrote to standard error."""

    type: Literal["stderr"] = "stderr"


class Exit(_Control):
    """Server -> client: how the command ended, and how many bytes each stream carried."""

    type: Literal["exit"] = "exit"
    exit_code: int | None = Field(ge=0, le=255)
    signal: int | None = Field(default=None, ge=1, le=128)
    timed_out: bool = False
    exceeded: ExceededLimit | None = None  # a limit that made the server stop it
    duration: float = Field(ge=0)
    stdout_bytes: int = Field(ge=0)
    stderr_bytes: int = Field(ge=0)


def _valid_path(value: str) -> str:
    return _check_text(value, "path")


def _valid_name(value: str | None) -> str | None:
    if value is None:
        return None
    _check_text(value, "name")
    if "/" in value or value in (".", ".."):
        raise ValueError(f"name {value!r} must be one path component (no '/', not . or ..)")
    return value


def _valid_base(value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise ValueError(f"base {value!r} must be an absolute path")
    return None if value is None else _check_text(value, "base")


Base = Annotated[str | None, Field(default=None, min_length=1, max_length=MAX_PATH_LENGTH)]


class Put(_Control):
    """Client -> server: write ``file_size`` bytes whose SHA-256 is ``sha256`` to ``path``
    (absolute), atomically. ``mode`` (permission bits) and ``mtime_ns`` are applied when given;
    ``force`` writes even when the same content and mode are there already.

    Version 4: with ``base`` (absolute, a directory), ``path`` is relative to it and resolved
    beneath it without following a link (an entry of a directory transfer); with ``name``, a
    ``path`` that is a directory receives the file as ``path/name``, as cp does; ``sha256`` may
    be null: the client hashes while it sends and gives the digest in ``put_end``.

    Version 5: with ``check`` true (and ``sha256`` given), nothing is sent or written: the
    server answers whether the put would change anything (``transfer_done.changed``), as a
    dry run of the same put, refusals included.

    Version 6: a body (``size`` > 0, at most INLINE_PUT_MAX) is the whole file: ``size`` equals
    ``file_size``, ``sha256`` is given, ``check`` is not true. The server answers at once, with
    no ``put_ready``: ``transfer_done`` (written, or the same file there already) or an error.
    """

    type: Literal["put"] = "put"
    size: int = Field(default=0, ge=0, le=INLINE_PUT_MAX)
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    base: Base = None  # version 4; never sent when null (codec)
    name: str | None = Field(default=None, min_length=1, max_length=255)  # version 4
    file_size: int = Field(ge=0, le=MAX_FILE_SIZE)
    sha256: Hex64 | None  # version 4: null, the digest comes in put_end
    mode: int | None = Field(default=None, ge=0, le=0o7777)
    mtime_ns: int | None = Field(default=None, ge=0, le=MAX_FILE_SIZE)
    force: bool = False
    check: bool | None = None  # version 5; never sent when null (codec)

    _path_text = field_validator("path")(_valid_path)
    _base_text = field_validator("base")(_valid_base)
    _name_text = field_validator("name")(_valid_name)

    @model_validator(mode="after")
    def _check_has_digest(self) -> "Put":
        if self.check and self.sha256 is None:
            raise ValueError("a put with check true carries its sha256")
        if self.size:
            if self.size != self.file_size:
                raise ValueError(f"a put's body is the whole file: size {self.size} is not"
                                 f" file_size {self.file_size}")
            if self.sha256 is None or self.check:
                raise ValueError("a put that carries its file has its sha256, and no check")
        return self


class PutReady(_Control):
    """Server -> client: send the file's bytes (``file_data``), within FILE_WINDOW of credit."""

    type: Literal["put_ready"] = "put_ready"


class FileData(_Data):
    """Either way: ``size`` bytes of the file being put (client) or got (server)."""

    type: Literal["file_data"] = "file_data"


class PutEnd(_Control):
    """Client -> server (version 4): the SHA-256 of an upload announced without one, sent
    after its last byte."""

    type: Literal["put_end"] = "put_end"
    sha256: Hex64


class FileCredit(_Control):
    """Server -> client: ``amount`` more bytes of the upload may be sent (they were written)."""

    type: Literal["file_credit"] = "file_credit"
    amount: int = Field(ge=1, le=FILE_WINDOW)


class Get(_Control):
    """Client -> server: send the regular file at ``path`` (absolute; version 4: relative to
    ``base`` when that is given, resolved beneath it without following a link)."""

    type: Literal["get"] = "get"
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    base: Base = None  # version 4; never sent when null (codec)

    _path_text = field_validator("path")(_valid_path)
    _base_text = field_validator("base")(_valid_base)


class PutDir(_Control):
    """Client -> server (version 4): make the directory ``path`` (absolute, with its parents
    as mkdir -p does; or relative to ``base``), or keep the one there; apply ``mode`` and
    ``mtime_ns`` when given."""

    type: Literal["put_dir"] = "put_dir"
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    base: Base = None
    mode: int | None = Field(default=None, ge=0, le=0o7777)
    mtime_ns: int | None = Field(default=None, ge=0, le=MAX_FILE_SIZE)

    _path_text = field_validator("path")(_valid_path)
    _base_text = field_validator("base")(_valid_base)


class PutLink(_Control):
    """Client -> server (version 4): make ``path`` (relative to ``base``) a symbolic link to
    ``target``, which must stay inside ``base``."""

    type: Literal["put_link"] = "put_link"
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    base: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    target: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)

    _path_text = field_validator("path")(_valid_path)
    _base_text = field_validator("base")(_valid_base)
    _target_text = field_validator("target")(lambda v: _check_text(v, "target"))


class FileList(_Control):
    """Client -> server (version 4): list the directory ``path`` (absolute) and everything
    beneath it, for a ``get -r``: ``file_entry`` frames, then ``transfer_done``."""

    type: Literal["file_list"] = "file_list"
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)

    _path_text = field_validator("path")(_valid_path)


class Stat(_Control):
    """Client -> server (version 5): what is at ``path`` (absolute), as ``test -e`` sees it:
    one ``file_entry`` (its ``path`` the last component) then ``transfer_done``, or a
    non-fatal ``not_found`` error. No process is started: a deploy's ``creates`` guard."""

    type: Literal["stat"] = "stat"
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)

    _path_text = field_validator("path")(_valid_path)


EntryKind: TypeAlias = Literal["dir", "file", "link", "other"]


class FileEntry(_Control):
    """Server -> client (version 4): one entry of a listed directory, its ``path`` relative to
    it; each directory comes before what it holds. ``file_size`` for files, ``target`` for
    links. Kind ``other`` (a socket, FIFO or device) only answers a ``stat`` (version 5)."""

    type: Literal["file_entry"] = "file_entry"
    kind: EntryKind
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    mode: int = Field(ge=0, le=0o7777)
    file_size: int = Field(default=0, ge=0, le=MAX_FILE_SIZE)
    mtime_ns: int = Field(default=0, ge=0, le=MAX_FILE_SIZE)
    target: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_LENGTH)

    _path_text = field_validator("path")(_valid_path)


class FileInfo(_Control):
    """Server -> client: the file asked for, before its bytes (``file_data``) follow."""

    type: Literal["file_info"] = "file_info"
    file_size: int = Field(ge=0, le=MAX_FILE_SIZE)
    mode: int = Field(ge=0, le=0o7777)
    mtime_ns: int = Field(ge=0, le=MAX_FILE_SIZE)


class TransferDone(_Control):
    """Server -> client: the put or get succeeded. ``changed`` is false for a put that found
    the same content and mode there already (no data was sent). For ``put_dir``, ``put_link``
    and ``file_list`` (version 4) ``sha256`` is null; a listing's ``file_size`` is the sum of
    its files' sizes."""

    type: Literal["transfer_done"] = "transfer_done"
    changed: bool
    file_size: int = Field(ge=0, le=MAX_FILE_SIZE)
    sha256: Hex64 | None
    duration: float = Field(ge=0)


class Error(_Control):
    """Either way: something went wrong. ``fatal`` errors close the connection."""

    type: Literal["error"] = "error"
    code: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    message: str = Field(max_length=4096)
    fatal: bool = True


Header: TypeAlias = Annotated[
    Hello
    | Challenge
    | Auth
    | AuthOk
    | Run
    | Shell
    | Resize
    | Stdin
    | StdinEof
    | StdinCredit
    | Signal
    | Cancel
    | Stdout
    | Stderr
    | Exit
    | Put
    | PutReady
    | FileData
    | FileCredit
    | Get
    | FileInfo
    | TransferDone
    | PutEnd
    | PutDir
    | PutLink
    | FileList
    | Stat
    | FileEntry
    | Error,
    Field(discriminator="type"),
]

MODELS: dict[str, type[_Header]] = {
    model.model_fields["type"].default: model
    for model in (Hello, Challenge, Auth, AuthOk, Run, Shell, Resize, Stdin, StdinEof,
                  StdinCredit, Signal, Cancel, Stdout, Stderr, Exit, Put, PutReady, FileData,
                  FileCredit, Get, FileInfo, TransferDone, PutEnd, PutDir, PutLink, FileList,
                  Stat, FileEntry, Error)
}
"""Each frame type's model, by its ``type`` tag."""

DATA_FRAMES: frozenset[str] = frozenset({"stdin", "stdout", "stderr", "file_data"})


@cache
def header_adapter() -> TypeAdapter[Header]:
    """The discriminated union of every header model (built on first use: it builds them all)."""
    return TypeAdapter(Header)


def build_all() -> None:
    """Build every header model's validator and serializer now, rather than on first use.

    The server calls this before it listens, so that no client's first frames wait on it.
    """
    for model in MODELS.values():
        model.model_rebuild(force=True)
    header_adapter()


def parse_header(obj: Any) -> Header:
    """Validate a decoded JSON object as one of the header models (raises ValidationError).

    A header whose ``type`` names a model is validated by that model alone, which is what the
    discriminated union does too. When that fails, or the tag is missing or unknown, the union
    validates it again so that the error is the union's: its locations start with the tag
    (``stdout.size``) and an unknown tag lists the expected ones.
    """
    tag = obj.get("type") if isinstance(obj, dict) else None
    model = MODELS.get(tag) if isinstance(tag, str) else None
    if model is not None:
        try:
            return cast(Header, model.model_validate(obj, strict=True))
        except ValidationError:
            pass
    return header_adapter().validate_python(obj, strict=True)
