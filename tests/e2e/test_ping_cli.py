"""The real ``rexec ping`` and ``rexec discover`` against real ``rexec-server`` processes:
19 loopback "hosts" (127.0.0.120-138) served by two server processes on one port, answering
UDP probes on their TCP port; ``down`` (127.0.0.139) has nothing listening and ``lost`` is a
name that does not resolve. Loopback only."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rexec._version import __version__
from tests.helpers import ServerProcess, port_free_on, run_cli, start_server, write_token

UP = [f"127.0.0.{120 + i}" for i in range(19)]
DOWN = "127.0.0.139"
SPLITS = (0, 10, len(UP))  # two server processes: 10 and 9 addresses
WEB = [f"web{n:02d}" for n in range(1, len(UP) + 1)]
FAST = ("-i", "0.2", "-W", "0.5")


@dataclass
class Servers:
    port: int
    processes: list[ServerProcess]
    inventory: Path
    token_file: Path
    wrong_token_file: Path

    def cli(self, command: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``rexec COMMAND --inventory FILE ARGS...``, as a user runs it."""
        return run_cli(command, "--inventory", str(self.inventory), *args, timeout=60)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("ping")
    port = port_free_on([*UP, DOWN])
    processes: list[ServerProcess] = []
    try:
        for n, (start, end) in enumerate(itertools.pairwise(SPLITS)):
            tmp = folder / f"server{n}"
            tmp.mkdir()
            hosts = [arg for host in UP[start:end] for arg in ("--host", host)]
            processes.append(start_server(tmp, *hosts, "--port", str(port),
                                          env={"REXEC_HOME": str(tmp)},
                                          listeners=end - start))
        inventory = folder / "inventory.toml"
        inventory.write_text(f"""
[defaults]
port = {port}

[hosts."web[01-{len(UP)}]"]
address = "127.0.0.[120-138]"

[hosts.down]
address = "{DOWN}"

[hosts.lost]
address = "nohost.invalid"

[groups.all]
hosts = ["web[01-{len(UP)}]", "down"]

[groups.some]
hosts = ["web[01-03]", "down", "lost"]
""")
        yield Servers(port, processes, inventory, write_token(folder / "token"),
                      write_token(folder / "wrong", "not-the-right-token-0123456789"))
    finally:
        stopped = [(process.stop(), process) for process in processes]
        for code, process in stopped:
            assert code == 0, process.log()[-3000:]


def lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


# -- one host ----------------------------------------------------------------------------------


def test_ping_an_address_three_times_with_the_token(servers: Servers) -> None:
    address = f"{UP[0]}:{servers.port}"
    done = run_cli("ping", address, "-c", "3", *FAST, "--token-file", str(servers.token_file))
    assert done.returncode == 0, done.stderr
    out = lines(done.stdout)
    assert out[0] == f"PING {address}: 512-byte UDP probes, identity 'default'"
    replies = [line for line in out if line.startswith("reply from")]
    assert [line.split()[3] for line in replies] == ["seq=1", "seq=2", "seq=3"]
    assert all(line.startswith(f"reply from {address}: seq=") and " ms protocol=" in line
               and line.endswith(" tls=no auth=yes") for line in replies), replies
    assert f"--- {address} rexec ping statistics ---" in out
    assert "3 probes sent, 3 received, 0% loss" in out
    assert any(line.startswith("rtt min/avg/max = ") and line.endswith(" ms") for line in out)


def test_without_a_token_every_reply_says_it_was_unauthenticated(servers: Servers) -> None:
    done = run_cli("ping", f"{UP[1]}:{servers.port}", "-c", "2", *FAST)
    assert done.returncode == 0, done.stderr
    out = lines(done.stdout)
    assert out[0].endswith("no token: unauthenticated")
    replies = [line for line in out if line.startswith("reply from")]
    assert len(replies) == 2 and all(line.endswith("auth=no") for line in replies)


def test_with_the_wrong_token_the_replies_are_unauthenticated(servers: Servers) -> None:
    done = run_cli("ping", f"{UP[2]}:{servers.port}", "-c", "2", *FAST, "--json",
                   "--token-file", str(servers.wrong_token_file))
    assert done.returncode == 0, done.stderr
    (line,) = lines(done.stdout)
    found = json.loads(line)
    assert (found["received"], found["authenticated"], found["name"]) == (2, False, None)
    assert found["forged"] == 0


def test_json_for_one_host_is_one_object_with_the_authenticated_fields(
        servers: Servers) -> None:
    done = run_cli("ping", f"{UP[3]}:{servers.port}", "-c", "2", *FAST, "--json",
                   "--token-file", str(servers.token_file))
    assert done.returncode == 0, done.stderr
    (line,) = lines(done.stdout)
    found = json.loads(line)
    assert {key: found[key] for key in ("host", "address", "port", "sent", "received",
                                        "loss", "authenticated", "tls", "version", "error")
            } == {"host": f"{UP[3]}:{servers.port}", "address": UP[3], "port": servers.port,
                  "sent": 2, "received": 2, "loss": 0.0, "authenticated": True, "tls": False,
                  "version": __version__, "error": None}
    assert isinstance(found["protocol"], int) and found["name"]
    assert 0 < found["rtt_min"] <= found["rtt_avg"] <= found["rtt_max"]


def test_nothing_listening_is_all_loss_and_exit_1(servers: Servers) -> None:
    done = run_cli("ping", f"{DOWN}:{servers.port}", "-c", "2", *FAST)
    assert done.returncode == 1, done.stderr
    out = lines(done.stdout)
    assert [line for line in out if line.startswith("no reply from")] == [
        f"no reply from {DOWN}:{servers.port}: seq={n} (timed out after 0.5 s)" for n in (1, 2)]
    assert "2 probes sent, 0 received, 100% loss" in out


def test_an_inventory_host_is_one_host(servers: Servers) -> None:
    done = servers.cli("ping", "web05", "-c", "1", *FAST)
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout)[0].startswith(f"PING web05 ({UP[4]}:{servers.port}): ")


def test_a_name_that_does_not_resolve_exits_3(servers: Servers) -> None:
    done = run_cli("ping", "nohost.invalid", "-c", "1")
    assert done.returncode == 3
    assert b"cannot resolve nohost.invalid" in done.stderr


# -- many hosts --------------------------------------------------------------------------------


def test_a_group_of_twenty_with_one_down_exits_1_naming_it(servers: Servers) -> None:
    done = servers.cli("ping", "@all", *FAST, "--token-file", str(servers.token_file))
    assert done.returncode == 1, done.stderr
    out = lines(done.stdout)
    assert [line.split()[0] for line in out] == [*WEB, "down"]
    for name, address, line in zip(WEB, UP, out, strict=False):
        assert line.startswith(f"{name} ({address}:{servers.port})")
        assert ": xmt/rcv/%loss = 3/3/0%, min/avg/max = " in line and line.endswith(
            " ms, auth=yes"), line
    assert out[-1].endswith(": xmt/rcv/%loss = 3/0/100%, no reply")
    assert "did not answer: down" in done.stderr.decode()


def test_a_group_s_json_lines_parse_one_by_one(servers: Servers) -> None:
    done = servers.cli("ping", "@all", "-c", "2", *FAST, "--json")
    assert done.returncode == 1, done.stderr
    objects = [json.loads(line) for line in lines(done.stdout)]
    assert [o["host"] for o in objects] == [*WEB, "down"]
    assert all(o["received"] == 2 and o["authenticated"] is False for o in objects[:-1])
    assert objects[-1]["received"] == 0 and objects[-1]["rtt_avg"] is None


def test_an_unresolvable_host_in_a_group_exits_3_before_1(servers: Servers) -> None:
    done = servers.cli("ping", "@some", "-c", "1", *FAST)
    assert done.returncode == 3, done.stderr
    out = lines(done.stdout)
    assert out[-1].startswith("lost") and "cannot resolve nohost.invalid" in out[-1]
    assert any(line.startswith("down") and line.endswith("no reply") for line in out)


@pytest.mark.parametrize("args", [("-c", "0"), ("-i", "0"), ("-W", "100"), ("web[",)])
def test_bad_usage_exits_2(servers: Servers, args: tuple[str, ...]) -> None:
    target = () if args == ("web[",) else ("web01",)
    assert servers.cli("ping", *target, *args).returncode == 2


# -- discover --------------------------------------------------------------------------------


def test_discover_a_network_lists_every_server_in_it(servers: Servers) -> None:
    done = run_cli("discover", "127.0.0.128/28", "--port", str(servers.port), "--timeout", "1",
                   "--token-file", str(servers.token_file), timeout=60)
    assert done.returncode == 0, done.stderr
    header, *rows = lines(done.stdout)
    assert header.split() == ["ADDRESS", "PORT", "TLS", "PROTOCOL", "AUTH", "VERSION", "NAME"]
    assert [row.split()[0] for row in rows] == UP[9:]  # .129-.138 answer, .139-.142 do not
    assert all(row.split()[1:3] == [str(servers.port), "no"] for row in rows)
    assert all(row.split()[4:6] == ["yes", __version__] for row in rows)
    assert "10 servers answered (14 addresses probed)" in done.stderr.decode()


def test_discover_json_without_a_token_has_no_name_or_version(servers: Servers) -> None:
    done = run_cli("discover", f"{UP[0]}:{servers.port}", f"{DOWN}:{servers.port}",
                   "--timeout", "0.5", "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = lines(done.stdout)
    found = json.loads(line)
    assert (found["address"], found["port"], found["authenticated"]) == (UP[0], servers.port,
                                                                         False)
    assert found["name"] is None and found["version"] is None


def test_discover_finding_nothing_exits_1() -> None:
    done = run_cli("discover", f"{DOWN}/32", "--port", "9", "--timeout", "0.3")
    assert done.returncode == 1
    assert done.stdout == b""


def test_discover_needs_targets_or_a_broadcast_address() -> None:
    done = run_cli("discover")
    assert done.returncode == 2
    assert b"--broadcast" in done.stderr


def test_discover_refuses_a_network_too_large() -> None:
    done = run_cli("discover", "10.0.0.0/8")
    assert done.returncode == 2
    assert b"16,777,216 addresses" in done.stderr
