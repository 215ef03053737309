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
