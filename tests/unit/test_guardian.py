"""The guardian's order loop, on a real pipe and real process groups."""

from __future__ import annotations

import os
import subprocess

from rexec.guardian import guard


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
