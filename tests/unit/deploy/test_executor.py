"""The executor's pure parts: how a rollout's exit status is chosen, how a command's end is
worded, what --diff masks, and what a resumed run takes from the history."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rexec.deploy.executor import (
    DeployReport,
    HostReport,
    Leftover,
    StepResult,
    _binary,
    _how,
)
from rexec.deploy.plan import Plan
from rexec.result import Result


def report(*states: str, stopped: bool = False, interrupted: bool = False) -> DeployReport:
    hosts = {f"h{n}": HostReport(f"h{n}", "a:1", 1, state=state)  # type: ignore[arg-type]
             for n, state in enumerate(states)}
    return DeployReport(hosts, stopped=stopped, interrupted=interrupted)


@pytest.mark.parametrize(("states", "stopped", "interrupted", "status", "word"), [
    (("ok", "ok"), False, False, 0, "ok"),
    (("ok", "failed"), False, False, 1, "failed"),
    (("failed", "unreachable"), False, False, 3, "unreachable"),
    (("unreachable", "never_reached"), True, False, 4, "stopped"),
    (("ok", "cancelled"), False, True, 130, "cancelled"),
    (("failed", "never_reached"), True, True, 130, "cancelled"),
])
def test_the_exit_status_takes_the_gravest_outcome(states: tuple[str, ...], stopped: bool,
                                                   interrupted: bool, status: int,
                                                   word: str) -> None:
    done = report(*states, stopped=stopped, interrupted=interrupted)
    assert (done.exit_status, done.status) == (status, word)


def test_a_host_report_counts_and_names_its_failure() -> None:
    host = HostReport("h", "a:1", 1, results=[
        StepResult("h", "a", 0, "run", "changed", changed=True),
        StepResult("h", "b", 1, "run", "skipped"),
        StepResult("h", "c", 2, "put", "failed", message="no space"),
    ])
    assert (host.count("changed"), host.count("skipped", "failed")) == (1, 2)
    assert host.failure is not None and host.failure.step == "c"


@pytest.mark.parametrize(("result", "words"), [
    (Result("x", 3), "exit 3"),
    (Result("x", None, signal=9), "killed by signal 9"),
    (Result("x", None, timed_out=True), "timed out"),
    (Result("x", None, stderr=b"refused by policy\n"), "refused by policy"),
    (Result("x", None), "did not start"),
])
def test_how_a_command_ended_in_a_few_words(result: Result, words: str) -> None:
    assert _how(result) == words


def test_binary_means_nul_or_not_utf8() -> None:
    assert not _binary("héllo\n".encode())
    assert _binary(b"a\0b") and _binary(b"\xff\xfe")


@dataclass
class Row:
    step_index: int
    step: str
    status: str
    changed: bool = False


def test_a_resumed_run_knows_what_each_host_completed(tmp_path: Path) -> None:
    (tmp_path / "plan.toml").write_text("""
name = "p"
targets = "h[1-3]"
[[steps]]
name = "a"
run = "true"
notify = ["restart"]
[[steps]]
name = "b"
run = "true"
[[handlers]]
name = "restart"
run = "true"
[health]
run = "true"
""")
    plan = Plan.load(tmp_path / "plan.toml")
    left = Leftover({})
    left.take("h1", [Row(0, "a", "changed", True), Row(1, "b", "failed")], plan)
    left.take("h2", [Row(0, "a", "changed", True), Row(1, "b", "ok"),
                     Row(2, "restart", "changed"), Row(3, "health", "ok")], plan)
    left.take("h3", [Row(0, "a", "ok")], plan)
    assert left.completed == {"h1": {0}, "h2": {0, 1}, "h3": {0}}
    assert left.notified["h1"] == {"restart"}  # still owed: its handler never ran
    assert left.notified["h2"] == set()  # it ran
    assert left.troubled == {"h1"} and left.healthy == {"h2"}
    # a later run's word on a host wins over the earlier one's
    left.take("h1", [Row(1, "b", "ok"), Row(2, "restart", "changed"), Row(3, "health", "ok")],
              plan)
    assert left.completed["h1"] == {0, 1} and "h1" not in left.troubled
    assert left.notified["h1"] == set() and "h1" in left.healthy
