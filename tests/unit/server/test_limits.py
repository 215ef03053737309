"""ServerLimits, AuthPenalty, MaxStartups and StartupGate, without a server."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rexec.config import load_settings
from rexec.errors import ConfigError
from rexec.server import limits
from rexec.server.limits import PENALTY_WINDOW, AuthPenalty, MaxStartups, ServerLimits, StartupGate
from rexec.server.settings import ServerSettings
from rexec.wire.frames import Run


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


# --- who may wait unauthenticated: MaxStartups and StartupGate --------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("128:30:512", (128, 30, 512)),
    (" 10:100:60 ", (10, 100, 60)),
    ("16:1:16", (16, 1, 16)),
    ("16", (16, 100, 16)),
    (16, (16, 100, 16)),
    (1, (1, 100, 1)),
    (100_000, (100_000, 100, 100_000)),
])
def test_max_startups_parses_sshds_forms(value: object, expected: tuple[int, int, int]) -> None:
    parsed = MaxStartups.parse(value)
    assert (parsed.start, parsed.rate, parsed.full) == expected
    assert MaxStartups.parse(str(parsed)) == parsed  # str() is the canonical form


@pytest.mark.parametrize(("value", "fragment"), [
    ("60:30:10", "full (10) must be at least start (60)"),
    ("10:0:60", "rate (0) must be a percentage, 1 to 100"),
    ("10:101:60", "rate (101)"),
    ("0:30:60", "start (0) must be 1 to 100000"),
    ("10:30:100001", "at most 100000"),
    (0, "0 must be 1 to 100000"),
    (-5, "must be 1 to 100000"),
    ("100001", "must be 1 to 100000"),
    ("10:30", "is not \"start:rate:full\""),
    ("10:30:60:90", "is not"),
    ("a:b:c", "is not"),
    ("-1:30:60", "is not"),
    ("", "is not"),
    ("\uff11\uff16", "is not"),  # full-width digits: int() would take them; refused
    ("\uff11:30:60", "is not"),
    (True, "expected \"start:rate:full\""),
    (1.5, "expected"),
    (None, "expected"),
])
def test_max_startups_refuses_bad_values_saying_why(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        MaxStartups.parse(value)
    assert fragment in str(info.value)


def test_refusal_chance_follows_sshd() -> None:
    m = MaxStartups(10, 30, 60)
    assert [m.refusal_chance(n) for n in (0, 9)] == [0.0, 0.0]
    assert m.refusal_chance(10) == pytest.approx(0.30)
    assert m.refusal_chance(35) == pytest.approx(0.65)  # halfway: halfway to certainty
    assert m.refusal_chance(59) == pytest.approx(0.30 + 0.70 * 49 / 50)
    assert [m.refusal_chance(n) for n in (60, 61, 10_000)] == [1.0, 1.0, 1.0]
    single = MaxStartups.parse(16)  # a plain number: refuse beyond it, never before
    assert single.refusal_chance(15) == 0.0
    assert single.refusal_chance(16) == 1.0


@given(start=st.integers(1, 1000), extra=st.integers(0, 1000), rate=st.integers(1, 100),
       waiting=st.integers(0, 3000))
def test_refusal_chance_rises_from_rate_to_certainty(start: int, extra: int, rate: int,
                                                      waiting: int) -> None:
    m = MaxStartups(start, rate, start + extra)
    chance = m.refusal_chance(waiting)
    assert chance <= m.refusal_chance(waiting + 1)  # never falls as more wait
    if waiting < start:
        assert chance == 0.0
    elif waiting >= m.full:
        assert chance == 1.0
    else:
        assert rate / 100 - 1e-12 <= chance <= 1.0
        assert chance < 1.0 or rate == 100


class Dice:
    """A random source that returns what the test says."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value
        self.rolls = 0

    def __call__(self) -> float:
        self.rolls += 1
        return self.value


def test_gate_refuses_a_source_at_its_cap_and_lets_others_in() -> None:
    gate = StartupGate(MaxStartups.parse("100:30:200"), per_source=3, random=Dice())
    assert [gate.admit("10.0.0.1") for _ in range(3)] == [None, None, None]
    refusal = gate.admit("10.0.0.1")
    assert refusal is not None
    assert refusal.rule == "per_source_max_startups"
    assert "10.0.0.1 already has 3" in refusal.message
    assert gate.admit("10.0.0.2") is None  # another source is not held back
    assert (gate.waiting, gate.waiting_from("10.0.0.1")) == (4, 3)
    gate.release("10.0.0.1")  # one authenticated (or left): room for one more
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is not None


def test_gate_refuses_newcomers_between_start_and_full_by_chance_and_at_full_always() -> None:
    dice = Dice(0.5)
    gate = StartupGate(MaxStartups.parse("4:40:8"), per_source=100, random=dice)
    for n in range(4):
        assert gate.admit(f"10.0.0.{n}") is None  # below start
    assert dice.rolls == 0  # no dice below start
    # at 4 waiting the chance is 40%, at 5 55%, at 6 70%, at 7 85%: a roll of 0.5 gets in at 4
    assert gate.admit("a") is None
    refusal = gate.admit("b")  # at 5 waiting: 0.5 < 0.55
    assert refusal is not None
    assert refusal.rule == "max_startups"
    assert "5 unauthenticated connection(s) (max_startups = 4:40:8)" in refusal.message
    assert "55%" in refusal.message
    dice.value = 0.99
    assert [gate.admit(s) for s in "cde"] == [None, None, None]  # lucky rolls up to full
    assert gate.waiting == 8
    dice.value = 0.0
    assert gate.admit("f") is not None
    dice.value = 0.9999999
    assert gate.admit("f") is not None  # at full no roll gets in
    assert gate.waiting == 8  # refusals count nothing, and evict nobody


def test_gate_refuses_in_the_proportion_sshd_does() -> None:
    rng = random.Random(7)
    gate = StartupGate(MaxStartups.parse("10:30:60"), per_source=1000, random=rng.random)
    while gate.waiting < 35:  # 35 waiting: a newcomer is refused with probability 65%
        gate.admit("filler")
    refused = 0
    for _ in range(4000):  # each newcomer is released again: the count stays at 35
        if gate.admit("probe") is None:
            gate.release("probe")
        else:
            refused += 1
    assert refused / 4000 == pytest.approx(0.65, abs=0.03)


def test_gate_release_of_an_uncounted_source_is_a_bug() -> None:
    gate = StartupGate()
    with pytest.raises(ValueError, match="no unauthenticated connection"):
        gate.release("10.0.0.9")


def test_gate_defaults_are_the_documented_ones() -> None:
    gate = StartupGate()
    assert str(gate.max_startups) == "128:30:512"
    assert gate.per_source == 64


_SOURCES = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_gate_counts_stay_consistent(data: st.DataObject) -> None:
    thresholds = MaxStartups(data.draw(st.integers(1, 6)), data.draw(st.integers(1, 100)),
                             data.draw(st.integers(6, 10)))
    per_source = data.draw(st.integers(1, 5))
    rolls = data.draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=1))
    roll = iter(rolls * 100)
    gate = StartupGate(thresholds, per_source, random=lambda: next(roll))
    admitted: list[str] = []
    for _ in range(data.draw(st.integers(0, 60))):
        source = data.draw(_SOURCES)
        if admitted and data.draw(st.booleans()):
            gone = admitted.pop(data.draw(st.integers(0, len(admitted) - 1)))
            gate.release(gone)
        else:
            before = gate.waiting
            mine = admitted.count(source)
            refusal = gate.admit(source)
            if refusal is None:
                admitted.append(source)
                assert mine < per_source and before < thresholds.full
            else:
                assert gate.waiting == before  # a refusal counts nothing
                assert mine >= per_source or before >= thresholds.start
        assert gate.waiting == len(admitted) <= thresholds.full
        for s in "abcd":
            assert gate.waiting_from(s) == admitted.count(s) <= per_source


def _settings(**table: object) -> ServerSettings:
    return load_settings(ServerSettings, "server", None, cli=table, environ={})


def test_settings_take_either_form_and_default_to_128_30_512() -> None:
    assert _settings().max_startups == "128:30:512"
    assert _settings().per_source_max_startups == 64
    assert _settings(max_startups=16).max_startups == "16:100:16"
    assert _settings(max_startups="16").max_startups == "16:100:16"
    assert _settings(max_startups="10:30:60").max_startups == "10:30:60"
    assert _settings(per_source_max_startups=2000).per_source_max_startups == 2000


@pytest.mark.parametrize(("table", "fragment"), [
    ({"max_startups": "600:30:512"}, "max-startups: full (512) must be at least"
                                     " start (600)"),
    ({"max_startups": "10:0:60"}, "max-startups: rate (0)"),
    ({"max_startups": "ten"}, "max-startups: 'ten' is not"),
    ({"max_startups": 0}, "max-startups: 0 must be 1 to 100000"),
    ({"max_startups": True}, "max-startups: expected"),
    ({"per_source_max_startups": 0}, "per-source-max-startups: Input should be greater than"),
    ({"per_source_max_startups": "many"}, "per-source-max-startups: Input should be a valid"),
])
def test_settings_errors_name_the_field(table: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(**table)
    assert fragment in str(info.value)


def test_config_file_forms(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[server]\nmax_startups = "32:50:64"\nper_source_max_startups = 8\n')
    settings = load_settings(ServerSettings, "server", path, environ={})
    assert (settings.max_startups, settings.per_source_max_startups) == ("32:50:64", 8)
    path.write_text("[server]\nmax_startups = 20\n")
    assert load_settings(ServerSettings, "server", path, environ={}).max_startups == "20:100:20"
