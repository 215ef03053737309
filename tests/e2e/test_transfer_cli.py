"""The real ``rexec put`` and ``rexec get`` against a real server on an ephemeral loopback port.

The server and the client run on this machine as the same user, so a "remote" path is a path
under the test's tmp_path, checked directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.helpers import run_cli


def rexec(server, token_file, verb, *args, **kwargs):
    kwargs.setdefault("timeout", 60.0)
    return run_cli(verb, "--token-file", str(token_file), *args, **kwargs)


def put(server, token_file, *args):
    return rexec(server, token_file, "put", "--json", *args[:-2], server.address, *args[-2:])


def get(server, token_file, *args):
    return rexec(server, token_file, "get", "--json", *args[:-2], server.address, *args[-2:])


def document(proc):
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""  # not a terminal: no progress line
    return json.loads(proc.stdout)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    return local, remote


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 123], ids=["0B", "1B", "3MB"])
def test_put_then_get_byte_for_byte(server, client_token_file, dirs, size):
    local, remote = dirs
    data = os.urandom(size)
    src = local / "src.bin"
    src.write_bytes(data)
    doc = document(put(server, client_token_file, str(src), str(remote / "dst.bin")))
    assert doc == {"target": server.address, "local": str(src), "remote": str(remote / "dst.bin"),
                   "bytes": size, "sha256": sha256(data), "changed": True,
                   "duration": doc["duration"], "error": None}
    assert (remote / "dst.bin").read_bytes() == data
    back = local / "back.bin"
    doc = document(get(server, client_token_file, str(remote / "dst.bin"), str(back)))
    assert (doc["local"], doc["bytes"], doc["sha256"]) == (str(back), size, sha256(data))
    assert back.read_bytes() == data
    assert sorted(p.name for p in local.iterdir()) == ["back.bin", "src.bin"]  # no temp left
    assert [p.name for p in remote.iterdir()] == ["dst.bin"]


def test_a_second_put_is_unchanged_and_no_skip_rewrites(server, client_token_file, dirs):
    local, remote = dirs
    src = local / "conf"
    src.write_bytes(b"setting = 1\n")
    dst = remote / "conf"
    assert document(put(server, client_token_file, str(src), str(dst)))["changed"] is True
    inode = dst.stat().st_ino
    assert document(put(server, client_token_file, str(src), str(dst)))["changed"] is False
    assert dst.stat().st_ino == inode  # not rewritten
    doc = document(put(server, client_token_file, "--no-skip", str(src), str(dst)))
    assert doc["changed"] is True
    assert dst.stat().st_ino != inode  # a new file renamed over it
    assert dst.read_bytes() == b"setting = 1\n"


def test_mode_is_applied(server, client_token_file, dirs):
    local, remote = dirs
    src = local / "secret"
    src.write_bytes(b"s3cr3t")
    src.chmod(0o644)
    document(put(server, client_token_file, "--mode", "0640", str(src), str(remote / "secret")))
    assert stat.S_IMODE((remote / "secret").stat().st_mode) == 0o640


def test_preserve_keeps_mode_and_mtime_both_ways(server, client_token_file, dirs):
    local, remote = dirs
    src = local / "tool.sh"
    src.write_bytes(b"#!/bin/sh\necho hi\n")
    src.chmod(0o751)
    os.utime(src, ns=(1_500_000_000_000_000_000, 1_600_000_000_123_456_789))
    document(put(server, client_token_file, "-p", str(src), str(remote / "tool.sh")))
    st = (remote / "tool.sh").stat()
    assert stat.S_IMODE(st.st_mode) == 0o751
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    back = local / "back.sh"
    document(get(server, client_token_file, "-p", str(remote / "tool.sh"), str(back)))
    st = back.stat()
    assert stat.S_IMODE(st.st_mode) == 0o751
    assert st.st_mtime_ns == 1_600_000_000_123_456_789


def test_get_into_a_directory_keeps_the_remote_name(server, client_token_file, dirs):
    local, remote = dirs
    (remote / "report.csv").write_bytes(b"a,b\n1,2\n")
    doc = document(get(server, client_token_file, str(remote / "report.csv"), str(local)))
    assert doc["local"] == str(local / "report.csv")
    assert (local / "report.csv").read_bytes() == b"a,b\n1,2\n"


def test_put_to_a_directory_slash_uses_the_local_name(server, client_token_file, dirs):
    local, remote = dirs
    src = local / "app.tar"
    src.write_bytes(b"tar" * 1000)
    doc = document(put(server, client_token_file, str(src), f"{remote}/"))
    assert doc["remote"] == str(remote / "app.tar")
    assert (remote / "app.tar").read_bytes() == b"tar" * 1000


def test_get_of_a_missing_file_exits_255_naming_it(server, client_token_file, dirs):
    local, remote = dirs
    missing = remote / "no-such-file"
    keep = local / "keep"
    keep.write_bytes(b"mine")
    proc = rexec(server, client_token_file, "get", server.address, str(missing), str(keep))
    assert proc.returncode == 255
    line = proc.stderr.decode()
    assert line.startswith("rexec: ") and line.count("\n") == 1
    assert str(missing) in line
    assert keep.read_bytes() == b"mine"
    assert [p.name for p in local.iterdir()] == ["keep"]


def test_put_of_a_missing_local_file_exits_255_naming_it(server, client_token_file, dirs):
    local, remote = dirs
    proc = rexec(server, client_token_file, "put", server.address, str(local / "nope"),
                 str(remote / "x"))
    assert proc.returncode == 255
    assert str(local / "nope") in proc.stderr.decode()
    assert list(remote.iterdir()) == []


def test_put_into_a_missing_directory_exits_255_and_leaves_nothing(server, client_token_file,
                                                                   dirs):
    local, remote = dirs
    src = local / "f"
    src.write_bytes(b"x")
    proc = rexec(server, client_token_file, "put", server.address, str(src),
                 str(remote / "missing" / "f"))
    assert proc.returncode == 255
    assert proc.stderr.startswith(b"rexec: ") and proc.stderr.count(b"\n") == 1
    assert list(remote.iterdir()) == []


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _cli_peak_rss_kib(*args: str) -> tuple[int, int]:
    """Run the CLI; its exit status and its peak RSS (KiB), VmHWM sampled every 10 ms.

    Not wait4's ru_maxrss: a child of this large process is charged the parent's RSS at fork.
    """
    import contextlib
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT

    proc = subprocess.Popen([sys.executable, str(ROOT / "client.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # it just ended
            peak = max(peak, _peak_rss_kib(proc.pid))
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(), peak


def test_200_mb_up_and_down_with_memory_flat_on_both_sides(server, client_token_file, dirs):
    local, remote = dirs
    src = local / "big.bin"
    digest = hashlib.sha256()
    with src.open("wb") as f:
        for i in range(200):
            block = hashlib.sha256(b"%d" % i).digest() * 32768  # 1 MiB, not all the same
            f.write(block)
            digest.update(block)
    server_before = _peak_rss_kib(server.proc.pid)
    up = document(put(server, client_token_file, str(src), str(remote / "big.bin")))
    assert up["sha256"] == digest.hexdigest() and up["bytes"] == 200 * 1024 * 1024
    down = document(get(server, client_token_file, str(remote / "big.bin"),
                        str(local / "back.bin")))
    assert down["sha256"] == digest.hexdigest()
    assert (local / "back.bin").stat().st_size == 200 * 1024 * 1024
    # the server holds at most one upload window (8 MiB) and a read buffer per transfer
    assert _peak_rss_kib(server.proc.pid) - server_before < 40 * 1024
    # the CLI's own peak, a put and a get of the same 200 MB again: far below the file's size
    token = ["--token-file", str(client_token_file)]
    for argv in (["put", "--no-skip", *token, server.address, str(src), str(remote / "big.bin")],
                 ["get", *token, server.address, str(remote / "big.bin"),
                  str(local / "again.bin")]):
        status, peak = _cli_peak_rss_kib(*argv)
        assert status == 0 and peak < 80 * 1024, (argv[0], peak)
    assert (local / "again.bin").stat().st_size == 200 * 1024 * 1024


def test_a_full_disk_is_named_and_leaves_the_old_file(server, client_token_file, tmp_path):
    import subprocess

    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (disk / "app.conf").write_bytes(b"old\n")
        src = tmp_path / "too-big"
        src.write_bytes(os.urandom(2 * 1024 * 1024))
        proc = rexec(server, client_token_file, "put", server.address, str(src),
                     str(disk / "app.conf"))
        assert proc.returncode == 255
        assert b"no space" in proc.stderr and b"app.conf" in proc.stderr
        assert (disk / "app.conf").read_bytes() == b"old\n"
        assert sorted(p.name for p in disk.iterdir()) == ["app.conf"]  # no temporary left
    finally:
        subprocess.run(["umount", str(disk)], check=False)
