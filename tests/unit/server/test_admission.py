"""admit(): a run request, an identity and the server's state in, a plan or a refusal out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rexec.server.admission import NotStarted, Plan, admit
from rexec.server.identity import Identities, Identity, Policy, Refusal
from rexec.server.limits import ServerLimits
from rexec.server.patterns import Pattern
from rexec.server.state import ServerState
from rexec.wire.auth import TokenVerifier
from rexec.wire.frames import Run

CLIENT = "192.0.2.7 40000 8022"
VERIFIER = TokenVerifier.from_token("admission-test-token")


def identity(**policy: object) -> Identity:
    return Identity("ops", VERIFIER, policy=Policy(**policy))  # type: ignore[arg-type]


def state(**limits: object) -> ServerState:
    return ServerState(Identities({}), limits=ServerLimits(**limits))  # type: ignore[arg-type]


def plan(run: Run, who: Identity, where: ServerState | None = None) -> Plan:
    decision = admit(run, who, where or state(), client=CLIENT)
    assert isinstance(decision, Plan), decision
    return decision


def test_an_unrestricted_command_gets_a_shell_plan_in_the_servers_directory() -> None:
    where = state()
    made = plan(Run(command="echo hi", env={"GREETING": "hello"}), identity(), where)
    try:
        assert made.argv is None and made.workdir is None and made.spawn_cwd is None
        assert made.cwd == where.own_pwd
        assert (made.timeout, made.budget, made.run_as) == (None, None, None)
        assert made.env["GREETING"] == "hello"
        assert made.env["REXEC_IDENTITY"] == "ops" and made.env["REXEC_CLIENT"] == CLIENT
        assert made.confinement.umask == where.umask and made.confinement.user is None
    finally:
        made.close()


def test_without_the_shell_the_plan_holds_the_words() -> None:
    made = plan(Run(command="printf '%s\\n' 'a b'"), identity(shell=False))
    assert made.argv == ["printf", "%s\\n", "a b"]


def test_the_tighter_timeout_and_output_budget_win() -> None:
    who = identity(max_timeout=5.0, max_output=1000, umask=0o077)
    made = plan(Run(command="true", timeout=60.0), who, state(max_output=500))
    assert (made.timeout, made.budget, made.confinement.umask) == (5.0, 500, 0o077)


def test_the_plan_owns_the_working_directory_until_closed(tmp_path: Path) -> None:
    made = plan(Run(command="pwd", cwd=str(tmp_path)), identity(cwd=(tmp_path.resolve(),)))
    assert made.workdir is not None and made.cwd == str(tmp_path.resolve())
    fd = made.workdir.fd
    os.fstat(fd)  # open
    made.close()
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize(("run", "who", "rule"), [
    (Run(command="rm -rf /"), identity(deny=(Pattern("rm .*"),)), "deny[0]"),
    (Run(command="date"), identity(allow=(Pattern("uptime"),)), "allow"),
    (Run(command="true", env={"SECRET": "x"}), identity(accept_env=("LANG",)), "accept_env"),
    (Run(command="x" * 100), identity(), "max_command_length"),
    (Run(command="true", cwd="/"), identity(cwd=(Path("/nonexistent-root"),)), "cwd"),
])
def test_a_broken_rule_is_named(run: Run, who: Identity, rule: str) -> None:
    decision = admit(run, who, state(max_command_length=50), client=CLIENT)
    assert isinstance(decision, Refusal) and decision.rule == rule


def test_max_commands_counts_the_identitys_running_commands() -> None:
    where, who = state(), identity(max_commands=1)
    plan(Run(command="true"), who, where)
    where.active_commands["ops"] = 1
    decision = admit(Run(command="true"), who, where, client=CLIENT)
    assert decision == Refusal("max_commands", "refused: identity 'ops' already runs 1"
                               " command(s) (max_commands)")


def test_what_cannot_start_says_why(tmp_path: Path) -> None:
    missing = admit(Run(command="true", cwd=str(tmp_path / "gone")), identity(), state(),
                    client=CLIENT)
    assert isinstance(missing, NotStarted) and "gone" in missing.reason
    nobody = admit(Run(command="true"), identity(run_as="no-such-user-rexec"), state(),
                   client=CLIENT)
    assert nobody == NotStarted("user 'no-such-user-rexec' does not exist")


def test_a_plan_that_fails_late_closes_its_working_directory(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    decision = admit(Run(command="true", cwd=str(tmp_path)), identity(run_as="no-such-user-rexec"),
                     state(), client=CLIENT)
    assert isinstance(decision, NotStarted)
    assert set(os.listdir("/proc/self/fd")) <= before


# --- PTY sessions and login shells (issue 13) ----------------------------------------------

def test_a_pty_command_gets_its_terminal_type_and_pty_false_refuses_it() -> None:
    from rexec.wire.frames import Terminal

    terminal = Terminal(term="xterm-256color", rows=24, cols=80)
    made = plan(Run(command="top", pty=terminal), identity())
    try:
        assert made.pty == terminal and made.env["TERM"] == "xterm-256color"
    finally:
        made.close()
    refused = admit(Run(command="top", pty=terminal), identity(pty=False), state(), client=CLIENT)
    assert isinstance(refused, Refusal) and refused.rule == "pty"
    assert "pty = false" in refused.message and "rexec run" in refused.message
    still = plan(Run(command="true"), identity(pty=False))  # no PTY asked: it runs
    still.close()


def test_a_login_shell_runs_the_users_shell_in_the_home_directory() -> None:
    import pwd

    from rexec.server.admission import admit_shell
    from rexec.wire.frames import Shell, Terminal

    me = pwd.getpwuid(os.getuid())
    made = admit_shell(Shell(pty=Terminal(rows=24, cols=80)), identity(), state(),
                       client=CLIENT)
    assert isinstance(made, Plan), made
    try:
        assert made.kind == "shell" and made.executable == (me.pw_shell or "/bin/sh")
        assert made.argv == ["-" + os.path.basename(made.executable)]  # a login shell
        assert made.cwd == os.path.realpath(me.pw_dir) and made.run.stdin
    finally:
        made.close()
    script = admit_shell(Shell(cwd="/"), identity(), state(), client=CLIENT)
    assert isinstance(script, Plan)
    try:
        assert script.argv is not None and script.argv[1:] == ["-s"] and script.pty is None
        assert script.cwd == "/"
    finally:
        script.close()


@pytest.mark.parametrize("policy", [{"allow": (Pattern("echo .*", never_nl=True),)},
                                    {"deny": (Pattern("rm .*"),)}, {"shell": False}],
                         ids=["allow", "deny", "argv-mode"])
def test_an_identity_held_to_a_command_policy_gets_no_shell(policy: dict[str, object]) -> None:
    from rexec.server.admission import admit_shell
    from rexec.wire.frames import Shell

    refused = admit_shell(Shell(), identity(**policy), state(), client=CLIENT)
    assert isinstance(refused, Refusal) and refused.rule == "shell"
    assert "would get around" in refused.message
