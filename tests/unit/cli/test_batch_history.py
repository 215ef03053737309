"""BatchHistory: what ``rexec batch`` writes in the history for what the Group reports, and
how a history that fails mid-run is one warning, never the end of the batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from rexec.cli.batch import BatchHistory, _exit_code
from rexec.deploy.history import TAIL_BYTES, History
from rexec.fleet.batch import BatchCommand
from rexec.fleet.outcome import CommandOutcome, HostOutcome
from rexec.result import Result

COMMANDS = [BatchCommand(1, "echo one"), BatchCommand(3, "exit 4"), BatchCommand(4, "echo x")]


def recorder(tmp_path: Path) -> BatchHistory:
    made = BatchHistory.open(tmp_path / "h.sqlite", COMMANDS, name="b.txt", targets="@web",
                             options={"forks": 2})
    assert made is not None
    made.start()
    return made


def rows(tmp_path: Path) -> list[tuple[object, ...]]:
    with History.open(tmp_path / "h.sqlite") as h:
        run = h.runs()[0]
        return [(run.status, run.exit_status)] + [
            (r.host, r.step_index, r.step, r.status, r.exit_code, r.attempts, r.stdout_tail,
             r.stderr_tail, r.error) for r in h.results(run.id)]


def test_commands_as_they_end_then_those_a_host_never_ran(tmp_path: Path) -> None:
    batch = recorder(tmp_path)
    batch.output("a", "stdout", b"one\n")
    batch.output("b", "stdout", b"other host\n")
    batch.command("a", 0, "ok", CommandOutcome(1, "echo one", Result("echo one", 0)))
    batch.output("a", "stderr", b"no\n")
    batch.command("a", 1, "failed", CommandOutcome(3, "exit 4", Result("exit 4", 4)))
    batch.done(HostOutcome("a", "10.0.0.1", "failed"))
    batch.done(HostOutcome("b", "10.0.0.2", "unreachable", error="cannot connect"))
    batch.command("c", 0, "cancelled", CommandOutcome(1, "echo one", Result("echo one", None)))
    batch.done(HostOutcome("c", "10.0.0.3", "cancelled"))
    batch.finish(3)
    assert rows(tmp_path) == [
        ("unreachable", 3),
        ("a", 0, "echo one", "ok", 0, 1, b"one\n", b"", None),
        ("a", 1, "exit 4", "failed", 4, 1, b"", b"no\n", None),
        ("a", 2, "echo x", "skipped", None, 0, b"", b"", None),
        *[("b", n, c.command, "unreachable", None, 0, b"", b"", "cannot connect")
          for n, c in enumerate(COMMANDS)],  # b's streamed line went with its host's end
        ("c", 0, "echo one", "cancelled", None, 1, b"", b"", None),
        ("c", 1, "exit 4", "cancelled", None, 0, b"", b"", None),
        ("c", 2, "echo x", "cancelled", None, 0, b"", b"", None),
    ]


def test_a_command_s_output_is_kept_to_its_last_64_kib(tmp_path: Path) -> None:
    batch = recorder(tmp_path)
    chunks = [bytes([n % 256]) * 5000 for n in range(100)]  # ~500 KB
    for chunk in chunks:
        batch.output("a", "stdout", chunk)
    assert len(batch._tails["a", "stdout"]) <= 2 * TAIL_BYTES  # bounded while it streams
    batch.command("a", 0, "ok", CommandOutcome(1, "echo one", Result("echo one", 0)))
    batch.finish(0)
    assert rows(tmp_path)[1][6] == b"".join(chunks)[-TAIL_BYTES:]


@pytest.mark.parametrize(("exit_status", "given", "expected"), [
    (0, None, "ok"), (1, None, "failed"), (3, None, "unreachable"), (130, None, "cancelled"),
    (141, None, "cancelled"), (2, None, "failed"), (None, "interrupted", "interrupted"),
    (None, None, "failed")])
def test_the_run_s_status_follows_its_exit_status(tmp_path: Path, exit_status: int | None,
                                                  given: str | None, expected: str) -> None:
    batch = recorder(tmp_path)
    batch.finish(exit_status, given)
    assert rows(tmp_path)[0] == (expected, exit_status)


def test_a_history_that_fails_mid_run_is_one_warning_and_the_run_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = recorder(tmp_path)
    batch.command("a", 0, "ok", CommandOutcome(1, "echo one", Result("echo one", 0)))
    batch.history._conn.close()  # the file can no longer be written
    batch.command("a", 1, "ok", CommandOutcome(3, "exit 4", Result("exit 4", 0)))
    batch.output("a", "stdout", b"more")
    batch.command("a", 2, "ok", CommandOutcome(4, "echo x", Result("echo x", 0)))
    batch.done(HostOutcome("a", "10.0.0.1", "ok"))
    batch.finish(0)
    err = capsys.readouterr().err
    assert err.count("rexec: warning:") == 1, err
    assert "; the rest of this run is not recorded" in err
    assert batch.history is None and batch.run_id is None


def test_a_history_that_cannot_be_opened_is_one_warning(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    (tmp_path / "dir").mkdir()
    assert BatchHistory.open(tmp_path / "dir", COMMANDS, name="b", targets="a",
                             options={}) is None
    err = capsys.readouterr().err
    assert err.startswith(f"rexec: warning: cannot open the history {tmp_path / 'dir'}")
    assert err.count("\n") == 1 and "this run is not recorded" in err


def test_a_command_s_exit_code_is_its_shell_status_when_it_ended() -> None:
    assert _exit_code(None) is None
    assert _exit_code(Result("x", None)) is None  # cancelled, connection lost
    assert _exit_code(Result("x", 0)) == 0
    assert _exit_code(Result("x", 3)) == 3
    assert _exit_code(Result("x", None, signal=9)) == 137
    assert _exit_code(Result("x", None, timed_out=True)) == 124
