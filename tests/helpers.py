"""Helpers the tests share: real server processes on ephemeral ports, the CLI as a user runs
it, token files, throw-away certificates and /proc probes. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"


def write_token(path: Path, token: str = TOKEN) -> Path:
    """Write a token file readable only by its owner."""
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def live_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, /proc/PID/stat fields after the command name) of every non-zombie process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry.name), fields


def live_children(pid: int) -> list[str]:
    """Command lines of the live (non-zombie) direct children of ``pid``."""
    found = []
    for child, fields in live_processes():
        if int(fields[1]) == pid:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue  # it just ended
            found.append(f"{child}: {cmdline.decode(errors='replace')}")
    return found


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` seconds, close its stdout; its status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


@dataclass
class ServerProcess:
    """A real ``python server.py`` child listening on an ephemeral loopback port."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    token: str
    token_file: Path
    log_path: Path
    addresses: list[str] = field(default_factory=list)  # every "listening on" line's

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.proc, 10)


def start_server(tmp: Path, *extra: str, token: str = TOKEN, env: dict[str, str] | None = None,
                 timeout: float = 20.0, replace_env: bool = False,
                 token_in_env: bool = False, listeners: int = 1,
                 cwd: Path = ROOT) -> ServerProcess:
    """Start ``python server.py --port 0`` and wait for its ``listening on`` line (as many as
    ``listeners``, for a server given several ``--host``: each has its own port).

    ``env`` is added to this process's environment, or replaces it with ``replace_env``. The
    token goes in a ``--token-file``, or in ``REXEC_TOKEN`` with ``token_in_env``. ``cwd`` is
    the server's working directory (``/proc/self/cwd`` on the "remote" side).
    """
    token_file = write_token(tmp / "server-token", token)
    log_path = tmp / "server.log"
    log = log_path.open("wb")
    environ = dict(env or {}) if replace_env else {**os.environ, **(env or {})}
    token_args = ["--token-file", str(token_file)]
    if token_in_env:
        environ["REXEC_TOKEN"] = token
        token_args = []
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", *token_args,
         "--log-level", "debug", *extra],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=cwd, env=environ,
    )
    log.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line, addresses = b"", []
    while time.monotonic() < deadline and len(addresses) < listeners:
        line = proc.stdout.readline()
        if line.startswith(b"listening on "):
            addresses.append(line.decode().split()[-1])
        elif not line:
            break
    if len(addresses) < listeners:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"server did not start: {line!r}\n{log_path.read_text()}")
    host, _, port = addresses[0].rpartition(":")
    return ServerProcess(proc, host, int(port), token, token_file, log_path, addresses)


def run_cli(*args: str, token_file: Path | None = None, input: bytes | None = None,
            timeout: float = 120.0, env: dict[str, str] | None = None,
            stdin: int | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python client.py ARGS...`` as a user would and capture what it prints."""
    argv = [sys.executable, str(ROOT / "client.py"), *args]
    if token_file is not None and args and args[0] == "run":
        argv[3:3] = ["--token-file", str(token_file)]
    return subprocess.run(
        argv, input=input, capture_output=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=stdin if input is None else None,
    )


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def credentials(status: Path) -> dict[str, list[int]]:
    """The Uid and Gid (real, effective, saved, filesystem), Groups and CapEff of a task's
    /proc status file (``/proc/PID/task/TID/status``, ``/proc/thread-self/status``)."""
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {"Uid": [int(n) for n in fields["Uid"].split()],
            "Gid": [int(n) for n in fields["Gid"].split()],
            "Groups": sorted(int(n) for n in fields["Groups"].split()),
            "CapEff": [int(fields["CapEff"], 16)]}


@contextlib.contextmanager
def public_directory(prefix: str) -> Iterator[Path]:
    """A new root-owned directory under /tmp that every user may enter (0755), removed after.

    For tests of another user's access: a tmp_path lies beneath /tmp/pytest-of-USER, 0700.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fd_count(pid: int) -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def write_server_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1: (CA, certificate, key 0600)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = folder / "ca.pem", folder / "server.crt", folder / "server.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.cert_chain_pems[0].write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    paths[2].chmod(0o600)  # rexec refuses private keys others can read
    return paths


def pids_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    return [pid for pid, fields in live_processes() if int(fields[2]) == pgid]


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs, wait for it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is true or the timeout passes; return its last value."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def make_token_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- the in-process layer: a real Server in the test's event loop, with scripted children ---


class ScriptedChild:
    """A ``rexec.server.exec.child.Child`` that plays a script instead of running a process.

    It writes ``stdout`` and ``stderr`` (lists of chunks) and exits with ``exit_code``, or,
    with ``hang``, keeps running until it is signalled, terminated, expired or told to
    ``finish()``. With ``echo``, what it is fed on stdin comes back on stdout, and it exits 0
    at stdin's end of file (``cat``). Everything the server does to it is recorded.
    """

    _next_pid = 4_000_000  # above any pid_max: never a real process

    def __init__(self, stdout: list[bytes] | None = None, stderr: list[bytes] | None = None,
                 exit_code: int = 0, *, hang: bool = False, echo: bool = False,
                 stdin: bool = False) -> None:
        import asyncio

        ScriptedChild._next_pid += 1
        self.pid = ScriptedChild._next_pid
        loop = asyncio.get_running_loop()
        self.reaped: asyncio.Future[None] = loop.create_future()
        self._exited: asyncio.Future[object] = loop.create_future()
        self._queues = {1: list(stdout or []), 2: list(stderr or [])}
        self._wake = asyncio.Event()
        self._eof = {1: False, 2: False}
        self.echo = echo
        self._stdin_open = stdin
        self.fed = bytearray()
        self.signals: list[int] = []
        self.events: list[str] = []
        self.timed_out = False
        self.exceeded: str | None = None
        self.closed = False
        if not hang and not echo:
            self._end(exit_code, None)

    def _end(self, exit_code: int | None, signum: int | None) -> None:
        from rexec.server.exec.child import ExitStatus

        if not self._exited.done():
            self._exited.set_result(ExitStatus(exit_code, signum))
            self._eof = {1: True, 2: True}  # its pipes close when it exits
            self._wake.set()

    def finish(self, exit_code: int = 0) -> None:
        """A hanging child exits by itself."""
        self._end(exit_code, None)

    @property
    def stdin_open(self) -> bool:
        return self._stdin_open

    def pipe_output(self, stream_no: int) -> None:
        return None  # scripted output is read and sent, never spliced

    async def read_into(self, stream_no: int, buffer: bytearray,
                        quiet_after_exit: float | None = None) -> int:
        while True:
            queue = self._queues[stream_no]
            if queue:
                chunk = queue[0]
                count = min(len(chunk), len(buffer))
                buffer[:count] = chunk[:count]
                if count == len(chunk):
                    queue.pop(0)
                else:
                    queue[0] = chunk[count:]
                return count
            if self._eof[stream_no]:
                return 0
            self._wake.clear()
            await self._wake.wait()

    def write_now(self, data: bytes | memoryview) -> int:
        return 0  # everything goes through write_stdin, as scripted

    async def write_stdin(self, data: bytes | memoryview) -> bool:
        if not self._stdin_open:
            return False
        self.fed += data
        if self.echo:
            self._queues[1].append(bytes(data))
            self._wake.set()
        return True

    def close_stdin(self) -> None:
        self.events.append("close_stdin")
        self._stdin_open = False
        if self.echo:
            self._end(0, None)

    async def wait(self) -> object:
        import asyncio

        return await asyncio.shield(self._exited)

    def signal_group(self, signum: int) -> bool:
        if self.closed:
            return False
        self.signals.append(signum)
        if signum not in (signal.SIGCONT, signal.SIGSTOP, signal.SIGUSR1, signal.SIGUSR2):
            self._end(None, signum)
        return True

    def terminate(self) -> None:
        self.events.append("terminate")
        self.signal_group(signal.SIGTERM)

    def kill_now(self) -> None:
        self.events.append("kill_now")

    def exceed(self, limit: str) -> None:
        self.exceeded = limit
        self.terminate()

    def expire(self) -> None:
        self.timed_out = True
        self.terminate()

    def resize(self, rows: int, cols: int, width: int = 0, height: int = 0) -> None:
        self.resized = (rows, cols, width, height)

    def close(self) -> None:
        self.closed = True
        if not self.reaped.done():
            self.reaped.set_result(None)


class ScriptedRunner:
    """A Runner whose children are ``ScriptedChild``: ``script(command)`` makes each one
    (an OSError it raises is a spawn failure). Every start is recorded in ``started``."""

    def __init__(self, script: object, kill_grace: float = 1.0) -> None:
        self.script = script
        self.kill_grace = kill_grace
        self.guardian = None
        self.started: list[dict[str, object]] = []
        self.children: list[ScriptedChild] = []

    def start_shell(self, command: str, env: object, cwd: str | None = None,
                    stdin: bool = False, confine: object = None) -> ScriptedChild:
        self.started.append({"command": command, "env": env, "cwd": cwd, "stdin": stdin})
        child = self.script(command, stdin)  # type: ignore[operator]
        self.children.append(child)
        return child

    def start(self, argv: list[str], env: object, cwd: str | None = None,
              stdin: bool = False, confine: object = None, *,
              executable: str | None = None) -> ScriptedChild:
        import shlex

        return self.start_shell(shlex.join(argv), env, cwd, stdin, confine)

    def on_loop(self, confine: object) -> bool:
        """Never: every command goes through ``spawn``/``spawn_shell``, which a subclass may
        slow down (``SlowSpawns``)."""
        return False

    async def spawn_shell(self, command: str, env: object, cwd: str | None = None,
                          stdin: bool = False, confine: object = None) -> ScriptedChild:
        return self.start_shell(command, env, cwd, stdin, confine)

    async def spawn(self, argv: list[str], env: object, cwd: str | None = None,
                    stdin: bool = False, confine: object = None, *,
                    executable: str | None = None) -> ScriptedChild:
        return self.start(argv, env, cwd, stdin, confine)

# --- many loopback "hosts" served by one process (fleet tests) ---


def serve_many(hosts: list[str], token: str = TOKEN) -> None:
    """Serve each of ``hosts`` (127.0.0.N) with a real Server and real children, all in one
    process; print ``listening on HOST:PORT`` for each, then ``ready``; stop at SIGTERM.

    One process stands in for many servers: a server process per address would cost the
    fleet tests seconds and hundreds of megabytes.
    """
    import asyncio

    from rexec.server.exec.runner import Runner
    from rexec.server.identity import Identities, Identity, Policy
    from rexec.server.listener import Server
    from rexec.wire.auth import TokenVerifier

    async def main() -> None:
        identities = Identities({"default": Identity("default", TokenVerifier.from_token(token),
                                                     policy=Policy())})
        servers = [Server(identities, host, 0, runner=Runner(kill_grace=2.0)) for host in hosts]
        for server in servers:
            for bound_host, port in await server.start():
                print(f"listening on {bound_host}:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await asyncio.gather(*(server.close() for server in servers))

    asyncio.run(main())


@dataclass
class ManyServers:
    """A ``serve_many`` process: ``addresses[i]`` serves ``127.0.0.(first + i)``."""

    proc: subprocess.Popen[bytes]
    addresses: list[str]

    def stop(self) -> int:
        return stop_process(self.proc, 15)


def start_many_servers(count: int, first: int = 2, token: str = TOKEN,
                       timeout: float = 30.0) -> ManyServers:
    """Start a ``serve_many`` process for 127.0.0.first ... 127.0.0.(first + count - 1)."""
    hosts = [f"127.0.0.{first + i}" for i in range(count)]
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"from tests.helpers import serve_many; serve_many({hosts!r}, {token!r})"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    assert proc.stdout is not None
    addresses: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(b"listening on "):
            addresses.append(line.decode().split()[-1])
        elif line == b"ready\n" or not line:
            break
    if len(addresses) != count:
        reap(proc)
        raise RuntimeError(f"the servers did not start: {addresses}")
    return ManyServers(proc, addresses)


def port_free_on(addresses: list[str]) -> int:
    """A port free for TCP and for UDP (a server answers probes on its TCP port's number) on
    every one of ``addresses``."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for host in addresses:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as sock:
                        sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every loopback address")


# A child writing chunks of seeded random sizes and bytes, each to stdout or stderr by a coin
# toss: so frames of both streams interleave, of every size from 1 byte to past a frame's cap.
WRITER = """
import os, random, sys
rng = random.Random(int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    fd = 1 if rng.random() < 0.8 else 2
    view = memoryview(rng.randbytes(rng.choice([1, 7, 4096, 65536, 300_000, 1_500_000])))
    while view:
        view = view[os.write(fd, view):]
"""


def interleaved_output(seed: int, chunks: int) -> tuple[bytes, bytes]:
    """What WRITER writes to stdout and stderr (the same generator, run here)."""
    rng = random.Random(seed)
    out, err = bytearray(), bytearray()
    for _ in range(chunks):
        target = out if rng.random() < 0.8 else err
        target += rng.randbytes(rng.choice([1, 7, 4096, 65536, 300_000, 1_500_000]))
    return bytes(out), bytes(err)


def interleaved_writer(seed: int, chunks: int) -> str:
    """The command line of a child running WRITER."""
    return f"{sys.executable} -c '{WRITER}' {seed} {chunks}"
