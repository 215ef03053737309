"""ProcessGroup on real process groups: signal only while pinned, terminate -> grace -> kill."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from rexec.server.exec.group import ProcessGroup

STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)")


def _start(script: str = STUBBORN) -> subprocess.Popen[bytes]:
    popen = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             start_new_session=True)
    assert popen.stdout is not None and popen.stdout.readline() == b"ready\n"
    return popen


class Owner:
    """What ChildProcess gives a group: whether the leader is pinned, and the after-kill hook."""

    def __init__(self) -> None:
        self.pinned = True
        self.kills = 0

    def group(self, popen: subprocess.Popen[bytes], grace: float = 5.0) -> ProcessGroup:
        return ProcessGroup(popen.pid, grace, pinned=lambda: self.pinned,
                            after_kill=self.killed)

    def killed(self) -> None:
        self.kills += 1


def _run(test: object) -> None:
    asyncio.run(test)  # type: ignore[arg-type]


def test_an_unpinned_group_is_never_signalled() -> None:
    async def main() -> None:
        popen, owner = _start(), Owner()
        try:
            group = owner.group(popen)
            owner.pinned = False  # as once the leader is reaped: the ID may be anyone's
            assert not group.signal(signal.SIGKILL)
            assert popen.poll() is None
            owner.pinned = True
            assert group.signal(signal.SIGKILL)
            assert popen.wait(10) == -signal.SIGKILL
        finally:
            popen.kill()
            popen.wait()
    _run(main())


def test_terminate_kills_what_ignores_sigterm_after_the_grace() -> None:
    async def main() -> None:
        popen, owner = _start(), Owner()
        try:
            group = owner.group(popen, grace=0.2)
            group.terminate()
            group.terminate()  # one SIGKILL timer, however often asked
            assert group.kill_due and popen.poll() is None
            await asyncio.sleep(0.5)
            assert not group.kill_due and owner.kills == 1
            assert popen.wait(10) == -signal.SIGKILL
        finally:
            popen.kill()
            popen.wait()
    _run(main())


def test_after_close_nothing_is_sent_but_a_due_sigkill() -> None:
    async def main() -> None:
        popen, owner = _start(), Owner()
        try:
            group = owner.group(popen, grace=60.0)
            group.expire()
            assert group.timed_out and group.kill_due
            group.close()
            assert not group.signal(signal.SIGKILL)
            assert popen.poll() is None
            group.kill_now()  # the SIGKILL due at the end of the grace goes out at once
            assert owner.kills == 1 and not group.kill_due
            assert popen.wait(10) == -signal.SIGKILL
        finally:
            popen.kill()
            popen.wait()
    _run(main())


def test_exceed_names_the_limit_and_terminates() -> None:
    async def main() -> None:
        popen, owner = _start("print('ready', flush=True); import time; time.sleep(60)"), Owner()
        try:
            group = owner.group(popen, grace=60.0)
            group.exceed("max_output")
            assert group.exceeded == "max_output" and not group.timed_out
            assert popen.wait(10) == -signal.SIGTERM
            group.kill_now()
            assert owner.kills == 1
        finally:
            popen.kill()
            popen.wait()
    _run(main())
