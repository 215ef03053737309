"""rexec: run shell commands on remote hosts over a small framed protocol.

The public API::

    async with rexec.Client("web1:7878", token=...) as c:
        result = await c.run("uname -a")

    result = rexec.run("web1:7878", "uname -a", token=...)   # blocking, for scripts

Clients are imported lazily so that ``import rexec`` stays cheap for the command-line tool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rexec._version import __version__
from rexec.errors import (
    AuthenticationError,
    CommandFailed,
    CommandNotStarted,
    ConfigError,
    ConnectError,
    ConnectionLost,
    InvalidRequest,
    KnownHostsError,
    ProtocolError,
    RemoteError,
    RexecError,
)
from rexec.result import Result

if TYPE_CHECKING:
    from rexec.client.aio import Client, CommandStream
    from rexec.client.blocking import BlockingClient, run
    from rexec.client.core import Output

__all__ = [
    "AuthenticationError",
    "BlockingClient",
    "Client",
    "CommandFailed",
    "CommandNotStarted",
    "CommandStream",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "InvalidRequest",
    "KnownHostsError",
    "Output",
    "ProtocolError",
    "RemoteError",
    "Result",
    "RexecError",
    "__version__",
    "run",
]

_LAZY = {
    "Client": "rexec.client.aio",
    "CommandStream": "rexec.client.aio",
    "Output": "rexec.client.core",
    "BlockingClient": "rexec.client.blocking",
    "run": "rexec.client.blocking",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rexec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on: fan-outs look rexec.Client up often
    return value
