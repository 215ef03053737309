"""Admission: a run request, its identity and the server's state in; a plan or a refusal out.

Every rule a command must pass is decided here, in order, before anything starts: the server's
limits, the identity's command policy and accepted environment, max_commands, the working
directory and the user account. A command that passes becomes a Plan holding everything its
spawn needs (argv or shell, cwd, environment, confinement, timeout, output budget, user); one
that fails gets a Refusal naming the rule, or NotStarted saying why it cannot start. PTY
sessions and file transfers extend this module, not the session.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from rexec.server.exec.env import account, child_environment
from rexec.server.exec.runner import Confinement
from rexec.server.exec.shortcut import shell_pwd
from rexec.server.exec.workdir import WorkDir, WorkDirError
from rexec.server.identity import Identity, Refusal
from rexec.server.state import ServerState
from rexec.wire.frames import Run, Shell, Terminal


@dataclass(frozen=True)
class NotStarted:
    """The rules admit the command but it cannot start: why (for "cannot start the command")."""

    reason: str


@dataclass(eq=False)
class Plan:
    """Everything one admitted command starts with; it owns ``workdir`` until ``close()``."""

    run: Run
    timeout: float | None
    budget: int | None  # output bytes allowed (None: no limit)
    cwd: str  # the physical directory it starts in
    workdir: WorkDir | None  # an open descriptor (None: the server's own directory)
    env: dict[str, str]
    confinement: Confinement
    argv: list[str] | None  # None: run.command through /bin/sh
    run_as: str | None
    pty: Terminal | None = None  # on a pseudo-terminal of this type and size
    executable: str | None = None  # the program, when argv[0] is not it (a login shell's "-sh")
    kind: str = "command"  # "command", or "shell" (the login shell: run.command is its path)

    @property
    def spawn_cwd(self) -> str | None:
        """The path the child changes into (the descriptor's, so it cannot be swapped)."""
        return self.workdir.spawn_path if self.workdir is not None else None

    def close(self) -> None:
        """Release the working directory's descriptor (once the child started, or did not)."""
        if self.workdir is not None:
            self.workdir.close()


Decision = Plan | Refusal | NotStarted


def smaller(a: int | None, b: int | None) -> int | None:
    """The tighter of two optional limits."""
    return b if a is None else a if b is None else min(a, b)


def admit(run: Run, identity: Identity, state: ServerState, *, client: str) -> Decision:
    """Decide whether ``run`` starts and how; ``client`` is REXEC_CLIENT for its environment."""
    refusal = check_rules(run, identity, state)
    if refusal is not None:
        return refusal
    try:
        workdir = identity.policy.working_directory(run)
    except WorkDirError as exc:
        return Refusal("cwd", str(exc)) if exc.refused else NotStarted(str(exc))
    try:
        decision = _plan(run, identity, state, workdir, client)
    except BaseException:
        if workdir is not None:
            workdir.close()
        raise
    if not isinstance(decision, Plan) and workdir is not None:
        workdir.close()
    return decision


def check_rules(run: Run, identity: Identity, state: ServerState) -> Refusal | None:
    """The first rule ``run`` breaks: the limits, pty, the policy, accept_env, max_commands."""
    policy = identity.policy
    return (state.limits.check(run) or no_pty(run, identity) or policy.check(run)
            or policy.check_env(run.env) or over_max_commands(identity, state))


def no_pty(run: Run, identity: Identity) -> Refusal | None:
    """The ``pty = false`` refusal, for a command asking for a PTY."""
    if run.pty is not None and not identity.policy.pty:
        return Refusal("pty", f"refused: identity {identity.name!r} may not open a PTY"
                       " (pty = false): run the command without one (rexec run, without -t)")
    return None


def admit_shell(shell: Shell, identity: Identity, state: ServerState, *,
                client: str) -> Decision:
    """Decide whether the identity's login shell starts and how: on a PTY when ``shell.pty``,
    else reading its script from stdin. The working directory is the user's home unless the
    client names one (or the identity's cwd list does)."""
    policy = identity.policy
    if policy.allow or policy.deny or not policy.shell:
        return Refusal("shell", f"refused: identity {identity.name!r} is held to a command"
                       " policy (allow, deny or shell = false), which a shell would get around:"
                       " run the commands themselves with rexec run")
    try:
        user = account(policy.run_as)
    except KeyError:
        return NotStarted(f"user {policy.run_as!r} does not exist")
    program = user.shell or "/bin/sh"
    cwd = shell.cwd if shell.cwd is not None else str(policy.cwd[0]) if policy.cwd else user.home
    run = Run(command=program, env=shell.env, cwd=cwd, timeout=shell.timeout, stdin=True,
              pty=shell.pty)
    decision = admit(run, identity, state, client=client)
    if not isinstance(decision, Plan):
        return decision
    name = os.path.basename(program)
    decision.argv = [f"-{name}"] if shell.pty is not None else [name, "-s"]
    decision.executable = program
    decision.kind = "shell"
    return decision


def over_max_commands(identity: Identity, state: ServerState) -> Refusal | None:
    """The max_commands refusal, when the identity already runs that many."""
    limit = identity.policy.max_commands
    if limit is not None and state.active_commands[identity.name] >= limit:
        return Refusal("max_commands", f"refused: identity {identity.name!r} already runs"
                       f" {limit} command(s) (max_commands)")
    return None


def _plan(run: Run, identity: Identity, state: ServerState, workdir: WorkDir | None,
          client: str) -> Plan | NotStarted:
    """The user account, environment and confinement of an admitted command."""
    policy = identity.policy
    try:
        user = account(policy.run_as)
    except KeyError:
        return NotStarted(f"user {policy.run_as!r} does not exist")
    env = child_environment(
        state.child_env, user=user, client_env=run.env, identity_env=policy.env,
        identity=identity.name, client=client, pwd=pwd(run, workdir, state.own_pwd),
    )
    confinement = Confinement(user if policy.run_as is not None else None,
                              state.umask if policy.umask is None else policy.umask,
                              policy.rlimits)
    if run.pty is not None:
        env["TERM"] = run.pty.term
    return Plan(run, policy.timeout(run), smaller(policy.max_output, state.limits.max_output),
                workdir.path if workdir is not None else state.own_pwd, workdir, env,
                confinement, None if policy.shell else policy.argv(run), policy.run_as,
                pty=run.pty)


def pwd(run: Run, workdir: WorkDir | None, own_pwd: str) -> str:
    """The PWD a shell would export there: the client's own when it names that directory."""
    given = run.env.get("PWD")
    if workdir is None:
        return shell_pwd(None, given) if given else own_pwd
    if given and os.path.isabs(given):
        with contextlib.suppress(OSError):
            if os.path.samefile(given, workdir.path):
                return given
    return workdir.path
