"""``rexec deploy`` through the real CLI against ten real servers, one per loopback "host"
(127.0.0.2-11, web01-web10 in an inventory written for the test).

Each server runs in a directory of its own, so ``/proc/self/cwd/NAME`` is a different file on
every host, as one path is on different machines. The plans' commands also append to one
shared log (an absolute path every host can write), so the order in which steps and batches
ran across hosts can be checked.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, ServerProcess, run_cli, start_server, wait_until, write_token

HOSTS = 10
WEB = [f"web{n:02d}" for n in range(1, HOSTS + 1)]
HERE = "/proc/self/cwd"


@dataclass
class Fleet:
    servers: list[ServerProcess]
    disks: dict[str, Path]
    inventory: Path
    folder: Path

    def deploy(self, plan: Path, *args: str, history: Path | None = None,
               timeout: float = 120.0) -> subprocess.CompletedProcess[bytes]:
        extra = ["--history", str(history)] if history is not None else ["--no-history"]
        return run_cli("deploy", str(plan), "--inventory", str(self.inventory), *extra, *args,
                       timeout=timeout)

    def argv(self, plan: Path, *args: str) -> list[str]:
        return [sys.executable, str(ROOT / "client.py"), "deploy", str(plan), "--inventory",
                str(self.inventory), *args]

    def files(self) -> dict[str, dict[str, tuple[bytes, int]]]:
        """Every host's directory: name -> (content, mode), the servers' own files left out."""
        tree: dict[str, dict[str, tuple[bytes, int]]] = {}
        for host, disk in self.disks.items():
            tree[host] = {str(p.relative_to(disk)): (p.read_bytes(), p.stat().st_mode)
                          for p in sorted(disk.rglob("*")) if p.is_file()}
        return tree


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("deploy")
    disks = {host: folder / "disks" / host for host in WEB}

    def start(n: int) -> ServerProcess:
        home = folder / f"server{n}"
        home.mkdir()
        disks[WEB[n]].mkdir(parents=True)
        return start_server(home, "--host", f"127.0.0.{2 + n}", env={"REXEC_HOME": str(home)},
                            cwd=disks[WEB[n]])

    with ThreadPoolExecutor(HOSTS) as pool:
        futures = [pool.submit(start, n) for n in range(HOSTS)]
        started = [f.exception() or f.result() for f in futures]
    servers = [s for s in started if isinstance(s, ServerProcess)]
    try:
        assert len(servers) == HOSTS, started
        write_token(folder / "fleet.token")
        hosts = "".join(f'[hosts.{name}]\naddress = "{s.host}"\nport = {s.port}\n'
                        f'vars = {{ colour = "c{n}" }}\n\n'
                        for n, (name, s) in enumerate(zip(WEB, servers, strict=True), 1))
        inventory = folder / "inventory.toml"
        inventory.write_text(f"""
[defaults]
token_file = "fleet.token"
connect_timeout = 5.0

{hosts}
[hosts.down]
address = "127.0.0.60"
port = 9

[groups.web]
hosts = ["web[01-{HOSTS:02d}]"]

[groups.canary]
hosts = ["web01"]
""")
        yield Fleet(servers, disks, inventory, folder)
    finally:
        for server in servers:
            assert server.stop() == 0, server.log()


@pytest.fixture
def clean(fleet: Fleet) -> Iterator[None]:
    for disk in fleet.disks.values():
        for path in sorted(disk.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
    yield


def write_plan(folder: Path, text: str, name: str = "plan.toml") -> Path:
    plan = folder / name
    plan.write_text(text)
    return plan


def json_lines(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def results(out: bytes) -> dict[tuple[str, str], dict[str, object]]:
    return {(doc["host"], doc["step"]): doc for doc in json_lines(out)  # type: ignore[misc]
            if doc["type"] == "result"}


def summary(out: bytes) -> dict[str, object]:
    [doc] = [doc for doc in json_lines(out) if doc["type"] == "summary"]
    return doc


@contextlib.contextmanager
def deploying(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """``rexec deploy`` started in the background; killed at the end if it is still running."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def log_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


# --- steps, guards, changes -------------------------------------------------------------------


def test_steps_run_in_order_on_every_host_and_guards_skip(fleet: Fleet, clean: None,
                                                          tmp_path: Path) -> None:
    log = tmp_path / "log"
    (tmp_path / "app.conf").write_text("port = 80\n")
    (tmp_path / "motd.tmpl").write_text("welcome to ${host} (${colour}), release ${release}\n")
    plan = write_plan(tmp_path, f"""
name = "first"
targets = "@web"
[vars]
release = "7"

[[steps]]
name = "config"
put = {{ src = "app.conf", dest = "{HERE}/app.conf", mode = "0640" }}

[[steps]]
name = "motd"
template = {{ src = "motd.tmpl", dest = "{HERE}/motd" }}

[[steps]]
name = "marker"
run = "echo ${{host}} >> {log} && touch {HERE}/marker"
creates = "{HERE}/marker"

[[steps]]
name = "never"
run = "touch {HERE}/never"
only_if = "test ${{host}} = nobody"

[[steps]]
name = "unless"
run = "touch {HERE}/unless"
unless = "test ${{host}} != web03"
""")
    done = fleet.deploy(plan, "--json")
    assert done.returncode == 0, done.stderr
    got = results(done.stdout)
    for host in WEB:
        assert [got[(host, s)]["status"] for s in ("config", "motd", "marker", "never")] == [
            "changed", "changed", "changed", "skipped"]
        assert got[(host, "unless")]["status"] == ("changed" if host == "web03" else "skipped")
    trees = fleet.files()
    n = 0
    for n, host in enumerate(WEB, 1):
        assert trees[host]["app.conf"] == (b"port = 80\n", trees[host]["app.conf"][1])
        assert trees[host]["app.conf"][1] & 0o777 == 0o640
        assert trees[host]["motd"][0] == f"welcome to {host} (c{n}), release 7\n".encode()
        assert "never" not in trees[host]
    assert n == HOSTS
    assert sorted(line[0] for line in log_lines(log)) == WEB
    assert summary(done.stdout)["exit_status"] == 0
    # the second run changes nothing: the files are the same, the marker exists
    again = fleet.deploy(plan, "--json")
    assert again.returncode == 0, again.stderr
    got = results(again.stdout)
    assert {got[(h, s)]["status"] for h in WEB for s in ("config", "motd")} == {"ok"}
    assert {got[(h, "marker")]["status"] for h in WEB} == {"skipped"}
    assert len(log_lines(log)) == HOSTS


def test_retries_and_until_succeed_after_failures(fleet: Fleet, clean: None,
                                                  tmp_path: Path) -> None:
    plan = write_plan(tmp_path, f"""
name = "flaky"
targets = "web[01-03]"

[[steps]]
name = "third time"
run = "echo x >> {HERE}/tries; test $(wc -l < {HERE}/tries) -ge 3"
retries = 3
retry_delay = 0.05

[[steps]]
name = "wait for ready"
run = "echo y >> {HERE}/polls"
until = "test $(wc -l < {HERE}/polls) -ge 2"
retry_delay = 0.05

[[steps]]
name = "gives up"
run = "false"
retries = 1
retry_delay = 0.05
targets = "web03"
""")
    done = fleet.deploy(plan, "--json")
    assert done.returncode == 1, done.stderr
    got = results(done.stdout)
    for host in ("web01", "web02", "web03"):
        assert got[(host, "third time")]["status"] == "changed"
        assert got[(host, "third time")]["attempts"] == 3
        assert got[(host, "wait for ready")]["attempts"] == 2
        assert (fleet.disks[host] / "tries").read_text() == "x\n" * 3
    assert got[("web03", "gives up")]["status"] == "failed"
    assert got[("web03", "gives up")]["attempts"] == 2
    assert ("web01", "gives up") not in got
    assert summary(done.stdout)["hosts"]["web03"]["state"] == "failed"  # type: ignore[index]


def test_handlers_run_once_and_only_where_something_changed(fleet: Fleet, clean: None,
                                                            tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("a\n")
    (fleet.disks["web02"] / "a.conf").write_text("a\n")  # web02 has it already
    (fleet.disks["web02"] / "a.conf").chmod(0o644)
    plan = write_plan(tmp_path, f"""
name = "handlers"
targets = "web[01-03]"

[[steps]]
name = "conf"
put = {{ src = "a.conf", dest = "{HERE}/a.conf", mode = "0644" }}
notify = ["restart"]

[[steps]]
name = "also"
run = "true"
changed_when = "never"
notify = ["restart", "other"]

[[steps]]
name = "again"
run = "true"
notify = ["restart"]
targets = "web01"

[[handlers]]
name = "other"
run = "echo other >> {HERE}/handled"

[[handlers]]
name = "restart"
run = "echo restart >> {HERE}/handled"
""")
    done = fleet.deploy(plan, "--json")
    assert done.returncode == 0, done.stderr
    assert (fleet.disks["web01"] / "handled").read_text() == "restart\n"  # once, notified twice
    assert (fleet.disks["web03"] / "handled").read_text() == "restart\n"
    assert not (fleet.disks["web02"] / "handled").exists()  # nothing changed there
    got = results(done.stdout)
    assert got[("web01", "restart")]["kind"] == "handler"
    assert ("web02", "restart") not in got and ("web01", "other") not in got


def test_changed_when_codes(fleet: Fleet, clean: None, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, """
name = "codes"
targets = "web[01-03]"

[[steps]]
name = "script"
run = "case ${host} in web01) exit 0;; web02) exit 2;; *) exit 3;; esac"
changed_when = [2]
""")
    done = fleet.deploy(plan, "--json")
    got = results(done.stdout)
    assert [got[(h, "script")]["status"] for h in ("web01", "web02", "web03")] == [
        "ok", "changed", "failed"]
    assert done.returncode == 1


# --- batches and the failure budget -------------------------------------------------------


def test_serial_batches_run_in_order_each_step_everywhere_first(fleet: Fleet, clean: None,
                                                                tmp_path: Path) -> None:
    log = tmp_path / "log"
    plan = write_plan(tmp_path, f"""
name = "rolling"
targets = "@web"
serial = [1, "20%", "50%"]

[[steps]]
name = "one"
run = '''echo ${{batch}} one ${{host}} $(date +%s%N) >> {log}; sleep 0.05
echo ${{batch}} one-end ${{host}} $(date +%s%N) >> {log}'''

[[steps]]
name = "two"
run = "echo ${{batch}} two ${{host}} $(date +%s%N) >> {log}"
""")
    done = fleet.deploy(plan)
    assert done.returncode == 0, done.stderr
    lines = log_lines(log)
    batches = [int(line[0]) for line in lines]
    assert batches == sorted(batches)  # every batch after the one before
    sizes = {b: len({line[2] for line in lines if int(line[0]) == b}) for b in set(batches)}
    assert sizes == {1: 1, 2: 2, 3: 5, 4: 2}
    assert {line[2] for line in lines if line[0] == "1"} == {"web01"}  # the canary first
    for b in sizes:  # lock-step: no host starts "two" before every host ended "one"
        ends = [int(line[3]) for line in lines if int(line[0]) == b and line[1] == "one-end"]
        twos = [int(line[3]) for line in lines if int(line[0]) == b and line[1] == "two"]
        assert max(ends) <= min(twos)
    assert b"batch 1 (1 host): web01" in done.stdout


def test_the_failure_budget_stops_new_batches_and_names_the_unreached(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, f"""
name = "budget"
targets = "@web"
serial = 2
max_fail_percentage = 5

[[steps]]
name = "work"
run = "test ${{host}} != web03 && touch {HERE}/done"
""")
    done = fleet.deploy(plan)
    assert done.returncode == 4, done.stderr
    # batch 1 (web01-02) is fine; in batch 2 (web03-04) web03 fails: 1 host of 10 is over 5%
    ran = {h for h in WEB if (fleet.disks[h] / "done").exists()}
    assert ran == {"web01", "web02", "web04"}, done.stderr
    text = done.stderr.decode()
    assert "never reached (the failure budget stopped the rollout): web[05-10] (6)" in text


def test_quiet_shows_failed_steps_and_folds_the_ok_hosts(fleet: Fleet, clean: None,
                                                        tmp_path: Path) -> None:
    plan = write_plan(tmp_path, f"""
name = "quiet"
targets = "@web"

[[steps]]
name = "stamp"
run = "touch {HERE}/stamp && test ${{host}} != web04"
""")
    done = fleet.deploy(plan, "-q")
    assert done.returncode == 1, done.stderr
    # the failing step's line (on stdout), and no line for the steps that went well
    assert [line.split()[:3] for line in done.stdout.decode().splitlines()] == [
        ["web04", "stamp", "failed"]], done.stdout
    lines = done.stderr.decode().splitlines()  # the recap
    recap = lines[lines.index("recap:") + 1:]
    assert [line.split()[:2] for line in recap if "failed" in line] == [["web04", "failed"]]
    assert "  ok: web[01-03,05-10] (9)" in recap
    assert all((fleet.disks[h] / "stamp").exists() for h in WEB)


def test_an_unreachable_host_counts_against_the_budget(fleet: Fleet, clean: None,
                                                       tmp_path: Path) -> None:
    plan = write_plan(tmp_path, f"""
name = "down first"
targets = "down,web[01-04]"
serial = 1
max_fail_percentage = 0

[[steps]]
name = "work"
run = "touch {HERE}/done"
""")
    done = fleet.deploy(plan, "--json")
    assert done.returncode == 4, done.stderr
    doc = summary(done.stdout)
    assert doc["hosts"]["down"]["state"] == "unreachable"  # type: ignore[index]
    assert doc["never_reached"] == ["web01", "web02", "web03", "web04"]
    assert not any((fleet.disks[h] / "done").exists() for h in WEB)


def test_a_failed_health_check_fails_the_host_and_stops_the_rollout(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, f"""
name = "health"
targets = "web[01-04]"
serial = [1, 3]
max_fail_percentage = 0

[[steps]]
name = "install"
run = "touch {HERE}/installed"

[health]
run = "test -e {HERE}/healthy"
retries = 1
delay = 0.05
""")
    done = fleet.deploy(plan, "--json")
    assert done.returncode == 4, done.stderr
    got = results(done.stdout)
    assert got[("web01", "health")]["status"] == "failed"
    assert got[("web01", "health")]["attempts"] == 2
    assert summary(done.stdout)["never_reached"] == ["web02", "web03", "web04"]
    (fleet.disks["web01"] / "healthy").touch()
    for host in ("web02", "web03", "web04"):
        (fleet.disks[host] / "healthy").touch()
    assert fleet.deploy(plan).returncode == 0


# --- check mode ---------------------------------------------------------------------------


def test_check_changes_nothing_and_the_apply_does_exactly_what_it_said(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    log = tmp_path / "log"
    (tmp_path / "app.conf").write_text("port = 8080\n")
    (tmp_path / "motd.tmpl").write_text("host ${host}\n")
    for host in ("web01", "web02"):  # these two have the config already
        (fleet.disks[host] / "app.conf").write_text("port = 8080\n")
        (fleet.disks[host] / "app.conf").chmod(0o644)
    (fleet.disks["web05"] / "marker").touch()
    plan = write_plan(tmp_path, f"""
name = "checked"
targets = "@web"

[[steps]]
name = "config"
put = {{ src = "app.conf", dest = "{HERE}/app.conf", mode = "0644" }}
notify = ["reload"]

[[steps]]
name = "motd"
template = {{ src = "motd.tmpl", dest = "{HERE}/motd" }}

[[steps]]
name = "marker"
run = "touch {HERE}/marker; echo ran ${{host}} >> {log}"
creates = "{HERE}/marker"

[[steps]]
name = "guard sees check"
run = "true"
only_if = "test \\"$REXEC_CHECK\\" = 1 || echo applied >> {log}"

[[handlers]]
name = "reload"
run = "echo reload ${{host}} >> {log}"
""")
    before = fleet.files()
    check = fleet.deploy(plan, "--check", "--json")
    assert check.returncode == 0, check.stderr
    assert fleet.files() == before and not log.exists()  # nothing changed anywhere
    said = results(check.stdout)
    for host in WEB:
        assert said[(host, "config")]["status"] == (
            "ok" if host in ("web01", "web02") else "would_change")
        assert said[(host, "motd")]["status"] == "would_change"
        assert said[(host, "marker")]["status"] == ("skipped" if host == "web05" else "would_run")
        if host in ("web01", "web02"):  # nothing would change: nothing notifies
            assert (host, "reload") not in said
        else:
            assert said[(host, "reload")]["status"] == "would_run"
    assert all(doc["status"] not in ("ok", "changed") or doc["kind"] in ("put", "template")
               for doc in said.values())
    applied = fleet.deploy(plan, "--json")
    assert applied.returncode == 0, applied.stderr
    did = results(applied.stdout)
    for (host, step), doc in said.items():
        expected = {"would_change": "changed", "would_run": "changed"}.get(
            str(doc["status"]), doc["status"])
        assert did[(host, step)]["status"] == expected, (host, step)
    assert set(did) == set(said)


def test_check_prints_the_schedule_and_diff_shows_changes_masking_secrets(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    (fleet.disks["web01"] / "app.conf").write_text("user = app\npassword = old-secret\n")
    (tmp_path / "app.conf.tmpl").write_text("user = app\npassword = ${db_password}\n")
    plan = write_plan(tmp_path, f"""
name = "diffed"
targets = "web01"
[vars]
db_password = "s3cret-value"

[[steps]]
name = "config"
template = {{ src = "app.conf.tmpl", dest = "{HERE}/app.conf" }}
""")
    done = fleet.deploy(plan, "--check", "--diff")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "batch 1 (1 host): web01" in out
    assert "-password = old-secret" in out and "+password = ********" in out
    assert "s3cret-value" not in out
    assert (fleet.disks["web01"] / "app.conf").read_text() == "user = app\npassword = old-secret\n"


# --- errors, history, resume, Ctrl-C ------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('name = "x"\ntargets = "@web"\n[[steps]]\nname = "a"\nrun = "true"\nretrys = 1\n',
     "retrys"),
    ('name = "x"\ntargets = "@web"\n[[steps]]\nname = "a"\nrun = "echo ${nope}"\n',
     "undefined variable 'nope'"),
    ('name = "x"\ntargets = "@web"\n[[steps]]\nname = "a"\nrun = "true"\n'
     '[[steps]]\nname = "a"\nrun = "true"\n', "'a'"),
    ('name = "x"\ntargets = "@web"\n[[steps]]\nname = "a"\nrun = "true"\nnotify = ["h"]\n',
     "'h'"),
    ('name = "x"\ntargets = "web[01-"\n[[steps]]\nname = "a"\nrun = "true"\n', "web[01-"),
])
def test_plan_errors_are_named_and_nothing_runs(fleet: Fleet, clean: None, tmp_path: Path,
                                                text: str, expected: str) -> None:
    plan = write_plan(tmp_path, text.replace('run = "true"', f'run = "touch {HERE}/ran"'))
    done = fleet.deploy(plan)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr.decode()
    assert not any((fleet.disks[h] / "ran").exists() for h in WEB)


def test_history_records_the_run_and_resume_finishes_only_what_was_left(
        fleet: Fleet, clean: None, tmp_path: Path) -> None:
    history = tmp_path / "history.sqlite"
    log = tmp_path / "log"
    gate = tmp_path / "gate"
    plan = write_plan(tmp_path, f"""
name = "resumable"
targets = "web[01-06]"
serial = 2
max_fail_percentage = 0

[[steps]]
name = "one"
run = "echo one ${{host}} >> {log}"

[[steps]]
name = "two"
run = "test ${{host}} != web03 -o -e {gate} && echo two ${{host}} >> {log}"
""")
    first = fleet.deploy(plan, history=history)
    assert first.returncode == 4, first.stderr
    listed = run_cli("history", "--history", str(history), "--json")
    [run] = json_lines(listed.stdout)
    assert run["kind"] == "deploy" and run["status"] == "stopped" and run["exit_status"] == 4
    shown = run_cli("history", "show", str(run["id"]), "--history", str(history), "--json")
    assert shown.returncode == 0, shown.stderr
    gate.touch()
    log.write_text("")
    again = fleet.deploy(plan, "--resume", str(run["id"]), history=history)
    assert again.returncode == 0, again.stderr
    lines = [" ".join(line) for line in log_lines(log)]
    # web01-02 were done; web03 failed at two (one done); web04 did both; 05-06 never reached
    assert sorted(lines) == sorted(["two web03", "one web05", "two web05", "one web06",
                                    "two web06"])
    runs = json_lines(run_cli("history", "--history", str(history), "--json").stdout)
    finished = fleet.deploy(plan, "--resume", str(runs[0]["id"]), history=history)
    assert finished.returncode == 0 and b"left nothing to do" in finished.stderr
    mixed = fleet.deploy(plan, "--resume", str(run["id"]), "--limit", "web01", history=history)
    assert mixed.returncode == 2 and b"leave out --limit" in mixed.stderr
    plan.write_text(plan.read_text() + "\n# changed\n")
    refused = fleet.deploy(plan, "--resume", str(run["id"]), history=history)
    assert refused.returncode == 2 and b"changed since run" in refused.stderr


def test_a_killed_deploy_leaves_a_readable_history(fleet: Fleet, clean: None,
                                                   tmp_path: Path) -> None:
    history = tmp_path / "history.sqlite"
    plan = write_plan(tmp_path, f"""
name = "slow"
targets = "web[01-02]"

[[steps]]
name = "quick"
run = "touch {HERE}/quick"

[[steps]]
name = "slow"
run = "sleep 30"
""")
    with deploying(fleet.argv(plan, "--history", str(history))) as proc:
        assert wait_until(lambda: all((fleet.disks[h] / "quick").exists()
                                      for h in ("web01", "web02")), 20)
        time.sleep(0.3)  # past the history's 50 ms hold

        def recorded() -> int:
            with sqlite3.connect(history) as db:
                return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

        assert wait_until(lambda: recorded() == 2, 10)
        proc.kill()
        proc.wait(10)
    listed = run_cli("history", "--history", str(history), "--json")
    [run] = json_lines(listed.stdout)
    assert run["status"] == "interrupted"
    shown = run_cli("history", "show", str(run["id"]), "--history", str(history), "--json")
    assert shown.returncode == 0 and b"quick" in shown.stdout


def test_ctrl_c_cancels_the_running_steps_and_records_the_run(fleet: Fleet, clean: None,
                                                              tmp_path: Path) -> None:
    history = tmp_path / "history.sqlite"
    plan = write_plan(tmp_path, f"""
name = "interrupted"
targets = "web[01-04]"

[[steps]]
name = "long"
run = "echo $$ > {HERE}/pid; sleep 60"
""")
    with deploying(fleet.argv(plan, "--history", str(history), "--json")) as proc:
        assert wait_until(lambda: all((fleet.disks[h] / "pid").exists() and
                                      (fleet.disks[h] / "pid").read_text().strip()
                                      for h in WEB[:4]), 20)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert summary(out)["interrupted"] is True
    pids = [int((fleet.disks[h] / "pid").read_text()) for h in WEB[:4]]

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in pids)

    assert wait_until(gone, 10)  # the remote commands were stopped
    [run] = json_lines(run_cli("history", "--history", str(history), "--json").stdout)
    assert run["status"] == "cancelled" and run["exit_status"] == 130


def test_check_of_a_put_into_a_folder_an_earlier_step_makes(fleet: Fleet, clean: None,
                                                            tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x\n")
    plan = write_plan(tmp_path, f"""
name = "folder first"
targets = "web01"

[[steps]]
name = "folder"
run = "mkdir -p etc"  # the server's folder (mkdir -p cannot walk /proc/self/cwd)
creates = "etc"

[[steps]]
name = "file"
put = {{ src = "f", dest = "{HERE}/etc/f" }}
""")
    check = fleet.deploy(plan, "--check", "--json")
    assert check.returncode == 0, check.stderr
    said = results(check.stdout)
    assert said[("web01", "file")]["status"] == "would_change"
    assert "earlier step" in str(said[("web01", "file")]["message"])
    assert fleet.files()["web01"] == {} and not (fleet.disks["web01"] / "etc").exists()
    assert fleet.deploy(plan).returncode == 0
    assert (fleet.disks["web01"] / "etc" / "f").read_text() == "x\n"


def test_limit_tags_start_at_and_var_select_what_runs(fleet: Fleet, clean: None,
                                                      tmp_path: Path) -> None:
    plan = write_plan(tmp_path, f"""
name = "selected"
targets = "@web"
[vars]
word = "plan"

[[steps]]
name = "first"
run = "echo first >> {HERE}/ran"
tags = ["a"]

[[steps]]
name = "second"
run = "echo second ${{word}} >> {HERE}/ran"
tags = ["b"]

[[steps]]
name = "third"
run = "echo third >> {HERE}/ran"
tags = ["a", "b"]
""")
    done = fleet.deploy(plan, "--limit", "web[02-03],web09", "--tags", "b", "--skip-tags", "a",
                        "--var", "word=cli")
    assert done.returncode == 0, done.stderr
    ran = {h: (fleet.disks[h] / "ran").read_text() for h in WEB
           if (fleet.disks[h] / "ran").exists()}
    assert ran == {h: "second cli\n" for h in ("web02", "web03", "web09")}
    started = fleet.deploy(plan, "--limit", "web01", "--start-at", "second")
    assert started.returncode == 0, started.stderr
    assert (fleet.disks["web01"] / "ran").read_text() == "second plan\nthird\n"
    refused = fleet.deploy(plan, "--limit", "nosuch")
    assert refused.returncode == 2 and b"nosuch" in refused.stderr


def test_the_python_api_applies_a_plan(fleet: Fleet, clean: None, tmp_path: Path) -> None:
    import asyncio

    import rexec
    from rexec.fleet.inventory import Inventory

    plan = rexec.Plan.load(write_plan(tmp_path, f"""
name = "api"
targets = "web[01-02]"

[[steps]]
name = "touch"
run = "touch {HERE}/api"
creates = "{HERE}/api"
"""))
    inventory = Inventory.load([fleet.inventory])
    assert [h.name for h in plan.schedule(inventory).hosts] == ["web01", "web02"]
    seen: list[str] = []
    report = asyncio.run(plan.apply(inventory, on_result=lambda r: seen.append(r.status)))
    assert isinstance(report, rexec.DeployReport) and report.exit_status == 0
    assert seen == ["changed", "changed"]
    assert [r.status for r in report.hosts["web01"].results] == ["changed"]
    again = asyncio.run(plan.apply(inventory, check=True))
    assert [r.status for h in again.hosts.values() for r in h.results] == ["skipped", "skipped"]
    assert (fleet.disks["web01"] / "api").exists() and (fleet.disks["web02"] / "api").exists()


def test_a_progress_bar_per_batch_on_a_terminal_gone_after(fleet: Fleet, clean: None,
                                                           tmp_path: Path) -> None:
    import re

    from tests.e2e.test_fleet_cli import run_on_pty

    plan = write_plan(tmp_path, f"""
name = "barred"
targets = "@web"
serial = [2, 8]

[[steps]]
name = "slow"
run = "sleep 0.6; touch {HERE}/done"
""")
    code, out, screen = run_on_pty(fleet.argv(plan, "--no-history"))
    assert code == 0, screen
    text = screen.decode("utf-8", "replace")
    assert re.search(r"\d+/2\b", text) and re.search(r"\d+/8\b", text), text  # one per batch
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text[text.rfind("/8"):])
    assert "recap:" in plain and "web10" in plain  # the recap follows the last bar
    assert b"\x1b[" not in out  # the step lines on stdout (a pipe) carry no bar
    assert sum(line.split()[2] == "changed" for line in out.decode().splitlines()
               if line.startswith("web")) == HOSTS
