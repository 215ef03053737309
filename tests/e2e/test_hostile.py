"""Hostile input against a real server: every case must leave it alive, its memory flat, nothing
run, and a legitimate client served.

Most cases send their bad bytes on a connection that is already authenticated and follow them with
a valid ``run`` frame that would create a marker file, so a server that parsed leniently, or read
on after a fatal error, would run a command and be caught by the marker.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import rexec
from rexec.client.core import Authenticated, ClientCore, Finished
from rexec.wire.codec import FrameDecoder, encode
from rexec.wire.frames import HANDSHAKE_MAX_HEADER, Auth, AuthOk, Error, Header, Run
from tests.helpers import (
    ServerProcess,
    fd_count,
    proc_status,
    start_server,
    wait_until,
)

MIB = 1024 * 1024
MEMORY_GROWTH_LIMIT = 20 * MIB
"""How much a case may grow the server's resident memory, now or at its peak during the case."""

READ_TIMEOUT = 10.0


# --- the server's vital signs ----------------------------------------------------------------


def reset_peak_memory(pid: int) -> None:
    """Make VmHWM restart from the current VmRSS (Linux 4.0+; best effort)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Case:
    """What a hostile case may use: the server, and a marker that no command may create."""

    server: ServerProcess
    marker: Path

    @property
    def touch(self) -> str:
        """A shell command that creates the marker: it must never run."""
        return f"touch {self.marker}"


@contextlib.contextmanager
def hostile(server: ServerProcess, tmp_path: Path) -> Iterator[Case]:
    """Run one hostile case and check that the server shrugged it off.

    Afterwards the server must still be alive, its memory (now and at its peak) within
    MEMORY_GROWTH_LIMIT of where it was before, the marker must not exist, and a legitimate client
    must still get ``echo ok`` run.
    """
    pid = server.proc.pid
    case = Case(server, tmp_path / "MARKER")
    baseline = proc_status(pid, "VmRSS")
    reset_peak_memory(pid)
    yield case
    assert server.proc.poll() is None, f"the server died:\n{server.log()[-3000:]}"
    grown = proc_status(pid, "VmRSS") - baseline
    peak = proc_status(pid, "VmHWM") - baseline
    assert grown < MEMORY_GROWTH_LIMIT, f"VmRSS grew by {grown / MIB:.1f} MiB"
    assert peak < MEMORY_GROWTH_LIMIT, f"VmRSS peaked {peak / MIB:.1f} MiB above the baseline"
    result = rexec.run(server.address, "echo ok", token=server.token, connect_timeout=5)
    assert result.stdout == b"ok\n", result
    # the legitimate run above took a round trip or two: a command smuggled in would have run
    assert not case.marker.exists(), "a command from a hostile connection ran"


def server_config(tmp: Path, *lines: str) -> Path:
    """A config file with these lines in its ``[server]`` table."""
    path = tmp / "server.toml"
    path.write_text("[server]\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module, warmed up by one command.

    Failed authentications are not penalised here: many cases end in auth_failed, and the
    penalty would slow every later case from this host. The 25-wrong-tokens case has a server
    of its own, with the penalty on.
    """
    tmp = tmp_path_factory.mktemp("hostile-server")
    srv = start_server(tmp, "--config", str(server_config(tmp, "auth_penalty_max = 0")),
                       env={"REXEC_HOME": str(tmp)})
    try:
        assert rexec.run(srv.address, "true", token=srv.token).exit_code == 0
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


# --- a hand-driven connection ----------------------------------------------------------------


def framed(header: bytes) -> bytes:
    """Header bytes with their length in front, whatever they contain."""
    return struct.pack(">I", len(header)) + header


class RawClient:
    """A connection driven by hand: send any bytes, read the server's frames.

    The handshake frames come from a real ClientCore, so the proofs are the client's own: the
    tests do not depend on how a proof is computed, only on what the server does with it.
    """

    def __init__(self, server: ServerProcess, timeout: float = READ_TIMEOUT,
                 identity: str | None = None) -> None:
        self.server = server
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.decoder = FrameDecoder()
        self.core = ClientCore(server.token, identity=identity)
        self._hello = self.core.data_to_send()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_frame(self) -> Header:
        """The server's next frame (AssertionError if it closes first)."""
        while (frame := self.decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.decoder.feed(data)
        return frame.header

    def hello_bytes(self, **changes: object) -> bytes:
        """The client's hello frame, with fields changed (not validated) if asked."""
        if not changes:
            return self._hello
        decoder = FrameDecoder()
        decoder.feed(self._hello)
        frame = decoder.next_frame()
        assert frame is not None
        return encode(frame.header.model_copy(update=changes))

    def hello(self) -> Header:
        """Send hello and return the server's answer (a challenge, normally)."""
        self.send(self.hello_bytes())
        return self.next_frame()

    def answer(self, challenge: Header, token: str | None = None) -> bytes:
        """The auth frame answering ``challenge``: from this client, or from one with ``token``."""
        assert challenge.type == "challenge", challenge
        core = self.core if token is None else ClientCore(token)
        core.data_to_send()  # another client's hello, never sent
        core.receive_data(encode(challenge))
        assert core.next_event() is None
        return core.data_to_send()

    def authenticate(self) -> None:
        """Do a correct handshake, checking the server's own proof."""
        self.send(self.answer(self.hello()))
        verdict = self.next_frame()
        assert verdict.type == "auth_ok", verdict
        self.core.receive_data(encode(verdict))
        assert isinstance(self.core.next_event(), Authenticated)  # raises if the proof is wrong

    def frames_until_close(self) -> list[Header]:
        """Everything the server sends until it closes; AssertionError if it never does."""
        frames = []
        while True:
            while (frame := self.decoder.next_frame()) is not None:
                frames.append(frame.header)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:  # it closed with our bytes unread: closed all the same
                return frames
            except TimeoutError:
                raise AssertionError(f"the server did not close; it sent {frames}") from None
            if not data:
                return frames
            self.decoder.feed(data)


def assert_refused(frames: list[Header], code: str) -> Error:
    """The server sent exactly one frame, a fatal error with ``code``, and closed."""
    assert len(frames) == 1, frames
    error = frames[0]
    assert isinstance(error, Error), frames
    assert (error.code, error.fatal) == (code, True), error
    return error


# --- one bad frame, then a command that must not run ------------------------------------------

Payload = Callable[[str], bytes]


def run_header(touch: str, **fields: object) -> bytes:
    """A run header's JSON, with extra or replaced fields (no validation: anything goes)."""
    return json.dumps({"size": 0, "type": "run", "command": touch, **fields}).encode()


def json_head(touch: str) -> str:
    """The start of a run header's JSON, to finish by hand."""
    return '{"type":"run","command":' + json.dumps(touch)


BAD_FRAMES: list[tuple[str, Payload, str]] = [
    ("length-0", lambda t: struct.pack(">I", 0), "bad_length"),
    ("length-0xffffffff", lambda t: struct.pack(">I", 0xFFFFFFFF) + run_header(t), "bad_length"),
    ("length-cap-plus-1", lambda t: struct.pack(">I", 64 * 1024 + 1), "bad_length"),
    ("not-json", lambda t: framed(t.encode()), "bad_header"),
    ("not-json-truncated", lambda t: framed(run_header(t)[:-1]), "bad_header"),
    ("json-array", lambda t: framed(json.dumps(["run", t]).encode()), "bad_header"),
    ("not-utf8", lambda t: framed(run_header(t).replace(b"touch", b"touch\xff")), "bad_header"),
    ("utf8-bom", lambda t: framed(b"\xef\xbb\xbf" + run_header(t)), "bad_header"),
    ("nested-100000", lambda t: framed((json_head(t) + ',"env":' + "[" * 100_000).encode()),
     "bad_length"),
    ("nested-60000", lambda t: framed((json_head(t) + ',"env":' + "[" * 60_000).encode()),
     "bad_header"),
    ("nested-30000-balanced", lambda t: framed(b"[" * 30_000 + b"]" * 30_000), "bad_header"),
    ("duplicate-key", lambda t: framed((json_head(t) + ',"command":' + json.dumps(t) + "}")
                                       .encode()), "bad_header"),
    ("duplicate-type", lambda t: framed((json_head(t) + ',"type":"run"}').encode()), "bad_header"),
    ("duplicate-env-name", lambda t: framed((json_head(t) + ',"env":{"A":"1","A":"2"}}')
                                            .encode()), "bad_header"),
    ("extra-key", lambda t: framed(run_header(t, sudo=True)), "bad_header"),
    ("string-size", lambda t: framed(run_header(t, size="0")), "bad_header"),
    ("string-timeout", lambda t: framed(run_header(t, timeout="5")), "bad_header"),
    ("float-size", lambda t: framed(run_header(t, size=0.0)), "bad_header"),
    ("bool-size", lambda t: framed(run_header(t, size=False)), "bad_header"),
    ("bool-stdin-as-string", lambda t: framed(run_header(t, stdin="false")), "bad_header"),
    ("nan-timeout", lambda t: framed(json_head(t).encode() + b',"timeout":NaN}'), "bad_header"),
    ("overflow-timeout", lambda t: framed(json_head(t).encode() + b',"timeout":1e999}'),
     "bad_header"),
    ("negative-size-run", lambda t: framed(run_header(t, size=-1)), "bad_header"),
    ("negative-size-stdin", lambda t: framed(b'{"type":"stdin","size":-1}'), "bad_header"),
    ("size-over-1mib", lambda t: framed(b'{"type":"stdin","size":1048577}'), "bad_header"),
    ("size-2**64", lambda t: framed(b'{"type":"stdin","size":18446744073709551616}'),
     "bad_header"),
    ("size-5000-digits", lambda t: framed(b'{"type":"stdin","size":' + b"9" * 5000 + b"}"),
     "bad_header"),
    ("control-frame-with-body", lambda t: framed(run_header(t, size=4)) + b"body", "bad_header"),
    ("unknown-type", lambda t: framed(b'{"type":"ping","size":0}'), "bad_header"),
    ("unknown-type-run-like", lambda t: framed(run_header(t, type="run_as_root")), "bad_header"),
    ("missing-type", lambda t: framed(json.dumps({"command": t}).encode()), "bad_header"),
    ("http-request", lambda t: b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"
                               + t.encode(), "bad_length"),
    ("tls-client-hello", lambda t: bytes.fromhex("160301020001000200fc0303") + b"\0" * 64,
     "bad_length"),
]


@pytest.mark.parametrize(("payload", "code"), [(p, c) for _, p, c in BAD_FRAMES],
                         ids=[name for name, _, _ in BAD_FRAMES])
@pytest.mark.parametrize("phase", ["fresh", "authenticated"])
def test_bad_frame_is_refused_and_nothing_after_it_runs(hostile_server, tmp_path, phase, payload,
                                                        code):
    with hostile(hostile_server, tmp_path) as case, RawClient(case.server) as raw:
        if phase == "authenticated":
            raw.authenticate()
        data = payload(case.touch)
        if phase == "fresh" and struct.unpack(">I", data[:4])[0] > HANDSHAKE_MAX_HEADER:
            code = "bad_length"  # before authentication, a header is capped at 4 KiB
        raw.send(data + encode(Run(command=case.touch)))
        assert_refused(raw.frames_until_close(), code)


# A lone surrogate cannot be written by json.dumps; these are written by hand, as a hostile
# client would. Each names the field the server must name back.
TEXT_FIELDS = [
    ("nul-command", lambda t: run_header(t + "\0"), "command"),
    ("nul-env-name", lambda t: run_header(t, env={"EVIL\0": "1"}), "env name"),
    ("nul-env-value", lambda t: run_header(t, env={"EVIL": "1\0"}), "env value"),
    ("nul-cwd", lambda t: run_header(t, cwd="/tmp\0"), "cwd"),
    ("surrogate-command", lambda t: (json_head(t)[:-1] + '\\ud800"}').encode(), "command"),
    ("surrogate-env-name", lambda t: (json_head(t) + ',"env":{"A\\ud800":"1"}}').encode(),
     "env name"),
    ("surrogate-env-value", lambda t: (json_head(t) + ',"env":{"A":"\\udfff"}}').encode(),
     "env value"),
    ("surrogate-cwd", lambda t: (json_head(t) + ',"cwd":"/tmp/\\ud800"}').encode(), "cwd"),
]


@pytest.mark.parametrize(("header", "field"), [(h, f) for _, h, f in TEXT_FIELDS],
                         ids=[name for name, _, _ in TEXT_FIELDS])
def test_nul_and_lone_surrogates_are_refused_naming_the_field(hostile_server, tmp_path, header,
                                                              field):
    with hostile(hostile_server, tmp_path) as case, RawClient(case.server) as raw:
        raw.authenticate()
        raw.send(framed(header(case.touch)))
        error = assert_refused(raw.frames_until_close(), "bad_header")
        assert field in error.message, error.message


# --- out of order before authentication ------------------------------------------------------


PRE_AUTH: list[tuple[str, Callable[[RawClient, str], bytes], list[str], str]] = [
    ("run-first", lambda raw, t: encode(Run(command=t)), [], "unexpected_frame"),
    ("run-after-hello", lambda raw, t: raw.hello_bytes() + encode(Run(command=t)),
     ["challenge"], "unexpected_frame"),
    ("auth-ok-first", lambda raw, t: encode(AuthOk(mac="0" * 64)), [], "unexpected_frame"),
    ("auth-ok-instead-of-auth", lambda raw, t: raw.hello_bytes() + encode(AuthOk(mac="0" * 64)),
     ["challenge"], "unexpected_frame"),
    ("auth-before-hello", lambda raw, t: encode(Auth(mac="0" * 64)), [], "unexpected_frame"),
    ("hello-twice", lambda raw, t: raw.hello_bytes() * 2, ["challenge"], "unexpected_frame"),
    ("version-7-only", lambda raw, t: raw.hello_bytes(versions=[7]), [], "unsupported_version"),
    ("versions-without-1-to-6", lambda raw, t: raw.hello_bytes(versions=[7, 8, 65535]), [],
     "unsupported_version"),
    ("version-0", lambda raw, t: raw.hello_bytes(versions=[0]), [], "bad_header"),
    ("no-versions", lambda raw, t: raw.hello_bytes(versions=[]), [], "bad_header"),
    ("auth-with-null-proof",
     lambda raw, t: raw.hello_bytes() + framed(b'{"type":"auth","mac":null}'),
     ["challenge"], "auth_failed"),
    ("auth-without-proof", lambda raw, t: raw.hello_bytes() + framed(b'{"type":"auth"}'),
     ["challenge"], "auth_failed"),
    ("auth-proof-of-zeros", lambda raw, t: raw.hello_bytes() + encode(Auth(mac="0" * 64)),
     ["challenge"], "auth_failed"),
    ("cancel-first", lambda raw, t: framed(b'{"type":"cancel"}'), [], "unexpected_frame"),
    ("stdin-first", lambda raw, t: framed(b'{"type":"stdin","size":4}') + b"ls\n\n", [],
     "unexpected_frame"),
]


@pytest.mark.parametrize(("payload", "before", "code"), [(p, b, c) for _, p, b, c in PRE_AUTH],
                         ids=[name for name, _, _, _ in PRE_AUTH])
def test_frames_out_of_order_before_auth_are_refused(hostile_server, tmp_path, payload, before,
                                                     code):
    with hostile(hostile_server, tmp_path) as case, RawClient(case.server) as raw:
        raw.send(payload(raw, case.touch) + encode(Run(command=case.touch)))
        frames = raw.frames_until_close()
        assert [f.type for f in frames[:-1]] == before, frames
        assert_refused(frames[-1:], code)


@pytest.mark.parametrize("identity", ["root", "nobody", "default2"])
def test_the_right_token_for_an_unknown_identity_is_refused(hostile_server, tmp_path, identity):
    with hostile(hostile_server, tmp_path) as case, \
            RawClient(case.server, identity=identity) as raw:
        challenge = raw.hello()
        raw.send(raw.answer(challenge) + encode(Run(command=case.touch)))
        assert_refused(raw.frames_until_close(), "auth_failed")


def test_body_shorter_than_declared_then_eof(hostile_server, tmp_path):
    with hostile(hostile_server, tmp_path) as case, RawClient(case.server) as raw:
        raw.authenticate()
        # The short body is a whole run frame: it must stay stdin data, never become a frame.
        raw.send(framed(b'{"type":"stdin","size":1000}') + encode(Run(command=case.touch)))
        raw.sock.shutdown(socket.SHUT_WR)
        assert_refused(raw.frames_until_close(), "truncated")


def test_header_shorter_than_declared_then_eof(hostile_server, tmp_path):
    with hostile(hostile_server, tmp_path) as case, RawClient(case.server) as raw:
        raw.authenticate()
        whole = encode(Run(command=case.touch))
        raw.send(whole[:-1])  # all but the closing brace
        raw.sock.shutdown(socket.SHUT_WR)
        assert_refused(raw.frames_until_close(), "truncated")


# --- slow, replayed and repeated clients -----------------------------------------------------


def drive(sock: socket.socket, core: ClientCore, sent: list[bytes], command: str,
          send: Callable[[bytes], None]) -> Finished:
    """Handshake, run ``command`` and return its end, recording every chunk sent."""
    started = False
    while True:
        event = core.next_event()
        if isinstance(event, Authenticated) and not started:
            core.start(command)
            started = True
        if out := core.data_to_send():
            sent.append(out)
            send(out)
        if isinstance(event, Finished):
            return event
        if event is None:
            data = sock.recv(65536)
            if not data:
                core.receive_eof()
            else:
                core.receive_data(data)


def test_valid_session_one_byte_at_a_time(hostile_server, tmp_path):
    with hostile(hostile_server, tmp_path) as case:
        sock = socket.create_connection((case.server.host, case.server.port), timeout=10)
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def trickle(data: bytes) -> None:
                for byte in data:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.0005)

            core = ClientCore(case.server.token)
            finished = drive(sock, core, [], "printf 'byte by byte'", trickle)
        assert finished.result.exit_code == 0
        assert finished.result.stdout == b"byte by byte"


@pytest.mark.parametrize("pace", ["at-once", "paced"])
def test_recorded_session_replayed_is_refused(hostile_server, tmp_path, pace):
    with hostile(hostile_server, tmp_path) as case:
        sent: list[bytes] = []
        sock = socket.create_connection((case.server.host, case.server.port), timeout=10)
        with sock:
            finished = drive(sock, ClientCore(case.server.token), sent, case.touch, sock.sendall)
        assert finished.result.exit_code == 0
        assert case.marker.exists(), "the genuine session did not run its command"
        case.marker.unlink()
        assert len(sent) == 3, "expected three chunks: hello, auth, run"
        with RawClient(case.server) as raw:
            if pace == "paced":  # as an attacker would: wait for the challenge, then go on
                raw.send(sent[0])
                assert raw.next_frame().type == "challenge"
                raw.send(b"".join(sent[1:]))
            else:
                raw.send(b"".join(sent))
            frames = raw.frames_until_close()
        if pace == "at-once":
            assert frames and frames[0].type == "challenge", frames
            frames = frames[1:]
        assert_refused(frames, "auth_failed")


def test_wrong_tokens_in_a_row_are_refused_then_the_right_one_works(tmp_path):
    # The penalty capped at 0.2 s (3 s by default) keeps 25 attempts in a row to a few seconds.
    srv = start_server(tmp_path, "--config",
                       str(server_config(tmp_path, "auth_penalty_max = 0.2")))
    try:
        with hostile(srv, tmp_path) as case:
            for attempt in range(25):
                with RawClient(srv, timeout=5) as raw:
                    started = time.monotonic()
                    challenge = raw.hello()
                    raw.send(raw.answer(challenge, token=f"wrong-token-{attempt}")
                             + encode(Run(command=case.touch)))
                    assert_refused(raw.frames_until_close(), "auth_failed")
                    assert time.monotonic() - started < 5, f"attempt {attempt} took too long"
            deadline = time.monotonic() + 30
            while True:
                try:
                    result = rexec.run(srv.address, "echo in", token=srv.token, connect_timeout=5)
                    break
                except rexec.RexecError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            assert result.stdout == b"in\n"
    finally:
        assert srv.stop() == 0, srv.log()


def test_handshake_dripped_one_byte_per_second_is_cut_at_the_deadline(tmp_path):
    srv = start_server(tmp_path, "--config", str(server_config(tmp_path, "handshake_timeout = 2")))
    try:
        with hostile(srv, tmp_path) as case, RawClient(case.server) as raw:
            raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.sock.setblocking(False)
            started = time.monotonic()
            received = bytearray()
            closed_at = None
            for byte in raw.hello_bytes():
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    raw.sock.send(bytes([byte]))
                second = time.monotonic() + 1
                while closed_at is None and (left := second - time.monotonic()) > 0:
                    if select.select([raw.sock], [], [], left)[0]:
                        try:
                            data = raw.sock.recv(65536)
                        except ConnectionResetError:
                            data = b""
                        received += data
                        if not data:
                            closed_at = time.monotonic()
                if closed_at is not None or time.monotonic() - started > 8:
                    break
            assert closed_at is not None, "the server never closed the dripping connection"
            assert 1.5 < closed_at - started < 5, closed_at - started
            raw.decoder.feed(received)
            frames = []
            while (frame := raw.decoder.next_frame()) is not None:
                frames.append(frame.header)
            assert_refused(frames, "handshake_timeout")
    finally:
        assert srv.stop() == 0, srv.log()


def test_500_idle_connections_do_not_starve_a_real_client(tmp_path):
    # A long handshake deadline, so the idle connections stay idle for the whole test. They
    # come from another source than the client: one source may keep 64 of them waiting
    # (per_source_max_startups), and the server refuses the rest at once.
    srv = start_server(tmp_path, "--config",
                       str(server_config(tmp_path, "handshake_timeout = 120")))
    pid = srv.proc.pid
    try:
        assert rexec.run(srv.address, "true", token=srv.token).exit_code == 0
        fds = fd_count(pid)
        with hostile(srv, tmp_path):
            idle: list[socket.socket] = []
            try:
                while len(idle) < 500:
                    for _ in range(50):
                        idle.append(socket.create_connection((srv.host, srv.port), timeout=10,
                                                             source_address=("127.0.0.2", 0)))
                    time.sleep(0.05)  # let the server accept them: no SYN waits for a retransmit
                for n in range(5):
                    started = time.monotonic()
                    result = rexec.run(srv.address, f"echo {n}", token=srv.token,
                                       connect_timeout=5)
                    assert result.stdout == f"{n}\n".encode()
                    assert time.monotonic() - started < 5
            finally:
                for sock in idle:
                    sock.close()
            assert wait_until(lambda: fd_count(pid) <= fds + 2, timeout=10), (fds, fd_count(pid))
    finally:
        assert srv.stop() == 0, srv.log()


@pytest.mark.parametrize("kind", ["shell", "resize", "run-with-pty"])
def test_version_2_frames_on_a_version_1_connection_are_refused(hostile_server, tmp_path, kind):
    from rexec.wire.frames import Resize, Shell, Terminal, Window

    with hostile(hostile_server, tmp_path) as case, RawClient(case.server) as raw:
        raw.send(raw.hello_bytes(versions=[1]))  # a version-1 client
        challenge = raw.next_frame()
        assert challenge.type == "challenge" and challenge.version == 1
        raw.send(raw.answer(challenge))
        assert raw.next_frame().type == "auth_ok"
        terminal = Terminal(rows=24, cols=80)
        frame = {"shell": Shell(pty=terminal), "resize": Resize(window=Window(rows=5, cols=5)),
                 "run-with-pty": Run(command=case.touch, pty=terminal)}[kind]
        raw.send(encode(frame))
        frames = raw.frames_until_close()
        assert_refused(frames[-1:], "unexpected_frame")
        assert "protocol version 1" in frames[-1].message


@pytest.mark.parametrize("kind", ["put", "get"])
def test_file_frames_on_a_version_2_connection_are_refused(hostile_server, tmp_path, kind):
    from rexec.wire.frames import Get, Put

    with hostile(hostile_server, tmp_path) as case, RawClient(case.server) as raw:
        raw.send(raw.hello_bytes(versions=[2, 1]))  # a version-2 client
        challenge = raw.next_frame()
        assert challenge.type == "challenge" and challenge.version == 2
        raw.send(raw.answer(challenge))
        assert raw.next_frame().type == "auth_ok"
        target = tmp_path / "should-not-exist"
        frame = {"put": Put(path=str(target), file_size=0, sha256="0" * 64),
                 "get": Get(path="/etc/hostname")}[kind]
        raw.send(encode(frame))
        frames = raw.frames_until_close()
        assert_refused(frames[-1:], "unexpected_frame")
        assert "protocol version 2" in frames[-1].message
        assert not target.exists()
