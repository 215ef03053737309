"""The state table, and two Connections linked in memory."""

from __future__ import annotations

import itertools
import typing
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rexec.errors import ProtocolError
from rexec.wire import frames as f
from rexec.wire.codec import encode
from rexec.wire.protocol import TRANSITIONS, Connection, Role, State, event_name, transition

C, S = Role.CLIENT, Role.SERVER
NONCE = "0f" * 32
MODELS = typing.get_args(typing.get_args(f.Header)[0])  # every model in the union
FRAME_TYPES = sorted(m.model_fields["type"].default for m in MODELS)
EVENTS = [*FRAME_TYPES, "error_nonfatal"]
ALL_INPUTS = list(itertools.product(State, Role, [*EVENTS, "bogus", ""]))


def test_events_are_the_frame_types() -> None:
    assert len(FRAME_TYPES) == 29
    assert {event for _, _, event in TRANSITIONS} <= set(EVENTS)


@pytest.mark.parametrize(("state", "role", "event"), ALL_INPUTS,
                         ids=[f"{s.value}-{r.value}-{e or 'empty'}" for s, r, e in ALL_INPUTS])
def test_every_input_moves_to_a_state_or_raises_protocol_error(
    state: State, role: Role, event: str
) -> None:
    try:
        new = transition(state, role, event)
    except ProtocolError as exc:
        assert (state, role, event) not in TRANSITIONS
        assert exc.code == "unexpected_frame"
        assert repr(event) in str(exc)
        assert role.value in str(exc)
        assert state.value in str(exc)
    else:
        assert isinstance(new, State)
        assert TRANSITIONS[(state, role, event)] is new


_ANY_INPUT = st.tuples(st.sampled_from(Role), st.sampled_from(EVENTS))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_event_sequences_never_escape_the_table(data: st.DataObject) -> None:
    state = State.AWAIT_HELLO
    authenticated = False
    for _ in range(data.draw(st.integers(0, 30), label="steps")):
        allowed = [(role, event) for src, role, event in TRANSITIONS if src is state]
        # mostly follow the table (to get deep), sometimes throw anything at it
        moves = st.sampled_from(allowed) | _ANY_INPUT if allowed else _ANY_INPUT
        role, event = data.draw(moves)
        try:
            state = transition(state, role, event)
        except ProtocolError as exc:
            assert exc.code == "unexpected_frame"
            assert (state, role, event) not in TRANSITIONS
            continue  # a real connection would close here; keep probing from the same state
        authenticated |= (role, event) == (S, "auth_ok")
        if state in (State.READY, State.RUNNING):
            assert authenticated


def reachable(edges: dict[tuple[State, Role, str], State]) -> set[State]:
    seen = {State.AWAIT_HELLO}
    todo = deque(seen)
    while todo:
        state = todo.popleft()
        for (src, _, _), dst in edges.items():
            if src is state and dst not in seen:
                seen.add(dst)
                todo.append(dst)
    return seen


def test_ready_and_running_are_reachable_only_through_the_servers_auth_ok() -> None:
    assert reachable(TRANSITIONS) == set(State)
    without_auth_ok = {k: v for k, v in TRANSITIONS.items() if k[1:] != (S, "auth_ok")}
    assert len(without_auth_ok) == len(TRANSITIONS) - 1
    cut = reachable(without_auth_ok)
    authed = {State.READY, State.RUNNING, State.PUTTING, State.UPLOADING, State.GETTING,
              State.DOWNLOADING, State.MAKING, State.LISTING}
    assert not authed & cut
    # and no other edge enters the authenticated states from outside them
    entries = {k for k, v in TRANSITIONS.items() if v in authed and k[0] not in authed}
    assert entries == {(State.AWAIT_VERDICT, S, "auth_ok")}


def test_closed_is_final_and_fatal_errors_close_from_anywhere() -> None:
    assert not [k for k in TRANSITIONS if k[0] is State.CLOSED]
    for state in State:
        if state is not State.CLOSED:
            for role in Role:
                assert transition(state, role, "error") is State.CLOSED


def test_each_frame_type_has_one_sender() -> None:
    client_only = {"hello", "auth", "run", "stdin", "stdin_eof", "signal", "cancel"}
    server_only = {"challenge", "auth_ok", "stdin_credit", "stdout", "stderr", "exit",
                   "error_nonfatal"}
    for _, role, event in TRANSITIONS:
        assert event not in (client_only if role is S else server_only)


def test_event_name_splits_errors_by_fatality() -> None:
    assert event_name(f.Error(code="x", message="")) == "error"
    assert event_name(f.Error(code="x", message="", fatal=False)) == "error_nonfatal"
    assert event_name(f.Stdout(size=1)) == "stdout"


# --- two connections linked in memory ------------------------------------------------------


class Pair:
    """A client and a server Connection; what one sends, the other receives."""

    def __init__(self) -> None:
        self.client = Connection(C)
        self.server = Connection(S)

    def send(self, sender: Connection, header: f.Header, body: bytes = b"",
             via_buffer: bool = False) -> list[tuple[f.Header, bytes]]:
        receiver = self.server if sender is self.client else self.client
        data = sender.send(header, body)
        if via_buffer:
            buf = receiver.get_buffer()
            buf[: len(data)] = data
            receiver.buffer_updated(len(data))
        else:
            receiver.receive_data(data)
        got = []
        while (frame := receiver.next_frame()) is not None:
            got.append((frame.header, bytes(frame.body)))
        assert receiver.state is sender.state
        assert receiver.buffered == 0
        return got

    def handshake(self) -> None:
        assert self.send(self.client, f.Hello(versions=[1], nonce=NONCE))[0][0].type == "hello"
        assert self.client.state is State.AWAIT_CHALLENGE
        self.send(self.server, f.Challenge(version=1, nonce=NONCE))
        assert self.client.state is State.AWAIT_AUTH
        self.send(self.client, f.Auth(mac=NONCE))
        assert self.server.state is State.AWAIT_VERDICT
        self.send(self.server, f.AuthOk(mac=NONCE))
        assert self.client.state is self.server.state is State.READY


def test_the_handshake_fields_do_not_change_the_states() -> None:
    """A certificate handshake (no proofs) and a named token one move the states alike."""
    for hello, challenge, auth, auth_ok in (
        (f.Hello(versions=[1], nonce=NONCE, identity="robot"),
         f.Challenge(version=1, nonce=NONCE, method="certificate"),
         f.Auth(mac=None), f.AuthOk(mac=None, identity="robot")),
        (f.Hello(versions=[1], nonce=NONCE, identity="alice"),
         f.Challenge(version=1, nonce=NONCE, method="token", salt="ab" * 16),
         f.Auth(mac=NONCE), f.AuthOk(mac=NONCE, identity="alice")),
    ):
        pair = Pair()
        assert pair.send(pair.client, hello) == [(hello, b"")]
        assert pair.send(pair.server, challenge) == [(challenge, b"")]
        assert pair.client.state is State.AWAIT_AUTH
        assert pair.send(pair.client, auth) == [(auth, b"")]
        assert pair.server.state is State.AWAIT_VERDICT
        with pytest.raises(ProtocolError):  # still nothing but the handshake before auth_ok
            pair.client.send(f.Run(command="true"))
        assert pair.send(pair.server, auth_ok) == [(auth_ok, b"")]
        assert pair.client.state is pair.server.state is State.READY


def test_full_conversation_between_linked_connections() -> None:
    pair = Pair()
    pair.handshake()
    run = f.Run(command="cat", stdin=True)
    assert pair.send(pair.client, run) == [(run, b"")]
    assert pair.server.state is State.RUNNING
    assert pair.send(pair.client, f.Stdin(size=3), b"a\x00b", via_buffer=True) == [
        (f.Stdin(size=3), b"a\x00b")
    ]
    pair.send(pair.client, f.StdinEof())
    assert pair.send(pair.server, f.Stdout(size=3), b"a\x00b") == [(f.Stdout(size=3), b"a\x00b")]
    assert pair.send(pair.server, f.Stderr(size=1), b"\xff", via_buffer=True) == [
        (f.Stderr(size=1), b"\xff")
    ]
    exit_frame = f.Exit(exit_code=0, duration=0.1, stdout_bytes=3, stderr_bytes=1)
    assert pair.send(pair.server, exit_frame) == [(exit_frame, b"")]
    assert pair.client.state is pair.server.state is State.READY
    # input the client sent before it saw the exit arrives late, and is allowed
    pair.send(pair.client, f.Cancel())
    assert pair.server.state is State.READY
    # a second command, refused without closing
    pair.send(pair.client, f.Run(command="x", cwd="/nope"))
    pair.send(pair.server, f.Error(code="bad_cwd", message="no such dir", fatal=False))
    assert pair.client.state is State.READY
    pair.send(pair.client, f.Error(code="bye", message="closing"))
    assert pair.client.state is pair.server.state is State.CLOSED


def test_send_prefix_moves_state_and_checks_size() -> None:
    pair = Pair()
    pair.handshake()
    pair.send(pair.client, f.Run(command="x"))
    with pytest.raises(ValueError, match="size=4 but the body has 3"):
        pair.server.send_prefix(f.Stdout(size=4), 3)
    assert pair.server.state is State.RUNNING
    data = pair.server.send_prefix(f.Stdout(size=3), 3) + b"abc"
    pair.client.receive_data(data)
    frame = pair.client.next_frame()
    assert frame is not None
    assert bytes(frame.body) == b"abc"


def test_a_refused_send_leaves_the_state_alone() -> None:
    client = Connection(C)
    with pytest.raises(ProtocolError) as info:
        client.send(f.Run(command="true"))
    assert info.value.code == "unexpected_frame"
    assert client.state is State.AWAIT_HELLO
    with pytest.raises(ValueError, match="size"):
        client.send(f.Hello(versions=[1], nonce=NONCE), b"x")
    assert client.state is State.AWAIT_HELLO


def _ready_pair() -> Pair:
    pair = Pair()
    pair.handshake()
    return pair


UNEXPECTED = [
    # (name, how to get the receiver, the frame it receives, a fragment of the message)
    ("run-before-hello", lambda: Connection(S), f.Run(command="true"),
     "'run' frame from the client"),
    ("run-before-auth",
     lambda: _after(Connection(S), [f.Hello(versions=[1], nonce=NONCE)]),
     f.Run(command="true"), "in state 'await_challenge'"),
    ("stdout-from-the-client", lambda: _ready_pair().server, f.Stdout(size=1),
     "'stdout' frame from the client"),
    ("auth_ok-from-the-client",
     lambda: _after(Connection(S), [f.Hello(versions=[1], nonce=NONCE)]),
     f.AuthOk(mac=NONCE), "'auth_ok' frame from the client"),
    ("exit-while-ready", lambda: _ready_pair().client,
     f.Exit(exit_code=0, duration=0, stdout_bytes=0, stderr_bytes=0), "in state 'ready'"),
    ("second-hello", lambda: _ready_pair().server, f.Hello(versions=[1], nonce=NONCE),
     "'hello' frame from the client"),
    ("run-from-the-server", lambda: _ready_pair().client, f.Run(command="x"),
     "'run' frame from the server"),
    ("nonfatal-error-while-ready", lambda: _ready_pair().client,
     f.Error(code="x", message="", fatal=False), "'error_nonfatal'"),
]


def _after(conn: Connection, headers: list[f.Header]) -> Connection:
    for header in headers:
        conn.receive_data(encode(header))
        assert conn.next_frame() is not None
    return conn


@pytest.mark.parametrize(("name", "make", "header", "fragment"), UNEXPECTED,
                         ids=[u[0] for u in UNEXPECTED])
def test_unexpected_frames_are_refused_on_receipt(
    name: str, make: object, header: f.Header, fragment: str
) -> None:
    assert callable(make)
    receiver: Connection = make()
    before = receiver.state
    receiver.receive_data(encode(header, b"x" * header.size))
    with pytest.raises(ProtocolError) as info:
        receiver.next_frame()
    assert info.value.code == "unexpected_frame"
    assert fragment in str(info.value)
    assert receiver.state is before


def test_unexpected_frames_are_refused_on_send() -> None:
    client = Connection(C)
    for header in (f.Stdout(size=0), f.AuthOk(mac=NONCE), f.AuthOk(),
                   f.Challenge(version=1, nonce=NONCE),
                   f.Challenge(version=1, nonce=NONCE, method="certificate")):
        with pytest.raises(ProtocolError) as info:
            client.send(header)
        assert info.value.code == "unexpected_frame"
    server = Connection(S)
    with pytest.raises(ProtocolError, match="'hello' frame from the server"):
        server.send(f.Hello(versions=[1], nonce=NONCE))


def _declaring(length: int) -> bytes:
    """Four bytes declaring a header of ``length`` bytes (and nothing of it)."""
    return length.to_bytes(4, "big")


def test_the_largest_handshake_frames_fit_the_handshake_header_cap() -> None:
    hello = f.Hello(versions=list(range(65520, 65536)), nonce=NONCE, agent="\x01" * 200,
                    identity="a" * 64)  # control characters: the longest JSON escapes
    for header in (hello, f.Auth(mac=NONCE)):
        assert len(encode(header)) - 4 < f.HANDSHAKE_MAX_HEADER, header


def test_headers_are_capped_low_until_the_handshake_is_over() -> None:
    cap = f.HANDSHAKE_MAX_HEADER
    server = Connection(S, handshake_max_header=cap)
    server.receive_data(_declaring(cap + 1))
    with pytest.raises(ProtocolError, match=f"outside 1..{cap}") as info:
        server.next_frame()
    assert info.value.code == "bad_length"
    pair = Pair()
    pair.server = Connection(S, handshake_max_header=cap)
    pair.handshake()  # within the cap
    big = f.Run(command="x" * (cap + 100))
    assert pair.send(pair.client, big) == [(big, b"")]  # READY: the full cap
    assert len(encode(big)) - 4 > cap


def test_the_handshake_cap_holds_after_hello_and_auth_until_auth_ok() -> None:
    cap = f.HANDSHAKE_MAX_HEADER
    server = _after(Connection(S, handshake_max_header=cap), [f.Hello(versions=[1], nonce=NONCE)])
    server.send(f.Challenge(version=1, nonce=NONCE, salt="0" * 32))
    server.receive_data(_declaring(cap + 1))
    with pytest.raises(ProtocolError, match="outside"):
        server.next_frame()
