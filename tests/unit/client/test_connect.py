"""The one translator of connect errors: each kind of failure, and DNS through every client."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest

import rexec
from rexec.client.connect import describe_connect_error, no_handshake_error, tls_failure
from rexec.errors import ConnectError, ConnectionLost
from rexec.tls import CLOSED_IN_HANDSHAKE
from tests.unit.cli.test_cli import invoke

ADDRESS, HOST = "db.example:7878", "db.example"


def ssl_error(reason: str, kind: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    """An SSLError as OpenSSL raises it, with its ``reason``."""
    exc = kind(1, f"[SSL: {reason}] ({reason.lower()})")
    exc.reason = reason
    return exc


def untrusted() -> ssl.SSLCertVerificationError:
    exc = ssl_error("CERTIFICATE_VERIFY_FAILED", ssl.SSLCertVerificationError)
    assert isinstance(exc, ssl.SSLCertVerificationError)
    exc.verify_message = "unable to get local issuer certificate"
    return exc


REFUSED = "cannot connect to db.example:7878: Connection refused"
CASES = {  # what was raised, with TLS or not: the one message every client gives for it
    "timeout": (TimeoutError("timed out"), False,
                "timed out connecting to db.example:7878 after 2.5 s"),
    "tls handshake timeout": (TimeoutError("_ssl.c:989: The handshake operation timed out"),
                              True, "timed out connecting to db.example:7878 after 2.5 s"),
    "dns": (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), False,
            "cannot resolve host 'db.example': Name or service not known"),
    "refused (socket)": (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
                         False, REFUSED),
    "refused (asyncio)": (OSError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.1', 7878)"),
                          False, REFUSED),
    "refused (asyncio, two addresses)": (OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 7878, 0, 0),"
        " [Errno 111] Connect call failed ('127.0.0.1', 7878)"), False, REFUSED),
    "refused with TLS": (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
                         True, REFUSED),
    "two different failures": (OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 7878, 0, 0),"
        " [Errno 101] Network is unreachable"), False,
        "cannot connect to db.example:7878: Multiple exceptions: [Errno 111] Connect call failed"
        " ('::1', 7878, 0, 0), [Errno 101] Network is unreachable"),
    "unreachable": (OSError(errno.EHOSTUNREACH, "No route to host"), False,
                    "cannot connect to db.example:7878: No route to host"),
    "reset without TLS": (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
                          False, "cannot connect to db.example:7878: Connection reset by peer"),
    "closed in the TLS handshake": (ssl_error("UNEXPECTED_EOF_WHILE_READING", ssl.SSLEOFError),
                                    True, f"db.example:7878: {CLOSED_IN_HANDSHAKE}"),
    "reset in the TLS handshake": (ConnectionResetError(errno.ECONNRESET, "reset"), True,
                                   f"db.example:7878: {CLOSED_IN_HANDSHAKE}"),
    "TLS to a plaintext server": (ssl_error("WRONG_VERSION_NUMBER"), True,
                                  "db.example:7878: TLS handshake failed: the server does not"
                                  " speak TLS (a plaintext rexec server?)"),
    "a CA that does not match": (untrusted(), True,
                                 "db.example:7878: TLS handshake failed: the server's"
                                 " certificate is not trusted: unable to get local issuer"
                                 " certificate"),
    "a client certificate refused": (ssl_error("TLSV1_ALERT_UNKNOWN_CA"), True,
                                     "db.example:7878: TLS handshake failed: the server rejected"
                                     " the client certificate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_connect_failure_has_one_message(case: str) -> None:
    exc, tls, message = CASES[case]
    error = describe_connect_error(exc, ADDRESS, HOST, tls=tls, timeout=2.5)
    assert isinstance(error, ConnectError)
    assert str(error) == message


def test_a_silent_peer_is_asked_whether_it_is_a_rexec_server() -> None:
    assert str(no_handshake_error(ADDRESS, 3)) == (
        "db.example:7878 accepted the connection but did not complete the handshake within 3 s"
        " (is it a rexec server?)")


def test_a_tls_alert_after_the_handshake_is_explained() -> None:
    lost = tls_failure(ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"), ADDRESS, 12)
    assert isinstance(lost, ConnectionLost)
    assert str(lost) == ("db.example:7878: TLS handshake failed: the server requires a client"
                         " certificate (--tls-cert)")
    assert lost.received == 12


@pytest.mark.parametrize("exc", [ssl_error("UNEXPECTED_EOF_WHILE_READING", ssl.SSLEOFError),
                                 ConnectionResetError(errno.ECONNRESET, "reset"), EOFError()])
def test_a_plain_loss_is_left_to_the_caller(exc: BaseException) -> None:
    assert tls_failure(exc, ADDRESS, 0) is None


def test_a_name_that_does_not_resolve_reads_the_same_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS without DNS: getaddrinfo fails as a resolver does, for both clients and the CLI."""
    def no_such_name(host: object, *args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    monkeypatch.setenv("REXEC_TOKEN", "t")
    expected = "cannot resolve host 'nowhere.example': Name or service not known"
    client = rexec.BlockingClient("nowhere.example:7878")
    with pytest.raises(ConnectError) as blocking:
        client.connect()
    client.close()

    async def connect() -> None:
        async with rexec.Client("nowhere.example:7878"):
            pass

    with pytest.raises(ConnectError) as asynchronous:
        asyncio.run(connect())
    status, _, stderr = invoke("run", "nowhere.example:7878", "--", "true")
    assert (str(blocking.value), str(asynchronous.value)) == (expected, expected)
    assert (status, stderr) == (255, f"rexec: {expected}\n")


def test_a_failed_with_block_leaves_no_descriptor_open() -> None:
    import os
    import socket

    import rexec

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(rexec.ConnectError), rexec.BlockingClient(
                f"127.0.0.1:{port}", token="t" * 32):
            pass
    assert len(os.listdir("/proc/self/fd")) == before
