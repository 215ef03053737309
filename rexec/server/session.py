"""One connection: the handshake, then its commands one after another.

A Session drives the server handshake (``ServerHandshake``), then reads the client's frames and
acts on them: a ``run`` is admitted (``admit``), audited and spawned before the next frame is
read (so stdin frames right behind it find the child; the spawn runs off the event loop, which
serves the other sessions meanwhile), then supervised by a ``RunningCommand`` until its exit
frame; stdin, signal and cancel frames go to that command.
The session is the command's ``Link`` to the client, and ends the connection (idle timeout,
shutdown, a fatal error) whatever the command is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rexec.errors import ConnectionLost, ProtocolError
from rexec.server import defaults
from rexec.server.admission import Plan, admit, admit_shell
from rexec.server.audit import log_event
from rexec.server.command import (
    Command,
    RunningCommand,
    free_slot,
    hold_slot,
    spawn,
    start_now,
)
from rexec.server.exec.env import audit_env
from rexec.server.file_ops import FileOp, FileRequest, FileThread
from rexec.server.handshake import Accepted, HandshakeRefusal, ServerHandshake
from rexec.server.identity import Identity, Refusal
from rexec.server.state import ServerState
from rexec.server.stream import DETACH_AT, FramedStream, TLSHandshakeFailed
from rexec.wire.codec import Frame
from rexec.wire.frames import (
    CHECK_VERSION,
    FILE_VERSION,
    INLINE_VERSION,
    PROTOCOL_VERSION,
    PTY_VERSION,
    TREE_VERSION,
    Auth,
    Error,
    Header,
    Hello,
    Run,
    ServerErrorCode,
    Shell,
)
from rexec.wire.protocol import State

log = logging.getLogger("rexec.server")

ERROR_SEND_TIMEOUT = 2.0
HandshakeT = TypeVar("HandshakeT", Hello, Auth)


class _Refused(Exception):
    """The handshake failed for a reason the client must be told (sent as a fatal error)."""

    def __init__(self, code: ServerErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ServerErrorCode = code


class Session:
    """One client connection: handshake, then commands one after another."""

    def __init__(self, state: ServerState, stream: FramedStream) -> None:
        self.state = state
        self.stream = stream
        self.peer = stream.peer
        self.identity: Identity | None = None
        self.claimed_identity: str | None = None
        self.version = PROTOCOL_VERSION  # the protocol version the handshake chose
        self.running: RunningCommand | None = None
        self.transfer: FileOp | None = None  # a put or get in progress
        self.file_thread = FileThread()  # the transfers' filesystem calls, one after another
        self.spawning = False  # a command was admitted and its child is being started
        self.command_task: asyncio.Task[None] | None = None
        self.lost = False
        self.waiting = True  # counted by the server's StartupGate until authenticated
        self.last_activity = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self._ending: asyncio.Future[None] | None = None
        self.finishing = False
        self.done = asyncio.Event()
        self._serve_task: asyncio.Task[Any] | None = None
        self.opened = time.monotonic()
        self.commands = 0
        self.end_code: str | None = None
        self.end_reason = ""

    async def serve(self) -> None:
        """Run the whole conversation; always ends with the connection closed."""
        self._serve_task = asyncio.current_task()
        try:
            await self._handshake_with_deadline()
            if self.state.limits.idle_timeout:
                self._watchdog = asyncio.create_task(self._idle_watchdog())
            while True:
                frame = await self.stream.receive()
                self.last_activity = time.monotonic()
                await self.handle(frame)
        except _Refused as exc:
            self.ended(exc.code, str(exc))
            self.log(logging.WARNING, "refused", code=exc.code, reason=str(exc))
            self.state.audit.record("connection_refused", peer=self.peer, code=exc.code,
                                     reason=str(exc), claimed_identity=self.claimed_identity,
                                     subject=self.stream.peer_subject_text)
            await self.send_fatal(exc.code, str(exc))
        except ProtocolError as exc:
            self.ended(exc.code, str(exc))
            self.log(logging.WARNING, "protocol_error", code=exc.code, reason=str(exc))
            await self.send_fatal(exc.code, str(exc))
        except TLSHandshakeFailed as exc:
            self.ended("tls_failed", str(exc))
            self.log(logging.WARNING, "refused", code="tls_failed", reason=str(exc))
            self.state.audit.record("connection_refused", peer=self.peer, code="tls_failed",
                                     reason=str(exc))
        except ConnectionLost as exc:
            self.ended("disconnected", str(exc))
            self.log(logging.DEBUG, "disconnected", reason=str(exc))
        except asyncio.CancelledError:
            self.ended("aborted", "the server ended the connection")
        except Exception as exc:  # a bug: this connection ends, the server and the others go on
            self.ended("internal_error", f"{type(exc).__name__}: {exc}")
            log.exception(json.dumps({"event": "session_crashed", "peer": self.peer}))
            await self.send_fatal("internal_error", "the server failed while serving this"
                                  " connection (see the server log)")
        finally:
            await self.finish()

    def ended(self, code: str, reason: str) -> None:
        """Record why the connection ends (the first reason given wins)."""
        if self.end_code is None:
            self.end_code, self.end_reason = code, reason

    async def _idle_watchdog(self) -> None:
        """Close the connection after idle_timeout seconds with no frame and no command."""
        idle = self.state.limits.idle_timeout
        assert idle is not None
        while True:
            await asyncio.sleep(max(0.05, self.last_activity + idle - time.monotonic()))
            busy = self.running is not None or self.transfer is not None
            if not busy and time.monotonic() - self.last_activity >= idle:
                self.log(logging.INFO, "idle_timeout", seconds=idle)
                self.ended("idle_timeout", f"no command for {idle:g} s")
                await self.send_fatal("idle_timeout", f"no command for {idle:g} s: closing")
                self.abort()
                return

    def leave_startups(self) -> None:
        """No longer count this connection as unauthenticated (it authenticated, or ended)."""
        if self.waiting:
            self.waiting = False
            self.state.gate.release(self.stream.peer_host)

    def end_for_shutdown(self) -> None:
        """Tell the client the server is shutting down, stop any command, close (once)."""
        if self._ending is None and not self.finishing:
            self._ending = asyncio.ensure_future(self._end_for_shutdown())

    async def _end_for_shutdown(self) -> None:
        self.ended("shutting_down", "the server is shutting down")
        await self.send_fatal("shutting_down", "the server is shutting down")
        self.abort()

    def log(self, level: int, event: str, **fields: Any) -> None:
        """One structured log line about this session, naming the peer and the identity."""
        identity = self.identity.name if self.identity is not None else None
        log_event(level, event, peer=self.peer, identity=identity, **fields)

    def abort(self) -> None:
        """End the session now (server shutting down); a session already finishing goes on."""
        if self._serve_task is not None and not self._serve_task.done() and not self.finishing:
            self._serve_task.cancel()

    async def _handshake_with_deadline(self) -> None:
        """TLS (when on) and the rexec handshake, both inside one deadline (LoginGraceTime)."""
        try:
            async with asyncio.timeout(self.state.handshake_timeout):
                if self.state.tls is not None:
                    await self.stream.accept_tls(self.state.tls)
                await self.handshake()
        except TimeoutError:
            raise _Refused(
                "handshake_timeout",
                f"no successful handshake within {self.state.handshake_timeout:g} s",
            ) from None

    async def handshake(self) -> None:
        """Drive the handshake: its frames in and out, the penalty delay, the log and audit."""
        state, stream = self.state, self.stream
        shake = ServerHandshake(state.identities, state.penalty, source=stream.peer_host,
                                subject=stream.peer_subject, subject_text=stream.peer_subject_text,
                                active_connections=state.active_connections)
        hello = await self._receive_handshake(Hello)
        challenged = shake.receive_hello(hello)
        self.claimed_identity = shake.claimed_identity
        self.version = shake.version
        if isinstance(challenged, HandshakeRefusal):
            raise _Refused(challenged.code, challenged.message)
        if challenged.delay:
            await asyncio.sleep(challenged.delay)  # recent failures from this source slow it down
        stream.send(challenged.challenge)
        await stream.drain()
        accepted = shake.receive_auth(await self._receive_handshake(Auth))
        if isinstance(accepted, HandshakeRefusal):
            if accepted.recent_failures is not None:
                self.log(logging.WARNING, "auth_failed", claimed_identity=hello.identity,
                         recent_failures=accepted.recent_failures,
                         next_delay=accepted.next_delay)
            raise _Refused(accepted.code, accepted.message)
        stream.send(accepted.auth_ok)
        stream.authenticated()
        await stream.drain()
        self.authenticated(accepted)

    def authenticated(self, accepted: Accepted) -> None:
        """Count the connection against its identity, leave the startups, log and audit it."""
        identity = self.identity = accepted.identity
        self.state.active_connections[identity.name] += 1
        self.leave_startups()
        subject_text = self.stream.peer_subject_text
        self.log(logging.INFO, "authenticated", agent=accepted.agent, subject=subject_text)
        self.state.audit.record("authenticated", peer=self.peer, identity=identity.name,
                                method=accepted.method, subject=subject_text,
                                agent=accepted.agent)

    async def _receive_handshake(self, kind: type[HandshakeT]) -> HandshakeT:
        """The client's next handshake frame; its error frame ends the session quietly."""
        header = (await self.stream.receive()).header
        if header.type == "error":
            raise ConnectionLost(f"the client ended the handshake: {header.message}")
        if not isinstance(header, kind):  # the state table already refuses anything else
            raise ProtocolError(f"expected {kind.__name__}, got {header.type}", "unexpected_frame")
        return header

    async def handle(self, frame: Frame) -> None:
        """Act on one frame from an authenticated client."""
        header, running = frame.header, self.running
        self._check_version(header)
        if header.type in ("run", "shell"):
            await self.start_command(header)
        elif isinstance(header, FileRequest):
            self.start_transfer(header, frame.body)
        elif self.transfer is not None and header.type == "file_data":
            self.transfer.data(frame.body, detached=frame.detached)
        elif self.transfer is not None and header.type == "put_end":
            self.transfer.end(header.sha256)
        elif self.transfer is not None and header.type == "cancel":
            self.transfer.cancel()
        elif header.type == "error":
            raise ConnectionLost(f"the client reported an error: {header.message}")
        elif running is None:
            return  # stdin, eof, signal or cancel that crossed the exit frame: nothing to do
        elif header.type == "stdin":
            running.stdin(frame.body)
        elif header.type == "stdin_eof":
            running.stdin_eof()
        elif header.type == "signal":
            running.signal(header.signal)
        elif header.type == "cancel":
            running.cancel()
        elif header.type == "resize":
            running.resize(header.window)

    def _check_version(self, header: Header) -> None:
        """ProtocolError for a frame the connection's protocol version does not have."""
        if self.version < PTY_VERSION and (header.type in ("shell", "resize") or (
                header.type == "run" and header.pty is not None)):
            what = "a run frame with a pty" if header.type == "run" else f"a {header.type} frame"
            raise ProtocolError(f"{what} is not part of protocol version {self.version}",
                                "unexpected_frame")
        if header.type in ("put", "get", "file_data") and self.version < FILE_VERSION:
            raise ProtocolError(f"a {header.type} frame is not part of protocol version"
                                f" {self.version}", "unexpected_frame")
        if self.version < TREE_VERSION:
            if header.type in ("put_dir", "put_link", "file_list"):
                raise ProtocolError(f"a {header.type} frame is not part of protocol version"
                                    f" {self.version}", "unexpected_frame")
            if header.type == "put_end":
                raise ProtocolError(f"a put_end frame is not part of protocol version"
                                    f" {self.version}", "unexpected_frame")
            if header.type in ("put", "get") and (header.base is not None or (
                    header.type == "put" and (header.name is not None
                                              or header.sha256 is None))):
                raise ProtocolError(f"a {header.type} frame with base, name or no sha256 is not"
                                    f" part of protocol version {self.version}",
                                    "unexpected_frame")
        if self.version < CHECK_VERSION and (header.type == "stat" or (
                header.type == "put" and header.check is not None)):
            what = "a stat frame" if header.type == "stat" else "a put frame with check"
            raise ProtocolError(f"{what} is not part of protocol version {self.version}",
                                "unexpected_frame")
        if self.version < INLINE_VERSION and header.type == "put" and header.size:
            raise ProtocolError(f"a put frame that carries its file is not part of protocol"
                                f" version {self.version}", "unexpected_frame")

    async def start_command(self, run: Run | Shell) -> None:
        """Admit the command (limits, policy, plan), audit its start, spawn it, supervise it."""
        identity = self.identity
        assert identity is not None  # the state table allows run only after auth_ok
        started = time.monotonic()
        if isinstance(run, Shell):
            decision = admit_shell(run, identity, self.state, client=self.client_line)
            kind = "shell"
            run = decision.run if isinstance(decision, Plan) else Run(
                command="(login shell)", env=run.env, cwd=run.cwd, stdin=True, pty=run.pty)
        else:
            decision = admit(run, identity, self.state, client=self.client_line)
            kind = "command"
        if isinstance(decision, Plan):
            command = Command(run, identity, started, decision.timeout, decision.budget,
                              cwd=decision.cwd, kind=kind)
            try:
                if self._audit_start(command, decision):
                    await self._spawn(command, decision)
            finally:
                decision.close()
            return
        command = Command(run, identity, started, None, None, kind=kind)
        if isinstance(decision, Refusal):
            self.refuse(command, decision)
        else:
            self.not_started(command, decision.reason)

    def refuse(self, command: Command, refusal: Refusal) -> None:
        """Tell the client (and the audit log) which rule refused the command."""
        self.report(command, "refused", rule=refusal.rule, reason=refusal.message)
        self.stream.send(Error(code="refused", message=refusal.message, fatal=False))

    def not_started(self, command: Command, reason: str) -> None:
        """Tell the client (and the audit log) that the command could not start, and why."""
        message = f"cannot start the command: {reason}"
        self.report(command, "not_started", reason=message)
        self.stream.send(Error(code="spawn_failed", message=message, fatal=False))

    def _audit_start(self, command: Command, plan: Plan) -> bool:
        """Audit the start; when the audit log cannot be written, refuse the command instead."""
        if self.state.audit.record("command", **self._audit_fields(command), decision="started",
                                   env=audit_env(plan.run.env), run_as=plan.run_as,
                                   timeout=command.timeout):
            return True
        self.log(logging.ERROR, "command", command=plan.run.command, decision="refused",
                 rule="audit_unavailable")
        self.stream.send(Error(code="audit_unavailable", fatal=False, message="refused: the"
                               " server cannot write its audit log; no command runs until"
                               " it can"))
        return False

    async def _spawn(self, command: Command, plan: Plan) -> None:
        """Start the child the plan describes, and supervise it until its exit frame.

        The command holds its max_commands slot from here, as when spawns took no time. A
        cancel (shutdown, idle timeout) while the child starts waits for it: the command is
        then supervised, so it is stopped, reaped and audited like any other, and the cancel
        goes on from there."""
        hold_slot(self.state, command)
        cancelled = False
        try:
            child = start_now(self.state, plan)  # on the loop, when that holds nothing up
            if child is None:
                self.spawning = True
                starting = asyncio.ensure_future(spawn(self.state, plan))
                while not starting.done():
                    try:
                        await asyncio.shield(starting)
                    except asyncio.CancelledError:
                        cancelled = True
                child = starting.result()
        except BaseException:
            free_slot(self.state, command)
            raise
        finally:
            self.spawning = False
        if isinstance(child, str):
            free_slot(self.state, command)
            self.not_started(command, child)
        else:
            command.tty = getattr(child, "tty", None)
            if command.tty is not None:  # which terminal the session got, as login records
                self.state.audit.record("pty_opened", **self._audit_fields(command),
                                        pid=child.pid)
            self.running = RunningCommand(self.state, self, command, child, self._released)
            self.commands += 1
            self.command_task = asyncio.create_task(self._supervise(self.running))
        if cancelled:
            raise asyncio.CancelledError

    async def _supervise(self, running: RunningCommand) -> None:
        await running.supervise()
        if self.state.shutting_down:
            self.end_for_shutdown()  # the command it was waiting for is done

    def start_transfer(self, header: FileRequest, body: memoryview | bytes = b"") -> None:
        """Start a put, get or directory step (the state table allows one only when nothing
        runs); ``body``: the file a version-6 ``put`` carries."""
        assert self.identity is not None
        self.transfer = FileOp(self, self.identity, header, body)
        self.command_task = asyncio.create_task(self._supervise_transfer(self.transfer))

    async def _supervise_transfer(self, op: FileOp) -> None:
        try:
            await op.task
        except Exception:  # a bug: this connection ends, the server and the others go on
            log.exception(json.dumps({"event": "transfer_crashed", "peer": self.peer}))
            self.ended("internal_error", "the transfer failed in the server")
            if self._serve_task is not None:
                self._serve_task.cancel()
        finally:
            # The client may have started the next transfer already: its transfer_done went
            # out from the task before this wrapper woke.
            if self.transfer is op:
                self.transfer = None
            self.last_activity = time.monotonic()
        if self.state.shutting_down:
            self.end_for_shutdown()

    def transfer_report(self, op: str, path: str, result: str, **fields: Any) -> bool:
        """A put or get's log line and audit record (``result``: started, ok, or the error's
        code; a start is logged at debug level only); False if the audit log could not be
        written."""
        assert self.identity is not None
        record = {"peer": self.peer, "identity": self.identity.name, "op": op, "path": path,
                  "result": result, **fields}
        if self.identity.policy.run_as is not None:  # the user it read and wrote as
            record["run_as"] = self.identity.policy.run_as
        # The log has one line per transfer, at its end, as per command; its start is a
        # debug line (the audit log records both: a transfer is audited before it acts).
        log_event(logging.DEBUG if result == "started" else logging.INFO, "transfer", **record)
        return self.state.audit.record("transfer", **record)

    def _released(self) -> None:
        """The running command let its child go (its exit frame follows): none runs now."""
        self.running = None
        self.last_activity = time.monotonic()

    @property
    def client_line(self) -> str:
        """REXEC_CLIENT: the client's address and port and the server's port, as SSH_CLIENT."""
        return f"{self.stream.peer_host} {self.stream.peer_port} {self.stream.local_port}"

    # the Link a RunningCommand sends through

    def send(self, header: Header, body: bytes | memoryview = b"") -> None:
        """Queue a frame to the client."""
        self.stream.send(header, body)

    async def drain(self) -> None:
        """Wait until the queued frames are written."""
        await self.stream.drain()

    def receive_bodies_into(self, allocate: Callable[[int], memoryview] | None) -> None:
        """Receive the large bodies of the next frames into ``allocate``'s buffers (None: new
        ones, as before)."""
        self.stream.conn.detach_bodies(DETACH_AT, allocate)

    @property
    def splices(self) -> bool:
        """Whether output pipes may be spliced into this connection (plaintext, Linux)."""
        return self.stream.splices

    def can_splice(self) -> bool:
        """Whether a frame's body may be spliced from a pipe now."""
        return self.stream.can_splice()

    async def send_spliced(self, header: Header, pipe: int, size: int) -> None:
        """Send a frame whose body is the next ``size`` bytes waiting in ``pipe``."""
        await self.stream.send_spliced(header, pipe, size)

    def may_send_credit(self) -> bool:
        """Whether a stdin credit may be sent (a command is still running on the connection)."""
        return self.stream.conn.state is State.RUNNING

    def _audit_fields(self, command: Command) -> dict[str, Any]:
        fields = {"peer": self.peer, "identity": command.identity.name,
                  "command": command.run.command, "cwd": command.cwd,
                  "cwd_requested": command.run.cwd}
        if command.kind != "command":
            fields["session"] = command.kind  # "shell": the login shell, command its path
        if command.run.pty is not None:  # the terminal, never what is typed on it
            fields["pty"] = command.run.pty.term
            fields["tty"] = command.tty
        return fields

    def report(self, command: Command, decision: str, **fields: Any) -> None:
        """The command's log line, and its audit record (the decision or how it ended)."""
        self.log_command(command, decision, **fields)
        self.audit_command(command, decision, **fields)

    def log_command(self, command: Command, decision: str, **fields: Any) -> None:
        """The command's log line."""
        log_event(logging.INFO, "command", **self._audit_fields(command), decision=decision,
                  **fields)

    def audit_command(self, command: Command, decision: str, **fields: Any) -> None:
        """The command's audit record (the decision or how it ended)."""
        if decision != "run":
            fields = {**fields, "env": audit_env(command.run.env)}
        self.state.audit.record("command", **self._audit_fields(command), decision=decision,
                                **fields)

    def connection_lost(self) -> None:
        """The client is gone: stop sending and terminate any running command's group."""
        self.lost = True
        if self.running is not None:
            self.running.cancel()
        if self.transfer is not None:
            self.transfer.cancel()

    async def send_fatal(self, code: str, message: str) -> None:
        """Tell the client why the connection is closing (best effort, bounded in time)."""
        if self.lost or self.stream.closing:
            return
        try:
            self.stream.send(Error(code=code, message=message[:4000], fatal=True))
        except ProtocolError:
            return
        finally:
            self.connection_lost()  # nothing more may be sent after a fatal error
        with contextlib.suppress(ConnectionLost, TimeoutError):
            async with asyncio.timeout(ERROR_SEND_TIMEOUT):
                await self.stream.drain()

    async def finish(self) -> None:
        """Kill what is still running, wait for it within bounds, close the connection."""
        self.finishing = True
        try:
            if self._watchdog is not None and self._watchdog is not asyncio.current_task():
                self._watchdog.cancel()
            self.connection_lost()
            if self.command_task is not None:
                grace = self.state.runner.kill_grace + defaults.KILLED_SLACK
                try:
                    await asyncio.wait_for(asyncio.shield(self.command_task), grace)
                except TimeoutError:
                    self.log(logging.WARNING, "command_stuck",
                             reason="output pipes still open after SIGKILL; giving up on them")
                    self.command_task.cancel()
            await self.stream.close()
        finally:
            self.file_thread.close()
            if self.identity is not None:
                self.state.active_connections[self.identity.name] -= 1
            self.state.audit.record(
                "connection_closed", peer=self.peer,
                identity=self.identity.name if self.identity is not None else None,
                code=self.end_code or "closed", reason=self.end_reason,
                authenticated=self.identity is not None, commands=self.commands,
                duration=round(time.monotonic() - self.opened, 3))
            self.done.set()
