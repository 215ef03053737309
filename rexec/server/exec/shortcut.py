"""When ``/bin/sh`` can be skipped, and the PWD the shell would have exported.

A simple command (``direct_argv``) is executed directly, as ``bash -c`` does: the shell would
only have split it at spaces and looked it up in PATH, and starting it cost more than the
command itself for ``hostname`` and its like (about 1.2 ms of CPU per command).
"""

from __future__ import annotations

import contextlib
import os
import re

_PLAIN_WORDS = re.compile(r"[A-Za-z0-9_./,:@%+=-]+(?: +[A-Za-z0-9_./,:@%+=-]+)*")
"""Words a shell passes on unchanged: no quotes, escapes, expansions, globs, tildes, comments,
redirections, operators or other whitespace, separated by single or repeated spaces."""

SHELL_WORDS = frozenset("""
    ! . : [ [[ ]] { } alias bg bind break builtin caller case cd chdir command compgen complete
    compopt continue coproc declare dirs disown do done echo elif else enable esac eval exec exit
    export false fc fg fi for function getopts hash help history if in jobs kill let local logout
    mapfile popd printf pushd pwd read readarray readonly return select set shift shopt source
    suspend test then time times trap true type typeset ulimit umask unalias unset until wait
    while
""".split())  # noqa: SIM905 - a word list reads better as text
"""Builtins and reserved words of dash and bash: a command starting with one needs the shell."""


def direct_argv(command: str) -> list[str] | None:
    """The argument vector of a command the shell would run as a plain program, else None.

    That is a command of plain words (``_PLAIN_WORDS``) whose first word is neither a shell
    builtin or reserved word nor an assignment (``A=1 cmd``). ``/bin/sh -c`` would split it at
    the spaces, find the first word in PATH and run it with the other words as arguments.
    """
    if not _PLAIN_WORDS.fullmatch(command):
        return None
    words = command.split()
    if words[0] in SHELL_WORDS or "=" in words[0]:
        return None
    return words


def shell_pwd(cwd: str | None, inherited: str | None) -> str:
    """The PWD ``/bin/sh`` would export in directory ``cwd`` (None: this process's).

    As dash and bash do: the inherited PWD when it is absolute and names that very directory
    (it may go through symbolic links), else the directory's physical path.
    """
    where = "." if cwd is None else cwd
    if inherited and os.path.isabs(inherited):
        with contextlib.suppress(OSError):
            if os.path.samefile(inherited, where):
                return inherited
    return os.path.realpath(where)
