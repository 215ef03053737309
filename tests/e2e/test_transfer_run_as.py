"""put and get for an identity with ``run_as``, against a real server running as root.

The files are read and written as that user (``nobody``, as in the other run_as tests): what
it creates is its own, what it may not read or write is ``permission_denied``, and the
server's own threads stay root throughout. The frames are the raw ones of
test_transfer_server.py; one case goes through the real CLI for the message a person sees.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rexec.wire.auth import TokenVerifier
from rexec.wire.frames import MAX_BODY_SIZE, Error, FileData, Put, PutReady, TransferDone
from tests.e2e.test_transfer_server import download, raw, sha, temps, upload
from tests.helpers import (
    credentials,
    public_directory,
    run_cli,
    start_server,
    wait_until,
    write_token,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

DEPLOY_TOKEN = "deploy-token-with-enough-entropy-0123456789"
LOOSE_TOKEN = "loose-token-with-enough-entropy-0123456789"
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture(scope="module")
def area() -> Iterator[Path]:
    """The file_roots: root's 0755, holding nobody's directory, a 0700 one, two root files."""
    with public_directory("rexec-run-as-") as base:
        (base / "drop").mkdir()
        os.chown(base / "drop", NOBODY.pw_uid, NOBODY.pw_gid)
        (base / "private").mkdir(mode=0o700)
        (base / "secret").write_bytes(b"root's only\n")
        (base / "secret").chmod(0o600)
        (base / "notice").write_bytes(b"for everyone\n")
        (base / "notice").chmod(0o644)
        yield base


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, area: Path) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("run-as")
    config = tmp / "server.toml"
    config.write_text(f"""
[server]
audit_log = "{tmp / 'audit.jsonl'}"

[server.identities.deploy]
token_hash = "{TokenVerifier.from_token(DEPLOY_TOKEN).format()}"
run_as = "nobody"
file_roots = ["{area}"]

[server.identities.loose]
token_hash = "{TokenVerifier.from_token(LOOSE_TOKEN).format()}"
run_as = "nobody"
""")
    server = start_server(tmp, "--config", str(config))
    server.tmp = tmp  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0, server.log()


def threads(pid: int) -> dict[int, dict[str, list[int]]]:
    """Each live thread of ``pid``: its credentials."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[int(task.name)] = credentials(task / "status")
        except OSError:
            continue  # ended meanwhile
    return found


def audited(srv: Any, path: Path) -> list[dict[str, Any]]:
    records = map(json.loads, (srv.tmp / "audit.jsonl").read_text().splitlines())
    return [r for r in records if r.get("event") == "transfer" and r.get("path") == str(path)]


def test_a_put_creates_a_file_owned_by_the_run_as_user(srv: Any, area: Path) -> None:
    target = area / "drop" / "app.conf"
    with raw(srv, DEPLOY_TOKEN, "deploy") as r:
        done = upload(r, target, b"listen 8080\n")
        assert isinstance(done, TransferDone) and done.changed, done
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert st.st_mode & 0o7777 == 0o644 and target.read_bytes() == b"listen 8080\n"
    assert wait_until(lambda: len(audited(srv, target)) == 2)
    assert [(a["result"], a["run_as"]) for a in audited(srv, target)] == [
        ("started", "nobody"), ("ok", "nobody")]


def test_a_put_where_the_user_may_not_write_is_permission_denied(srv: Any, area: Path) -> None:
    before = sorted(p.name for p in area.iterdir())
    with raw(srv, DEPLOY_TOKEN, "deploy") as r:
        # a 0700 directory of root's (not even searchable), and root's 0755 file_roots itself
        for target in (area / "private" / "x", area / "x"):
            refused = upload(r, target, b"planted\n")
            assert isinstance(refused, Error) and not refused.fatal, refused
            assert (refused.code, refused.message) == (
                "permission_denied", f"{target}: permission denied")
        assert isinstance(upload(r, area / "drop" / "after", b"ok"), TransferDone)  # still usable
    assert list((area / "private").iterdir()) == []
    assert sorted(p.name for p in area.iterdir()) == before
    assert temps(area) == [] and temps(area / "drop") == []


def test_a_get_reads_only_what_the_user_may(srv: Any, area: Path) -> None:
    with raw(srv, DEPLOY_TOKEN, "deploy") as r:
        refused, got, info = download(r, area / "secret")
        assert isinstance(refused, Error) and not refused.fatal, refused
        assert (refused.code, refused.message) == (
            "permission_denied", f"{area / 'secret'}: permission denied")
        assert (got, info) == (b"", None)
        done, got, info = download(r, area / "notice")
        assert isinstance(done, TransferDone) and done.sha256 == sha(b"for everyone\n")
        assert got == b"for everyone\n" and info is not None and info.mode == 0o644


def test_a_file_of_roots_in_the_users_directory_is_replaced_as_the_user(srv: Any,
                                                                       area: Path) -> None:
    # The user may replace (rename over) what is in its own directory, but may not give the new
    # file to root: it becomes the user's, as the user's own cp + mv would make it. Its mode is
    # kept, and a file the user cannot read is simply not "unchanged".
    target = area / "drop" / "rootfile"
    target.write_bytes(b"old\n")
    target.chmod(0o640)
    with raw(srv, DEPLOY_TOKEN, "deploy") as r:
        done = upload(r, target, b"new\n")
        assert isinstance(done, TransferDone) and done.changed, done
    st = target.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o640)
    assert target.read_bytes() == b"new\n"


def test_only_the_transfer_thread_switches_and_it_ends_with_the_connection(srv: Any,
                                                                         area: Path) -> None:
    pid = srv.proc.pid
    main = credentials(Path(f"/proc/{pid}/task/{pid}/status"))
    assert main["Uid"] == [0, 0, 0, 0] and main["Gid"] == [0, 0, 0, 0]
    data = os.urandom(4 * MAX_BODY_SIZE)
    target = area / "drop" / "big"
    with raw(srv, DEPLOY_TOKEN, "deploy") as r:
        r.send(Put(path=str(target), file_size=len(data), sha256=sha(data)))
        assert isinstance(r.recv()[0], PutReady)
        r.send(FileData(size=MAX_BODY_SIZE), data[:MAX_BODY_SIZE])
        assert wait_until(lambda: temps(area / "drop"), 10)  # under way, as nobody
        during = threads(pid)
        switched = [c for c in during.values() if c["Uid"][3] != 0]
        assert len(switched) == 1, during
        assert switched[0]["Uid"] == [0, 0, 0, NOBODY.pw_uid]
        assert switched[0]["Gid"] == [0, 0, 0, NOBODY.pw_gid]
        assert switched[0]["CapEff"] == [0]
        others = [c for c in during.values() if c["Uid"][3] == 0]
        assert len(others) == len(during) - 1 and during[pid] == main
        assert all(c == main for c in others), during
        for start in range(MAX_BODY_SIZE, len(data), MAX_BODY_SIZE):
            r.send(FileData(size=MAX_BODY_SIZE), data[start:start + MAX_BODY_SIZE])
        while not isinstance(header := r.recv()[0], TransferDone | Error):
            pass
        assert isinstance(header, TransferDone), header
    assert target.read_bytes() == data and target.stat().st_uid == NOBODY.pw_uid
    # the thread ends with its connection: none is left that is not root
    assert wait_until(lambda: all(c == main for c in threads(pid).values()), 10), threads(pid)
    assert credentials(Path(f"/proc/{pid}/task/{pid}/status")) == main


def test_run_as_without_file_roots_may_not_transfer(srv: Any, area: Path) -> None:
    target = area / "drop" / "loose"
    with raw(srv, LOOSE_TOKEN, "loose") as r:
        refused = upload(r, target, b"x")
        assert isinstance(refused, Error) and refused.code == "refused", refused
        assert "'loose'" in refused.message and "no file_roots" in refused.message
        header, _, _ = download(r, area / "notice")
        assert isinstance(header, Error) and header.code == "refused"
    assert not target.exists()


def test_the_cli_names_the_path_the_user_may_not_write(srv: Any, area: Path,
                                                       tmp_path: Path) -> None:
    source = tmp_path / "app.tar"
    source.write_bytes(b"tar" * 100)
    token = write_token(tmp_path / "deploy-token", DEPLOY_TOKEN)
    target = area / "private" / "app.tar"
    proc = run_cli("put", "--token-file", str(token), "-i", "deploy", srv.address,
                   str(source), str(target), timeout=60.0)
    assert proc.returncode == 255, proc
    line = proc.stderr.decode()
    assert line.startswith("rexec: ") and line.count("\n") == 1, line
    assert f"{target}: permission denied" in line
    assert list((area / "private").iterdir()) == []
