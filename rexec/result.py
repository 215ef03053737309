"""Result: everything known about one finished command; TransferResult, about one file."""

from __future__ import annotations

from dataclasses import dataclass

TIMEOUT_STATUS = 124  # as coreutils timeout(1)
LIMIT_STATUS = 125  # the server stopped the command at one of its limits (max_output)


@dataclass(frozen=True)
class Result:
    """The outcome of one remote command.

    ``stdout`` and ``stderr`` hold the captured output (empty when it was streamed elsewhere and
    not captured); ``stdout_bytes`` and ``stderr_bytes`` always count everything the server sent.
    """

    command: str
    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False
    exceeded: str | None = None  # the server limit that stopped the command ("max_output")
    duration: float = 0.0
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_bytes: int = 0
    stderr_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True when the command exited 0, did not time out and hit no limit."""
        return self.exit_code == 0 and not self.timed_out and self.exceeded is None

    @property
    def failed(self) -> bool:
        """The opposite of ``ok``."""
        return not self.ok

    @property
    def exit_status(self) -> int:
        """A shell-style status: 124 timed out, 125 stopped at a server limit, 128+N killed by
        signal N, else the exit code."""
        if self.timed_out:
            return TIMEOUT_STATUS
        if self.exceeded is not None:
            return LIMIT_STATUS
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else 255

    def describe_failure(self, lines: int = 10) -> str:
        """A message saying how the command failed, with the last lines of its stderr."""
        if self.timed_out:
            what = "timed out"
        elif self.exceeded is not None:
            what = f"was stopped by the server: it exceeded {self.exceeded}"
        elif self.signal is not None:
            what = f"was killed by signal {self.signal}"
        else:
            what = f"exited with status {self.exit_code}"
        message = f"command {self.command!r} {what}"
        tail = self.stderr.decode("utf-8", "replace").rstrip("\n").splitlines()[-lines:]
        if tail:
            message += "\nstderr (last lines):\n" + "\n".join("  " + line for line in tail)
        return message


@dataclass(frozen=True)
class TransferResult:
    """One file put or got. A transfer that failed raises instead (TransferFailed...).

    ``bytes`` is the file's size and ``sha256`` its digest (hex), both checked by the receiving
    side; ``changed`` is False for a put that found the same file there already (nothing was
    sent); ``duration`` is the client's wall-clock seconds, local hashing and writing included.
    """

    local: str
    remote: str
    bytes: int
    sha256: str
    changed: bool
    duration: float


@dataclass(frozen=True)
class EntryError:
    """One entry of a directory transfer that was not transferred: its path relative to the
    tree, the error's code (as TransferFailed's: refused, bad_path, permission_denied...) and
    the message."""

    path: str
    code: str
    message: str


@dataclass(frozen=True)
class TreeResult:
    """A directory put or got (``put_tree`` / ``get_tree``, the CLI's ``-r``).

    ``files``, ``directories`` and ``links`` count the entries transferred, ``bytes`` the files'
    sizes, ``changed`` the entries written (for a put: files whose content or mode differed,
    directories and links made or altered). ``errors`` lists the entries that could not be
    transferred, each for its own reason (the rest went on), and ``skipped`` the local entries
    that are not files, directories or links (sockets, FIFOs, devices). ``ok`` is True when
    nothing failed.
    """

    local: str
    remote: str
    files: int
    directories: int
    links: int
    bytes: int
    changed: int
    duration: float
    errors: tuple[EntryError, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every entry was transferred."""
        return not self.errors
