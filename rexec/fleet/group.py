"""Group: one command, a batch of them, or one file, on many hosts at once -> GroupResult.

Every host gets its own ``rexec.Client`` (one connection, all of a batch's commands over it),
at most ``forks`` connections at once, all on the running event loop: no thread and no buffer
of its own per host beyond what it captures. A host that cannot be connected to, logged in to
or secured, or whose connection is lost mid-command (a reset, or keepalive finding it dead), is
"unreachable" and the others go on; a per-host ``timeout`` is enforced by each
server (the output produced is kept); cancelling the run (``Group.cancel()``, or cancelling the
task awaiting it) cancels every remote command at once, and the hosts not finished are
"cancelled". What the run produced is in ``Group.result`` even when the run was cancelled.
``put`` and ``get`` fan a file out and in the same way (``rexec.fleet.transfer``: the file is
read once for the hosts sending it, and each host's download lands in a directory of its own).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from rexec.client.aio import Client, StdinSource
from rexec.client.core import StreamName, check_request
from rexec.client.transfer import put_destination, put_tree_destination
from rexec.errors import (
    CommandNotStarted,
    ConfigError,
    ConnectionLost,
    InvalidRequest,
    LocalFileError,
    RexecError,
)
from rexec.fleet.batch import BatchCommand, parse_batch
from rexec.fleet.outcome import CommandOutcome, GroupResult, HostOutcome, R, status_of
from rexec.fleet.stdin import Broadcast, SharedStdin, shared_stdin
from rexec.fleet.target import HostStatus, Target
from rexec.fleet.transfer import (
    Done,
    FanOut,
    OnTransferProgress,
    Transfer,
    check_host_dirs,
    check_timeout,
    get_name,
    get_transfer,
    get_tree_transfer,
    put_transfer,
    put_tree_transfer,
    transfer_host,
)
from rexec.result import Result, TransferResult, TreeResult

DEFAULT_FORKS = 64  # as clush's fanout
TIMEOUT_GRACE = 5.0
"""Seconds past a command's timeout the client waits for the server to end it, before it
cancels the command itself (a server that stopped answering)."""
STREAM_QUEUE = 256  # output chunks Group.stream() holds before the hosts wait for the reader

FAILURES: frozenset[HostStatus] = frozenset({"failed", "timed_out"})  # what has a failed_line

OnOutput = Callable[[str, StreamName, bytes], object]
"""``on_output(host, stream, data)``, called for each chunk of output as it arrives."""
OnDone = Callable[[HostOutcome[Result]], object]
"""``on_done(outcome)``, called once for each host as it finishes (whatever its status)."""
OnCommand = Callable[[str, int, HostStatus, CommandOutcome], object]
"""``on_command(host, index, status, outcome)``, called as each command of a batch ends on a
host: its index in the batch, how it ended ("ok", "failed", "timed_out", "unreachable" or
"cancelled", as a host's status) and its CommandOutcome. Commands never begun are not
reported (the host's ``on_done`` follows)."""
OnTransferDone = Callable[[HostOutcome[TransferResult]], object]
OnTreeDone = Callable[[HostOutcome[TreeResult]], object]
"""``on_done(outcome)`` of a put or get."""
HostPart = Callable[[Target, asyncio.Semaphore], Awaitable[HostOutcome[R]]]
"""One host's whole part of an operation, given its target and the forks cap."""


class Resolver(Protocol):
    """What turns a pattern into targets (``rexec.fleet.inventory.Inventory`` is one)."""

    def resolve(self, pattern: str) -> list[Target]:
        """The targets ``pattern`` names, in order; ConfigError when it names none."""
        ...


@dataclass(slots=True)
class _Job:
    """One run of a Group: the commands, their options, where their output goes."""

    commands: list[BatchCommand]
    env: dict[str, str] | None
    cwd: str | None
    timeout: float | None
    capture: bool
    keep_going: bool = False
    batch: bool = False
    stdin: SharedStdin | None = None
    on_output: OnOutput | None = None
    on_done: OnDone | None = None
    on_command: OnCommand | None = None
    queue: asyncio.Queue[tuple[str, StreamName, bytes] | None] | None = None


@dataclass(slots=True)
class _Captured:
    """What one host's current command has sent so far: counted, and kept if ``keep``."""

    keep: bool
    started: float
    stdout: list[bytes] = field(default_factory=list)
    stderr: list[bytes] = field(default_factory=list)
    counts: dict[StreamName, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})

    def add(self, stream: StreamName, data: bytes) -> None:
        self.counts[stream] += len(data)
        if self.keep:
            (self.stdout if stream == "stdout" else self.stderr).append(data)

    def into(self, result: Result) -> Result:
        """``result`` (sent without output) with the output captured."""
        if not self.stdout and not self.stderr:
            return result
        return replace(result, stdout=b"".join(self.stdout), stderr=b"".join(self.stderr))

    def partial(self, command: str, *, timed_out: bool = False) -> Result:
        """A Result for a command that did not end on its own (no exit code)."""
        return Result(command, None, timed_out=timed_out,
                      duration=time.monotonic() - self.started, stdout=b"".join(self.stdout),
                      stderr=b"".join(self.stderr), stdout_bytes=self.counts["stdout"],
                      stderr_bytes=self.counts["stderr"])


class _Stopped(Exception):
    """A host's command did not end with an exit frame: (status, partial result, error).

    ``fatal``: the connection cannot run another command (lost, or closed by a cancel).
    """

    def __init__(self, status: HostStatus, result: Result | None, error: str,
                 *, fatal: bool = True) -> None:
        super().__init__(error)
        self.status, self.result, self.error, self.fatal = status, result, error, fatal


class Group:
    """Many hosts, one command at a time: ``await Group(targets).run("uptime")``.

    ``targets`` is a sequence of Targets, or a pattern that ``inventory`` resolves (any
    object with ``resolve(pattern) -> list[Target]``). At most ``forks`` hosts are connected
    at once. Host names must be unique: they key the results.
    """

    def __init__(self, targets: Sequence[Target] | str, *, inventory: Resolver | None = None,
                 forks: int = DEFAULT_FORKS) -> None:
        if isinstance(targets, str):
            if inventory is None:
                raise ConfigError(f"the pattern {targets!r} needs an inventory to resolve it")
            targets = inventory.resolve(targets)
        if forks < 1:
            raise ConfigError(f"forks must be at least 1, not {forks}")
        self.targets: tuple[Target, ...] = tuple(targets)
        names = [target.name for target in self.targets]
        if len(set(names)) != len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ConfigError(f"hosts named more than once: {', '.join(twice)}")
        self.forks = forks
        self.result: GroupResult[Any] | None = None  # the last run's, even if cancelled
        self._tasks: dict[asyncio.Task[Any], Target] = {}
        self._interrupted = False
        self._running = False

    def __repr__(self) -> str:
        return f"<Group {len(self.targets)} hosts, forks={self.forks}>"

    async def run(self, command: str, *, env: dict[str, str] | None = None,
                  cwd: str | None = None, timeout: float | None = None,
                  stdin: StdinSource | None = None, capture: bool = True,
                  on_output: OnOutput | None = None,
                  on_done: OnDone | None = None) -> GroupResult[Result]:
        """Run ``command`` on every host (``/bin/sh -c``) and return their GroupResult.

        ``timeout`` is per host; ``stdin`` (bytes, str, a binary file, an iterable or async
        iterable of bytes) is read once and sent to every host; ``capture=False`` keeps no
        output (``on_output`` still sees it); ``on_done(outcome)`` is called as each host
        finishes. InvalidRequest before anything is sent.
        """
        job = self._job([BatchCommand(1, command)], env, cwd, timeout, capture, stdin)
        job.on_output, job.on_done = on_output, on_done
        return await self._run(job)

    async def batch(self, commands: str | Iterable[str | BatchCommand], *,
                    keep_going: bool = False, env: dict[str, str] | None = None,
                    cwd: str | None = None, timeout: float | None = None, capture: bool = True,
                    on_output: OnOutput | None = None, on_done: OnDone | None = None,
                    on_command: OnCommand | None = None) -> GroupResult[Result]:
        """Run a batch on every host: the commands in order over one connection per host,
        stopping a host at its first failing command unless ``keep_going``.

        ``commands`` is a batch file's text, its commands, or parsed BatchCommands;
        ``timeout`` applies to each command. Each HostOutcome lists its ``commands``;
        ``on_command`` sees each as it ends (``OnCommand``).
        """
        items = _batch_commands(commands)
        if not items:
            raise InvalidRequest("the batch has no commands (only blank lines and comments)",
                                 "command")
        job = self._job(items, env, cwd, timeout, capture, None)
        job.on_output, job.on_done, job.on_command = on_output, on_done, on_command
        job.keep_going, job.batch = keep_going, True
        return await self._run(job)

    def stream(self, command: str, *, env: dict[str, str] | None = None,
               cwd: str | None = None, timeout: float | None = None,
               stdin: StdinSource | None = None, capture: bool = False,
               on_done: OnDone | None = None) -> GroupStream:
        """Run ``command`` on every host, iterating over (host, stream, bytes) as output comes.

        ``async with group.stream(cmd) as live: async for host, name, data in live: ...``;
        the GroupResult is in ``live.result`` once the iteration ends. Leaving early cancels
        every remote command. ``capture=True`` also keeps the output in the Results.
        """
        job = self._job([BatchCommand(1, command)], env, cwd, timeout, capture, stdin)
        job.on_done = on_done
        return GroupStream(self, job)

    async def put(self, local: str | Path, remote: str, *, mode: int | None = None,
                  preserve: bool = False, force: bool = False, timeout: float | None = None,
                  on_progress: OnTransferProgress | None = None,
                  on_done: OnTransferDone | None = None) -> GroupResult[TransferResult]:
        """Copy local file ``local`` to ``remote`` on every host, as ``Client.put`` does; the
        GroupResult maps each host that got it (or had it already: ``changed`` False) to its
        TransferResult.

        The file is hashed once, then read once for every host sending it together, in
        bounded memory (the slowest host paces the read; see ``rexec.fleet.transfer`` for
        more hosts than ``forks``). ``timeout`` is per host, from its request on;
        ``on_progress(host, done, total)`` sees each host's bytes. InvalidRequest (a bad
        ``remote`` or ``timeout``) or LocalFileError (``local`` unreadable) before any host
        is contacted.
        """
        destination = put_destination(local, remote)
        check_timeout(timeout)
        fanout = FanOut(local)
        transfer = put_transfer(str(local), destination, mode=mode, preserve=preserve,
                                force=force)
        try:
            return await self._fan_out(
                lambda target, forks: transfer_host(target, forks, transfer, timeout=timeout,
                                                    on_progress=on_progress, fanout=fanout),
                on_done, fanout.open)
        finally:
            fanout.close()

    async def get(self, remote: str, local_dir: str | Path, *, preserve: bool = False,
                  timeout: float | None = None, on_progress: OnTransferProgress | None = None,
                  on_done: OnTransferDone | None = None) -> GroupResult[TransferResult]:
        """Copy ``remote`` (absolute) from every host to ``local_dir/HOST/NAME``, atomically as
        ``Client.get`` does, NAME being ``remote``'s base name and HOST the host's name (made
        a safe directory name: ``fleet.transfer.host_dir``); the directory ``local_dir`` must
        exist, each ``HOST`` in it is made as needed. So one host's file never replaces
        another's. InvalidRequest, LocalFileError (``local_dir`` not a directory) or
        ConfigError (two hosts' directories would be one) before any host is contacted.
        """
        folder = self._get_into(remote, local_dir, timeout)
        transfer = get_transfer(remote, folder, preserve=preserve)
        return await self._each_host(transfer, timeout, on_progress, on_done)

    async def put_tree(self, local: str | Path, remote: str, *, preserve: bool = False,
                       force: bool = False, timeout: float | None = None,
                       on_progress: OnTransferProgress | None = None,
                       on_done: OnTreeDone | None = None) -> GroupResult[TreeResult]:
        """Copy the local directory ``local`` to the remote directory ``remote`` on every host,
        as ``Client.put_tree`` does (``-r``); the GroupResult maps each host to its TreeResult.

        A host some of whose entries failed is "failed", its TreeResult (what was done, and
        ``errors``) kept. Each host reads the tree itself; the files it holds already are
        not sent. InvalidRequest or LocalFileError (``local`` not a directory) before any host
        is contacted.
        """
        root = put_tree_destination(local, remote)
        check_timeout(timeout)
        if not Path(local).is_dir():
            raise LocalFileError(f"{local}: not a directory (-r puts a directory)",
                                 "not_a_directory", str(local))
        transfer = put_tree_transfer(str(local), root, preserve=preserve, force=force)
        return await self._each_host(transfer, timeout, on_progress, on_done)

    async def get_tree(self, remote: str, local_dir: str | Path, *, preserve: bool = False,
                       timeout: float | None = None,
                       on_progress: OnTransferProgress | None = None,
                       on_done: OnTreeDone | None = None) -> GroupResult[TreeResult]:
        """Copy the remote directory ``remote`` from every host to ``local_dir/HOST/NAME``, as
        ``Client.get_tree`` does (``-r``), NAME being ``remote``'s base name; ``local_dir``
        must exist. A host some of whose entries failed is "failed", its TreeResult kept.
        """
        folder = self._get_into(remote, local_dir, timeout)
        transfer = get_tree_transfer(remote, folder, preserve=preserve)
        return await self._each_host(transfer, timeout, on_progress, on_done)

    def _get_into(self, remote: str, local_dir: str | Path, timeout: float | None) -> Path:
        """A fleet get's checks before any host is contacted; the directory it writes in."""
        name = get_name(remote)
        check_timeout(timeout)
        folder = Path(local_dir)
        if not folder.is_dir():
            raise LocalFileError(f"{folder}: not a directory (a fleet get writes"
                                 f" {folder}/HOST/{name})", "not_a_directory", str(folder))
        check_host_dirs([target.name for target in self.targets])
        return folder

    async def _each_host(self, transfer: Transfer[Done], timeout: float | None,
                         on_progress: OnTransferProgress | None,
                         on_done: Callable[[HostOutcome[Done]], object] | None,
                         ) -> GroupResult[Done]:
        """``transfer`` on every host, as its own (no fan-out of a file read once)."""
        return await self._fan_out(
            lambda target, forks: transfer_host(target, forks, transfer, timeout=timeout,
                                                on_progress=on_progress),
            on_done, _nothing)

    def cancel(self) -> None:
        """Cancel the run: every remote command is cancelled at once, and the hosts not
        finished are "cancelled" in the GroupResult (which ``run`` still returns)."""
        self._interrupted = True
        for task in self._tasks:
            task.cancel()  # a task cancelled before it began is "cancelled" in _gather

    def _job(self, commands: list[BatchCommand], env: dict[str, str] | None,  # noqa: PLR0917
             cwd: str | None, timeout: float | None, capture: bool,
             stdin: StdinSource | None) -> _Job:
        for item in commands:  # the caller's mistakes are found before anything is sent
            check_request(item.command, env=env, cwd=cwd, timeout=timeout,
                          stdin=stdin is not None)
        shared = None
        if stdin is not None:
            shared = shared_stdin(stdin, live=len(self.targets) <= self.forks)
        return _Job(commands, env, cwd, timeout, capture, stdin=shared)

    async def _run(self, job: _Job) -> GroupResult[Result]:
        async def prepare() -> None:
            if job.stdin is not None:
                await job.stdin.prepare()

        try:
            result = await self._fan_out(lambda target, forks: self._host(target, job, forks),
                                         job.on_done, prepare)
        finally:
            if job.stdin is not None:
                job.stdin.close()
        if isinstance(job.stdin, Broadcast) and job.stdin.error is not None:
            raise job.stdin.error
        return result

    async def _fan_out(self, host: HostPart[R], on_done: Callable[[HostOutcome[R]], object] | None,
                       prepare: Callable[[], Awaitable[None]]) -> GroupResult[R]:
        """``host(target, forks)`` for every target at once, within the forks cap, after
        ``prepare()``; ``on_done`` sees each outcome as it comes. Shared by every operation."""
        if self._running:
            raise RexecError("this Group is already running a command: a Group runs one at a"
                             " time (make another Group for the same targets)")
        self._running, self._interrupted, self.result = True, False, None
        forks = asyncio.Semaphore(self.forks)
        tasks: dict[asyncio.Task[HostOutcome[R]], Target] = {}
        try:
            await prepare()
            tasks = {asyncio.create_task(_reported(host, target, forks, on_done)): target
                     for target in self.targets}
            self._tasks = dict(tasks)
            if tasks:
                await self._wait_all(tasks, on_done)
        finally:
            self._running = False
            self._tasks = {}
        result = self.result = self._gather(tasks, on_done)
        return result

    async def _wait_all(self, tasks: dict[asyncio.Task[HostOutcome[R]], Target],
                        on_done: Callable[[HostOutcome[R]], object] | None) -> None:
        """Wait for every host; if this task is cancelled, cancel them, wait, and re-raise."""
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            self.cancel()
            await asyncio.wait(tasks)
            self.result = self._gather(tasks, on_done)
            raise

    def _gather(self, tasks: dict[asyncio.Task[HostOutcome[R]], Target],
                on_done: Callable[[HostOutcome[R]], object] | None) -> GroupResult[R]:
        outcomes: list[HostOutcome[R]] = []
        for task, target in tasks.items():
            if task.cancelled():  # cancelled before it began: never reported
                outcomes.append(HostOutcome(target.name, target.options.address, "cancelled"))
                if on_done is not None:
                    on_done(outcomes[-1])
            else:
                outcomes.append(task.result())
        return GroupResult(outcomes, interrupted=self._interrupted)

    async def _host(self, target: Target, job: _Job,
                    forks: asyncio.Semaphore) -> HostOutcome[Result]:
        """One host's whole part: a fork slot, the connection, the commands."""
        stdin, release = job.stdin.for_host() if job.stdin is not None else (None, None)
        started = 0.0
        done: list[CommandOutcome] = []
        try:
            async with forks:
                started = time.monotonic()
                client = Client.from_options(target.options)
                try:
                    try:
                        await client.connect()
                    except RexecError as exc:
                        return _outcome(target, "unreachable", started, error=str(exc))
                    return await _commands(client, target, job, stdin, started, done)
                finally:
                    await client.close()
        except asyncio.CancelledError:  # only Group.cancel() cancels a host's task
            last = done[-1].result if done else None
            return _outcome(target, "cancelled", started, result=last, job=job, done=done)
        except _Stopped as stop:
            return _outcome(target, stop.status, started, result=stop.result, error=stop.error,
                            job=job, done=done)
        finally:
            if release is not None:
                release()


async def _nothing() -> None:
    pass


async def _reported(host: HostPart[R], target: Target, forks: asyncio.Semaphore,
                    on_done: Callable[[HostOutcome[R]], object] | None) -> HostOutcome[R]:
    # the host's coroutine is made here, in its task: a task cancelled before it began has
    # none left unawaited
    outcome = await host(target, forks)
    if on_done is not None:
        on_done(outcome)
    return outcome


def _outcome(target: Target, status: HostStatus, started: float, *,
             result: Result | None = None, error: str | None = None, job: _Job | None = None,
             done: Sequence[CommandOutcome] = ()) -> HostOutcome[Result]:
    failed = next((c for c in done if not c.ok), None) if status in FAILURES else None
    return HostOutcome(
        host=target.name, address=target.options.address, status=status, result=result,
        error=error, duration=time.monotonic() - started if started else 0.0,
        commands=tuple(done) if job is not None and job.batch else (),
        failed_line=failed.line if failed is not None else None,
    )


async def _commands(client: Client, target: Target, job: _Job,  # noqa: PLR0917
                    stdin: StdinSource | None, started: float,
                    done: list[CommandOutcome]) -> HostOutcome[Result]:
    """Run the job's commands in order on one connected host."""
    failure: tuple[HostStatus, CommandOutcome] | None = None
    for item in job.commands:
        captured = _Captured(job.capture, time.monotonic())
        try:
            result = await _one(client, target.name, item.command, job, stdin, captured)
        except _Stopped as stop:
            _ended(job, target, done, stop.status,
                   CommandOutcome(item.line, item.command, stop.result, stop.error))
            if stop.fatal:
                raise
            outcome, status = done[-1], stop.status
        except asyncio.CancelledError:
            _ended(job, target, done, "cancelled",
                   CommandOutcome(item.line, item.command, captured.partial(item.command)))
            raise
        else:
            outcome = CommandOutcome(item.line, item.command, result)
            status = status_of(result)
            _ended(job, target, done, status, outcome)
        if status != "ok" and failure is None:
            failure = status, outcome
            if not job.keep_going:
                break
    if failure is None:
        return _outcome(target, "ok", started, result=done[-1].result, job=job, done=done)
    status, outcome = failure
    return _outcome(target, status, started, result=outcome.result, error=outcome.error,
                    job=job, done=done)


def _ended(job: _Job, target: Target, done: list[CommandOutcome], status: HostStatus,
           outcome: CommandOutcome) -> None:
    """One command of the batch ended: keep it, and report it to ``on_command``."""
    done.append(outcome)
    if job.on_command is not None:
        job.on_command(target.name, len(done) - 1, status, outcome)


async def _one(client: Client, host: str, command: str, job: _Job,  # noqa: PLR0917
               stdin: StdinSource | None, captured: _Captured) -> Result:
    """One command on a connected host; _Stopped when it does not end with an exit frame."""
    stream = client.stream(command, env=job.env, cwd=job.cwd, timeout=job.timeout,
                           stdin=stdin, capture=False)
    guard = job.timeout + TIMEOUT_GRACE if job.timeout is not None else None
    try:
        async with asyncio.timeout(guard):
            async for chunk in stream:
                data = chunk.data
                assert isinstance(data, bytes)
                captured.add(chunk.stream, data)
                if job.on_output is not None:
                    job.on_output(host, chunk.stream, data)
                if job.queue is not None:
                    await job.queue.put((host, chunk.stream, data))
    except TimeoutError:
        raise _Stopped("timed_out", captured.partial(command, timed_out=True),
                       f"the server did not stop the command at its {job.timeout:g} s timeout"
                       ) from None
    except CommandNotStarted as exc:  # the connection is still good for the next command
        raise _Stopped("failed", None, str(exc), fatal=False) from None
    except ConnectionLost as exc:  # the host went away mid-command (reset, keepalive, EOF):
        raise _Stopped("unreachable", captured.partial(command),  # Ansible's UNREACHABLE
                       f"connection lost while running: {exc}") from None
    except RexecError as exc:  # a ProtocolError: the connection is gone
        raise _Stopped("failed", captured.partial(command), str(exc)) from None
    assert stream.result is not None
    return captured.into(stream.result)


def _batch_commands(commands: str | Iterable[str | BatchCommand]
                    ) -> list[BatchCommand]:
    if isinstance(commands, str):
        return parse_batch(commands)
    return [item if isinstance(item, BatchCommand) else BatchCommand(number, item)
            for number, item in enumerate(commands, 1)]


class GroupStream:
    """Live output of a Group's run: an async iterator of (host, stream, bytes).

    ``result`` holds the GroupResult once the iteration has ended (or the stream was closed).
    """

    def __init__(self, group: Group, job: _Job) -> None:
        self._group, self._job = group, job
        self._queue: asyncio.Queue[tuple[str, StreamName, bytes] | None] = asyncio.Queue(
            STREAM_QUEUE)
        job.queue = self._queue
        self._task: asyncio.Task[GroupResult[Result]] | None = None
        self._finished = False
        self.result: GroupResult[Result] | None = None

    def __aiter__(self) -> GroupStream:
        return self

    async def __aenter__(self) -> GroupStream:
        self._start()
        return self

    def _start(self) -> None:
        """Start the run (at ``async with``, or at the first ``__anext__``)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def _run(self) -> GroupResult[Result]:
        try:
            return await self._group._run(self._job)
        finally:
            self._finished = True
            if not self._queue.full():  # else the reader finds the end once it empties it
                self._queue.put_nowait(None)

    async def __anext__(self) -> tuple[str, StreamName, bytes]:
        self._start()
        if not (self._finished and self._queue.empty()):
            item = await self._queue.get()
            if item is not None:
                return item
        await self._end()
        raise StopAsyncIteration

    async def _end(self) -> None:
        if self._task is not None:
            self.result = await self._task

    async def aclose(self) -> None:
        """Stop: cancel every remote command still running, and wait for the GroupResult."""
        if self._task is None:
            return
        if not self._task.done():
            self._group.cancel()
        try:
            await self._end()
        except asyncio.CancelledError:
            self.result = self._group.result
            raise


def run_group(targets: Sequence[Target] | str, command: str, *,
              inventory: Resolver | None = None, forks: int = DEFAULT_FORKS,
              **options: Any) -> GroupResult[Result]:
    """Blocking ``Group(targets, inventory=, forks=).run(command, **options)``, for scripts."""
    group = Group(targets, inventory=inventory, forks=forks)
    return asyncio.run(group.run(command, **options))

