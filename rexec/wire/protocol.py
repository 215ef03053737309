"""The conversation's states as one table, and a sans-I/O Connection that enforces it.

Both ends keep the same state: every frame either side sends or receives moves it through
``TRANSITIONS``; a frame the table does not allow is a ProtocolError. Nothing but the handshake is
possible before ``READY``, which only the server's ``auth_ok`` reaches.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from rexec.errors import ProtocolError
from rexec.wire.codec import RECEIVE_SIZE, Frame, FrameDecoder, encode, encode_prefix
from rexec.wire.frames import MAX_BODY_SIZE, MAX_HEADER_SIZE, Header


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"  # client must say hello
    AWAIT_CHALLENGE = "await_challenge"  # server must answer with a challenge
    AWAIT_AUTH = "await_auth"  # client must prove the token
    AWAIT_VERDICT = "await_verdict"  # server must accept (auth_ok) or refuse (error)
    READY = "ready"  # authenticated, no command running
    RUNNING = "running"  # a command is running
    PUTTING = "putting"  # a put was asked: the server answers put_ready, transfer_done or error
    UPLOADING = "uploading"  # the client sends the file's bytes
    GETTING = "getting"  # a get was asked: the server answers file_info or error
    DOWNLOADING = "downloading"  # the server sends the file's bytes
    MAKING = "making"  # a put_dir or put_link was asked: the server answers transfer_done or error
    LISTING = "listing"  # a file_list or stat was asked: file_entry frames, then done
    CLOSED = "closed"


C, S = Role.CLIENT, Role.SERVER
_LATE_INPUT = ("stdin", "stdin_eof", "signal", "cancel", "resize")
_TRANSFERS = (State.PUTTING, State.UPLOADING, State.GETTING, State.DOWNLOADING, State.MAKING,
              State.LISTING)

# (state, sender, event) -> next state. An event is the frame type, except that errors are
# "error" (fatal, closes the connection) or "error_nonfatal" (a command could not start).
TRANSITIONS: dict[tuple[State, Role, str], State] = {
    (State.AWAIT_HELLO, C, "hello"): State.AWAIT_CHALLENGE,
    (State.AWAIT_CHALLENGE, S, "challenge"): State.AWAIT_AUTH,
    (State.AWAIT_AUTH, C, "auth"): State.AWAIT_VERDICT,
    (State.AWAIT_VERDICT, S, "auth_ok"): State.READY,
    (State.READY, C, "run"): State.RUNNING,
    (State.READY, C, "shell"): State.RUNNING,
    # Input the client sent before it saw the command's exit frame arrives late; it is dropped.
    **{(State.READY, C, event): State.READY for event in _LATE_INPUT},
    **{(State.RUNNING, C, event): State.RUNNING for event in _LATE_INPUT},
    (State.RUNNING, S, "stdin_credit"): State.RUNNING,
    (State.RUNNING, S, "stdout"): State.RUNNING,
    (State.RUNNING, S, "stderr"): State.RUNNING,
    (State.RUNNING, S, "exit"): State.READY,
    (State.RUNNING, S, "error_nonfatal"): State.READY,
    # File transfer (version 3). An upload's bytes the client sent before it saw the server's
    # error arrive late, in READY, and are dropped as late stdin is.
    (State.READY, C, "file_data"): State.READY,
    (State.READY, C, "put_end"): State.READY,  # version 4, after an error: dropped likewise
    (State.READY, C, "put"): State.PUTTING,
    (State.PUTTING, S, "put_ready"): State.UPLOADING,
    (State.PUTTING, S, "transfer_done"): State.READY,  # the same file is there already
    (State.UPLOADING, C, "file_data"): State.UPLOADING,
    (State.UPLOADING, C, "put_end"): State.UPLOADING,  # version 4: the digest, after the bytes
    (State.UPLOADING, S, "file_credit"): State.UPLOADING,
    (State.UPLOADING, S, "transfer_done"): State.READY,
    (State.READY, C, "get"): State.GETTING,
    (State.GETTING, S, "file_info"): State.DOWNLOADING,
    (State.DOWNLOADING, S, "file_data"): State.DOWNLOADING,
    (State.DOWNLOADING, S, "transfer_done"): State.READY,
    # Directory transfers (version 4): a tree is a sequence of these and of puts or gets.
    (State.READY, C, "put_dir"): State.MAKING,
    (State.READY, C, "put_link"): State.MAKING,
    (State.MAKING, S, "transfer_done"): State.READY,
    (State.READY, C, "file_list"): State.LISTING,
    (State.READY, C, "stat"): State.LISTING,  # version 5: one file_entry, then done
    (State.LISTING, S, "file_entry"): State.LISTING,
    (State.LISTING, S, "transfer_done"): State.READY,
    **{(state, C, "cancel"): state for state in _TRANSFERS},
    **{(state, S, "error_nonfatal"): State.READY for state in _TRANSFERS},
    **{
        (state, role, "error"): State.CLOSED
        for state in State
        if state is not State.CLOSED
        for role in Role
    },
}


def event_name(header: Header) -> str:
    """The table's name for a frame: its type, with errors split into fatal and not."""
    if header.type == "error" and not header.fatal:
        return "error_nonfatal"
    return header.type


def transition(state: State, sender: Role, event: str) -> State:
    """Return the state after ``sender`` sends ``event`` in ``state``, or raise ProtocolError."""
    try:
        return TRANSITIONS[(state, sender, event)]
    except KeyError:
        raise ProtocolError(
            f"unexpected {event!r} frame from the {sender.value} in state {state.value!r}",
            "unexpected_frame",
        ) from None


class Connection:
    """One end of a rexec conversation: decodes what arrives, encodes what leaves, keeps state.

    ``handshake_max_header``, if given, caps the peer's headers until the handshake is over
    (the state reaches READY); ``max_header`` applies from then on. ``detach_at`` is the
    decoder's (``FrameDecoder``): bodies from that size on come in buffers of their own.
    """

    def __init__(
        self, our_role: Role, max_header: int = MAX_HEADER_SIZE, max_body: int = MAX_BODY_SIZE,
        handshake_max_header: int | None = None, detach_at: int | None = None,
    ) -> None:
        self.our_role = our_role
        self.their_role = S if our_role is C else C
        self._state = State.AWAIT_HELLO
        self._max_header = max_header
        first_cap = max_header if handshake_max_header is None else handshake_max_header
        self._decoder = FrameDecoder(first_cap, max_body, on_header=self._check_incoming,
                                     detach_at=detach_at)

    @property
    def state(self) -> State:
        """Where the conversation is (both ends agree on it)."""
        return self._state

    def _enter(self, new: State) -> None:
        # Every state change goes through here: the table's (next_frame, send, send_prefix),
        # and close().
        if new is State.READY and self._state is not State.READY:
            self._decoder.max_header = self._max_header  # authenticated: the full cap
        self._state = new

    def close(self) -> None:
        """End the conversation here: a check the table cannot make failed (an unverified
        server proof, say), and nothing more may be sent or received."""
        self._enter(State.CLOSED)

    def _check_incoming(self, header: Header) -> None:
        # Refuse a frame the table does not allow as soon as its header is in, so that a peer
        # cannot make us buffer a body (up to 1 MiB) for a frame we would refuse anyway.
        transition(self.state, self.their_role, event_name(header))

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes that arrived from the peer."""
        self._decoder.feed(data)

    def get_buffer(self, size: int = RECEIVE_SIZE) -> memoryview:
        """Space to receive into directly, at least ``size`` bytes (then ``buffer_updated``)."""
        return self._decoder.get_buffer(size)

    def buffer_updated(self, nbytes: int) -> None:
        """Record ``nbytes`` received into the last ``get_buffer()``."""
        self._decoder.buffer_updated(nbytes)

    def receive_eof(self) -> None:
        """Record that the peer closed its side."""
        self._decoder.feed_eof()

    def detach_bodies(self, at: int | None,
                      allocate: Callable[[int], memoryview] | None = None) -> None:
        """Bodies of ``at`` bytes or more in buffers of their own, from ``allocate``
        (``FrameDecoder.detach_bodies``)."""
        self._decoder.detach_bodies(at, allocate)

    def passable(self) -> tuple[Header, int] | None:
        """The frame being received and the bytes of its body still to come, if it may be
        passed (``FrameDecoder.passable``)."""
        return self._decoder.passable()

    def pass_body(self) -> memoryview:
        """The part of that body received so far; the rest is moved past the decoder."""
        return self._decoder.pass_body()

    @property
    def passing(self) -> int | None:
        """Bytes of a passed body still to be moved (None: no body is being passed)."""
        return self._decoder.passing

    def passed(self, nbytes: int) -> None:
        """Record ``nbytes`` more of the passed body moved past the decoder."""
        self._decoder.passed(nbytes)

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return self._decoder.buffered

    @property
    def missing(self) -> int:
        """Bytes the frame being received still lacks (``FrameDecoder.missing``)."""
        return self._decoder.missing

    @property
    def incomplete(self) -> bool:
        """Whether the frame being received certainly needs more bytes (``FrameDecoder``)."""
        return self._decoder.incomplete

    def next_frame(self) -> Frame | None:
        """Return the next whole frame from the peer (None: need more bytes), checking order."""
        frame = self._decoder.next_frame()
        if frame is not None:
            self._enter(transition(self.state, self.their_role, event_name(frame.header)))
        return frame

    def send(self, header: Header, body: bytes | bytearray | memoryview = b"") -> bytes:
        """Return the wire bytes for a frame we send, after checking the table allows it."""
        new_state = transition(self.state, self.our_role, event_name(header))
        data = encode(header, body)
        self._enter(new_state)
        return data

    def send_prefix(self, header: Header, body_size: int) -> bytes:
        """Like ``send``, but return only the bytes before the body, which the caller writes."""
        if header.size != body_size:
            raise ValueError(f"header says size={header.size} but the body has {body_size} bytes")
        self._enter(transition(self.state, self.our_role, event_name(header)))
        return encode_prefix(header)
