"""One command, from the spawn to the exit frame.

``spawn`` starts the child an admission Plan describes. A ``RunningCommand`` then supervises it:
it pumps stdout and stderr to the client as they come (within the output budget), feeds the
client's stdin frames to the child (``StdinFeeder``, crediting them back), applies the timeout,
signals and cancels, counts the command against its identity's ``max_commands`` until the
leader exits, and sends one ``exit`` frame once the child has exited and both pipes are at end
of file. It knows its connection only as a ``Link``: the Session is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from rexec.errors import ConnectionLost, ProtocolError
from rexec.server.admission import Plan
from rexec.server.exec.child import Child, ExitStatus, PipeOutput
from rexec.server.exec.runner import describe_spawn_error
from rexec.server.identity import Identity
from rexec.server.state import ServerState
from rexec.wire.frames import (
    STDIN_WINDOW,
    ExceededLimit,
    Exit,
    Header,
    Run,
    SignalName,
    Stderr,
    StdinCredit,
    Stdout,
    Window,
)

CREDIT_BATCH = 256 * 1024  # credit stdin back in batches, not per frame
SPLICE_BODY = 1024 * 1024
"""The most one spliced data frame carries (the bytes waiting in the pipe, up to this)."""
SPLICE_AT = 64 * 1024
"""Less than this waiting is read and sent with its header in one write (``JOIN_LIMIT``):
cheaper than a header, a splice and, the first time, a descriptor of the socket's own."""


@dataclass
class Command:
    """One command being run: what was asked, by whom, and its output budget."""

    run: Run
    identity: Identity
    started: float
    timeout: float | None
    budget: int | None  # output bytes still allowed (None: no limit)
    cwd: str | None = None  # the physical directory it started in, once known
    holds_slot: bool = False  # counted in ServerState.active_commands (max_commands)
    kind: str = "command"  # or "shell": a login shell (``run.command`` is its program)
    tty: str | None = None  # the PTY's device, once it is open

    def spend(self, count: int) -> int:
        """How many of ``count`` new output bytes may still be sent."""
        if self.budget is None:
            return count
        allowed = min(count, self.budget)
        self.budget -= allowed
        return allowed


class StdinFeeder:
    """Writes the client's stdin frames to a child, and credits the bytes back as they go.

    The client may have at most STDIN_WINDOW uncredited bytes in flight, so the queue here is
    bounded, and the session's read loop never waits on a child that does not read its input:
    a cancel or signal frame behind the stdin is acted on at once.
    """

    def __init__(self, child: Child, send_credit: Callable[[int], None]) -> None:
        self._child = child
        self._send_credit = send_credit
        self._queue: deque[bytes] = deque()
        self._pending = 0
        self._credit = 0  # bytes written (or dropped) and not credited back yet
        self._writing = False  # the task is writing a chunk: a new one must queue behind it
        self._eof = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def push(self, data: memoryview) -> None:
        """Queue a stdin frame's body; ProtocolError if the client overran its window."""
        if self._eof:
            raise ProtocolError("stdin frame after stdin_eof", "unexpected_frame")
        if self._pending + len(data) > STDIN_WINDOW:
            raise ProtocolError(
                f"the client sent more than {STDIN_WINDOW} bytes of stdin without credit",
                "stdin_overflow",
            )
        if not self._queue and not self._writing and self._child.stdin_open:
            # Nothing ahead of it: write what the child takes now, without waking the feeding
            # task (a keystroke on a terminal reaches it one loop iteration sooner).
            written = self._child.write_now(data)
            self._credit += written
            data = data[written:]
            if not data:
                if self._credit >= CREDIT_BATCH:
                    self._wake.set()  # the task sends the credit
                return
        self._queue.append(bytes(data))
        self._pending += len(data)
        self._wake.set()

    def close(self) -> None:
        """The client sent stdin_eof: close the child's stdin once the queue is written."""
        self._eof = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                # Credit owed but under a batch waits: the client still holds more than
                # STDIN_WINDOW - CREDIT_BATCH, so it is never stalled, and a keystroke on a
                # terminal costs no credit frame (one more wake-up of both ends per key).
                if self._credit >= CREDIT_BATCH // 4:
                    self._send_credit(self._credit)
                    self._credit = 0
                if self._eof:
                    self._child.close_stdin()
                    return
                self._wake.clear()
                await self._wake.wait()
            chunk = self._queue.popleft()
            if self._child.stdin_open:
                self._writing = True
                try:
                    await self._child.write_stdin(chunk)  # a child that closed stdin: dropped
                finally:
                    self._writing = False
            self._pending -= len(chunk)
            self._credit += len(chunk)
            if self._credit >= CREDIT_BATCH:
                self._send_credit(self._credit)
                self._credit = 0

    async def stop(self) -> None:
        """Stop feeding (the command ended); what is still queued is dropped."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Link(Protocol):
    """What a running command needs of its connection (the Session)."""

    lost: bool  # the client is gone, or the connection closed by a fatal error

    @property
    def splices(self) -> bool:
        """Whether output pipes may be spliced into the connection (plaintext, Linux)."""

    def send(self, header: Header, body: bytes | memoryview = b"") -> None:
        """Queue a frame (ConnectionLost or ProtocolError once the connection is closing)."""

    async def drain(self) -> None:
        """Wait until the queued frames are written (backpressure)."""

    def can_splice(self) -> bool:
        """Whether a frame's body may be spliced from a pipe now (nothing queued ahead)."""

    async def send_spliced(self, header: Header, pipe: int, size: int) -> None:
        """Send a frame whose body is the next ``size`` bytes waiting in ``pipe``."""

    def may_send_credit(self) -> bool:
        """Whether a stdin credit may be sent now."""

    def connection_lost(self) -> None:
        """The client is gone: send nothing more, stop the command."""

    def audit_command(self, command: Command, decision: str, **fields: Any) -> None:
        """The command's audit record (the decision, or how it ended)."""

    def log_command(self, command: Command, decision: str, **fields: Any) -> None:
        """The command's log line."""


def start_now(state: ServerState, plan: Plan) -> Child | str | None:
    """Start the child ``plan`` describes on the event loop, when it is started there (a PTY,
    a confined child, or a command alone: ``Runner.on_loop``), or say why it could not start;
    None: ``spawn`` it (on a spawner thread).

    The session calls this before ``spawn``: a child started here needs no task of its own, and
    the command's exit frame can go out three passes of the event loop sooner."""
    run, argv, cwd, confine = plan.run, plan.argv, plan.spawn_cwd, plan.confinement
    try:
        if plan.pty is None and not state.runner.on_loop(confine):
            return None
        if plan.pty is not None:
            window = (plan.pty.rows, plan.pty.cols, plan.pty.width, plan.pty.height)
            return state.runner.start_pty(argv or ["/bin/sh", "-c", run.command], plan.env, cwd,
                                          window, confine, executable=plan.executable)
        if argv is None:
            return state.runner.start_shell(run.command, plan.env, cwd, run.stdin, confine)
        return state.runner.start(argv, plan.env, cwd, run.stdin, confine,
                                  executable=plan.executable)
    except (OSError, subprocess.SubprocessError) as exc:
        return describe_spawn_error(exc, argv or ["/bin/sh"], cwd, confine)


async def spawn(state: ServerState, plan: Plan) -> Child | str:
    """Start the child ``plan`` describes; or say why it could not start."""
    run, argv, cwd, confine = plan.run, plan.argv, plan.spawn_cwd, plan.confinement
    try:
        if plan.pty is not None:
            window = (plan.pty.rows, plan.pty.cols, plan.pty.width, plan.pty.height)
            return state.runner.start_pty(argv or ["/bin/sh", "-c", run.command], plan.env, cwd,
                                          window, confine, executable=plan.executable)
        if argv is None:
            return await state.runner.spawn_shell(run.command, plan.env, cwd, run.stdin,
                                                  confine)
        return await state.runner.spawn(argv, plan.env, cwd, run.stdin, confine,
                                        executable=plan.executable)
    except (OSError, subprocess.SubprocessError) as exc:
        return describe_spawn_error(exc, argv or ["/bin/sh"], cwd, confine)


def hold_slot(state: ServerState, command: Command) -> None:
    """Count ``command`` in its identity's max_commands (once), from before its spawn."""
    if not command.holds_slot:
        command.holds_slot = True
        state.active_commands[command.identity.name] += 1


def free_slot(state: ServerState, command: Command) -> None:
    """Give the command's max_commands slot back, once."""
    if command.holds_slot:
        command.holds_slot = False
        state.active_commands[command.identity.name] -= 1


class RunningCommand:
    """One started command, supervised until its exit frame is sent (``supervise``)."""

    def __init__(self, state: ServerState, link: Link, command: Command, child: Child,
                 on_release: Callable[[], None]) -> None:
        self.state = state
        self.link = link
        self.command = command
        self.child = child
        self._on_release = on_release
        self.feeder = StdinFeeder(child, self._send_credit) if command.run.stdin else None
        hold_slot(state, command)  # its identity's max_commands (the session took it already)

    # what the client's frames ask of the command

    def stdin(self, data: memoryview) -> None:
        """A stdin frame (ProtocolError if the client overran its window)."""
        if self.feeder is not None:
            self.feeder.push(data)

    def stdin_eof(self) -> None:
        """The client's stdin ended."""
        if self.feeder is not None:
            self.feeder.close()

    def resize(self, window: Window) -> None:
        """The client's window changed size (applied on a PTY; nothing otherwise)."""
        self.child.resize(window.rows, window.cols, window.width, window.height)

    def signal(self, name: SignalName) -> None:
        """Send the named signal to the command's process group."""
        self.child.signal_group(signal.Signals[f"SIG{name}"])

    def cancel(self) -> None:
        """Stop the command: SIGTERM its group, SIGKILL after the grace."""
        self.child.terminate()

    def _send_credit(self, amount: int) -> None:
        if not self.link.lost and self.link.may_send_credit():
            self.link.send(StdinCredit(amount=amount))

    def _free_slot(self) -> None:
        """Give the command's max_commands slot back, once."""
        free_slot(self.state, self.command)

    async def supervise(self) -> None:
        """Pump the child's output, wait for it, then send the exit frame and report it."""
        child, command, link = self.child, self.command, self.link
        loop = asyncio.get_running_loop()
        timer = loop.call_later(command.timeout, child.expire) if command.timeout else None
        # The pumps are tasks; the leader's exit is awaited here, and a pump that has ended by
        # then (a quiet command's pipes close as it exits) is not waited on again: a
        # gather() of all three woke this task four passes of the event loop after the exit,
        # 40-60 us of every command.
        pumps = (asyncio.ensure_future(self._pump(1)), asyncio.ensure_future(self._pump(2)))
        try:
            try:
                status = await self._leader_exit()
                out, err = await pumps[0], await pumps[1]
            except BaseException:  # cancelled, or a pump failed: no pump is left reading a
                for pump in pumps:  # pipe that release() below closes
                    pump.cancel()
                await asyncio.wait(pumps)
                raise
        finally:
            if timer is not None:
                timer.cancel()
            if self.feeder is not None:
                await self.feeder.stop()
                self.feeder = None
            self.state.release(child)
            self._free_slot()
            self._on_release()
        exit_frame = Exit(
            exit_code=status.exit_code,
            signal=status.signal,
            timed_out=child.timed_out,
            exceeded=cast("ExceededLimit | None", child.exceeded),  # only _pump sets it
            duration=round(time.monotonic() - command.started, 6),
            stdout_bytes=out,
            stderr_bytes=err,
        )
        ended = {"exit_code": status.exit_code, "signal": status.signal,
                 "timed_out": child.timed_out, "exceeded": child.exceeded, "stdout_bytes": out,
                 "stderr_bytes": err, "duration": exit_frame.duration,
                 "delivered": not link.lost}
        # The audit record is written before the client learns of the exit; the log line
        # after it is sent, so that the client does not wait on it (50-90 us of each command).
        link.audit_command(command, "run", **ended)
        sent = False
        if not link.lost:
            try:
                link.send(exit_frame)
                sent = True
            except ConnectionLost:
                link.lost = True
        link.log_command(command, "run", **ended)
        if sent:
            try:
                await link.drain()
            except ConnectionLost:
                link.lost = True

    async def _leader_exit(self) -> ExitStatus:
        """Wait for the leader's exit, which ends the command: its slot is freed then, even
        while its output still waits for a client that does not read (the pumps block on it).

        Background processes the command left are not counted, as after its exit frame.
        """
        try:
            return await self.child.wait()
        finally:
            self._free_slot()

    async def _pump(self, stream_no: int) -> int:
        """Forward one of the child's pipes to the client until EOF; return the bytes sent.

        Past the command's output budget the rest is read and dropped, and the group stopped.
        """
        pipe = self.child.pipe_output(stream_no) if self.link.splices else None
        if pipe is not None:
            return await self._splice(stream_no, pipe)
        return await self._copy(stream_no)

    async def _splice(self, stream_no: int, pipe: PipeOutput) -> int:
        """``_pump`` for a pipe over plaintext: each frame announces the bytes waiting in the
        pipe, and its body goes from the pipe to the socket in the kernel (``os.splice``).

        Less than SPLICE_AT waiting, or frames queued ahead on the connection (the client
        reads slower than the command writes): the waiting bytes are read and sent as
        ``_copy`` sends them; so are bytes past the budget read and dropped, and bytes for a
        client that is gone.
        """
        link = self.link
        kind = Stdout if stream_no == 1 else Stderr
        buffer: bytearray | None = None
        view = memoryview(b"")
        sent = 0
        try:
            while (waiting := await pipe.ready(self.state.drain_grace)) > 0:
                if waiting >= SPLICE_AT and not link.lost and link.can_splice():
                    allowed = self._allow(min(waiting, SPLICE_BODY))
                    if allowed:  # (the rest, if any, is read and dropped below next time)
                        sent += allowed
                        try:
                            await link.send_spliced(kind(size=allowed), pipe.fd, allowed)
                        except (ConnectionLost, ProtocolError):
                            link.connection_lost()  # the body's rest is drained below
                        continue
                if buffer is None:
                    buffer = self.state.take_buffer()
                    view = memoryview(buffer)
                sent += await self._forward(kind, view, pipe.take(view))
        finally:
            view.release()
            if buffer is not None:
                self.state.give_buffer(buffer)
        return sent

    async def _copy(self, stream_no: int) -> int:
        """``_pump`` through a buffer: each chunk read from the child is sent from it."""
        child = self.child
        kind = Stdout if stream_no == 1 else Stderr
        buffer = self.state.take_buffer()
        view = memoryview(buffer)
        sent = 0
        try:
            while (count := await child.read_into(stream_no, buffer,
                                                  self.state.drain_grace)) > 0:
                sent += await self._forward(kind, view, count)
        finally:
            view.release()
            self.state.give_buffer(buffer)
        return sent

    def _allow(self, count: int) -> int:
        """How many of ``count`` new output bytes the budget allows; past it, the group is
        stopped (``max_output``)."""
        allowed = self.command.spend(count)
        if allowed < count and self.child.exceeded is None:
            self.child.exceed("max_output")
        return allowed

    async def _forward(self, kind: type[Stdout | Stderr], view: memoryview, count: int) -> int:
        """Send the ``count`` bytes read into ``view`` within the budget; the bytes sent.

        Nothing is sent to a client that is gone, or past the budget: the bytes are dropped,
        and the pump reads on, so that the child is never stuck on a full pipe.
        """
        allowed = self._allow(count)
        link = self.link
        if link.lost or not allowed:
            return 0
        try:
            link.send(kind(size=allowed), view[:allowed])
            await link.drain()
        except (ConnectionLost, ProtocolError):  # gone, or closed by a fatal error
            link.connection_lost()
        return allowed
