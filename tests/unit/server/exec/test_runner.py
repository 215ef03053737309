"""Which commands run without /bin/sh, and the PWD they get (rexec.server.exec.shortcut)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rexec.server.exec.shortcut import SHELL_WORDS, direct_argv, shell_pwd


@pytest.mark.parametrize(("command", "words"), [
    ("hostname", ["hostname"]),
    ("uname -a", ["uname", "-a"]),
    ("df  -h   /", ["df", "-h", "/"]),
    ("/usr/bin/env", ["/usr/bin/env"]),
    ("./build.sh --jobs=4 a,b c:d x@y 50%", ["./build.sh", "--jobs=4", "a,b", "c:d", "x@y", "50%"]),
    ("dd if=/dev/zero of=/dev/null count=1", ["dd", "if=/dev/zero", "of=/dev/null", "count=1"]),
    ("systemctl status nginx.service", ["systemctl", "status", "nginx.service"]),
])
def test_plain_commands_run_directly(command: str, words: list[str]) -> None:
    assert direct_argv(command) == words


@pytest.mark.parametrize("command", [
    # shell syntax of every kind
    "echo $HOME", "ls *.py", "ls ?", "ls [ab]", "cd ~", "ls ~/x", "a; b", "a && b", "a || b",
    "a | b", "a &", "a > f", "a < f", "a 2>&1", "(a)", "{ a; }", "a `b`", "a $(b)", "a 'b c'",
    'a "b"', "a\\ b", "a # comment", "!a", "a\nb", "a\tb", " a", "a ", "",
    # the first word is an assignment, a builtin or a reserved word
    "A=1 env", "PATH=/x ls", "true", "false", "echo hi", "cd /tmp", "exit 3", "exec sleep 1",
    "kill -l", "printf x", "pwd", "test -e /", "[ -e / ]", "read x", "export A", "set -e",
    "ulimit -n", "umask", "wait", "command -v ls", "type ls", "source f", ". f", ": x", "if",
    "while", "for", "time sleep 1", "eval ls", "trap", "hash", "alias",
    # not ASCII
    "caf\u00e9",
])
def test_anything_else_goes_through_the_shell(command: str) -> None:
    assert direct_argv(command) is None


def test_builtins_listed_include_dashs() -> None:
    # dash's builtins (`sh -c 'help'` is not available in dash; this is its manual's list)
    dash = {".", ":", "[", "alias", "bg", "break", "cd", "chdir", "command", "continue", "echo",
            "eval", "exec", "exit", "export", "false", "fg", "getopts", "hash", "jobs", "kill",
            "local", "printf", "pwd", "read", "readonly", "return", "set", "shift", "test",
            "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "wait"}
    assert dash <= SHELL_WORDS


def test_shell_pwd_keeps_an_inherited_pwd_naming_the_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert shell_pwd(str(link), str(link)) == str(link)  # logical path kept, as sh does
    assert shell_pwd(str(link), None) == os.path.realpath(link)
    assert shell_pwd(str(link), str(tmp_path)) == os.path.realpath(link)  # another directory
    assert shell_pwd(str(link), "relative/path") == os.path.realpath(link)
    assert shell_pwd(str(link), str(tmp_path / "missing")) == os.path.realpath(link)
    assert shell_pwd(None, None) == os.path.realpath(".")


def _pipe_size(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


@pytest.mark.parametrize(("command", "grown"), [
    ("head -c 3000000 /dev/zero", True),  # fills its pipe: grown to PIPE_SIZE after one read
    ("echo quiet", False),  # a few bytes: the pipe keeps its default size
])
def test_pipes_grow_only_for_output_that_fills_them(command: str, grown: bool) -> None:
    import asyncio

    from rexec.server.exec.child import PIPE_SIZE
    from rexec.server.exec.runner import Runner

    async def main() -> tuple[int, list[int]]:
        child = Runner().start(["/bin/sh", "-c", command], {"PATH": os.defpath})
        fd = child._fds[1]
        assert fd is not None
        buffer = bytearray(256 * 1024)
        total, sizes = 0, []
        await asyncio.sleep(0.2)  # let a fast writer fill the pipe first
        while (count := await child.read_into(1, buffer)) > 0:
            total += count
            if child._fds.get(1) is not None:
                sizes.append(_pipe_size(fd))
        await child.wait()
        child.close()
        return total, sizes

    total, sizes = asyncio.run(main())
    if grown:
        assert total == 3_000_000
        assert sizes[0] == PIPE_SIZE
    else:
        assert total == len(b"quiet\n")
        assert all(size < PIPE_SIZE for size in sizes)
