"""ServerLimits and AuthPenalty, without a server."""

from __future__ import annotations

import pytest

from rexec import limits
from rexec.frames import Run
from rexec.limits import PENALTY_WINDOW, AuthPenalty, ServerLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(limits.time, "monotonic", fake)
    return fake


def test_penalty_grows_doubles_and_is_capped(clock: Clock) -> None:
    penalty = AuthPenalty(max_delay=3.0)
    assert penalty.delay("10.0.0.1") == 0.0
    delays = []
    for _ in range(6):
        penalty.failed("10.0.0.1")
        delays.append(penalty.delay("10.0.0.1"))
    assert delays == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert penalty.delay("10.0.0.2") == 0.0  # per source


def test_penalty_is_forgotten_after_the_window(clock: Clock) -> None:
    penalty = AuthPenalty(max_delay=3.0)
    for _ in range(5):
        penalty.failed("src")
    clock.now += PENALTY_WINDOW - 1
    assert penalty.delay("src") == 3.0
    clock.now += 2
    assert penalty.delay("src") == 0.0
    assert penalty.failed("src") == 1  # a new streak starts from one


def test_penalty_remembers_a_bounded_number_of_sources(clock: Clock) -> None:
    penalty = AuthPenalty(max_delay=3.0, max_sources=3)
    for n in range(10):
        penalty.failed(f"src{n}")
    assert sum(penalty.delay(f"src{n}") > 0 for n in range(10)) == 3
    assert penalty.delay("src9") > 0  # the newest are kept


def test_server_limits_refuse_long_commands_and_big_environments() -> None:
    lim = ServerLimits(max_command_length=10, max_env_bytes=10)
    assert lim.check(Run(command="echo hi")) is None
    refusal = lim.check(Run(command="echo " + "x" * 10))
    assert refusal is not None
    assert refusal.rule == "max_command_length"
    refusal = lim.check(Run(command="true", env={"A": "x" * 8}))
    assert refusal is not None
    assert refusal.rule == "max_env_bytes"
    assert lim.check(Run(command="true", env={"A": "x" * 7})) is None  # 1 + 7 + 2 bytes
    assert lim.check(Run(command="é" * 6)) is not None  # counted in UTF-8 bytes
