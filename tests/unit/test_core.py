"""ClientCore driven against a server-role Connection in memory; Result."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rexec import auth
from rexec import frames as f
from rexec.core import Authenticated, ClientCore, Finished, Output
from rexec.errors import (
    AuthenticationError,
    CommandNotStarted,
    ConnectionLost,
    ProtocolError,
    RemoteError,
)
from rexec.protocol import Connection, Role, State
from rexec.result import TIMEOUT_STATUS, Result

TOKEN = "core-test-token"
SERVER_NONCE = "5a" * 32


class FakeServer:
    """The server's end: a real server-role Connection, frames built from rexec.frames."""

    def __init__(self, core: ClientCore, token: str = TOKEN) -> None:
        self.core = core
        self.token = token
        self.conn = Connection(Role.SERVER)
        self.client_nonce = ""
        self.client_mac = ""

    def receive(self) -> list[tuple[f.Header, bytes]]:
        """Take what the client queued and return the frames in it."""
        self.conn.receive_data(self.core.data_to_send())
        got = []
        while (frame := self.conn.next_frame()) is not None:
            got.append((frame.header, bytes(frame.body)))
        return got

    def send(self, header: f.Header, body: bytes = b"") -> None:
        self.core.receive_data(self.conn.send(header, body))

    def challenge(self, version: int = 1) -> None:
        [(hello, _)] = self.receive()
        assert isinstance(hello, f.Hello)
        assert hello.versions == [f.PROTOCOL_VERSION]
        self.client_nonce = hello.nonce
        self.send(f.Challenge(version=version, nonce=SERVER_NONCE, agent="fake-server/9"))

    def read_auth(self) -> None:
        assert self.core.next_event() is None  # the core answers the challenge by itself
        [(auth_frame, _)] = self.receive()
        assert isinstance(auth_frame, f.Auth)
        self.client_mac = auth_frame.mac

    def accept(self, mac: str | None = None) -> None:
        proof = auth.server_proof(self.token, self.client_nonce, SERVER_NONCE, 1)
        self.send(f.AuthOk(mac=proof if mac is None else mac))


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
    assert server.client_mac == auth.client_proof(TOKEN, server.client_nonce, SERVER_NONCE, 1)
    server.accept()
    event = core.next_event()
    assert event == Authenticated("fake-server/9")
    assert core.server_agent == "fake-server/9"
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
    assert hellos[0].nonce != hellos[1].nonce  # type: ignore[union-attr]


@pytest.mark.parametrize("mac", [
    auth.server_proof("another-token", "00" * 32, SERVER_NONCE, 1),
    "0" * 64,
], ids=["wrong-token", "zeros"])
def test_a_wrong_server_proof_raises_authentication_error(mac: str) -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    server.accept(mac)
    with pytest.raises(AuthenticationError) as info:
        core.next_event()
    assert info.value.code == "server_auth_failed"
    assert "proof" in str(info.value)
    assert TOKEN not in str(info.value)


def test_a_server_with_another_token_fails_and_reflecting_the_client_proof_fails() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core, token="not-the-token")
    server.challenge()
    server.read_auth()
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


def test_core_is_closed_after_a_wrong_server_proof() -> None:
    """After the server's proof fails, ``ready`` is True and ``start()`` sends a command.

    core.py next_event: the Connection moves to READY on the auth_ok frame before the MAC is
    checked, and nothing moves it out when the check fails; ``ready`` says "authenticated".
    """
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


def test_unsupported_version_in_challenge() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge(version=2)
    with pytest.raises(ProtocolError) as info:
        core.next_event()
    assert info.value.code == "unsupported_version"
    assert "version 2" in str(info.value)


def test_server_refusing_the_token_raises_authentication_error() -> None:
    core = ClientCore(TOKEN)
    server = FakeServer(core)
    server.challenge()
    server.read_auth()
    server.send(f.Error(code="auth_failed", message="bad token"))
    with pytest.raises(AuthenticationError) as info:
        core.next_event()
    assert info.value.code == "auth_failed"
    assert str(info.value) == "server: bad token"


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty token"):
        ClientCore("")


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
    with pytest.raises(ValidationError):
        core.start("bad\x00command")
    with pytest.raises(ValidationError):
        core.start("x", env={"A=B": "1"})
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
