"""The server's side of put and get (protocol version 3), frame by frame, against a real server.

The handshake is the real client's; after it the frames are sent and read raw, so the server's
answers (and its refusals) are checked exactly as a second implementation would see them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rexec.client.blocking import BlockingClient
from rexec.wire.auth import TokenVerifier
from rexec.wire.frames import (
    FILE_WINDOW,
    MAX_BODY_SIZE,
    Cancel,
    Error,
    FileCredit,
    FileData,
    FileInfo,
    Get,
    Header,
    Put,
    PutReady,
    TransferDone,
)
from tests.helpers import TOKEN, proc_status, start_server, wait_until

MIB = 1024 * 1024
ROBOT_TOKEN = "robot-token-with-enough-entropy-0123456789"
STEP = 20.0


class Raw:
    """Frames over an authenticated connection, sent and read one at a time."""

    def __init__(self, client: BlockingClient) -> None:
        self.sock: socket.socket = client._sock  # type: ignore[attr-defined, assignment]
        self.conn = client._core.conn  # type: ignore[attr-defined, union-attr]
        self.sock.setblocking(True)
        self.sock.settimeout(STEP)

    def send(self, header: Header, body: bytes = b"") -> None:
        self.sock.sendall(self.conn.send(header, body))

    def recv(self) -> tuple[Header, bytes]:
        while (frame := self.conn.next_frame()) is None:
            data = self.sock.recv(1 << 20)
            if not data:
                self.conn.receive_eof()
                raise ConnectionError("the server closed the connection")
            self.conn.receive_data(data)
        return frame.header, bytes(frame.body)


@contextlib.contextmanager
def raw(srv: Any, token: str = TOKEN, identity: str | None = None) -> Iterator[Raw]:
    with BlockingClient(srv.address, token=token, identity=identity) as client:
        yield Raw(client)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(r: Raw, path: Path | str, data: bytes, *, end: Header | None = None,
           **fields: Any) -> Header:
    """put ``data`` to ``path`` (then ``end``, a put_end, if given); the server's last answer
    (transfer_done or error)."""
    r.send(Put(path=str(path), file_size=len(data), sha256=fields.pop("sha256", sha(data)),
               **fields))
    header, _ = r.recv()
    if not isinstance(header, PutReady):
        return header
    for start in range(0, len(data), MAX_BODY_SIZE):
        r.send(FileData(size=len(data[start:start + MAX_BODY_SIZE])),
               data[start:start + MAX_BODY_SIZE])
    if end is not None:
        r.send(end)
    while isinstance(header := r.recv()[0], FileCredit):
        pass
    return header


def download(r: Raw, path: Path | str) -> tuple[Header, bytes, FileInfo | None]:
    """get ``path``: the last answer, the bytes received, the file_info (if any)."""
    r.send(Get(path=str(path)))
    header, _ = r.recv()
    if not isinstance(header, FileInfo):
        return header, b"", None
    info, got = header, bytearray()
    while True:
        header, body = r.recv()
        if not isinstance(header, FileData):
            return header, bytes(got), info
        got += body


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".rexec-tmp-" in p.name]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("transfer")
    (tmp / "root").mkdir()
    (tmp / "outside").mkdir()
    config = tmp / "server.toml"
    config.write_text(f"""
[server]
audit_log = "{tmp / 'audit.jsonl'}"

[server.identities.robot]
token_hash = "{TokenVerifier.from_token(ROBOT_TOKEN).format()}"
allow = ["true"]
file_roots = ["{tmp / 'root'}"]
max_file_size = 1000

[server.identities.ops]
token_hash = "{TokenVerifier.from_token(ROBOT_TOKEN + 'ops').format()}"
allow = ["true"]
""")
    server = start_server(tmp, "--config", str(config))
    server.tmp = tmp  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0, server.log()


def test_a_put_writes_the_file_and_a_second_finds_it_unchanged(srv: Any, tmp_path: Path) -> None:
    data = os.urandom(3 * MAX_BODY_SIZE + 17)
    target = tmp_path / "blob"
    with raw(srv) as r:
        done = upload(r, target, data)
        assert isinstance(done, TransferDone) and done.changed
        assert done.file_size == len(data) and done.sha256 == sha(data)
        assert target.read_bytes() == data
        assert target.stat().st_mode & 0o7777 == 0o644
        r.send(Put(path=str(target), file_size=len(data), sha256=sha(data)))
        again, _ = r.recv()  # no put_ready: no data is sent for the same content
        assert isinstance(again, TransferDone) and not again.changed
        forced = upload(r, target, data, force=True, mode=0o600)
        assert isinstance(forced, TransferDone) and forced.changed
        assert target.stat().st_mode & 0o7777 == 0o600
    assert temps(tmp_path) == []


def test_an_empty_file_needs_no_data_frame(srv: Any, tmp_path: Path) -> None:
    with raw(srv) as r:
        r.send(Put(path=str(tmp_path / "empty"), file_size=0, sha256=sha(b""),
                   mtime_ns=1_000_000_000_123_456_789))
        done, _ = r.recv()
        assert isinstance(done, TransferDone) and done.changed
    assert (tmp_path / "empty").read_bytes() == b""
    assert (tmp_path / "empty").stat().st_mtime_ns == 1_000_000_000_123_456_789


def test_a_wrong_checksum_leaves_the_old_file_and_no_temporary(srv: Any, tmp_path: Path) -> None:
    target = tmp_path / "config"
    target.write_bytes(b"old\n")
    with raw(srv) as r:
        failed = upload(r, target, b"new content\n", sha256=sha(b"something else"))
        assert isinstance(failed, Error) and not failed.fatal
        assert failed.code == "checksum_mismatch"
        ok = upload(r, target, b"new\n")  # the connection stays usable
        assert isinstance(ok, TransferDone)
    assert target.read_bytes() == b"new\n"
    assert temps(tmp_path) == []


def test_a_get_sends_the_file_with_its_checksum(srv: Any, tmp_path: Path) -> None:
    data = os.urandom(2 * MAX_BODY_SIZE + 5)
    source = tmp_path / "log"
    source.write_bytes(data)
    source.chmod(0o640)
    with raw(srv) as r:
        done, got, info = download(r, source)
        assert info is not None and info.file_size == len(data) and info.mode == 0o640
        assert isinstance(done, TransferDone) and done.sha256 == sha(data)
        assert got == data
        missing, _, _ = download(r, tmp_path / "nope")
        assert isinstance(missing, Error) and missing.code == "not_found"
        assert "nope" in missing.message


def test_cancel_mid_upload_is_answered_and_leaves_nothing(srv: Any, tmp_path: Path) -> None:
    target = tmp_path / "big"
    target.write_bytes(b"keep")
    with raw(srv) as r:
        r.send(Put(path=str(target), file_size=10 * MAX_BODY_SIZE, sha256=sha(b"x")))
        assert isinstance(r.recv()[0], PutReady)
        r.send(FileData(size=1000), b"y" * 1000)
        r.send(Cancel())
        header, _ = r.recv()
        while isinstance(header, FileCredit):
            header, _ = r.recv()
        assert isinstance(header, Error) and header.code == "cancelled" and not header.fatal
        assert isinstance(upload(r, tmp_path / "after", b"ok"), TransferDone)
    assert target.read_bytes() == b"keep"
    assert temps(tmp_path) == []


def test_a_client_gone_mid_upload_leaves_the_old_file(srv: Any, tmp_path: Path) -> None:
    target = tmp_path / "release"
    target.write_bytes(b"v1")
    with raw(srv) as r:
        r.send(Put(path=str(target), file_size=5 * MAX_BODY_SIZE, sha256=sha(b"v2")))
        assert isinstance(r.recv()[0], PutReady)
        r.send(FileData(size=MAX_BODY_SIZE), b"z" * MAX_BODY_SIZE)
        assert wait_until(lambda: temps(tmp_path), 10)  # the upload is under way
    assert wait_until(lambda: not temps(tmp_path), 10)  # gone with the client
    assert target.read_bytes() == b"v1"


def test_more_data_than_declared_is_refused_and_nothing_is_written(srv: Any,
                                                                   tmp_path: Path) -> None:
    with raw(srv) as r:
        r.send(Put(path=str(tmp_path / "short"), file_size=10, sha256=sha(b"0123456789")))
        assert isinstance(r.recv()[0], PutReady)
        r.send(FileData(size=20), b"01234567890123456789")
        header = r.recv()[0]
        assert isinstance(header, Error) and not header.fatal
        assert header.code == "size_mismatch"
    assert not (tmp_path / "short").exists()
    assert temps(tmp_path) == []


def test_file_roots_confine_a_policy_identity(srv: Any) -> None:
    root, outside = srv.tmp / "root", srv.tmp / "outside"
    (root / "escape").symlink_to(outside)
    with raw(srv, ROBOT_TOKEN, "robot") as r:
        assert isinstance(upload(r, root / "app.conf", b"ok\n"), TransferDone)
        for path in (outside / "x", root / "escape" / "x", f"{root}/../outside/x"):
            refused = upload(r, path, b"bad\n")
            assert isinstance(refused, Error) and not refused.fatal, path
            assert refused.code in ("refused", "bad_path"), refused
        too_big = upload(r, root / "big", b"b" * 1001)  # max_file_size = 1000
        assert isinstance(too_big, Error) and too_big.code == "too_large"
        header, _, _ = download(r, root / "escape" / "secret")
        assert isinstance(header, Error) and header.code == "refused"
    assert list(outside.iterdir()) == []
    assert (root / "app.conf").read_bytes() == b"ok\n"


def test_a_policy_identity_without_file_roots_may_not_transfer(srv: Any, tmp_path: Path) -> None:
    with raw(srv, ROBOT_TOKEN + "ops", "ops") as r:
        refused = upload(r, tmp_path / "crontab", b"* * * * * evil\n")
        assert isinstance(refused, Error) and refused.code == "refused"
        assert "file_roots" in refused.message
        header, _, _ = download(r, "/etc/hostname")
        assert isinstance(header, Error) and header.code == "refused"
    assert not (tmp_path / "crontab").exists()


def test_every_transfer_is_audited(srv: Any, tmp_path: Path) -> None:
    with raw(srv) as r:
        upload(r, tmp_path / "audited", b"abc")
        upload(r, tmp_path / "audited", b"abc")
        download(r, tmp_path / "missing")
    audit = srv.tmp / "audit.jsonl"

    def mine() -> list[dict[str, Any]]:
        return [rec for rec in map(json.loads, audit.read_text().splitlines())
                if rec.get("event") == "transfer" and str(tmp_path) in rec.get("path", "")]

    assert wait_until(lambda: len(mine()) == 6, 10)
    assert [r["result"] for r in mine()[::2]] == ["started"] * 3  # each before it acts
    put1, put2, get = mine()[1::2]
    assert (put1["op"], put1["result"], put1["changed"], put1["bytes"]) == ("put", "ok", True, 3)
    assert put1["sha256"] == sha(b"abc") and put1["identity"] == "default"
    assert (put2["result"], put2["changed"]) == ("ok", False)
    assert (get["op"], get["result"]) == ("get", "not_found")
    assert time.time() >= 0  # records carry their own time; the order above is theirs


def test_transfers_back_to_back_on_one_connection(srv: Any, tmp_path: Path) -> None:
    # The next put follows each transfer_done at once: it must find the session ready for it
    # (a transfer's end once cleared the session's record of the one started after it).
    with raw(srv) as r:
        for n in range(20):
            data = bytes([n]) * (MAX_BODY_SIZE + n)
            done = upload(r, tmp_path / f"f{n % 3}", data, force=True)
            assert isinstance(done, TransferDone) and done.sha256 == sha(data), n
            header, got, _ = download(r, tmp_path / f"f{n % 3}")
            assert isinstance(header, TransferDone) and got == data, n


def test_a_large_upload_holds_little_of_it_in_the_server(srv: Any, tmp_path: Path) -> None:
    # The bytes pass through: what the server holds at once is the window the client may send
    # without credit, a frame and a read, whatever the file's size.
    size = 160 * MIB
    source = tmp_path / "big"
    with source.open("wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
    pid = srv.proc.pid
    with BlockingClient(srv.address, token=TOKEN) as client:
        client.run("true")  # the connection's own memory is in the baseline
        baseline = proc_status(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM restarts from VmRSS
        result = client.put(source, str(tmp_path / "copy"), force=True)
        peak = proc_status(pid, "VmHWM") - baseline
    assert result.bytes == size and (tmp_path / "copy").stat().st_size == size
    assert peak < FILE_WINDOW + 8 * MIB, f"the server's memory peaked {peak / MIB:.1f} MiB up"


def test_a_slow_download_is_not_an_idle_connection(tmp_path: Path) -> None:
    # idle_timeout counts time without frames *and without work*: a get that the client reads
    # slowly sends it no frame for seconds, and must not be cut off
    config = tmp_path / "server.toml"
    config.write_text("[server]\nidle_timeout = 1\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        source = tmp_path / "big"
        data = os.urandom(32 * MAX_BODY_SIZE)
        source.write_bytes(data)
        with raw(server) as r:
            r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            r.send(Get(path=str(source)))
            header, _ = r.recv()
            assert isinstance(header, FileInfo)
            got = bytearray()
            started = time.monotonic()
            while True:
                header, body = r.recv()
                if not isinstance(header, FileData):
                    break
                got += body
                if time.monotonic() - started < 2.5:
                    time.sleep(0.15)  # a slow reader: the whole get takes over 2 s
            assert isinstance(header, TransferDone), header
            assert bytes(got) == data and time.monotonic() - started > 2
    finally:
        assert server.stop() == 0, server.log()


def test_a_shutdown_lets_an_upload_under_way_finish(tmp_path: Path) -> None:
    import signal

    config = tmp_path / "server.toml"
    config.write_text("[server]\nshutdown_grace = 20\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        data = os.urandom(4 * MAX_BODY_SIZE)
        target = tmp_path / "release"
        with raw(server) as r:
            r.send(Put(path=str(target), file_size=len(data), sha256=sha(data)))
            assert isinstance(r.recv()[0], PutReady)
            r.send(FileData(size=MAX_BODY_SIZE), data[:MAX_BODY_SIZE])
            server.proc.send_signal(signal.SIGTERM)  # with a quarter of the file sent
            time.sleep(0.5)
            for start in range(MAX_BODY_SIZE, len(data), MAX_BODY_SIZE):
                r.send(FileData(size=MAX_BODY_SIZE), data[start:start + MAX_BODY_SIZE])
            frames = []
            with contextlib.suppress(ConnectionError):
                while not (frames and isinstance(frames[-1], Error)):
                    frames.append(r.recv()[0])
            done = [f for f in frames if isinstance(f, TransferDone)]
            assert len(done) == 1 and done[0].changed, frames
            assert isinstance(frames[-1], Error) and frames[-1].code == "shutting_down"
        assert target.read_bytes() == data
    finally:
        server.stop()


def test_no_transfer_without_a_working_audit_log(tmp_path: Path) -> None:
    import resource

    audit = tmp_path / "audit.jsonl"
    # larger than the server's own log will grow, so the size limit below fails only the audit
    audit.write_text('{"event": "padding"}\n' * 50_000)
    audit.chmod(0o600)
    server = start_server(tmp_path, "--audit-log", str(audit))
    try:
        target = tmp_path / "unaudited"
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (audit.stat().st_size, hard))
        with raw(server) as r:
            refused = upload(r, target, b"ten bytes!")
            assert isinstance(refused, Error) and not refused.fatal
            assert refused.code == "audit_unavailable"
            assert not target.exists()
            header, _, _ = download(r, audit)
            assert isinstance(header, Error) and header.code == "audit_unavailable"
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
            assert isinstance(upload(r, target, b"ten bytes!"), TransferDone)  # recovered
        assert target.read_bytes() == b"ten bytes!"
    finally:
        assert server.stop() == 0, server.log()


# -- version 4: an upload announced without its SHA-256, given in put_end after the bytes ------


def stream_put(r: Raw, path: Path | str, data: bytes, digest: str | None = None,
               **fields: Any) -> Header:
    """put ``data`` with sha256 null, then put_end with ``digest`` (default: the right one)."""
    from rexec.wire.frames import PutEnd

    return upload(r, path, data, sha256=None, end=PutEnd(sha256=digest or sha(data)), **fields)


def test_an_upload_may_give_its_digest_after_the_bytes(srv: Any, tmp_path: Path) -> None:
    data = os.urandom(2 * MAX_BODY_SIZE + 5)
    target = tmp_path / "streamed"
    with raw(srv) as r:
        done = stream_put(r, target, data)
        assert isinstance(done, TransferDone) and done.changed and done.sha256 == sha(data)
        assert target.read_bytes() == data
        # a file of the same size is there: the server needs the digest to tell
        other = os.urandom(len(data))
        asked = stream_put(r, target, other)
        assert isinstance(asked, Error) and asked.code == "digest_required" and not asked.fatal
        assert target.read_bytes() == data
        assert isinstance(upload(r, target, other), TransferDone)  # with the digest first
        assert target.read_bytes() == other
        # --no-skip never asks
        done = stream_put(r, target, data, force=True)
        assert isinstance(done, TransferDone) and target.read_bytes() == data
        # a wrong digest at the end: nothing replaced
        bad = stream_put(r, tmp_path / "bad", b"abc", digest="0" * 64)
        assert isinstance(bad, Error) and bad.code == "checksum_mismatch"
        empty = stream_put(r, tmp_path / "empty", b"")
        assert isinstance(empty, TransferDone) and empty.sha256 == sha(b"")
    assert not (tmp_path / "bad").exists() and temps(tmp_path) == []
    assert (tmp_path / "empty").read_bytes() == b""


def test_put_end_before_the_last_byte_is_a_protocol_error(srv: Any, tmp_path: Path) -> None:
    from rexec.wire.frames import PutEnd

    with raw(srv) as r:
        r.send(Put(path=str(tmp_path / "early"), file_size=10, sha256=None))
        assert isinstance(r.recv()[0], PutReady)
        r.send(FileData(size=5), b"12345")
        r.send(PutEnd(sha256=sha(b"1234567890")))
        error = r.recv()[0]
        assert isinstance(error, Error) and error.fatal and error.code == "unexpected_frame"
    assert wait_until(lambda: temps(tmp_path) == [], 10)  # removed as the connection ends
    assert not (tmp_path / "early").exists()


# -- version 5: a put that only checks ---------------------------------------------------------


def tree_state(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry's (mode, size, mtime_ns) under ``folder``, the folder's own included."""
    state = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = path.lstat()
        state[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def check_put(r: Raw, path: Path | str, data: bytes, **fields: Any) -> Header:
    r.send(Put(path=str(path), file_size=len(data), sha256=sha(data), check=True, **fields))
    return r.recv()[0]


def test_a_check_put_says_what_a_put_would_do_and_writes_nothing(srv: Any,
                                                                   tmp_path: Path) -> None:
    target = tmp_path / "app.conf"
    target.write_bytes(b"old\n")
    target.chmod(0o644)
    before = tree_state(tmp_path)
    with raw(srv) as r:
        same = check_put(r, target, b"old\n")
        assert isinstance(same, TransferDone) and not same.changed
        other_mode = check_put(r, target, b"old\n", mode=0o600)
        assert isinstance(other_mode, TransferDone) and other_mode.changed
        content = check_put(r, target, b"new\n")
        assert isinstance(content, TransferDone) and content.changed
        assert content.sha256 == sha(b"new\n") and content.file_size == 4
        new_file = check_put(r, tmp_path / "new.conf", b"x" * 5000)
        assert isinstance(new_file, TransferDone) and new_file.changed
        forced = check_put(r, target, b"old\n", force=True)
        assert isinstance(forced, TransferDone) and forced.changed
        missing = check_put(r, tmp_path / "no-such-dir" / "f", b"x")
        assert isinstance(missing, Error) and missing.code == "not_found" and not missing.fatal
        # the connection goes on: a real put after the checks
        assert isinstance(upload(r, target, b"old\n"), TransferDone)
    assert tree_state(tmp_path) == before  # not a byte, a mode or an mtime changed


def test_a_check_put_meets_the_same_refusals(srv: Any) -> None:
    root = srv.tmp / "root"
    before = tree_state(root)
    with raw(srv, ROBOT_TOKEN, "robot") as r:
        refused = check_put(r, srv.tmp / "outside" / "x", b"bad\n")
        assert isinstance(refused, Error) and refused.code == "refused"
        too_big = check_put(r, root / "big", b"b" * 1001)  # max_file_size = 1000
        assert isinstance(too_big, Error) and too_big.code == "too_large"
    assert tree_state(root) == before


def test_a_check_put_without_its_digest_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="check true carries its sha256"):
        Put(path="/tmp/x", file_size=1, sha256=None, check=True)
