"""Small files carried whole in their put (protocol version 6), through the real clients.

A put of INLINE_PUT_MAX bytes or fewer goes in one round trip: the put frame's body is the file,
the server answers transfer_done with no put_ready. Larger files, and servers of version 5,
take the two round trips of version 3; a version-5 connection refuses a put with a body.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

import rexec
from rexec.client import core
from rexec.client.blocking import BlockingClient
from rexec.errors import RemoteError
from rexec.wire.frames import INLINE_PUT_MAX
from tests.helpers import TOKEN, ServerProcess


@pytest.fixture
def carried(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each put's bytes went with it (ClientCore.start_put's answer)."""
    seen: list[bool] = []
    real = core.ClientCore.start_put

    def start_put(self: core.ClientCore, *args: object, **kwargs: object) -> bool:
        went = real(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(went)
        return went

    monkeypatch.setattr(core.ClientCore, "start_put", start_put)
    return seen


def test_the_blocking_client_puts_a_small_file_in_one_round_trip(
        server: ServerProcess, tmp_path: Path, carried: list[bool]) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"listen 8080\n")
    large.write_bytes(bytes(range(256)) * (INLINE_PUT_MAX // 256 + 1))
    edge = tmp_path / "edge"
    edge.write_bytes(b"e" * INLINE_PUT_MAX)
    with BlockingClient(server.address, token=TOKEN) as client:
        first = client.put(small, str(tmp_path / "a.conf"), mode=0o640)
        again = client.put(small, str(tmp_path / "a.conf"), mode=0o640)
        client.put(edge, str(tmp_path / "edge.out"))
        client.put(large, str(tmp_path / "large.out"))
    assert carried == [True, True, True, False]  # INLINE_PUT_MAX and under: with the put
    assert first.changed and not again.changed
    assert first.sha256 == hashlib.sha256(b"listen 8080\n").hexdigest()
    assert (tmp_path / "a.conf").read_bytes() == b"listen 8080\n"
    assert (tmp_path / "a.conf").stat().st_mode & 0o7777 == 0o640
    assert (tmp_path / "edge.out").read_bytes() == edge.read_bytes()
    assert (tmp_path / "large.out").read_bytes() == large.read_bytes()


def test_the_async_client_puts_files_and_bytes_in_one_round_trip(
        server: ServerProcess, tmp_path: Path, carried: list[bool]) -> None:
    local = tmp_path / "unit"
    local.write_bytes(b"[Service]\nExecStart=/bin/true\n")
    progress: list[tuple[int, int]] = []

    async def main() -> tuple[bool, bool, bool]:
        async with rexec.Client(server.address, token=TOKEN) as client:
            a = await client.put(local, str(tmp_path / "unit.out"),
                                 on_progress=lambda done, total: progress.append((done, total)))
            b = await client.put_data(b"motd\n", str(tmp_path / "motd"))
            c = await client.put_data(b"motd\n", str(tmp_path / "motd"))
            return a.changed, b.changed, c.changed

    assert asyncio.run(main()) == (True, True, False)
    assert carried == [True, True, True]
    assert progress == [(30, 30)]
    assert (tmp_path / "unit.out").read_bytes() == local.read_bytes()
    assert (tmp_path / "motd").read_bytes() == b"motd\n"


def test_a_server_of_version_5_gets_the_bytes_after_put_ready(
        server: ServerProcess, tmp_path: Path, carried: list[bool],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "PROTOCOL_VERSIONS", (5, 4, 3, 2, 1))  # as a version-5 peer
    local = tmp_path / "f"
    local.write_bytes(b"small")
    with BlockingClient(server.address, token=TOKEN) as client:
        assert client.put(local, str(tmp_path / "g")).changed
    assert carried == [False]
    assert (tmp_path / "g").read_bytes() == b"small"


def test_a_version_5_connection_refuses_a_put_with_a_body(
        server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "PROTOCOL_VERSIONS", (5, 4, 3, 2, 1))
    monkeypatch.setattr(core.ClientCore, "inline_puts", property(lambda self: True))
    local = tmp_path / "f"
    local.write_bytes(b"small")
    with BlockingClient(server.address, token=TOKEN) as client, pytest.raises(
            RemoteError, match="a put frame that carries its file is not part of protocol"
                               " version 5") as caught:
        client.put(local, str(tmp_path / "g"))
    assert caught.value.code == "unexpected_frame"  # fatal: the server closed the connection
    assert not (tmp_path / "g").exists()
