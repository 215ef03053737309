"""The local half of `put` and `get`, for both drivers: the source's digest, its chunks, and the
atomic write of what a get receives. The wire half is ``ClientCore``'s (start_put, start_get).

Put. ``LocalSource.open`` hashes the file once (size, SHA-256, mode, mtime: the server can then
skip a file it holds already), and ``read`` hands out exactly that many bytes afterwards: a file
that shrank in between is an error here, one whose bytes changed is the server's
checksum_mismatch.

Get. ``AtomicWriter`` writes to a hidden temporary file beside the destination
(``.NAME.rexec-tmp-XXXXXXXX``), and only ``commit`` (after the core checked the size and the
SHA-256) fsyncs it, applies the mode and mtime, renames it over the destination and fsyncs the
directory. Any failure, ``abort`` or an exception in its ``with`` block removes the temporary
file and leaves the destination as it was. Modes follow cp: an existing destination keeps its
own, a new one gets the remote file's less the umask; ``preserve`` gives the remote mode exactly
and its mtime.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from rexec.errors import InvalidRequest, LocalFileError
from rexec.result import EntryError
from rexec.wire import paths
from rexec.wire.frames import MAX_BODY_SIZE
from rexec.writeback import FileWriter

CHUNK = MAX_BODY_SIZE
"""The most of a local file read or hashed at once: one file_data frame."""
TEMP_MARK = ".rexec-tmp-"

_CODES = {
    errno.ENOENT: "not_found", errno.EACCES: "permission_denied", errno.EPERM: "permission_denied",
    errno.EISDIR: "is_a_directory", errno.ENOTDIR: "not_a_directory", errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space", errno.EFBIG: "too_large", errno.EROFS: "permission_denied",
}


def local_error(exc: OSError, path: str | Path) -> LocalFileError:
    """An OSError on a local file as a LocalFileError naming the file, in the server's codes."""
    code = _CODES.get(exc.errno or 0, "io_error")
    return LocalFileError(f"{path}: {exc.strerror or exc}", code, str(path))


def check_remote(path: str) -> str:
    """``path`` if it can name a remote file: absolute (InvalidRequest otherwise)."""
    if not path.startswith("/"):
        raise InvalidRequest(f"the remote path must be absolute (start with /), not {path!r}",
                             "path")
    return path


def put_destination(local: str | Path, remote: str) -> str:
    """Where a put of ``local`` goes: ``remote``, or, as cp does, ``remote`` + the local file's
    name when it ends in ``/``. Whether ``remote`` is a directory only the server knows."""
    check_remote(remote)
    return remote + Path(local).name if remote.endswith("/") else remote


def get_destination(remote: str, local: str | Path) -> Path:
    """Where a get of ``remote`` goes: ``local``, or, when that is a directory (or ends in
    ``/``), the remote file's base name inside it."""
    check_remote(remote)
    target = Path(local)
    if str(local).endswith("/") or target.is_dir():
        name = posixpath.basename(remote.rstrip("/"))
        if not name:
            raise InvalidRequest(f"{remote!r} names no file to put in directory {local}",
                                 "path")
        return target / name
    return target


@dataclass(frozen=True, slots=True)
class Digest:
    """A local file as a put declares it (``sha256`` empty: not hashed yet)."""

    size: int
    sha256: str
    mode: int  # permission bits
    mtime_ns: int


ProgressCallback = Callable[[int, int], object]
"""``on_progress(done, total)``: bytes of the file sent or received so far, of its size."""


def put_attributes(digest: Digest, *, mode: int | None,
                   preserve: bool) -> tuple[int | None, int | None]:
    """The (mode, mtime_ns) a put asks for: ``mode`` if given, the local file's with
    ``preserve`` (and its mtime), else neither (the server's rule: keep or 0644)."""
    if mode is None and preserve:
        mode = digest.mode
    return mode, digest.mtime_ns if preserve else None


class LocalSource:
    """A put's source: opened and hashed once, then read again chunk by chunk, exactly ``size``
    bytes (``with LocalSource.open(path) as source: ...``)."""

    def __init__(self, path: Path, fd: int, digest: Digest) -> None:
        self.path = path
        self.digest = digest
        self._fd = fd
        self._left = digest.size

    @classmethod
    def open(cls, path: str | Path, *, follow: bool = True, hashed: bool = True) -> LocalSource:
        """Open and hash a regular file (LocalFileError if it cannot be read); ``follow``
        False refuses a symbolic link in its place (an entry of a tree). ``hashed`` False
        leaves the digest's ``sha256`` empty: the bytes are hashed as they are sent, and
        ``hash_now()`` hashes them first if the server asks for the digest."""
        path = Path(path)
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise local_error(exc, path) from None
        try:
            return cls(path, fd, _digest(fd, path) if hashed else _describe_file(fd, path))
        except BaseException:
            os.close(fd)
            raise

    def hash_now(self) -> Digest:
        """Hash the file from its start (none of it read yet) and keep that digest."""
        self.digest = _digest(self._fd, self.path)
        self._left = self.digest.size
        return self.digest

    @property
    def remaining(self) -> int:
        """Bytes still to read."""
        return self._left

    def read(self, size: int) -> bytes:
        """The next ``size`` bytes at most (never past the digest's size); LocalFileError if
        the file ended early (it shrank since it was hashed)."""
        size = min(size, self._left, CHUNK)
        if size <= 0:
            return b""
        try:
            data = os.read(self._fd, size)
        except OSError as exc:
            raise local_error(exc, self.path) from None
        if not data:
            raise self._shrank(self._left)
        self._left -= len(data)
        return data

    def read_rest(self) -> bytes:
        """What is still to be read, in one piece (a small file's, for a put that carries
        it); LocalFileError if the file ended early."""
        pieces = []
        while self._left > 0:
            pieces.append(self.read(self._left))  # never empty while _left: it raises then
        return b"".join(pieces)

    def read_into(self, buffer: bytearray | memoryview) -> memoryview:
        """``read``, into ``buffer`` (reused: no new object per chunk); the bytes read."""
        size = min(len(buffer), self._left, CHUNK)
        if size <= 0:
            return memoryview(buffer)[:0]
        view = memoryview(buffer)[:size]
        try:
            count = os.readv(self._fd, [view])
        except OSError as exc:
            raise local_error(exc, self.path) from None
        if not count:
            raise self._shrank(self._left)
        self._left -= count
        return view[:count]

    def read_at(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset`` (pread: the position ``read`` uses is left as
        it is), for a fleet put that reads the file once per pass; LocalFileError if the file
        ended early."""
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as exc:
            raise local_error(exc, self.path) from None
        if len(data) < size:
            raise self._shrank(self.digest.size - offset - len(data))
        return data

    def _shrank(self, missing: int) -> LocalFileError:
        return LocalFileError(f"{self.path}: the file shrank while it was being sent"
                              f" ({missing} bytes missing)", "changed_while_reading",
                              str(self.path))

    def close(self) -> None:
        """Close the file (again: no-op)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _regular(fd: int, path: Path) -> os.stat_result:
    """The open file's status; LocalFileError unless it is a regular file."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise local_error(exc, path) from None
    if stat.S_ISDIR(st.st_mode):
        raise LocalFileError(f"{path}: is a directory (use -r to put a directory)",
                             "is_a_directory", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise LocalFileError(f"{path}: not a regular file", "not_a_regular_file", str(path))
    return st


def _describe_file(fd: int, path: Path) -> Digest:
    """A regular file's size, mode and mtime, its SHA-256 left empty (not hashed yet)."""
    st = _regular(fd, path)
    return Digest(st.st_size, "", stat.S_IMODE(st.st_mode), st.st_mtime_ns)


def _digest(fd: int, path: Path) -> Digest:
    """Hash an open file from its start, then rewind it; it must be a regular file."""
    before = _regular(fd, path)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        digest = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as exc:
        raise local_error(exc, path) from None
    if size != before.st_size:
        raise LocalFileError(f"{path}: the file changed while it was being hashed",
                             "changed_while_reading", str(path))
    return Digest(size, digest.hexdigest(), stat.S_IMODE(before.st_mode), before.st_mtime_ns)


class AtomicWriter:
    """A get's destination: a temporary file beside it until ``commit`` renames it over."""

    def __init__(self, dest: Path, temp: Path, fd: int, keep_mode: int | None,
                 size: int | None = None) -> None:
        self.dest = dest
        self.temp = temp
        self.written = 0
        self._fd = fd
        self._writer = FileWriter(fd, size)  # a large file around the page cache
        self._keep_mode = keep_mode  # an existing destination's permission bits
        self._finished = False

    @classmethod
    def create(cls, dest: str | Path, mode: int = 0o644, size: int | None = None
               ) -> AtomicWriter:
        """A temporary file in ``dest``'s directory, created with ``mode`` less the umask
        (the bits a new destination ends with unless ``commit`` is told otherwise); ``size``,
        the bytes it will get, if known."""
        dest = Path(dest)
        keep_mode = None
        try:
            existing = os.stat(dest)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise local_error(exc, dest) from None
        else:
            if stat.S_ISDIR(existing.st_mode):
                raise LocalFileError(f"{dest}: is a directory", "is_a_directory", str(dest))
            keep_mode = stat.S_IMODE(existing.st_mode)
        short = os.fsdecode(os.fsencode(dest.name)[:200])
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(8):
            temp = dest.with_name(f".{short}{TEMP_MARK}{secrets.token_hex(4)}")
            try:
                fd = os.open(temp, flags, mode & 0o777)
            except FileExistsError:
                continue
            except OSError as exc:
                raise local_error(exc, dest) from None
            return cls(dest, temp, fd, keep_mode, size)
        raise LocalFileError(f"{dest}: no free temporary name beside it", "exists", str(dest))

    def write(self, data: bytes | memoryview, *, aligned: bool = False) -> None:
        """Append ``data`` to the temporary file (``aligned``: see ``FileWriter.write``)."""
        try:
            self._writer.write(data, aligned=aligned)
        except OSError as exc:
            raise local_error(exc, self.dest) from None
        self.written += len(data)

    def commit(self, *, mode: int | None = None, mtime_ns: int | None = None) -> None:
        """Make the temporary file the destination: fsync, ``mode`` (else an existing
        destination's, else as created), ``mtime_ns``, rename, fsync the directory."""
        try:
            self._writer.finish()
            self._writer.close()
            final = mode if mode is not None else self._keep_mode
            if final is not None:
                os.fchmod(self._fd, final)
            if mtime_ns is not None:
                os.utime(self._fd, ns=(time.time_ns(), mtime_ns))
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.rename(self.temp, self.dest)
            self._finished = True
        except OSError as exc:
            raise local_error(exc, self.dest) from None
        finally:
            if not self._finished:
                self.abort()
        with contextlib.suppress(OSError):  # the file is in place; some filesystems refuse this
            _fsync_dir(self.dest.parent)

    def abort(self) -> None:
        """Remove the temporary file; the destination stays as it was (no-op after commit)."""
        if self._fd >= 0:
            self._writer.close()
            os.close(self._fd)
            self._fd = -1
        if not self._finished:
            self._finished = True
            with contextlib.suppress(OSError):  # gone already, or the directory was: nothing left
                os.unlink(self.temp)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- directory transfers ----------------------------------------------------------------------


def tree_name(path: str) -> str:
    """The last component of a directory's path ('' for '/')."""
    return posixpath.basename(path.rstrip("/"))


def put_tree_destination(local: str | Path, remote: str) -> str:
    """Where ``put -r`` of the directory ``local`` goes: ``remote`` itself, made or merged
    into, or ``remote/NAME`` when it ends in ``/``. The rule does not depend on what is there,
    so that running the same put twice writes the same place."""
    check_remote(remote)
    if not remote.endswith("/"):
        return remote
    name = tree_name(os.path.abspath(local))
    if not name:
        raise InvalidRequest(f"{local!r} has no name to give the directory in {remote}", "path")
    return remote + name


def get_tree_destination(remote: str, local: str | Path) -> Path:
    """Where ``get -r`` of the remote directory ``remote`` goes: ``local``, or ``local/NAME``
    when it ends in ``/`` (the same rule as put_tree_destination)."""
    check_remote(remote)
    if not str(local).endswith("/"):
        return Path(local)
    name = tree_name(remote)
    if not name:
        raise InvalidRequest(f"{remote!r} has no name to give the directory in {local}", "path")
    return Path(local) / name


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """An entry of a local directory being put: ``path`` relative to it, POSIX style."""

    kind: str  # "dir", "file" or "link"
    path: str
    mode: int
    size: int = 0
    mtime_ns: int = 0
    target: str = ""


@dataclass(frozen=True, slots=True)
class LocalTree:
    """A local directory read for ``put -r``: its entries, each directory before what it
    holds, in name order; links as links, never followed. ``skipped`` names what cannot be
    sent (sockets, FIFOs, devices); ``errors`` what could not be read."""

    root: Path
    mode: int
    mtime_ns: int
    entries: tuple[LocalEntry, ...]
    skipped: tuple[str, ...]
    errors: tuple[EntryError, ...]

    @property
    def size(self) -> int:
        """The files' bytes."""
        return sum(entry.size for entry in self.entries if entry.kind == "file")

    @classmethod
    def read(cls, root: str | Path) -> LocalTree:
        """List ``root`` (a directory: LocalFileError otherwise)."""
        root = Path(root)
        try:
            st = os.stat(root)
        except OSError as exc:
            raise local_error(exc, root) from None
        if not stat.S_ISDIR(st.st_mode):
            raise LocalFileError(f"{root}: not a directory (-r puts a directory)",
                                 "not_a_directory", str(root))
        entries: list[LocalEntry] = []
        skipped: list[str] = []
        errors: list[EntryError] = []
        _walk_local(root, "", entries, skipped, errors)
        return cls(root, stat.S_IMODE(st.st_mode), st.st_mtime_ns, tuple(entries),
                   tuple(skipped), tuple(errors))


def _walk_local(directory: Path, prefix: str, entries: list[LocalEntry], skipped: list[str],
                errors: list[EntryError]) -> None:
    try:
        with os.scandir(directory) as it:
            names = sorted(entry.name for entry in it)
    except OSError as exc:
        error = local_error(exc, directory)
        errors.append(EntryError(prefix.rstrip("/") or ".", error.code, str(error)))
        return
    for name in names:
        path, rel = directory / name, prefix + name
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                entries.append(LocalEntry("link", rel, 0o777, mtime_ns=st.st_mtime_ns,
                                          target=target))
            elif stat.S_ISREG(st.st_mode):
                entries.append(LocalEntry("file", rel, stat.S_IMODE(st.st_mode), st.st_size,
                                          st.st_mtime_ns))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(LocalEntry("dir", rel, stat.S_IMODE(st.st_mode),
                                          mtime_ns=st.st_mtime_ns))
                _walk_local(path, rel + "/", entries, skipped, errors)
            else:
                skipped.append(rel)
        except FileNotFoundError:
            continue  # removed since the directory was listed
        except OSError as exc:
            error = local_error(exc, path)
            errors.append(EntryError(rel, error.code, str(error)))


def check_entry(kind: str, path: str, target: str | None) -> EntryError | None:
    """What is wrong with an entry a sender named (None: nothing): its path must be relative
    and plain, a link's target must stay inside the tree."""
    try:
        paths.check_relative(path)
        if kind == "link":
            paths.check_link_target(path, target or "")
    except paths.PathProblem as exc:
        return EntryError(path, exc.code, str(exc))
    return None


class LocalDestination:
    """A local directory receiving ``get -r``: entries are made beneath it, and never through
    a symbolic link (one already there, or one the transfer made): an entry's directory must
    be one this transfer made or found as a real directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: set[str] = {""}

    def make_root(self, mode: int) -> None:
        """Make the destination (with its parents) unless it is a directory already."""
        try:
            os.makedirs(self.root, mode & 0o777, exist_ok=True)
        except OSError as exc:
            raise local_error(exc, self.root) from None
        if not self.root.is_dir():
            raise LocalFileError(f"{self.root}: exists and is not a directory",
                                 "not_a_directory", str(self.root))

    def path(self, entry: str) -> Path:
        """Where ``entry`` goes, once its directory is known to be a real one of the tree."""
        parent = posixpath.dirname(entry)
        if parent not in self._dirs:
            raise LocalFileError(f"{self.root / entry}: its directory {parent!r} was not made"
                                 " by this transfer as a directory (a link, or refused)",
                                 "refused", str(self.root / entry))
        return self.root / entry

    def make_dir(self, entry: str, mode: int, *, preserve: bool) -> bool:
        """Make the directory ``entry`` (the remote mode less the umask, or exactly with
        ``preserve``); an existing one is kept. True if anything changed."""
        path = self.path(entry)
        changed = True
        try:
            os.mkdir(path, mode & 0o777)
        except FileExistsError:
            changed = False
        except OSError as exc:
            raise local_error(exc, path) from None
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise LocalFileError(f"{path}: exists and is not a directory",
                                     "not_a_directory", str(path))
            if preserve and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)
                changed = True
        except OSError as exc:
            raise local_error(exc, path) from None
        self._dirs.add(entry)
        return changed

    def make_link(self, entry: str, target: str) -> bool:
        """Make ``entry`` a link to ``target`` (replacing a file or link there, atomically);
        True if anything changed."""
        path = self.path(entry)
        try:
            if os.readlink(path) == target:
                return False
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                raise local_error(exc, path) from None
        if path.is_dir() and not path.is_symlink():
            raise LocalFileError(f"{path}: is a directory, not replaced by a link",
                                 "is_a_directory", str(path))
        temp = path.with_name(f".{path.name[:200]}{TEMP_MARK}{secrets.token_hex(4)}")
        try:
            os.symlink(target, temp)
            try:
                os.rename(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            raise local_error(exc, path) from None
        return True

    def set_mtime(self, entry: str, mtime_ns: int) -> None:
        """Set a directory's mtime (after what it holds was written)."""
        path = self.root / entry if entry else self.root
        with contextlib.suppress(OSError):
            os.utime(path, ns=(time.time_ns(), mtime_ns), follow_symlinks=False)


def parents_first(entries: list[str]) -> Iterator[str]:
    """Directories in the order their mtimes are set: the deepest first."""
    return iter(sorted(entries, key=lambda e: e.count("/"), reverse=True))
