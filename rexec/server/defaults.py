"""Every default of the server, written once.

``ServerSettings``' fields and the constructors that run without settings (``Server``,
``ServerState``, ``ServerLimits``, ``Runner``, ``Confinement``) all read them here, so a server
built in a test and one started by ``rexec-server`` cannot drift apart. The process layer's own
two (the kill grace, the umask) are written in ``rexec.server.exec.defaults``, the one module
this one imports, so the process layer reads them without importing the rest of the server and
``settings.py`` loads no other module of the server. The port, the keepalive and the command
length have their homes where both ends meet: ``wire.address.DEFAULT_PORT``,
``sockets.KEEPALIVE``, ``wire.frames``.
"""

from rexec.server.exec.defaults import KILL_GRACE, UMASK

__all__ = [
    "AUTH_PENALTY_MAX",
    "DRAIN_GRACE",
    "HANDSHAKE_TIMEOUT",
    "HOST",
    "IDLE_TIMEOUT",
    "KILLED_SLACK",
    "KILL_GRACE",
    "MAX_ENV_BYTES",
    "MAX_STARTUPS",
    "PER_SOURCE_MAX_STARTUPS",
    "SHUTDOWN_GRACE",
    "UMASK",
]

HOST = "127.0.0.1"
SHUTDOWN_GRACE = 30.0
"""Seconds running commands get to finish on SIGTERM."""
DRAIN_GRACE = 0.5
"""After the shell exits, a pipe quiet this long is left to its background holder."""
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new connection has for TLS and authentication."""
IDLE_TIMEOUT = 900.0
"""Seconds an authenticated connection may sit with no frame and no command; 0 turns it off."""
MAX_ENV_BYTES = 64 * 1024
MAX_STARTUPS = "128:30:512"
"""Unauthenticated connections, sshd's ``start:rate:full`` (as ServerSettings takes it)."""
PER_SOURCE_MAX_STARTUPS = 64
AUTH_PENALTY_MAX = 3.0
"""The longest a source with recent failed authentications waits for its challenge."""
KILLED_SLACK = 5.0
"""Seconds past the kill grace the server still waits for a stopped command (its pipes, its
leader's reaping) before it gives up on it and logs ``command_stuck``."""

# UDP discovery (rexec.discovery.responder): token buckets per source and for all of them
DISCOVERY_RATE = 50.0
DISCOVERY_BURST = 100
DISCOVERY_GLOBAL_RATE = 2000.0
DISCOVERY_GLOBAL_BURST = 4000
