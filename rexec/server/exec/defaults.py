"""The process layer's defaults, written once: the kill grace and the umask.

``rexec.server.defaults`` takes them from here with the rest of the server's defaults, so
``ServerSettings`` reads every default in one module, and the process layer reads its own
without importing the rest of the server (rule 3 of docs/architecture.md). Imports nothing.
"""

KILL_GRACE = 5.0
"""Seconds from SIGTERM to SIGKILL when a command's process group is stopped."""
UMASK = 0o022
"""Every command's umask unless the settings or an identity say otherwise."""
