"""The real ``rexec run`` CLI against a real server on an ephemeral loopback port."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import ROOT, pids_in_group, reap, run_cli, wait_until


def rexec(server, token_file, *words, **kwargs):
    return run_cli("run", server.address, "--", *words, token_file=token_file, **kwargs)


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 1 << 20))
            fh.write(chunk)
            remaining -= len(chunk)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- output, byte for byte ---------------------------------------------------------------


def test_empty_output(server, client_token_file):
    r = rexec(server, client_token_file, "true")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def test_one_byte(server, client_token_file):
    r = rexec(server, client_token_file, "printf x")
    assert (r.returncode, r.stdout) == (0, b"x")


def test_a_stdout_pipe_is_grown_and_every_byte_still_arrives(server, client_token_file):
    """A stdout that is a pipe is grown to 1 MiB (fewer writes, fewer wake-ups of its reader);
    the output through it stays byte-exact."""
    import fcntl

    from rexec.cli.run import STDOUT_PIPE_SIZE

    read, write = os.pipe()
    try:
        assert fcntl.fcntl(write, fcntl.F_GETPIPE_SZ) < STDOUT_PIPE_SIZE  # Linux's 64 KiB
        argv = [sys.executable, str(ROOT / "client.py"), "run", "--token-file",
                str(client_token_file), server.address, "--",
                "f=$(mktemp); head -c 3000000 /dev/urandom | tee $f | sha256sum >&2; cat $f; rm $f"]
        proc = subprocess.Popen(argv, stdout=write, stderr=subprocess.PIPE, cwd=ROOT)
        os.close(write)
        write = -1
        received = bytearray()
        while chunk := os.read(read, 1 << 20):
            received += chunk
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert fcntl.fcntl(read, fcntl.F_GETPIPE_SZ) == STDOUT_PIPE_SIZE
    finally:
        os.close(read)
        if write != -1:
            os.close(write)
    assert len(received) == 3000000
    assert err.decode().split()[0] == hashlib.sha256(received).hexdigest()  # the remote's hash


def test_words_are_joined_like_ssh(server, client_token_file):
    r = rexec(server, client_token_file, "echo", "a", "b;", "echo", "c")
    assert r.stdout == b"a b\nc\n"


def test_binary_nul_and_invalid_utf8(server, client_token_file, tmp_path):
    data = bytes(range(256)) * 64 + b"\x00\xff\xfe\x80"
    src = tmp_path / "bin"
    src.write_bytes(data)
    r = rexec(server, client_token_file, f"cat {src}")
    assert r.returncode == 0
    assert r.stdout == data


@pytest.mark.slow
def test_100_megabytes_with_checksum(server, client_token_file, tmp_path):
    src = random_file(tmp_path / "big", 100_000_000)
    out = tmp_path / "out"
    with out.open("wb") as fh:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "client.py"), "run", "--token-file",
             str(client_token_file), server.address, "--", f"cat {src}"],
            stdout=fh, stderr=subprocess.PIPE, timeout=120, check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == 100_000_000
    assert sha256_file(out) == sha256_file(src)


def test_large_stdout_and_stderr_at_once(server, client_token_file, tmp_path):
    a = random_file(tmp_path / "a", 8_000_000)
    b = random_file(tmp_path / "b", 8_000_000)
    r = rexec(server, client_token_file, f"cat {a} & cat {b} >&2; wait")
    assert r.returncode == 0
    assert r.stdout == a.read_bytes()
    assert r.stderr == b.read_bytes()


def test_20_megabytes_of_stdin_through_cat_and_sha256sum(server, client_token_file, tmp_path):
    src = random_file(tmp_path / "in", 20_000_000)
    with src.open("rb") as fh:
        r = rexec(server, client_token_file, "sha256sum", stdin=fh.fileno())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == sha256_file(src)
    piped = rexec(server, client_token_file, "cat", input=src.read_bytes())
    assert piped.returncode == 0
    assert hashlib.sha256(piped.stdout).hexdigest() == sha256_file(src)


def test_stdin_not_forwarded_with_no_stdin(server, client_token_file):
    # stdin is a pipe that never closes: without -n, cat would wait for it forever
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "-n", "--token-file",
         str(client_token_file), server.address, "--", "cat; echo done"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out == b"done\n"


def test_stdin_is_dev_null_when_not_forwarded(server, client_token_file):
    r = rexec(server, client_token_file, "cat; echo end", stdin=subprocess.DEVNULL)
    assert r.stdout == b"end\n"


# --- exit statuses --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_exit_codes(server, client_token_file, code):
    r = rexec(server, client_token_file, f"exit {code}")
    assert r.returncode == code


@pytest.mark.parametrize(("sig", "status"), [("TERM", 143), ("KILL", 137), ("SEGV", 139)])
def test_death_by_signal_is_128_plus_n(server, client_token_file, sig, status):
    r = rexec(server, client_token_file, f"kill -{sig} $$")
    assert r.returncode == status


def test_timeout_kills_grandchildren(server, client_token_file, tmp_path):
    pidfile = tmp_path / "grandchild"
    started = time.monotonic()
    r = run_cli("run", "--timeout", "1", server.address, "--",
                f"sleep 60 & echo $! > {pidfile}; sleep 60", token_file=client_token_file)
    elapsed = time.monotonic() - started
    assert r.returncode == 124
    assert elapsed < 20
    grandchild = int(pidfile.read_text())
    assert wait_until(lambda: not Path(f"/proc/{grandchild}").exists()
                      or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2])


def test_timeout_json_says_timed_out(server, client_token_file):
    r = run_cli("run", "--json", "--timeout", "0.5", server.address, "--", "sleep 30",
                token_file=client_token_file)
    doc = json.loads(r.stdout)
    assert r.returncode == 124
    assert doc["timed_out"] is True
    assert doc["exit_status"] == 124


# --- options ----------------------------------------------------------------------------------


def test_env_and_cwd(server, client_token_file, tmp_path):
    r = run_cli("run", "-e", "FOO=bar baz", "--env", "EMPTY=", "--cwd", str(tmp_path),
                server.address, "--", 'printf "%s|%s|" "$FOO" "$EMPTY"; pwd',
                token_file=client_token_file)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"bar baz||{tmp_path}\n".encode()


def test_bad_env_is_a_usage_error(server, client_token_file):
    r = run_cli("run", "--env", "NOVALUE", server.address, "--", "true",
                token_file=client_token_file)
    assert r.returncode == 2
    assert b"KEY=VALUE" in r.stderr


def test_missing_cwd_is_reported(server, client_token_file):
    r = run_cli("run", "--cwd", "/nonexistent/dir", server.address, "--", "pwd",
                token_file=client_token_file)
    assert r.returncode == 255
    assert b"/nonexistent/dir" in r.stderr
    assert b"No such file" in r.stderr


def test_json_output_text_and_base64(server, client_token_file):
    r = run_cli("run", "--json", server.address, "--",
                r"printf '\377\000ok'; echo warn >&2; exit 5", token_file=client_token_file)
    assert r.returncode == 5
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 5
    assert doc["signal"] is None
    assert doc["stdout_encoding"] == "base64"
    assert base64.b64decode(doc["stdout"]) == b"\xff\x00ok"
    assert (doc["stderr"], doc["stderr_encoding"]) == ("warn\n", "utf-8")
    assert doc["stdout_bytes"] == 4
    assert doc["duration"] >= 0


# --- streaming and interruption -------------------------------------------------------------


def test_first_line_arrives_before_the_command_ends(server, client_token_file):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--token-file", str(client_token_file),
         server.address, "--", "echo first; sleep 4; echo second"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        first = proc.stdout.readline()
        assert first == b"first\n"
        assert time.monotonic() - started < 3.5
        assert proc.stdout.readline() == b"second\n"
        assert proc.wait(30) == 0
    finally:
        reap(proc)


def _start_sleeper(server, token_file, tmp_path):
    pidfile = tmp_path / "leader"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "run", "--token-file", str(token_file),
         server.address, "--", f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile};"
         " sleep 60 & sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    assert wait_until(pidfile.exists, timeout=20)
    pgid = int(pidfile.read_text())
    assert wait_until(lambda: len(pids_in_group(pgid)) >= 2)
    return proc, pgid


def test_ctrl_c_stops_the_remote_command_and_exits_130(server, client_token_file, tmp_path):
    proc, pgid = _start_sleeper(server, client_token_file, tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
        assert wait_until(lambda: not pids_in_group(pgid))
    finally:
        reap(proc)


def test_client_killed_mid_command_kills_the_process_group(server, client_token_file, tmp_path):
    proc, pgid = _start_sleeper(server, client_token_file, tmp_path)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert wait_until(lambda: not pids_in_group(pgid), timeout=15)


def test_closed_local_stdout_stops_the_remote_command(server, client_token_file):
    # `rexec run h -- yes | head -1`: head exits, rexec gets EPIPE, cancels, and exits 141
    started = time.monotonic()
    pipeline = subprocess.run(
        f"{sys.executable} {ROOT / 'client.py'} run --token-file {client_token_file}"
        f" {server.address} -- yes | head -n 1; echo \"status=${{PIPESTATUS:-}}\"",
        shell=True, capture_output=True, timeout=60, executable="/bin/bash",
    )
    assert pipeline.stdout.startswith(b"y\n")
    assert time.monotonic() - started < 30


# --- failures of the connection -------------------------------------------------------------


def test_wrong_token_exits_255_and_never_echoes_the_token(server, tmp_path):
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token-xyz\n")
    bad.chmod(0o600)
    r = run_cli("run", "--token-file", str(bad), server.address, "--", "true")
    assert r.returncode == 255
    assert b"authentication failed" in r.stderr
    assert b"not-the-token-xyz" not in r.stderr
    assert r.stderr.count(b"\n") == 1  # one line, no traceback
    assert server.token not in server.log()
    assert "not-the-token-xyz" not in server.log()


def test_no_token_anywhere_is_explained(server):
    r = run_cli("run", server.address, "--", "true")
    assert r.returncode == 2  # local input: usage
    assert b"no token" in r.stderr
    assert b"REXEC_TOKEN" in r.stderr


def test_token_from_environment(server):
    r = run_cli("run", server.address, "--", "echo env", env={"REXEC_TOKEN": server.token})
    assert (r.returncode, r.stdout) == (0, b"env\n")


def test_world_readable_token_file_is_refused(server, tmp_path):
    loose = tmp_path / "loose"
    loose.write_text(server.token)
    loose.chmod(0o644)
    r = run_cli("run", "--token-file", str(loose), server.address, "--", "true")
    assert r.returncode == 2  # local input: usage
    assert b"chmod 600" in r.stderr


def test_refused_connection(client_token_file):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        r = run_cli("run", "--token-file", str(client_token_file), f"127.0.0.1:{port}", "--",
                    "true")
    assert r.returncode == 255
    assert b"refused" in r.stderr.lower()


def test_not_a_rexec_server_fails_fast(client_token_file):
    import socket
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def ssh_like() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                conn.recv(1024)

        thread = threading.Thread(target=ssh_like, daemon=True)
        thread.start()
        started = time.monotonic()
        r = run_cli("run", "--token-file", str(client_token_file),
                    f"127.0.0.1:{listener.getsockname()[1]}", "--", "true")
        thread.join(5)
    assert r.returncode == 255
    assert time.monotonic() - started < 8
    assert b"rexec" in r.stderr


def test_bad_address(client_token_file):
    r = run_cli("run", "--token-file", str(client_token_file), "host:notaport", "--", "true")
    assert r.returncode == 2
    assert b"port" in r.stderr


# The CLI ends with os._exit once it has flushed (no interpreter teardown): what went through
# sys.stdout / sys.stderr (print, typer's help and errors) must still all arrive, with the status.


def test_version_reaches_a_pipe():
    r = run_cli("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"rexec 0.1.0\n", b"")


def test_help_reaches_a_pipe_whole():
    r = run_cli("run", "--help")
    assert r.returncode == 0
    assert b"--identity" in r.stdout  # the last option: the whole text was flushed
    assert r.stdout.rstrip().endswith(b"Show this message and exit.")  # the last line too


def test_usage_error_exits_2_with_its_message():
    r = run_cli("run")
    assert r.returncode == 2
    assert b"Missing argument" in r.stderr


# --- many at once -------------------------------------------------------------------------------


def test_16_concurrent_clients(server, client_token_file, tmp_path):
    src = random_file(tmp_path / "data", 1_000_000)
    expected = src.read_bytes()

    def one(n: int) -> tuple[int, bytes]:
        r = rexec(server, client_token_file, f"printf '%s:' {n}; cat {src}")
        return r.returncode, r.stdout

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for n, (code, out) in enumerate(results):
        assert code == 0
        assert out == f"{n}:".encode() + expected


def test_a_terminal_stdin_is_not_forwarded(server, client_token_file):
    import pty

    leader, follower = pty.openpty()
    try:
        r = rexec(server, client_token_file, "cat; echo done", stdin=follower, timeout=30)
    finally:
        os.close(leader)
        os.close(follower)
    assert r.returncode == 0
    assert r.stdout == b"done\n"
