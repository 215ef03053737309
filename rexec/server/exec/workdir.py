"""The directory a command starts in: resolved once, checked, and handed to the child as is.

Checking a path and then starting the child "in that path" leaves a window in which a symbolic
link along it can be flipped, so the child lands somewhere the check never saw. Instead the
directory is opened once (``O_PATH``); the check is made on what that descriptor is (its
physical path, as the kernel names it, confirmed to be the same directory by device and inode);
and the child changes into the descriptor itself (``/proc/self/fd/N``, which the kernel resolves
to exactly that directory whatever the path now points at). A symbolic link that leads out of
the allowed roots is refused; one that stays inside them works as it always did.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

_PROC_FD = os.path.isdir("/proc/self/fd")
_O_PATH = getattr(os, "O_PATH", 0)


class WorkDirError(Exception):
    """The directory cannot be used; ``refused`` when it lies outside the allowed roots."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass
class WorkDir:
    """An open, checked directory: where a command starts."""

    fd: int
    path: str  # its physical path when it was checked
    requested: str  # what the client (or the policy) asked for

    @property
    def spawn_path(self) -> str:
        """What the child changes into: the descriptor itself where /proc allows."""
        return f"/proc/self/fd/{self.fd}" if _PROC_FD else self.path

    def close(self) -> None:
        """Close the descriptor (the child has its own copy once started)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _beneath(path: str, roots: tuple[Path, ...]) -> bool:
    real = Path(path)
    return any(real == root or root in real.parents for root in roots)


def _physical_path(fd: int, requested: str) -> str:
    path = os.readlink(f"/proc/self/fd/{fd}") if _PROC_FD else os.path.realpath(requested)
    try:
        same = os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        same = False
    if not same:  # renamed or removed while we looked, or a path /proc cannot name
        raise WorkDirError(f"working directory {requested!r} changed while it was checked")
    return path


def open_workdir(requested: str, roots: tuple[Path, ...] = ()) -> WorkDir:
    """Open and check ``requested``; with ``roots``, it must lie beneath one of them.

    Raises WorkDirError naming the directory and the reason (it does not exist, is not a
    directory, a symlink loop, outside the roots...), never anything else.
    """
    try:
        fd = os.open(requested, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise WorkDirError(f"working directory {requested!r}: {reason}") from None
    try:
        path = _physical_path(fd, requested)
        if roots and not _beneath(path, roots):
            allowed = ", ".join(str(p) for p in roots)
            raise WorkDirError(f"refused: working directory {requested!r} is outside {allowed}",
                               refused=True)
    except OSError as exc:
        os.close(fd)
        raise WorkDirError(f"working directory {requested!r}: {exc.strerror or exc}") from None
    except WorkDirError:
        os.close(fd)
        raise
    return WorkDir(fd, path, requested)
