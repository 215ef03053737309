"""ClientCore driven against a server-role Connection in memory; Result."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rexec.client.core import Authenticated, ClientCore, Finished, Output, check_request
from rexec.errors import (
    AuthenticationError,
    CommandNotStarted,
    ConnectionLost,
    InvalidRequest,
    ProtocolError,
    RemoteError,
)
from rexec.result import TIMEOUT_STATUS, Result
from rexec.wire import auth
from rexec.wire import frames as f
from rexec.wire.protocol import Connection, Role, State

TOKEN = "core-test-token"
SERVER_NONCE = "5a" * 32
SALT = bytes.fromhex("00112233445566778899aabbccddeeff")


class FakeServer:
    """The server's end: a real server-role Connection, frames built from rexec.wire.frames.

    It holds only a TokenVerifier, as a real server does, and proves itself with it.
    """

    def __init__(self, core: ClientCore, token: str = TOKEN) -> None:
        self.core = core
        self.verifier = auth.TokenVerifier.from_token(token, SALT)
        self.conn = Connection(Role.SERVER)
        self.hello: f.Hello | None = None
        self.version = f.PROTOCOL_VERSION
        self.client_mac: str | None = None

    @property
    def client_nonce(self) -> str:
        assert self.hello is not None
        return self.hello.nonce

    @property
    def message(self) -> bytes:
        """The AuthMessage both proofs cover, as the server computes it."""
        assert self.hello is not None
        return auth.auth_message(self.hello.nonce, SERVER_NONCE, self.version,
                                 self.hello.identity or "")

    def receive(self) -> list[tuple[f.Header, bytes]]:
        """Take what the client queued and return the frames in it."""
        self.conn.receive_data(self.core.data_to_send())
        got = []
        while (frame := self.conn.next_frame()) is not None:
            got.append((frame.header, bytes(frame.body)))
        return got

    def send(self, header: f.Header, body: bytes = b"") -> None:
        self.core.receive_data(self.conn.send(header, body))

    def challenge(self, version: int = f.PROTOCOL_VERSION, method: str = "token",
                  salt: str | None = SALT.hex()) -> None:
        [(hello, _)] = self.receive()
        assert isinstance(hello, f.Hello)
        assert hello.versions == list(f.PROTOCOL_VERSIONS) == [6, 5, 4, 3, 2, 1]
        self.hello = hello
        self.version = version
        self.send(f.Challenge(version=version, nonce=SERVER_NONCE, agent="fake-server/9",
                              method=method, salt=salt))  # type: ignore[arg-type]

    def certificate_challenge(self) -> None:
        self.challenge(method="certificate", salt=None)

    def read_auth(self) -> None:
        assert self.core.next_event() is None  # the core answers the challenge by itself
        [(auth_frame, _)] = self.receive()
        assert isinstance(auth_frame, f.Auth)
        self.client_mac = auth_frame.mac

    def accept(self, mac: str | None = None, identity: str = "default") -> None:
        """Send auth_ok with the server proof (or ``mac`` instead)."""
        proof = self.verifier.server_proof(self.message)
        self.send(f.AuthOk(mac=proof if mac is None else mac, identity=identity))

    def accept_without_mac(self, identity: str = "default") -> None:
        self.send(f.AuthOk(mac=None, identity=identity))


def handshake(core: ClientCore | None = None) -> tuple[ClientCore, FakeServer]:
    core = core or ClientCore(TOKEN, agent="test-agent")
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    server.accept()
    assert core.next_event() == Authenticated("fake-server/9")
    return core, server


def start(core: ClientCore, server: FakeServer, command: str = "cmd", **kwargs: object) -> f.Run:
    core.start(command, **kwargs)  # type: ignore[arg-type]
    [(run, _)] = server.receive()
    assert isinstance(run, f.Run)
    return run


def events(core: ClientCore) -> list[object]:
    """Every event available now, with output copied to bytes."""
    out: list[object] = []
    while (event := core.next_event()) is not None:
        if isinstance(event, Output):
            event = Output(event.stream, bytes(event.data))
        out.append(event)
    return out


def exit_frame(stdout: int = 0, stderr: int = 0, **kwargs: object) -> f.Exit:
    fields: dict[str, object] = {"exit_code": 0, "duration": 0.5, **kwargs}
    return f.Exit(stdout_bytes=stdout, stderr_bytes=stderr, **fields)  # type: ignore[arg-type]


# --- handshake -----------------------------------------------------------------------------


def test_successful_handshake() -> None:
    core = ClientCore(TOKEN, agent="test-agent")
    assert not core.ready
    assert core.pending > 0
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    assert server.client_mac is not None
    assert server.verifier.check(server.message, server.client_mac)
    assert server.client_mac == auth.client_proof(TOKEN, SALT, server.message)
    server.accept()
    event = core.next_event()
    assert event == Authenticated("fake-server/9")
    assert core.server_agent == "fake-server/9"
    assert core.identity == "default"
    assert core.ready
    assert not core.running
    assert server.conn.state is State.READY


def test_hello_carries_the_agent_and_a_fresh_nonce() -> None:
    hellos = []
    for _ in range(2):
        conn = Connection(Role.SERVER)
        conn.receive_data(ClientCore(TOKEN, agent="me/1").data_to_send())
        frame = conn.next_frame()
        assert frame is not None
        hellos.append(frame.header)
    assert all(isinstance(h, f.Hello) and h.agent == "me/1" for h in hellos)
    assert all(isinstance(h, f.Hello) and h.identity is None for h in hellos)
    assert hellos[0].nonce != hellos[1].nonce  # type: ignore[union-attr]


def test_a_named_identity_is_in_hello_and_covered_by_the_proof() -> None:
    core = ClientCore(TOKEN, identity="alice")
    server = FakeServer(core)
    server.challenge()
    assert server.hello is not None
    assert server.hello.identity == "alice"
    server.read_auth()
    assert server.client_mac is not None
    assert server.message == auth.auth_message(server.client_nonce, SERVER_NONCE,
                                               f.PROTOCOL_VERSION, "alice")
    assert server.verifier.check(server.message, server.client_mac)
    for name in ("", "bob", "default"):  # the same proof claimed for another identity fails
        other = auth.auth_message(server.client_nonce, SERVER_NONCE, f.PROTOCOL_VERSION, name)
        assert not server.verifier.check(other, server.client_mac)
    server.accept(identity="alice")
    assert core.next_event() == Authenticated("fake-server/9")
    assert core.identity == "alice"


def test_the_core_records_the_identity_the_server_names() -> None:
    core = ClientCore(TOKEN)
    assert core.identity is None
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    server.accept(identity="ops@example.com")
    assert core.next_event() == Authenticated("fake-server/9")
    assert core.identity == "ops@example.com"


def test_the_proof_uses_the_salt_from_the_challenge() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    other_salt = "ff" * 16
    server.challenge(salt=other_salt)
    server.read_auth()
    assert server.client_mac == auth.client_proof(TOKEN, bytes.fromhex(other_salt),
                                                  server.message)
    assert not server.verifier.check(server.message, server.client_mac)  # SALT's verifier
    verifier = auth.TokenVerifier.from_token(TOKEN, bytes.fromhex(other_salt))
    server.accept(mac=verifier.server_proof(server.message))
    assert core.next_event() == Authenticated("fake-server/9")


WRONG_SERVER_PROOFS = {
    "wrong-token": lambda s: auth.TokenVerifier.from_token("another-token", SALT)
    .server_proof(s.message),
    "wrong-salt": lambda s: auth.TokenVerifier.from_token(TOKEN, bytes(16)).server_proof(s.message),
    "wrong-nonce": lambda s: s.verifier.server_proof(
        auth.auth_message(s.client_nonce, "00" * 32, 1, "")),
    "wrong-identity": lambda s: s.verifier.server_proof(
        auth.auth_message(s.client_nonce, SERVER_NONCE, 1, "alice")),
    "wrong-version": lambda s: s.verifier.server_proof(
        auth.auth_message(s.client_nonce, SERVER_NONCE, 1, "")),  # not the one chosen (2)
    "zeros": lambda s: "0" * 64,
}


@pytest.mark.parametrize("make_mac", WRONG_SERVER_PROOFS.values(), ids=WRONG_SERVER_PROOFS.keys())
def test_a_wrong_server_proof_raises_authentication_error(make_mac: object) -> None:
    assert callable(make_mac)
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    mac = make_mac(server)
    assert mac != server.verifier.server_proof(server.message)
    server.accept(mac)
    with pytest.raises(AuthenticationError) as info:
        core.next_event()
    assert info.value.code == "server_auth_failed"
    assert "proof" in str(info.value)
    assert TOKEN not in str(info.value)
    assert not core.ready


def test_a_server_with_another_token_fails_and_reflecting_the_client_proof_fails() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core, token="not-the-token")
    server.challenge()
    server.read_auth()
    assert server.client_mac is not None
    assert not server.verifier.check(server.message, server.client_mac)  # it would refuse us
    server.accept()
    with pytest.raises(AuthenticationError):
        core.next_event()

    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    server.accept(mac=server.client_mac)  # send the client's own proof back
    with pytest.raises(AuthenticationError):
        core.next_event()


def test_auth_ok_without_a_mac_after_a_token_challenge_is_refused() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    server.accept_without_mac()
    with pytest.raises(AuthenticationError) as info:
        core.next_event()
    assert info.value.code == "server_auth_failed"
    assert not core.ready
    assert core.conn.state is State.CLOSED
    with pytest.raises(RuntimeError):
        core.start("true")


def test_core_is_closed_after_a_wrong_server_proof() -> None:
    """After the server's proof fails, ``ready`` is False and ``start()`` refuses to send."""
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    server.accept("0" * 64)
    with pytest.raises(AuthenticationError):
        core.next_event()
    assert not core.ready
    with pytest.raises(RuntimeError):
        core.start("cat /etc/secret")
    assert core.pending == 0


def test_unsupported_version_in_challenge() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge(version=7)
    with pytest.raises(ProtocolError) as info:
        core.next_event()
    assert info.value.code == "unsupported_version"
    assert "version 7" in str(info.value)


def test_a_token_challenge_without_a_salt_is_a_protocol_error() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge(salt=None)
    with pytest.raises(ProtocolError) as info:
        core.next_event()
    assert info.value.code == "bad_header"
    assert "salt" in str(info.value)
    assert core.pending == 0  # no proof was sent


def test_a_certificate_only_core_answers_a_token_challenge_with_no_proof() -> None:
    """So that the server's refusal can name the subject it saw (rexec has no -v)."""
    core = ClientCore(None, identity="robot", client_certificate=True)
    server = FakeServer(core)
    server.challenge()
    assert core.next_event() is None
    (header, _), = server.receive()
    assert isinstance(header, f.Auth)
    assert header.mac is None  # a null proof, which the server refuses, naming the subject


def test_empty_token_is_refused_and_no_token_is_allowed() -> None:
    with pytest.raises(ValueError, match="empty token"):
        ClientCore("")
    core = ClientCore(None, client_certificate=True)
    assert core.pending > 0  # hello queued


def test_a_bad_identity_name_is_refused_before_anything_is_sent() -> None:
    for name in ("", "-x", "a b", "x" * 65):
        with pytest.raises(ValidationError):
            ClientCore(TOKEN, identity=name)


# --- commands ------------------------------------------------------------------------------


def test_output_events_and_finished_result() -> None:
    core, server = handshake()
    run = start(core, server, "echo hi", env={"A": "1"}, cwd="/tmp", timeout=3.0)
    assert (run.command, run.env, run.cwd, run.timeout, run.stdin) == (
        "echo hi", {"A": "1"}, "/tmp", 3.0, False)
    assert core.running
    server.send(f.Stdout(size=3), b"hi\n")
    server.send(f.Stderr(size=2), b"\x00\xff")
    server.send(f.Stdout(size=0))
    server.send(f.Stdout(size=1), b"!")
    server.send(exit_frame(stdout=4, stderr=2, exit_code=3, duration=1.25))
    got = events(core)
    assert got[:-1] == [
        Output("stdout", b"hi\n"),
        Output("stderr", b"\x00\xff"),
        Output("stdout", b""),
        Output("stdout", b"!"),
    ]
    assert isinstance(got[-1], Finished)
    result = got[-1].result
    assert result == Result(command="echo hi", exit_code=3, duration=1.25, stdout=b"hi\n!",
                            stderr=b"\x00\xff", stdout_bytes=4, stderr_bytes=2)
    assert core.ready
    assert not core.running


def test_output_without_capture_is_counted_not_kept() -> None:
    core, server = handshake()
    start(core, server, capture=False)
    server.send(f.Stdout(size=5), b"12345")
    server.send(exit_frame(stdout=5))
    got = events(core)
    assert got[0] == Output("stdout", b"12345")
    assert isinstance(got[1], Finished)
    assert (got[1].result.stdout, got[1].result.stdout_bytes) == (b"", 5)


def test_output_arriving_through_get_buffer() -> None:
    core, server = handshake()
    start(core, server)
    data = server.conn.send(f.Stdout(size=2), b"ok") + server.conn.send(exit_frame(stdout=2))
    before = core.received
    buf = core.get_buffer()
    buf[: len(data)] = data
    core.buffer_updated(len(data))
    assert core.received == before + len(data)
    got = events(core)
    assert got[0] == Output("stdout", b"ok")
    assert isinstance(got[1], Finished)
    assert got[1].result.stdout == b"ok"


def test_signal_timeout_and_no_exit_code_reach_the_result() -> None:
    core, server = handshake()
    start(core, server, "sleep 9")
    server.send(exit_frame(exit_code=None, signal=15, timed_out=True))
    [finished] = events(core)
    assert isinstance(finished, Finished)
    result = finished.result
    assert (result.exit_code, result.signal, result.timed_out) == (None, 15, True)
    assert result.exit_status == TIMEOUT_STATUS


@pytest.mark.parametrize(("sent", "declared", "stream"), [
    ((3, 0), (4, 0), "stdout"),
    ((3, 0), (2, 0), "stdout"),
    ((0, 1), (0, 0), "stderr"),
])
def test_byte_count_mismatch_in_exit_frame(
    sent: tuple[int, int], declared: tuple[int, int], stream: str
) -> None:
    core, server = handshake()
    start(core, server)
    if sent[0]:
        server.send(f.Stdout(size=sent[0]), b"x" * sent[0])
    if sent[1]:
        server.send(f.Stderr(size=sent[1]), b"y" * sent[1])
    server.send(exit_frame(stdout=declared[0], stderr=declared[1]))
    with pytest.raises(ProtocolError) as info:
        events(core)
    assert info.value.code == "byte_count_mismatch"
    assert f"of {stream}" in str(info.value)
    assert "output was lost" in str(info.value)


def test_non_fatal_error_raises_command_not_started_and_leaves_core_ready() -> None:
    core, server = handshake()
    start(core, server, "first", cwd="/nope")
    server.send(f.Error(code="bad_cwd", message="no such directory: /nope", fatal=False))
    with pytest.raises(CommandNotStarted) as info:
        core.next_event()
    assert info.value.code == "bad_cwd"
    assert str(info.value) == "server: no such directory: /nope"
    assert core.ready

    run = start(core, server, "second")
    assert run.command == "second"
    server.send(f.Stdout(size=2), b"ok")
    server.send(exit_frame(stdout=2))
    got = events(core)
    assert isinstance(got[-1], Finished)
    assert (got[-1].result.command, got[-1].result.stdout) == ("second", b"ok")


def test_fatal_error_is_a_remote_error() -> None:
    core, server = handshake()
    start(core, server)
    server.send(f.Error(code="shutting_down", message="bye"))
    with pytest.raises(RemoteError) as info:
        core.next_event()
    assert not isinstance(info.value, CommandNotStarted)
    assert info.value.code == "shutting_down"
    assert core.conn.state is State.CLOSED


def test_stdin_signal_and_cancel_are_sent() -> None:
    core, server = handshake()
    start(core, server, "cat", stdin=True)
    assert core.stdin_credit == f.STDIN_WINDOW
    big = bytes(range(256)) * (f.STDIN_WINDOW // 256)
    core.send_stdin(big)
    assert core.stdin_credit == 0
    with pytest.raises(ValueError, match="credit"):
        core.send_stdin(b"x")  # flow control: nothing beyond the window
    server.send(f.StdinCredit(amount=1000))
    assert core.next_event() is None
    assert core.stdin_credit == 1000
    core.send_stdin(b"tail")
    core.send_stdin(b"")
    core.send_stdin_eof()
    core.send_signal("INT")
    core.cancel()
    got = server.receive()
    stdin = [body for header, body in got if header.type == "stdin"]
    assert all(len(body) <= f.MAX_BODY_SIZE for body in stdin)
    assert b"".join(stdin) == big + b"tail"
    assert [h.type for h, _ in got][-3:] == ["stdin_eof", "signal", "cancel"]
    assert got[3][0] == f.Signal(signal="INT")


def test_cancel_and_signal_are_no_ops_when_nothing_runs() -> None:
    core, _ = handshake()
    core.cancel()
    core.send_signal("TERM")
    assert core.pending == 0


def test_start_checks_state_and_arguments_before_sending() -> None:
    core = ClientCore(TOKEN)
    with pytest.raises(RuntimeError, match="state await_challenge"):
        core.start("true")
    core, server = handshake()
    with pytest.raises(InvalidRequest, match="NUL") as bad:
        core.start("bad\x00command")
    assert bad.value.field == "command" and isinstance(bad.value, ValueError)
    with pytest.raises(InvalidRequest, match="A=B") as bad:
        core.start("x", env={"A=B": "1"})
    assert bad.value.field == "env"
    with pytest.raises(InvalidRequest, match="more than the protocol's 65536: send long") as bad:
        core.start("x", env={f"V{i}": "y" * 1000 for i in range(70)})  # each field fits
    assert core.pending == 0
    assert core.ready
    start(core, server)
    with pytest.raises(RuntimeError, match="state running"):
        core.start("again")


# --- end of file ---------------------------------------------------------------------------


def test_eof_mid_command_raises_connection_lost_with_unknown_outcome() -> None:
    core, server = handshake()
    start(core, server)
    server.send(f.Stdout(size=3), b"abc")
    server.send(f.Stderr(size=2), b"de")
    assert len(events(core)) == 2
    core.receive_eof()
    with pytest.raises(ConnectionLost) as info:
        core.next_event()
    message = str(info.value)
    assert "outcome is unknown" in message
    assert "after 5 bytes of output" in message
    assert info.value.received == core.received > 0


def test_eof_mid_frame_while_running_is_a_lost_connection_with_unknown_outcome() -> None:
    core, server = handshake()
    start(core, server)
    core.receive_data(server.conn.send(f.Stdout(size=10), b"0123456789")[:-4])
    assert core.next_event() is None
    core.receive_eof()
    with pytest.raises(ConnectionLost, match="outcome is unknown"):
        core.next_event()


def test_eof_during_handshake_and_when_idle() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    core.receive_eof()
    with pytest.raises(ConnectionLost, match="during the handshake"):
        core.next_event()

    core, _ = handshake()
    core.receive_eof()
    with pytest.raises(ConnectionLost) as info:
        core.next_event()
    assert str(info.value) == "the server closed the connection"


def test_frames_before_eof_are_still_delivered() -> None:
    core, server = handshake()
    start(core, server)
    server.send(f.Stdout(size=1), b"z")
    server.send(exit_frame(stdout=1))
    core.receive_eof()
    first = core.next_event()
    assert isinstance(first, Output)
    assert bytes(first.data) == b"z"
    assert isinstance(core.next_event(), Finished)
    with pytest.raises(ConnectionLost):
        core.next_event()


# --- Result --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "status", "ok"), [
    ({"exit_code": 0}, 0, True),
    ({"exit_code": 3}, 3, False),
    ({"exit_code": 255}, 255, False),
    ({"exit_code": None, "signal": 9}, 137, False),
    ({"exit_code": None, "signal": 15, "timed_out": True}, TIMEOUT_STATUS, False),
    ({"exit_code": 0, "timed_out": True}, TIMEOUT_STATUS, False),
    ({"exit_code": None}, 255, False),
])
def test_result_exit_status(kwargs: dict[str, object], status: int, ok: bool) -> None:
    result = Result(command="c", **kwargs)  # type: ignore[arg-type]
    assert result.exit_status == status
    assert result.ok is ok
    assert result.failed is not ok


def test_exit_frame_exceeded_reaches_the_result() -> None:
    core, server = handshake()
    start(core, server)
    server.send(f.Stdout(size=3), b"abc")
    server.send(exit_frame(stdout=3, exit_code=None, signal=15, exceeded="max_output"))
    finished = events(core)[-1]
    assert isinstance(finished, Finished)
    assert finished.result.exceeded == "max_output"
    assert not finished.result.ok


@pytest.mark.parametrize("kwargs", [
    {"exit_code": 0},
    {"exit_code": 0, "timed_out": True},
    {"exit_code": None, "signal": 15, "exceeded": "max_output"},
    {"exit_code": 0, "exceeded": "max_output"},
], ids=["ok", "timed-out", "exceeded-killed", "exceeded-exit-0"])
def test_exit_status_is_zero_exactly_when_ok(kwargs: dict[str, object]) -> None:
    """``rexec run`` exits with ``exit_status``; ``ok`` says whether the command succeeded.

    result.py: ``ok`` is False when ``exceeded`` is set, but ``exit_status`` ignores
    ``exceeded``. A command that exits 0 by itself after its output went over ``max_output``
    (``head -c 2000 /dev/zero`` with max_output = 1000: the pipe holds it all and the shell has
    exited before the server reads past the limit) gets exit_code 0, so ``rexec run`` exits 0
    although the output was cut short (timed_out is mapped to 124 for the same reason).
    """
    result = Result(command="c", **kwargs)  # type: ignore[arg-type]
    assert (result.exit_status == 0) is result.ok


@pytest.mark.parametrize(("kwargs", "what"), [
    ({"exit_code": 2}, "command 'make' exited with status 2"),
    ({"exit_code": None, "signal": 9}, "command 'make' was killed by signal 9"),
    ({"exit_code": None, "signal": 9, "timed_out": True}, "command 'make' timed out"),
])
def test_describe_failure_says_how(kwargs: dict[str, object], what: str) -> None:
    result = Result(command="make", **kwargs)  # type: ignore[arg-type]
    assert result.describe_failure() == what


def test_describe_failure_shows_the_last_lines_of_stderr() -> None:
    stderr = b"".join(b"line %d\n" % i for i in range(1, 21)) + b"bad \xff byte\n"
    result = Result(command="x", exit_code=1, stderr=stderr)
    message = result.describe_failure(lines=3)
    assert message.splitlines() == [
        "command 'x' exited with status 1",
        "stderr (last lines):",
        "  line 19",
        "  line 20",
        "  bad \ufffd byte",
    ]
    assert "line 11" not in result.describe_failure()
    assert "  line 12" in result.describe_failure()


def test_a_close_before_the_first_byte_hints_the_server_may_be_busy() -> None:
    # What a TLS server does to a newcomer past max_startups: it can only close.
    core = ClientCore(TOKEN)
    core.data_to_send()
    core.receive_eof()
    with pytest.raises(ConnectionLost, match="before the handshake: it may be busy"):
        core.next_event()


@pytest.mark.parametrize(("request_", "field", "says"), [
    ({"command": ""}, "command", "the command is empty"),
    ({"command": "x" * 40_000}, "command", "40000 characters long, more than the protocol's"
                                           " 32768: send a long script on stdin"),
    ({"command": "a", "timeout": float("nan")}, "timeout", "finite number of seconds, not nan"),
    ({"command": "a", "timeout": float("inf")}, "timeout", "finite number of seconds, not inf"),
    ({"command": "a", "timeout": 1e9}, "timeout", "at most 10000000 seconds (about 116 days)"),
    ({"command": "a", "timeout": 0.0}, "timeout", "more than 0"),
    ({"command": "a", "cwd": ""}, "cwd", "the working directory is empty"),
    ({"command": "a", "env": {str(i): "" for i in range(300)}}, "env",
     "300 environment variables, more than the protocol's 256"),
    ({"command": "a", "env": {"A": "b\x00"}}, "env", "env value of A contains a NUL byte"),
    ({"command": "a", "env": {"X": "x" * 70_000}}, "command", "70"),  # the frame's size
])
def test_check_request_names_the_field_and_the_fix(request_: dict, field: str,
                                                    says: str) -> None:
    with pytest.raises(InvalidRequest) as bad:
        check_request(**request_)
    assert bad.value.field == field and says in str(bad.value)
    assert "validation error" not in str(bad.value) and "pydantic" not in str(bad.value)


def test_check_request_returns_the_frame_it_checked() -> None:
    run = check_request("echo hi", env={"A": "1"}, cwd="/tmp", timeout=2.5, stdin=True)
    assert (run.command, run.env, run.cwd, run.timeout, run.stdin) == (
        "echo hi", {"A": "1"}, "/tmp", 2.5, True)


# --- PTY commands and login shells (issue 13) ----------------------------------------------

def test_a_pty_command_and_a_login_shell_go_out_with_their_terminal_and_resizes() -> None:
    core, server = handshake()
    terminal = f.Terminal(term="xterm-256color", rows=24, cols=80)
    core.resize(50, 100)  # no command running: nothing is sent
    core.start("top", stdin=True, pty=terminal)
    core.resize(50, 132, 800, 600)
    (run, _), (resize, _) = server.receive()
    assert isinstance(run, f.Run) and run.pty == terminal and run.stdin
    assert isinstance(resize, f.Resize) and resize.window == f.Window(rows=50, cols=132,
                                                                      width=800, height=600)
    server.send(f.Stdout(size=3), b"hi\n")
    server.send(exit_frame(stdout=3))
    result = [e for e in events(core) if not isinstance(e, Output)][-1]
    assert result.result.command == "top"
    core.start_shell(pty=terminal, env={"LANG": "C.UTF-8"})
    ((shell, _),) = server.receive()
    assert isinstance(shell, f.Shell) and shell.pty == terminal and shell.stdin
    server.send(exit_frame())
    finished = events(core)[-1]
    assert finished.result.command == "" and finished.result.exit_code == 0
    core.start("true")
    core.resize(10, 10)  # a command without a PTY: no resize frame
    assert [type(h) for h, _ in server.receive()] == [f.Run]


def test_a_bad_terminal_request_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValidationError):
        f.Terminal(term="x" * 65, rows=24, cols=80)
    with pytest.raises(ValidationError):
        f.Terminal(term="xterm; rm -rf", rows=24, cols=80)
    with pytest.raises(ValidationError):
        f.Window(rows=0, cols=80)
    with pytest.raises(ValidationError):
        f.Window(rows=24, cols=80, width=70_000)
    core, _ = handshake()
    with pytest.raises(InvalidRequest, match="NUL"):
        core.start_shell(cwd="/tmp\x00x")


def test_a_version_1_server_gets_no_pty_frame_and_the_user_is_told_to_upgrade() -> None:
    core = ClientCore(TOKEN, agent="test-agent")
    server = FakeServer(core)
    server.challenge(version=1)
    server.read_auth()
    server.accept()
    assert isinstance(core.next_event(), Authenticated) and core.version == 1
    with pytest.raises(ProtocolError, match=r"version 1, which has no PTY sessions.*upgrade"):
        core.start("top", pty=f.Terminal(rows=24, cols=80))
    with pytest.raises(ProtocolError, match="upgrade"):
        core.start_shell()
    run = start(core, server, "true")  # a plain command still goes, as version 1 knows it
    assert run.pty is None
