"""GroupResult: the statuses, the mapping of hosts that ran, the fleet-mode exit status."""

from __future__ import annotations

import pytest

from rexec.fleet.outcome import GroupResult, HostOutcome, status_of
from rexec.fleet.target import HostStatus
from rexec.result import Result


def outcome(host: str, status: HostStatus, exit_code: int | None = 0) -> HostOutcome:
    result = None if status in ("unreachable", "cancelled") else Result("c", exit_code)
    error = "cannot connect" if status == "unreachable" else None
    return HostOutcome(host, f"{host}:7878", status, result, error, duration=0.5)


@pytest.mark.parametrize(("statuses", "interrupted", "expected"), [
    ([], False, 0),
    (["ok", "ok"], False, 0),
    (["ok", "failed"], False, 1),
    (["ok", "timed_out"], False, 1),
    (["failed", "unreachable"], False, 3),
    (["ok", "unreachable"], False, 3),
    (["ok", "cancelled"], True, 130),
    (["unreachable", "cancelled"], True, 130),
    (["ok"], True, 130),
])
def test_the_exit_status(statuses: list[HostStatus], interrupted: bool, expected: int) -> None:
    result = GroupResult([outcome(f"h{n}", s) for n, s in enumerate(statuses)],
                         interrupted=interrupted)
    assert result.exit_status == expected


def test_the_views_of_a_result() -> None:
    result = GroupResult([outcome("a", "ok"), outcome("b", "failed", 2), outcome("c", "timed_out"),
                          outcome("d", "unreachable"), outcome("e", "cancelled")])
    assert list(result) == ["a", "b", "c"] and len(result) == 3
    assert result["b"].exit_code == 2 and "d" not in result
    assert result.statuses == {"a": "ok", "b": "failed", "c": "timed_out", "d": "unreachable",
                               "e": "cancelled"}
    assert (result.succeeded, result.failed, result.timed_out, result.cancelled) == (
        ["a"], ["b"], ["c"], ["e"])
    assert result.unreachable == {"d": "cannot connect"}
    assert not result.ok and result.durations["a"] == 0.5
    assert "5 hosts" in repr(result) and "ok=1" in repr(result)
    assert GroupResult([outcome("a", "ok")]).ok


def test_status_of_a_result() -> None:
    assert status_of(Result("c", 0)) == "ok"
    assert status_of(Result("c", 1)) == "failed"
    assert status_of(Result("c", None, signal=9)) == "failed"
    assert status_of(Result("c", None, signal=15, timed_out=True)) == "timed_out"
    assert status_of(Result("c", None, exceeded="max_output")) == "failed"
