"""Runner.spawn and Runner.spawn_shell: the child started off the event loop keeps every
guarantee of Runner.start (server/exec/runner.py): its own session and process group, exactly
the environment given, the umask, the working directory through /proc/self/fd, no descriptor
of the server, and a cancel never leaves a process behind. A command starting while no other
child lives is spawned on the loop (nothing waits on it then); with one alive, on a thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rexec.server.exec import runner as runner_module
from rexec.server.exec.child import ChildProcess
from rexec.server.exec.runner import Confinement, Runner

STEP = 5.0

REPORT = """
import json, os
mask = os.umask(0)
print(json.dumps({"pid": os.getpid(), "sid": os.getsid(0), "pgrp": os.getpgrp(),
                  "umask": mask, "cwd": os.getcwd(), "env": dict(os.environ),
                  "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))}))
"""


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each child is started on, in order (``_popen`` spied on)."""
    names: list[str] = []
    real = runner_module._popen

    def recording(*args: object, **kwargs: object) -> object:
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner_module, "_popen", recording)
    return names


async def _output(child: ChildProcess) -> bytes:
    """Everything the child writes on stdout, once it has exited; the child closed and reaped."""
    buffer, out = bytearray(65536), bytearray()
    async with asyncio.timeout(STEP):
        while (count := await child.read_into(1, buffer)) > 0:
            out += buffer[:count]
        await child.wait()
        child.close()
        await child.reaped
    return bytes(out)


@contextlib.asynccontextmanager
async def _another_child(runner: Runner) -> AsyncIterator[ChildProcess]:
    """A child of ``runner`` alive meanwhile (killed and reaped after): spawns go to threads."""
    busy = runner.start(["sleep", "30"], _env())
    assert not runner.alone
    try:
        yield busy
    finally:
        busy.signal_group(signal.SIGKILL)
        await busy.wait()
        busy.close()
        await busy.reaped


def _env() -> dict[str, str]:
    # PYTHONCOERCECLOCALE=0: the reporting Python would add LC_CTYPE to its own environment
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ONLY": "this",
            "PYTHONCOERCECLOCALE": "0"}


@pytest.mark.parametrize("alone", [True, False], ids=["on-the-loop", "on-a-thread"])
@pytest.mark.parametrize("shell", [False, True])
def test_a_spawned_child_keeps_every_guarantee(tmp_path: Path, shell: bool, alone: bool
                                               ) -> None:
    workdir = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    leaked = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # a descriptor of the "server"
    os.set_inheritable(leaked, True)  # even an inheritable one must not reach the child

    async def main() -> dict[str, object]:
        runner = Runner()
        argv = [sys.executable, "-c", REPORT]
        confine = Confinement(umask=0o027)
        cwd = f"/proc/self/fd/{workdir}"
        async with contextlib.AsyncExitStack() as stack:
            if not alone:
                await stack.enter_async_context(_another_child(runner))
            if shell:
                child = await runner.spawn_shell(f"exec {sys.executable} -c '{REPORT}'",
                                                 _env(), cwd, False, confine)
            else:
                child = await runner.spawn(argv, _env(), cwd, False, confine)
            report: dict[str, object] = json.loads(await _output(child))
        runner.close()
        return report

    try:
        report = asyncio.run(main())
    finally:
        os.close(workdir)
        os.close(leaked)
    assert report["sid"] == report["pid"] == report["pgrp"]  # a new session, leading its group
    assert report["umask"] == 0o027
    assert report["cwd"] == str(tmp_path.resolve())
    env = dict(report["env"])  # type: ignore[call-overload]
    env.pop("PWD", None)  # sh exports PWD (the shell path); the direct path passes env as is
    env.pop("SHLVL", None)
    env.pop("_", None)
    assert env == _env()
    assert report["fds"] == [0, 1, 2, 3]  # 3: listdir's own descriptor of /proc/self/fd


def test_the_fork_happens_off_the_event_loop_thread(threads: list[str]) -> None:

    async def main() -> bytes:
        runner = Runner()
        async with _another_child(runner):
            child = await runner.spawn_shell("echo hi", _env())
            out = await _output(child)
        runner.close()
        return out

    assert asyncio.run(main()) == b"hi\n"
    busy, *spawned = threads  # the child alive meanwhile was started on the loop
    assert busy == threading.main_thread().name
    assert spawned and all(name.startswith("rexec-spawn") for name in spawned)


def test_a_command_alone_is_spawned_on_the_loop_and_the_next_one_meanwhile_on_a_thread(
        threads: list[str]) -> None:

    async def main() -> list[bytes]:
        runner = Runner()
        assert runner.alone
        first = await runner.spawn(["sleep", "0.5"], _env())  # alone: on the loop
        assert not runner.alone
        second = await runner.spawn_shell("echo two", _env())  # the first lives: a thread
        outs = [await _output(second), await _output(first)]
        assert runner.alone  # both closed: the next one is alone again
        third = await runner.spawn_shell("echo three", _env())
        outs.append(await _output(third))
        runner.close()
        return outs

    assert asyncio.run(main()) == [b"two\n", b"", b"three\n"]
    main_thread = threading.main_thread().name
    assert threads[0] == main_thread and threads[2] == main_thread
    assert threads[1].startswith("rexec-spawn")


def test_a_confined_child_is_started_on_the_loop_as_before(threads: list[str]) -> None:
    """rlimits need preexec_fn (fork, not vfork): that path stays on the event loop thread."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(soft, 512)

    async def main() -> bytes:
        child = await Runner().spawn_shell(
            "ulimit -n", _env(), confine=Confinement(rlimits=((resource.RLIMIT_NOFILE, limit),)))
        return await _output(child)

    assert asyncio.run(main()) == f"{limit}\n".encode()
    assert threads == [threading.main_thread().name]


def test_a_spawn_failure_raises_as_start_does() -> None:
    async def main() -> None:
        await Runner().spawn(["/nonexistent/program"], _env())

    with pytest.raises(FileNotFoundError):
        asyncio.run(main())


def test_a_cancelled_spawn_leaves_no_process(tmp_path: Path) -> None:
    """The caller is cancelled while the child starts: the child is killed and reaped."""
    marker = tmp_path / "pid"

    async def main() -> None:
        runner = Runner()
        started = threading.Event()
        real = runner_module._popen

        def slow(*args: object, **kwargs: object) -> object:
            started.set()
            popen = real(*args, **kwargs)  # type: ignore[arg-type]
            marker.write_text(str(popen.pid))
            threading.Event().wait(0.3)  # the cancel lands while this thread still works
            return popen

        with pytest.MonkeyPatch.context() as mp:
            busy = _another_child(runner)  # so that the spawn goes to a thread
            await busy.__aenter__()
            mp.setattr(runner_module, "_popen", slow)
            task = asyncio.ensure_future(runner.spawn_shell("sleep 30", _env()))
            while not started.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(STEP):
                while not marker.exists():
                    await asyncio.sleep(0.01)
            await busy.__aexit__(None, None, None)
        pid = int(marker.read_text())
        async with asyncio.timeout(STEP):  # killed, then reaped by the server: gone entirely
            while Path(f"/proc/{pid}").exists():
                await asyncio.sleep(0.02)
        runner.close()

    asyncio.run(main())
