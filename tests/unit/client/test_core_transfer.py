"""ClientCore's put and get (protocol version 3) against a server-role Connection in memory."""

from __future__ import annotations

import hashlib

import pytest

from rexec.client.core import (
    OWNED_CHUNK_MIN,
    Authenticated,
    ClientCore,
    DownloadStarted,
    FileChunk,
    TransferFinished,
    UploadReady,
)
from rexec.errors import ConnectionLost, InvalidRequest, ProtocolError, TransferFailed
from rexec.wire import frames as f
from rexec.wire.codec import encode
from rexec.wire.protocol import State
from tests.unit.client.test_core import TOKEN, FakeServer, handshake

DATA = bytes(range(256)) * 41  # 10,496 bytes
SHA = hashlib.sha256(DATA).hexdigest()


def events(core: ClientCore) -> list[object]:
    out: list[object] = []
    while (event := core.next_event()) is not None:
        if isinstance(event, FileChunk):
            event = FileChunk(memoryview(bytes(event.data)))
        out.append(event)
    return out


def done(changed: bool = True, size: int = len(DATA), sha: str = SHA) -> f.TransferDone:
    return f.TransferDone(changed=changed, file_size=size, sha256=sha, duration=0.25)


def put(core: ClientCore, server: FakeServer, path: str = "/srv/f", data: bytes = DATA,
        **kwargs: object) -> f.Put:
    core.start_put(path, file_size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                   **kwargs)  # type: ignore[arg-type]
    [(frame, _)] = server.receive()
    assert isinstance(frame, f.Put)
    return frame


# --- put -----------------------------------------------------------------------------------


def test_put_declares_the_file_then_sends_it_within_the_credit() -> None:
    core, server = handshake()
    frame = put(core, server, mode=0o640, mtime_ns=123, force=True)
    assert (frame.path, frame.file_size, frame.sha256) == ("/srv/f", len(DATA), SHA)
    assert (frame.mode, frame.mtime_ns, frame.force) == (0o640, 123, True)
    assert core.transferring and not core.uploading and core.file_credit == 0
    server.send(f.PutReady())
    assert events(core) == [UploadReady()]
    assert core.uploading and core.file_credit == f.FILE_WINDOW
    assert core.upload_remaining == len(DATA)
    core.send_file_data(DATA[:1000])
    core.send_file_data(DATA[1000:])
    assert core.upload_remaining == 0
    sent = server.receive()
    assert [h.type for h, _ in sent] == ["file_data", "file_data"]
    assert b"".join(body for _, body in sent) == DATA
    server.send(f.FileCredit(amount=len(DATA)))
    server.send(done())
    assert events(core) == [TransferFinished(True, len(DATA), SHA, 0.25)]
    assert core.ready and not core.transferring and core.file_credit == 0


def test_the_server_has_the_file_already_nothing_is_sent() -> None:
    core, server = handshake()
    put(core, server)
    server.send(done(changed=False))
    assert events(core) == [TransferFinished(False, len(DATA), SHA, 0.25)]
    assert core.ready


def test_an_empty_file_may_be_done_at_once() -> None:
    core, server = handshake()
    put(core, server, data=b"")
    empty = hashlib.sha256(b"").hexdigest()
    server.send(done(size=0, sha=empty))
    assert events(core) == [TransferFinished(True, 0, empty, 0.25)]


def test_file_data_is_cut_into_frames_of_at_most_max_body_size() -> None:
    core, server = handshake()
    data = b"x" * (f.MAX_BODY_SIZE * 2 + 5)
    put(core, server, data=data)
    server.send(f.PutReady())
    events(core)
    core.send_file_data(data)
    sizes = [len(body) for _, body in server.receive()]
    assert sizes == [f.MAX_BODY_SIZE, f.MAX_BODY_SIZE, 5]


def test_no_more_than_the_credit_and_the_window_refills_with_file_credit() -> None:
    core, server = handshake()
    data = b"y" * (f.FILE_WINDOW + 10)
    put(core, server, data=data)
    server.send(f.PutReady())
    events(core)
    with pytest.raises(ValueError, match="exceed the credit"):
        core.send_file_data(data)
    core.send_file_data(data[: f.FILE_WINDOW])
    assert core.file_credit == 0
    server.receive()
    server.send(f.FileCredit(amount=4096))
    assert events(core) == []
    assert core.file_credit == 4096
    core.send_file_data(data[f.FILE_WINDOW:])
    assert core.upload_remaining == 0


def test_a_small_file_in_hand_goes_with_its_put_and_is_answered_at_once() -> None:
    core, server = handshake()
    small = DATA[:3000]
    sha = hashlib.sha256(small).hexdigest()
    assert core.inline_puts  # version 6
    assert core.start_put("/srv/f", file_size=len(small), sha256=sha, data=small)
    [(frame, body)] = server.receive()
    assert isinstance(frame, f.Put) and frame.size == len(small) and bytes(body) == small
    assert core.transferring and not core.uploading
    server.send(done(size=len(small), sha=sha))
    assert events(core) == [TransferFinished(True, len(small), sha, 0.25)]
    assert core.ready
    # too large, not hashed, or a check: the bytes wait for put_ready, as in version 3
    big = b"b" * (f.INLINE_PUT_MAX + 1)
    assert not core.start_put("/srv/g", file_size=len(big), data=big,
                              sha256=hashlib.sha256(big).hexdigest())
    [(frame, body)] = server.receive()
    assert frame.size == 0 and not body
    server.send(f.PutReady())
    assert events(core) == [UploadReady()]


def test_put_ready_after_a_put_that_carried_its_file_is_a_protocol_error() -> None:
    core, server = handshake()
    small = b"tiny"
    core.start_put("/srv/f", file_size=4, sha256=hashlib.sha256(small).hexdigest(), data=small)
    server.receive()
    server.send(f.PutReady())
    with pytest.raises(ProtocolError, match="came with its put"):
        events(core)


def test_no_more_than_the_declared_size_and_nothing_before_put_ready() -> None:
    core, server = handshake()
    put(core, server, data=b"abc")
    with pytest.raises(RuntimeError, match="putting"):
        core.send_file_data(b"a")
    server.send(f.PutReady())
    events(core)
    with pytest.raises(ValueError, match="only 3"):
        core.send_file_data(b"abcd")


@pytest.mark.parametrize("code", ["refused", "permission_denied", "not_a_directory", "too_large"])
def test_a_refused_put_is_transfer_failed_and_the_connection_is_ready(code: str) -> None:
    core, server = handshake()
    put(core, server, path="/etc/passwd")
    server.send(f.Error(code=code, message="/etc/passwd: no", fatal=False))  # type: ignore[arg-type]
    with pytest.raises(TransferFailed) as info:
        core.next_event()
    assert (info.value.code, info.value.path) == (code, "/etc/passwd")
    assert str(info.value) == "server: /etc/passwd: no"
    assert core.ready and not core.transferring
    put(core, server)  # the connection goes on


def test_an_error_without_the_path_gets_it() -> None:
    core, server = handshake()
    put(core, server, path="/srv/x")
    server.send(f.PutReady())
    events(core)
    core.send_file_data(DATA[:100])
    server.send(f.Error(code="no_space", message="no space left on device", fatal=False))
    with pytest.raises(TransferFailed, match=r"^server: /srv/x: no space left") as info:
        events(core)
    assert info.value.code == "no_space"
    assert not core.uploading and core.file_credit == 0 and core.upload_remaining == 0
    with pytest.raises(RuntimeError):
        core.send_file_data(b"z")  # the driver stops sending


def test_cancel_during_a_put_is_sent_and_answered_cancelled() -> None:
    core, server = handshake()
    put(core, server)
    server.send(f.PutReady())
    events(core)
    core.cancel()
    core.cancel()  # once per transfer: the server answers each cancel
    assert [h.type for h, _ in server.receive()] == ["cancel"]
    server.send(f.Error(code="cancelled", message="cancelled", fatal=False))
    with pytest.raises(TransferFailed) as info:
        events(core)
    assert info.value.code == "cancelled"
    core.cancel()  # no transfer any more: nothing sent
    assert core.pending == 0


def test_done_before_every_byte_was_sent_is_a_protocol_error() -> None:
    core, server = handshake()
    put(core, server)
    server.send(f.PutReady())
    events(core)
    core.send_file_data(DATA[:10])
    server.receive()
    server.send(done())
    with pytest.raises(ProtocolError, match="after 10 of its") as info:
        events(core)
    assert info.value.code == "size_mismatch"


def test_done_with_another_digest_is_a_protocol_error() -> None:
    core, server = handshake()
    put(core, server)
    server.send(done(changed=False, sha="0" * 64))
    with pytest.raises(ProtocolError) as info:
        events(core)
    assert info.value.code == "checksum_mismatch"


def test_a_put_request_is_checked_before_it_is_sent() -> None:
    core, _ = handshake()
    with pytest.raises(InvalidRequest, match="remote path is empty") as info:
        core.start_put("", file_size=0, sha256=SHA)
    assert info.value.field == "path"
    with pytest.raises(InvalidRequest, match="0o7777"):
        core.start_put("/x", file_size=0, sha256=SHA, mode=0o10000)
    with pytest.raises(InvalidRequest, match="NUL"):
        core.start_get("/x\x00y")
    assert core.pending == 0 and core.ready


def test_one_transfer_at_a_time() -> None:
    core, server = handshake()
    put(core, server)
    with pytest.raises(RuntimeError, match="putting"):
        core.start_get("/x")
    with pytest.raises(RuntimeError):
        core.start("true")


def test_a_lost_connection_during_a_put_says_so() -> None:
    core, server = handshake()
    put(core, server, path="/srv/big")
    server.send(f.PutReady())
    events(core)
    core.send_file_data(DATA[:7])
    core.receive_eof()
    with pytest.raises(ConnectionLost, match=r"put of /srv/big, after 7 bytes sent"):
        core.next_event()


# --- get -----------------------------------------------------------------------------------


def get(core: ClientCore, server: FakeServer, path: str = "/var/f") -> None:
    core.start_get(path)
    [(frame, _)] = server.receive()
    assert isinstance(frame, f.Get) and frame.path == path


def test_get_receives_info_chunks_and_a_checked_done() -> None:
    core, server = handshake()
    get(core, server)
    server.send(f.FileInfo(file_size=len(DATA), mode=0o600, mtime_ns=99))
    server.send(f.FileData(size=5000), DATA[:5000])
    server.send(f.FileData(size=len(DATA) - 5000), DATA[5000:])
    server.send(done())
    got = events(core)
    assert got[0] == DownloadStarted(len(DATA), 0o600, 99)
    assert b"".join(bytes(e.data) for e in got[1:-1] if isinstance(e, FileChunk)) == DATA
    assert got[-1] == TransferFinished(True, len(DATA), SHA, 0.25)
    assert core.ready and not core.transferring


def test_a_get_hashed_elsewhere_is_counted_and_its_digest_left_to_the_caller() -> None:
    core, server = handshake()
    get(core, server)
    with pytest.raises(RuntimeError, match="right after DownloadStarted"):
        core.hash_download_elsewhere()  # before file_info: too early
    server.send(f.FileInfo(file_size=len(DATA), mode=0o600, mtime_ns=99))
    server.send(f.FileData(size=5000), DATA[:5000])
    assert isinstance(core.next_event(), DownloadStarted)
    core.hash_download_elsewhere()
    assert isinstance(core.next_event(), FileChunk)
    with pytest.raises(RuntimeError, match="right after DownloadStarted"):
        core.hash_download_elsewhere()  # bytes came already: too late
    server.send(f.FileData(size=len(DATA) - 5000), DATA[5000:])
    wrong = "0" * 64  # the core does not judge it: the caller compares its own digest
    server.send(done(sha=wrong))
    got = events(core)
    assert got[-1] == TransferFinished(True, len(DATA), wrong, 0.25)
    assert core.ready


def test_a_get_received_into_the_callers_buffers_hands_them_over_owned() -> None:
    core, server = handshake()
    get(core, server)
    big = DATA * (OWNED_CHUNK_MIN // len(DATA) + 1)
    server.send(f.FileInfo(file_size=len(big) + 100, mode=0o600, mtime_ns=99))
    assert isinstance(core.next_event(), DownloadStarted)
    buffers: list[bytearray] = []

    def allocate(size: int) -> memoryview:
        buffers.append(bytearray(size))
        return memoryview(buffers[-1])

    core.receive_file_into(allocate)
    server.send(f.FileData(size=len(big)), big)
    server.send(f.FileData(size=100), big[:100])  # under OWNED_CHUNK_MIN: the core's buffer
    whole = core.next_event()
    assert isinstance(whole, FileChunk) and whole.owned and whole.data.obj is buffers[0]
    assert bytes(whole.data) == big
    tail = core.next_event()
    assert isinstance(tail, FileChunk) and not tail.owned and bytes(tail.data) == big[:100]
    core.receive_file_into(None)
    server.send(done(size=len(big) + 100, sha=hashlib.sha256(big + big[:100]).hexdigest()))
    assert isinstance(core.next_event(), TransferFinished)
    get(core, server)  # the next get: in the core's buffer again
    server.send(f.FileInfo(file_size=len(big), mode=0o600, mtime_ns=99))
    server.send(f.FileData(size=len(big)), big)
    assert isinstance(core.next_event(), DownloadStarted)
    chunk = core.next_event()
    assert isinstance(chunk, FileChunk) and not chunk.owned and len(buffers) == 1


def test_get_of_an_empty_file() -> None:
    core, server = handshake()
    get(core, server)
    empty = hashlib.sha256(b"").hexdigest()
    server.send(f.FileInfo(file_size=0, mode=0o644, mtime_ns=0))
    server.send(done(size=0, sha=empty))
    assert events(core) == [DownloadStarted(0, 0o644, 0), TransferFinished(True, 0, empty, 0.25)]


def test_get_refused() -> None:
    core, server = handshake()
    get(core, server, "/nope")
    server.send(f.Error(code="not_found", message="/nope: no such file", fatal=False))
    with pytest.raises(TransferFailed, match="/nope: no such file") as info:
        events(core)
    assert info.value.code == "not_found" and core.ready


def test_get_failing_midway() -> None:
    core, server = handshake()
    get(core, server)
    server.send(f.FileInfo(file_size=len(DATA), mode=0o644, mtime_ns=0))
    server.send(f.FileData(size=10), DATA[:10])
    server.send(f.Error(code="changed_while_reading", message="/var/f changed", fatal=False))
    with pytest.raises(TransferFailed) as info:
        events(core)
    assert info.value.code == "changed_while_reading" and core.ready


def test_a_corrupted_get_is_caught() -> None:
    core, server = handshake()
    get(core, server)
    server.send(f.FileInfo(file_size=len(DATA), mode=0o644, mtime_ns=0))
    server.send(f.FileData(size=len(DATA)), b"\xff" + DATA[1:])
    server.send(done())
    with pytest.raises(ProtocolError, match="SHA-256") as info:
        events(core)
    assert info.value.code == "checksum_mismatch"


@pytest.mark.parametrize(("sent", "declared"), [(100, len(DATA)), (len(DATA), 100)])
def test_a_get_whose_sizes_disagree_is_caught(sent: int, declared: int) -> None:
    core, server = handshake()
    get(core, server)
    server.send(f.FileInfo(file_size=len(DATA), mode=0o644, mtime_ns=0))
    server.send(f.FileData(size=sent), DATA[:sent])
    server.send(done(size=declared, sha=hashlib.sha256(DATA[:sent]).hexdigest()))
    with pytest.raises(ProtocolError) as info:
        events(core)
    assert info.value.code == "size_mismatch"


def test_more_bytes_than_announced_are_refused_at_once() -> None:
    core, server = handshake()
    get(core, server)
    server.send(f.FileInfo(file_size=3, mode=0o644, mtime_ns=0))
    server.send(f.FileData(size=4), b"abcd")
    with pytest.raises(ProtocolError, match="more than the 3 bytes"):
        events(core)


def test_cancel_during_a_get() -> None:
    core, server = handshake()
    get(core, server)
    server.send(f.FileInfo(file_size=len(DATA), mode=0o644, mtime_ns=0))
    events(core)
    core.cancel()
    assert [h.type for h, _ in server.receive()] == ["cancel"]


def test_file_data_outside_a_get_is_a_protocol_error() -> None:
    core, _ = handshake()
    core.receive_data(encode(f.FileData(size=1), b"x"))
    with pytest.raises(ProtocolError):
        events(core)


# --- older servers -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_server_is_told_to_upgrade(version: int) -> None:
    core = ClientCore(TOKEN, agent="test-agent", address="old:7878")
    server = FakeServer(core)
    server.challenge(version=version)
    server.read_auth()
    server.accept()
    assert isinstance(core.next_event(), Authenticated)
    message = (f"the server at old:7878 speaks protocol version {version}, without file"
               r" transfer \(fake-server/9\): upgrade rexec-server")
    with pytest.raises(ProtocolError, match=message) as info:
        core.start_put("/x", file_size=0, sha256=SHA)
    assert info.value.code == "unsupported_version"
    with pytest.raises(ProtocolError, match=message):
        core.start_get("/x")
    assert core.pending == 0 and core.conn.state is State.READY
