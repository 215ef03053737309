"""The in-process layer: a real Server (listener, sessions, handshake, admission, RunningCommand)
in the test's event loop, a real rexec.Client, and a runner whose children are scripted.

No process is started, so what the server does to a command (its output, budget, timeout,
signals, stdin credits, its slot, the end of the connection) is checked exactly and fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import rexec
from rexec.server.audit import AuditLog
from rexec.server.identity import Identities, Identity, Policy
from rexec.server.limits import ServerLimits
from rexec.server.listener import Server
from rexec.wire.auth import TokenVerifier
from rexec.wire.frames import STDIN_WINDOW
from tests.helpers import TOKEN, ScriptedChild, ScriptedRunner

Script = Callable[[str, bool], ScriptedChild]


@contextlib.asynccontextmanager
async def serving(script: Script, *, limits: ServerLimits | None = None,
                  policy: Policy | None = None,
                  audit: Path | None = None) -> AsyncIterator[tuple[Server, ScriptedRunner, str]]:
    runner = ScriptedRunner(script)
    identities = Identities({"default": Identity("default", TokenVerifier.from_token(TOKEN),
                                                 policy=policy or Policy())})
    log = AuditLog(audit)
    log.open()
    server = Server(identities, port=0, runner=runner, limits=limits, audit=log)  # type: ignore[arg-type]
    host, port = (await server.start())[0]
    try:
        yield server, runner, f"{host}:{port}"
    finally:
        await server.close()


def test_output_of_both_streams_arrives_whole_and_in_order() -> None:
    out = [bytes([i]) * (1000 + i) for i in range(50)]
    err = [b"warning %d\n" % i for i in range(30)]

    async def main() -> rexec.Result:
        async with serving(lambda cmd, stdin: ScriptedChild(out, err, exit_code=3)) as (
                _, runner, address):
            async with rexec.Client(address, token=TOKEN) as client:
                result = await client.run("make")
            assert runner.started[0]["command"] == "make"
            return result

    result = asyncio.run(main())
    assert result.stdout == b"".join(out)
    assert result.stderr == b"".join(err)
    assert (result.exit_code, result.stdout_bytes) == (3, len(b"".join(out)))


def test_the_output_budget_stops_the_command_and_sends_exactly_the_budget() -> None:
    children: list[ScriptedChild] = []

    def script(cmd: str, stdin: bool) -> ScriptedChild:
        children.append(ScriptedChild([b"x" * 6, b"y" * 6], [b"z" * 6], hang=True))
        return children[-1]

    async def main() -> rexec.Result:
        async with serving(script, limits=ServerLimits(max_output=10)) as (_, _r, address), \
                rexec.Client(address, token=TOKEN) as client:
            return await client.run("yes")

    result = asyncio.run(main())
    assert result.exceeded == "max_output"
    assert len(result.stdout) + len(result.stderr) == 10
    assert children[0].exceeded == "max_output" and "terminate" in children[0].events


def test_the_timeout_expires_a_hanging_command() -> None:
    child: list[ScriptedChild] = []

    async def main() -> rexec.Result:
        def script(cmd: str, stdin: bool) -> ScriptedChild:
            child.append(ScriptedChild([b"started\n"], hang=True))
            return child[0]

        async with serving(script) as (_, _r, address), \
                rexec.Client(address, token=TOKEN) as client:
            return await client.run("sleep 1000", timeout=0.2)

    result = asyncio.run(main())
    assert result.timed_out and result.signal == signal.SIGTERM
    assert result.stdout == b"started\n"
    assert child[0].timed_out and child[0].closed


def test_a_signal_frame_reaches_the_group_and_a_cancel_terminates_it() -> None:
    children: list[ScriptedChild] = []

    def script(cmd: str, stdin: bool) -> ScriptedChild:
        children.append(ScriptedChild([b"ready\n"], hang=True))
        return children[-1]

    async def main() -> rexec.Result | None:
        async with serving(script) as (_, _r, address), \
                rexec.Client(address, token=TOKEN) as client:
            stream = client.stream("top")
            async for _chunk in stream:
                core = client._core
                assert core is not None
                core.send_signal("USR1")  # recorded, does not end the script
                core.send_signal("INT")
                client._flush(core)
            return stream.result

    result = asyncio.run(main())
    assert result is not None and result.signal == signal.SIGINT
    assert children[0].signals == [signal.SIGUSR1, signal.SIGINT]


def test_stdin_beyond_the_window_is_fed_and_credited_back() -> None:
    data = bytes(range(256)) * (3 * STDIN_WINDOW // 256 + 7)  # three windows and a bit

    async def main() -> tuple[rexec.Result, ScriptedRunner]:
        async with serving(lambda cmd, stdin: ScriptedChild(echo=True, stdin=stdin)) as (
                _, runner, address):
            async with rexec.Client(address, token=TOKEN) as client:
                result = await asyncio.wait_for(client.run("cat", stdin=data), 30)
            return result, runner

    result, runner = asyncio.run(main())
    assert result.stdout == data and result.exit_code == 0
    assert bytes(runner.children[0].fed) == data
    assert runner.started[0]["stdin"] is True


def test_a_client_that_vanishes_gets_its_command_terminated_and_its_slot_freed(
        tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    children: list[ScriptedChild] = []

    def script(cmd: str, stdin: bool) -> ScriptedChild:
        children.append(ScriptedChild([b"tick\n"], hang=True))
        return children[-1]

    async def slot_freed(server: Server) -> bool:
        for _ in range(250):
            if not server.state.active_commands["default"]:
                return True
            await asyncio.sleep(0.02)
        return False

    async def main() -> list[bool]:
        freed = []
        async with serving(script, policy=Policy(max_commands=1), audit=audit) as (
                server, _r, address):
            for _ in range(2):  # with max_commands = 1, the second runs only if the slot is free
                client = rexec.Client(address, token=TOKEN)
                await client.connect()
                stream = client.stream("tail -f log")
                chunks = aiter(stream)
                assert (await anext(chunks)).data == b"tick\n"
                await client.close()  # gone mid-command, without a cancel
                freed.append(await slot_freed(server))
        return freed

    assert asyncio.run(main()) == [True, True]
    assert len(children) == 2
    assert "terminate" in children[0].events and children[0].closed
    runs = [json.loads(line) for line in audit.read_text().splitlines()]
    ended = [r for r in runs if r.get("event") == "command" and r.get("decision") == "run"]
    assert ended and ended[0]["signal"] == signal.SIGTERM


def test_a_spawn_failure_is_a_spawn_failed_error_and_the_connection_goes_on() -> None:
    def script(cmd: str, stdin: bool) -> ScriptedChild:
        if cmd == "missing":
            raise FileNotFoundError(2, "No such file or directory", "missing")
        return ScriptedChild([b"ok\n"])

    async def main() -> tuple[str, str, bytes]:
        async with serving(script) as (_, _r, address):
            async with rexec.Client(address, token=TOKEN) as client:
                with pytest.raises(rexec.RemoteError) as failed:
                    await client.run("missing")
                again = await client.run("fine")
            return failed.value.code, str(failed.value), again.stdout

    code, message, stdout = asyncio.run(main())
    assert code == "spawn_failed" and "No such file or directory" in message
    assert stdout == b"ok\n"


def test_a_shutdown_lets_the_running_command_finish_then_says_shutting_down() -> None:
    children: list[ScriptedChild] = []

    def script(cmd: str, stdin: bool) -> ScriptedChild:
        children.append(ScriptedChild([b"working\n"], hang=True))
        return children[-1]

    async def main() -> tuple[rexec.Result, str]:
        async with serving(script) as (server, _r, address):
            async with rexec.Client(address, token=TOKEN) as client:
                run = asyncio.create_task(client.run("deploy"))
                while not children:
                    await asyncio.sleep(0.01)
                stopping = asyncio.create_task(server.shutdown(grace=10.0))
                await asyncio.sleep(0.1)
                assert not run.done()  # the grace lets it go on
                children[0].finish(0)
                result = await run
                with pytest.raises(rexec.RexecError) as after:
                    await client.run("again")
                await stopping
            return result, str(after.value)

    result, after = asyncio.run(main())
    assert result.exit_code == 0 and result.stdout == b"working\n"
    assert "shutting down" in after


class SlowSpawns(ScriptedRunner):
    """Children that take until ``go`` is set to start (as a spawn off the event loop may)."""

    def __init__(self, script: Script) -> None:
        super().__init__(script)
        self.go = asyncio.Event()
        self.spawning = asyncio.Event()

    async def spawn_shell(self, command: str, env: object, cwd: str | None = None,
                          stdin: bool = False, confine: object = None) -> ScriptedChild:
        self.spawning.set()
        await self.go.wait()
        return self.start_shell(command, env, cwd, stdin, confine)


@contextlib.asynccontextmanager
async def slow_server(runner: SlowSpawns, policy: Policy, audit: Path
                      ) -> AsyncIterator[tuple[Server, str]]:
    identities = Identities({"default": Identity("default", TokenVerifier.from_token(TOKEN),
                                                 policy=policy)})
    log = AuditLog(audit)
    log.open()
    server = Server(identities, port=0, runner=runner, audit=log)  # type: ignore[arg-type]
    host, port = (await server.start())[0]
    try:
        yield server, f"{host}:{port}"
    finally:
        await server.close()


def test_a_command_holds_its_max_commands_slot_while_its_child_starts(tmp_path: Path) -> None:
    runner = SlowSpawns(lambda cmd, stdin: ScriptedChild([b"one\n"]))

    async def main() -> tuple[str, rexec.Result]:
        async with slow_server(runner, Policy(max_commands=1), tmp_path / "audit") as (
                _, address), rexec.Client(address, token=TOKEN) as first, \
                    rexec.Client(address, token=TOKEN) as second:
            running = asyncio.ensure_future(first.run("one"))
            await runner.spawning.wait()
            with pytest.raises(rexec.RexecError) as refused:
                await second.run("two")
            runner.go.set()
            return str(refused.value), await running

    refused, result = asyncio.run(main())
    assert "max_commands" in refused
    assert result.stdout == b"one\n" and result.exit_code == 0


def test_a_server_closed_while_a_child_starts_stops_and_audits_it(tmp_path: Path) -> None:
    """The cancel waits for the child: it is then supervised, stopped and audited."""
    children: list[ScriptedChild] = []

    def script(cmd: str, stdin: bool) -> ScriptedChild:
        children.append(ScriptedChild([b"never read\n"], hang=True))
        return children[-1]

    runner = SlowSpawns(script)
    audit = tmp_path / "audit"

    async def main() -> None:
        async with slow_server(runner, Policy(), audit) as (server, address):
            client = rexec.Client(address, token=TOKEN)
            await client.connect()
            running = asyncio.ensure_future(client.run("sleep 100"))
            await runner.spawning.wait()
            closing = asyncio.ensure_future(server.close())
            await asyncio.sleep(0.05)
            runner.go.set()  # the child exists only now, after the server began to close
            await closing
            with pytest.raises(rexec.RexecError):
                await running
            await client.close()

    asyncio.run(main())
    assert len(children) == 1 and children[0].closed
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    commands = [r.get("decision") for r in records if r.get("event") == "command"]
    assert commands == ["started", "run"]


def test_a_transfer_has_one_info_log_line_and_both_audit_records(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # As a command has one log line at its end, so has a transfer; its start is at debug
    # level, while the audit log keeps both records (a transfer is audited before it acts).
    audit = tmp_path / "audit.jsonl"
    target = tmp_path / "app.conf"

    async def main() -> None:
        async with serving(lambda cmd, stdin: ScriptedChild([], []), audit=audit) as (
                _, _r, address), rexec.Client(address, token=TOKEN) as client:
            await client.put_data(b"listen 8080\n", str(target))

    with caplog.at_level("DEBUG", logger="rexec.server"):
        asyncio.run(main())
    lines = [(r.levelname, json.loads(r.getMessage())) for r in caplog.records
             if r.name == "rexec.server" and '"transfer"' in r.getMessage()]
    assert [(level, line["result"]) for level, line in lines] == [
        ("DEBUG", "started"), ("INFO", "ok")]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["result"] for r in records if r["event"] == "transfer"] == ["started", "ok"]
