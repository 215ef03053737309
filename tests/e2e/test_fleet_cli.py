"""The real ``rexec run PATTERN`` and ``rexec batch`` CLI against real ``rexec-server``
processes: 22 loopback "hosts" (127.0.0.2-23) served by three server processes with several
``--host`` each, all on one port, named ``web[01-22]`` by an inventory written for the test;
``down`` points at an address nothing listens on and ``badtoken`` has the wrong token.

Each server process sets ``$SERVER`` (s0 for web01-08, s1 for web09-16, s2 for web17-22) for
its commands, so a command can fail or print differently on a known set of hosts; where each
host must tell itself apart, it claims a number (``mkdir`` of the first free ``claim.N``) and
the test checks that the hosts' prefixes and their numbers match one to one."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    ServerProcess,
    pids_in_group,
    port_free_on,
    reap,
    run_cli,
    start_server,
    wait_until,
    write_token,
)

HOSTS = 22
ADDRESSES = [f"127.0.0.{2 + i}" for i in range(HOSTS)]
DOWN = "127.0.0.40"  # nothing listens there
SPLITS = (0, 8, 16, HOSTS)  # three server processes: 8, 8 and 6 addresses
WEB = [f"web{n:02d}" for n in range(1, HOSTS + 1)]


@dataclass
class Fleet:
    port: int
    servers: list[ServerProcess]
    inventory: Path
    folder: Path

    def cli(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        """``rexec COMMAND --inventory FILE ARGS...``, as a user runs it."""
        command, *rest = args
        return run_cli(command, "--inventory", str(self.inventory), *rest,
                       **kwargs)  # type: ignore[arg-type]

    def argv(self, *args: str) -> list[str]:
        command, *rest = args
        return [sys.executable, str(ROOT / "client.py"), command, "--inventory",
                str(self.inventory), *rest]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    port = port_free_on([*ADDRESSES, DOWN])
    servers: list[ServerProcess] = []
    try:
        for n, (start, end) in enumerate(itertools.pairwise(SPLITS)):
            tmp = folder / f"server{n}"
            tmp.mkdir()
            hosts = [arg for host in ADDRESSES[start:end] for arg in ("--host", host)]
            config = tmp / "server.toml"  # $SERVER tells a command which process runs it
            config.write_text(f'[server]\nenv = {{ SERVER = "s{n}" }}\n')
            servers.append(start_server(tmp, *hosts, "--port", str(port), "--config", str(config),
                                        env={"REXEC_HOME": str(tmp)}, listeners=end - start))
        assert [a for s in servers for a in s.addresses] == [f"{h}:{port}" for h in ADDRESSES]
        write_token(folder / "fleet.token")
        write_token(folder / "wrong.token", "not-the-right-token-0123456789")
        inventory = folder / "inventory.toml"
        inventory.write_text(f"""
[defaults]
port = {port}
token_file = "fleet.token"
connect_timeout = 5.0

[hosts."web[01-{HOSTS}]"]
address = "127.0.0.[2-{HOSTS + 1}]"

[hosts.down]
address = "{DOWN}"

[hosts.badtoken]
address = "{ADDRESSES[0]}"
token_file = "wrong.token"

[groups.web]
hosts = ["web[01-{HOSTS}]"]

[groups.ten]
hosts = ["web[01-10]"]

[groups.broken]
hosts = ["web[01-20]", "down", "badtoken"]
""")
        yield Fleet(port, servers, inventory, folder)
    finally:
        stopped = [(server.stop(), server) for server in servers]  # every one, then check
        for code, server in stopped:
            assert code == 0, server.log()[-3000:]


def prefixed(stdout: bytes) -> dict[str, list[bytes]]:
    """Each host's lines (prefix removed, newline kept), asserting every line has a prefix."""
    by: dict[str, list[bytes]] = {}
    for line in stdout.splitlines(keepends=True):
        host, sep, rest = line.partition(b": ")
        assert sep and re.fullmatch(rb"web\d\d|down|badtoken", host), line[:100]
        by.setdefault(host.decode(), []).append(rest)
    return by


def summary(stderr: bytes) -> str:
    return "\n".join(line for line in stderr.decode().splitlines() if line.startswith(
        ("rexec: ", "  ")))



S0, S1, S2 = WEB[:8], WEB[8:16], WEB[16:]
FAIL_ON_S0 = 'test "$SERVER" != s0'


def claim(folder: Path) -> str:
    """Shell: set $id to a number no other host of this run has."""
    return (f"id=1; while ! mkdir {folder}/claim.$id 2>/dev/null; do id=$((id+1)); done")


def test_every_host_ok_exits_0_with_prefixed_lines(fleet: Fleet) -> None:
    r = fleet.cli("run", "@web", "--", 'echo "hello from $SERVER"; echo warn >&2')
    assert r.returncode == 0, r.stderr
    by = prefixed(r.stdout)
    assert sorted(by) == WEB
    expected = {host: [f"hello from s{0 if host in S0 else 1 if host in S1 else 2}\n".encode()]
                for host in WEB}
    assert by == expected
    warns = sorted(line for line in r.stderr.splitlines() if not line.startswith(b"rexec: "))
    assert warns == sorted(f"{host}: warn".encode() for host in WEB)
    assert f"rexec: {HOSTS} hosts: {HOSTS} ok" in r.stderr.decode()


def test_the_down_host_and_the_wrong_token_are_unreachable_the_rest_succeed(
        fleet: Fleet) -> None:
    r = fleet.cli("run", "@broken", "--", "echo ran")
    assert r.returncode == 3, r.stderr
    by = prefixed(r.stdout)
    assert by == {host: [b"ran\n"] for host in WEB[:20]}
    text = summary(r.stderr)
    assert "rexec: 22 hosts: 20 ok, 2 unreachable" in text, text
    line = next(line for line in text.splitlines() if line.startswith("rexec: unreachable: "))
    assert set(line.split(": ")[2].split(" ")[0].split(",")) == {"badtoken", "down"}, line
    # two reasons: each host's on a line of its own
    assert re.search(r"^rexec:   down: .*refused", text, re.M | re.I), text
    assert re.search(r"^rexec:   badtoken: .*token", text, re.M | re.I), text
    # a failed command too: unreachable (3) takes precedence over failed (1)
    r = fleet.cli("run", "@broken", "--", FAIL_ON_S0)
    assert r.returncode == 3, r.stderr
    assert "rexec: failed: web[01-08] (exit 1)" in summary(r.stderr)


def test_a_command_failing_on_some_hosts_exits_1_naming_them_folded(fleet: Fleet) -> None:
    r = fleet.cli("run", "@web", "--", f'{FAIL_ON_S0} || {{ echo no >&2; exit 4; }}')
    assert r.returncode == 1, r.stderr
    text = summary(r.stderr)
    assert "rexec: 22 hosts: 14 ok, 8 failed" in text, text
    assert "rexec: failed: web[01-08] (exit 4)" in text, text
    assert "unreachable" not in text
    # the hosts of two servers, with two exit statuses: one folded set, each host's status
    r = fleet.cli("run", "web[01-04,09-10,17]", "--",
                  'case $SERVER in s0) exit 5;; s1) exit 6;; esac')
    assert r.returncode == 1, r.stderr
    text = summary(r.stderr)
    assert "rexec: failed: web[01-04,09-10]" in text, text
    assert "rexec:   web01: exit 5" in text and "rexec:   web10: exit 6" in text, text


def test_summary_table_and_quiet(fleet: Fleet) -> None:
    r = fleet.cli("run", "--summary", "web[01-03],down", "--", "echo hi; test $SERVER = s9")
    assert r.returncode == 3, r.stderr
    table = [line.split() for line in r.stderr.decode().splitlines()
             if not line.startswith("rexec: ")]
    assert table[0] == ["HOST", "STATUS", "EXIT", "SECONDS", "STDOUT", "STDERR"]
    rows = {row[0]: row for row in table[1:]}
    assert sorted(rows) == ["down", "web01", "web02", "web03"]
    assert rows["web01"][1:3] == ["failed", "1"] and rows["web01"][4:] == ["3", "0"]
    assert rows["down"][1] == "unreachable"
    # -q: only the failures, no counts, no slowest hosts
    r = fleet.cli("run", "-q", "web[01-03],down", "--", "test $SERVER = s9")
    assert r.returncode == 3, r.stderr
    lines = r.stderr.decode().splitlines()
    assert lines[0] == "rexec: failed: web[01-03] (exit 1)", lines
    assert lines[1].startswith("rexec: unreachable: down (") and len(lines) == 2, lines


# --- line atomicity -------------------------------------------------------------------------

STRESS = r"""
import os, random, sys, time
folder = sys.argv[1]
n = 1
while True:
    try:
        os.mkdir(f"{folder}/claim.{n}")
        break
    except FileExistsError:
        n += 1
rng = random.Random(n)
for k, size in enumerate(SIZES):
    head = f"<host {n} line {k}>".encode()
    line = head + bytes([97 + (n + k) % 26]) * (size - len(head))
    if k < len(SIZES) - 1:
        line += b"\n"
    view = memoryview(line)
    while view:
        piece = rng.randint(1, 9000)
        os.write(1, view[:piece])
        view = view[piece:]
        if rng.random() < 0.3:
            time.sleep(0.002)
"""
SIZES = [10 * 1024, 150 * 1024, 100, 70 * 1024, 200 * 1024 + 7, 40 * 1024, 3000]


def stress_lines(n: int) -> list[bytes]:
    lines = []
    for k, size in enumerate(SIZES):
        head = f"<host {n} line {k}>".encode()
        lines.append(head + bytes([97 + (n + k) % 26]) * (size - len(head)))
    return lines


def test_lines_stay_whole_under_many_hosts_writing_long_lines_in_pieces(
        fleet: Fleet, tmp_path: Path) -> None:
    script = tmp_path / "stress.py"
    script.write_text(STRESS.replace("SIZES", repr(SIZES)))
    r = fleet.cli("run", "@web", "--", f"python3 {script} {tmp_path}", timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    cut = 64 * 1024
    assert r.stdout.endswith(b"\n")
    seen: dict[str, int] = {}
    for host, pieces in prefixed(r.stdout).items():
        # every printed line is one prefix and at most 64 KiB of one host's line
        assert all(len(piece) <= cut + 1 and piece.endswith(b"\n") for piece in pieces)
        # put the cut pieces back together: a piece of exactly 64 KiB continues on the next
        whole, current = [], b""
        for piece in pieces:
            current += piece[:-1]
            if len(piece) - 1 != cut:
                whole.append(current)
                current = b""
        assert current == b""
        n = int(re.match(rb"<host (\d+) line 0>", whole[0]).group(1))  # type: ignore[union-attr]
        assert whole == stress_lines(n), host
        # and cut where they should be: 150 KiB is 64 + 64 + 22
        assert [len(p) - 1 for p in pieces[1:4]] == [cut, cut, 150 * 1024 - 2 * cut]
        seen[host] = n
    assert sorted(seen) == WEB
    assert sorted(seen.values()) == list(range(1, HOSTS + 1))  # one number each


def test_a_last_line_without_newline_is_printed_with_one(fleet: Fleet) -> None:
    r = fleet.cli("run", "web[01-03]", "--", "printf 'first\\nno newline'; printf 'err' >&2")
    assert r.returncode == 0, r.stderr
    assert prefixed(r.stdout) == {h: [b"first\n", b"no newline\n"] for h in WEB[:3]}
    assert sorted(line for line in r.stderr.splitlines(keepends=True)
                  if not line.startswith(b"rexec: ")) == [f"{h}: err\n".encode()
                                                         for h in WEB[:3]]


# --- the other output modes -----------------------------------------------------------------


def header(label: str) -> bytes:
    """--gather's header: the hosts between two rules of dashes (at least 15)."""
    rule = b"-" * max(len(label), 15)
    return rule + b"\n" + label.encode() + b"\n" + rule + b"\n"


def test_gather_prints_identical_outputs_once_under_the_folded_hosts(fleet: Fleet) -> None:
    r = fleet.cli("run", "-b", "@web", "--", "echo same; echo twice")
    assert r.returncode == 0, r.stderr
    assert r.stdout == header("web[01-22] (22)") + b"same\ntwice\n"
    # three outputs, one a server; one of them with a failing exit status of its own
    r = fleet.cli("run", "--gather", "@web", "--",
                  'echo "from $SERVER"; test $SERVER != s2 || exit 3')
    assert r.returncode == 1, r.stderr
    assert r.stdout == (header("web[01-08] (8)") + b"from s0\n" + header("web[09-16] (8)")
                        + b"from s1\n" + header("web[17-22] (6) exit 3") + b"from s2\n")
    assert "rexec: failed: web[17-22] (exit 3)" in summary(r.stderr)


def test_json_is_one_valid_object_per_host_whatever_happens(fleet: Fleet) -> None:
    # web01-08 fail, web09-16 time out after printing, web17-20 succeed, two unreachable
    command = (f'echo "on $SERVER"; if [ $SERVER = s1 ]; then sleep 30; fi; {FAIL_ON_S0}')
    r = fleet.cli("run", "--json", "--timeout", "2", "@broken", "--", command)
    assert r.returncode == 3, r.stderr
    objects = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert r.stdout.endswith(b"\n") and len(objects) == 22
    by = {o["host"]: o for o in objects}
    assert sorted(by) == sorted([*WEB[:20], "down", "badtoken"])
    expected = {**dict.fromkeys(S0, "failed"), **dict.fromkeys(S1, "timed_out"),
                **dict.fromkeys(WEB[16:20], "ok"), "down": "unreachable",
                "badtoken": "unreachable"}
    assert {h: o["status"] for h, o in by.items()} == expected
    for host, o in by.items():
        assert set(o) >= {"host", "address", "status", "exit_code", "signal", "exit_status",
                          "duration", "stdout", "stderr", "stdout_encoding", "stderr_encoding",
                          "error"}
        if o["status"] == "unreachable":
            assert o["error"] and o["exit_code"] is None and o["stdout"] == ""
        else:
            assert o["error"] is None
            assert o["stdout"] == f"on s{0 if host in S0 else 1 if host in S1 else 2}\n"
    assert by["web01"]["exit_code"] == 1 and by["web17"]["exit_status"] == 0
    assert by["web09"]["exit_status"] == 124  # timed out: the output before is kept
    assert by["down"]["address"] == f"{DOWN}:{fleet.port}"
    assert "refused" in by["down"]["error"].lower()


BINARY = r"""
import os, sys
n = 1
while True:
    try:
        os.mkdir(f"{sys.argv[1]}/claim.{n}")
        break
    except FileExistsError:
        n += 1
os.write(1, f"host {n}\n".encode() + bytes((n * 7 + i) % 256 for i in range(70000 + n)))
os.write(2, f"err {n}\n".encode() + bytes(range(256)) * n)
"""


def binary_output(n: int) -> tuple[bytes, bytes]:
    return (f"host {n}\n".encode() + bytes((n * 7 + i) % 256 for i in range(70000 + n)),
            f"err {n}\n".encode() + bytes(range(256)) * n)


def test_out_dir_holds_what_each_host_printed_byte_for_byte(fleet: Fleet,
                                                            tmp_path: Path) -> None:
    script = tmp_path / "binary.py"
    script.write_text(BINARY)
    out = tmp_path / "out"
    r = fleet.cli("run", "--out-dir", str(out), "@ten", "--", f"python3 {script} {tmp_path}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""  # nothing but the summary on the terminal
    assert all(line.startswith(b"rexec: ") for line in r.stderr.splitlines()), r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{h}.{s}" for h in WEB[:10] for s in ("out", "err"))
    numbers = []
    for host in WEB[:10]:
        data = (out / f"{host}.out").read_bytes()
        n = int(data.split(b"\n", 1)[0].split()[1])
        assert ((out / f"{host}.out").read_bytes(), (out / f"{host}.err").read_bytes()) == \
            binary_output(n), host
        numbers.append(n)
    assert sorted(numbers) == list(range(1, 11))


def test_a_host_that_times_out_keeps_the_lines_it_printed(fleet: Fleet) -> None:
    r = fleet.cli("run", "--timeout", "1.5", "@ten", "--",
                  "echo before; printf 'partial'; sleep 30; echo after")
    assert r.returncode == 1, r.stderr
    assert prefixed(r.stdout) == {h: [b"before\n", b"partial\n"] for h in WEB[:10]}
    text = summary(r.stderr)
    assert "rexec: 10 hosts: 10 timed out" in text and "rexec: timed out: web[01-10]" in text


def test_stdin_is_sent_to_every_host(fleet: Fleet) -> None:
    data = os.urandom(20_000_000)
    r = fleet.cli("run", "@ten", "--", "sha256sum", input=data, timeout=180)
    assert r.returncode == 0, r.stderr
    digest = hashlib.sha256(data).hexdigest().encode()
    assert prefixed(r.stdout) == {h: [digest + b"  -\n"] for h in WEB[:10]}
    # -n: none
    r = fleet.cli("run", "-n", "@ten", "--", "wc -c", input=data)
    assert prefixed(r.stdout) == {h: [b"0\n"] for h in WEB[:10]}


# --- batches --------------------------------------------------------------------------------

BATCH = """# the deployment
echo one

echo two \\
  continued
test "$SERVER" != s0
echo four
"""


def test_batch_stops_a_host_at_its_first_failure_and_names_the_line(fleet: Fleet,
                                                                    tmp_path: Path) -> None:
    path = tmp_path / "batch.txt"
    path.write_text(BATCH)
    r = fleet.cli("batch", "web[01-10]", str(path))
    assert r.returncode == 1, r.stderr
    by = prefixed(r.stdout)
    stopped, went_on = [b"one\n", b"two continued\n"], [b"one\n", b"two continued\n", b"four\n"]
    assert by == {h: stopped if h in S0 else went_on for h in WEB[:10]}
    assert "rexec: failed: web[01-08] (line 6: exit 1)" in summary(r.stderr), r.stderr
    # -k: the rest runs too, the failure is still reported
    r = fleet.cli("batch", "-k", "web[01-10]", str(path))
    assert r.returncode == 1, r.stderr
    assert prefixed(r.stdout) == {h: went_on for h in WEB[:10]}
    assert "rexec: failed: web[01-08] (line 6: exit 1)" in summary(r.stderr), r.stderr


def test_batch_json_lists_each_command_and_reads_stdin(fleet: Fleet) -> None:
    r = fleet.cli("batch", "--json", "@broken", "-", input=BATCH.encode())
    assert r.returncode == 3, r.stderr
    by = {o["host"]: o for o in map(json.loads, r.stdout.decode().splitlines())}
    assert sorted(by) == sorted([*WEB[:20], "down", "badtoken"])
    web01, web09 = by["web01"], by["web09"]
    assert [(c["line"], c["exit_status"]) for c in web01["commands"]] == [(2, 0), (4, 0), (6, 1)]
    assert (web01["status"], web01["failed_line"]) == ("failed", 6)
    assert [c["stdout"] for c in web09["commands"]] == ["one\n", "two continued\n", "", "four\n"]
    assert [c["command"] for c in web09["commands"]][1] == "echo two   continued"
    assert (web09["status"], web09["failed_line"]) == ("ok", None)
    assert by["down"]["status"] == "unreachable" and by["down"]["error"]


def test_batch_on_one_host_prints_raw_lines_or_prefixed_with_prefix(fleet: Fleet,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "batch.txt"
    path.write_text(BATCH)
    r = fleet.cli("batch", "web09", str(path))
    assert (r.returncode, r.stdout) == (0, b"one\ntwo continued\nfour\n"), r.stderr
    r = fleet.cli("batch", "--prefix", "web01", str(path))
    assert r.returncode == 1, r.stderr
    assert r.stdout == b"web01: one\nweb01: two continued\n"
    assert "line 6: exit 1" in r.stderr.decode()
    # an address, not an inventory host: the same, with the flags' token
    address = f"{ADDRESSES[0]}:{fleet.port}"
    r = run_cli("batch", "--token-file", str(fleet.folder / "fleet.token"), address, "-",
                input=b"echo by address\n")
    assert (r.returncode, r.stdout) == (0, b"by address\n"), r.stderr


# --- single-host mode or fleet mode ---------------------------------------------------------


def test_an_inventory_host_runs_in_single_host_mode_a_pattern_in_fleet_mode(
        fleet: Fleet) -> None:
    r = fleet.cli("run", "web05", "--", "echo raw; echo err >&2; printf tail; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"raw\ntail", b"err\n")
    for pattern in ("web[05]", "@ten&web05", "web05,web05"):
        r = fleet.cli("run", pattern, "--", "echo raw; printf tail; exit 7")
        assert r.returncode == 1, (pattern, r.stderr)
        assert r.stdout == b"web05: raw\nweb05: tail\n", pattern
        assert "rexec: failed: web05 (exit 7)" in summary(r.stderr)


# --- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "words"), [
    (["run", "@ten&@web!@ten"], ["matches no host"]),
    (["run", "@nosuch"], ["nosuch"]),
    (["run", "web[05-01]"], ["web[05-01]"]),
    (["run", "web[01-"], ["web[01-"]),
    (["run", "--json", "-b", "@web"], ["--json", "--gather"]),
    (["batch", "@nosuch"], ["nosuch"]),
])
def test_usage_errors_exit_2_with_one_line_before_anything_runs(
        fleet: Fleet, tmp_path: Path, args: list[str], words: list[str]) -> None:
    mark = tmp_path / "ran"
    command = f"touch {mark}"
    if args[0] == "batch":
        path = tmp_path / "batch.txt"
        path.write_text(command + "\n")
        r = fleet.cli(*args, str(path))
    else:
        r = fleet.cli(*args, "--", command)
    assert r.returncode == 2, r.stderr
    assert r.stdout == b""
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rexec: "), lines
    assert all(word in lines[0] for word in words), lines
    assert not mark.exists()


# --- Ctrl-C and the terminal ----------------------------------------------------------------


def test_ctrl_c_cancels_every_remote_command_and_still_prints_the_summary(
        fleet: Fleet, tmp_path: Path) -> None:
    command = (f"echo $$ > {tmp_path}/tmp.$$ && mv {tmp_path}/tmp.$$ {tmp_path}/pid.$$;"
               " echo started; sleep 60 & sleep 60")
    proc = subprocess.Popen(fleet.argv("run", "-n", "@web", "--", command), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def pgids() -> list[int]:
            return [int(p.read_text()) for p in tmp_path.glob("pid.*")]

        assert wait_until(lambda: len(pgids()) == HOSTS, timeout=30), pgids()
        groups = pgids()
        # sh and its two sleeps: the pid file is written just before the sleeps start
        assert wait_until(lambda: all(len(pids_in_group(pgid)) >= 2 for pgid in groups),
                          timeout=10)
        time.sleep(0.3)  # the "started" lines reach the client
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10
    finally:
        reap(proc)
    assert proc.returncode == 130, err
    assert prefixed(out) == {key: [b"started\n"] for key in WEB}
    text = summary(err)
    assert f"rexec: {HOSTS} hosts: {HOSTS} cancelled" in text, text
    assert "rexec: cancelled: web[01-22]" in text, text
    for pgid in groups:  # nothing left running on any server
        assert wait_until(lambda pgid=pgid: not pids_in_group(pgid)), pgid


def test_a_second_ctrl_c_exits_at_once(fleet: Fleet, tmp_path: Path) -> None:
    """Commands that ignore SIGTERM make the first Ctrl-C's cancel wait for the servers' kill
    grace; a second Ctrl-C exits at once (130), and the servers still end every group."""
    command = (f"trap '' TERM; echo $$ > {tmp_path}/tmp.$$ && mv {tmp_path}/tmp.$$"
               f" {tmp_path}/pid.$$; echo started; sleep 30")
    proc = subprocess.Popen(fleet.argv("run", "-n", "@ten", "--", command), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def pgids() -> list[int]:
            return [int(p.read_text()) for p in tmp_path.glob("pid.*")]

        assert wait_until(lambda: len(pgids()) == 10, timeout=30), pgids()
        groups = pgids()
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # the first Ctrl-C waits for the cancels
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert time.monotonic() - started < 3
    finally:
        reap(proc)
    assert proc.returncode == 130
    for pgid in groups:  # the servers kill what ignored SIGTERM once the connections are gone
        assert wait_until(lambda pgid=pgid: not pids_in_group(pgid), timeout=20), pgid


def run_on_pty(argv: list[str], timeout: float = 60.0,
               stdout_too: bool = False) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with stderr on a terminal (80x24) and stdout on a pipe (or the terminal
    too); return (exit status, stdout, everything the terminal received)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=slave if stdout_too else subprocess.PIPE, stderr=slave,
                            env=env)
    os.close(slave)
    screen, out = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    try:
        open_fds = {master, *([proc.stdout.fileno()] if proc.stdout else [])}
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], 0.5)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    data = b""
                if not data:
                    open_fds.discard(fd)
                else:
                    (screen if fd == master else out).extend(data)
        proc.wait(10)
    finally:
        os.close(master)
        reap(proc)
    return proc.returncode, bytes(out), bytes(screen)


def test_the_progress_bar_is_drawn_while_running_and_gone_after(fleet: Fleet) -> None:
    code, out, screen = run_on_pty(fleet.argv("run", "@ten", "--", "sleep 1; echo done"))
    assert code == 0, screen
    assert prefixed(out) == {key: [b"done\n"] for key in WEB[:10]}
    text = screen.decode("utf-8", "replace")
    assert re.search(r"\b0/10\b", text), text  # drawn while the hosts ran
    assert "10/10" in text or "/10" in text
    # gone at the end: after the bar's last drawing, the cursor goes back up over it and the
    # line is erased (rich's transient bar), and what follows is the summary, nothing else
    last_bar = max(text.rfind("/10"), 0)
    tail = text[last_bar:]
    assert "\x1b[2K" in tail or "\x1b[K" in tail, repr(tail)
    after = tail[max(tail.rfind("\x1b[2K"), tail.rfind("\x1b[K")):]
    after = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", after)
    assert [line for line in after.splitlines() if line.strip()] == [
        line for line in after.splitlines() if line.startswith("rexec: ")]
    assert "rexec: 10 hosts: 10 ok" in after, repr(after)
    # stdout on the same terminal: the lines come above the bar, whole, the bar gone after
    code, out, screen = run_on_pty(fleet.argv("run", "@ten", "--", "sleep 1; echo done"),
                                   stdout_too=True)
    assert code == 0, screen
    text = screen.decode("utf-8", "replace")
    assert "0/10" in text
    for host in WEB[:10]:
        assert re.search(rf"(^|\r|\n|\x1b\[2K){host}: done\r\n", text), (host, text)
    last_bar = text.rfind("/10")
    assert "rexec: 10 hosts: 10 ok" in text[last_bar:]
    assert "\x1b[2K" in text[last_bar:]
    # without a terminal, no bar at all
    r = fleet.cli("run", "@ten", "--", "echo done")
    assert b"/10" not in r.stderr and b"\x1b[" not in r.stderr


def test_a_closed_local_stdout_cancels_the_fleet_and_exits_141(fleet: Fleet) -> None:
    """`rexec run @web -- yes | head -2`: as with one host, the run stops (every remote
    command cancelled, the summary still said) and rexec exits 141."""
    argv = fleet.argv("run", "@web", "--", "yes")
    started = time.monotonic()
    pipeline = subprocess.run(
        ["bash", "-c", f"{' '.join(map(shlex_quote, argv))} | head -2; exit ${{PIPESTATUS[0]}}"],
        capture_output=True, timeout=60)
    assert pipeline.returncode == 141, pipeline.stderr
    assert len(pipeline.stdout.splitlines()) == 2
    assert "cancelled" in pipeline.stderr.decode()
    assert time.monotonic() - started < 30


def shlex_quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def test_a_token_file_flag_reaches_hosts_that_no_inventory_names(fleet: Fleet) -> None:
    # no inventory, no REXEC_TOKEN, no default token: the flag alone must do (it once failed
    # with "no token" while the pattern was resolved, before the flags were applied)
    pattern = f"127.0.0.[2-4]:{fleet.port}"
    done = run_cli("run", "--token-file", str(fleet.folder / "fleet.token"), "-b", pattern,
                   "--", "echo $SERVER")
    assert done.returncode == 0, done.stderr
    assert b"s0\n" in done.stdout and b"(3)" in done.stdout
    listed = run_cli("batch", "--token-file", str(fleet.folder / "fleet.token"), pattern, "-",
                     input=b"echo one\n")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(b": one\n") == 3
