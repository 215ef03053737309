"""The Python API (async Client, BlockingClient, rexec.run) against a real server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from typing import Any

import pytest

import rexec
from rexec import (
    AuthenticationError,
    CommandFailed,
    CommandNotStarted,
    ConfigError,
    ConnectError,
    Result,
)


def test_async_run_several_commands_on_one_connection(server):
    async def main() -> list[Result]:
        async with rexec.Client(server.address, token=server.token) as c:
            assert c.server_agent.startswith("rexec-server/")
            return [await c.run(f"echo {n}; echo e{n} >&2; exit {n}") for n in range(3)]

    results = asyncio.run(main())
    for n, r in enumerate(results):
        assert r.stdout == f"{n}\n".encode()
        assert r.stderr == f"e{n}\n".encode()
        assert r.exit_code == n
        assert r.ok is (n == 0)
        assert r.stdout_bytes == 2
        assert r.duration > 0


def test_async_stream_yields_output_before_the_end(server):
    async def main() -> tuple[float, bytes, Result | None]:
        async with rexec.Client(server.address, token=server.token) as c:
            started = time.monotonic()
            stream = c.stream("echo early; sleep 2; echo late")
            first_at, chunks = None, []
            async for chunk in stream:
                if first_at is None:
                    first_at = time.monotonic() - started
                chunks.append((chunk.stream, chunk.data))
            assert first_at is not None
            return first_at, b"".join(d for s, d in chunks if s == "stdout"), stream.result

    first_at, out, result = asyncio.run(main())
    assert first_at < 1.5
    assert out == b"early\nlate\n"
    assert result is not None
    assert result.exit_code == 0


def test_async_callbacks_and_no_capture(server):
    seen: list[bytes] = []

    async def main() -> Result:
        async with rexec.Client(server.address, token=server.token) as c:
            return await c.run("head -c 3000000 /dev/zero", capture=False,
                               on_stdout=lambda d: seen.append(bytes(d)))

    r = asyncio.run(main())
    assert r.stdout == b""
    assert r.stdout_bytes == 3_000_000
    assert sum(map(len, seen)) == 3_000_000


def test_async_stdin_bytes_and_async_iterable(server):
    async def gen():
        for n in range(100):
            yield f"{n}\n".encode()

    async def main() -> tuple[Result, Result]:
        async with rexec.Client(server.address, token=server.token) as c:
            a = await c.run("sha256sum", stdin=b"x" * 5_000_000)
            b = await c.run("wc -l", stdin=gen())
            return a, b

    a, b = asyncio.run(main())
    assert a.stdout.split()[0].decode() == hashlib.sha256(b"x" * 5_000_000).hexdigest()
    assert b.stdout.strip() == b"100"


def test_async_check_raises_with_the_result(server):
    async def main() -> None:
        async with rexec.Client(server.address, token=server.token) as c:
            await c.run("echo oops >&2; exit 7", check=True)

    with pytest.raises(CommandFailed) as info:
        asyncio.run(main())
    assert info.value.result.exit_code == 7
    assert "oops" in str(info.value)
    assert "status 7" in str(info.value)


def test_async_not_started_keeps_the_connection(server):
    async def main() -> Result:
        async with rexec.Client(server.address, token=server.token) as c:
            with pytest.raises(CommandNotStarted, match="/no/such/dir"):
                await c.run("pwd", cwd="/no/such/dir")
            return await c.run("echo still here")

    assert asyncio.run(main()).stdout == b"still here\n"


def test_async_break_out_of_stream_cancels_and_connection_survives(server):
    async def main() -> Result:
        async with rexec.Client(server.address, token=server.token) as c:
            stream = c.stream("yes")
            async for _chunk in stream:
                break
            # leaving the loop cancels `yes` remotely; the connection stays usable
            return await c.run("echo next")

    assert asyncio.run(main()).stdout == b"next\n"


def test_async_timeout_result(server):
    async def main() -> Result:
        async with rexec.Client(server.address, token=server.token) as c:
            return await c.run("sleep 30", timeout=0.5)

    started = time.monotonic()
    r = asyncio.run(main())
    assert r.timed_out
    assert r.exit_status == 124
    assert not r.ok
    assert time.monotonic() - started < 15


def test_async_wrong_token(server):
    async def main() -> None:
        async with rexec.Client(server.address, token="wrong"):
            pass

    with pytest.raises(AuthenticationError):
        asyncio.run(main())


def test_async_refused():
    async def main() -> None:
        async with rexec.Client("127.0.0.1:1", token="t"):
            pass

    with pytest.raises(ConnectError, match=r"127\.0\.0\.1:1"):
        asyncio.run(main())


def test_blocking_run_one_liner(server):
    r = rexec.run(server.address, "printf '%s' \"$X\"", token=server.token, env={"X": "y"})
    assert r.stdout == b"y"
    with pytest.raises(CommandFailed):
        rexec.run(server.address, "false", token=server.token, check=True)


def test_blocking_client_stdin_sources(server, tmp_path):
    data = b"line\n" * 100_000
    path = tmp_path / "in"
    path.write_bytes(data)
    with rexec.BlockingClient(server.address, token=server.token) as c:
        assert c.run("wc -c", stdin=data).stdout.strip() == str(len(data)).encode()
        assert c.run("wc -c", stdin="héllo").stdout.strip() == b"6"
        assert c.run("wc -c", stdin=io.BytesIO(data)).stdout.strip() == str(len(data)).encode()
        with path.open("rb") as fh:
            assert c.run("wc -c", stdin=fh.fileno()).stdout.strip() == str(len(data)).encode()


def test_blocking_client_cancel(server):
    with rexec.BlockingClient(server.address, token=server.token) as c:
        seen = []

        def on_out(data: bytes) -> None:
            seen.append(len(data))
            c.request_cancel()

        r = c.run("yes", on_stdout=on_out, capture=False)
        assert r.signal == 15 or r.exit_code is not None
        assert not r.ok
        assert seen
        assert c.run("echo ok").stdout == b"ok\n"


def test_empty_token_refused():
    with pytest.raises(ConfigError, match="empty"):
        rexec.BlockingClient("127.0.0.1:1", token="   ")


def _keepalive_of(sock: Any) -> tuple[int, int, int, int]:
    """A socket's keepalive options (a socket.socket, or asyncio's TransportSocket)."""
    import socket

    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


def test_both_clients_set_the_keepalive_they_are_given_on_their_socket(server):
    # 6 s idle, probes 2 s apart, 3 of them: the user timeout is 6 + 3 * 2 = 12 s
    with rexec.BlockingClient(server.address, token=server.token, keepalive=6) as c:
        assert c.run("true").ok
        assert _keepalive_of(c._sock) == (1, 6, 2, 12_000)

    async def main() -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        async with rexec.Client(server.address, token=server.token) as default, \
                rexec.Client(server.address, token=server.token, keepalive=0) as off:
            assert (await default.run("true")).ok and (await off.run("true")).ok
            assert default._writer is not None and off._writer is not None
            return (_keepalive_of(default._writer.get_extra_info("socket")),
                    _keepalive_of(off._writer.get_extra_info("socket")))

    default, off = asyncio.run(main())
    assert default == (1, 30, 10, 60_000)
    assert off[0] == 0 and off[3] == 0
