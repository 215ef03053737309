"""A hypothesis state machine that drives several raw connections against one real server.

Each connection says hello, proves the token or fails to, sends commands, junk and frames split
anywhere, reads, and disconnects, in any order. A model of what the server must think of each
connection says whether it is authenticated; every ``run`` creates its own marker file, so:

- a run sent on a connection that was not authenticated must never create its marker;
- a run whose ``exit`` frame reports exit code 0 must have created it;
- the server never sends command frames, or ``auth_ok``, to a connection that did not prove the
  token, and never sends anything after a fatal error;
- once every connection is closed, the server's file descriptors and processes are back to what
  they were, and it is still alive.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import rexec
from rexec.client.core import Authenticated, ClientCore
from rexec.errors import ProtocolError
from rexec.wire.auth import new_nonce
from rexec.wire.codec import FrameDecoder, encode
from rexec.wire.frames import PROTOCOL_VERSIONS, Auth, Cancel, Challenge, Header, Run
from tests.helpers import ServerProcess, live_children, live_processes, start_server, wait_until

MAX_CONNECTIONS = 4
SETTLE_TIMEOUT = 5.0
KILL_GRACE = 1.0  # the server's: the SIGKILL due after a SIGTERM, well within SETTLE_TIMEOUT
HANDSHAKE_ERRORS = frozenset({"bad_length", "bad_header", "unexpected_frame",
                              "unsupported_version", "auth_failed", "handshake_timeout"})
TAG_VARIABLE = "REXEC_STATEFUL_TAG"


def fd_count(pid: int) -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag``: every command this test started."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for pid, _ in live_processes():
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
    return found


def answer(core: ClientCore, challenge: Challenge) -> bytes:
    """The auth frame ``core`` sends in answer to ``challenge`` (its proof of its token)."""
    core.receive_data(encode(challenge))
    assert core.next_event() is None
    return core.data_to_send()


@dataclass
class Conn:
    """One raw connection and what the server must think of it.

    Its handshake frames come from a real ClientCore (so the proofs are rexec.wire.auth's, whatever
    the scheme); everything else is written and read by hand.
    """

    number: int
    sock: socket.socket
    core: ClientCore
    hello: bytes = b""
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    # await_hello, await_auth: a clean handshake so far; ready: authenticated;
    # doomed: broke the rules before authenticating, so it must never be
    stage: str = "await_hello"
    version: int = 0  # the version the server must choose: the newest both speak
    challenge: Challenge | None = None
    pending: deque[Path] = field(default_factory=deque)  # authenticated runs awaiting exit
    fatal: str | None = None  # the code of the fatal error the server sent
    garbled: bool = False  # junk was sent: the server may be waiting for the rest of a frame
    closed: bool = False  # the server closed it (or it broke)

    @property
    def authenticated(self) -> bool:
        return self.stage == "ready"


class SessionMachine(RuleBasedStateMachine):
    """Connections against one shared server; see the module docstring for what is checked."""

    conns = Bundle("conns")

    def __init__(self, server: ServerProcess, workdir: Path, baseline_fds: int, tag: str) -> None:
        super().__init__()
        self.server = server
        self.pid = server.proc.pid
        self.workdir = workdir / new_nonce()[:16]  # markers of earlier examples stay apart
        self.workdir.mkdir()
        self.baseline_fds = baseline_fds
        self.tag = tag
        self.open: list[Conn] = []
        self.numbers = itertools.count()
        # markers of runs sent without authentication; those sent after it wait in conn.pending
        self.forbidden: list[Path] = []

    # --- sending -----------------------------------------------------------------------------

    def _send(self, conn: Conn, data: bytes, cut: int | None = None, pause: float = 0.0) -> None:
        """Send ``data``, in two pieces if ``cut`` says where; a broken connection is noted."""
        pieces = [data] if cut is None else [data[:cut], data[cut:]]
        try:
            for n, piece in enumerate(pieces):
                if n:
                    time.sleep(pause)
                conn.sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            conn.closed = True

    def _breaks_the_rules(self, conn: Conn) -> None:
        """Anything out of order: fatal before authentication, and never authenticates after."""
        if not conn.authenticated:
            conn.stage = "doomed"

    def _hello(self, conn: Conn, versions: list[int]) -> bytes:
        common = [v for v in PROTOCOL_VERSIONS if v in versions]
        if conn.stage == "await_hello" and common:
            conn.stage = "await_auth"
            conn.version = common[0]
        else:
            self._breaks_the_rules(conn)
        if versions == list(PROTOCOL_VERSIONS):
            return conn.hello
        decoder = FrameDecoder()
        decoder.feed(conn.hello)
        frame = decoder.next_frame()
        assert frame is not None
        return encode(frame.header.model_copy(update={"versions": versions}))

    def _correct_auth(self, conn: Conn) -> bytes:
        if conn.stage == "await_auth" and not conn.closed:
            self._wait_for_challenge(conn)
        if conn.stage == "await_auth" and conn.challenge is not None:
            conn.stage = "ready"
            return answer(conn.core, conn.challenge)
        return self._wrong_auth(conn)  # out of order: whatever is sent now is wrong

    def _wrong_auth(self, conn: Conn) -> bytes:
        self._breaks_the_rules(conn)
        if conn.challenge is None:
            return encode(Auth(mac=new_nonce()))  # 64 hex digits, like a proof
        return answer(ClientCore("not-" + self.server.token), conn.challenge)

    def _run(self, conn: Conn, sleep: float) -> bytes:
        marker = self.workdir / f"marker-{next(self.numbers)}"
        command = f"touch {marker}" + (f"; sleep {sleep}" if sleep else "")
        if conn.authenticated:
            conn.pending.append(marker)
        else:
            self.forbidden.append(marker)
            self._breaks_the_rules(conn)
        return encode(Run(command=command, env={TAG_VARIABLE: self.tag}))

    def _cancel(self, conn: Conn) -> bytes:
        self._breaks_the_rules(conn)
        return encode(Cancel())

    def _frame(self, conn: Conn, kind: str) -> bytes:
        if kind == "hello":
            return self._hello(conn, list(PROTOCOL_VERSIONS))
        if kind == "auth":
            return self._correct_auth(conn)
        if kind == "wrong_auth":
            return self._wrong_auth(conn)
        if kind == "run":
            return self._run(conn, 0)
        return self._cancel(conn)

    # --- receiving ---------------------------------------------------------------------------

    def _read(self, conn: Conn, wait: float = 0.0) -> None:
        """Take whatever the server has sent (waiting up to ``wait`` for the first byte)."""
        while not conn.closed and select.select([conn.sock], [], [], wait)[0]:
            wait = 0.0
            try:
                data = conn.sock.recv(65536)
            except ConnectionResetError:
                conn.closed = True
                break
            if not data:
                conn.closed = True
                assert conn.fatal is not None, "the server closed without a fatal error frame"
                break
            conn.decoder.feed(data)
            self._take_frames(conn)

    def _take_frames(self, conn: Conn) -> None:
        while True:
            try:
                frame = conn.decoder.next_frame()
            except ProtocolError as exc:
                raise AssertionError(f"the server sent a malformed frame: {exc}") from None
            if frame is None:
                return
            self._check_frame(conn, frame.header)

    def _check_frame(self, conn: Conn, header: Header) -> None:
        """What the server may send depends on what it was sent: check it against the model."""
        assert conn.fatal is None, f"{header.type} frame after fatal error {conn.fatal}"
        if header.type == "challenge":
            assert conn.stage != "await_hello" and conn.challenge is None, header
            assert header.version == conn.version
            conn.challenge = header
        elif header.type == "auth_ok":
            assert conn.authenticated, "auth_ok for a connection that did not prove the token"
            conn.core.receive_data(encode(header))
            assert isinstance(conn.core.next_event(), Authenticated)  # raises on a wrong proof
        elif header.type in ("stdout", "stderr", "exit"):
            assert conn.authenticated, f"{header.type} frame on an unauthenticated connection"
            if header.type == "exit":
                assert conn.pending, "an exit frame for no run"
                marker = conn.pending.popleft()
                if header.exit_code == 0:
                    assert marker.exists(), f"exit code 0 but {marker} was not created"
        elif header.type == "error":
            assert header.fatal, f"non-fatal error {header.code}: {header.message}"
            if not conn.authenticated:
                assert header.code in HANDSHAKE_ERRORS, header
            else:
                assert header.code != "auth_failed", "the right proof was refused"
            conn.fatal = header.code
        else:
            raise AssertionError(f"the server sent a {header.type} frame")

    def _wait_for_challenge(self, conn: Conn) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while conn.challenge is None and not conn.closed and time.monotonic() < deadline:
            self._read(conn, wait=0.05)
        assert conn.challenge is not None, f"no challenge after a valid hello ({conn.fatal})"

    # --- rules -------------------------------------------------------------------------------

    @precondition(lambda self: len(self.open) < MAX_CONNECTIONS)
    @rule(target=conns)
    def connect(self) -> Conn:
        sock = socket.create_connection((self.server.host, self.server.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        core = ClientCore(self.server.token, agent="stateful")
        conn = Conn(next(self.numbers), sock, core, core.data_to_send())
        self.open.append(conn)
        return conn

    # Random rules rarely line up hello and the right proof on one connection: these two make
    # sure most examples get to run commands on an authenticated connection too.
    @initialize(target=conns)
    def connect_and_authenticate_first(self) -> Conn:
        return self.connect_and_authenticate()

    @precondition(lambda self: len(self.open) < MAX_CONNECTIONS)
    @rule(target=conns)
    def connect_and_authenticate(self) -> Conn:
        conn = self.connect()
        self._send(conn, self._hello(conn, list(PROTOCOL_VERSIONS)))
        self._send(conn, self._correct_auth(conn))
        return conn

    @rule(conn=conns, versions=st.sampled_from([[1], [2, 1], [2], [3], [4], [5], [6], [6, 1]]))
    def send_hello(self, conn: Conn, versions: list[int]) -> None:
        self._send(conn, self._hello(conn, versions))

    @rule(conn=conns)
    def send_correct_auth(self, conn: Conn) -> None:
        self._send(conn, self._correct_auth(conn))

    @rule(conn=conns)
    def send_wrong_auth(self, conn: Conn) -> None:
        self._send(conn, self._wrong_auth(conn))

    @rule(conn=conns, sleep=st.sampled_from([0, 0, 0.1, 0.5]),
          then_wait=st.sampled_from([True, True, False]))
    def send_run(self, conn: Conn, sleep: float, then_wait: bool) -> None:
        self._send(conn, self._run(conn, sleep))
        if then_wait:  # as a well-behaved client does; otherwise the next run may cross it
            self._finish_commands(conn)

    @rule(conn=conns, junk=st.binary(min_size=1, max_size=64))
    def send_junk(self, conn: Conn, junk: bytes) -> None:
        self._breaks_the_rules(conn)
        conn.garbled = True
        self._send(conn, junk)

    @rule(conn=conns, kind=st.sampled_from(["hello", "auth", "wrong_auth", "run", "cancel"]),
          cut=st.integers(min_value=1, max_value=1 << 16), pause=st.sampled_from([0, 0.02]))
    def send_split_frame(self, conn: Conn, kind: str, cut: int, pause: float) -> None:
        data = self._frame(conn, kind)
        self._send(conn, data, cut=1 + cut % (len(data) - 1), pause=pause)

    @rule(conn=conns, wait=st.sampled_from([0, 0.05, 0.3]))
    def read(self, conn: Conn, wait: float) -> None:
        self._read(conn, wait)

    @rule(conn=conns)
    def wait_for_exits(self, conn: Conn) -> None:
        """Read as a well-behaved client does before its next command."""
        self._finish_commands(conn)

    @rule(conn=consumes(conns))
    def disconnect(self, conn: Conn) -> None:
        self._read(conn)
        conn.sock.close()
        self.open.remove(conn)

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def server_is_alive(self) -> None:
        assert self.server.proc.poll() is None, self.server.log()[-3000:]

    @invariant()
    def no_unauthenticated_run_ran(self) -> None:
        ran = [m.name for m in self.forbidden if m.exists()]
        assert not ran, f"runs sent without authentication ran: {ran}"

    def _finish_commands(self, conn: Conn) -> None:
        """On an intact connection every command sent must end in an exit or a fatal error."""
        deadline = time.monotonic() + (0 if conn.garbled else SETTLE_TIMEOUT)
        self._read(conn)
        while conn.pending and not conn.closed and time.monotonic() < deadline:
            self._read(conn, wait=0.05)
        assert conn.garbled or conn.closed or not conn.pending, (
            f"no exit for {[m.name for m in conn.pending]} within {SETTLE_TIMEOUT} s")

    def teardown(self) -> None:
        try:
            for conn in self.open:
                self._finish_commands(conn)
        finally:  # a failed example must not leave sockets open for the next one to trip on
            for conn in self.open:
                conn.sock.close()
            self.open.clear()
        settled = wait_until(
            lambda: (fd_count(self.pid) <= self.baseline_fds
                     and not command_children(self.pid)
                     and not tagged_processes(self.tag)),
            timeout=SETTLE_TIMEOUT)
        assert settled, (
            f"fds {fd_count(self.pid)} (baseline {self.baseline_fds}),"
            f" children {command_children(self.pid)}, commands left {tagged_processes(self.tag)}")
        self.no_unauthenticated_run_ran()
        self.server_is_alive()


def command_children(pid: int) -> list[str]:
    """The server's live children, but for its guardian (which lives as long as it does)."""
    return [child for child in live_children(pid) if "rexec.server.exec.guardian" not in child]


@pytest.fixture(scope="module")
def machine_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The one server every example runs against.

    Failed authentications are not penalised: the machine fails many on purpose, and the
    penalty would make every later handshake from this host wait (tests/e2e/test_limits.py and
    test_hostile.py cover it). ``kill_grace`` is well under SETTLE_TIMEOUT: a command stopped
    by a broken connection is sent SIGTERM, and its exited leader is kept unreaped (its pidfd
    open) until the SIGKILL due after that grace, so that no other group can take its ID;
    with the default grace of 5 s the settling raced it.
    """
    tmp = tmp_path_factory.mktemp("stateful-server")
    config = tmp / "server.toml"
    config.write_text(f"[server]\nauth_penalty_max = 0\nkill_grace = {KILL_GRACE}\n")
    srv = start_server(tmp, "--config", str(config), env={"REXEC_HOME": str(tmp)})
    yield srv
    assert srv.stop() == 0, srv.log()


def test_sessions_state_machine(machine_server: ServerProcess, tmp_path: Path) -> None:
    server = machine_server
    assert rexec.run(server.address, "true", token=server.token).exit_code == 0
    assert wait_until(lambda: not command_children(server.proc.pid))
    time.sleep(0.2)  # the warm-up connection's close
    baseline_fds = fd_count(server.proc.pid)
    tag = new_nonce()[:16]
    run_state_machine_as_test(
        lambda: SessionMachine(server, tmp_path, baseline_fds, tag),
        settings=settings(max_examples=40, stateful_step_count=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
    assert server.proc.poll() is None
