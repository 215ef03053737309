"""What an operator meets: IPv6 hosts as addresses are written, `rexec token` at a terminal."""

from __future__ import annotations

import os
import pty
import select
import socket
import sys
import time

import pytest

import rexec
from rexec.wire.auth import TokenVerifier
from tests.helpers import ROOT, start_server


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="::1 is not available here")


@needs_ipv6
@pytest.mark.parametrize("host", ["[::1]", "::1"])
def test_host_takes_ipv6_with_or_without_brackets(tmp_path, host):
    srv = start_server(tmp_path, "--host", host)
    try:
        assert srv.host == "[::1]"  # "listening on [::1]:PORT", ready to copy
        assert rexec.run(srv.address, "echo v6", token=srv.token).stdout == b"v6\n"
    finally:
        assert srv.stop() == 0, srv.log()


@needs_ipv6
def test_host_in_the_config_file_takes_brackets(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text('[server]\nhost = "[::1]"\n')
    srv = start_server(tmp_path, "--config", str(config))
    try:
        assert srv.address.startswith("[::1]:")
        assert rexec.run(srv.address, "true", token=srv.token).ok
    finally:
        assert srv.stop() == 0, srv.log()


def _read_until(fd: int, wanted: bytes, timeout: float = 20.0) -> bytes:
    """Read a PTY's master side until ``wanted`` appears (or its end, or the timeout)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_token_hash_on_a_terminal_prompts_without_echo():
    token = "typed-token-0123456789abcdef"
    pid, master = pty.fork()
    if pid == 0:  # the child: the PTY is its controlling terminal, as in a shell
        try:
            os.execv(sys.executable,  # noqa: S606 - the CLI as a user runs it, no shell
                     [sys.executable, str(ROOT / "client.py"), "token", "hash"])
        finally:
            os._exit(127)
    try:
        assert b"Token: " in _read_until(master, b"Token: ")
        os.write(master, token.encode() + b"\r")
        after = _read_until(master, b"\n\x00never")  # everything until the child exits
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, after
    assert token.encode() not in after  # not echoed
    line = after.decode().strip()
    assert line.startswith('token_hash = "'), after
    stored = TokenVerifier.parse(line.split('"')[1])
    assert stored == TokenVerifier.from_token(token, stored.salt)
