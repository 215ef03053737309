"""The one translator of connect errors: the same failure reads the same from every client.

``Client``, ``BlockingClient`` (and so ``rexec run`` and ``rexec.run``) hand every failure to
open or secure a connection to ``describe_connect_error``, and a TLS error later in the
conversation to ``tls_failure``. It lives in the client, not in ``rexec.errors``: errors sits
below ``wire/``, which must know nothing of socket or ssl, and only the client connects.

ssl's errors are recognised without importing ssl: an SSLError can only exist once the ssl
module is loaded, and the blocking client loads it only when the connection uses TLS.
"""

from __future__ import annotations

import os
import re
import socket
import sys

from rexec.errors import ConnectError, ConnectionLost

_ERRNO = re.compile(r"\[Errno (\d+)\]")


def describe_connect_error(
    exc: BaseException, address: str, host: str, *, tls: bool, timeout: float
) -> ConnectError:
    """The ConnectError for ``exc``, raised opening (``tls``: and securing) ``address``."""
    if isinstance(exc, TimeoutError):
        return ConnectError(f"timed out connecting to {address} after {timeout:g} s")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve host {host!r}: {exc.strerror or exc}")
    if tls and (message := _tls_handshake_message(exc)) is not None:
        return ConnectError(f"{address}: {message}")
    if isinstance(exc, OSError):
        return ConnectError(f"cannot connect to {address}: {_os_reason(exc)}")
    return ConnectError(f"cannot connect to {address}: {exc or exc.__class__.__name__}")


def no_handshake_error(address: str, timeout: float) -> ConnectError:
    """The ConnectError for a peer that accepted the connection and never answered."""
    return ConnectError(f"{address} accepted the connection but did not complete the handshake"
                        f" within {timeout:g} s (is it a rexec server?)")


def tls_failure(exc: BaseException, address: str, received: int) -> ConnectionLost | None:
    """A ConnectionLost explaining a TLS error past the handshake (an alert, a bad record).

    None when ``exc`` is no TLS error, or a close without close_notify: that is just a loss,
    which the caller reports as any other (the client core says what was lost, and when).
    """
    ssl = sys.modules.get("ssl")
    if ssl is None or not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLEOFError):
        return None
    from rexec.tls import describe_ssl_error

    return ConnectionLost(f"{address}: {describe_ssl_error(exc)}", received)


def _tls_handshake_message(exc: BaseException) -> str | None:
    """What went wrong in a TLS handshake, or None when ``exc`` is not a TLS failure."""
    ssl = sys.modules.get("ssl")
    if ssl is None:
        return None  # no TLS was attempted in this process, so this cannot be a TLS error
    from rexec.tls import CLOSED_IN_HANDSHAKE, describe_ssl_error

    if isinstance(exc, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError):
        return CLOSED_IN_HANDSHAKE
    if isinstance(exc, ssl.SSLError):
        return describe_ssl_error(exc)
    return None


def _os_reason(exc: OSError) -> str:
    """The system's words for ``exc``.

    asyncio rewords them (``Connect call failed ('127.0.0.1', 1)``), and for a name with
    several addresses joins them (``Multiple exceptions: [Errno 111] ..., [Errno 111] ...``):
    the errno, or the one errno they share, reads as the blocking client's socket says it.
    """
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    errnos = set(_ERRNO.findall(str(exc)))
    if len(errnos) == 1:
        return os.strerror(int(errnos.pop()))
    return exc.strerror or str(exc) or exc.__class__.__name__
