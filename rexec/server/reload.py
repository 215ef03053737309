"""What a running server takes from its settings, built in one place at start and on SIGHUP.

A reload (SIGHUP, as sshd and nginx do it) loads the settings again exactly as the server
started (the same config file, the same command-line options, the REXEC_TOKEN it was started
with), builds a new Configuration and swaps it into the ServerState that sessions share. Nothing
is dropped: a session already authenticated keeps its Identity (its policy as of its login, as
sshd does), running commands run on, and new connections see the new identities. Settings a
running server cannot take (the address it listens on, TLS turned on or off...) are kept as
they were and named in the ``reload`` log line as needing a restart. A new configuration that
does not load (bad TOML, an invalid field, an unreadable token file, TLS files or audit log) is
refused as a whole, logged as ``reload_failed`` with the reason, and the old one stays.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from rexec.server.audit import AuditLog, log_event
from rexec.server.exec.env import DEFAULT_PATH, ChildEnvSettings
from rexec.server.identity import Identities
from rexec.server.limits import ServerLimits
from rexec.server.listener import Server
from rexec.server.settings import ServerSettings

RESTART_NEEDED = ("host", "port", "dangerously_allow_plaintext", "kill_grace", "discovery")
"""Settings a running server keeps until it is restarted: what it listens on (every host of a
list: one added or removed needs a restart, a new order does not), whether it answers UDP
probes, and the kill grace its guardian was started with. Turning TLS on or off needs a
restart too (the plaintext check is made when the server binds); new TLS files for a server
already serving TLS do not. The discovery rate limits take effect on a reload."""
TLS_FILES = ("tls_cert", "tls_key", "tls_client_ca")

Loader = Callable[[], tuple[ServerSettings, str | None]]
"""Loads the settings and resolves the shared token, as the server did at start."""
TlsBuilder = Callable[[ServerSettings], ssl.SSLContext | None]


@dataclass
class Configuration:
    """The runtime pieces the settings give: identities, limits, audit log, environment, TLS."""

    settings: ServerSettings
    token: str | None
    identities: Identities
    limits: ServerLimits
    audit: AuditLog
    child_env: ChildEnvSettings
    tls: ssl.SSLContext | None

    @classmethod
    def build(cls, settings: ServerSettings, token: str | None,
              tls: ssl.SSLContext | None) -> Configuration:
        """Build every piece and open the audit log (ConfigError naming what failed)."""
        identities = Identities.from_token(token) if token else Identities()
        for name, table in settings.identities.items():
            identities.by_name[name] = table.identity(name)
        audit = AuditLog(settings.audit_log)
        audit.open()  # last: nothing after it can fail and leave it open
        return cls(settings, token, identities, ServerLimits.from_settings(settings), audit,
                   ChildEnvSettings(settings.path or DEFAULT_PATH, dict(settings.env),
                                    tuple(settings.inherit_env)), tls)

    def apply(self, server: Server) -> None:
        """Swap this configuration into a running server (its old audit log stays open)."""
        state = server.state
        state.identities = self.identities
        state.apply_limits(self.limits)
        state.audit = self.audit
        state.tls = self.tls
        state.child_env = self.child_env
        state.umask = self.settings.umask
        state.handshake_timeout = self.settings.handshake_timeout
        state.drain_grace = self.settings.drain_grace
        server.keepalive = self.settings.keepalive
        server.splice = self.settings.splice
        logging.getLogger().setLevel(self.settings.log_level.upper())  # as basicConfig did


def needs_restart(running: ServerSettings, new: ServerSettings) -> list[str]:
    """The settings that changed but cannot change until a restart."""
    names = [name for name in RESTART_NEEDED if _listened(running, name) != _listened(new, name)]
    if serves_tls(running) != serves_tls(new):
        names += [name for name in (*TLS_FILES, "tls")
                  if getattr(running, name) != getattr(new, name)]
    return names


def _listened(settings: ServerSettings, name: str) -> object:
    """A setting as the listener sees it: the hosts as a set (their order is only the order
    of the "listening on" lines)."""
    return frozenset(settings.hosts) if name == "host" else getattr(settings, name)


def serves_tls(settings: ServerSettings) -> bool:
    """Whether the settings turn TLS on (certificate files, or ``tls = "auto"``)."""
    return settings.tls_cert is not None or settings.tls == "auto"


def changes(running: Configuration, new: ServerSettings, token: str | None) -> dict[str, list[str]]:
    """What a reload changes: the settings by name (``changed``) and the identities."""
    changed = [name for name in ServerSettings.model_fields
               if name != "identities" and getattr(running.settings, name) != getattr(new, name)]
    if token != running.token and "token" not in changed:
        changed.append("token")  # the same token_file, with a new token in it
    old, now = running.settings.identities, new.identities
    found = {"changed": changed,
             "identities_added": sorted(set(now) - set(old)),
             "identities_removed": sorted(set(old) - set(now)),
             "identities_changed": sorted(n for n in set(old) & set(now) if old[n] != now[n])}
    return {key: names for key, names in found.items() if names}


def reload(server: Server, running: Configuration, load: Loader,
           tls_setup: TlsBuilder) -> Configuration:
    """Load the settings again and swap them in; on any failure keep ``running``, logged.

    Returns the configuration the server runs with afterwards.
    """
    try:
        settings, token = load()
        restart = needs_restart(running.settings, settings)
        # what needs a restart is kept as it runs, so the next reload names it again
        settings = settings.model_copy(
            update={name: getattr(running.settings, name) for name in restart})
        tls = tls_setup(settings) if serves_tls(settings) else None
        new = Configuration.build(settings, token, tls)
    except Exception as exc:  # a reload must never take a serving server down
        reason = str(exc) if exc.args else type(exc).__name__
        log_event(logging.ERROR, "reload_failed", reason=reason,
                  kept="the running configuration")
        running.audit.record("reload_failed", reason=reason)
        return running
    fields = {**changes(running, settings, token), "needs_restart": restart,
              "identities": sorted(new.identities.by_name),
              "audit_log": str(settings.audit_log) if settings.audit_log else None}
    new.apply(server)
    log_event(logging.WARNING if restart else logging.INFO, "reload", **fields)
    new.audit.record("reload", **fields)
    if running.audit.path != new.audit.path:
        running.audit.record("reload", **fields)  # the old file says where the log went
    running.audit.close()
    return new
