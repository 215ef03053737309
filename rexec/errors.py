"""Every error rexec raises, under one root.

    RexecError                      anything rexec raises on purpose
    ├── ConfigError                 a bad config file, token file, address or option (local)
    │   ├── InvalidRequest          a command the client will not send (empty, over a protocol cap)
    │   └── KnownHostsError         a known_hosts file that does not parse (names file, line)
    ├── ProtocolError               bytes that break the wire protocol (either side may detect it)
    ├── ConnectError                could not open or secure a connection (refused, DNS, timeout)
    ├── ConnectionLost              the peer closed or vanished mid-conversation
    ├── RemoteError                 the server answered with an error frame
    │   ├── AuthenticationError     the server refused our token
    │   ├── CommandNotStarted       the server refused or could not start the command
    │   └── TransferFailed          the server refused or failed a put or get (``code`` says why)
    ├── LocalFileError              a put's source or a get's destination failed on this side
    ├── CommandFailed               a command ran and did not succeed (only with check=True)
    └── HistoryError                the run history cannot be opened, read or written (names it)
        └── RunNotFound             no run of that id in the history

Local failures (ConfigError, ConnectError, ConnectionLost, ProtocolError) are kept apart from what
the remote side said (RemoteError), so a caller can tell "my network is down" from "the server
said no". Messages never contain the token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rexec.result import Result


class RexecError(Exception):
    """Root of every exception rexec raises on purpose."""


class ConfigError(RexecError):
    """A configuration file, token file, address or option is invalid."""


class InvalidRequest(ConfigError, ValueError):
    """A command the client refuses to send, before anything is sent: an empty command, a bad
    timeout, cwd or environment, or a request over one of the protocol's caps.

    ``field`` names the part of the request at fault: "command", "env", "cwd" or "timeout".
    It is a ValueError too, as the validation errors it replaces were.
    """

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class KnownHostsError(ConfigError):
    """A known_hosts file cannot be read or does not parse: the client trusts nothing in it."""


class ProtocolError(RexecError):
    """The peer sent bytes that do not follow the rexec protocol.

    ``code`` is the machine-readable reason carried in the error frame sent to the peer.
    """

    def __init__(self, message: str, code: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code


class ConnectError(RexecError):
    """A connection to the server could not be opened."""


class ConnectionLost(RexecError):
    """The peer closed the connection, or it broke, before the conversation ended."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class RemoteError(RexecError):
    """The server sent an error frame; ``code`` says which kind."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class AuthenticationError(RemoteError):
    """The server rejected the client's proof of the shared token (or the reverse)."""


class CommandNotStarted(RemoteError):
    """The server could not, or would not, start the command (bad cwd, refused, busy)."""


class TransferFailed(RemoteError):
    """The server refused a put or get, or could not finish it; the remote file is as it was.

    ``code`` is the server's reason (refused, not_found, permission_denied, no_space,
    checksum_mismatch, cancelled...), ``path`` the remote path.
    """

    def __init__(self, message: str, code: str = "error", path: str = "") -> None:
        super().__init__(message, code)
        self.path = path


class LocalFileError(RexecError):
    """The local side of a transfer failed: a put's source cannot be read (or changed while it
    was read), a get's destination cannot be written. ``code`` uses the server's words
    (not_found, permission_denied, is_a_directory, no_space...); ``path`` is the local path."""

    def __init__(self, message: str, code: str = "io_error", path: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.path = path


class CommandFailed(RexecError):
    """A command exited non-zero, died of a signal or timed out, and the caller asked for check.

    Carries the full ``result``; the message shows its status and the last lines of stderr.
    """

    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(result.describe_failure())


class HistoryError(RexecError):
    """The run history (``rexec.deploy.history``) cannot be used: not a SQLite database, written
    by a newer rexec, unreadable, or an SQLite error while reading or writing it."""


class RunNotFound(HistoryError):
    """The history holds no run of ``run_id``."""

    def __init__(self, message: str, run_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id


@contextlib.contextmanager
def map_socket_errors(what: str, received: int = 0) -> Iterator[None]:
    """Translate OSError (ssl.SSLError included) and EOFError into ConnectionLost."""
    try:
        yield
    except (OSError, EOFError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConnectionLost(f"{what}: {reason or exc.__class__.__name__}", received) from exc
