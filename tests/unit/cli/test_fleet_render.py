"""The fleet renderer alone: --out-dir keeps only running hosts' files open, and names them
safely."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rexec.cli.fleet import Renderer


@dataclass
class Ended:
    host: str
    address: str = "127.0.0.1:7878"
    status: str = "ok"
    error: str | None = None
    duration: float = 0.01
    result: Any = None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_out_dir_opens_a_hosts_files_only_while_it_runs(tmp_path: Path) -> None:
    hosts = [f"h{i}" for i in range(1500)]  # 3,000 files: over the usual 1,024 descriptors
    renderer = Renderer(hosts, mode="out_dir", out_dir=tmp_path / "out", quiet=True,
                        fold=",".join)
    before = open_fds()
    most = 0
    for host in hosts:
        renderer.output(host, "stdout", f"{host} says hi\n".encode())
        most = max(most, open_fds() - before)
        renderer.done(Ended(host))
    assert most <= 2 and open_fds() == before
    assert (tmp_path / "out" / "h1499.out").read_bytes() == b"h1499 says hi\n"
    assert (tmp_path / "out" / "h1499.err").read_bytes() == b""  # both files, always


def test_a_host_name_cannot_leave_the_out_dir(tmp_path: Path) -> None:
    renderer = Renderer(["../evil"], mode="out_dir", out_dir=tmp_path / "out", quiet=True,
                        fold=",".join)
    renderer.output("../evil", "stdout", b"x\n")
    renderer.done(Ended("../evil"))
    assert (tmp_path / "out" / ".._evil.out").read_bytes() == b"x\n"
    assert not (tmp_path / "evil.out").exists()


def test_flags_over_many_hosts_read_the_token_file_once(tmp_path: Path,
                                                        monkeypatch: Any) -> None:
    import rexec.config
    from rexec.cli.fleet import with_flags
    from rexec.client.options import ConnectOptions
    from rexec.fleet.target import Target
    from tests.helpers import write_token

    monkeypatch.delenv("REXEC_TOKEN", raising=False)
    monkeypatch.setenv("REXEC_HOME", str(tmp_path))
    token = write_token(tmp_path / "fleet.token", "fleet-token-0123456789abcdef")
    targets = [Target(f"h{i}", ConnectOptions.resolve(f"127.0.0.{i}:7878", token="x" * 20))
               for i in range(2, 52)]
    reads = []
    real = rexec.config.read_token_file
    monkeypatch.setattr(rexec.config, "read_token_file",
                        lambda path: reads.append(path) or real(path))
    changed = with_flags(targets, {"token_file": token, "identity": "ops"})
    assert len(reads) == 1
    assert [t.options.address for t in changed] == [t.options.address for t in targets]
    assert {(t.options.token, t.options.identity) for t in changed} == {
        ("fleet-token-0123456789abcdef", "ops")}
    assert changed[7].options.host == "127.0.0.9" and changed[7].name == "h9"


def test_a_keepalive_flag_overrides_the_inventory_even_when_it_is_zero() -> None:
    from rexec.cli.fleet import with_flags
    from rexec.client.options import ConnectOptions
    from rexec.fleet.target import Target

    targets = [Target("h2", ConnectOptions.resolve("127.0.0.2:7878", token="x" * 20,
                                                   keepalive=5, connect_timeout=4))]
    assert with_flags(targets, {"keepalive": None})[0].options.keepalive == 5
    off = with_flags(targets, {"keepalive": 0})[0].options
    assert (off.keepalive, off.connect_timeout, off.token) == (0, 4, "x" * 20)
    assert with_flags(targets, {"keepalive": 12.5})[0].options.keepalive == 12.5


def test_lines_of_one_pass_of_the_loop_go_out_in_one_write_each_run(monkeypatch: Any) -> None:
    import asyncio

    from rexec.cli import output

    writes: list[tuple[int, bytes]] = []
    monkeypatch.setattr(output, "write_fd", lambda fd, data: writes.append((fd, data)))
    writer = output.LineWriter()

    async def main() -> None:
        writer.write(1, b"a: 1\n")
        writer.write(1, b"b: 1\n")
        writer.write(2, b"a: oops\n")
        writer.write(1, b"c: 1\n")
        assert writes == []  # held until the pass ends
        await asyncio.sleep(0)
        assert writes == [(1, b"a: 1\nb: 1\n"), (2, b"a: oops\n"), (1, b"c: 1\n")]
        writer.write(1, b"d: 1\n")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert writes[-1] == (1, b"d: 1\n")
    writer.write(1, b"e: 1\n")  # no loop running: at once
    assert writes[-1] == (1, b"e: 1\n")


def test_a_burst_over_the_flush_size_is_written_without_waiting(monkeypatch: Any) -> None:
    import asyncio

    from rexec.cli import output

    writes: list[tuple[int, bytes]] = []
    monkeypatch.setattr(output, "write_fd", lambda fd, data: writes.append((fd, data)))
    monkeypatch.setattr(output, "LINES_FLUSH_SIZE", 100)
    writer = output.LineWriter()

    async def main() -> None:
        for i in range(30):
            writer.write(1, b"host: %02d\n" % i)  # 9 bytes a line
        assert len(writes) == 2 and all(len(data) >= 100 for _, data in writes)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert b"".join(data for _, data in writes) == b"".join(b"host: %02d\n" % i
                                                           for i in range(30))


def test_a_closed_stdout_is_reported_once_and_its_lines_dropped() -> None:
    from rexec.cli.output import LineWriter

    told: list[bool] = []
    r, w = os.pipe()
    saved = os.dup(1)
    try:
        os.dup2(w, 1)  # stdout a pipe whose reader has gone, as `| head` leaves it
        os.close(w)
        os.close(r)
        writer = LineWriter(lambda: told.append(True))
        writer.write(1, b"h1: a\n")
        assert writer.broken_pipe and told == [True]
        writer.write(1, b"h1: b\n")  # dropped, not reported again
        assert told == [True]
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def test_renderer_lines_keep_their_order_across_stdout_and_stderr(monkeypatch: Any) -> None:
    import asyncio

    from rexec.cli import output

    writes: list[tuple[int, bytes]] = []
    monkeypatch.setattr(output, "write_fd", lambda fd, data: writes.append((fd, data)))
    renderer = Renderer(["h1", "h2"], mode="lines", quiet=True, fold=",".join)

    async def main() -> None:
        renderer.output("h1", "stdout", b"one\ntw")
        renderer.output("h2", "stderr", b"warn\n")
        renderer.output("h1", "stdout", b"o\n")
        renderer.done(Ended("h1"))
        renderer.done(Ended("h2"))

    asyncio.run(main())
    assert writes == [(1, b"h1: one\n"), (2, b"h2: warn\n"), (1, b"h1: two\n")]


def test_a_transfer_s_json_line_has_its_fields_and_nulls_when_it_was_not_done() -> None:
    import json

    from rexec.cli.output import transfer_json
    from rexec.result import TransferResult

    done = TransferResult("/tmp/a", "/srv/a", 5, "ab" * 32, False, 0.2)
    line = json.loads(transfer_json(Ended("h1", duration=0.25, result=done), "x", "y"))
    assert line == {"host": "h1", "address": "127.0.0.1:7878", "status": "ok",
                    "local": "/tmp/a", "remote": "/srv/a", "bytes": 5, "sha256": "ab" * 32,
                    "changed": False, "duration": 0.25, "error": None}
    line = json.loads(transfer_json(Ended("h2", status="unreachable", error="refused"),
                                    "/tmp/a", "/srv/a"))
    assert (line["local"], line["remote"], line["status"], line["error"]) == (
        "/tmp/a", "/srv/a", "unreachable", "refused")
    assert line["bytes"] is None and line["sha256"] is None and line["changed"] is None


def test_the_renderer_writes_the_line_it_is_given_and_more_summary_unless_quiet(
        monkeypatch: Any) -> None:
    from rexec.cli import fleet, output

    writes: list[tuple[int, bytes]] = []
    monkeypatch.setattr(output, "write_fd", lambda fd, data: writes.append((fd, data)))
    monkeypatch.setattr(fleet, "write_fd", lambda fd, data: writes.append((fd, data)))

    from rexec.fleet.outcome import GroupResult, HostOutcome

    for quiet in (False, True):
        writes.clear()
        renderer = Renderer(["h1"], mode="json", quiet=quiet, fold=",".join,
                            line_json=lambda o: f'{{"mine": "{o.host}"}}',
                            more_summary=lambda result: ["unchanged: h1"])
        renderer.done(Ended("h1"))
        renderer.finish(GroupResult([HostOutcome("h1", "127.0.0.1:7878", "ok")]))
        assert (1, b'{"mine": "h1"}\n') in writes
        assert ((2, b"rexec: unchanged: h1\n") in writes) is not quiet
