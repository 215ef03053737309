"""Dry-run puts (protocol version 5) and puts of bytes in memory, through the real clients.

``check=True`` is what ``rexec deploy --check`` rests on: the answer must be the one the same put
would give, and nothing at all may change on the server's disk.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

import rexec
from rexec.client import core
from rexec.client.blocking import BlockingClient
from rexec.errors import InvalidRequest, ProtocolError
from tests.helpers import TOKEN, ServerProcess


def state(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in [folder, *sorted(folder.rglob("*"))]}


def test_check_then_put_agree_and_check_changes_nothing(server: ServerProcess,
                                                         tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    local = tmp_path / "app.conf"
    local.write_bytes(b"listen 80\n")

    async def go() -> list[bool]:
        async with rexec.Client(server.address, token=TOKEN) as client:
            before = state(remote)
            would = await client.put(local, f"{remote}/app.conf", check=True)
            assert state(remote) == before
            done = await client.put(local, f"{remote}/app.conf")
            again = await client.put(local, f"{remote}/app.conf", check=True)
            mode = await client.put(local, f"{remote}/app.conf", mode=0o600, check=True)
            into_dir = await client.put(local, f"{remote}/", check=True)
            return [would.changed, done.changed, again.changed, mode.changed, into_dir.changed]

    assert asyncio.run(go()) == [True, True, False, True, False]
    assert (remote / "app.conf").read_bytes() == b"listen 80\n"


def test_put_data_writes_bytes_atomically_and_skips_the_same(server: ServerProcess,
                                                             tmp_path: Path) -> None:
    target = tmp_path / "motd"
    data = b"welcome to web01\n"

    async def go() -> list[rexec.TransferResult]:
        async with rexec.Client(server.address, token=TOKEN) as client:
            checked = await client.put_data(data, str(target), mode=0o640, check=True)
            assert not target.exists()
            first = await client.put_data(data, str(target), mode=0o640)
            second = await client.put_data(data, str(target), mode=0o640)
            with pytest.raises(InvalidRequest, match="own name"):
                await client.put_data(data, f"{tmp_path}/")
            return [checked, first, second]

    checked, first, second = asyncio.run(go())
    assert (checked.changed, first.changed, second.changed) == (True, True, False)
    assert first.sha256 == hashlib.sha256(data).hexdigest() == checked.sha256
    assert target.read_bytes() == data and target.stat().st_mode & 0o777 == 0o640


def test_the_blocking_client_checks_too(server: ServerProcess, tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_bytes(b"x" * 100_000)
    with BlockingClient(server.address, token=TOKEN) as client:
        assert client.put(local, str(tmp_path / "g"), check=True).changed
        assert not (tmp_path / "g").exists()
        client.put(local, str(tmp_path / "g"))
        assert not client.put(local, str(tmp_path / "g"), check=True).changed


def test_a_server_of_version_4_cannot_check(server: ServerProcess, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "PROTOCOL_VERSIONS", (4, 3, 2, 1))  # as a version-4 peer speaks
    local = tmp_path / "f"
    local.write_bytes(b"x")
    with BlockingClient(server.address, token=TOKEN) as client:
        with pytest.raises(ProtocolError, match="without puts that only check"):
            client.put(local, str(tmp_path / "g"), check=True)
        assert client.put(local, str(tmp_path / "g")).changed  # the connection goes on
    assert (tmp_path / "g").read_bytes() == b"x"


def test_put_data_into_a_directory_takes_the_name_given(server: ServerProcess,
                                                        tmp_path: Path) -> None:
    async def go() -> list[str]:
        async with rexec.Client(server.address, token=TOKEN) as client:
            slash = await client.put_data(b"a", f"{tmp_path}/", name="by-slash")
            folder = await client.put_data(b"b", str(tmp_path), name="by-dir")
            return [slash.remote, folder.remote]

    assert asyncio.run(go()) == [f"{tmp_path}/by-slash", str(tmp_path)]
    assert (tmp_path / "by-slash").read_bytes() == b"a"
    assert (tmp_path / "by-dir").read_bytes() == b"b"


def test_stat_says_what_is_there_without_starting_a_process(server: ServerProcess,
                                                            tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"12345")
    (tmp_path / "file").chmod(0o640)
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("file")
    (tmp_path / "dangling").symlink_to("nowhere")

    async def go() -> list[object]:
        async with rexec.Client(server.address, token=TOKEN) as client:
            found = [await client.stat(f"{tmp_path}/{name}")
                     for name in ("file", "dir", "link", "dangling", "missing")]
            with pytest.raises(InvalidRequest):
                await client.stat("relative")
            return found

    file, folder, link, dangling, missing = asyncio.run(go())
    assert file is not None and (file.kind, file.path, file.mode, file.file_size) == (
        "file", "file", 0o640, 5)
    assert folder is not None and folder.kind == "dir"
    assert link is not None and link.kind == "file"  # followed, as test -e does
    assert dangling is None and missing is None


def test_a_policy_identity_stats_within_its_roots_only(tmp_path: Path) -> None:
    from rexec.errors import TransferFailed
    from rexec.wire.auth import TokenVerifier
    from tests.helpers import start_server

    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to("/etc/hostname")
    config = tmp_path / "server.toml"
    robot = "robot-token-with-enough-entropy-0123456789"
    config.write_text(f"""
[server.identities.robot]
token_hash = "{TokenVerifier.from_token(robot).format()}"
allow = ["true"]
file_roots = ["{root}"]
""")
    srv = start_server(tmp_path, "--config", str(config))
    try:
        async def go() -> object:
            async with rexec.Client(srv.address, token=robot, identity="robot") as client:
                with pytest.raises(TransferFailed) as refused:
                    await client.stat("/etc/hostname")
                assert refused.value.code == "refused"
                return await client.stat(f"{root}/link")

        link = asyncio.run(go())
        assert link is not None and link.kind == "link" and link.target == "/etc/hostname"
    finally:
        assert srv.stop() == 0, srv.log()


def test_a_server_of_version_4_is_not_asked_to_stat(server: ServerProcess, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "PROTOCOL_VERSIONS", (4, 3, 2, 1))

    async def go() -> None:
        async with rexec.Client(server.address, token=TOKEN) as client:
            with pytest.raises(ProtocolError, match="without stat"):
                await client.stat(str(tmp_path))
            assert (await client.run("true")).exit_code == 0

    asyncio.run(go())
