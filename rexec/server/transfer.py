"""The server's filesystem half of `rexec put` and `rexec get`: paths, roots, atomic writes, sha256.

Everything here is synchronous and knows no sockets, frames or sessions: the session layer calls
it (from a worker thread if it wants the loop free) and turns a TransferError into an error frame.

Paths. A single file's remote path must be absolute (``check_absolute``); an entry of a directory
transfer is relative to the destination directory (``check_relative``). Both refuse NUL, the empty
string and any ``..`` component: a ``..`` is refused, never normalised away, so what is checked is
what is opened.

Roots. An identity's ``file_roots`` (``FileRoots``) confine put and get beneath those directories.
A path must first be lexically beneath a root; it is then opened relative to a descriptor of that
root with openat2(2) and ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS``, so the kernel refuses any
symbolic link (or ``/proc`` magic link) that would lead out of the root, while a link that stays
inside it works as usual. Where the kernel has no openat2 (Linux before 5.6, or a seccomp filter
answering ENOSYS) the path is walked one component at a time with ``O_NOFOLLOW``, and a symbolic
link anywhere on the way is refused, even one that would stay inside: the walk cannot tell
cheaply, and refusing is the safe side. The roots themselves are trusted configuration: a
symbolic link in a root's own path is followed. ``FileRoots(None)`` is unrestricted: any path the
server's user can reach, symbolic links followed as usual.

Writes. An upload goes to a hidden temporary file in the destination's directory
(``.NAME.rexec-tmp-XXXXXXXX``, mode 0600), which is renamed over the destination only after the
size and the SHA-256 matched and the data, mode and mtime were fsync'd; the directory is fsync'd
after the rename. Any failure removes the temporary file and leaves the destination untouched.
The final component is replaced, never followed: a symbolic link at the destination is replaced
by the file, as Ansible's copy does by default. Modes: a given mode (permission bits, 0o7777 at
most) wins; else an existing destination keeps its mode (and, where the server may, its owner and
group); else a new file gets 0644 exactly, whatever the server's umask, so the result does not
depend on how the server was started. Missing parent directories (``make_dirs``) are created as
``mkdir -p`` would (0755 less the umask).

Directory transfers. ``Tree`` is an open destination directory; each entry's parent is resolved
beneath it with symbolic links refused (``RESOLVE_NO_SYMLINKS``), so an entry can never be written
through a link, even one the same transfer created. Symbolic link entries are kept as links, and
refused when their target is absolute or leaves the tree (see ``check_link_target``). The same
class is the source of `get -r`: ``walk()`` lists entries without following links, and
``download()`` opens each file beneath the tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from rexec.wire import paths
from rexec.writeback import FileWriter

# openat2(2): the syscall number is 437 on every architecture of the unified table (x86_64, arm64,
# riscv...); struct open_how and the RESOLVE_* bits are from <linux/openat2.h>.
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08

# Tests switch this off to exercise the component-by-component walk; it also turns itself off
# the first time the kernel answers ENOSYS.
USE_OPENAT2 = True

DEFAULT_MODE = 0o644
_MAX_MODE = 0o7777
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # O_RDONLY, not O_PATH: fsync needs it
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK  # a FIFO cannot block us
_TMP_MARK = ".rexec-tmp-"
_HASH_CHUNK = 1 << 20


class TransferError(Exception):
    """A put or get cannot go on; ``code`` is the short machine reason, the message one line.

    Codes: refused, bad_path, bad_mode, not_found, permission_denied, is_a_directory,
    not_a_directory, not_a_regular_file, exists, too_large, no_space, checksum_mismatch,
    size_mismatch, changed_while_reading, io_error.
    """

    def __init__(self, code: str, message: str, path: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.path = path


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) through ctypes; raises OSError as os.open would (ENOSYS: no openat2 here)."""
    how = _OpenHow(flags, 0, resolve)
    encoded = os.fsencode(path)
    for _ in range(8):  # EAGAIN: the kernel saw a concurrent rename and asks for a retry
        fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(encoded),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            break
    raise OSError(err, os.strerror(err), path)


# -- paths ------------------------------------------------------------------------------------


def _components(path: str, what: str) -> list[str]:
    with _problems():
        return paths.components(path, what)


@contextlib.contextmanager
def _problems() -> Iterator[None]:
    try:
        yield
    except paths.PathProblem as exc:
        raise TransferError(exc.code, str(exc), exc.path) from None


def check_absolute(path: str) -> str:
    """Validate a single file's remote path and return it canonical ('//' and '.' dropped)."""
    parts = _components(path, "remote")
    if not path.startswith("/"):
        raise TransferError("bad_path", f"remote path {path!r} is not absolute", path)
    return "/" + "/".join(p for p in parts if p not in ("", "."))


def check_relative(path: str) -> str:
    """Validate a directory entry's path (relative to the destination): ``paths.check_relative``
    with its refusal as a TransferError."""
    with _problems():
        return paths.check_relative(path)


def check_link_target(entry: str, target: str) -> str:
    """Validate a symbolic link entry's target (``paths.check_link_target``: relative, and
    staying inside the tree) with its refusal as a TransferError."""
    with _problems():
        return paths.check_link_target(entry, target)


# -- errors -----------------------------------------------------------------------------------

_CODES = {
    errno.ENOENT: ("not_found", "no such file or directory"),
    errno.EACCES: ("permission_denied", "permission denied"),
    errno.EPERM: ("permission_denied", "operation not permitted"),
    errno.ENOSPC: ("no_space", "no space left on device"),
    errno.EDQUOT: ("no_space", "disk quota exceeded"),
    errno.EISDIR: ("is_a_directory", "is a directory"),
    errno.ENOTDIR: ("not_a_directory", "a component of the path is not a directory"),
    errno.ENAMETOOLONG: ("bad_path", "file name too long"),
    errno.EEXIST: ("exists", "already exists"),
    errno.EFBIG: ("too_large", "file too large for this file system"),
}


def _translate(exc: OSError, path: str, fence: str | None = None) -> TransferError:
    """The one translation of OSError into TransferError, naming ``path``.

    ``fence`` describes what the path was confined to ("the allowed roots (...)"), or None when
    unrestricted: under a fence, EXDEV (RESOLVE_BENEATH) and ELOOP (a link not followed) are
    refusals.
    """
    if fence is not None and exc.errno == errno.EXDEV:
        return TransferError("refused", f"refused: {path} leads outside {fence}", path)
    if fence is not None and exc.errno == errno.ELOOP:
        return TransferError("refused", f"refused: {path} passes through a symbolic link that is "
                             f"not followed here (confined to {fence})", path)
    code, reason = _CODES.get(exc.errno or 0, ("io_error", exc.strerror or str(exc)))
    return TransferError(code, f"{path}: {reason}", path)


@contextlib.contextmanager
def _mapped(path: str, fence: str | None = None) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _translate(exc, path, fence) from exc


# -- roots and resolution ---------------------------------------------------------------------


@dataclass(frozen=True)
class FileRoots:
    """The directories an identity may put to and get from; ``paths=None`` is unrestricted."""

    paths: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.paths is None:
            return
        try:
            canonical = tuple(check_absolute(p) for p in self.paths)
        except TransferError as exc:
            raise ValueError(f"file_roots: {exc}") from None
        object.__setattr__(self, "paths", canonical)

    @property
    def fence(self) -> str | None:
        """How messages name the roots, or None when unrestricted."""
        if self.paths is None:
            return None
        return "the allowed roots (" + ", ".join(self.paths) + ")"

    def root_of(self, path: str, *, strictly: bool = False) -> str:
        """The longest root ``path`` (canonical) lies beneath; raises ``refused`` if none.

        ``strictly``: the path may not be the root itself (a file's parent must be inside too).
        """
        assert self.paths is not None
        best = ""
        for root in self.paths:
            inside = root == "/" or path.startswith(root + "/") or path == root
            if inside and not (strictly and path == root) and len(root) > len(best):
                best = root
        if not best:
            raise TransferError("refused", f"refused: {path} is not beneath {self.fence}", path)
        return best


def _walk(base_fd: int, parts: list[str], flags: int) -> int:
    """Open ``parts`` beneath ``base_fd`` one component at a time, never following a link."""
    fd = base_fd
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nxt = os.open(part, (flags if last else _DIR_FLAGS) | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                # O_NOFOLLOW says ELOOP, or ENOTDIR with O_DIRECTORY: name the link as such.
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(fd, part):
                    raise OSError(errno.ELOOP, "symbolic link not followed") from None
                raise
            if fd != base_fd:
                os.close(fd)
            fd = nxt
    except BaseException:
        if fd != base_fd:
            os.close(fd)
        raise
    return fd


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_beneath(base_fd: int, parts: list[str], flags: int, *, symlinks: bool) -> int:
    """Open ``base/parts...`` without leaving ``base``; ``symlinks``: follow those inside it."""
    global USE_OPENAT2  # noqa: PLW0603 (one process-wide fact about the kernel)
    if not parts:
        return os.open(".", flags, dir_fd=base_fd)
    if USE_OPENAT2:
        resolve = _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS
        if not symlinks:
            resolve |= _RESOLVE_NO_SYMLINKS
        try:
            return _openat2(base_fd, "/".join(parts), flags, resolve)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            USE_OPENAT2 = False
    return _walk(base_fd, parts, flags)


class _Base:
    """Where a path is resolved from: a root's descriptor (or '/'), the path's parts below it."""

    def __init__(self, fd: int, parts: list[str], fence: str | None, symlinks: bool) -> None:
        self.fd = fd
        self.parts = parts
        self.fence = fence
        self.symlinks = symlinks  # under a fence: follow links that stay inside

    def open(self, parts: list[str], flags: int) -> int:
        """Open ``parts`` (a prefix of self.parts or all of them) with the base's rules."""
        if self.fence is None:
            return os.open("/".join(parts) or ".", flags, dir_fd=self.fd)
        return _open_beneath(self.fd, parts, flags, symlinks=self.symlinks)

    def open_dir(self, parts: list[str], *, make_dirs: bool) -> int:
        """Open the directory ``parts``; with ``make_dirs``, create what is missing (mkdir -p)."""
        try:
            return self.open(parts, _DIR_FLAGS)
        except FileNotFoundError:
            if not make_dirs:
                raise
        fd = self.open([], _DIR_FLAGS)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = self.open(parts[: i + 1], _DIR_FLAGS)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):  # made meanwhile: fine
                        os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = self.open(parts[: i + 1], _DIR_FLAGS)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        """Close the base's descriptor."""
        os.close(self.fd)


def _base(roots: FileRoots, path: str, *, strictly: bool) -> _Base:
    """Check ``path`` (absolute) against ``roots`` and open the root it is to be resolved from."""
    path = check_absolute(path)
    root = "/" if roots.paths is None else roots.root_of(path, strictly=strictly)
    with _mapped(root, roots.fence):
        fd = os.open(root, _DIR_FLAGS)
    rest = path[len(root):].lstrip("/")
    return _Base(fd, rest.split("/") if rest else [], roots.fence, symlinks=True)


class _Holder:
    """Owns one descriptor: close() once, or leave a ``with`` block."""

    fd: int

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the parent directory of what is written -------------------------------------------------


class Parent(_Holder):
    """An open directory (O_RDONLY, so it can be fsync'd) and the name of an entry in it."""

    def __init__(self, fd: int, name: str, path: str) -> None:
        self.fd = fd
        self.name = name
        self.path = path  # for messages: the full path of the entry


def open_parent(roots: FileRoots, path: str, *, make_dirs: bool = False) -> Parent:
    """Open the directory that holds ``path`` (checked against ``roots``) and name the entry.

    ``make_dirs`` creates missing directories on the way, beneath the root only.
    """
    path = check_absolute(path)
    if path == "/":
        raise TransferError("bad_path", "remote path '/' names no file", path)
    base = _base(roots, path, strictly=True)
    try:
        with _mapped(path, base.fence):
            fd = base.open_dir(base.parts[:-1], make_dirs=make_dirs)
    finally:
        base.close()
    return Parent(fd, path.rsplit("/", 1)[1], path)


# -- uploads ----------------------------------------------------------------------------------


def _temp_name(name: str) -> str:
    # Keep within NAME_MAX (255 bytes) however long the destination's name is.
    short = os.fsdecode(os.fsencode(name)[:200])
    return f".{short}{_TMP_MARK}{secrets.token_hex(4)}"


def _check_mode(mode: int | None, path: str) -> None:
    if mode is not None and not 0 <= mode <= _MAX_MODE:
        raise TransferError("bad_mode", f"{path}: mode {mode:#o} is not permission bits", path)


class Upload:
    """One file being received: a temporary file beside the destination, renamed on commit.

    ``size`` is what the client announced (None: unknown, only ``max_size`` bounds it);
    ``mode`` and ``mtime_ns`` are applied on commit when given. Any failure in write() or
    commit(), and leaving the ``with`` block without a commit, abort: the temporary file is
    removed and the destination is untouched. With ``owns_parent`` the upload closes
    ``parent`` once it is committed or aborted (otherwise the caller does). With
    ``hashed_apart`` the upload does not hash what it writes: its caller hashes the same bytes
    (on another thread, while they are written) and gives ``commit`` that digest.
    """

    def __init__(self, parent: Parent, *, size: int | None = None, mode: int | None = None,
                 mtime_ns: int | None = None, max_size: int | None = None,
                 owns_parent: bool = False, hashed_apart: bool = False) -> None:
        self.parent = parent
        self._owns_parent = owns_parent
        self.path = parent.path
        _check_mode(mode, self.path)
        if size is not None and size < 0:
            raise TransferError("size_mismatch", f"{self.path}: negative size {size}", self.path)
        if max_size is not None and size is not None and size > max_size:
            raise TransferError("too_large", f"{self.path}: {size} bytes is over the limit of "
                                f"{max_size} bytes", self.path)
        self.size = size
        self.max_size = max_size
        self.mtime_ns = mtime_ns
        self.written = 0
        self.committed = False
        self.hashed_apart = hashed_apart
        self._hash = None if hashed_apart else hashlib.sha256()
        existing = self._existing()
        self.mode = mode if mode is not None else (
            stat.S_IMODE(existing.st_mode) if existing else DEFAULT_MODE)
        self.temp, self._fd = self._create_temp()
        self._writer = FileWriter(self._fd, size)  # large files around the page cache
        if existing is not None:  # keep the owner of what is replaced, where we may (root)
            try:
                os.fchown(self._fd, existing.st_uid, existing.st_gid)
            except OSError:
                # A run_as user (rexec.server.fsuser) may not give a file away: another's file
                # becomes the user's, as with its own cp + mv; its group stays if the user is in it.
                with contextlib.suppress(OSError):
                    os.fchown(self._fd, -1, existing.st_gid)

    def _existing(self) -> os.stat_result | None:
        with _mapped(self.path):
            try:
                st = os.stat(self.parent.name, dir_fd=self.parent.fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
        if stat.S_ISDIR(st.st_mode):
            raise TransferError("is_a_directory", f"{self.path}: is a directory", self.path)
        return st if stat.S_ISREG(st.st_mode) else None  # a link or special file is replaced

    def _create_temp(self) -> tuple[str, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(16):
            temp = _temp_name(self.parent.name)
            try:
                return temp, os.open(temp, flags, 0o600, dir_fd=self.parent.fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _translate(exc, self.path) from exc
        raise TransferError("io_error", f"{self.path}: no free temporary name", self.path)

    def write(self, data: bytes | bytearray | memoryview, *, aligned: bool = False) -> None:
        """Append ``data``; raises (and aborts) past the announced size or the size limit.
        ``aligned``: see ``FileWriter.write``."""
        if self._fd < 0:
            raise TransferError("io_error", f"{self.path}: upload already ended", self.path)
        total = self.written + len(data)
        try:
            if self.max_size is not None and total > self.max_size:
                raise TransferError("too_large", f"{self.path}: over the limit of "
                                    f"{self.max_size} bytes", self.path)
            if self.size is not None and total > self.size:
                raise TransferError("size_mismatch", f"{self.path}: more than the "
                                    f"{self.size} bytes announced", self.path)
            whole = memoryview(data).cast("B")
            with _mapped(self.path):
                self._writer.write(whole, aligned=aligned)
            if self._hash is not None:
                self._hash.update(whole)
            self.written = total
        except BaseException:
            self.abort()
            raise

    def commit(self, sha256_hex: str, received_sha256: str | None = None) -> None:
        """Check size and SHA-256, apply mode and mtime, fsync, rename over the destination.

        ``received_sha256`` is the digest of what was written, from the caller of an upload
        ``hashed_apart`` (required there, ignored otherwise). On a mismatch or any error the
        upload is aborted and the destination left as it was.
        """
        try:
            if self._hash is not None:
                received_sha256 = self._hash.hexdigest()
            elif received_sha256 is None:
                raise ValueError("an upload hashed apart is committed with the digest of"
                                 " what was written")
            if self._fd < 0:
                raise TransferError("io_error", f"{self.path}: upload already ended", self.path)
            if self.size is not None and self.written != self.size:
                raise TransferError("size_mismatch", f"{self.path}: received {self.written} "
                                    f"bytes, {self.size} announced", self.path)
            if received_sha256 != sha256_hex.lower():
                raise TransferError("checksum_mismatch", f"{self.path}: SHA-256 of the data "
                                    "received does not match the sender's", self.path)
            with _mapped(self.path):
                self._writer.finish()
                self._writer.close()
                os.fchmod(self._fd, self.mode)  # after fchown, which clears set-id bits
                if self.mtime_ns is not None:
                    os.utime(self._fd, ns=(time.time_ns(), self.mtime_ns))
                os.fsync(self._fd)  # data, mode and mtime durable before the name points at them
                os.close(self._fd)
                self._fd = -1
                os.rename(self.temp, self.parent.name,
                          src_dir_fd=self.parent.fd, dst_dir_fd=self.parent.fd)
            self.committed = True
        except BaseException:
            self.abort()
            raise
        # The rename is done: an fsync failure now cannot be undone, only reported.
        try:
            with _mapped(self.path):
                os.fsync(self.parent.fd)
        finally:
            if self._owns_parent:
                self.parent.close()

    def abort(self) -> None:
        """Remove the temporary file (idempotent; a no-op after a successful commit)."""
        if self._fd >= 0:
            self._writer.close()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if not self.committed and self.temp:
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.parent.fd)
            self.temp = ""
        if self._owns_parent:
            self.parent.close()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    while n := os.readv(fd, [buffer]):
        digest.update(memoryview(buffer)[:n])
    return digest.hexdigest()


def same_size(parent: Parent, *, size: int, mode: int | None = None) -> bool:
    """Whether the entry is a regular file of ``size`` bytes (and ``mode``, if given): one that
    may be the same file, which only its SHA-256 can tell. A link there is not."""
    with _mapped(parent.path):
        try:
            st = os.stat(parent.name, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
    return (stat.S_ISREG(st.st_mode) and st.st_size == size
            and (mode is None or stat.S_IMODE(st.st_mode) == mode))


class DigestCache:
    """SHA-256s a connection computed of files already there, each kept only while the file is
    provably the same one: same device, inode, size, mtime and ctime (ctime moves with any
    write, chmod or rename, and no user can set it). Bounded: the oldest go first."""

    LIMIT = 64

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int, int, int], str] = {}

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, st: os.stat_result) -> str | None:
        """The digest of the file ``st`` describes, if it was hashed as it is now."""
        return self._known.get(self._key(st))

    def put(self, st: os.stat_result, sha256_hex: str) -> None:
        """Keep the digest of the file ``st`` describes."""
        self._known[self._key(st)] = sha256_hex
        while len(self._known) > self.LIMIT:
            del self._known[next(iter(self._known))]


def _hash_entry(fd: int, cache: DigestCache | None) -> str | None:
    """The SHA-256 of the open regular file (from ``cache`` when it was hashed as it is now);
    None if it changed while it was read. A fresh digest is kept in ``cache``."""
    before = os.fstat(fd)
    known = cache.get(before) if cache is not None else None
    if known is not None:
        return known
    digest = _sha256_fd(fd)
    if DigestCache._key(os.fstat(fd)) != DigestCache._key(before):
        return None
    if cache is not None:
        cache.put(before, digest)
    return digest


def remember_digest(roots: FileRoots, path: str, *, base: str | None, name: str | None,
                    cache: DigestCache) -> None:
    """Hash the file a put names into ``cache``, if it is a regular file: what the client
    will ask about next, after a ``digest_required`` (both ends hash at once). Never raises:
    this is only a head start."""
    with contextlib.suppress(TransferError, OSError), open_target(
            roots, path, base=base, name=name) as parent:
        fd = os.open(parent.name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=parent.fd)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                _hash_entry(fd, cache)
        finally:
            os.close(fd)


def unchanged(parent: Parent, *, size: int, sha256_hex: str, mode: int | None = None,
              cache: DigestCache | None = None) -> bool:
    """Whether the entry already is a regular file of this size, SHA-256 (and mode, if given).

    True means nothing needs writing (the caller reports ``changed: false``). A symbolic link
    there is never "unchanged": an upload replaces it. Nor is a file the server may not read (a
    ``run_as`` user may still replace it, in a directory it may write). mtime is not compared.
    ``cache`` holds digests hashed before (``remember_digest``) and keeps this one.
    """
    try:
        fd = os.open(parent.name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=parent.fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EACCES):
            return False
        raise _translate(exc, parent.path) from exc
    try:
        with _mapped(parent.path):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return False
            if mode is not None and stat.S_IMODE(st.st_mode) != mode:
                return False
            return _hash_entry(fd, cache) == sha256_hex.lower()
    finally:
        os.close(fd)


def stat_entry(roots: FileRoots, path: str) -> TreeEntry:
    """What is at ``path``, for a ``stat`` (TransferError ``not_found`` when nothing is).

    Unrestricted, a link is followed, as ``test -e`` does (a dangling one is not found); with
    ``file_roots`` the link itself is reported, never followed out of a root.
    """
    with open_parent(roots, path) as parent, _mapped(parent.path, roots.fence):
        st = os.stat(parent.name, dir_fd=parent.fd, follow_symlinks=roots.paths is None)
        kind = ("dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode)
                else "link" if stat.S_ISLNK(st.st_mode) else "other")
        target = os.readlink(parent.name, dir_fd=parent.fd) if kind == "link" else ""
    return TreeEntry(kind, parent.name, stat.S_IMODE(st.st_mode),
                     st.st_size if kind == "file" else 0, max(0, st.st_mtime_ns), target)


# -- downloads --------------------------------------------------------------------------------


class Download(_Holder):
    """One regular file being sent: size, mode and mtime up front, SHA-256 computed as read."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        try:
            with _mapped(path):
                st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if stat.S_ISDIR(st.st_mode):
                raise TransferError("is_a_directory", f"{path}: is a directory", path)
            raise TransferError("not_a_regular_file", f"{path}: not a regular file", path)
        self.size = st.st_size
        self.mode = stat.S_IMODE(st.st_mode)
        self.mtime_ns = st.st_mtime_ns
        self.read = 0
        self._hash = hashlib.sha256()

    @classmethod
    def open(cls, roots: FileRoots, path: str) -> Download:
        """Open ``path`` for reading, checked against ``roots`` (links inside them followed)."""
        path = check_absolute(path)
        base = _base(roots, path, strictly=False)
        try:
            with _mapped(path, base.fence):
                fd = base.open(base.parts, _READ_FLAGS)
        finally:
            base.close()
        return cls(fd, path)

    def read_into(self, buffer: bytearray | memoryview) -> int:
        """Read the next chunk into ``buffer``; returns its length, 0 at the end of the file.

        Never reads past the size given up front: the receiver was told that size, and a file
        that grew is caught by finish() (its size now) without reading the rest.
        """
        view = memoryview(buffer).cast("B")
        remaining = self.size - self.read
        if remaining <= 0:
            return 0
        with _mapped(self.path):
            n = os.readv(self.fd, [view[:remaining]])
        self._hash.update(view[:n])
        self.read += n
        return n

    def finish(self) -> str:
        """The SHA-256 (hex) of what was read; raises changed_while_reading if it changed."""
        with _mapped(self.path):
            st = os.fstat(self.fd)
        # A write in place that keeps the size still moves mtime.
        if self.read != self.size or st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            raise TransferError("changed_while_reading", f"{self.path}: changed while it was "
                                f"read ({self.size} bytes when opened, {st.st_size} now)",
                                self.path)
        return self._hash.hexdigest()


# -- directory transfers ----------------------------------------------------------------------


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a directory being sent: its path relative to the tree and what it is."""

    kind: str  # "dir", "file" or "link" ("other", for a stat only)
    path: str
    mode: int  # permission bits (0o777 for a link)
    size: int = 0  # files only
    mtime_ns: int = 0
    target: str = ""  # links only


class Tree(_Holder):
    """An open directory of a directory transfer; entries resolve beneath it, no link followed.

    The destination of `put -r` (``parent()`` for each entry received) or the source of
    `get -r` (``walk()``, then ``download()`` for each file).
    """

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, roots: FileRoots, path: str, *, create: bool = False,
             mode: int | None = None) -> Tree:
        """Open the directory ``path`` (checked against ``roots``).

        ``create``: when it is missing, make it (and its parents) as mkdir -p would, with
        ``mode`` if given. The mode of an existing directory is left alone: the destination
        may well be /tmp.
        """
        path = check_absolute(path)
        try:
            return cls(cls._open_dir(roots, path), path)
        except TransferError as exc:
            if not create or exc.code != "not_found":
                raise
        with open_parent(roots, path, make_dirs=True) as parent:
            make_directory(parent, mode)
        return cls(cls._open_dir(roots, path), path)

    @staticmethod
    def _open_dir(roots: FileRoots, path: str) -> int:
        base = _base(roots, path, strictly=False)
        try:
            with _mapped(path, base.fence):
                return base.open(base.parts, _DIR_FLAGS)
        finally:
            base.close()

    def _entry(self, entry: str) -> tuple[_Base, str]:
        parts = check_relative(entry).split("/")
        base = _Base(self.fd, parts, f"the directory {self.path}", symlinks=False)
        return base, f"{self.path.rstrip('/')}/{entry}"

    def parent(self, entry: str, *, make_dirs: bool = False) -> Parent:
        """Validate ``entry`` and open its directory beneath the tree, no link followed."""
        base, full = self._entry(entry)
        with _mapped(full, base.fence):
            fd = base.open_dir(base.parts[:-1], make_dirs=make_dirs)
        return Parent(fd, base.parts[-1], full)

    def download(self, entry: str) -> Download:
        """Open the file ``entry`` (as walk() named it) for sending, no link followed."""
        base, full = self._entry(entry)
        with _mapped(full, base.fence):
            fd = base.open(base.parts, _READ_FLAGS)
        return Download(fd, full)

    def walk(self) -> Iterator[TreeEntry]:
        """Every entry beneath the tree, each directory before what it holds, in name order.

        Links are reported as links and never followed; sockets, FIFOs and devices are
        skipped (they cannot be sent).
        """
        yield from self._walk_fd(self.fd, "")

    def _walk_fd(self, dir_fd: int, prefix: str) -> Iterator[TreeEntry]:
        with _mapped(self.path + "/" + prefix), os.scandir(dir_fd) as it:
            names = sorted(e.name for e in it)
        for name in names:
            path = prefix + name
            with _mapped(f"{self.path.rstrip('/')}/{path}"):
                entry = _describe(dir_fd, name, path)
                if entry is None:
                    continue
                yield entry
                if entry.kind != "dir":
                    continue
                sub = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                yield from self._walk_fd(sub, path + "/")
            finally:
                os.close(sub)


def _describe(dir_fd: int, name: str, path: str) -> TreeEntry | None:
    """What ``name`` in ``dir_fd`` is, as walk() reports it; None for what cannot be sent."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None  # removed since it was listed
    mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=dir_fd)
        return TreeEntry("link", path, mode, mtime_ns=mtime, target=target)
    if stat.S_ISREG(st.st_mode):
        return TreeEntry("file", path, mode, st.st_size, mtime)
    if stat.S_ISDIR(st.st_mode):
        return TreeEntry("dir", path, mode, mtime_ns=mtime)
    return None


def make_directory(parent: Parent, mode: int | None = None, mtime_ns: int | None = None) -> bool:
    """Create the directory entry (an existing directory is fine); True if anything changed.

    ``mode`` is applied exactly (no umask) when given, to a new or an existing directory; a new
    one without a mode gets 0755 less the umask. ``mtime_ns`` is set when given (not counted as
    a change). Anything else in its place: not_a_directory.
    """
    _check_mode(mode, parent.path)
    created = True
    with _mapped(parent.path):
        try:
            os.mkdir(parent.name, 0o755 if mode is None else 0o700, dir_fd=parent.fd)
        except FileExistsError:
            created = False
        try:
            fd = os.open(parent.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise TransferError("not_a_directory", f"{parent.path}: exists and is not a "
                                    "directory", parent.path) from None
            raise
        try:
            changed = mode is not None and stat.S_IMODE(os.fstat(fd).st_mode) != mode
            if changed:
                assert mode is not None
                os.fchmod(fd, mode)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        if created:
            os.fsync(parent.fd)
    return created or changed


def make_symlink(parent: Parent, target: str, *, entry: str) -> bool:
    """Create or atomically replace the link ``entry`` -> ``target``; True if anything changed.

    ``entry`` is the link's path relative to the tree (it decides how far '..' may climb). A link
    already pointing at ``target`` is left alone; a directory in its place is an error.
    """
    check_link_target(entry, target)
    with _mapped(parent.path):
        try:
            if os.readlink(parent.name, dir_fd=parent.fd) == target:
                return False
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINVAL):  # EINVAL: not a link
                raise
        temp = _temp_name(parent.name)
        os.symlink(target, temp, dir_fd=parent.fd)
        try:
            os.rename(temp, parent.name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=parent.fd)
            raise
        os.fsync(parent.fd)
    return True


# -- what a frame names -----------------------------------------------------------------------


def entry_path(path: str, base: str | None) -> str:
    """The full path a frame names, for messages and the audit log."""
    return path if base is None else f"{base.rstrip('/')}/{path}"


def open_target(roots: FileRoots, path: str, *, base: str | None = None,
                name: str | None = None) -> Parent:
    """The directory and name a ``put`` writes (``get`` reads with ``open_source``).

    With ``base``, ``path`` is an entry of a directory transfer, resolved beneath the directory
    ``base`` without following a link. With ``name``, a ``path`` that is a directory receives
    the file as ``path/name``, as cp does.
    """
    if base is not None:
        with Tree.open(roots, base) as tree:
            return tree.parent(path)
    if name is not None:
        check_relative(name)
        try:
            tree = Tree.open(roots, path)
        except TransferError as exc:
            if exc.code not in ("not_found", "not_a_directory"):
                raise
        else:
            with tree:
                return tree.parent(name)
    return open_parent(roots, path)


def open_source(roots: FileRoots, path: str, *, base: str | None = None) -> Download:
    """The file a ``get`` sends: ``path``, or the entry ``path`` beneath ``base``."""
    if base is None:
        return Download.open(roots, path)
    with Tree.open(roots, base) as tree:
        return tree.download(path)


def put_directory(roots: FileRoots, path: str, *, base: str | None = None,
                  mode: int | None = None, mtime_ns: int | None = None) -> bool:
    """Make a directory for a ``put_dir``; True if anything changed.

    Without ``base`` it is the top of a directory transfer: made with its parents (as mkdir -p)
    and given ``mode`` and ``mtime_ns`` when it is new; an existing one is left as it is (it may
    well be /tmp, or a root of the identity). With ``base`` it is an entry, made or kept, its
    ``mode`` and ``mtime_ns`` applied.
    """
    if base is not None:
        with Tree.open(roots, base) as tree, tree.parent(path) as parent:
            return make_directory(parent, mode, mtime_ns)
    _check_mode(mode, path)
    try:
        Tree.open(roots, path).close()
        return False
    except TransferError as exc:
        if exc.code != "not_found":
            raise
    with open_parent(roots, path, make_dirs=True) as parent:
        return make_directory(parent, mode, mtime_ns)


def put_link(roots: FileRoots, path: str, *, base: str, target: str) -> bool:
    """Make the entry ``path`` beneath ``base`` a link to ``target`` (kept inside); True if
    anything changed."""
    check_link_target(path, target)
    with Tree.open(roots, base) as tree, tree.parent(path) as parent:
        return make_symlink(parent, target, entry=path)
