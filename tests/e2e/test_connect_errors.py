"""The same failed connection reads the same from rexec.Client, rexec.BlockingClient and
``rexec run``: one translator (rexec.client.connect) words them all.

A name that does not resolve is tested without DNS, in tests/unit/client/test_connect.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

import rexec
from rexec.tls import CLOSED_IN_HANDSHAKE
from tests.helpers import TOKEN, ServerProcess, run_cli, start_server, write_server_pki

TIMEOUT = 1.0  # the connect timeout of every attempt: a silent peer costs this long


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, and a CA that signed neither."""
    folder = tmp_path_factory.mktemp("pki")
    ca, cert, key = write_server_pki(folder)
    trustme.CA().cert_pem.write_to_path(str(folder / "other-ca.pem"))
    return {"ca": ca, "cert": cert, "key": key, "other-ca": folder / "other-ca.pem"}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory,
               pki: dict[str, Path]) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("tls"), "--tls-cert", str(pki["cert"]),
                       "--tls-key", str(pki["key"]))
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory,
                pki: dict[str, Path]) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("mtls"), "--tls-cert", str(pki["cert"]),
                       "--tls-key", str(pki["key"]), "--tls-client-ca", str(pki["ca"]))
    yield srv
    assert srv.stop() == 0, srv.log()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_peer() -> Iterator[str]:
    """An address whose kernel accepts connections that nobody ever reads or answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def closing_peer() -> Iterator[str]:
    """An address that accepts each connection and closes it at once (as a busy TLS server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                sock.accept()[0].close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        sock.close()


def failures(address: str, token_file: Path, **tls: Path) -> tuple[str, str, str]:
    """How BlockingClient, Client and ``rexec run`` each report failing to reach ``address``."""
    client = rexec.BlockingClient(address, token=TOKEN, connect_timeout=TIMEOUT, **tls)
    with pytest.raises(rexec.RexecError) as blocking:
        client.connect()
    client.close()  # a failed connect leaves the wake-up pipe open

    async def connect() -> None:
        async with rexec.Client(address, token=TOKEN, connect_timeout=TIMEOUT, **tls):
            pass

    with pytest.raises(rexec.RexecError) as asynchronous:
        asyncio.run(connect())
    assert type(blocking.value) is type(asynchronous.value)
    options = [arg for name, path in tls.items() for arg in (f"--{name.replace('_', '-')}",
                                                               str(path))]
    cli = run_cli("run", "--token-file", str(token_file), "--connect-timeout", str(TIMEOUT),
                  *options, address, "--", "echo must-not-run")
    assert (cli.returncode, cli.stdout) == (255, b""), cli
    assert cli.stderr.startswith(b"rexec: ") and cli.stderr.count(b"\n") == 1, cli.stderr
    return str(blocking.value), str(asynchronous.value), cli.stderr.decode()[7:-1]


def same(messages: tuple[str, str, str]) -> str:
    """The one message all three gave (the assertion shows them side by side if not)."""
    assert len(set(messages)) == 1, messages
    return messages[0]


def test_connection_refused(client_token_file: Path) -> None:
    address = f"127.0.0.1:{closed_port()}"
    assert same(failures(address, client_token_file)) == (
        f"cannot connect to {address}: Connection refused")


def test_tls_client_against_a_plaintext_server(server: ServerProcess, pki: dict[str, Path],
                                               client_token_file: Path) -> None:
    assert same(failures(server.address, client_token_file, tls_ca=pki["ca"])) == (
        f"{server.address}: TLS handshake failed: the server does not speak TLS"
        " (a plaintext rexec server?)")


def test_plaintext_client_against_a_tls_server(tls_server: ServerProcess,
                                               client_token_file: Path) -> None:
    assert same(failures(tls_server.address, client_token_file)) == (
        "server: this server requires TLS: connect with --tls-ca CAFILE (or tls_ca in the"
        " client config)")


def test_a_ca_that_does_not_match(tls_server: ServerProcess, pki: dict[str, Path],
                                  client_token_file: Path) -> None:
    message = same(failures(tls_server.address, client_token_file, tls_ca=pki["other-ca"]))
    assert message.startswith(f"{tls_server.address}: TLS handshake failed: the server's"
                              " certificate is not trusted: "), message


def test_no_client_certificate_for_a_mutual_tls_server(
    mtls_server: ServerProcess, pki: dict[str, Path], client_token_file: Path,
) -> None:
    assert same(failures(mtls_server.address, client_token_file, tls_ca=pki["ca"])) == (
        f"{mtls_server.address}: TLS handshake failed: the server requires a client certificate"
        " (--tls-cert)")


def test_a_peer_that_closes_in_the_tls_handshake(pki: dict[str, Path],
                                                 client_token_file: Path) -> None:
    with closing_peer() as address:
        message = same(failures(address, client_token_file, tls_ca=pki["ca"]))
    assert message == f"{address}: {CLOSED_IN_HANDSHAKE}"


@pytest.mark.parametrize("tls", [False, True])
def test_a_silent_peer(pki: dict[str, Path], client_token_file: Path, tls: bool) -> None:
    with silent_peer() as address:
        message = same(failures(address, client_token_file,
                                **({"tls_ca": pki["ca"]} if tls else {})))
    assert message == (f"timed out connecting to {address} after {TIMEOUT:g} s" if tls else
                       f"{address} accepted the connection but did not complete the handshake"
                       f" within {TIMEOUT:g} s (is it a rexec server?)")
