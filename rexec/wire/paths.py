"""The paths of a directory transfer, checked by whichever side receives them (sans-I/O).

The sender names each entry relative to the tree; the receiver trusts none of them: an entry
path must be relative, with no '..', empty or '.' component and no NUL, and a symbolic link's
target must stay inside the tree. The server checks what a ``put -r`` sends, the client what a
``get -r`` lists (the server choosing names is scp's CVE-2019-6111).
"""

from __future__ import annotations

import os


class PathProblem(ValueError):
    """A path the receiver refuses: ``code`` is the protocol's error code for it."""

    def __init__(self, code: str, message: str, path: str) -> None:
        super().__init__(message)
        self.code = code
        self.path = path


def components(path: str, what: str) -> list[str]:
    """``path`` split on '/', refusing what no file name may hold (empty, NUL, '..')."""
    if not isinstance(path, str) or not path:
        raise PathProblem("bad_path", f"{what} path is empty", "")
    if "\0" in path:
        raise PathProblem("bad_path", f"{what} path {path!r} contains a NUL byte", path)
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise PathProblem("bad_path", f"{what} path {path!r} is not valid text for a file name",
                          path) from None
    parts = path.split("/")
    if ".." in parts:
        raise PathProblem("bad_path", f"{what} path {path!r} contains '..'", path)
    return parts


def check_relative(path: str) -> str:
    """Validate a directory entry's path (relative to the tree) and return it unchanged.

    No leading '/', and no empty or '.' component either, since a sender walking a real tree
    never produces one.
    """
    parts = components(path, "entry")
    if path.startswith("/"):
        raise PathProblem("bad_path", f"entry path {path!r} is absolute", path)
    if any(p in ("", ".") for p in parts):
        raise PathProblem("bad_path", f"entry path {path!r} has an empty or '.' component", path)
    return path


def check_link_target(entry: str, target: str) -> str:
    """Validate a symbolic link entry's target: relative, and staying inside the tree.

    The target may start with '..' components, no more of them than the link's directory is deep
    in the tree, and may not contain '..' after a name: resolved lexically from the link's own
    directory it then stays inside, and no chain of such links can climb out either ('x/..' where
    x is a link to '.' would). Returns the target unchanged.
    """
    entry = check_relative(entry)
    if not target or "\0" in target:
        raise PathProblem("bad_path", f"link {entry!r}: empty target or a NUL byte in it", entry)
    if target.startswith("/"):
        raise PathProblem("refused", f"refused: link {entry!r} -> {target!r} is absolute", entry)
    depth = entry.count("/")
    names = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(names) and names[ups] == "..":
        ups += 1
    if ups > depth or ".." in names[ups:]:
        raise PathProblem("refused", f"refused: link {entry!r} -> {target!r} leads outside "
                          "the directory being written", entry)
    return target
