"""Directory transfers (`put -r`, `get -r`, protocol version 4) against a real server.

The CLI tests drive the real ``rexec put -r`` / ``rexec get -r``; the frame tests speak raw
frames after a real handshake, to show that the receiving side checks every path itself.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from rexec.wire.frames import Error, FileEntry, FileList, Put, PutDir, PutLink, TransferDone
from tests.e2e.test_transfer_server import ROBOT_TOKEN, raw, sha, srv, upload  # noqa: F401
from tests.helpers import run_cli


def rexec(server: Any, token_file: Path, verb: str, *args: str) -> Any:
    return run_cli(verb, "--token-file", str(token_file), "--json", *args[:-2],
                   server.address, *args[-2:], timeout=60.0)


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry beneath ``root``: kind, permission bits, content or link target."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


def make_tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "bin" / "start").write_bytes(b"#!/bin/sh\necho start\n")
    (root / "bin" / "start").chmod(0o755)
    (root / "etc" / "app.conf").write_bytes(b"port = 8080\n")
    (root / "etc" / "app.conf").chmod(0o640)
    (root / "etc" / "conf.d" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (root / "zero").write_bytes(b"")
    (root / "etc" / "current").symlink_to("conf.d")  # inside the tree: kept as a link
    (root / "empty").chmod(0o700)


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    return local, remote


def test_put_r_then_get_r_copies_the_tree_exactly(server, client_token_file, trees):
    local, remote = trees
    make_tree(local / "app")
    proc = rexec(server, client_token_file, "put", "-r", str(local / "app"), str(remote / "app"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["files"], doc["directories"], doc["links"]) == (4, 4, 1)
    assert doc["bytes"] == 3 * 1024 * 1024 + 5 + 21 + 12
    assert doc["errors"] == [] and doc["error"] is None
    assert snapshot(remote / "app") == snapshot(local / "app")
    assert (remote / "app" / "etc" / "current").is_symlink()

    # again: nothing to write
    again = json.loads(rexec(server, client_token_file, "put", "-r", str(local / "app"),
                             str(remote / "app")).stdout)
    assert again["changed"] == 0 and again["files"] == 4

    proc = rexec(server, client_token_file, "get", "-r", str(remote / "app"), str(local / "back"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["files"], doc["directories"], doc["links"]) == (4, 4, 1)
    assert snapshot(local / "back") == snapshot(local / "app")


def test_a_trailing_slash_puts_the_tree_under_its_own_name(server, client_token_file, trees):
    local, remote = trees
    make_tree(local / "app")
    proc = rexec(server, client_token_file, "put", "-r", str(local / "app"), f"{remote}/srv/")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(remote / "srv" / "app") == snapshot(local / "app")
    proc = rexec(server, client_token_file, "get", "-r", str(remote / "srv" / "app"),
                 f"{local}/copy/")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(local / "copy" / "app") == snapshot(local / "app")


def test_preserve_keeps_the_mtimes_of_files_and_directories(server, client_token_file, trees):
    local, remote = trees
    make_tree(local / "app")
    old = 1_600_000_000_000_000_000
    for path in [local / "app" / "bin" / "start", local / "app" / "etc"]:
        os.utime(path, ns=(old, old))
    proc = rexec(server, client_token_file, "put", "-r", "-p", str(local / "app"),
                 str(remote / "app"))
    assert proc.returncode == 0, proc.stderr
    assert (remote / "app" / "bin" / "start").stat().st_mtime_ns == old
    assert (remote / "app" / "etc").stat().st_mtime_ns == old
    proc = rexec(server, client_token_file, "get", "-r", "-p", str(remote / "app"),
                 str(local / "back"))
    assert proc.returncode == 0, proc.stderr
    assert (local / "back" / "bin" / "start").stat().st_mtime_ns == old
    assert (local / "back" / "etc").stat().st_mtime_ns == old


def test_put_r_refuses_a_link_out_of_the_tree_and_puts_the_rest(server, client_token_file,
                                                                 trees):
    local, remote = trees
    make_tree(local / "app")
    (local / "app" / "passwd").symlink_to("/etc/passwd")
    (local / "app" / "bin" / "up").symlink_to("../../outside")
    proc = rexec(server, client_token_file, "put", "-r", str(local / "app"), str(remote / "app"))
    assert proc.returncode == 255
    doc = json.loads(proc.stdout)
    assert sorted(e["path"] for e in doc["errors"]) == ["bin/up", "passwd"]
    assert {e["code"] for e in doc["errors"]} == {"refused"}
    assert b"'passwd' -> '/etc/passwd' is absolute" in proc.stderr
    assert b"2 of the entries failed" in proc.stderr
    assert not (remote / "app" / "passwd").exists() and not (remote / "app" / "passwd").is_symlink()
    assert (remote / "app" / "etc" / "conf.d" / "big.bin").stat().st_size == 3 * 1024 * 1024 + 5


def test_get_r_checks_what_the_server_lists(server, client_token_file, trees):
    local, remote = trees
    make_tree(remote / "app")
    (remote / "app" / "escape").symlink_to("../../..")
    proc = rexec(server, client_token_file, "get", "-r", str(remote / "app"), str(local / "app"))
    assert proc.returncode == 255
    doc = json.loads(proc.stdout)
    assert [(e["path"], e["code"]) for e in doc["errors"]] == [("escape", "refused")]
    assert not (local / "app" / "escape").is_symlink()
    assert (local / "app" / "bin" / "start").read_bytes() == b"#!/bin/sh\necho start\n"


def test_get_r_never_writes_through_a_link_already_in_the_destination(server, client_token_file,
                                                                      trees, tmp_path):
    local, remote = trees
    make_tree(remote / "app")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (local / "app").mkdir()
    (local / "app" / "bin").symlink_to(elsewhere)
    proc = rexec(server, client_token_file, "get", "-r", str(remote / "app"), str(local / "app"))
    assert proc.returncode == 255
    assert list(elsewhere.iterdir()) == []
    paths = sorted(e["path"] for e in json.loads(proc.stdout)["errors"])
    assert paths == ["bin", "bin/start"]


def test_a_put_to_a_directory_lands_under_the_files_name(server, client_token_file, trees):
    local, remote = trees
    (local / "f.txt").write_bytes(b"hello\n")
    proc = rexec(server, client_token_file, "put", str(local / "f.txt"), str(remote))
    assert proc.returncode == 0, proc.stderr
    assert (remote / "f.txt").read_bytes() == b"hello\n"


def test_usage_errors_of_r(server, client_token_file, trees):
    local, remote = trees
    (local / "f.txt").write_bytes(b"x")
    proc = rexec(server, client_token_file, "put", "-r", "--mode", "0600", str(local),
                 str(remote / "x"))
    assert proc.returncode == 2 and b"--mode applies to one file" in proc.stderr
    proc = rexec(server, client_token_file, "put", "-r", str(local / "f.txt"), str(remote / "x"))
    assert proc.returncode == 255 and b"not a directory" in proc.stderr
    proc = rexec(server, client_token_file, "put", str(local), str(remote / "x"))
    assert proc.returncode == 255 and b"use -r" in proc.stderr
    proc = rexec(server, client_token_file, "get", "-r", str(remote / "missing"),
                 str(local / "m"))
    assert proc.returncode == 255 and b"no such file or directory" in proc.stderr


# -- the server checks what a put -r sends, frame by frame --------------------------------------


def test_the_server_refuses_entry_paths_that_leave_the_tree(srv, tmp_path):  # noqa: F811
    base = tmp_path / "tree"
    with raw(srv) as r:
        r.send(PutDir(path=str(base), mode=0o750))
        done = r.recv()[0]
        assert isinstance(done, TransferDone) and done.changed and done.sha256 is None
        assert stat.S_IMODE(base.stat().st_mode) == 0o750
        for bad in ["../x", "a/../../x", "/etc/x", "a//b", "./a"]:
            answer = upload(r, bad, b"data", base=str(base))
            assert isinstance(answer, Error) and answer.code == "bad_path", bad
        r.send(PutLink(path="out", base=str(base), target="../outside"))
        answer = r.recv()[0]
        assert isinstance(answer, Error) and answer.code == "refused"
        r.send(PutLink(path="in", base=str(base), target="sub"))
        assert isinstance(r.recv()[0], TransferDone)
        r.send(PutDir(path="sub", base=str(base)))
        assert isinstance(r.recv()[0], TransferDone)
        # a link the tree holds is not followed either, even one that stays inside
        answer = upload(r, "in/x", b"data", base=str(base))
        assert isinstance(answer, Error) and answer.code == "refused", answer
        done = upload(r, "sub/x", b"data", base=str(base))
        assert isinstance(done, TransferDone) and done.sha256 == sha(b"data")
    assert sorted(p.name for p in base.iterdir()) == ["in", "sub"]
    assert (base / "sub" / "x").read_bytes() == b"data"


def test_file_roots_hold_for_every_step_of_a_tree(srv):  # noqa: F811
    root, outside = srv.tmp / "root", srv.tmp / "outside"
    with raw(srv, ROBOT_TOKEN, "robot") as r:
        r.send(PutDir(path=str(outside / "t")))
        answer = r.recv()[0]
        assert isinstance(answer, Error) and answer.code == "refused"
        r.send(PutDir(path=str(root / "t")))
        assert isinstance(r.recv()[0], TransferDone)
        r.send(FileList(path=str(outside)))
        answer = r.recv()[0]
        assert isinstance(answer, Error) and answer.code == "refused"
        (root / "t" / "f").write_bytes(b"abc")
        r.send(FileList(path=str(root / "t")))
        entry = r.recv()[0]
        assert isinstance(entry, FileEntry)
        assert (entry.kind, entry.path, entry.file_size) == ("file", "f", 3)
        done = r.recv()[0]
        assert isinstance(done, TransferDone) and done.file_size == 3
    assert not (outside / "t").exists()
    records = [json.loads(line) for line in (srv.tmp / "audit.jsonl").read_text().splitlines()]
    refused = [r for r in records if r.get("op") == "put_dir" and r.get("result") == "refused"]
    assert refused and refused[-1]["path"] == str(outside / "t")


def test_a_put_naming_a_directory_uses_the_name_given(srv, tmp_path):  # noqa: F811
    with raw(srv) as r:
        done = upload(r, tmp_path, b"x", name="given")
        assert isinstance(done, TransferDone)
        done = upload(r, tmp_path / "new", b"y", name="ignored")  # not a directory: the path
        assert isinstance(done, TransferDone)
    assert (tmp_path / "given").read_bytes() == b"x"
    assert (tmp_path / "new").read_bytes() == b"y"
    with pytest.raises(ValueError, match="one path component"):
        Put(path=str(tmp_path), name="../up", file_size=0, sha256="0" * 64)


def test_the_python_api_puts_and_gets_trees(server, trees):
    import asyncio

    import rexec
    from rexec.client.blocking import BlockingClient

    local, remote = trees
    make_tree(local / "app")

    async def main() -> tuple[rexec.TreeResult, rexec.TreeResult]:
        async with rexec.Client(server.address, token=server.token) as client:
            up = await client.put_tree(local / "app", str(remote / "app"))
            down = await client.get_tree(str(remote / "app"), local / "back")
            return up, down

    up, down = asyncio.run(main())
    assert up.ok and (up.files, up.directories, up.links, up.changed) == (4, 4, 1, 10)
    assert down.ok and down.bytes == up.bytes
    assert snapshot(local / "back") == snapshot(local / "app")
    with BlockingClient(server.address, token=server.token) as client:
        again = client.put_tree(local / "app", str(remote / "app"))
        assert again.ok and again.changed == 0
        (local / "app" / "etc" / "app.conf").write_bytes(b"port = 9090\n")
        seen: list[tuple[int, int]] = []
        changed = client.put_tree(local / "app", str(remote / "app"),
                                  on_progress=lambda done, total: seen.append((done, total)))
        assert changed.changed == 1
        assert seen and seen[-1][1] == changed.bytes
    assert (remote / "app" / "etc" / "app.conf").read_bytes() == b"port = 9090\n"


def test_a_new_file_is_read_once_and_a_same_size_one_is_hashed_first(server, trees,
                                                                      monkeypatch):
    from rexec.client import transfer
    from rexec.client.blocking import BlockingClient

    local, remote = trees
    hashed: list[Path] = []
    real = transfer._digest

    def counting(fd: int, path: Path) -> transfer.Digest:
        hashed.append(path)
        return real(fd, path)

    monkeypatch.setattr(transfer, "_digest", counting)
    src = local / "data.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024 + 1))
    with BlockingClient(server.address, token=server.token) as client:
        first = client.put(src, str(remote / "data.bin"))
        assert first.changed and hashed == []  # hashed as it was sent, not before
        again = client.put(src, str(remote / "data.bin"))
        assert not again.changed and hashed == [src]  # the server asked: hashed, not sent
        assert again.sha256 == first.sha256
        src.write_bytes(os.urandom(2 * 1024 * 1024 + 1))  # same size, other bytes
        third = client.put(src, str(remote / "data.bin"))
        assert third.changed and third.sha256 != first.sha256 and len(hashed) == 2
    assert (remote / "data.bin").read_bytes() == src.read_bytes()
