"""Allow/deny patterns compiled by RE2 (server/patterns.py), and how the config refuses bad ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rexec.config import load_settings
from rexec.errors import ConfigError
from rexec.server.patterns import Pattern, PatternError
from rexec.server.settings import ServerSettings

REDOS = r"cat ([a-z0-9/._-]+ ?)+"  # the finding's pattern: Python's re backtracks exponentially


def test_a_pattern_matches_whole_lines_and_keeps_its_source() -> None:
    pattern = Pattern(r"ls|id")
    assert pattern.pattern == "ls|id"
    assert pattern.fullmatch("ls")
    assert pattern.fullmatch("id")
    assert not pattern.fullmatch("ls; id")
    assert not pattern.fullmatch("lsid")
    assert Pattern("x") == Pattern("x")
    assert Pattern("x") != Pattern("x", never_nl=True)
    assert "x" in repr(Pattern("x"))


def test_the_backtracking_pattern_is_matched_in_linear_time() -> None:
    """With Python's re this fullmatch would not end in our lifetime (2^32000 paths)."""
    pattern = Pattern(REDOS)
    assert not pattern.fullmatch("cat " + "a" * 32000 + "!")
    assert pattern.fullmatch("cat " + "a/b.c " * 5000)
    assert re.fullmatch(REDOS, "cat " + "a" * 8 + "!") is None  # the same answers as re


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"(a)\1", r"invalid escape sequence: \1"),  # backreference
    (r"(?=x)x", "invalid perl operator: (?="),  # lookahead
    (r"(?<!x)y", "invalid perl operator: (?<"),  # lookbehind
    (r"a{1001}", "invalid repetition size: {1001}"),
    (r"(?:a{100}){100}", "invalid repetition size: {100}"),  # nested counts multiply
    (r"(", "missing ): ("),
    (r"x\C", r"\C (any byte) is not supported"),
])
def test_what_re2_cannot_take_is_refused_with_its_reason(
    pattern: str, reason: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(PatternError) as info:
        Pattern(pattern)
    assert str(info.value).startswith(reason)
    assert capfd.readouterr().err == ""  # log_errors off: absl prints nothing to stderr


def test_an_escaped_backslash_before_c_is_no_any_byte() -> None:
    assert Pattern(r"x\\C").fullmatch("x\\C")


@pytest.mark.parametrize("pattern", [
    r"ls .*", r"(?s)ls .*", r"(?s:ls .*)", r"ls[^;&|]*", r"ls\s.*", r"ls\n.*", r"ls\x0a.*",
    r"ls[\x00-\x7f]*", r"ls[[:space:]].*", r"ls\pC.*", r"ls(?m:$\n^).*", r"ls[^a]*",
])
def test_with_never_nl_no_pattern_matches_a_newline(pattern: str) -> None:
    """The allow lists' second guard, behind the newline rule."""
    assert not Pattern(pattern, never_nl=True).fullmatch("ls /\nrm -rf /")
    assert Pattern(pattern, never_nl=True).fullmatch("ls") == Pattern(pattern).fullmatch("ls")


def test_without_never_nl_a_negated_class_admits_a_newline() -> None:
    """Why allow patterns get never_nl: [^;&|] looks safe, and a newline separates commands."""
    assert Pattern(r"ls[^;&|]*").fullmatch("ls /\nrm -rf /")


def test_re2_classes_are_ascii() -> None:
    """A difference from re worth knowing: \\w, \\d and \\s are ASCII in RE2."""
    assert not Pattern(r"echo \w+").fullmatch("echo café")
    assert Pattern(r"echo [\w\pL]+").fullmatch("echo café")


def _settings(tmp_path: Path, body: str) -> ServerSettings:
    config = tmp_path / "server.toml"
    config.write_text(f'[server.identities.ops]\ncertificate = "CN=ops"\n{body}\n')
    return load_settings(ServerSettings, "server", config, environ={})


@pytest.mark.parametrize(("body", "field", "fragment"), [
    (r"allow = ['ok', '(a)\1']", "identities.ops.allow",
     r"bad regular expression '(a)\\1' (allow[1]): invalid escape sequence: \1; rexec matches"
     " with RE2, which has no backreferences or lookaround"),
    ("deny = ['(?!rm).*']", "identities.ops.deny",
     "bad regular expression '(?!rm).*' (deny[0]): invalid perl operator: (?!"),
    ("allow = ['x{5000}']", "identities.ops.allow", "invalid repetition size: {5000}"),
    ("allow = ['[a-']", "identities.ops.allow",
     "bad regular expression '[a-' (allow[0]): missing ]: [a-"),
])
def test_the_config_refuses_a_pattern_naming_identity_field_and_reason(
    tmp_path: Path, body: str, field: str, fragment: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(tmp_path, body)
    message = str(info.value)
    assert f"{field}: " in message
    assert fragment in message
    assert str(tmp_path / "server.toml") in message
    assert capfd.readouterr().err == ""


def test_a_pattern_re_takes_too_gets_no_re2_hint_when_re_refuses_it_as_well(
    tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(tmp_path, "allow = ['(']")
    assert "RE2" not in str(info.value)


def test_the_config_builds_allow_patterns_with_never_nl(tmp_path: Path) -> None:
    identity = _settings(tmp_path, "allow = ['ls[^;]*']\ndeny = ['(?s)rm.*']").identities[
        "ops"].identity("ops")
    assert identity.policy.allow == (Pattern("ls[^;]*", never_nl=True),)
    assert identity.policy.deny == (Pattern("(?s)rm.*"),)  # deny patterns lose nothing
    assert identity.policy.deny[0].fullmatch("rm x\nrm y")
