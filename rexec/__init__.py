"""rexec: run shell commands on remote hosts over a small framed protocol.

The public API::

    async with rexec.Client("web1:7878", token=...) as c:
        result = await c.run("uname -a")

    result = rexec.run("web1:7878", "uname -a", token=...)   # blocking, for scripts

    results = await rexec.Group(targets).run("uptime")   # many hosts -> rexec.GroupResult

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
    LocalFileError,
    ProtocolError,
    RemoteError,
    RexecError,
    TransferFailed,
)
from rexec.result import EntryError, Result, TransferResult, TreeResult

if TYPE_CHECKING:
    from rexec.client.aio import Client, CommandStream
    from rexec.client.blocking import BlockingClient, run
    from rexec.client.core import Output
    from rexec.deploy.executor import DeployReport, HostReport, StepResult
    from rexec.deploy.history import History
    from rexec.deploy.plan import Plan, PlanError
    from rexec.deploy.schedule import Schedule
    from rexec.fleet.group import Group, run_group
    from rexec.fleet.inventory import Inventory, InventoryError
    from rexec.fleet.nodeset import PatternError
    from rexec.fleet.outcome import GroupResult, HostOutcome
    from rexec.fleet.target import Target

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
    "DeployReport",
    "EntryError",
    "Group",
    "GroupResult",
    "History",
    "HostOutcome",
    "HostReport",
    "InvalidRequest",
    "Inventory",
    "InventoryError",
    "KnownHostsError",
    "LocalFileError",
    "Output",
    "PatternError",
    "Plan",
    "PlanError",
    "ProtocolError",
    "RemoteError",
    "Result",
    "RexecError",
    "Schedule",
    "StepResult",
    "Target",
    "TransferFailed",
    "TransferResult",
    "TreeResult",
    "__version__",
    "run",
    "run_group",
]

_LAZY = {
    "Client": "rexec.client.aio",
    "CommandStream": "rexec.client.aio",
    "Output": "rexec.client.core",
    "BlockingClient": "rexec.client.blocking",
    "run": "rexec.client.blocking",
    "Inventory": "rexec.fleet.inventory",
    "InventoryError": "rexec.fleet.inventory",
    "PatternError": "rexec.fleet.nodeset",
    "Group": "rexec.fleet.group",
    "run_group": "rexec.fleet.group",
    "GroupResult": "rexec.fleet.outcome",
    "HostOutcome": "rexec.fleet.outcome",
    "Target": "rexec.fleet.target",
    "Plan": "rexec.deploy.plan",
    "PlanError": "rexec.deploy.plan",
    "Schedule": "rexec.deploy.schedule",
    "DeployReport": "rexec.deploy.executor",
    "HostReport": "rexec.deploy.executor",
    "StepResult": "rexec.deploy.executor",
    "History": "rexec.deploy.history",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rexec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on: fan-outs look rexec.Client up often
    return value
