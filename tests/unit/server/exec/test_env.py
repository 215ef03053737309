"""The one function that builds every command's environment, and the env policy."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.server.exec.env import (
    AUDIT_VALUE_LIMIT,
    DEFAULT_PATH,
    Account,
    ChildEnvSettings,
    audit_env,
    child_environment,
    inherited,
    is_unsafe,
)
from rexec.server.exec.runner import Confinement, describe_spawn_error
from rexec.server.identity import Policy

ALICE = Account("alice", 1000, 1000, "/home/alice", "/bin/bash")


PLAIN = ChildEnvSettings()


def build(settings: ChildEnvSettings = PLAIN, **kwargs: object) -> dict[str, str]:
    args: dict[str, object] = {"user": ALICE, "client_env": {}, "identity_env": {},
                               "identity": "deploy", "client": "10.0.0.1 4242 7878",
                               "pwd": "/srv", "environ": {}}
    args.update(kwargs)
    return child_environment(settings, **args)  # type: ignore[arg-type]


def test_the_base_environment() -> None:
    assert build() == {"PATH": DEFAULT_PATH, "HOME": "/home/alice", "USER": "alice",
                       "LOGNAME": "alice", "SHELL": "/bin/bash", "REXEC_IDENTITY": "deploy",
                       "REXEC_CLIENT": "10.0.0.1 4242 7878", "PWD": "/srv"}
    assert "PWD" not in build(pwd=None)


def test_the_merge_order() -> None:
    settings = ChildEnvSettings(path="/opt/bin", env={"A": "server", "B": "server"},
                                inherit_env=("LANG", "C"))
    env = build(settings, client_env={"A": "client", "C": "client", "D": "client",
                                      "REXEC_IDENTITY": "forged"},
                identity_env={"B": "identity"},
                environ={"LANG": "de_DE.UTF-8", "C": "server-own", "SECRET": "x"})
    assert env["PATH"] == "/opt/bin"
    assert env["LANG"] == "de_DE.UTF-8"  # inherited
    assert env["C"] == "client"  # the client's wins over an inherited one
    assert env["D"] == "client"
    assert env["A"] == "server"  # configured env wins over the client's (SetEnv)
    assert env["B"] == "identity"  # and the identity's over the server's
    assert env["REXEC_IDENTITY"] == "deploy"  # never the client's
    assert "SECRET" not in env


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True),
                       st.text(max_size=5)))
def test_inherit_env_never_passes_a_rexec_variable(environ: dict[str, str]) -> None:
    environ = {**environ, "REXEC_TOKEN": "secret", "REXEC_HOME": "/x"}
    passed = inherited(("*",), environ)
    assert not any(name.startswith("REXEC_") for name in passed)
    assert set(passed) == {name for name in environ if not name.startswith("REXEC_")}


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_AUDIT", "BASH_ENV", "ENV", "BASH_FUNC_f%%",
                                  "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "PATH", "PYTHONPATH",
                                  "PYTHONWARNINGS", "PERL5OPT", "PERL5DB", "RUBYOPT",
                                  "NODE_OPTIONS", "GIT_CONFIG_COUNT", "GIT_SSH_COMMAND",
                                  "BROWSER", "GLIBC_TUNABLES", "REXEC_TOKEN", "PAGER"])
def test_unsafe_names(name: str) -> None:
    assert is_unsafe(name)


@pytest.mark.parametrize("name", ["LANG", "LC_ALL", "TZ", "APP_MODE", "CI", "TERM", "DEBUG"])
def test_ordinary_names(name: str) -> None:
    assert not is_unsafe(name)


def test_env_policy_of_unrestricted_and_restricted_identities() -> None:
    assert Policy().check_env({"LD_PRELOAD": "x", "ANY": "1"}) is None  # "default": anything
    named = Policy(accept_env=())
    refusal = named.check_env({"LANG": "C"})
    assert refusal is not None and refusal.rule == "accept_env" and "LANG" in refusal.message
    assert Policy(accept_env=("LC_*",)).check_env({"LC_ALL": "C"}) is None
    assert Policy(accept_env=("*",)).check_env({"PATH": "/tmp"}) is None  # no command policy
    restricted = Policy(accept_env=("*",), allow=(re.compile("true"),))
    assert restricted.restricted
    refusal = restricted.check_env({"OK": "1", "LD_PRELOAD": "/tmp/x.so"})
    assert refusal is not None and "LD_PRELOAD" in refusal.message
    assert restricted.check_env({"OK": "1"}) is None
    for policy in (Policy(shell=False), Policy(run_as="nobody"), Policy(deny=(re.compile("x"),))):
        assert policy.restricted


def test_the_audit_keeps_names_hides_secrets_and_cuts_long_values() -> None:
    kept = audit_env({"MODE": "blue", "API_TOKEN": "t0k3n", "DB_PASSWORD": "pw",
                      "LONG": "y" * (AUDIT_VALUE_LIMIT + 50), "AWS_SECRET_ACCESS_KEY": "k"})
    assert kept["MODE"] == "blue"
    assert kept["API_TOKEN"] == "<hidden: 5 characters>"
    assert kept["DB_PASSWORD"] == "<hidden: 2 characters>"
    assert kept["AWS_SECRET_ACCESS_KEY"].startswith("<hidden")
    cut = f"...<cut: {AUDIT_VALUE_LIMIT + 50} characters>"
    assert kept["LONG"] == "y" * AUDIT_VALUE_LIMIT + cut


def test_spawn_errors_name_their_cause() -> None:
    missing = FileNotFoundError(2, "No such file or directory", "/proc/self/fd/7")
    assert describe_spawn_error(missing, ["ls"], "/proc/self/fd/7", Confinement()) \
        == "the working directory: No such file or directory"
    program = FileNotFoundError(2, "No such file or directory", "nope")
    assert describe_spawn_error(program, ["nope"], None, Confinement()) \
        == "program 'nope': No such file or directory"
    assert "user 'alice'" in describe_spawn_error(
        subprocess.SubprocessError("Exception occurred in preexec_fn."), ["ls"], None,
        Confinement(user=ALICE))
