"""``rexec put TARGET LOCAL REMOTE`` and ``rexec get TARGET REMOTE LOCAL``: a file atomically,
or a directory (``-r``) entry by entry.

One host through the blocking client (the fast start of ``rexec run``'s one-host path,
asyncio never imported). A pattern TARGET is fleet mode, in ``cli/transfer_fleet.py`` (one
file; ``-r`` there is refused with exit 2, saying it is not supported yet). The --json document
and the progress line are written here rather than in ``cli/output.py``, which imports asyncio
at module level.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer

from rexec.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ClientConfig,
    Command,
    ConnectTimeout,
    Identity,
    Keepalive,
    TlsCa,
    TlsCert,
    TlsKey,
    TlsPin,
    TlsTofu,
    TokenFile,
    connection_keywords,
    fail,
    status_for,
)
from rexec.cli.run import Forks, InventoryFiles, Notes, classify_target, describe_error

EXITS = """Exit status:

\b
  0      done: the file was put or got (or was there already)
  2      bad usage or local input, before anything is sent: an option,
         the address, a relative REMOTE, a config or token file
  130    interrupted (Ctrl-C): the transfer was cancelled
  255    rexec or the transfer failed: connection, authentication, TLS,
         the server refused (policy, path, permissions, space), a local
         file could not be read or written, or the bytes did not check
         out; one line on stderr says which, and the destination is as
         it was

In fleet mode (a pattern TARGET): 0 every host done, 1 a transfer failed
and every host was reached, 3 a host was unreachable, 2 bad usage, 130
Ctrl-C.
"""

PUT_HELP = f"""Copy the local file LOCAL to REMOTE on TARGET, atomically.

TARGET is HOST:PORT, [IPV6]:PORT, HOST (port 7878) or one inventory host. REMOTE is an
absolute path; ending in / or naming a directory, the file keeps its local name there (as cp).
The server writes a temporary file beside REMOTE and renames it over REMOTE only once the size
and SHA-256 match. When REMOTE holds the same content (and mode) already, nothing is sent and
--json says "changed": false; --no-skip sends it anyway. A new REMOTE gets mode 0644, an
existing one keeps its mode, unless --mode or -p.

With -r, LOCAL is a directory and REMOTE the directory it becomes (made, or merged into; ending
in /, LOCAL's name inside it). Entries keep their modes, links are copied as links (one leading
out of the tree is refused), unchanged files are skipped; a failed entry is reported and the
rest go on (exit 255).

A node-set pattern TARGET (web[01-20], @group) sends LOCAL to every host it names, at most
--forks at once: LOCAL is hashed once and read once for the hosts sending it together.

{EXITS}"""

GET_HELP = f"""Copy the file REMOTE on TARGET to the local LOCAL, atomically.

TARGET is HOST:PORT, [IPV6]:PORT, HOST (port 7878) or one inventory host. REMOTE is an
absolute path; a LOCAL that is a directory receives the file under REMOTE's name. The bytes go
to a temporary file beside LOCAL, renamed over it only once their size and SHA-256 match the
server's. An existing LOCAL keeps its mode, a new one gets REMOTE's less the umask; -p gives it
REMOTE's mode and mtime exactly.

With -r, REMOTE is a directory and LOCAL the directory it becomes (made, or merged into; ending
in /, REMOTE's name inside it). Every name the server lists is checked first, and nothing is
written through a symbolic link; a failed entry is reported and the rest go on (exit 255).

A node-set pattern TARGET (web[01-20], @group) gets REMOTE from every host it names, at most
--forks at once, into LOCAL/HOST/NAME: LOCAL must be an existing directory.

{EXITS}"""

Target = Annotated[str, typer.Argument(
    metavar="TARGET", show_default=False,
    help="HOST:PORT, [IPV6]:PORT, HOST (port 7878), one inventory host, or a node-set"
         " pattern of many hosts (web[01-20], @group).")]
Preserve = Annotated[bool, typer.Option(
    "--preserve", "-p", help="Keep the file's mode and modification time.")]
JsonOutput = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object: target, local, remote, bytes, sha256, changed,"
                   " duration (and error); in fleet mode one per host (host, address,"
                   " status...).")]
Recursive = Annotated[bool, typer.Option(
    "--recursive", "-r", help="Copy a directory and everything beneath it (links as links).")]
Verbose = Annotated[int, typer.Option(
    "--verbose", "-v", count=True, show_default=False,
    help="Say where the token came from, the address and what was done, on stderr.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress line; errors only.")]
Timeout = Annotated[float | None, typer.Option(
    metavar="SECONDS", help="Fleet mode: give up a host's transfer after SECONDS.")]


def put_command(  # noqa: PLR0917 - typer maps parameters to arguments and options
    address: Target,
    local: Annotated[Path, typer.Argument(metavar="LOCAL", show_default=False,
                                          help="The local file to send.")],
    remote: Annotated[str, typer.Argument(
        metavar="REMOTE", show_default=False,
        help="Absolute remote path; ending in /, a directory to put the file in.")],
    preserve: Preserve = False,
    mode: Annotated[str | None, typer.Option(
        metavar="OCTAL", help="The remote file's permission bits, e.g. 0640.")] = None,
    no_skip: Annotated[bool, typer.Option(
        "--no-skip", help="Send the file even when REMOTE holds the same content already.")
    ] = False,
    json_output: JsonOutput = False,
    recursive: Recursive = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    inventory: InventoryFiles = None,
    token_file: TokenFile = None,
    config: ClientConfig = None,
    connect_timeout: ConnectTimeout = None,
    keepalive: Keepalive = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_pin: TlsPin = None,
    tls_tofu: TlsTofu = False,
    identity: Identity = None,
    forks: Forks = 64,
    timeout: Timeout = None,
) -> None:
    connection = connection_keywords(
        token_file=token_file, config=config, connect_timeout=connect_timeout,
        keepalive=keepalive, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_pin=tls_pin,
        tls_tofu=tls_tofu, identity=identity)
    if fleet := _fleet(address):
        raise typer.Exit(fleet.put(
            address, local, remote, mode=_mode(mode), preserve=preserve, force=no_skip,
            recursive=recursive, json_output=json_output, notes=Notes(verbose, quiet),
            forks=forks, timeout=timeout, inventory=inventory, config=config,
            connection=connection))
    job = _Job("put", address, local=str(local), remote=remote, json_output=json_output,
               notes=Notes(verbose, quiet))
    job.check(timeout)
    bits = _mode(mode)
    if recursive:
        if bits is not None:
            job.failed("--mode applies to one file: with -r every entry keeps its own mode",
                       EXIT_USAGE)
        from rexec.client.transfer import put_tree_destination

        job.remote = job.checked(lambda: put_tree_destination(local, remote))
        raise typer.Exit(job.run(
            inventory, config, connection, lambda client, progress: client.put_tree(
                local, remote, preserve=preserve, force=no_skip, on_progress=progress)))
    from rexec.client.transfer import put_destination

    job.remote = job.checked(lambda: put_destination(local, remote))
    raise typer.Exit(job.run(inventory, config, connection, lambda client, progress: client.put(
        local, remote, mode=bits, preserve=preserve, force=no_skip, on_progress=progress)))


def get_command(  # noqa: PLR0917 - typer maps parameters to arguments and options
    address: Target,
    remote: Annotated[str, typer.Argument(metavar="REMOTE", show_default=False,
                                          help="Absolute path of the remote file.")],
    local: Annotated[str, typer.Argument(  # str: a Path would drop a trailing /
        metavar="LOCAL", show_default=False,
        help="Where to write it; a directory: the file keeps its remote name there.")],
    preserve: Preserve = False,
    json_output: JsonOutput = False,
    recursive: Recursive = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    inventory: InventoryFiles = None,
    token_file: TokenFile = None,
    config: ClientConfig = None,
    connect_timeout: ConnectTimeout = None,
    keepalive: Keepalive = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_pin: TlsPin = None,
    tls_tofu: TlsTofu = False,
    identity: Identity = None,
    forks: Forks = 64,
    timeout: Timeout = None,
) -> None:
    connection = connection_keywords(
        token_file=token_file, config=config, connect_timeout=connect_timeout,
        keepalive=keepalive, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_pin=tls_pin,
        tls_tofu=tls_tofu, identity=identity)
    if fleet := _fleet(address):
        raise typer.Exit(fleet.get(
            address, remote, Path(local), preserve=preserve, recursive=recursive,
            json_output=json_output, notes=Notes(verbose, quiet), forks=forks,
            timeout=timeout, inventory=inventory, config=config, connection=connection))
    job = _Job("get", address, local=str(local), remote=remote, json_output=json_output,
               notes=Notes(verbose, quiet))
    job.check(timeout)
    if recursive:
        from rexec.client.transfer import get_tree_destination

        job.local = str(job.checked(lambda: get_tree_destination(remote, local)))
        raise typer.Exit(job.run(
            inventory, config, connection, lambda client, progress: client.get_tree(
                remote, local, preserve=preserve, on_progress=progress)))
    from rexec.client.transfer import get_destination

    job.local = str(job.checked(lambda: get_destination(remote, local)))
    raise typer.Exit(job.run(inventory, config, connection, lambda client, progress: client.get(
        remote, local, preserve=preserve, on_progress=progress)))


def _fleet(target: str) -> Any:
    """The fleet-mode module when TARGET is a pattern (``cli/transfer_fleet.py``), else None."""
    from rexec.fleet.nodeset import is_pattern

    if is_pattern(target):
        from rexec.cli import transfer_fleet

        return transfer_fleet
    return None


def _mode(value: str | None) -> int | None:
    """--mode's octal permission bits (0640, 640, 0o640), or exit 2."""
    if value is None:
        return None
    try:
        bits = int(value.removeprefix("0o"), 8)
    except ValueError:
        fail(f"--mode: expected octal permission bits such as 0640, not {value!r}", EXIT_USAGE)
    if not 0 <= bits <= 0o7777:
        fail(f"--mode: permission bits are at most 7777 (octal), not {value}", EXIT_USAGE)
    return bits


class _Job:
    """One put or get from the command line: its checks, its run, how it ends."""

    def __init__(self, kind: str, target: str, *, local: str, remote: str, json_output: bool,
                 notes: Notes) -> None:
        self.kind = kind
        self.target = target
        self.local = local
        self.remote = remote
        self.json_output = json_output
        self.notes = notes

    def check(self, timeout: float | None) -> None:
        if timeout is not None:
            self.failed("--timeout is per host in fleet mode (a pattern TARGET); one host's"
                        " transfer has no timeout yet", EXIT_USAGE)

    def checked(self, compute: Any) -> Any:
        """``compute()``, or exit 2 when the paths are bad (InvalidRequest)."""
        from rexec.errors import InvalidRequest

        try:
            return compute()
        except InvalidRequest as exc:
            self.failed(f"REMOTE: {exc}" if exc.field == "path" else str(exc), EXIT_USAGE,
                        exc)

    def run(self, inventory: list[Path] | None, config: Path | None,
            connection: dict[str, Any], transfer: Any) -> int:
        """Connect, do ``transfer(client, on_progress)``, report; the exit status."""
        _, found = classify_target(self.target, inventory, config, self.kind, False,
                                   connection=connection)
        import gc

        from rexec.cli.shell import _options
        from rexec.client.blocking import BlockingClient
        from rexec.errors import RexecError

        gc.freeze()  # as rexec run: start-up's objects stay out of every collection
        gc.enable()
        options, interrupted = None, False
        progress = _Progress(self.notes)
        try:
            options = _options(self.target, found, connection)
            self.notes.detail(f"token from {options.token_source}")
            self.notes.detail(f"connecting to {options.host} port {options.port}")
            with BlockingClient.from_options(options) as client:
                def on_sigint(signum: int, frame: FrameType | None) -> None:
                    nonlocal interrupted
                    if interrupted:
                        raise KeyboardInterrupt
                    interrupted = True
                    client.request_cancel()

                previous = signal.signal(signal.SIGINT, on_sigint)
                try:
                    result = transfer(client, progress if progress.shown else None)
                finally:
                    signal.signal(signal.SIGINT, previous)
                    progress.clear()
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except RexecError as exc:
            status = EXIT_INTERRUPTED if interrupted else status_for(exc)
            self.failed(describe_error(exc, options), status, exc)
        return self.succeeded(result)

    def succeeded(self, result: Any) -> int:
        from rexec.result import TreeResult

        if isinstance(result, TreeResult):
            return self._tree_done(result)
        what = "changed" if result.changed else "unchanged: the same file was there already"
        self.notes.detail(f"{self.kind} {result.local} {'->' if self.kind == 'put' else '<-'}"
                          f" {self.target}:{result.remote}: {result.bytes} bytes, sha256"
                          f" {result.sha256}, {what}, {result.duration:.3f} s")
        if self.json_output:
            self._print_json(local=result.local, remote=result.remote, bytes=result.bytes,
                             sha256=result.sha256, changed=result.changed,
                             duration=result.duration, error=None)
        return 0

    def _tree_done(self, result: Any) -> int:
        """A directory transfer's account: one line per failed entry, 255 if any failed."""
        arrow = "->" if self.kind == "put" else "<-"
        self.notes.detail(f"{self.kind} -r {result.local} {arrow} {self.target}:{result.remote}:"
                          f" {result.files} files ({result.bytes} bytes), {result.directories}"
                          f" directories, {result.links} links, {result.changed} changed,"
                          f" {len(result.errors)} failed, {result.duration:.3f} s")
        for path in result.skipped:
            self.notes.say(f"{os.path.join(result.local, path)}: skipped, not a file, directory"
                            " or link")
        if self.json_output:
            self._print_json(
                local=result.local, remote=result.remote, files=result.files,
                directories=result.directories, links=result.links, bytes=result.bytes,
                changed=result.changed, duration=result.duration, skipped=list(result.skipped),
                errors=[{"path": e.path, "code": e.code, "message": e.message}
                        for e in result.errors],
                error=None if result.ok else f"{len(result.errors)} entries failed")
        for error in result.errors:
            sys.stderr.write(f"rexec: {error.message}\n")
        if not result.ok:
            sys.stderr.write(f"rexec: {len(result.errors)} of the entries failed; the others"
                             f" were {'put' if self.kind == 'put' else 'got'}\n")
            return 255
        return 0

    def failed(self, message: str, status: int, error: BaseException | None = None) -> NoReturn:
        """One line on stderr (and the JSON document with --json); exit ``status``."""
        if self.json_output:
            extra = {"error_type": type(error).__name__} if error is not None else {}
            self._print_json(local=self.local, remote=self.remote, bytes=None, sha256=None,
                             changed=None, duration=None, error=message, **extra)
        fail(message, status)

    def _print_json(self, **fields: Any) -> None:
        print(json.dumps({"target": self.target, **fields}), flush=True)


class _Progress:
    """``on_progress`` for a terminal: bytes, percent, rate and ETA on one stderr line, redrawn
    at most ten times a second; never off a terminal, never with -q."""

    def __init__(self, notes: Notes) -> None:
        self.shown = not notes.quiet and os.isatty(2)
        self._first: tuple[float, int] | None = None  # the rate counts from the first bytes,
        self._drawn = 0.0  # not from before the connection and the source's hashing
        self._dirty = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
            self._drawn = now  # the first line waits for a rate to show
        if now - self._drawn < 0.1 and done < total:
            return
        self._drawn = now
        started, base = self._first
        rate = (done - base) / max(now - started, 1e-6)
        eta = (total - done) / rate if rate else 0.0
        percent = done * 100 // total if total else 100
        line = (f"{human_size(done)} / {human_size(total)}  {percent:3d}%  {human_size(rate)}/s"
                f"  ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        sys.stderr.write(f"\r{line}\x1b[K")
        sys.stderr.flush()
        self._dirty = True

    def clear(self) -> None:
        if self._dirty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._dirty = False


def human_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def register(root: typer.Typer) -> None:
    """Add ``rexec put`` and ``rexec get`` to the root app."""
    root.command("put", cls=Command, help=PUT_HELP)(put_command)
    root.command("get", cls=Command, help=GET_HELP)(get_command)
