"""Fleet ``rexec put`` and ``rexec get`` (and ``Group.put``/``Group.get``) against ten real
``rexec-server`` processes, one per loopback "host" (127.0.0.2-11, named web01-web10 by an
inventory written for the test), and ``down``, an address nothing listens on.

Each server runs in a directory of its own, so the one absolute path ``/proc/self/cwd/NAME``
names a different file on every host, as the same path does on different machines: a put's
destinations can be checked one by one, and a get's sources differ from host to host.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from rexec.client.options import ConnectOptions
from rexec.fleet.group import Group
from rexec.fleet.target import Target
from tests.e2e.test_fleet_cli import run_on_pty
from tests.helpers import (
    ROOT,
    TOKEN,
    ServerProcess,
    reap,
    run_cli,
    start_server,
    wait_until,
    write_token,
)

HOSTS = 10
WEB = [f"web{n:02d}" for n in range(1, HOSTS + 1)]
HERE = "/proc/self/cwd"  # each server's own directory, as seen by that server


@dataclass
class Fleet:
    servers: list[ServerProcess]
    disks: dict[str, Path]  # host -> the directory its server runs in
    inventory: Path
    down: str  # the unreachable host's address

    def cli(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        """``rexec VERB --inventory FILE ARGS...``, as a user runs it."""
        verb, *rest = args
        return run_cli(verb, "--inventory", str(self.inventory), *rest,
                       **kwargs)  # type: ignore[arg-type]

    def argv(self, *args: str) -> list[str]:
        verb, *rest = args
        return [sys.executable, str(ROOT / "client.py"), verb, "--inventory",
                str(self.inventory), *rest]

    def targets(self, *hosts: str) -> list[Target]:
        """Targets for the Python API (the same servers as the inventory's hosts)."""
        by_host = dict(zip(WEB, self.servers, strict=True))
        return [Target(h, ConnectOptions.resolve(by_host[h].address, token=TOKEN))
                if h != "down" else Target(h, ConnectOptions.resolve(self.down, token=TOKEN))
                for h in hosts]


def closed_address(host: str) -> str:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return f"{host}:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleetxfer")
    disks = {host: folder / host for host in WEB}

    def start(n: int) -> ServerProcess:
        home = folder / f"server{n}"
        home.mkdir()
        disks[WEB[n]].mkdir()
        return start_server(home, "--host", f"127.0.0.{2 + n}", env={"REXEC_HOME": str(home)},
                            cwd=disks[WEB[n]])

    with ThreadPoolExecutor(HOSTS) as pool:  # ten start-ups at once, not one after another
        futures = [pool.submit(start, n) for n in range(HOSTS)]
        started = [f.exception() or f.result() for f in futures]
    servers = [s for s in started if isinstance(s, ServerProcess)]
    try:
        assert len(servers) == HOSTS, started
        write_token(folder / "fleet.token")
        down = closed_address("127.0.0.40")
        hosts = "".join(f'[hosts.{name}]\naddress = "{s.host}"\nport = {s.port}\n\n'
                        for name, s in zip(WEB, servers, strict=True))
        inventory = folder / "inventory.toml"
        inventory.write_text(f"""
[defaults]
token_file = "fleet.token"
connect_timeout = 5.0

{hosts}
[hosts.down]
address = "{down.rpartition(':')[0]}"
port = {down.rpartition(':')[2]}

[groups.web]
hosts = ["web[01-{HOSTS}]"]
""")
        yield Fleet(servers, disks, inventory, down)
    finally:
        stopped = [(server.stop(), server) for server in servers]
        for code, server in stopped:
            assert code == 0, server.log()[-3000:]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lines(stdout: bytes) -> dict[str, dict[str, object]]:
    """--json's lines by host, each a whole JSON object, every host once."""
    docs = [json.loads(line) for line in stdout.splitlines()]
    by = {doc["host"]: doc for doc in docs}
    assert len(by) == len(docs), docs
    return by


def temp_files(fleet: Fleet) -> list[Path]:
    return [p for disk in fleet.disks.values() for p in disk.iterdir()
            if ".rexec-tmp-" in p.name]


@pytest.fixture
def clean(fleet: Fleet) -> Iterator[None]:
    """Every host's directory empty before and after a test."""
    def empty() -> None:
        for disk in fleet.disks.values():
            for path in disk.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    empty()
    yield
    assert not temp_files(fleet)
    empty()


def source(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "app.bin"
    path.write_bytes(data)
    return path, data


# --- put ------------------------------------------------------------------------------------


def test_a_put_reaches_every_host_whole(fleet: Fleet, clean: None, tmp_path: Path) -> None:
    src, data = source(tmp_path, 3 * 1024 * 1024 + 11)  # several chunks and windows
    r = fleet.cli("put", "--json", "@web", str(src), f"{HERE}/dst.bin")
    assert r.returncode == 0, r.stderr
    by = lines(r.stdout)
    assert sorted(by) == WEB
    for host, doc in by.items():
        assert doc == {"host": host, "address": doc["address"], "status": "ok",
                       "local": str(src), "remote": f"{HERE}/dst.bin", "bytes": len(data),
                       "sha256": sha256(data), "changed": True, "duration": doc["duration"],
                       "error": None}
        assert sha256((fleet.disks[host] / "dst.bin").read_bytes()) == sha256(data), host
    assert b"rexec: 10 hosts: 10 ok\n" in r.stderr


def test_a_second_put_is_unchanged_everywhere_and_nothing_is_sent(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    src, data = source(tmp_path, 1024 * 1024)
    assert fleet.cli("put", "-q", "@web", str(src), f"{HERE}/dst.bin").returncode == 0
    before = {h: os.stat(d / "dst.bin") for h, d in fleet.disks.items()}
    r = fleet.cli("put", "--json", "@web", str(src), f"{HERE}/dst.bin")
    assert r.returncode == 0, r.stderr
    by = lines(r.stdout)
    assert {h: (doc["status"], doc["changed"], doc["sha256"]) for h, doc in by.items()} == {
        h: ("ok", False, sha256(data)) for h in WEB}
    for host, stat_before in before.items():  # not rewritten: the same inode, the same mtime
        after = os.stat(fleet.disks[host] / "dst.bin")
        assert (after.st_ino, after.st_mtime_ns) == (stat_before.st_ino, stat_before.st_mtime_ns)
    assert "unchanged (the same file was there already): web[01-10]" in r.stderr.decode()

    sent: list[tuple[str, int, int]] = []  # the API says when bytes are sent: none are
    result = asyncio.run(Group(fleet.targets(*WEB)).put(
        src, f"{HERE}/dst.bin", on_progress=lambda *a: sent.append(a)))
    assert result.ok and [r.changed for r in result.values()] == [False] * HOSTS
    assert sent == []


def test_an_unreachable_host_exits_3_and_the_others_are_done(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    src, data = source(tmp_path, 200_000)
    r = fleet.cli("put", "--json", "@web,down", str(src), f"{HERE}/dst.bin")
    assert r.returncode == 3, r.stderr
    by = lines(r.stdout)
    assert sorted(by) == sorted([*WEB, "down"])
    assert by["down"]["status"] == "unreachable" and by["down"]["bytes"] is None
    assert "Connection refused" in str(by["down"]["error"])
    for host in WEB:
        assert by[host]["status"] == "ok"
        assert (fleet.disks[host] / "dst.bin").read_bytes() == data
    text = r.stderr.decode()
    assert "rexec: 11 hosts: 10 ok, 1 unreachable\n" in text
    assert re.search(r"rexec: unreachable: down \(cannot connect to .*refused\)", text), text


def test_a_put_refused_on_some_hosts_exits_1_naming_them(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    src, data = source(tmp_path, 5000)
    for host in WEB[:6]:
        (fleet.disks[host] / "sub").mkdir()
    try:
        r = fleet.cli("put", "--json", "@web", str(src), f"{HERE}/sub/dst.bin")
        assert r.returncode == 1, r.stderr
        by = lines(r.stdout)
        assert {h: doc["status"] for h, doc in by.items()} == {
            **{h: "ok" for h in WEB[:6]}, **{h: "failed" for h in WEB[6:]}}
        assert all("sub" in str(by[h]["error"]) for h in WEB[6:])
        assert "rexec: failed: web[07-10]" in r.stderr.decode()
        assert all((fleet.disks[h] / "sub" / "dst.bin").read_bytes() == data for h in WEB[:6])
    finally:
        for host in WEB[:6]:
            for path in (fleet.disks[host] / "sub").iterdir():
                path.unlink()
            (fleet.disks[host] / "sub").rmdir()


def test_a_pattern_of_one_host_is_fleet_mode(fleet: Fleet, clean: None, tmp_path: Path) -> None:
    src, _ = source(tmp_path, 10)
    r = fleet.cli("put", "--json", "web[01]", str(src), f"{HERE}/dst.bin")
    assert r.returncode == 0, r.stderr
    assert list(lines(r.stdout)) == ["web01"]  # a fleet line ("host"), not one document
    r = fleet.cli("put", "--json", "web01", str(src), f"{HERE}/dst.bin")  # one host
    assert r.returncode == 0 and json.loads(r.stdout)["target"] == "web01"


def test_fewer_forks_than_hosts_still_reach_every_host(fleet: Fleet, clean: None,
                                                      tmp_path: Path) -> None:
    src, data = source(tmp_path, 600_000)
    r = fleet.cli("put", "-f", "3", "@web", str(src), f"{HERE}/dst.bin")
    assert r.returncode == 0, r.stderr
    assert all((d / "dst.bin").read_bytes() == data for d in fleet.disks.values())


def test_ctrl_c_cancels_every_transfer_and_still_prints_the_summary(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    src, _ = source(tmp_path, 96 * 1024 * 1024)  # long enough to be caught mid-way
    proc = subprocess.Popen(fleet.argv("put", "-f", "1", "web[01-03]", str(src),
                                       f"{HERE}/dst.bin"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: temp_files(fleet), timeout=30)  # an upload under way
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        reap(proc)
    assert proc.returncode == 130, err
    text = err.decode()
    assert re.search(r"rexec: 3 hosts: .*cancelled", text), text
    assert "rexec: cancelled: " in text
    assert wait_until(lambda: not temp_files(fleet), timeout=10), temp_files(fleet)
    assert not (fleet.disks["web03"] / "dst.bin").exists()  # never begun


def test_the_bar_counts_hosts_and_bytes_on_a_terminal_and_is_gone_after(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    src, _ = source(tmp_path, 48 * 1024 * 1024)
    code, _, screen = run_on_pty(fleet.argv("put", "@web", str(src), f"{HERE}/dst.bin"))
    assert code == 0, screen
    text = screen.decode("utf-8", "replace")
    assert re.search(r"\d+/10", text), text
    assert re.search(r"\d+(\.\d)? MiB / \d+(\.\d)? MiB", text), text  # the bytes moved
    last_bar = text.rfind("MiB")
    after = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text[last_bar:]).splitlines()[1:]
    assert next(line for line in after if line.strip()) == "rexec: 10 hosts: 10 ok"
    r = fleet.cli("put", "@web", str(src), f"{HERE}/dst.bin")  # off a terminal: no bar
    assert b"\x1b[" not in r.stderr and b"MiB" not in r.stderr


# --- get ------------------------------------------------------------------------------------


def test_a_get_keeps_each_host_s_file_apart(fleet: Fleet, clean: None, tmp_path: Path) -> None:
    contents = {}
    for n, (host, disk) in enumerate(fleet.disks.items()):
        contents[host] = f"{host}\n".encode() * (1000 * n + 1) + os.urandom(n * 70_000)
        (disk / "own.log").write_bytes(contents[host])
    local = tmp_path / "got"
    local.mkdir()
    r = fleet.cli("get", "--json", "@web", f"{HERE}/own.log", str(local))
    assert r.returncode == 0, r.stderr
    by = lines(r.stdout)
    for host, data in contents.items():
        path = local / host / "own.log"
        assert path.read_bytes() == data, host
        assert by[host]["local"] == str(path) and by[host]["sha256"] == sha256(data)
        assert by[host]["remote"] == f"{HERE}/own.log" and by[host]["status"] == "ok"
    assert sorted(p.name for p in local.iterdir()) == WEB
    assert len({sha256(d) for d in contents.values()}) == HOSTS  # every host's file differs


def test_a_get_with_an_unreachable_host_exits_3_and_makes_no_directory_for_it(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    for host, disk in fleet.disks.items():
        (disk / "own.log").write_text(host)
    (fleet.disks["web04"] / "own.log").unlink()  # and one host lacks the file
    local = tmp_path / "got"
    local.mkdir()
    r = fleet.cli("get", "--json", "@web,down", f"{HERE}/own.log", str(local))
    assert r.returncode == 3, r.stderr
    by = lines(r.stdout)
    assert by["down"]["status"] == "unreachable" and by["web04"]["status"] == "failed"
    assert by["web04"]["local"] == str(local / "web04" / "own.log")
    assert sorted(p.name for p in local.iterdir()) == sorted(set(WEB) - {"web04"})
    assert all((local / h / "own.log").read_text() == h for h in WEB if h != "web04")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_get_into_a_local_that_is_not_a_directory_exits_2(
        fleet: Fleet, tmp_path: Path, kind: str) -> None:
    local = tmp_path / "out"
    if kind == "file":
        local.write_text("keep me")
    r = fleet.cli("get", "@web", f"{HERE}/own.log", str(local))
    assert r.returncode == 2
    what = "is not a directory" if kind == "file" else "does not exist"
    assert r.stderr.decode() == (
        f"rexec: LOCAL: a fleet get writes each host's file to LOCAL/HOST/own.log, so LOCAL"
        f" must be an existing directory, and {local} {what}\n")
    assert r.stdout == b""
    assert (local.read_text() == "keep me") if kind == "file" else not local.exists()


def test_group_get_returns_each_host_s_transfer_result(fleet: Fleet, clean: None,
                                                       tmp_path: Path) -> None:
    for host, disk in fleet.disks.items():
        (disk / "own.log").write_text(host * 3)
    result = asyncio.run(Group(fleet.targets(*WEB[:4], "down")).get(f"{HERE}/own.log",
                                                                    tmp_path))
    assert result.statuses == {**{h: "ok" for h in WEB[:4]}, "down": "unreachable"}
    assert result.exit_status == 3 and list(result) == WEB[:4]
    for host in WEB[:4]:
        assert result[host].local == str(tmp_path / host / "own.log")
        assert result[host].bytes == len(host) * 3 and result[host].changed
    assert not (tmp_path / "down").exists()


def test_usage_errors_exit_2_before_any_host_is_contacted(fleet: Fleet, tmp_path: Path) -> None:
    src, _ = source(tmp_path, 10)
    started = time.monotonic()
    cases = [
        (["put", "-r", "@web", str(src), "/tmp/x"], "is not a directory (-r puts a directory)"),
        (["put", "-r", "--mode", "0600", "@web", str(tmp_path), "/tmp/x"],
         "--mode applies to one file"),
        (["get", "-r", "@web", "/tmp/x", str(src)], "LOCAL: a fleet get writes each host's tree"),
        (["put", "@web", str(tmp_path / "missing"), "/tmp/x"], "missing: No such file"),
        (["put", "@web", str(src), "relative"], "REMOTE: the remote path must be absolute"),
        (["put", "--timeout", "0", "@web", str(src), "/tmp/x"], "--timeout: the timeout"),
        (["put", "-f", "0", "@web", str(src), "/tmp/x"], "--forks: must be at least 1"),
        (["get", "@nosuchgroup", "/tmp/x", str(tmp_path)], "nosuchgroup"),
    ]
    for args, message in cases:
        r = fleet.cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr.decode() and r.stderr.count(b"\n") == 1, (args, r.stderr)
    assert time.monotonic() - started < 60


# --- directories (-r) -------------------------------------------------------------------------


def tree_of(root: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = (f"-> {os.readlink(path)}" if path.is_symlink() else
                      "dir" if path.is_dir() else path.read_bytes())
    return found


def test_put_r_sends_the_tree_to_every_host_and_again_changes_nothing(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    src = tmp_path / "site"
    (src / "css").mkdir(parents=True)
    (src / "index.html").write_bytes(b"<h1>hello</h1>\n")
    (src / "css" / "main.css").write_bytes(os.urandom(300_000))
    (src / "current").symlink_to("css")
    r = fleet.cli("put", "-r", "--json", "@web", str(src), f"{HERE}/www")
    assert r.returncode == 0, r.stderr
    by = lines(r.stdout)
    assert sorted(by) == WEB
    for host, doc in by.items():
        assert (doc["status"], doc["files"], doc["directories"], doc["links"]) == (
            "ok", 2, 1, 1), doc
        assert doc["errors"] == [] and doc["remote"] == f"{HERE}/www"
        assert tree_of(fleet.disks[host] / "www") == tree_of(src), host
    again = fleet.cli("put", "-r", "--json", "@web", str(src), f"{HERE}/www")
    assert again.returncode == 0, again.stderr
    assert {doc["changed"] for doc in lines(again.stdout).values()} == {0}
    assert "unchanged (the same tree was there already): web[01-10]" in again.stderr.decode()


def test_get_r_keeps_each_host_s_tree_apart(fleet: Fleet, clean: None, tmp_path: Path) -> None:
    for host, disk in fleet.disks.items():
        (disk / "logs" / "old").mkdir(parents=True)
        (disk / "logs" / "app.log").write_bytes(f"{host} log\n".encode())
        (disk / "logs" / "old" / "app.log.1").write_bytes(os.urandom(1000))
    local = tmp_path / "got"
    local.mkdir()
    r = fleet.cli("get", "-r", "--json", "@web", f"{HERE}/logs", str(local))
    assert r.returncode == 0, r.stderr
    by = lines(r.stdout)
    for host, disk in fleet.disks.items():
        assert tree_of(local / host / "logs") == tree_of(disk / "logs"), host
        assert by[host]["local"] == str(local / host / "logs") and by[host]["files"] == 2
    assert (local / "web03" / "logs" / "app.log").read_bytes() == b"web03 log\n"


def test_put_r_with_an_entry_refused_is_a_failed_host(fleet: Fleet, clean: None,
                                                     tmp_path: Path) -> None:
    src = tmp_path / "site"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"fine\n")
    (src / "escape").symlink_to("/etc")
    r = fleet.cli("put", "-r", "--json", "web[01-02]", str(src), f"{HERE}/www")
    assert r.returncode == 1, r.stderr
    for doc in lines(r.stdout).values():
        assert doc["status"] == "failed" and doc["files"] == 1
        assert [e["path"] for e in doc["errors"]] == ["escape"]
        assert doc["error"].startswith("1 entry failed: refused: link 'escape'")
    assert (fleet.disks["web01"] / "www" / "ok.txt").read_bytes() == b"fine\n"
