"""Every default of the server, written once.

``ServerSettings``' fields and the constructors that run without settings (``Server``,
``ServerState``, ``ServerLimits``, ``Runner``, ``Confinement``) all read them here, so a server
built in a test and one started by ``rexec-server`` cannot drift apart. This module imports
nothing, so any module of the server may read it: ``settings.py`` (which keeps the server's
other modules off the client's start-up) and the process layer (which learns no sessions and
no frames from it) alike. The port, the keepalive and the command length have their homes where
both ends meet: ``wire.address.DEFAULT_PORT``, ``sockets.KEEPALIVE``, ``wire.frames``.
"""

HOST = "127.0.0.1"
KILL_GRACE = 5.0
"""Seconds from SIGTERM to SIGKILL when a command's process group is stopped."""
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
UMASK = 0o022
