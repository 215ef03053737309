"""Process-group ids and command slots: what a command's end frees, and when (security review).

The stale-id test runs a real server in a PID namespace of its own, where the test can force the
kernel to hand out a chosen process id next (``/proc/sys/kernel/ns_last_pid``), as PID reuse
would by chance on a busy host.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rexec
from rexec import CommandNotStarted
from rexec.client.core import Authenticated, ClientCore, Finished, Output
from rexec.wire.auth import TokenVerifier
from tests.helpers import (
    ROOT,
    TOKEN,
    ServerProcess,
    live_processes,
    reap,
    start_server,
    wait_until,
    write_token,
)

PY = shlex.quote(sys.executable)

INIT = r"""
import os, subprocess, sys
server = subprocess.Popen(sys.argv[1:])
while True:  # as an init must, reap every orphan that ends up here; end with the server
    pid, status = os.wait()
    if pid == server.pid:
        sys.exit(os.waitstatus_to_exitcode(status))
"""

WRITER = r"""
import sys, time
for _ in range(int(sys.argv[1])):  # a tick every 50 ms: the command stays open meanwhile
    print("tick", flush=True)
    time.sleep(0.05)
"""

REUSE = r"""
import os, subprocess, sys, time
leader = int(sys.argv[1])
for _ in range(500):  # until the old leader has exited (gone, or a zombie)
    try:
        with open(f"/proc/{leader}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
    except FileNotFoundError:
        break
    time.sleep(0.01)
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(leader - 1))  # the next process made in this namespace gets `leader`, if free
victim = subprocess.Popen(["sleep", "30"], start_new_session=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(victim.pid, os.getpgid(victim.pid))
"""


def _spawn_server(tmp: Path, *prefix: str) -> ServerProcess:
    """A real server started through ``prefix`` (a command that ends by running its arguments)."""
    token_file = write_token(tmp / "server-token")
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*prefix, sys.executable, str(ROOT / "server.py"), "--port", "0", "--token-file",
             str(token_file), "--log-level", "debug"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # b"" if it died
    if not line.startswith(b"listening on "):
        _end_namespace(proc)
        raise RuntimeError(f"server did not start: {line!r}\n{log_path.read_text()}")
    host, _, port = line.decode().split()[-1].rpartition(":")
    return ServerProcess(proc, host, int(port), TOKEN, token_file, log_path)


def _namespaced_server(tmp: Path) -> ServerProcess:
    """A real server as the only child of a small init, in new PID and mount namespaces."""
    return _spawn_server(tmp, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                         sys.executable, "-c", INIT)


def _end_namespace(proc: subprocess.Popen[bytes]) -> None:
    """Kill the namespace's init: the kernel then kills everything in the namespace, and
    unshare exits only once the init, and so every process of the namespace, is gone."""
    for pid, fields in live_processes():
        if int(fields[1]) == proc.pid:
            os.kill(pid, signal.SIGKILL)  # the init, unshare's only child
    proc.kill()  # --kill-child: the init dies with unshare even if it was not found above
    proc.wait(30)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def namespaced_server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = _namespaced_server(tmp_path)
    try:
        yield srv
    finally:
        _end_namespace(srv.proc)


class RawConnection:
    """A client connection driven by hand: ClientCore over a blocking socket."""

    def __init__(self, srv: ServerProcess, token: str = TOKEN, identity: str | None = None,
                 timeout: float = 20.0) -> None:
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        self.core = ClientCore(token, identity=identity)
        assert isinstance(self.next_event(), Authenticated)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def flush(self) -> None:
        if self.core.pending:
            self.sock.sendall(self.core.data_to_send())

    def next_event(self) -> Authenticated | Output | Finished:
        while True:
            event = self.core.next_event()
            self.flush()
            if event is not None:
                return event
            data = self.sock.recv(65536)
            if data:
                self.core.receive_data(data)
            else:
                self.core.receive_eof()

    def start(self, command: str) -> None:
        self.core.start(command)
        self.flush()

    def first_line(self) -> bytes:
        """The command's stdout up to its first newline (bounded by the socket timeout)."""
        out = b""
        while b"\n" not in out:
            event = self.next_event()
            assert isinstance(event, Output), event
            if event.stream == "stdout":
                out += bytes(event.data)
        return out.split(b"\n", 1)[0]

    def send_signal(self, name: str) -> None:
        self.core.send_signal(name)
        self.flush()


def _state(srv: ServerProcess, pid: int) -> str:
    """The state letter of process ``pid`` in the server's PID namespace, or "gone"."""
    r = rexec.run(srv.address, f"cat /proc/{pid}/stat 2>/dev/null || echo gone",
                  token=srv.token)
    text = r.stdout.decode()
    return "gone" if text.startswith("gone") else text.rsplit(")", 1)[1].split()[0]


def test_signal_after_the_leader_exits_never_reaches_a_reused_group_id(namespaced_server):
    srv = namespaced_server
    with RawConnection(srv) as conn:
        # The leader prints its id and exits at once; a writer in a session of its own keeps
        # the output open, so the command, and the signals its client may send, go on.
        conn.start(f"echo $$; setsid {PY} -c {shlex.quote(WRITER)} 300 & exit 0")
        leader = int(conn.first_line())
        assert conn.first_line() == b"tick"
        # Someone else's process is made next, asking the kernel for the old leader's id.
        made = rexec.run(srv.address, f"{PY} -c {shlex.quote(REUSE)} {leader}",
                         token=srv.token)
        victim, victim_group = map(int, made.stdout.split())
        assert victim == victim_group  # a group leader of its own
        assert _state(srv, victim) in "RSD"  # running
        conn.send_signal("KILL")
        time.sleep(0.5)  # the server acts on a signal frame at once
        assert _state(srv, victim) in "RSD", "the command's signal killed another process group"
        # and the id was never up for grabs while the command could still be signalled
        assert victim_group != leader


def test_a_shutdown_sigkills_what_ignored_sigterm_before_the_server_exits(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("[server]\nshutdown_grace = 0.2\nkill_grace = 1.5\n")
    srv = start_server(tmp_path, "--config", str(config))
    pidfile = tmp_path / "member"
    client = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--token-file", str(srv.token_file),
         srv.address, "--",
         f"(trap '' TERM; exec sh -c 'echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile};"
         " exec sleep 60') >/dev/null 2>&1 & sleep 60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    member = None
    try:
        assert wait_until(pidfile.exists, timeout=20)
        member = os.pidfd_open(int(pidfile.read_text()))  # it ignores SIGTERM, and holds no pipe
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0
        elapsed = time.monotonic() - started
        # the SIGKILL went out before the server exited, while the group's ID was its own
        assert select.select([member], [], [], 5)[0], "it outlived the server's shutdown"
        assert elapsed >= 1.4  # it had its kill grace
        assert client.wait(20) == 255
    finally:
        if member is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(member, signal.SIGKILL)
            os.close(member)
        reap(client)
        srv.stop()


def test_a_slot_is_freed_when_the_command_ends_even_if_its_client_stops_reading(tmp_path):
    token = "flood-token-with-enough-entropy-0123456789"
    config = tmp_path / "server.toml"
    config.write_text(f"""
[server]
kill_grace = 1

[server.identities.flood]
token_hash = "{TokenVerifier.from_token(token).format()}"
max_commands = 1
max_timeout = 1
""")
    srv = start_server(tmp_path, "--config", str(config))
    try:
        with RawConnection(srv, token, identity="flood") as stalled:
            stalled.start("yes")  # floods, and this client never reads another byte
            started = time.monotonic()
            freed = None
            while freed is None and time.monotonic() - started < 20:
                try:
                    freed = rexec.run(srv.address, "echo free", token=token, identity="flood",
                                      connect_timeout=5)
                except CommandNotStarted as exc:
                    assert "max_commands" in str(exc)
                    time.sleep(0.2)
            assert freed is not None, "the slot stayed taken after the timeout killed `yes`"
            assert freed.stdout == b"free\n"
            assert time.monotonic() - started >= 0.9  # not before the timeout ended `yes`
    finally:
        assert srv.stop() == 0, srv.log()


IGNORE_SIGCHLD = """
import os, signal, sys
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # inherited across exec, as from a careless parent
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_a_server_started_with_sigchld_ignored_still_keeps_its_leaders(tmp_path):
    srv = _spawn_server(tmp_path, sys.executable, "-c", IGNORE_SIGCHLD)
    try:
        r = rexec.run(srv.address, "exit 3", token=srv.token)
        assert r.exit_code == 3  # the kernel did not reap it first (it would read 0)
        with RawConnection(srv) as conn:
            conn.start(f"echo $$; setsid {PY} -c {shlex.quote(WRITER)} 20 & exit 0")
            leader = int(conn.first_line())
            assert conn.first_line() == b"tick"
            assert Path(f"/proc/{leader}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            while not isinstance(conn.next_event(), Finished):  # the writer is done in 1 s
                pass
    finally:
        assert srv.stop() == 0, srv.log()


def test_a_shutdown_does_not_wait_out_the_kill_grace_of_a_group_already_gone(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("[server]\nshutdown_grace = 0.2\nkill_grace = 60\n")
    srv = start_server(tmp_path, "--config", str(config))
    client = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--token-file", str(srv.token_file),
         srv.address, "--", "echo started; sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)  # sh and sleep die of it: nothing is left to kill
        assert srv.proc.wait(30) == 0
        assert time.monotonic() - started < 10
    finally:
        reap(client)
        srv.stop()
