"""The guardian's order loop, on a real pipe and real process groups."""

from __future__ import annotations

import os
import subprocess

import pytest

from rexec.server.exec.guardian import guard


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"], start_new_session=True)


def test_groups_still_registered_at_eof_are_killed_and_forgotten_ones_are_not() -> None:
    watched, forgotten = _sleeper(), _sleeper()
    read, write = os.pipe()
    try:
        os.write(write, f"+{watched.pid}\n+{forgotten.pid}\n-{forgotten.pid}\n".encode())
        os.close(write)
        left = guard(read, kill_grace=0.1)
        assert left == {watched.pid}
        assert watched.wait(5) == -15  # SIGTERM first
        assert forgotten.poll() is None
    finally:
        os.close(read)
        for proc in (watched, forgotten):
            proc.kill()
            proc.wait()


def test_orders_split_across_reads_are_understood() -> None:
    proc = _sleeper()
    read, write = os.pipe()
    try:
        order = f"+{proc.pid}\n".encode()
        for byte in order:  # one byte per write; the guardian reassembles the line
            os.write(write, bytes([byte]))
        os.close(write)
        assert guard(read, kill_grace=0.1) == {proc.pid}
        assert proc.wait(5) == -15
    finally:
        os.close(read)
        proc.kill()
        proc.wait()


def _switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return sum(int(line.split()[1]) for line in fh if "ctxt_switches" in line)


def test_orders_do_not_wake_the_guardian_and_a_hang_up_does() -> None:
    """Each wake-up would cost the server a context switch per command; the hang-up must not
    wait for the next periodic read."""
    import sys
    import time

    sleeper = _sleeper()
    guardian = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rexec.server.exec.guardian import guard;"
         " print(sorted(guard(0, 0.1, drain_interval=30)), flush=True)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert guardian.stdin is not None and guardian.stdout is not None
    try:
        time.sleep(1.0)  # let it start and settle in epoll
        before = _switches(guardian.pid)
        for pgid in range(100_000, 100_300):  # forgotten at once: never signalled
            time.sleep(0.002)  # spaced as a server's commands are (back to back, the writes
            guardian.stdin.write(f"+{pgid}\n-{pgid}\n".encode())  # would share wake-ups)
            guardian.stdin.flush()
        time.sleep(0.2)
        woken = _switches(guardian.pid) - before
        assert woken < 20, f"the guardian woke {woken} times for 300 spaced orders"
        started = time.monotonic()
        guardian.stdin.write(f"+{sleeper.pid}\n".encode())
        guardian.stdin.close()  # the server "dies"
        assert guardian.stdout.readline() == f"[{sleeper.pid}]\n".encode()
        assert time.monotonic() - started < 5  # woken by the hang-up, not the 30 s interval
        assert sleeper.wait(5) == -15
        assert guardian.wait(10) == 0
    finally:
        for proc in (guardian, sleeper):
            proc.kill()
            proc.wait()
        guardian.stdout.close()


REUSED_DURING_THE_GRACE = r"""
import os, subprocess, threading
from rexec.server.exec.guardian import guard

leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
read, write = os.pipe()
os.write(write, f"+{leader.pid}\n".encode())
os.close(write)  # the server "died" with this group registered
guardian = threading.Thread(target=guard, args=(read, 1.0))
guardian.start()
leader.wait()  # its SIGTERM; reaped by its parent (init, once a server is dead): the ID is free
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(leader.pid - 1))  # within the kill grace, another group gets the ID
other = subprocess.Popen(["sleep", "30"], start_new_session=True)
guardian.join()  # the SIGKILL a kill grace later
group = os.getpgid(other.pid)
try:
    status = other.wait(1.0)
except subprocess.TimeoutExpired:
    status = None  # still alive
print(leader.pid, other.pid, group, status, flush=True)
other.kill()
"""


def _group_signals_by_pidfd() -> bool:
    import signal

    from rexec.server.exec.guardian import PIDFD_SIGNAL_PROCESS_GROUP

    pidfd = os.pidfd_open(os.getpid())
    try:
        signal.pidfd_send_signal(pidfd, 0, None, PIDFD_SIGNAL_PROCESS_GROUP)
    except ProcessLookupError:
        return True  # understood: pytest leads no group of its own
    except OSError:
        return False  # EINVAL: before Linux 6.9
    finally:
        os.close(pidfd)
    return True


@pytest.mark.skipif(not _group_signals_by_pidfd(), reason="needs Linux 6.9")
def test_the_sigkill_after_the_grace_misses_a_group_that_took_the_id_meanwhile() -> None:
    import sys

    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-c",
         REUSED_DURING_THE_GRACE], capture_output=True, timeout=60, check=True).stdout
    leader, other, other_group, status = out.split()
    assert other == other_group == leader  # the reuse did happen
    assert status == b"None", "the guardian's SIGKILL reached the group that got the ID"
