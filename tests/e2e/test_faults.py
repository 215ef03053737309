"""Faults: server shutdown with a grace period, background processes, a server that dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rexec
from rexec import ConnectionLost, RemoteError
from tests.helpers import ROOT, pids_in_group, reap, start_server, wait_until


def _server(tmp_path: Path, *settings: str):
    config = tmp_path / "server.toml"
    config.write_text("[server]\n" + "\n".join(settings) + "\n")
    return start_server(tmp_path, "--config", str(config))


def _client(srv, command: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    token = tmp_path / "client-token"
    token.write_text(srv.token)
    token.chmod(0o600)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--token-file", str(token),
         srv.address, "--", command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )


def _wait_for_file(path: Path) -> int:
    assert wait_until(path.exists, timeout=20)
    return int(path.read_text())


def test_sigterm_lets_running_commands_finish(tmp_path):
    srv = _server(tmp_path, "shutdown_grace = 20")
    pidfile = tmp_path / "pid"
    client = _client(srv, f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile}; sleep 2;"
                          " echo finished", tmp_path)
    try:
        _wait_for_file(pidfile)
        srv.proc.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        assert out == b"finished\n"
        assert srv.proc.wait(20) == 0
    finally:
        reap(client)
        srv.stop()


def test_sigterm_grace_runs_out_then_commands_die_and_clients_are_told(tmp_path):
    srv = _server(tmp_path, "shutdown_grace = 1", "kill_grace = 1")
    pidfile = tmp_path / "pid"
    client = _client(srv, f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile}; sleep 60",
                     tmp_path)
    try:
        pgid = _wait_for_file(pidfile)
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        _, err = client.communicate(timeout=30)
        assert client.returncode == 255
        assert b"shutting down" in err
        assert srv.proc.wait(20) == 0
        assert time.monotonic() - started < 10
        assert wait_until(lambda: not pids_in_group(pgid))
    finally:
        reap(client)
        srv.stop()


def test_a_second_signal_ends_the_grace_early(tmp_path):
    srv = _server(tmp_path, "shutdown_grace = 60", "kill_grace = 1")
    pidfile = tmp_path / "pid"
    client = _client(srv, f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile}; sleep 60",
                     tmp_path)
    try:
        pgid = _wait_for_file(pidfile)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert client.poll() is None  # still running within the grace
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(20) == 0
        assert time.monotonic() - started < 10
        assert client.wait(20) == 255
        assert wait_until(lambda: not pids_in_group(pgid))
    finally:
        reap(client)
        srv.stop()


NOISE = ("Traceback", "never retrieved", "CancelledError", "Task was destroyed", "ERROR")


@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM),
                                     (signal.SIGTERM, signal.SIGTERM, signal.SIGTERM)])
def test_a_second_sigterm_ends_the_grace_without_error_traces(tmp_path, signals):
    srv = _server(tmp_path, "shutdown_grace = 60", "kill_grace = 1")
    pidfile = tmp_path / "pid"
    client = _client(srv, f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile}; sleep 60",
                     tmp_path)
    try:
        pgid = _wait_for_file(pidfile)
        for signum in signals:
            srv.proc.send_signal(signum)
            time.sleep(0.3)
        assert srv.proc.wait(20) == 0  # the documented status: 0, however many signals
        assert client.wait(20) == 255
        assert wait_until(lambda: not pids_in_group(pgid))
        log = srv.log()
        assert not [word for word in NOISE if word in log], log
        assert '"event": "shutdown_hurried"' in log
        assert log.rstrip().endswith('{"event": "stopped"}'), log
    finally:
        reap(client)
        srv.stop()


def test_idle_connections_are_told_at_once(tmp_path):
    srv = _server(tmp_path, "shutdown_grace = 60")
    try:
        with rexec.BlockingClient(srv.address, token=srv.token) as c:
            assert c.run("echo before").ok
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(20) == 0  # no command running: no reason to wait
            with pytest.raises((RemoteError, ConnectionLost)) as info:
                c.run("echo after")
            assert "shutting down" in str(info.value) or isinstance(info.value, ConnectionLost)
        assert "shutting_down" in srv.log() or "shutdown" in srv.log()
    finally:
        srv.stop()


def test_background_process_does_not_hold_the_command(server, tmp_path):
    pidfile = tmp_path / "bg"
    started = time.monotonic()
    r = rexec.run(server.address, f"sleep 60 & echo $! > {pidfile}; echo started",
                  token=server.token)
    elapsed = time.monotonic() - started
    assert r.stdout == b"started\n"
    assert r.ok
    assert elapsed < 5
    background = int(pidfile.read_text())
    try:  # left running, like a daemon started with nohup
        assert Path(f"/proc/{background}").exists()
    finally:
        os.kill(background, signal.SIGKILL)


def test_output_of_a_background_process_within_the_grace_is_delivered(server):
    r = rexec.run(server.address, "(sleep 0.2; echo late) & echo early", token=server.token)
    assert r.stdout == b"early\nlate\n"


def test_nohup_daemon_keeps_running(server, tmp_path):
    pidfile = tmp_path / "daemon"
    r = rexec.run(server.address,
                  f"nohup sh -c 'echo $$ > {pidfile}; exec sleep 60' >/dev/null 2>&1 &"
                  " echo launched", token=server.token)
    assert r.stdout == b"launched\n"
    daemon = _wait_for_file(pidfile)
    try:
        time.sleep(0.5)
        assert Path(f"/proc/{daemon}").exists()
    finally:
        os.kill(daemon, signal.SIGKILL)


def test_stderr_after_stdout_closed_and_output_after_stdin_eof(server):
    r = rexec.run(server.address, "exec 1>&-; sleep 0.1; echo to-stderr >&2",
                  token=server.token)
    assert r.stderr == b"to-stderr\n"
    r = rexec.run(server.address, "cat; echo after-eof", token=server.token, stdin=b"in\n")
    assert r.stdout == b"in\nafter-eof\n"


def _children(pid: int) -> list[int]:
    from tests.helpers import live_processes

    return [child for child, fields in live_processes() if int(fields[1]) == pid]


def test_commands_of_a_killed_server_die_and_the_client_says_the_outcome_is_unknown(tmp_path):
    srv = _server(tmp_path, "kill_grace = 1")
    pidfile = tmp_path / "pid"
    client = _client(srv, f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile}; echo partial;"
                          " sleep 60 & sleep 60", tmp_path)
    try:
        pgid = _wait_for_file(pidfile)
        assert wait_until(lambda: len(pids_in_group(pgid)) >= 2)
        guardians = [p for p in _children(srv.proc.pid) if p not in pids_in_group(pgid)]
        srv.proc.kill()
        srv.proc.wait()
        out, err = client.communicate(timeout=30)
        assert out == b"partial\n"  # everything received is printed
        assert client.returncode == 255
        assert b"outcome is unknown" in err
        assert b"bytes" in err
        assert wait_until(lambda: not pids_in_group(pgid), timeout=15)  # grandchild too
        assert guardians
        assert wait_until(lambda: not any(Path(f"/proc/{g}").exists() for g in guardians))
    finally:
        reap(client)
        srv.stop()


def test_the_guardian_leaves_with_a_normal_stop(tmp_path):
    srv = _server(tmp_path)
    guardians = _children(srv.proc.pid)
    assert len(guardians) == 1
    cmdline = Path(f"/proc/{guardians[0]}/cmdline").read_bytes()
    assert b"rexec.server.exec.guardian" in cmdline
    assert rexec.run(srv.address, "echo ok", token=srv.token).ok
    assert srv.stop() == 0
    assert wait_until(lambda: not Path(f"/proc/{guardians[0]}").exists())


def test_killed_client_group_dies_within_seconds(server, client_token_file, tmp_path):
    pidfile = tmp_path / "pid"
    client = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--token-file", str(client_token_file),
         server.address, "--", f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile}; sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        pgid = _wait_for_file(pidfile)
        client.kill()
        started = time.monotonic()
        assert wait_until(lambda: not pids_in_group(pgid), timeout=10, interval=0.02)
        assert time.monotonic() - started < 3  # "within a second or two"
    finally:
        reap(client)


def test_cancel_sigkills_a_command_that_ignores_sigterm(tmp_path):
    srv = _server(tmp_path, "kill_grace = 1")
    try:
        with rexec.BlockingClient(srv.address, token=srv.token) as c:
            def on_out(_data: object) -> None:
                c.request_cancel()

            started = time.monotonic()
            r = c.run("trap '' TERM; echo armed; sleep 30", on_stdout=on_out)
            assert r.signal == signal.SIGKILL
            assert time.monotonic() - started < 8
    finally:
        assert srv.stop() == 0


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _zombie_children(pid: int) -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                zombies.append(int(entry.name))
    return zombies


def test_no_zombies_and_fds_back_to_baseline_after_every_kind_of_ending(tmp_path):
    srv = _server(tmp_path, "kill_grace = 1")
    pid = srv.proc.pid
    try:
        assert rexec.run(srv.address, "true", token=srv.token).ok  # warm up lazy state
        baseline = _fd_count(pid)
        with rexec.BlockingClient(srv.address, token=srv.token) as c:
            c.run("exit 3")
            c.run("kill -9 $$")
            c.run("sleep 30", timeout=0.3)
            c.run("cat", stdin=b"x" * 3_000_000)
            background = int(c.run("sleep 30 & echo $!").stdout)  # left behind, killed below
            with pytest.raises(rexec.CommandNotStarted):
                c.run("pwd", cwd="/nonexistent")
        for _ in range(5):  # connections that end mid-command
            client = subprocess.Popen(
                [sys.executable, "-c", "import rexec,sys; rexec.run(sys.argv[1], 'sleep 30',"
                 " token=sys.argv[2])", srv.address, srv.token])
            time.sleep(0.3)
            client.kill()
            client.wait()
        os.kill(background, signal.SIGKILL)
        assert wait_until(lambda: _fd_count(pid) <= baseline, timeout=10), \
            (baseline, _fd_count(pid))
        assert wait_until(lambda: not _zombie_children(pid), timeout=10)
    finally:
        assert srv.stop() == 0


SLOW_READER = r"""
import sys, time
stdin = sys.stdin.buffer
started = time.monotonic()
data = b""
while time.monotonic() - started < 3:   # a slow reader: 4 KiB every 200 ms
    data += stdin.read(4096)
    time.sleep(0.2)
data += stdin.read()                      # then it catches up
lines = data.split(b"\n")
assert lines[-1] == b"", "missing final newline"
numbers = [int(x) for x in lines[:-1]]
assert numbers == list(range(1, len(numbers) + 1)), "out of order or lost"
print(len(numbers))
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_flood_into_a_slow_reader_keeps_memory_flat_and_every_byte(server, client_token_file):
    count = 3_000_000  # about 21 MB of numbered lines
    rexec_cli = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--token-file", str(client_token_file),
         server.address, "--", f"seq 1 {count}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    assert rexec_cli.stdout is not None
    reader = subprocess.Popen([sys.executable, "-c", SLOW_READER], stdin=rexec_cli.stdout,
                              stdout=subprocess.PIPE)
    rexec_cli.stdout.close()  # the reader holds it now
    try:
        time.sleep(1.0)
        client_rss, server_rss = [], []
        for _ in range(8):  # while the reader is slow
            client_rss.append(_rss_kib(rexec_cli.pid))
            server_rss.append(_rss_kib(server.proc.pid))
            time.sleep(0.2)
        out, _ = reader.communicate(timeout=120)
        assert reader.returncode == 0
        assert int(out) == count  # every line, in order
        assert rexec_cli.wait(30) == 0
        assert max(client_rss) - min(client_rss) < 8 * 1024, client_rss  # flat: KiB
        assert max(server_rss) - min(server_rss) < 8 * 1024, server_rss
        assert max(client_rss) < 100 * 1024
    finally:
        reap(reader)
        reap(rexec_cli)


def test_sigterm_right_after_listening_on_is_a_graceful_stop(tmp_path):
    """A supervisor may stop the server the moment it says it listens: the handlers are in
    place by then, so the stop is graceful (exit 0), never SIGTERM's default action (-15)."""
    for attempt in range(5):
        (tmp_path / str(attempt)).mkdir()
        srv = start_server(tmp_path / str(attempt))
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=30) == 0, srv.log()


@pytest.mark.parametrize("splice", ["true", "false"], ids=["spliced", "read"])
def test_a_client_killed_mid_body_ends_its_command_and_the_server_serves_on(tmp_path, splice):
    """The client dies while the server is sending it an endless stream, in the middle of a
    body (1 MiB bodies go out back to back): spliced from the pipe or read and sent, the
    command's group is killed, every descriptor of the connection is closed, and the next
    client is served."""
    srv = _server(tmp_path, f"splice = {splice}", "kill_grace = 1")  # reaped after the grace
    pid = srv.proc.pid
    try:
        assert rexec.run(srv.address, "true", token=srv.token).ok  # warm up lazy state
        baseline = _fd_count(pid)
        for round_no in range(3):
            pidfile = tmp_path / f"pid{round_no}"
            client = _client(srv, f"echo $$ > {pidfile}.t; mv {pidfile}.t {pidfile};"
                                  " exec cat /dev/zero", tmp_path)
            assert client.stdout is not None
            command = _wait_for_file(pidfile)
            received = 0
            while received < (round_no + 1) * 3_000_000:  # some way into the stream
                received += len(client.stdout.read1(1 << 20))
            client.kill()
            client.wait()
            client.stdout.close()
            assert client.stderr is not None
            client.stderr.close()
            assert wait_until(lambda command=command: not pids_in_group(command), timeout=10)
        assert wait_until(lambda: _fd_count(pid) <= baseline, timeout=10), \
            (baseline, _fd_count(pid))
        assert wait_until(lambda: not _zombie_children(pid), timeout=10)
        result = rexec.run(srv.address, "head -c 5000000 /dev/zero; echo done >&2",
                           token=srv.token)
        assert (len(result.stdout), result.stderr) == (5_000_000, b"done\n")
        assert "Traceback" not in srv.log()
    finally:
        assert srv.stop() == 0
