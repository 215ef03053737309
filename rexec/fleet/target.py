"""Target: one host of a fleet, as the fan-out reaches it (what inventory.py resolves to).

The one type every part of ``rexec.fleet`` shares: the inventory and node sets produce
Targets, the Group fans out over them, the CLI and the summaries name them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from rexec.client.options import ConnectOptions

HostStatus: TypeAlias = Literal["ok", "failed", "timed_out", "unreachable", "cancelled"]
"""How one host's part of a fan-out ended (the ``status`` of ``--json``'s lines):
ok: exit status 0; failed: non-zero exit, a signal, refused or not started; timed_out: stopped
at --timeout; unreachable: could not connect, log in, or secure the connection; cancelled:
stopped by Ctrl-C (or by the caller) before it ended."""


@dataclass(frozen=True, slots=True)
class Target:
    """One host: the name the user knows it by, and how to connect to it."""

    name: str  # the inventory host's name, or the host name/address a pattern expanded to
    options: ConnectOptions  # address, port, token, identity, TLS, connect timeout
    vars: Mapping[str, Any] = field(default_factory=dict)  # defaults < groups < host
