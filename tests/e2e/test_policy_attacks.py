"""The security review's attacks on command policy (issue 9, findings 11 and 12), against a server.

Finding 11: a backtracking allow pattern froze the event loop. Finding 12: deny patterns were
beaten by quoting in argv mode, and a negated class such as ``[^;&|]`` admitted a newline.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import rexec
from rexec import CommandNotStarted
from rexec.wire.auth import TokenVerifier
from tests.helpers import run_cli, start_server

READER_TOKEN = "reader-token-with-enough-entropy-0123456789"
ARGV_TOKEN = "argv-token-with-enough-entropy-9876543210"
REDOS = "cat ([a-z0-9/._-]+ ?)+"
# Python's re tries 2^n ways to split n letters among the group's repetitions before it gives
# up at the "!": 30 bytes took seconds; this one would take longer than the universe has left.
CRAFTED = "cat " + "a" * 32000 + "!"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy-attacks")
    config = tmp / "server.toml"
    config.write_text(f"""
[server]
audit_log = "audit.jsonl"

[server.identities.reader]
token_hash = "{TokenVerifier.from_token(READER_TOKEN).format()}"
allow = {json.dumps([REDOS, "ls[^;&|]*"])}

[server.identities.argv]
token_hash = "{TokenVerifier.from_token(ARGV_TOKEN).format()}"
shell = false
deny = {json.dumps(["id( .*)?", "(/usr)?(/bin/)?rm( .*)?"])}
""")
    server = start_server(tmp, "--config", str(config))
    server.audit = tmp / "audit.jsonl"  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0, server.log()


def refusals(srv) -> list[dict]:
    records = [json.loads(line) for line in srv.audit.read_text().splitlines()]
    return [r for r in records if r.get("decision") == "refused"]


def test_a_backtracking_pattern_does_not_freeze_the_server(srv):
    """Finding 11. The old server matched with re on its event loop: the first crafted command
    held the loop for good, and no other connection was served again."""
    latencies: list[float] = []

    async def attack(client: rexec.Client) -> None:
        for _ in range(10):
            started = time.monotonic()
            with pytest.raises(CommandNotStarted, match="allow list"):
                await client.run(CRAFTED)
            latencies.append(time.monotonic() - started)

    async def bystander(client: rexec.Client) -> bytes:
        while not latencies:  # the attack is under way
            await asyncio.sleep(0.001)
        return (await client.run("echo served")).stdout

    async def main() -> bytes:
        async with rexec.Client(srv.address, token=READER_TOKEN, identity="reader") as attacker, \
                rexec.Client(srv.address, token=srv.token) as other:
            _, served = await asyncio.wait_for(
                asyncio.gather(attack(attacker), bystander(other)), timeout=5)
            return served

    assert asyncio.run(main()) == b"served\n"
    assert len(latencies) == 10
    assert max(latencies) < 5
    assert rexec.run(srv.address, "cat /dev/null", token=READER_TOKEN, identity="reader").ok


def test_a_newline_is_refused_where_there_is_an_allow_list(srv):
    """Finding 12. ``ls[^;&|]*`` looks safe, but [^;&|] admits a newline, and the shell runs each
    line: the old server ran ``id`` after ``ls /``."""
    with pytest.raises(CommandNotStarted, match="newline") as info:
        rexec.run(srv.address, "ls /\nid", token=READER_TOKEN, identity="reader")
    assert "command separator" in str(info.value)
    assert any(r["rule"] == "newline" and r["identity"] == "reader" for r in refusals(srv))
    assert b"etc" in rexec.run(srv.address, "ls /", token=READER_TOKEN, identity="reader").stdout


@pytest.mark.parametrize("spelling", [
    "i''d", '"id"', "'i'd", "\\id", 'i"d" -un', "'id' '-u'", "id ''", "/bin/rm -rf /nothing",
    "'rm' x",
])
def test_quoting_does_not_beat_a_deny_pattern_without_the_shell(srv, spelling):
    """Finding 12. In argv mode the old server matched the line as typed, so ``i''d`` was not
    ``id(...)?`` and ran id; now the patterns see the words re-quoted (``id``)."""
    with pytest.raises(CommandNotStarted, match=r"refused by deny\[[01]\]"):
        rexec.run(srv.address, spelling, token=ARGV_TOKEN, identity="argv")


def test_argv_mode_still_runs_the_parsed_words(srv):
    r = rexec.run(srv.address, "echo 'a  b' \"c;d\" i''d", token=ARGV_TOKEN, identity="argv")
    assert r.stdout == b"a  b c;d id\n"
    assert any(r["rule"] == "deny[0]" and r["identity"] == "argv" for r in refusals(srv))


def test_the_clients_start_up_never_imports_re2(srv):
    """RE2 is the server's: ``rexec run`` has a start-up budget (docs/benchmarks.md)."""
    r = run_cli("run", srv.address, "--", "true", env={"REXEC_TOKEN": srv.token,
                                                      "PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0, r.stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.decode().splitlines()
               if line.startswith("import time:")]
    assert "rexec.cli.run" in modules  # the profile really covers the client's imports
    assert not [m for m in modules if m.split(".")[0] in ("re2", "_re2")]
    assert "rexec.server.patterns" not in modules
