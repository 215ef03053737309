"""Client and server linked in memory: the real ClientCore, the real server handshake and the
real admission, with no socket and no process; frames cross as bytes through Connections."""

from __future__ import annotations

from collections import Counter

import pytest

from rexec.client.core import Authenticated, ClientCore, Finished, Output
from rexec.errors import RemoteError
from rexec.server.admission import Plan, admit
from rexec.server.handshake import Accepted, Challenged, ServerHandshake
from rexec.server.identity import Identities, Identity, Policy, Refusal
from rexec.server.limits import AuthPenalty, ServerLimits
from rexec.server.patterns import Pattern
from rexec.server.state import ServerState
from rexec.wire import frames as f
from rexec.wire.auth import TokenVerifier
from rexec.wire.protocol import Connection, Role, State

TOKEN = "linked-test-token"
CLIENT_LINE = "192.0.2.9 50000 7878"


class Link:
    """A ClientCore, and the server side's Connection, handshake and state."""

    def __init__(self, policy: Policy | None = None, limits: ServerLimits | None = None,
                 identity: str | None = None) -> None:
        verifier = TokenVerifier.from_token(TOKEN)
        self.identities = Identities({
            "default": Identity("default", verifier),
            "ops": Identity("ops", verifier, policy=policy or Policy()),
        })
        self.state = ServerState(self.identities, limits=limits or ServerLimits())
        self.core = ClientCore(TOKEN, identity=identity)
        self.conn = Connection(Role.SERVER)

    def to_server(self) -> list[f.Header]:
        self.conn.receive_data(self.core.data_to_send())
        frames = []
        while (frame := self.conn.next_frame()) is not None:
            frames.append(frame.header)
        return frames

    def to_client(self, header: f.Header, body: bytes = b"") -> None:
        self.core.receive_data(self.conn.send(header, body))

    def login(self) -> Identity:
        shake = ServerHandshake(self.identities, AuthPenalty(3.0), source="192.0.2.9",
                                subject=None, active_connections=Counter())
        [hello] = self.to_server()
        assert isinstance(hello, f.Hello)
        challenged = shake.receive_hello(hello)
        assert isinstance(challenged, Challenged)
        self.to_client(challenged.challenge)
        assert self.core.next_event() is None
        [auth] = self.to_server()
        assert isinstance(auth, f.Auth)
        accepted = shake.receive_auth(auth)
        assert isinstance(accepted, Accepted)
        self.to_client(accepted.auth_ok)
        assert isinstance(self.core.next_event(), Authenticated)
        assert self.conn.state is State.READY and self.core.ready
        return accepted.identity

    def ask(self, command: str, **options: object) -> f.Run:
        self.core.start(command, **options)  # type: ignore[arg-type]
        [run] = self.to_server()
        assert isinstance(run, f.Run)
        return run


def test_a_command_the_client_builds_is_planned_as_it_asked() -> None:
    link = Link(identity="ops")
    who = link.login()
    run = link.ask("echo $GREETING", env={"GREETING": "hello"}, timeout=30.0)
    decision = admit(run, who, link.state, client=CLIENT_LINE)
    assert isinstance(decision, Plan)
    try:
        assert decision.argv is None  # through /bin/sh
        assert decision.env["GREETING"] == "hello"
        assert decision.env["REXEC_IDENTITY"] == "ops"
        assert decision.env["REXEC_CLIENT"] == CLIENT_LINE
        assert decision.timeout == 30.0
    finally:
        decision.close()
    # the server answers as the session does: output, then exit; the client sees the result
    link.to_client(f.Stdout(size=6), b"hello\n")
    link.to_client(f.Exit(exit_code=0, duration=0.01, stdout_bytes=6, stderr_bytes=0))
    assert link.core.next_event() == Output("stdout", b"hello\n")
    finished = link.core.next_event()
    assert isinstance(finished, Finished) and finished.result.stdout == b"hello\n"
    assert link.conn.state is State.READY and link.core.ready


def test_a_policy_refusal_reaches_the_client_as_a_refused_error_and_both_stay_ready() -> None:
    link = Link(policy=Policy(deny=(Pattern("rm .*"),)), identity="ops")
    who = link.login()
    decision = admit(link.ask("rm -rf /srv"), who, link.state, client=CLIENT_LINE)
    assert isinstance(decision, Refusal) and decision.rule == "deny[0]"
    link.to_client(f.Error(code="refused", message=decision.message, fatal=False))
    with pytest.raises(RemoteError) as refused:
        link.core.next_event()
    assert refused.value.code == "refused" and "rm" in str(refused.value)
    assert link.core.ready and link.conn.state is State.READY


def test_the_identitys_max_timeout_caps_what_the_client_asked() -> None:
    link = Link(policy=Policy(max_timeout=5.0), identity="ops")
    who = link.login()
    for asked, planned in ((None, 5.0), (60.0, 5.0), (2.0, 2.0)):
        decision = admit(link.ask("sleep 1", timeout=asked), who, link.state, client=CLIENT_LINE)
        assert isinstance(decision, Plan)
        decision.close()
        assert decision.timeout == planned
        link.to_client(f.Exit(exit_code=0, duration=0.0, stdout_bytes=0, stderr_bytes=0))
        assert isinstance(link.core.next_event(), Finished)


def test_the_servers_limits_refuse_an_environment_the_client_could_send() -> None:
    link = Link(limits=ServerLimits(max_env_bytes=64))
    who = link.login()
    decision = admit(link.ask("env", env={"BIG": "x" * 100}), who, link.state,
                     client=CLIENT_LINE)
    assert isinstance(decision, Refusal) and decision.rule == "max_env_bytes"
