"""The run history: every deploy and every ``rexec batch``, one SQLite file (stdlib only).

Where: ``$REXEC_HISTORY``, else ``history.sqlite`` in rexec's folder (``$REXEC_HOME``, else
``~/.rexec``), made 0700 and 0600 as the token files are.

Two tables: ``runs`` (one row per run: what, where, who, when, how it ended) and ``results``
(one row per host x step as each ends, with the last ``TAIL_BYTES`` of its output). A run
still ``running`` whose process is gone from this machine is read as ``interrupted``:
the readers work it out each time and never write.

Durability: the file is in WAL mode with ``synchronous=NORMAL``: a commit is a write() to the
WAL and no fsync (the WAL is fsynced at checkpoints). By default each ``record`` is one INSERT
committed before it returns (about 35 us here); with ``commit_every=COMMIT_EVERY`` (what
``rexec batch`` uses: a fan-out's results come in bursts) they are written together at most
50 ms after the first of them (about 8 us each). So a client that is killed (SIGKILL, the OOM
killer) leaves readable every result up to its last commit: all of them by default, all but
its last 50 ms' with ``commit_every``; only a crash of the machine itself may lose more.
Readers never block the writer, nor it them (WAL), and several writers take turns
(``BUSY_TIMEOUT_MS``; a write holds the lock for one short transaction). WAL needs the file on
a local file system: not NFS.

The schema is versioned by ``PRAGMA user_version``: ``MIGRATIONS[n]`` takes a file from
version n to n + 1, and ``History.open`` runs those a file lacks, in one transaction. Version 2
is one function appended to ``MIGRATIONS``; a file newer than the code is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rexec.errors import HistoryError, RunNotFound
from rexec.tokens import default_home

TAIL_BYTES = 64 * 1024
"""The most of each stream kept for one result: its end (where a failure says why)."""
COMMIT_EVERY = 0.05
"""Seconds a History opened with ``commit_every=COMMIT_EVERY`` may hold results before it
writes them: a fan-out's burst of results costs one commit, not one each."""
BUSY_TIMEOUT_MS = 5000
"""How long a write waits for another process's write to end (each is one short INSERT)."""
KINDS = frozenset({"deploy", "batch"})
RUN_STATUSES = frozenset({"running", "ok", "failed", "unreachable", "stopped", "cancelled",
                          "interrupted"})
"""What ``runs.status`` may say; ``interrupted`` is also what a reader makes of a run whose
process died while ``running``."""


def default_path() -> Path:
    """Where the history is: ``$REXEC_HISTORY``, else ``REXEC_HOME/history.sqlite``."""
    given = os.environ.get("REXEC_HISTORY")
    return Path(given).expanduser() if given else default_home() / "history.sqlite"


# --- the schema ----------------------------------------------------------------------------


def _v1(conn: sqlite3.Connection) -> None:
    """Version 1: runs and results. Statuses are not CHECKed: a new one needs no rebuild."""
    conn.execute("""
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            plan_sha256 TEXT,
            user TEXT NOT NULL,
            targets TEXT NOT NULL,
            options TEXT NOT NULL,
            pid INTEGER NOT NULL,
            hostname TEXT NOT NULL,
            started REAL NOT NULL,
            ended REAL,
            status TEXT NOT NULL,
            exit_status INTEGER
        )""")
    conn.execute("""
        CREATE TABLE results (
            run_id INTEGER NOT NULL REFERENCES runs (id),
            host TEXT NOT NULL,
            step_index INTEGER NOT NULL,
            step TEXT NOT NULL,
            status TEXT NOT NULL,
            changed INTEGER NOT NULL,
            exit_code INTEGER,
            duration REAL NOT NULL,
            attempts INTEGER NOT NULL,
            stdout_tail BLOB NOT NULL,
            stderr_tail BLOB NOT NULL,
            error TEXT,
            recorded REAL NOT NULL
        )""")
    conn.execute("CREATE INDEX results_by_step ON results (run_id, host, step_index)")


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: Sequence[Migration] = (_v1,)
"""``MIGRATIONS[n]`` takes a file from schema version n to n + 1 (0 is a new, empty file)."""


# --- the records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the history holds it; ``hosts`` counts the hosts with a recorded result."""

    id: int
    kind: str
    name: str
    plan_sha256: str | None
    user: str
    targets: str
    options: dict[str, Any]
    pid: int
    hostname: str
    started: float
    ended: float | None
    status: str
    exit_status: int | None
    hosts: int

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None while it runs (or when it was interrupted)."""
        return None if self.ended is None else self.ended - self.started


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One host x step result; ``stdout_tail``/``stderr_tail`` hold at most ``TAIL_BYTES``."""

    run_id: int
    host: str
    step_index: int
    step: str
    status: str
    changed: bool
    exit_code: int | None
    duration: float
    attempts: int
    stdout_tail: bytes
    stderr_tail: bytes
    error: str | None
    recorded: float


_SELECT_RUNS = """
    SELECT id, kind, name, plan_sha256, user, targets, options, pid, hostname, started, ended,
           status, exit_status,
           (SELECT COUNT(DISTINCT host) FROM results WHERE run_id = runs.id)
    FROM runs"""
_INSERT_RESULT = """
    INSERT INTO results (run_id, host, step_index, step, status, changed, exit_code, duration,
                         attempts, stdout_tail, stderr_tail, error, recorded)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_SELECT_RESULTS = """
    SELECT run_id, host, step_index, step, status, changed, exit_code, duration, attempts,
           stdout_tail, stderr_tail, error, recorded
    FROM results
    WHERE run_id = :run_id AND (:host IS NULL OR host = :host)
          AND (:step IS NULL OR step = :step)
          AND (:step_index IS NULL OR step_index = :step_index)
    ORDER BY rowid"""


# --- the history ---------------------------------------------------------------------------


class History:
    """An open history file: write a run as it happens, read the runs back.

    With ``commit_every`` (seconds, History.open's), results are kept in memory and written
    together, in one transaction, at most that long after the first of them (a timer thread
    writes them when no further call does); else each is committed before ``record``
    returns. Every other call writes what is held first, so this object's own reads see
    everything it recorded. It may be used from any one thread at a time (a lock serialises
    it with its timer).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, commit_every: float = 0.0) -> None:
        """Use ``History.open``: it makes the file, sets it up and migrates it."""
        self._conn = conn
        self.path = path
        self.commit_every = commit_every
        self._hostname = os.uname().nodename
        self._lock = threading.Lock()
        self._held: list[tuple[Any, ...]] = []  # results not yet written (commit_every)
        self._timer: threading.Timer | None = None
        self._failed: HistoryError | None = None  # the timer's write failed: said at next call

    @classmethod
    def open(cls, path: Path | None = None, *, commit_every: float = 0.0) -> History:
        """Open (or make) the history at ``path`` (default: ``default_path()``), migrated to
        this code's schema; HistoryError for a file that is not a SQLite database, not a
        history, newer than this code, or cannot be opened. ``commit_every``: see History
        (``COMMIT_EVERY`` for a fan-out's bursts of results)."""
        path = default_path() if path is None else Path(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise HistoryError(f"cannot open the history {path}: {exc.strerror or exc}"
                               ) from exc
        # isolation_level=None: no implicit transactions; a statement commits on its own,
        # and the migration's and the held results' transactions are explicit.
        # check_same_thread=False: the timer thread writes the held results (under the lock)
        with _translated(path, "open"):
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            with _translated(path, "open"):
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")  # before any lock
                conn.execute("PRAGMA journal_mode = WAL")  # the first read of the file
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                _migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, commit_every)

    def close(self) -> None:
        """Write the results held, and close the file."""
        try:
            with self._using("write to"):
                pass
        finally:
            self._conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextlib.contextmanager
    def _using(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection, to this thread alone, with the results held written first; a
        failure of the timer's write is raised here; SQLite's errors as HistoryError."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            failed, self._failed = self._failed, None
            if failed is not None:
                raise failed
            with _translated(self.path, doing):
                self._write_held()
                yield self._conn

    def _write_held(self) -> None:
        """The results held, in one transaction (the lock is held)."""
        if not self._held:
            return
        held, self._held = self._held, []
        with _transaction(self._conn):
            self._conn.executemany(_INSERT_RESULT, held)

    def _on_timer(self) -> None:
        with self._lock:
            if self._timer is threading.current_thread():  # not a newer timer (this one fired
                self._timer = None                        # as another call cancelled it)
            try:
                with _translated(self.path, "write to"):
                    self._write_held()
            except HistoryError as exc:
                self._failed = exc

    # --- writing ---------------------------------------------------------------------------

    def start_run(self, kind: str, name: str, *, targets: str, options: Mapping[str, Any],
                  plan_sha256: str | None = None) -> int:
        """Record a run starting now in this process ("running"); its id.

        ``kind`` is "deploy" or "batch", ``name`` the plan's name or the batch file,
        ``targets`` the pattern, ``options`` what it ran with (stored as JSON; values that
        are not JSON types are stored as their str()).
        """
        if kind not in KINDS:
            raise ValueError(f"a run's kind is one of {sorted(KINDS)}, not {kind!r}")
        text = json.dumps(dict(options), sort_keys=True, default=str)
        with self._using("write to") as conn:
            cursor = conn.execute(
                "INSERT INTO runs (kind, name, plan_sha256, user, targets, options, pid,"
                " hostname, started, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                (kind, name, plan_sha256, _user(), targets, text, os.getpid(), self._hostname,
                 time.time()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def record(self, run_id: int, *, host: str, step_index: int, step: str, status: str,
               changed: bool = False, exit_code: int | None = None, duration: float = 0.0,
               attempts: int = 1, stdout: bytes = b"", stderr: bytes = b"",
               error: str | None = None) -> None:
        """Record one host x step result: committed before it returns, or with
        ``commit_every``, within that many seconds.

        ``status`` is stored as given ("ok", "changed", "skipped", "failed", "unreachable",
        "would_run"...); of ``stdout`` and ``stderr`` only the last ``TAIL_BYTES`` are kept;
        ``error`` says why a step did not run or did not end (unreachable, not started).
        """
        row = (run_id, host, step_index, step, status, bool(changed), exit_code,
               float(duration), attempts, bytes(stdout[-TAIL_BYTES:]),
               bytes(stderr[-TAIL_BYTES:]), error, time.time())
        if self.commit_every <= 0:
            with self._using("write to") as conn:
                conn.execute(_INSERT_RESULT, row)
            return
        with self._lock:
            failed, self._failed = self._failed, None
            if failed is not None:
                raise failed
            self._held.append(row)
            if self._timer is None:
                self._timer = threading.Timer(self.commit_every, self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    def finish_run(self, run_id: int, status: str, exit_status: int | None) -> None:
        """Record how run ``run_id`` ended: ``status`` (one of ``RUN_STATUSES`` but
        "running") and the exit status the command exits with."""
        if status not in RUN_STATUSES - {"running"}:
            raise ValueError(f"a finished run's status is one of"
                             f" {sorted(RUN_STATUSES - {'running'})}, not {status!r}")
        with self._using("write to") as conn:
            cursor = conn.execute(
                "UPDATE runs SET ended = ?, status = ?, exit_status = ? WHERE id = ?",
                (time.time(), status, exit_status, run_id))
        if cursor.rowcount == 0:
            raise self._not_found(run_id)

    # --- reading ---------------------------------------------------------------------------

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest ``limit`` runs, newest first."""
        with self._using("read") as conn:
            rows = conn.execute(_SELECT_RUNS + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [self._run(row) for row in rows]

    def run(self, run_id: int) -> RunRecord:
        """Run ``run_id``; RunNotFound (a HistoryError naming it) when there is none."""
        with self._using("read") as conn:
            row = conn.execute(_SELECT_RUNS + " WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise self._not_found(run_id)
        return self._run(row)

    def results(self, run_id: int, host: str | None = None, step: str | None = None, *,
                step_index: int | None = None) -> list[ResultRecord]:
        """Run ``run_id``'s results, those of ``host``, of the step named ``step`` and of
        ``step_index`` when given: hosts in the order their first result came, each host's
        by step, a step recorded twice (a retry, a resumed run) in the order recorded."""
        with self._using("read") as conn:
            rows = conn.execute(_SELECT_RESULTS, {
                "run_id": run_id, "host": host, "step": step, "step_index": step_index,
            }).fetchall()
        records = [_result(row) for row in rows]
        first: dict[str, int] = {}
        for record in records:
            first.setdefault(record.host, len(first))
        records.sort(key=lambda r: (first[r.host], r.step_index))  # stable: recorded order
        return records

    def last_results(self, run_id: int) -> dict[str, list[ResultRecord]]:
        """For each host of run ``run_id``, the last result recorded for each of its steps,
        by step: what ``rexec deploy --resume`` starts from (a host's step whose last word is
        "ok" or "changed" is done; one absent from the list never ended)."""
        last: dict[str, dict[int, ResultRecord]] = {}
        for record in self.results(run_id):
            last.setdefault(record.host, {})[record.step_index] = record  # later ones win
        return {host: [steps[index] for index in sorted(steps)] for host, steps in last.items()}

    def _run(self, row: tuple[Any, ...]) -> RunRecord:
        (run_id, kind, name, plan_sha256, user, targets, options, pid, hostname, started,
         ended, status, exit_status, hosts) = row
        if status == "running" and hostname == self._hostname and not pid_alive(pid):
            status = "interrupted"  # read so, never written: the run may be another machine's
        return RunRecord(run_id, kind, name, plan_sha256, user, targets, json.loads(options),
                         pid, hostname, started, ended, status, exit_status, hosts)

    def _not_found(self, run_id: int) -> RunNotFound:
        return RunNotFound(f"no run {run_id} in the history {self.path}"
                           " (`rexec history` lists them)", run_id)


def _result(row: tuple[Any, ...]) -> ResultRecord:
    (run_id, host, step_index, step, status, changed, exit_code, duration, attempts, stdout,
     stderr, error, recorded) = row
    return ResultRecord(run_id, host, step_index, step, status, bool(changed), exit_code,
                        duration, attempts, bytes(stdout), bytes(stderr), error, recorded)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to ``len(MIGRATIONS)``, in one transaction that holds the write lock
    (two processes opening an old file at once migrate it once)."""
    known = len(MIGRATIONS)
    if _version(conn, path) == known:
        return
    with _transaction(conn):
        version = _version(conn, path)  # again: another process may have just migrated it
        if version == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            raise HistoryError(f"{path} is a SQLite database but not a rexec history: move"
                               " it away, or choose another file (--history, REXEC_HISTORY)")
        for number in range(version, known):
            MIGRATIONS[number](conn)
        conn.execute(f"PRAGMA user_version = {known:d}")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction that takes the write lock at once, committed or rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # an SQLite error may have rolled it back already
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; HistoryError when it is newer than this code's."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise HistoryError(f"{path} was written by a newer rexec (history version {version};"
                           f" this rexec reads up to {len(MIGRATIONS)}): upgrade rexec, or"
                           " choose another file (--history, REXEC_HISTORY)")
    return version


@contextlib.contextmanager
def _translated(path: Path, doing: str) -> Iterator[None]:
    """sqlite3's errors as HistoryError, naming the file (the one translator)."""
    try:
        yield
    except sqlite3.Error as exc:
        if "not a database" in str(exc):  # SQLITE_NOTADB's message
            raise HistoryError(f"{path} is not a rexec history (not a SQLite database): move"
                               " it away, or choose another file (--history, REXEC_HISTORY)"
                               ) from exc
        raise HistoryError(f"cannot {doing} the history {path}: {exc}") from exc


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (a zombie does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: kill() said it exists
    return state != b"Z"


def _user() -> str:
    """Who runs this process: the login name, else the uid."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return str(os.getuid())
