"""What the sessions of one server share: its configuration, its counters and its pools.

The listener owns one ServerState and hands it to every Session, so a session never reaches
into the listener: the limits, identities and audit log it consults, the per-identity counters
it moves (max_connections, max_commands), the pump buffers it borrows, and the children it
leaves behind until their leaders are reaped.
"""

from __future__ import annotations

import os
import ssl
from collections import Counter
from dataclasses import dataclass, field

from rexec.server import defaults
from rexec.server.audit import AuditLog
from rexec.server.exec.child import READ_CHUNK, Child
from rexec.server.exec.env import ChildEnvSettings
from rexec.server.exec.runner import Runner
from rexec.server.exec.shortcut import shell_pwd
from rexec.server.identity import Identities
from rexec.server.limits import AuthPenalty, ServerLimits, StartupGate

BUFFER_POOL = 32  # idle pump buffers kept for reuse (8 MiB at most)


def _own_pwd() -> str:
    # The server's directory and PWD do not change: the PWD its commands start with.
    return shell_pwd(None, os.environ.get("PWD"))


@dataclass(eq=False)
class ServerState:
    """What every session of one server reads and updates."""

    identities: Identities
    limits: ServerLimits = field(default_factory=ServerLimits)
    audit: AuditLog = field(default_factory=lambda: AuditLog(None))
    runner: Runner = field(default_factory=Runner)
    tls: ssl.SSLContext | None = None
    child_env: ChildEnvSettings = field(default_factory=ChildEnvSettings)
    umask: int = defaults.UMASK
    handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT
    drain_grace: float = defaults.DRAIN_GRACE
    own_pwd: str = field(default_factory=_own_pwd)
    active_commands: Counter[str] = field(default_factory=Counter)
    active_connections: Counter[str] = field(default_factory=Counter)
    unreaped: set[Child] = field(default_factory=set)  # ended, leader not reaped yet
    shutting_down: bool = False
    gate: StartupGate = field(init=False)
    penalty: AuthPenalty = field(init=False)
    _buffers: list[bytearray] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.gate = StartupGate(self.limits.max_startups, self.limits.per_source_max_startups)
        self.penalty = AuthPenalty(self.limits.auth_penalty_max)

    def apply_limits(self, limits: ServerLimits) -> None:
        """New limits for a running server (a reload). The gate and the penalty keep what they
        count, re-limited: connections waiting stay counted (each releases what it took), and
        a source's recent failed logins are not forgiven by a reload."""
        self.limits = limits
        self.gate.max_startups = limits.max_startups
        self.gate.per_source = limits.per_source_max_startups
        self.penalty.max_delay = limits.auth_penalty_max

    def take_buffer(self) -> bytearray:
        """A read buffer for a pump, reused: a fresh 256 KiB zeroed buffer per command costs
        more than the rest of a short command's bookkeeping."""
        return self._buffers.pop() if self._buffers else bytearray(READ_CHUNK)

    def give_buffer(self, buffer: bytearray) -> None:
        """Return a pump's buffer (its bytes were sent or copied by the transport)."""
        if len(self._buffers) < BUFFER_POOL:
            self._buffers.append(buffer)

    def release(self, child: Child) -> None:
        """A session is done with ``child``: close it, and keep it until its leader is reaped."""
        child.close()
        if not child.reaped.done():
            self.unreaped.add(child)
            child.reaped.add_done_callback(lambda _: self.unreaped.discard(child))
