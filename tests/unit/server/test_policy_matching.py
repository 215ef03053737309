"""What allow/deny patterns are matched against: argv mode's canonical words, and newlines.

Issue 9, finding 12: deny patterns were beaten by quoting (``i''d``, ``"id"``) in argv mode,
and a negated class such as ``[^;&|]`` admitted a newline, which the shell treats as a command
separator.
"""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.server.identity import Policy, Refusal
from rexec.server.patterns import Pattern
from rexec.wire.frames import Run

ARGV_DENY = Policy(shell=False, deny=(Pattern("id( .*)?"), Pattern("rm( .*)?")))


def run(command: str) -> Run:
    return Run(command=command)


def allow(*texts: str, shell: bool = True) -> Policy:
    """A policy with an allow list built as the config builds it (never_nl)."""
    return Policy(allow=tuple(Pattern(t, never_nl=True) for t in texts), shell=shell)


@st.composite
def spelled(draw: st.DrawFn, word: str) -> str:
    """``word`` spelled so that shlex reads it back: random chunks, bare, quoted or escaped."""
    out, i = [], 0
    while i < len(word):
        j = draw(st.integers(i + 1, len(word)))
        chunk = word[i:j]
        style = draw(st.sampled_from(["bare", "single", "double", "backslash"]))
        if style == "bare" and all(c.isalnum() or c in "-_./" for c in chunk):
            out.append(chunk)
        elif style == "single" and "'" not in chunk:
            out.append(f"'{chunk}'")
        elif style in ("single", "double"):
            escaped = "".join("\\" + c if c in '"\\' else c for c in chunk)  # shlex's rule
            out.append(f'"{escaped}"')
        else:
            out.append("".join("\\" + c for c in chunk))
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(["''", '""'])))  # empty quotes join, add nothing
        i = j
    return "".join(out)


WORD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n"),
               min_size=1, max_size=12)


@given(st.data(), st.sampled_from(["id", "rm"]), st.lists(WORD, max_size=3))
def test_random_quoting_of_a_denied_program_is_still_denied(
    data: st.DataObject, program: str, args: list[str]
) -> None:
    words = [program, *args]
    command = " ".join(data.draw(spelled(w)) for w in words)
    assert shlex.split(command) == words  # the spelling really runs the denied program
    refusal = ARGV_DENY.check(run(command))
    assert refusal is not None, command
    assert refusal.rule in ("deny[0]", "deny[1]")
    assert ARGV_DENY.argv(run(command)) == words


@given(st.data(), st.lists(WORD, min_size=1, max_size=5))
def test_every_spelling_of_the_same_words_is_matched_as_one_canonical_line(
    data: st.DataObject, words: list[str]
) -> None:
    command = " ".join(data.draw(spelled(w)) for w in words)
    canonical = Policy(shell=False).matched_text(command)
    assert canonical == shlex.join(words)
    assert shlex.split(canonical) == words  # unambiguous: the canonical line gives them back


@pytest.mark.parametrize(("command", "canonical"), [
    ("i''d", "id"),
    ('"id"', "id"),
    ("\\id -un", "id -un"),
    ("echo 'a b'", "echo 'a b'"),
    ('echo "a b"', "echo 'a b'"),
    ("echo a\\ b", "echo 'a b'"),
    ("echo 'a;b' '$HOME'", "echo 'a;b' '$HOME'"),
    ("echo   x\t y", "echo x y"),
    ("echo ''", "echo ''"),
    ("echo \"it's\"", "echo 'it'\"'\"'s'"),
])
def test_the_canonical_line(command: str, canonical: str) -> None:
    assert Policy(shell=False).matched_text(command) == canonical


def test_a_quoted_word_cannot_pass_for_two() -> None:
    """``echo [a-z]+( [a-z]+)*`` admits ``echo a b``, not one word "a b" nor "a;b"."""
    policy = allow(r"echo [a-z]+( [a-z]+)*", shell=False)
    assert policy.check(run("echo a b")) is None
    assert policy.check(run("'echo' \"a\" b")) is None
    for command in ("echo 'a b'", "echo a\\ b", "echo 'a;b'", "echo \"$(id)\""):
        refusal = policy.check(run(command))
        assert refusal is not None, command
        assert refusal.rule == "allow"


def test_the_refusal_names_the_rule_as_written() -> None:
    assert ARGV_DENY.check(run("i''d")) == Refusal("deny[0]", "refused by deny[0] = 'id( .*)?'")


@pytest.mark.parametrize("shell", [True, False])
@given(before=st.text(max_size=20), after=st.text(max_size=20))
def test_with_an_allow_list_no_command_with_a_newline_runs(
    shell: bool, before: str, after: str
) -> None:
    policy = allow(r"(?s).*", r"ls[^;&|]*", shell=shell)  # even a pattern that admits anything
    refusal = policy.check(run(f"{before}\n{after}".replace("\0", "")))
    assert refusal is not None
    assert refusal.rule in ("newline", "shell")  # argv mode may refuse an unsplittable line first


def test_the_newline_refusal_says_why() -> None:
    refusal = allow(r"ls[^;&|]*").check(run("ls /\nid"))
    assert refusal is not None
    assert refusal.rule == "newline"
    assert "command separator" in refusal.message


def test_deny_is_still_checked_before_the_newline_rule() -> None:
    policy = Policy(allow=(Pattern("ls.*", never_nl=True),), deny=(Pattern("(?s).*rm.*"),))
    refusal = policy.check(run("ls\nrm x"))
    assert refusal is not None
    assert refusal.rule == "deny[0]"


def test_deny_only_identities_keep_their_semantics() -> None:
    """No allow list: no newline rule, and deny patterns see newlines as they always did."""
    policy = Policy(deny=(Pattern("reboot"),))
    assert policy.check(run("uptime\nid")) is None
    assert Policy(deny=(Pattern("(?s).*reboot.*"),)).check(run("uptime\nreboot")) is not None


def test_known_property_a_shell_mode_deny_list_is_no_boundary() -> None:
    """Documented in SECURITY.md: with the shell, i''d runs id, and the line is what is matched."""
    policy = Policy(deny=(Pattern("id( .*)?"),))
    for command in ("i''d", '"id"', "\\id", "$(echo id)", "/usr/bin/i[d]"):
        assert policy.check(run(command)) is None
    assert Policy(deny=(Pattern("id( .*)?"),), shell=False).check(run("i''d")) is not None
