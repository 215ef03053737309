"""``rexec batch`` records its runs, and ``rexec history`` reads them back, through the real
CLI against real servers: three loopback "hosts" (127.0.0.2-4, one process) and ``down``, where
nothing listens. Every run goes to the test's own REXEC_HOME (conftest's isolated_home)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    ManyServers,
    reap,
    run_cli,
    start_many_servers,
    wait_until,
    write_token,
)

HOSTS = ["h1", "h2", "h3"]
BATCH = """echo one
printf '\\377\\376'; echo oops >&2; exit 5
echo never
"""
COMMANDS = ["echo one", "printf '\\377\\376'; echo oops >&2; exit 5", "echo never"]


@dataclass
class Fleet:
    servers: ManyServers
    inventory: Path

    def cli(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        """``rexec batch --inventory FILE ARGS...`` (or another command, as given)."""
        command, *rest = args
        extra = ["--inventory", str(self.inventory)] if command == "batch" else []
        return run_cli(command, *extra, *rest, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("history-fleet")
    servers = start_many_servers(len(HOSTS))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.99", 0))
        down_port = sock.getsockname()[1]
    write_token(folder / "fleet.token")
    hosts = "".join(f'[hosts.{name}]\naddress = "{address.rpartition(":")[0]}"\n'
                    f'port = {address.rpartition(":")[2]}\n'
                    for name, address in zip(HOSTS, servers.addresses, strict=True))
    inventory = folder / "inventory.toml"
    inventory.write_text(f'[defaults]\ntoken_file = "fleet.token"\nconnect_timeout = 5.0\n'
                         f'{hosts}[hosts.down]\naddress = "127.0.0.99"\nport = {down_port}\n'
                         '[groups.all]\nhosts = ["h[1-3]", "down"]\n')
    try:
        yield Fleet(servers, inventory)
    finally:
        assert servers.stop() == 0


def history_json(*args: str, **kwargs: object) -> list[dict[str, object]]:
    r = run_cli("history", *args, "--json", **kwargs)  # type: ignore[arg-type]
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def test_a_batch_is_recorded_and_rexec_history_shows_it(fleet: Fleet, tmp_path: Path,
                                                        isolated_home: Path) -> None:
    path = tmp_path / "deploy.txt"
    path.write_text(BATCH)
    done = fleet.cli("batch", "-f", "2", "@all", str(path))
    assert done.returncode == 3, done.stderr  # down is unreachable

    listed = run_cli("history")
    assert listed.returncode == 0, listed.stderr
    header, line = listed.stdout.decode().splitlines()
    assert header.split() == ["ID", "STARTED", "KIND", "NAME", "STATUS", "EXIT", "HOSTS",
                              "SECONDS"]
    run_id, day, clock, kind, name, status, exit_status, hosts, seconds = line.split()
    assert (kind, name, status, exit_status, hosts) == ("batch", str(path), "unreachable",
                                                        "3", "4")
    assert len(day) == 10 and len(clock) == 8 and float(seconds) > 0

    [run] = history_json()
    assert run["id"] == int(run_id)
    assert (run["targets"], run["pid"], run["exit_status"]) == ("@all", run["pid"], 3)
    assert run["options"] == {"keep_going": False, "forks": 2, "timeout": None,
                              "path": str(path)}
    assert (isolated_home / "history.sqlite").stat().st_mode & 0o777 == 0o600

    shown = history_json("show", run_id)
    assert shown[0]["status"] == "unreachable"
    results = shown[0]["results"]
    assert isinstance(results, list)
    by: dict[str, list[dict[str, object]]] = {}
    for result in results:
        by.setdefault(result["host"], []).append(result)
    assert sorted(by) == ["down", *HOSTS]
    for host in HOSTS:
        assert [(r["step_index"], r["step"], r["status"], r["exit_code"], r["attempts"])
                for r in by[host]] == [(0, COMMANDS[0], "ok", 0, 1),
                                       (1, COMMANDS[1], "failed", 5, 1),
                                       (2, COMMANDS[2], "skipped", None, 0)]
        one, failed, _ = by[host]
        assert (one["stdout"], one["stdout_encoding"]) == ("one\n", "utf-8")
        assert (failed["stdout_encoding"], failed["stderr"]) == ("base64", "oops\n")
        assert base64.b64decode(str(failed["stdout"])) == b"\xff\xfe"
        assert float(failed["duration"]) > 0  # type: ignore[arg-type]
    assert [(r["status"], r["attempts"]) for r in by["down"]] == [("unreachable", 0)] * 3
    assert all("127.0.0.99" in str(r["error"]) for r in by["down"])

    only = history_json("show", run_id, "--host", "h2", "--step", "1")[0]["results"]
    assert [(r["host"], r["step_index"]) for r in only] == [("h2", 1)]  # type: ignore[union-attr]
    named = history_json("show", run_id, "--step", COMMANDS[2])[0]["results"]
    assert sorted(r["host"] for r in named) == ["down", *HOSTS]  # type: ignore[union-attr]

    text = run_cli("history", "show", run_id)
    assert text.returncode == 0, text.stderr
    out = text.stdout.decode()
    assert f"run {run_id}: batch {path} on @all\n" in out
    assert "status unreachable, exit 3;" in out and "; 4 hosts\n" in out
    for host in HOSTS:
        detail = f"--- {host} #1 failed, exit 5: {COMMANDS[1]}\n"
        assert detail + "stdout:\n\ufffd\ufffd\nstderr:\noops\n" in out  # decoded, replaced
    assert out.count("--- down #") == 1  # its one error, said once for its three steps
    assert "error: " in out.split("--- down #", 1)[1]
    none = run_cli("history", "show", run_id, "--host", "nosuch")
    assert none.returncode == 0 and none.stdout.decode().endswith(
        "\nno result matches --host and --step\n")


def test_history_files_no_history_and_unknown_runs(fleet: Fleet, tmp_path: Path,
                                                   isolated_home: Path) -> None:
    nothing = run_cli("history")
    assert nothing.returncode == 1 and not nothing.stdout
    assert f"no history at {isolated_home / 'history.sqlite'} yet" in nothing.stderr.decode()
    batch = tmp_path / "b.txt"
    batch.write_text("echo hi\n")

    chosen = tmp_path / "chosen.sqlite"
    assert fleet.cli("batch", "--history", str(chosen), "h[1-2]", str(batch)).returncode == 0
    from_env = tmp_path / "env.sqlite"
    assert fleet.cli("batch", "h3", str(batch),
                     env={"REXEC_HISTORY": str(from_env)}).returncode == 0
    assert fleet.cli("batch", "--no-history", "h[1-3]", str(batch)).returncode == 0
    assert not (isolated_home / "history.sqlite").exists()  # neither run went there
    [one] = history_json("--history", str(chosen))
    assert (one["hosts"], one["status"], one["exit_status"]) == (2, "ok", 0)
    [three] = history_json(env={"REXEC_HISTORY": str(from_env)})
    assert (three["targets"], three["hosts"]) == ("h3", 1)  # one host: recorded too
    second = fleet.cli("batch", "--history", str(chosen), "h1", "-", input=b"echo again\n")
    assert second.returncode == 0
    assert [r["name"] for r in history_json("--history", str(chosen))] == ["-", str(batch)]
    assert len(history_json("--history", str(chosen), "--limit", "1")) == 1
    # rexec history --history FILE show: the group's option reaches show
    shown = history_json("--history", str(chosen), "show", str(one["id"]))
    assert [r["host"] for r in shown[0]["results"]] == ["h1", "h2"] or \
        [r["host"] for r in shown[0]["results"]] == ["h2", "h1"]  # type: ignore[union-attr]

    unknown = run_cli("history", "show", "999", "--history", str(chosen))
    assert unknown.returncode == 2
    assert f"no run 999 in the history {chosen}" in unknown.stderr.decode()


def test_a_history_that_cannot_be_opened_does_not_stop_the_batch(fleet: Fleet,
                                                                 tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"not a database at all\n" * 100)
    done = fleet.cli("batch", "--history", str(notes), "h[1-3]", "-", input=b"echo fine\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(b": fine\n") == 3
    warnings = [line for line in done.stderr.decode().splitlines() if "warning" in line]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith(f"rexec: warning: {notes} is not a rexec history")
    assert notes.read_bytes() == b"not a database at all\n" * 100
    refused = run_cli("history", "--history", str(notes))
    assert refused.returncode == 1 and "not a rexec history" in refused.stderr.decode()


def test_a_killed_batch_leaves_a_history_that_shows_it_interrupted(
        fleet: Fleet, tmp_path: Path, isolated_home: Path) -> None:
    path = tmp_path / "slow.txt"
    path.write_text("echo started\nsleep 30\necho never\n")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "batch", "--inventory", str(fleet.inventory),
         "h[1-3]", str(path)],
        cwd=ROOT, env=dict(os.environ), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    database = isolated_home / "history.sqlite"

    def first_commands_recorded() -> bool:
        if not database.exists():
            return False
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
                return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3
        except sqlite3.OperationalError:  # the file just made, the schema not yet in it
            return False

    try:
        assert wait_until(first_commands_recorded, timeout=30), "no results recorded"
        [running] = history_json()
        assert running["status"] == "running" and running["ended"] is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        reap(proc)
    assert proc.returncode == -signal.SIGKILL

    listed = run_cli("history")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().splitlines()[1].split()[5:] == ["interrupted", "-", "3", "-"]
    [run] = history_json("show", str(running["id"]))
    assert (run["status"], run["exit_status"], run["ended"]) == ("interrupted", None, None)
    assert sorted((r["host"], r["step_index"], r["status"], r["stdout"])  # type: ignore[index]
                  for r in run["results"]) == [  # type: ignore[attr-defined]
        (host, 0, "ok", "started\n") for host in HOSTS]
