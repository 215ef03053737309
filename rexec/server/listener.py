"""The listener: bind, accept, the unauthenticated cap, graceful shutdown; one Session each."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence

from rexec.server import defaults
from rexec.server.audit import AuditLog, log_event
from rexec.server.exec.child import live_groups
from rexec.server.exec.env import ChildEnvSettings
from rexec.server.exec.runner import Runner
from rexec.server.identity import Identities, Refusal
from rexec.server.limits import ServerLimits
from rexec.server.session import Session
from rexec.server.state import ServerState
from rexec.server.stream import FramedStream
from rexec.sockets import KEEPALIVE, STREAM_LIMIT
from rexec.wire.address import DEFAULT_PORT
from rexec.wire.frames import (
    Error,
)
from rexec.wire.protocol import Role

# asyncio's default backlog (100) overflowed when 500 clients connected at once (docs/benchmarks.md)
LISTEN_BACKLOG = 1024
REFUSAL_FLUSH_TIMEOUT = 1.0  # a refused newcomer's error frame is tiny: it leaves at once
BUSY = {
    "max_startups": "busy: too many unauthenticated connections (max_startups), try again later",
    "per_source_max_startups": "busy: too many unauthenticated connections from your address"
                               " (per_source_max_startups), try again later",
}
"""What a refused newcomer is told (the log and the audit record say more)."""


class Server:
    """Accepts connections and serves each with a Session."""

    def __init__(
        self,
        identities: Identities,
        host: str | Sequence[str] = defaults.HOST,
        port: int = DEFAULT_PORT,
        *,
        runner: Runner | None = None,
        handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT,
        drain_grace: float = defaults.DRAIN_GRACE,
        keepalive: float = KEEPALIVE,
        splice: bool = True,
        tls: ssl.SSLContext | None = None,
        limits: ServerLimits | None = None,
        audit: AuditLog | None = None,
        child_env: ChildEnvSettings | None = None,
        umask: int = defaults.UMASK,
    ) -> None:
        self.state = ServerState(
            identities, limits=limits or ServerLimits(), audit=audit or AuditLog(None),
            runner=runner or Runner(), tls=tls, child_env=child_env or ChildEnvSettings(),
            umask=umask, handshake_timeout=handshake_timeout, drain_grace=drain_grace,
        )
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.splice = splice  # command output spliced from pipes into plaintext sockets
        self.sessions: set[Session] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> list[tuple[str, int]]:
        """Bind and start accepting; return the (host, port) pairs actually bound."""
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=STREAM_LIMIT, reuse_address=True,
            backlog=LISTEN_BACKLOG,
        )
        return self.addresses

    async def rebind(self) -> list[tuple[str, int]]:
        """Close the listening sockets and bind again (with port 0: other ports), before any
        connection has been served; return the new addresses."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        return await self.start()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the server listens, in the order the hosts were given (asyncio binds them
        concurrently); with port 0, each host has a port of its own."""
        if self._server is None:
            return []
        given = [self.host] if isinstance(self.host, str) else list(self.host)
        bound = [sock.getsockname()[:2] for sock in self._server.sockets]
        return sorted(bound, key=lambda address: (
            given.index(address[0]) if address[0] in given else len(given)))

    @property
    def running_commands(self) -> int:
        """How many commands are running now."""
        return sum(1 for s in self.sessions if s.running is not None)

    async def close(self) -> None:
        """Stop accepting, end every session now (killing running commands) and wait for them."""
        await self.shutdown(grace=0.0)

    async def shutdown(self, grace: float, hurry: asyncio.Event | None = None) -> None:
        """Stop accepting; let running commands finish for ``grace`` seconds (or until ``hurry``
        is set); then stop what is left. Every client is told the server is shutting down."""
        self.state.shutting_down = True
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            if session.running is None and not session.spawning and session.transfer is None:
                session.end_for_shutdown()  # idle or still in the handshake: nothing to wait for
        await self._wait_for_sessions(grace, hurry)
        for session in list(self.sessions):
            session.end_for_shutdown()
        await asyncio.gather(*(s.done.wait() for s in list(self.sessions)))
        await self._reap_children(hurry if grace > 0 else None)
        if self._server is not None:
            await self._server.wait_closed()
        self.state.audit.close()

    async def _reap_children(self, hurry: asyncio.Event | None) -> None:
        """Wait until ended commands' leaders are reaped, so the guardian is left nothing.

        A leader still kept waits to SIGKILL what is left of its group at the end of the kill
        grace. Groups with no live process left get it at once; the others keep their grace
        unless ``hurry`` is set (or is None: ``close()``, which stops everything now).
        """
        children = list(self.state.unreaped)
        if not children:
            return
        live = live_groups({child.pid for child in children}) if hurry is not None else set()
        for child in children:
            if child.pid not in live:
                child.kill_now()
        everything = asyncio.ensure_future(asyncio.wait([child.reaped for child in children]))
        hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else everything
        try:
            await asyncio.wait([everything, hurried], timeout=self.state.runner.kill_grace
                               + defaults.KILLED_SLACK,
                               return_when=asyncio.FIRST_COMPLETED)
            if not everything.done():
                for child in children:
                    child.kill_now()
                await asyncio.wait([everything], timeout=defaults.KILLED_SLACK)
        finally:
            everything.cancel()
            hurried.cancel()
        for child in self.state.unreaped:
            log_event(logging.WARNING, "command_stuck", pgid=child.pid,
                      reason="its leader did not exit after SIGKILL; giving up on it")

    async def _wait_for_sessions(self, grace: float, hurry: asyncio.Event | None) -> None:
        """Wait until every session has ended, ``grace`` seconds pass, or ``hurry`` is set."""
        if grace <= 0 or not self.sessions:
            return
        # One task per waiter, each cancelled afterwards: a cancelled gather() would end with
        # a CancelledError as its exception, logged as "never retrieved" on a second SIGTERM.
        ended = [asyncio.ensure_future(s.done.wait()) for s in list(self.sessions)]
        everything = asyncio.ensure_future(asyncio.wait(ended))
        hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else everything
        try:
            await asyncio.wait([everything, hurried], timeout=grace,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (*ended, everything, hurried):
                waiter.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = FramedStream(reader, writer, Role.SERVER, self.keepalive, handshake=True,
                              splice=self.splice)
        refusal = self.state.gate.admit(stream.peer_host)
        if refusal is not None:
            await self._refuse(stream, refusal)
            return
        session = Session(self.state, stream)
        self.sessions.add(session)
        try:
            await session.serve()
        finally:
            self.sessions.discard(session)
            session.leave_startups()

    async def _refuse(self, stream: FramedStream, refusal: Refusal) -> None:
        """Turn a newcomer away at once, as sshd does; nobody already waiting is pushed out.

        A plaintext client is told why in an error frame; a TLS client, which could not read
        one before its TLS handshake, only sees the connection close.
        """
        log_event(logging.WARNING, "refused", peer=stream.peer, code=refusal.rule,
                  reason=refusal.message)
        self.state.audit.record("connection_refused", peer=stream.peer, code=refusal.rule,
                          reason=refusal.message)
        if self.state.tls is None:
            stream.send(Error(code="too_many_startups", message=BUSY[refusal.rule], fatal=True))
        await stream.close(REFUSAL_FLUSH_TIMEOUT)
