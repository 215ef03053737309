"""Simple commands run without /bin/sh (as ``bash -c`` does): nothing a user sees changes.

Each test runs a simple command and the same command made non-simple with a trailing ``;``
(which sends it through ``/bin/sh -c``), and compares what comes back.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import rexec
from tests.helpers import ROOT, start_server


@pytest.fixture(scope="module")
def client(server):
    with rexec.BlockingClient(server.address, token=server.token) as c:
        yield c


def both(client, command: str, **kwargs):
    direct = client.run(command, **kwargs)
    shell = client.run(command + ";", **kwargs)
    return direct, shell


def env_lines(data: bytes) -> list[bytes]:
    return sorted(data.splitlines())


@pytest.mark.parametrize("cwd", [None, "/usr/lib", "/"])
def test_environment_is_the_shells_pwd_included(client, cwd):
    direct, shell = both(client, "env", cwd=cwd)
    assert direct.exit_code == shell.exit_code == 0
    assert env_lines(direct.stdout) == env_lines(shell.stdout)
    if cwd is not None:
        assert f"PWD={cwd}".encode() in direct.stdout.splitlines()


def test_pwd_through_a_symbolic_link_is_kept_as_the_shell_keeps_it(client, tmp_path: Path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    link = str(tmp_path / "link")
    for env in ({"PWD": link}, {"PWD": "/nonexistent"}, {}):
        direct, shell = both(client, "env", cwd=link, env=env)
        assert env_lines(direct.stdout) == env_lines(shell.stdout), env


@pytest.mark.parametrize(("command", "status"), [
    ("no-such-program-here", 127),
    ("/etc/passwd", 126),  # not executable
    ("/no/such/path", 127),
])
def test_failures_read_and_exit_as_the_shells(client, command, status):
    direct, shell = both(client, command)
    assert direct.exit_code == shell.exit_code == status
    assert direct.stderr == shell.stderr
    assert direct.stderr.startswith(b"/bin/sh: 1: ")


def test_a_script_without_a_shebang_is_run_by_the_shell(client, tmp_path: Path):
    script = tmp_path / "noshebang"
    script.write_text("echo from-the-script $((6 * 7))\n")
    script.chmod(0o755)
    direct, shell = both(client, str(script))
    assert direct.stdout == shell.stdout == b"from-the-script 42\n"
    assert direct.exit_code == 0


def test_arguments_arrive_as_the_shell_splits_them(client):
    direct, shell = both(client, "printenv  HOME   PATH")  # repeated spaces
    assert direct.stdout == shell.stdout
    assert direct.stdout.count(b"\n") == 2


def test_the_program_itself_leads_the_process_group(client):
    # Without the shell in between, the command is the process the server started: its parent
    # is the server and it leads its own group and session.
    r = client.run("cat /proc/self/stat")
    fields = r.stdout.decode().rsplit(")", 1)[1].split()
    ppid, pgrp, session = int(fields[1]), int(fields[2]), int(fields[3])
    pid = int(r.stdout.split()[0])
    assert pgrp == session == pid
    assert ppid != pid and os.path.basename(os.readlink(f"/proc/{ppid}/exe")).startswith("python")


def test_shell_syntax_still_goes_to_the_shell(client):
    r = client.run("A=1 env")
    assert b"A=1" in r.stdout.splitlines()
    r = client.run("echo $((1 + 2)) ~")
    assert r.stdout.startswith(b"3 /")  # arithmetic done, the tilde expanded to a path


def test_timeout_and_signals_reach_a_direct_command(client):
    r = client.run("sleep 30", timeout=0.5)
    assert r.timed_out
    assert r.signal == 15  # SIGTERM reached sleep itself


@pytest.mark.parametrize("server_pwd", ["/", "/nonexistent", None])
def test_a_server_whose_pwd_is_stale_gives_the_shells_pwd(tmp_path: Path, server_pwd):
    # The server's own PWD does not name its directory (or is unset, as under systemd):
    # sh would export the physical path of the directory; so must a direct command.
    env = dict(os.environ)
    env.pop("PWD", None)
    if server_pwd is not None:
        env["PWD"] = server_pwd
    srv = start_server(tmp_path, env={"REXEC_HOME": str(tmp_path), **env}, replace_env=True)
    try:
        with rexec.BlockingClient(srv.address, token=srv.token) as c:
            direct, shell = both(c, "env")
            assert env_lines(direct.stdout) == env_lines(shell.stdout)
            assert b"PWD=" + str(ROOT).encode() in direct.stdout.splitlines()
    finally:
        assert srv.stop() == 0, srv.log()
