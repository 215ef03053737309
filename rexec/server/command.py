"""One running command: what was asked and its output budget, and the stdin fed to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from rexec.errors import ProtocolError
from rexec.server.exec.child import ChildProcess
from rexec.server.identity import Identity
from rexec.wire.frames import (
    STDIN_WINDOW,
    Run,
)

CREDIT_BATCH = 256 * 1024  # credit stdin back in batches, not per frame


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

    def __init__(self, child: ChildProcess, send_credit: Callable[[int], None]) -> None:
        self._child = child
        self._send_credit = send_credit
        self._queue: deque[bytes] = deque()
        self._pending = 0
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
        self._queue.append(bytes(data))
        self._pending += len(data)
        self._wake.set()

    def close(self) -> None:
        """The client sent stdin_eof: close the child's stdin once the queue is written."""
        self._eof = True
        self._wake.set()

    async def _run(self) -> None:
        credit = 0
        while True:
            while not self._queue:
                if credit:
                    self._send_credit(credit)
                    credit = 0
                if self._eof:
                    self._child.close_stdin()
                    return
                self._wake.clear()
                await self._wake.wait()
            chunk = self._queue.popleft()
            if self._child.stdin_open:
                await self._child.write_stdin(chunk)  # a child that closed stdin: dropped
            self._pending -= len(chunk)
            credit += len(chunk)
            if credit >= CREDIT_BATCH:
                self._send_credit(credit)
                credit = 0

    async def stop(self) -> None:
        """Stop feeding (the command ended); what is still queued is dropped."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
