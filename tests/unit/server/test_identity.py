"""Identities and command policy (server/identity.py), and their settings (IdentitySettings)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from pydantic import ValidationError

from rexec.config import load_settings
from rexec.errors import ConfigError
from rexec.server.exec.workdir import WorkDirError
from rexec.server.identity import (
    DEFAULT_IDENTITY,
    UNRESTRICTED,
    Identities,
    Identity,
    Policy,
    Refusal,
)
from rexec.server.patterns import Pattern
from rexec.server.settings import IdentitySettings, ServerSettings
from rexec.tls import parse_subject as dn
from rexec.wire import auth
from rexec.wire.frames import Run

TOKEN = "identity-test-token"


def run(command: str = "true", **kwargs: object) -> Run:
    return Run(command=command, **kwargs)  # type: ignore[arg-type]


def patterns(*texts: str) -> tuple[Pattern, ...]:
    return tuple(Pattern(t) for t in texts)


# --- Policy.check: allow and deny ----------------------------------------------------------


@pytest.mark.parametrize("command", ["true", "rm -rf /", "ls; id", "echo $(id) > /tmp/x"])
def test_the_unrestricted_policy_allows_anything(command: str) -> None:
    assert UNRESTRICTED.check(run(command)) is None
    assert Policy() == UNRESTRICTED


def test_deny_is_checked_before_allow() -> None:
    policy = Policy(allow=patterns(r"rm .*", r"ls"), deny=patterns(r"rm -rf .*", r"rm -r .*"))
    assert policy.check(run("rm old.log")) is None
    refusal = policy.check(run("rm -rf /"))  # allowed by allow[0], denied by deny[0]
    assert refusal == Refusal("deny[0]", "refused by deny[0] = 'rm -rf .*'")
    refusal = policy.check(run("rm -r /srv"))
    assert refusal is not None
    assert refusal.rule == "deny[1]"
    assert "'rm -r .*'" in refusal.message


def test_deny_alone_allows_everything_else() -> None:
    policy = Policy(deny=patterns(r"reboot"))
    assert policy.check(run("uptime")) is None
    assert policy.check(run("reboot now")) is None  # anchored: "reboot" is not "reboot now"
    refusal = policy.check(run("reboot"))
    assert refusal is not None
    assert refusal.rule == "deny[0]"


@pytest.mark.parametrize(("command", "rule"), [
    ("uptime", None),
    ("uptime; id", "allow"),
    ("uptime && id", "allow"),
    ("xuptime", "allow"),
    ("uptimex", "allow"),
    (" uptime", "allow"),
    ("uptime\nid", "newline"),
    ("uptime\n", "newline"),  # no trailing newline slips in either
])
def test_allow_patterns_are_anchored_at_both_ends(command: str, rule: str | None) -> None:
    policy = Policy(allow=patterns(r"uptime"))
    refusal = policy.check(run(command))
    if rule is None:
        assert refusal is None
    elif rule == "allow":
        assert refusal == Refusal(
            "allow", "refused: the command matches no pattern of the allow list")
    else:
        assert refusal is not None
        assert refusal.rule == rule


@pytest.mark.parametrize(("command", "allowed"), [
    ("ls", True), ("id", True), ("ls; id", False), ("lsid", False), ("idx", False),
])
def test_an_alternation_is_anchored_as_a_whole(command: str, allowed: bool) -> None:
    policy = Policy(allow=patterns(r"ls|id"))
    assert (policy.check(run(command)) is None) is allowed


def test_deny_patterns_are_anchored_too() -> None:
    policy = Policy(deny=patterns(r"rm"))
    assert policy.check(run("rm")) is not None
    assert policy.check(run("rm -rf /")) is None  # a deny list must cover the arguments itself


@pytest.mark.parametrize("command", [
    "ls /; rm -rf /",
    "ls ; rm -rf /",
    "ls $(rm -rf /)",
    "ls `rm -rf /`",
    "ls | sh",
    "ls > /etc/passwd",
])
def test_known_property_a_loose_pattern_admits_shell_syntax(command: str) -> None:
    """Documented in rexec/server/identity.py: ``ls .*`` lets the shell run anything after ``ls``.

    With the shell a pattern cannot tell arguments from operators; this is what it admits,
    and a pattern that excludes shell syntax does not.
    """
    assert Policy(allow=patterns(r"ls .*")).check(run(command)) is None
    assert Policy(allow=patterns(r"ls( [\w./-]+)*")).check(run(command)) is not None


def test_a_newline_separates_commands_too() -> None:
    """A second line is refused by the newline rule, even where the pattern would admit it."""
    command = "ls /\nrm -rf /"
    for pattern in (r"ls .*", r"(?s)ls .*", r"ls[^;&|]*"):
        refusal = Policy(allow=patterns(pattern)).check(run(command))
        assert refusal is not None
        assert refusal.rule == "newline"


def test_the_docstring_example_of_a_loose_pattern() -> None:
    """rexec/identity.py says ``ls .*`` admits ``ls; rm -rf /``: it needs a space after ls.

    The property is real (see above), but the example string itself is refused.
    """
    policy = Policy(allow=patterns(r"ls .*"))
    assert policy.check(run("ls; rm -rf /")) is not None
    assert policy.check(run("ls ; rm -rf /")) is None


# --- Policy.check: shell = false -----------------------------------------------------------


@pytest.mark.parametrize("command", ["echo 'unterminated", 'echo "half', "echo \\"])
def test_without_the_shell_an_unsplittable_line_is_refused(command: str) -> None:
    refusal = Policy(shell=False).check(run(command))
    assert refusal is not None
    assert refusal.rule == "shell"
    assert "cannot split the command line" in refusal.message
    assert Policy().check(run(command)) is None  # with the shell (default), sh reports it


@pytest.mark.parametrize("command", [" ", "   \t ", "\n"])
def test_without_the_shell_an_empty_line_is_refused(command: str) -> None:
    assert Policy(shell=False).check(run(command)) == Refusal(
        "shell", "refused: an empty command line")


def test_without_the_shell_the_line_is_split_before_matching() -> None:
    """The patterns see the split words (re-quoted), so a line that does not split is refused."""
    policy = Policy(allow=patterns(r"echo .*"), shell=False)
    refusal = policy.check(run("cat 'x"))
    assert refusal is not None
    assert refusal.rule == "shell"


# --- Policy.check: working directories -----------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """An allowed root (with a sub-folder and symlinks) and folders outside it."""
    base = Path(os.path.realpath(tmp_path))
    allowed, outside, sibling = base / "allowed", base / "outside", base / "allowed-not"
    for folder in (allowed / "sub" / "deeper", outside, sibling):
        folder.mkdir(parents=True)
    (allowed / "escape").symlink_to(outside)
    (allowed / "inner").symlink_to(allowed / "sub")
    (outside / "into-allowed").symlink_to(allowed / "sub")
    return {"allowed": allowed, "outside": outside, "sibling": sibling}


def judge(policy: Policy, cwd: str | None = None) -> str:
    """What ``policy.working_directory`` makes of ``cwd``: the path, "refused" or "error"."""
    try:
        workdir = policy.working_directory(run(cwd=cwd))
    except WorkDirError as exc:
        return "refused" if exc.refused else "error"
    if workdir is None:
        return "none"
    workdir.close()
    return workdir.path


@pytest.mark.parametrize(("cwd", "ok"), [
    ("{allowed}", True),
    ("{allowed}/", True),
    ("{allowed}/sub", True),
    ("{allowed}/sub/deeper", True),
    ("{allowed}/sub/..", True),
    ("{allowed}/inner", True),  # a symlink that stays inside
    ("{outside}/into-allowed", True),  # judged by where it leads, not by its name
    ("{outside}", False),
    ("{sibling}", False),  # a string prefix of the root is not inside it
    ("{allowed}/..", False),
    ("{allowed}/sub/../../outside", False),
    ("{allowed}/escape", False),  # a symlink inside that leads out
    ("/", False),
    ("/tmp", False),
])
def test_cwd_inside_or_outside_the_allowed_roots(roots: dict[str, Path], cwd: str,
                                                 ok: bool) -> None:
    policy = Policy(cwd=(roots["allowed"],))
    path = cwd.format(**{k: str(v) for k, v in roots.items()})
    if ok:
        assert judge(policy, path) == os.path.realpath(path)
    else:
        assert judge(policy, path) == "refused"
        with pytest.raises(WorkDirError) as info:
            policy.working_directory(run(cwd=path))
        assert repr(path) in str(info.value)
        assert str(roots["allowed"]) in str(info.value)


@pytest.mark.parametrize("cwd", ["{allowed}/not-created-yet", "{allowed}/escape/x",
                                 "{allowed}/loop", "{allowed}/file", "{allowed}/" + "y" * 300])
def test_a_cwd_that_cannot_be_resolved_is_a_clean_error(roots: dict[str, Path],
                                                        cwd: str) -> None:
    (roots["allowed"] / "loop").symlink_to(roots["allowed"] / "loop")
    (roots["allowed"] / "file").write_text("")
    path = cwd.format(**{k: str(v) for k, v in roots.items()})
    for policy in (Policy(cwd=(roots["allowed"],)), Policy()):
        with pytest.raises(WorkDirError) as info:
            policy.working_directory(run(cwd=path))
        assert not info.value.refused
        assert str(info.value).startswith("working directory ")


def test_cwd_with_several_roots_and_none_given(roots: dict[str, Path]) -> None:
    policy = Policy(cwd=(roots["allowed"], roots["outside"]))
    assert judge(policy, str(roots["outside"])) == str(roots["outside"])
    assert judge(policy, str(roots["sibling"])) == "refused"
    assert judge(policy) == str(roots["allowed"])  # no cwd: the first root is used
    assert judge(Policy()) == "none"
    assert judge(Policy(), "/") == "/"  # no roots: no restriction


def test_a_relative_cwd_is_judged_from_the_servers_directory(
    roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = Policy(cwd=(roots["allowed"],))
    monkeypatch.chdir(roots["allowed"])
    assert judge(policy, "sub") == str(roots["allowed"] / "sub")
    assert judge(policy, "../outside") == "refused"
    monkeypatch.chdir(roots["outside"])
    assert judge(policy, "sub") == "error"


def test_the_child_starts_in_the_checked_directory_even_if_the_path_flips(
    roots: dict[str, Path]
) -> None:
    """Finding 6: the path is swapped for a symlink out after the check; the child must not
    follow it (the old code checked the path, then started the child in it)."""
    import subprocess

    work = roots["allowed"] / "work"
    work.mkdir()
    workdir = Policy(cwd=(roots["allowed"],)).working_directory(run(cwd=str(work)))
    assert workdir is not None
    work.rename(roots["allowed"] / "moved")
    work.symlink_to(roots["outside"])  # the same name now leads out
    try:
        out = subprocess.run(["pwd", "-P"], cwd=workdir.spawn_path, capture_output=True,
                             check=True).stdout.decode().strip()
    finally:
        workdir.close()
    assert out == str(roots["allowed"] / "moved")


# --- Policy.timeout and Policy.argv --------------------------------------------------------


@pytest.mark.parametrize(("max_timeout", "asked", "granted"), [
    (None, None, None),
    (None, 5.0, 5.0),
    (10.0, None, 10.0),  # the cap applies when the client sets no timeout
    (10.0, 5.0, 5.0),
    (10.0, 10.0, 10.0),
    (10.0, 20.0, 10.0),
    (0.5, 3600.0, 0.5),
])
def test_timeout_is_capped_by_max_timeout(
    max_timeout: float | None, asked: float | None, granted: float | None
) -> None:
    assert Policy(max_timeout=max_timeout).timeout(run(timeout=asked)) == granted


def test_argv_with_and_without_the_shell() -> None:
    line = "ls -l 'a b' \"$HOME\" $PATH; rm x | y"
    assert Policy().argv(run(line)) == ["/bin/sh", "-c", line]
    assert Policy(shell=False).argv(run(line)) == [
        "ls", "-l", "a b", "$HOME", "$PATH;", "rm", "x", "|", "y"]  # no expansion, no operators
    assert Policy(shell=False).argv(run("a\\ b")) == ["a b"]


# --- Identity and Identities ---------------------------------------------------------------


VERIFIERS = {name: auth.TokenVerifier.from_token(f"{name}-token") for name in
             ("default", "alice", "carol")}


def identities() -> Identities:
    return Identities({
        "default": Identity("default", VERIFIERS["default"]),
        "alice": Identity("alice", VERIFIERS["alice"]),
        "bob": Identity("bob", None, dn("CN=bob")),
        "carol": Identity("carol", VERIFIERS["carol"], dn("CN=carol,O=Example")),
    })


def test_identity_method() -> None:
    ids = identities().by_name
    assert ids["alice"].method == "token"
    assert ids["bob"].method == "certificate"
    assert ids["carol"].method == "token"  # a certificate and a token: the token is proved too
    assert ids["alice"].policy is UNRESTRICTED


@pytest.mark.parametrize(("name", "subject", "expected"), [
    ("alice", None, "alice"),
    ("alice", "CN=bob", "alice"),  # a name, when given, wins over the certificate
    ("bob", None, "bob"),
    ("default", "CN=bob", "default"),
    (None, "CN=bob", "bob"),
    (None, "CN=carol,O=Example", "carol"),
    (None, "CN=carol", "default"),  # the whole subject must match
    (None, "CN=mallory", "default"),
    (None, None, "default"),
    ("mallory", None, None),
    ("mallory", "CN=bob", None),  # an unknown name does not fall back
    ("Alice", None, None),  # names are case-sensitive
])
def test_resolve(name: str | None, subject: str | None, expected: str | None) -> None:
    identity = identities().resolve(name, dn(subject) if subject else None)
    assert (identity.name if identity is not None else None) == expected


def test_resolve_without_a_default_identity() -> None:
    ids = identities()
    del ids.by_name[DEFAULT_IDENTITY]
    assert ids.resolve(None, None) is None
    assert ids.resolve(None, dn("CN=mallory")) is None
    assert ids.resolve("default", None) is None
    bob = ids.resolve(None, dn("CN=bob"))
    assert bob is not None
    assert bob.name == "bob"
    assert Identities().resolve(None, None) is None


def test_from_token_is_the_unrestricted_default_identity() -> None:
    ids = Identities.from_token(TOKEN)
    assert list(ids.by_name) == ["default"]
    default = ids.resolve(None, None)
    assert default is not None
    assert (default.name, default.certificate, default.policy) == ("default", None, UNRESTRICTED)
    assert default.verifier is not None
    assert default.method == "token"
    message = auth.auth_message("11" * 32, "22" * 32, 1, "")
    assert default.verifier.check(message, auth.client_proof(TOKEN, default.verifier.salt,
                                                             message))
    assert not default.verifier.check(message, auth.client_proof(TOKEN + "x",
                                                                 default.verifier.salt, message))


def test_a_token_identity_is_challenged_with_its_salt() -> None:
    ids = identities()
    alice = ids.by_name["alice"]
    assert ids.challenge_for(alice, "alice", None) == ("token", VERIFIERS["alice"].salt)
    assert ids.challenge_for(alice, None, dn("CN=whoever")) == ("token", VERIFIERS["alice"].salt)


def test_an_unknown_name_gets_a_stable_decoy_salt() -> None:
    ids = identities()
    method, mallory = ids.challenge_for(None, "mallory", None)
    assert method == "token"
    assert mallory is not None
    assert ids.challenge_for(None, "mallory", None)[1] == mallory
    assert len(mallory) == auth.SALT_BYTES
    assert ids.challenge_for(None, "eve", None)[1] != mallory
    assert mallory not in {v.salt for v in VERIFIERS.values()}
    assert ids.challenge_for(None, None, None) == ids.challenge_for(None, "", None)
    # stable across restarts: derived from the configured keys, not from a random secret
    assert identities().challenge_for(None, "mallory", None)[1] == mallory
    other = Identities({"alice": Identity("alice", auth.TokenVerifier.from_token("zz"))})
    assert other.challenge_for(None, "mallory", None)[1] != mallory


def test_a_certificate_identity_is_offered_the_certificate_method_only_with_its_cert() -> None:
    ids = identities()
    bob = ids.by_name["bob"]
    assert ids.challenge_for(bob, "bob", dn("CN=bob")) == ("certificate", None)
    # without the matching certificate, bob looks like any unknown name: nothing is revealed
    assert ids.challenge_for(bob, "bob", None) == ids.challenge_for(None, "bob", None)
    assert ids.challenge_for(bob, "bob", dn("CN=eve")) == ids.challenge_for(None, "bob", None)


def test_an_identity_needs_a_verifier_or_a_certificate() -> None:
    with pytest.raises(ValueError, match="needs a token verifier or a certificate"):
        Identity("nobody")


# --- IdentitySettings ----------------------------------------------------------------------


HASH = auth.TokenVerifier.from_token(TOKEN).format()


def server_settings(tmp_path: Path, table: str) -> ServerSettings:
    config = tmp_path / "server.toml"
    config.write_text(table)
    return load_settings(ServerSettings, "server", config, environ={})


def test_identity_settings_build_the_runtime_identity(tmp_path: Path) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    settings = server_settings(tmp_path, f"""
[server.identities.deploy]
token_hash = "{HASH}"
certificate = "CN=deploy"
allow = ["systemctl restart [a-z]+", "uptime"]
deny = ["systemctl restart sshd"]
shell = false
cwd = ["{tmp_path}", "{tmp_path}/sub/.."]
max_timeout = 30
max_output = 1000
run_as = "{user}"
max_connections = 2
max_commands = 10
""")
    identity = settings.identities["deploy"].identity("deploy")
    assert identity.name == "deploy"
    assert identity.verifier == auth.TokenVerifier.parse(HASH)
    assert identity.certificate == ((("commonName", "deploy"),),)
    policy = identity.policy
    assert [p.pattern for p in policy.allow] == ["systemctl restart [a-z]+", "uptime"]
    assert [p.pattern for p in policy.deny] == ["systemctl restart sshd"]
    real = Path(os.path.realpath(tmp_path))
    assert policy.cwd == (real, real)  # made real: ".." and symlinks resolved
    assert (policy.shell, policy.max_timeout, policy.max_output, policy.run_as) == (
        False, 30.0, 1000, user)
    assert (policy.max_connections, policy.max_commands) == (2, 10)
    assert policy.check(run("systemctl restart nginx")) is None
    assert policy.check(run("systemctl restart sshd")) is not None
    assert policy.timeout(run()) == 30.0


def test_a_certificate_only_identity(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, '[server.identities.robot]\ncertificate = "CN=robot"\n')
    identity = settings.identities["robot"].identity("robot")
    assert (identity.verifier, identity.certificate, identity.method) == (
        None, dn("CN=robot"), "certificate")
    assert identity.policy == Policy(accept_env=())  # named identities accept no variables


BAD_IDENTITIES = [
    ("bad-allow-regex", f'token_hash = "{HASH}"\nallow = ["ok", "("]',
     "identities.alice.allow", "bad regular expression '('"),
    ("bad-deny-regex", f'token_hash = "{HASH}"\ndeny = ["[a-"]',
     "identities.alice.deny", "bad regular expression '[a-'"),
    ("relative-cwd", f'token_hash = "{HASH}"\ncwd = ["srv/app"]',
     "identities.alice.cwd", "'srv/app' must be absolute"),
    ("unknown-user", f'token_hash = "{HASH}"\nrun_as = "no-such-user-rexec"',
     "identities.alice.run_as", "no such user 'no-such-user-rexec'"),
    ("no-proof", 'allow = ["uptime"]',
     "identities.alice", "an identity needs token_hash, certificate, or both"),
    ("bad-token-hash", 'token_hash = "rexec-sha256$00$11$22"',
     "identities.alice.token_hash", "16-byte salt"),
    ("token-instead-of-hash", f'token_hash = "{TOKEN}"',
     "identities.alice.token_hash", "a token hash looks like rexec-sha256$SALT$"),
    ("unknown-field", f'token_hash = "{HASH}"\nalow = ["x"]',
     "identities.alice.alow", "unknown setting 'alow'; did you mean 'allow'?"),
    ("zero-max-timeout", f'token_hash = "{HASH}"\nmax_timeout = 0',
     "identities.alice.max_timeout", "greater than 0"),
    ("zero-max-connections", f'token_hash = "{HASH}"\nmax_connections = 0',
     "identities.alice.max_connections", "greater than or equal to 1"),
]


@pytest.mark.parametrize(("name", "body", "field", "fragment"), BAD_IDENTITIES,
                         ids=[b[0] for b in BAD_IDENTITIES])
def test_bad_identity_settings_name_the_field(
    tmp_path: Path, name: str, body: str, field: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        server_settings(tmp_path, f"[server.identities.alice]\n{body}\n")
    message = str(info.value)
    assert f"{field}: " in message
    assert fragment in message
    assert str(tmp_path / "server.toml") in message
    assert TOKEN not in message  # a token pasted where its hash belongs is not echoed


def test_a_bad_identity_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        server_settings(tmp_path, f'[server.identities."-alice"]\ntoken_hash = "{HASH}"\n')
    assert "identities.-alice" in str(info.value)


def test_identity_settings_validate_directly() -> None:
    assert IdentitySettings(certificate="CN=x").token_hash is None
    with pytest.raises(ValidationError) as info:
        IdentitySettings()
    assert "token_hash, certificate, or both" in str(info.value)
    with pytest.raises(ValidationError) as info:
        IdentitySettings(token_hash=HASH, cwd=[Path("rel")])
    assert [e["loc"] for e in info.value.errors()] == [("cwd",)]
