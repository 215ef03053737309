"""rexec beside ssh, asyncssh and local spawning, on loopback; writes docs/benchmarks.md.

    make bench                          # the full run (about 6-10 minutes)
    make bench BENCH_ARGS=--quick       # a short run (2-3 minutes): fewer rounds, 256 MiB streams
    python bench/suite.py --quick --only 1,3 --size 100000000 --output /tmp/b.md

It starts everything it compares by itself, on 127.0.0.1, and stops it (by PID) at the end:
  - two rexec servers (plaintext, and TLS with a throw-away CA made by trustme) on free ports,
    with a temporary REXEC_HOME and a config raising idle_timeout, max_startups and
    per_source_max_startups;
  - a private OpenSSH server (Debian's openssh-server; installed with apt-get when
    /usr/sbin/sshd is missing) on two free ports, with generated host and ed25519 client keys,
    UsePAM no, key-only, MaxStartups and MaxSessions raised, StrictModes no. On the main port
    `SetEnv SHLVL=1` keeps bash (root's login shell) from reading root's ~/.bashrc, which runs
    `pyenv init` here (rexec's /bin/sh -c reads no rc file); the second port leaves it on, for
    one informational row: what `ssh host true` costs as this machine's users get it.
Then, interleaving the contenders (A B C A B C ..., the order rotated each round), it measures:
  1. `true` on one persistent connection: rexec.BlockingClient, rexec.Client (async),
     asyncssh, ssh ControlMaster, the asyncio spawn floor and subprocess.run;
  2. a fresh CLI process: `rexec run ADDRESS -- true`, `ssh host true` (default key exchange,
     and curve25519-sha256), `python -c pass`, with each process's CPU time; the floors of a
     typer + pydantic CLI (`python -c 'import typer'`, `... 'from pydantic import BaseModel'`,
     a bare two-argument typer app: bench/startup.py) and `rexec --version`; and where one
     `rexec run` spends its time, stage by stage (bench/startup.py stages) and per package
     (`python -X importtime`);
  3. `head -c SIZE /dev/zero` streamed back and discarded: rexec plaintext and TLS (the CLI),
     ssh (default cipher and aes128-gcm), and through the Python APIs in processes of their own
     (bench/stream_client.py): rexec plaintext and TLS, asyncssh; a local pipe; and three
     floors (bench/relay_floor.py): a protocol-free Python relay over loopback TCP (read +
     sendall, and os.splice), and loopback TCP alone; with the CPU seconds of every process of
     each contender, the server side's included (rexec-server's and sshd's /proc counters);
  4. peak RSS of the rexec client (wait4) and server (sampled) during 3, and the server's RSS
     holding 1,000 idle authenticated connections;
  5. fan-out through the Python API, asyncio.gather: 50 and 500 connections each running
     `hostname`, rexec.Client against asyncssh;
  6. 20 clients x 20 sequential `true` on their own connections: commands per second;
  7. a fleet fan-out (`--only fleet`, or `make bench-fleet`, a few minutes alone): 50, 500
     and 1,000 hosts, each its own loopback address (rexec servers serving many addresses each,
     bench/fleet_server.py; sshds of 16 ListenAddress lines, their most), `hostname` on all at
     once from a cold client process (bench/fleet_client.py): rexec.Client with
     asyncio.gather, asyncssh likewise, parallel-ssh when installed; wall time and the
     client's peak RSS;
  8. an interactive session on a PTY (`--only pty`, or `make bench-pty`, about a minute
     alone), each client on a real PTY of bench/pty_client.py: keystroke echo latency of
     `rexec shell` and `ssh -tt` (beside floors: a protocol-free relay in C and in Python,
     bench/pty_relay.c and .py, and local bash), and `cat` of a 100 MB text file through
     `rexec run -t` and `ssh -tt`, every byte counted;
  9. file transfer (`--only transfer`, or `make bench-transfer`): a 1 GiB file of random bytes
     put and got by `rexec put`/`get` (plaintext and TLS) beside scp (default cipher and
     aes128-gcm), sftp and asyncssh's SFTP (bench/transfer_client.py), and an unchanged re-put
     beside hashing the file twice;
 10. a fleet put (`--only fleet-put`; `make bench-transfer` runs it after row 9): 100 MB to 20
     hosts (loopback addresses of two rexec servers, the destination on tmpfs) with
     `rexec put PATTERN` (forks 20 and 5, and an unchanged re-put) beside 20 rexec.Client.put
     under asyncio.gather (bench/fleet_client.py rexec-put); wall time, the client's peak RSS
     and how many bytes it read.
 11. a deploy (`--only deploy`, or `make bench-deploy`; not in the default run): a 4-step
     plan on 100 and 500 hosts beside pyinfra and Ansible;
 12. UDP ping (`--only ping`, or `make bench-ping`, about a minute alone): `rexec ping -c 3`
     of 256 loopback hosts (with and without a token) beside Debian's `fping -c 3 -q`
     (installed with apt-get when missing), the server's CPU per 10,000 probes
     (bench/ping_load.py), and another source's round trips during a bounded flood.
Medians and p95 (nearest rank) over every sample; ratios are taken between medians of the
same run. Every loop has a fixed count and every wait a deadline. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import trustme
from procinfo import (  # bench/ is on sys.path when a script here runs
    CLOCK_TICKS,
    child_pids,
    fd_count,
    proc_cpu,
    proc_status,
)
from startup import STAGES

import rexec

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
MIB = 1 << 20
GIB = 1 << 30
SSHD_MAX_STARTUPS = 1000  # >= the widest fan-out, or sshd drops the excess (see the notes)
REXEC_MAX_STARTUPS = 2000
PROCESS_TIMEOUT = 300.0  # no single process of a contender may run longer
FAILURES_TO_DROP = 3  # a contender that failed this often sits out the rest of its row


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    name: str
    latency_rounds: int  # row 1: rounds, each a batch of latency_batch commands per contender
    latency_batch: int
    fresh_rounds: int  # row 2: one process per contender per round
    size: int  # row 3: bytes streamed
    stream_rounds: int
    idle_connections: int  # row 4
    idle_rounds: int
    sshd_idle_connections: int  # the peer's figure (sshd forks a process per connection)
    fanout: tuple[int, ...]  # row 5
    fanout_rounds: int
    clients: int  # row 6
    sequential: int
    cps_rounds: int
    fleet: tuple[int, ...] = (50, 500, 1000)  # row 7: hosts, each its own loopback address
    fleet_rounds: int = 3
    fleet_servers: int = 2  # rexec server processes sharing the fleet's addresses
    pty_keys: int = 200  # row 8: keystrokes per shell
    pty_key_rounds: int = 10  # interleaved rounds the keystrokes are split into
    pty_size: int = 100_000_000  # bytes of the file `cat` shows on a PTY
    pty_cat_rounds: int = 3
    transfer_size: int = GIB  # row 9: bytes of the file put and got
    transfer_rounds: int = 3
    fleet_put_size: int = 100_000_000  # row 10: bytes put to every host
    fleet_put_hosts: int = 20
    fleet_put_rounds: int = 3
    deploy_hosts: tuple[int, ...] = (100, 500)  # row 11: a 4-step deploy, beside pyinfra
    deploy_rounds: int = 3
    deploy_ansible: bool = True  # row 11 with Ansible beside (--no-ansible: minutes shorter)
    ping_hosts: int = 256  # row 12: rexec ping beside fping
    ping_rounds: int = 5


FULL = Plan("full", latency_rounds=20, latency_batch=25, fresh_rounds=20, size=GIB,
            stream_rounds=7, idle_connections=1000, idle_rounds=3,
            sshd_idle_connections=1000, fanout=(50, 500),
            fanout_rounds=7, clients=20, sequential=20, cps_rounds=11)
QUICK = Plan("quick", latency_rounds=6, latency_batch=15, fresh_rounds=6, size=256 * MIB,
             stream_rounds=3, idle_connections=1000, idle_rounds=1,
             sshd_idle_connections=200, fanout=(50, 500),
             fanout_rounds=2, clients=20, sequential=20, cps_rounds=3, fleet_rounds=2,
             pty_cat_rounds=2, transfer_size=256 * MIB, transfer_rounds=2,
             fleet_put_rounds=2, deploy_rounds=1, ping_rounds=3)


# ---------------------------------------------------------------------------------------------
# figures


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass
class Series:
    """The samples of one contender (seconds, unless said otherwise)."""

    name: str
    short: str = ""  # for progress lines and cross-references; the name if empty
    values: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)  # peak RSS of the contender's process
    errors: list[str] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.short or self.name

    @property
    def median(self) -> float:
        return median(self.values)

    @property
    def p95(self) -> float:
        return percentile(self.values, 95)

    @property
    def dropped(self) -> bool:
        return len(self.errors) >= FAILURES_TO_DROP

    def fail(self, message: str) -> None:
        message = " ".join(message.split())[:300]
        self.errors.append(message)
        print(f"    ! {self.name}: {message}", flush=True)

    def add_extra(self, key: str, value: float) -> None:
        self.extra.setdefault(key, []).append(value)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def fx(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}x"


def fnum(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def rotated(items: list[Any], by: int) -> list[Any]:
    by %= len(items)
    return items[by:] + items[:by]


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# processes


def stop_process(proc: subprocess.Popen[bytes], name: str, sig: int = signal.SIGTERM) -> None:
    """Stop a process this script started, by its PID: ``sig``, then SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            say(f"  {name} (pid {proc.pid}) ignored signal {sig}: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def timed_process(argv: list[str], env: dict[str, str], timeout: float = PROCESS_TIMEOUT,
                  hwm: bool = False, capture: bool = False) -> tuple[float, int, bytes]:
    """Run argv (stdin /dev/null, stdout /dev/null unless ``capture``); return its wall seconds,
    its peak RSS in KiB (``hwm``: VmHWM sampled every 10 ms, else 0) and its stdout.

    Peak RSS is sampled, not taken from wait4: a child of this (large) Python process reports
    the parent's RSS as its own ru_maxrss, as the kernel carries it over at fork and exec."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    sampler = Sampler(proc.pid, "VmHWM", 0.01) if hwm else contextlib.nullcontext()
    with sampler:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc, argv[0], signal.SIGKILL)
            raise RuntimeError(f"{argv[0]} still running after {timeout:g} s: killed") from None
        except BaseException:  # interrupted: leave nothing running
            stop_process(proc, argv[0], signal.SIGKILL)
            raise
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}:"
                           f" {err.decode(errors='replace').strip()[-300:]}")
    peak = max(sampler.samples, default=0) if isinstance(sampler, Sampler) else 0
    return elapsed, peak, out or b""


def count_output(argv: list[str], env: dict[str, str], timeout: float = PROCESS_TIMEOUT) -> int:
    """Run argv and count the bytes of its stdout (a check, not a measurement)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    total = 0
    try:
        while time.monotonic() < deadline:
            chunk = proc.stdout.read1(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        stop_process(proc, argv[0], signal.SIGKILL)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode} ({total} bytes)")
    return total


class Sampler:
    """Samples a /proc/PID/status field (KiB) in a thread, while in a with block."""

    def __init__(self, pid: int, name: str = "VmRSS", interval: float = 0.02) -> None:
        self.pid = pid
        self.name = name
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if value := proc_status(self.pid, self.name):
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def run_quiet(argv: list[str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)


# ---------------------------------------------------------------------------------------------
# the servers


def ensure_sshd() -> str:
    """Debian's sshd, installed with apt-get when missing; how it was found."""
    if SSHD.exists():
        return "present"
    if os.geteuid() != 0:
        raise SystemExit(f"{SSHD} is missing: install openssh-server (apt-get install -y"
                         " openssh-server) or run the suite as root to let it do so")
    say("installing openssh-server (apt-get) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "openssh-server"]
    if run_quiet(install, timeout=600, env=env).returncode != 0:
        run_quiet(["apt-get", "update"], timeout=600, env=env)
        done = run_quiet(install, timeout=600, env=env)
        if done.returncode != 0:
            raise SystemExit(f"apt-get install openssh-server failed:\n{done.stderr[-2000:]}")
    if not SSHD.exists():
        raise SystemExit(f"openssh-server installed but {SSHD} is missing")
    return "installed by this run"


@dataclass
class Rig:
    """Everything the rows use: servers, addresses, credentials, paths."""

    tmp: Path
    env: dict[str, str]  # for the CLIs: REXEC_HOME set, REXEC_TOKEN/REXEC_CONFIG removed
    token: str = ""
    ca_pem: Path = Path()
    plain: subprocess.Popen[bytes] | None = None
    tls: subprocess.Popen[bytes] | None = None
    plain_addr: str = ""
    tls_addr: str = ""
    sshd: subprocess.Popen[bytes] | None = None
    ssh_port: int = 0
    ssh_rc_port: int = 0
    ssh_config: Path = Path()
    ssh_key: Path = Path()
    known_hosts: Path = Path()
    facts: dict[str, str] = field(default_factory=dict)
    asyncssh_key: Any = None
    asyncssh_known_hosts: Any = None

    def ssh(self, *args: str, host: str = "bench") -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), *args, host]

    async def asyncssh_connect(self) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1", self.ssh_port, username="root", client_keys=[self.asyncssh_key],
            known_hosts=self.asyncssh_known_hosts, config=None, agent_path=None,
            connect_timeout=60)

    def rexec_client(self) -> rexec.Client:
        return rexec.Client(self.plain_addr, token=self.token, connect_timeout=60)


def start_rexec_server(rig: Rig, name: str, extra: list[str], config: Path | None = None
                       ) -> tuple[subprocess.Popen[bytes], str]:
    out = rig.tmp / f"{name}.out"
    with out.open("wb") as stdout, (rig.tmp / f"{name}.log").open("wb") as stderr:
        proc = subprocess.Popen(
            [str(BIN / "rexec-server"), "--host", "127.0.0.1", "--port", "0",
             "--token-file", str(rig.tmp / "home" / "token"),
             "--config", str(config or rig.tmp / "server.toml"), *extra],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=rig.env)
    address = ""

    def listening() -> bool:
        nonlocal address
        if m := re.search(r"listening on (\S+)", out.read_text(errors="replace")):
            address = m.group(1)
        return bool(address) or proc.poll() is not None

    wait_until(listening, 30)
    if not address:
        stop_process(proc, name)
        log = (rig.tmp / f"{name}.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"the {name} rexec server did not start:\n{log}")
    return proc, address


def setup_rexec(rig: Rig, stack: contextlib.ExitStack) -> None:
    home = rig.tmp / "home"
    home.mkdir(mode=0o700)
    rig.token = secrets.token_urlsafe(32)
    (home / "token").write_text(rig.token + "\n")
    (home / "token").chmod(0o600)
    (rig.tmp / "server.toml").write_text(
        "[server]\n"
        "idle_timeout = 3600.0\n"  # the 1,000 idle connections must stay
        f"max_startups = {REXEC_MAX_STARTUPS}\n"  # fan-out and idle bursts: no refusals,
        f"per_source_max_startups = {REXEC_MAX_STARTUPS}\n"  # all from this one address
        'log_level = "info"\n'  # the default: one JSON line per command (to a file here)
    )
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    rig.ca_pem = rig.tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(rig.ca_pem))
    cert.private_key_pem.write_to_path(str(rig.tmp / "server.key"))
    (rig.tmp / "server.key").chmod(0o600)  # rexec refuses private keys others can read
    (rig.tmp / "server.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    (rig.tmp / "server.key").chmod(0o600)
    rig.plain, rig.plain_addr = start_rexec_server(rig, "plain", [])
    stack.callback(stop_process, rig.plain, "rexec server (plaintext)")
    rig.tls, rig.tls_addr = start_rexec_server(
        rig, "tls", ["--tls-cert", str(rig.tmp / "server.pem"),
                     "--tls-key", str(rig.tmp / "server.key")])
    stack.callback(stop_process, rig.tls, "rexec server (TLS)")
    # warm both, and note what TLS negotiates
    rexec.run(rig.plain_addr, "true", token=rig.token, check=True)
    with rexec.BlockingClient(rig.tls_addr, token=rig.token, tls_ca=rig.ca_pem) as c:
        c.run("true", check=True)
        sock = getattr(c, "_sock", None)
        if sock is not None and hasattr(sock, "cipher"):
            rig.facts["tls"] = f"{sock.version()} {sock.cipher()[0]}"


def setup_ssh(rig: Rig, stack: contextlib.ExitStack) -> None:
    d = rig.tmp / "ssh"
    d.mkdir()
    for key in ("host_key", "client_key"):
        done = run_quiet(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench-{key}",
                          "-f", str(d / key)])
        if done.returncode != 0:
            raise SystemExit(f"ssh-keygen failed: {done.stderr}")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    rig.ssh_key = d / "client_key"
    rig.ssh_port, rig.ssh_rc_port = free_port(), free_port()
    while rig.ssh_rc_port == rig.ssh_port:
        rig.ssh_rc_port = free_port()
    config = d / "sshd_config"
    config.write_text(f"""# private sshd of bench/suite.py
ListenAddress 127.0.0.1:{rig.ssh_port}
ListenAddress 127.0.0.1:{rig.ssh_rc_port}
HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups {SSHD_MAX_STARTUPS}
MaxSessions 200
UseDNS no
PrintMotd no
PrintLastLog no
# scp (SFTP underneath since OpenSSH 9.0), sftp and asyncssh's SFTP: Debian's default server
Subsystem sftp {SFTP_SERVER if Path(SFTP_SERVER).exists() else "internal-sftp"}
# bash (root's shell) reads ~/.bashrc for `ssh host cmd` unless SHLVL is already >= 1
Match LocalPort {rig.ssh_port}
    SetEnv SHLVL=1
""")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    check = run_quiet([str(SSHD), "-t", "-f", str(config)])
    if check.returncode != 0:
        raise SystemExit(f"sshd -t rejected the config: {check.stderr}")
    with (d / "sshd.log").open("wb") as log:
        rig.sshd = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    stack.callback(stop_process, rig.sshd, "sshd")

    def accepting() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", rig.ssh_port), timeout=1):
                return True
        except OSError:
            return rig.sshd is not None and rig.sshd.poll() is not None

    if not wait_until(accepting, 20) or rig.sshd.poll() is not None:
        raise SystemExit(f"sshd did not start:\n{(d / 'sshd.log').read_text()[-2000:]}")
    host_key = (d / "host_key.pub").read_text().split()
    rig.known_hosts = d / "known_hosts"
    rig.known_hosts.write_text("".join(f"[127.0.0.1]:{p} {host_key[0]} {host_key[1]}\n"
                                       for p in (rig.ssh_port, rig.ssh_rc_port)))
    rig.ssh_config = d / "ssh_config"
    common = f"""    HostName 127.0.0.1
    User root
    IdentityFile {rig.ssh_key}
    IdentitiesOnly yes
    UserKnownHostsFile {rig.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    LogLevel ERROR
"""
    rig.ssh_config.write_text(f"Host bench\n    Port {rig.ssh_port}\n{common}"
                              f"Host bench-rc\n    Port {rig.ssh_rc_port}\n{common}")
    rig.asyncssh_key = asyncssh.read_private_key(str(rig.ssh_key))
    rig.asyncssh_known_hosts = asyncssh.import_known_hosts(rig.known_hosts.read_text())
    # check both ports, SHLVL's effect, and what the client negotiates by default
    for host, expect in (("bench", "2"), ("bench-rc", "1")):
        done = run_quiet([*rig.ssh("-v", host=host), 'echo "$SHLVL"'])
        if done.returncode != 0 or done.stdout.strip() != expect:
            raise SystemExit(f"ssh {host} failed or SHLVL is {done.stdout.strip()!r}, not"
                             f" {expect}: {done.stderr[-2000:]}")
        if host == "bench":
            kex = re.search(r"kex: algorithm: (\S+)", done.stderr)
            cipher = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", done.stderr)
            rig.facts["ssh kex"] = kex.group(1) if kex else "?"
            rig.facts["ssh cipher"] = cipher.group(1) if cipher else "?"


def versions(rig: Rig) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = run_quiet(argv)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        return "?"

    git = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = run_quiet(["git", "-C", str(ROOT), "status", "--porcelain", "--", "rexec"])
    changed = len(dirty.stdout.splitlines()) if dirty.returncode == 0 else 0
    import ssl

    import cryptography
    import pydantic

    return {
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "rexec": f"{rexec.__version__} (git {git}"
                 + (f", {changed} file(s) in rexec/ changed since)" if changed else ")"),
        "pydantic": pydantic.VERSION,
        "OpenSSH client": first_line(["ssh", "-V"]),
        "OpenSSH server": "Debian openssh-server "
                          + first_line(["dpkg-query", "-W", "-f", "${Version}", "openssh-server"]),
        "OpenSSL (Python)": ssl.OPENSSL_VERSION,
        "asyncssh": f"{asyncssh.__version__} (cryptography {cryptography.__version__})",
    }


def compile_bytecode() -> None:
    """Byte-compile rexec and bench/ first, as installing rexec's wheel does.

    The editable install leaves rexec as source, and a shell with PYTHONDONTWRITEBYTECODE set
    (removed from the contenders' environment too) would have every fresh rexec process compile
    its ~100 modules again: about 85 ms of start-up that no installed rexec pays, while the
    peers' packages were compiled when pip installed them."""
    for folder in (ROOT / "rexec", ROOT / "bench"):
        if not compileall.compile_dir(folder, quiet=1, workers=0):
            raise SystemExit(f"could not byte-compile {folder}")


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = proc_meminfo_gib()
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM,"
            f" Linux {platform.release()}")


def proc_meminfo_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / MIB
    return math.nan


# ---------------------------------------------------------------------------------------------
# row 1: `true` on one persistent connection


Batch = Callable[[int], list[float]]


def latency_row(rig: Rig, plan: Plan, runner: asyncio.Runner,  # noqa: PLR0915
                stack: contextlib.ExitStack) -> list[Series]:
    say("[1] `true` on one persistent connection")
    block = rexec.BlockingClient(rig.plain_addr, token=rig.token)
    block.connect()
    stack.callback(block.close)
    client = rig.rexec_client()
    runner.run(client.connect())
    stack.callback(lambda: runner.run(client.close()))
    conn = runner.run(rig.asyncssh_connect())

    def close_asyncssh() -> None:
        conn.close()
        runner.run(conn.wait_closed())

    stack.callback(close_asyncssh)
    control = rig.tmp / "ssh" / "control.sock"
    master = subprocess.Popen(
        rig.ssh("-N", "-o", "ControlMaster=yes", "-o", f"ControlPath={control}",
                "-o", "ControlPersist=no"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(stop_process, master, "ssh ControlMaster")
    mux = rig.ssh("-o", "ControlMaster=no", "-o", f"ControlPath={control}")
    if not wait_until(lambda: run_quiet([*mux[:-1], "-O", "check", "bench"]).returncode == 0,
                      20, 0.1):
        raise SystemExit("the ssh ControlMaster did not come up")

    def sync_batch(one: Callable[[], None]) -> Batch:
        def batch(k: int) -> list[float]:
            times = []
            for _ in range(k):
                started = time.perf_counter()
                one()
                times.append(time.perf_counter() - started)
            return times
        return batch

    def async_batch(one: Callable[[], Awaitable[None]]) -> Batch:
        async def timed(k: int) -> list[float]:
            times = []
            async with asyncio.timeout(120):
                for _ in range(k):
                    started = time.perf_counter()
                    await one()
                    times.append(time.perf_counter() - started)
            return times
        return lambda k: runner.run(timed(k))

    def rexec_block() -> None:
        r = block.run("true")
        if r.exit_code != 0 or r.stdout or r.stderr:
            raise RuntimeError(f"rexec BlockingClient: {r!r}")

    async def rexec_async() -> None:
        r = await client.run("true")
        if r.exit_code != 0 or r.stdout or r.stderr:
            raise RuntimeError(f"rexec Client: {r!r}")

    async def asyncssh_true() -> None:
        r = await conn.run("true")
        if r.exit_status != 0:
            raise RuntimeError(f"asyncssh: exit {r.exit_status}, {r.stderr!r}")

    def ssh_mux() -> None:
        done = subprocess.run([*mux, "true"], stdin=subprocess.DEVNULL, timeout=60,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ssh (ControlMaster): exit {done.returncode}")

    async def floor() -> None:
        p = await asyncio.create_subprocess_exec("sh", "-c", "true", stdin=subprocess.DEVNULL)
        if await p.wait() != 0:
            raise RuntimeError("sh -c true failed")

    def sub_run() -> None:
        subprocess.run(["sh", "-c", "true"], stdin=subprocess.DEVNULL, check=True, timeout=60)

    def sub_run_bash() -> None:
        subprocess.run(["bash", "-c", "true"], stdin=subprocess.DEVNULL, check=True, timeout=60,
                       env={**os.environ, "SHLVL": "1"})

    contenders: list[tuple[Series, Batch]] = [
        (Series("rexec.BlockingClient (Python API)", "rexec blocking"), sync_batch(rexec_block)),
        (Series("rexec.Client (async Python API)", "rexec async"), async_batch(rexec_async)),
        (Series("asyncssh conn.run()", "asyncssh"), async_batch(asyncssh_true)),
        (Series("ssh ControlMaster (`ssh -S sock host true`)", "ssh mux"), sync_batch(ssh_mux)),
        (Series("local floor: asyncio.create_subprocess_exec('sh', '-c', 'true')",
                "asyncio floor"),
         async_batch(floor)),
        (Series("local: subprocess.run(['sh', '-c', 'true'])", "subprocess.run"),
         sync_batch(sub_run)),
        (Series("local, for scale: subprocess.run(['bash', '-c', 'true']) (the shell sshd"
                " starts)", "subprocess.run bash"), sync_batch(sub_run_bash)),
    ]
    measure_rounds(contenders, plan.latency_rounds, plan.latency_batch, warmup=5)
    return [s for s, _ in contenders]


def measure_rounds(contenders: list[tuple[Series, Batch]], rounds: int, batch: int,
                   warmup: int = 1) -> None:
    """Warm each contender up, then ``rounds`` rounds of one batch each, order rotated."""
    for series, run_batch in contenders:
        try:
            run_batch(warmup)
        except Exception as exc:  # a failing contender is reported, the others go on
            series.fail(f"warm-up: {type(exc).__name__}: {exc}")
        series.values.clear()  # what the warm-up recorded does not count
        series.rss_kib.clear()
        series.extra.clear()
    last: dict[str, float] = {}
    for r in range(rounds):
        for series, run_batch in rotated(contenders, r):
            if series.dropped:
                continue
            try:
                got = run_batch(batch)
            except Exception as exc:
                series.fail(f"{type(exc).__name__}: {exc}")
                got = []
            series.values.extend(got)
            last[series.name] = median(got)
        say(f"    round {r + 1}/{rounds} (ms, median of the round): " + ", ".join(
            f"{s.label} {last.get(s.name, math.nan) * 1000:.2f}"
            for s, _ in contenders))


# ---------------------------------------------------------------------------------------------
# row 2: a fresh CLI process


STARTUP = Path(__file__).resolve().parent / "startup.py"
STAGED = "rexec run, staged"  # the instrumented runs of row 2: their own table, not the row's
IMPORTTIME = "rexec run, importtime"
IMPORT_GROUPS = (  # (group, top-level packages) for `python -X importtime` self times
    ("typer, with the click it vendors, rich, shellingham, annotated_doc",
     {"typer", "click", "rich", "shellingham", "annotated_doc"}),
    ("pydantic, pydantic_core, annotated_types, typing_extensions, typing_inspection",
     {"pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection"}),
    ("rexec (its modules' own code: pydantic creating rexec's model classes included)",
     {"rexec"}),
    ("the standard library (Python's own start-up included)", set(sys.stdlib_module_names)),
)
OTHER_IMPORTS = "anything else (the venv's .pth hooks: the editable install's finder, ...)"


def fresh_row(rig: Rig, plan: Plan) -> list[Series]:
    say("[2] a fresh CLI process running `true`")
    py = sys.executable
    argvs = [
        ("rexec run", "`rexec run ADDRESS -- true`",
         [str(BIN / "rexec"), "run", rig.plain_addr, "--", "true"]),
        ("ssh", "`ssh host true` (default key exchange)", [*rig.ssh(), "true"]),
        ("ssh curve25519", "`ssh host true` (-o KexAlgorithms=curve25519-sha256)",
         [*rig.ssh("-o", "KexAlgorithms=curve25519-sha256"), "true"]),
        ("ssh +bashrc", "`ssh host true`, bash reading root's ~/.bashrc (no SetEnv SHLVL=1;"
         " default kex)", [*rig.ssh(host="bench-rc"), "true"]),
        ("python -c pass", "`python -c pass` (the venv's Python 3.11)", [py, "-c", "pass"]),
        # the floors: what any typer + pydantic CLI pays here before it does anything
        ("import typer", "floor: `python -c 'import typer'`", [py, "-c", "import typer"]),
        ("import pydantic", "floor: `python -c 'from pydantic import BaseModel'`",
         [py, "-c", "from pydantic import BaseModel"]),
        ("typer app", "floor: a bare typer app, one command taking `address: str` and"
         " `command: list[str]`, doing nothing (bench/startup.py app)",
         [py, str(STARTUP), "app", rig.plain_addr, "--", "true"]),
        ("typer app, fast", "floor: the same app started as rexec starts (collector off while"
         " importing, os._exit after flushing; bench/startup.py app-fast)",
         [py, str(STARTUP), "app-fast", rig.plain_addr, "--", "true"]),
        ("rexec --version", "`rexec --version` (rexec's CLI imported, typer run; no pydantic)",
         [str(BIN / "rexec"), "--version"]),
    ]
    contenders: list[tuple[Series, Batch]] = []
    for short, name, argv in argvs:
        series = Series(name, short)

        def batch(k: int, argv: list[str] = argv, series: Series = series) -> list[float]:
            times = []
            for _ in range(k):
                cpu_before = children_cpu()
                elapsed = timed_process(argv, rig.env, timeout=60)[0]
                series.add_extra("cpu", children_cpu() - cpu_before)
                times.append(elapsed)
            return times

        contenders.append((series, batch))
    contenders.append(staged_contender(rig))
    contenders.append(importtime_contender(rig))
    measure_rounds(contenders, plan.fresh_rounds, 1, warmup=2)
    return [s for s, _ in contenders]


def staged_contender(rig: Rig) -> tuple[Series, Batch]:
    """`rexec run ADDRESS -- true` through bench/startup.py's stamping driver: per stage, its
    wall time (``wall:KEY``), CPU (``cpu:KEY``) and pydantic schema-build time (``schema:KEY``),
    and ``wall:exit``/``cpu:exit`` from the last stamp to the parent's wait returning."""
    series = Series("`rexec run ADDRESS -- true`, stamped stage by stage (bench/startup.py"
                    " stages)", STAGED)
    argv = [sys.executable, str(STARTUP), "stages", rig.plain_addr, "--", "true"]

    def batch(k: int) -> list[float]:
        times = []
        for _ in range(k):
            cpu_before = children_cpu()
            started = time.perf_counter()  # the same clock as the driver's stamps
            out = timed_process(argv, rig.env, timeout=60, capture=True)[2]
            ended = time.perf_counter()
            cpu = children_cpu() - cpu_before
            figures = json.loads(out.decode().strip().splitlines()[-1])
            if figures["status"] != 0:
                raise RuntimeError(f"the staged run exited {figures['status']}")
            sample: dict[str, float] = {}
            last_wall, last_cpu, last_schema = started, 0.0, 0.0
            for key, wall, stage_cpu, schema in figures["stamps"]:
                sample[f"wall:{key}"] = wall - last_wall
                sample[f"cpu:{key}"] = stage_cpu - last_cpu
                if figures["schema_hooked"]:
                    sample[f"schema:{key}"] = schema - last_schema
                last_wall, last_cpu, last_schema = wall, stage_cpu, schema
            sample["wall:exit"] = ended - last_wall
            sample["cpu:exit"] = max(0.0, cpu - last_cpu)  # wait4's CPU vs the process clock
            sample["cpu"] = cpu
            for key, value in sample.items():  # only whole samples: the stages stay aligned
                series.add_extra(key, value)
            times.append(ended - started)
        return times

    return series, batch


def import_self_times(stderr: str) -> dict[str, float]:
    """Seconds of ``-X importtime`` self time per IMPORT_GROUPS group (and OTHER_IMPORTS)."""
    groups = dict.fromkeys([g for g, _ in IMPORT_GROUPS] + [OTHER_IMPORTS], 0.0)
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if not m:
            continue
        top = m.group(2).split(".")[0]
        group = next((g for g, names in IMPORT_GROUPS if top in names), OTHER_IMPORTS)
        groups[group] += int(m.group(1)) / 1e6
    return groups


def importtime_contender(rig: Rig) -> tuple[Series, Batch]:
    """`python -X importtime` running the rexec console script: self times per package."""
    series = Series("`python -X importtime .venv/bin/rexec run ADDRESS -- true`", IMPORTTIME)
    argv = [sys.executable, "-X", "importtime", str(BIN / "rexec"), "run", rig.plain_addr,
            "--", "true"]

    def batch(k: int) -> list[float]:
        times = []
        for _ in range(k):
            started = time.perf_counter()
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=rig.env, timeout=60,
                                  check=False, text=True, errors="replace")
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"exited {done.returncode}: {done.stderr.strip()[-300:]}")
            groups = import_self_times(done.stderr)
            if not any(groups.values()):
                raise RuntimeError("no `import time:` lines on stderr")
            for group, seconds in groups.items():
                series.add_extra(group, seconds)
            series.add_extra("total", sum(groups.values()))
            times.append(elapsed)
        return times

    return series, batch


# ---------------------------------------------------------------------------------------------
# row 3: streaming


@dataclass
class StreamRow:
    series: list[Series]
    server_rss: dict[str, tuple[int, int, int]]  # name -> (KiB before, peak during, after)
    server_hwm: dict[str, tuple[int, int]]  # name -> VmHWM KiB before and after the row
    cpu_notes: list[str] = field(default_factory=list)  # samples whose CPU was not counted


REAP_TIMEOUT = 10.0  # how long a server may take to reap a finished connection's processes


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (and their reaped descendants)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stream_row(rig: Rig, plan: Plan) -> StreamRow:  # noqa: PLR0915
    size = plan.size
    say(f"[3] streaming `head -c {size} /dev/zero`, discarded")
    command = f"head -c {size} /dev/zero"
    rexec_cli = [str(BIN / "rexec"), "run", "-n"]
    assert rig.plain is not None and rig.tls is not None and rig.sshd is not None
    servers = {"plain": rig.plain.pid, "tls": rig.tls.pid}
    # the server side of each contender, for the CPU column: its CPU is counted once it has
    # reaped every process of the connection; the rexec servers keep their guardian (the one
    # child each has between commands), sshd -D keeps no child between connections
    server_pids = {**servers, "sshd": rig.sshd.pid}
    resident = {k: child_pids(pid) for k, pid in servers.items()}
    resident["sshd"] = set()
    helper = [sys.executable, str(ROOT / "bench" / "stream_client.py")]
    floor = [sys.executable, str(ROOT / "bench" / "relay_floor.py")]
    # short, name, argv, server side, reports JSON (a Python helper)
    argvs: list[tuple[str, str, list[str], str | None, bool]] = [
        ("local pipe", "local pipe: `head -c N /dev/zero | cat >/dev/null`",
         ["sh", "-c", f"{command} | cat"], None, False),
        ("floor relay", "floor: protocol-free Python relay over loopback TCP, read + sendall"
         " (bench/relay_floor.py copy)", [*floor, "copy", str(size)], None, True),
        ("floor splice", "floor: the same relay with os.splice from the pipe into the socket"
         " (bench/relay_floor.py splice)", [*floor, "splice", str(size)], None, True),
        ("floor TCP", "floor: loopback TCP alone, no command and no pipe, Python sendall +"
         " recv_into (bench/relay_floor.py tcp)", [*floor, "tcp", str(size)], None, True),
        ("rexec CLI plaintext", "rexec CLI, plaintext: `rexec run -n ADDR -- 'head ...'"
         " >/dev/null`", [*rexec_cli, rig.plain_addr, "--", command], "plain", False),
        ("rexec CLI to a pipe", "rexec CLI into a pipe, plaintext: `rexec run -n ADDR --"
         " 'head ...' | cat >/dev/null`",
         ["sh", "-c", f"{shlex.quote(str(BIN / 'rexec'))} run -n {rig.plain_addr} --"
          f" {shlex.quote(command)} | cat"], "plain", False),
        ("rexec CLI TLS", "rexec CLI, TLS: `rexec run -n --tls-ca CA ADDR -- 'head ...'"
         " >/dev/null`",
         [*rexec_cli, "--tls-ca", str(rig.ca_pem), rig.tls_addr, "--", command], "tls", False),
        ("ssh", f"ssh, default cipher ({rig.facts.get('ssh cipher', '?')}):"
         " `ssh -n host 'head ...' >/dev/null`", [*rig.ssh("-n"), command], "sshd", False),
        ("ssh aes128-gcm", "ssh, aes128-gcm: `ssh -n -c aes128-gcm@openssh.com host 'head ...'"
         " >/dev/null`", [*rig.ssh("-n", "-c", "aes128-gcm@openssh.com"), command], "sshd",
         False),
        ("rexec API plaintext", "rexec Python API, plaintext: rexec.BlockingClient in a process"
         " of its own (bench/stream_client.py)",
         [*helper, "rexec", rig.plain_addr, "-", str(size)], "plain", True),
        ("rexec API TLS", "rexec Python API, TLS: rexec.BlockingClient in a process of its own"
         " (bench/stream_client.py)",
         [*helper, "rexec", rig.tls_addr, str(rig.ca_pem), str(size)], "tls", True),
        ("asyncssh", "asyncssh: in a process of its own (bench/stream_client.py)",
         [*helper, "asyncssh", "127.0.0.1", str(rig.ssh_port), "root", str(rig.ssh_key),
          str(rig.known_hosts), str(size)], "sshd", True),
    ]
    hwm_before = {k: proc_status(pid, "VmHWM") for k, pid in servers.items()}
    peaks: dict[str, list[tuple[int, int, int]]] = {"plain": [], "tls": []}
    cpu_notes: list[str] = []

    def server_cpu(side: str | None, label: str) -> float:
        """The server side's CPU seconds, once it has reaped the connection's processes."""
        if side is None:
            return 0.0
        pid = server_pids[side]
        if not wait_until(lambda: child_pids(pid) <= resident[side], REAP_TIMEOUT, 0.01):
            cpu_notes.append(f"{label}: {side} had not reaped the connection's processes"
                             f" {REAP_TIMEOUT:g} s after the client ended")
            return math.nan
        return proc_cpu(pid)

    contenders = []
    for short, name, argv, server, in_python in argvs:
        series = Series(name, short)
        # check once that every byte arrives (the Python helpers check their own count)
        if not in_python:
            try:
                got = count_output(argv, rig.env)
                if got != size:
                    series.fail(f"check: {got} bytes arrived of {size}")
            except Exception as exc:
                series.fail(f"check: {type(exc).__name__}: {exc}")

        def batch(k: int, argv: list[str] = argv, server: str | None = server,
                  series: Series = series, in_python: bool = in_python) -> list[float]:
            times = []
            for _ in range(k):
                pid = servers.get(server or "")
                before = proc_status(pid, "VmRSS") if pid else 0
                server_before = server_cpu(server, series.label)
                client_before = children_cpu()
                with Sampler(pid or 0) if pid else contextlib.nullcontext() as sampler:
                    elapsed, rss, out = timed_process(argv, rig.env, hwm=True,
                                                      capture=in_python)
                client = children_cpu() - client_before  # the process, and what it reaped
                server_side = server_cpu(server, series.label) - server_before
                has_server = server is not None
                if pid and isinstance(sampler, Sampler):
                    after = proc_status(pid, "VmRSS")
                    peaks[str(server)].append(
                        (before, max([before, after, *sampler.samples]), after))
                if in_python:  # its own figures, and its own check of the byte count
                    figures = json.loads(out)
                    if figures["bytes"] != size or figures["exit_status"] != 0:
                        raise RuntimeError(f"{figures['bytes']} bytes arrived of {size}, exit"
                                           f" status {figures['exit_status']}")
                    series.add_extra("connect", figures["connect"])
                    series.add_extra("stream", figures["stream"])
                    if "cpu_server" in figures:  # a floor: its server is its own child, and
                        server_side = figures["cpu_server"]  # counted in `client` already
                        client -= server_side
                        has_server = True
                if not math.isnan(server_side):
                    series.add_extra("cpu", client + server_side)
                    if has_server:
                        series.add_extra("cpu_server", server_side)
                times.append(elapsed)
                series.rss_kib.append(rss)
            return times

        contenders.append((series, batch))
    measure_rounds(contenders, plan.stream_rounds, 1, warmup=1)
    hwm_after = {k: proc_status(pid, "VmHWM") for k, pid in servers.items()}
    server_rss = {}
    for k, values in peaks.items():
        if values:
            server_rss[k] = (min(v[0] for v in values), max(v[1] for v in values),
                             max(v[2] for v in values))
    return StreamRow([s for s, _ in contenders], server_rss,
                     {k: (hwm_before[k], hwm_after[k]) for k in servers}, cpu_notes)


# ---------------------------------------------------------------------------------------------
# row 4: idle connections


@dataclass
class IdleRound:
    rss_before: int  # KiB
    rss_held: int
    rss_after: int
    fds_before: int
    fds_held: int
    open_seconds: float
    connected: int
    errors: list[str]


@dataclass
class SshdIdle:
    connected: int
    processes: int
    pss: int  # KiB, summed over sshd's processes for the connections
    rss: int
    open_seconds: float
    errors: list[str]


async def open_many(n: int, connect: Callable[[], Awaitable[Any]], errors: list[str],
                    width: int = 100) -> list[Any]:
    """Open n connections, at most ``width`` handshakes at a time; the ones that opened."""
    gate = asyncio.Semaphore(width)
    opened: list[Any] = []

    async def one() -> None:
        async with gate:
            try:
                opened.append(await connect())
            except Exception as exc:  # counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")

    async with asyncio.timeout(300):
        await asyncio.gather(*(one() for _ in range(n)))
    return opened


def descendants(pid: int) -> list[int]:
    """The PIDs of every process below ``pid``."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(stat[1])
    found, frontier = [], {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier}
        found.extend(frontier)
    return found


def smaps_rollup(pid: int, name: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    return 0


def idle_row(rig: Rig, plan: Plan, runner: asyncio.Runner
             ) -> tuple[list[IdleRound], SshdIdle | None]:
    n = plan.idle_connections
    say(f"[4] the server holding {n} idle authenticated connections")
    assert rig.plain is not None
    pid = rig.plain.pid
    rounds = []
    for r in range(plan.idle_rounds):
        time.sleep(1.0)
        fds_before, rss_before = fd_count(pid), proc_status(pid, "VmRSS")
        errors: list[str] = []
        clients: list[rexec.Client] = []

        async def connect() -> rexec.Client:
            c = rig.rexec_client()
            await c.connect()
            return c

        started = time.perf_counter()
        try:
            clients = runner.run(open_many(n, connect, errors))
            opened = time.perf_counter() - started
            # all authenticated (connect() returns once the server said so); let it settle
            time.sleep(2.0)
            held, fds_held = proc_status(pid, "VmRSS"), fd_count(pid)
            # they still work: one command on the first and the last
            for c in clients[:1] + clients[-1:]:
                res = runner.run(c.run("true"))
                if res.exit_code != 0:
                    errors.append(f"true after the wait: {res!r}")
        finally:
            runner.run(close_all([c.close() for c in clients]))
        wait_until(lambda fds=fds_before: fd_count(pid) <= fds + 5, 20, 0.2)
        time.sleep(1.0)
        rounds.append(IdleRound(rss_before, held, proc_status(pid, "VmRSS"), fds_before,
                                fds_held, opened, len(clients), errors))
        say(f"    rexec round {r + 1}: {len(clients)} connected in {opened:.2f} s; server RSS"
            f" {rss_before / 1024:.1f} -> {held / 1024:.1f} MiB, fds {fds_before} -> {fds_held}"
            + (f"; {len(errors)} errors: {errors[:2]}" if errors else ""))
    return rounds, idle_sshd(rig, plan.sshd_idle_connections, runner)


async def close_all(closing: list[Awaitable[Any]]) -> None:
    async with asyncio.timeout(120):
        await asyncio.gather(*closing, return_exceptions=True)


def idle_sshd(rig: Rig, n: int, runner: asyncio.Runner) -> SshdIdle | None:
    """The peer's figure: sshd's processes for n idle asyncssh connections (PSS summed)."""
    assert rig.sshd is not None
    master = rig.sshd.pid
    if not wait_until(lambda: not descendants(master), 20, 0.2):
        say("    sshd still has connections from earlier rows: its idle figure is skipped")
        return None
    errors: list[str] = []
    conns: list[asyncssh.SSHClientConnection] = []
    started = time.perf_counter()
    try:
        conns = runner.run(open_many(n, rig.asyncssh_connect, errors))
        opened = time.perf_counter() - started
        time.sleep(2.0)
        pids = descendants(master)
        pss = sum(smaps_rollup(p, "Pss") for p in pids)
        rss = sum(smaps_rollup(p, "Rss") for p in pids)
    finally:
        for c in conns:
            c.close()
        runner.run(close_all([c.wait_closed() for c in conns]))
    wait_until(lambda: not descendants(master), 30, 0.2)
    say(f"    sshd: {len(conns)} asyncssh connections in {opened:.2f} s: {len(pids)} processes,"
        f" PSS {pss / 1024:.1f} MiB" + (f"; {len(errors)} errors: {errors[:2]}" if errors else ""))
    return SshdIdle(len(conns), len(pids), pss, rss, opened, errors)


# ---------------------------------------------------------------------------------------------
# rows 5 and 6: many connections from one asyncio process


async def fan_rexec(rig: Rig, n: int, expected: bytes) -> list[str]:
    async def one() -> str | None:
        async with rig.rexec_client() as c:
            r = await c.run("hostname")
        return None if r.exit_code == 0 and r.stdout == expected else f"answered {r!r}"
    return await gathered(n, one)


async def fan_asyncssh(rig: Rig, n: int, expected: bytes) -> list[str]:
    async def one() -> str | None:
        async with await rig.asyncssh_connect() as conn:
            r = await conn.run("hostname", encoding=None)
        return (None if r.exit_status == 0 and r.stdout == expected
                else f"exit {r.exit_status} {r.stdout!r} {r.stderr!r}")
    return await gathered(n, one)


async def gathered(n: int, one: Callable[[], Awaitable[str | None]]) -> list[str]:
    """Run ``one`` n times at once; the errors (bounded by a deadline)."""
    async with asyncio.timeout(300):
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    errors = []
    for res in results:
        if isinstance(res, BaseException):
            errors.append(f"{type(res).__name__}: {res}")
        elif res is not None:
            errors.append(res)
    return errors


def listen_overflows() -> int:
    """The machine's count of connections dropped at a full listen queue (TcpExt)."""
    with contextlib.suppress(OSError, ValueError):
        lines = Path("/proc/net/netstat").read_text().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            if names.startswith("TcpExt:"):
                return int(dict(zip(names.split(), values.split(), strict=True))
                           ["ListenOverflows"])
    return 0


def settle(rig: Rig) -> None:
    """Let the previous contender's connections wind down: sshd's per-connection processes
    gone (bounded), then a short pause."""
    if rig.sshd is not None:
        master = rig.sshd.pid
        wait_until(lambda: not descendants(master), 15, 0.1)
    time.sleep(0.3)


def fanout_row(rig: Rig, plan: Plan, runner: asyncio.Runner) -> list[Series]:
    say(f"[5] fan-out: {' and '.join(map(str, plan.fanout))} connections each running"
        " `hostname`")
    expected = (socket.gethostname() + "\n").encode()
    contenders: list[tuple[Series, Batch]] = []
    for n in plan.fanout:
        for name, fan in (("rexec.Client", fan_rexec), ("asyncssh", fan_asyncssh)):
            series = Series(f"{name}, {n} connections")

            def batch(k: int, fan: Any = fan, n: int = n, series: Series = series
                      ) -> list[float]:
                times = []
                for _ in range(k):
                    settle(rig)
                    overflows = listen_overflows()
                    started = time.perf_counter()
                    errors = runner.run(fan(rig, n, expected))
                    elapsed = time.perf_counter() - started
                    series.add_extra("overflows", listen_overflows() - overflows)
                    if errors:
                        raise RuntimeError(f"{len(errors)} of {n} failed, e.g. {errors[0]}")
                    times.append(elapsed)
                return times

            contenders.append((series, batch))
    measure_rounds(contenders, plan.fanout_rounds, 1, warmup=1)
    return [s for s, _ in contenders]


async def cps_rexec(rig: Rig, clients: int, sequential: int) -> tuple[float, float]:
    conns = [rig.rexec_client() for _ in range(clients)]
    started = time.perf_counter()
    try:
        async with asyncio.timeout(300):
            await asyncio.gather(*(c.connect() for c in conns))
            connected = time.perf_counter()

            async def loop(c: rexec.Client) -> None:
                for _ in range(sequential):
                    r = await c.run("true")
                    if r.exit_code != 0:
                        raise RuntimeError(f"rexec: {r!r}")

            await asyncio.gather(*(loop(c) for c in conns))
            done = time.perf_counter()
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return done - connected, done - started


async def cps_asyncssh(rig: Rig, clients: int, sequential: int) -> tuple[float, float]:
    conns: list[asyncssh.SSHClientConnection] = []
    started = time.perf_counter()
    try:
        async with asyncio.timeout(300):
            conns.extend(await asyncio.gather(*(rig.asyncssh_connect()
                                                for _ in range(clients))))
            connected = time.perf_counter()

            async def loop(c: asyncssh.SSHClientConnection) -> None:
                for _ in range(sequential):
                    r = await c.run("true")
                    if r.exit_status != 0:
                        raise RuntimeError(f"asyncssh: exit {r.exit_status}")

            await asyncio.gather(*(loop(c) for c in conns))
            done = time.perf_counter()
    finally:
        for c in conns:
            c.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    return done - connected, done - started


def cps_row(rig: Rig, plan: Plan, runner: asyncio.Runner) -> list[Series]:
    say(f"[6] {plan.clients} clients x {plan.sequential} sequential `true`")
    contenders: list[tuple[Series, Batch]] = []
    for name, fn in (("rexec.Client", cps_rexec), ("asyncssh", cps_asyncssh)):
        series = Series(name)

        def batch(k: int, fn: Any = fn, series: Series = series) -> list[float]:
            times = []
            for _ in range(k):
                settle(rig)
                commands, total = runner.run(fn(rig, plan.clients, plan.sequential))
                times.append(commands)
                series.add_extra("with_connect", total)
            return times

        contenders.append((series, batch))
    measure_rounds(contenders, plan.cps_rounds, 1, warmup=1)
    return [s for s, _ in contenders]


# ---------------------------------------------------------------------------------------------
# row 7: a fleet fan-out, every host its own loopback address

FLEET_CLIENT = Path(__file__).resolve().parent / "fleet_client.py"
FLEET_SERVER = Path(__file__).resolve().parent / "fleet_server.py"
SSHD_LISTEN_MAX = 16  # OpenSSH listens on at most 16 sockets per sshd (MAX_LISTEN_SOCKS)
PSSH_DEFAULT_POOL = 100  # parallel-ssh's own default concurrency


def fleet_addresses(n: int) -> list[str]:
    """n distinct loopback addresses, 127.0.1.1 up (all of 127/8 is this machine's)."""
    return [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]


@dataclass
class Fleet:
    """The fleet row's servers: rexec and sshd on the same addresses, one port each."""

    addresses: list[str]
    rexec_port: int = 0
    ssh_port: int = 0
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sshds: list[subprocess.Popen[bytes]] = field(default_factory=list)
    known_hosts: Path = Path()
    how: str = ""


def start_fleet_servers(rig: Rig, fleet: Fleet, stack: contextlib.ExitStack,
                        processes: int, config: Path | None = None) -> None:
    """rexec on every fleet address: ``processes`` servers, address i served by server
    i % processes. Each is `rexec-server --host A --host B ...` where rexec-server takes
    several --host; otherwise bench/fleet_server.py, which serves many addresses with rexec's
    own Server in one process."""
    fleet.rexec_port = free_port()
    how = ""
    for k in range(processes):
        mine = fleet.addresses[k::processes]
        proc, how = start_fleet_server(rig, k, mine, fleet.rexec_port, config)
        stack.callback(stop_process, proc, f"fleet rexec server {k}")
        fleet.servers.append(proc)
    fleet.how = (f"{processes} rexec server processes ({how}), one port,"
                 f" {len(fleet.addresses)} addresses")


def start_fleet_server(rig: Rig, k: int, addresses: list[str], port: int,
                       config: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """One fleet server listening on ``addresses``: rexec-server itself when it takes several
    --host (it prints a "listening on" line for each), else bench/fleet_server.py."""
    common = ["--port", str(port), "--token-file", str(rig.tmp / "home" / "token"),
              "--config", str(config or rig.tmp / "server.toml")]
    ways = [("`rexec-server --host A --host B ...`",
             [str(BIN / "rexec-server"), *common,
              *(arg for a in addresses for arg in ("--host", a))], len(addresses)),
            ("bench/fleet_server.py: rexec's Server on each of its addresses",
             [sys.executable, str(FLEET_SERVER), *common, *addresses], 1)]
    for how, argv, lines in ways:
        out = rig.tmp / f"fleet-{k}.out"
        with out.open("wb") as stdout, (rig.tmp / f"fleet-{k}.log").open("wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=stderr, env=rig.env)

        def listening(out: Path = out, proc: subprocess.Popen[bytes] = proc) -> bool:
            return "listening on" in out.read_text() or proc.poll() is not None

        if wait_until(listening, 60) and proc.poll() is None:
            time.sleep(0.5)  # every line is printed at once, once all sockets are bound
            if out.read_text().count("listening on") >= lines:
                return proc, how
        stop_process(proc, f"fleet rexec server {k}")  # one --host only: the next way
    log = (rig.tmp / f"fleet-{k}.log").read_text(errors="replace")[-2000:]
    raise SystemExit(f"fleet rexec server {k} did not start:\n{log}")


def start_fleet_sshds(rig: Rig, fleet: Fleet, stack: contextlib.ExitStack) -> None:
    """sshd on every fleet address, SSHD_LISTEN_MAX addresses per sshd, with the rig's host
    and client keys; a known_hosts line per address (asyncssh checks the host key)."""
    d = rig.tmp / "ssh"
    fleet.ssh_port = free_port()
    while fleet.ssh_port == fleet.rexec_port:
        fleet.ssh_port = free_port()
    chunks = [fleet.addresses[i:i + SSHD_LISTEN_MAX]
              for i in range(0, len(fleet.addresses), SSHD_LISTEN_MAX)]
    for k, chunk in enumerate(chunks):
        config = d / f"fleet_sshd_{k}"
        listen = "".join(f"ListenAddress {a}:{fleet.ssh_port}\n" for a in chunk)
        config.write_text(f"""# fleet sshd {k} of bench/suite.py
{listen}HostKey {d / "host_key"}
PidFile {d / f"fleet_sshd_{k}.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups {SSHD_MAX_STARTUPS}
MaxSessions 10
UseDNS no
PrintMotd no
PrintLastLog no
SetEnv SHLVL=1
Subsystem sftp {SFTP_SERVER if Path(SFTP_SERVER).exists() else "internal-sftp"}
""")
        with (d / f"fleet_sshd_{k}.log").open("wb") as log:
            proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        stack.callback(stop_process, proc, f"fleet sshd {k}")
        fleet.sshds.append(proc)

        def accepting(host: str = chunk[-1], proc: subprocess.Popen[bytes] = proc) -> bool:
            try:
                with socket.create_connection((host, fleet.ssh_port), timeout=1):
                    return True
            except OSError:
                return proc.poll() is not None

        if not wait_until(accepting, 30) or proc.poll() is not None:
            text = (d / f"fleet_sshd_{k}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"fleet sshd {k} did not start:\n{text}")
    key_type, key = (d / "host_key.pub").read_text().split()[:2]
    fleet.known_hosts = d / "fleet_known_hosts"
    fleet.known_hosts.write_text("".join(f"[{a}]:{fleet.ssh_port} {key_type} {key}\n"
                                         for a in fleet.addresses))


def setup_fleet(rig: Rig, plan: Plan, stack: contextlib.ExitStack) -> Fleet:
    fleet = Fleet(fleet_addresses(max(plan.fleet)))
    start_fleet_servers(rig, fleet, stack, plan.fleet_servers)
    start_fleet_sshds(rig, fleet, stack)
    return fleet


def pssh_available() -> bool:
    with contextlib.suppress(ImportError):
        import pssh.clients  # noqa: F401

        return True
    return False


def fleet_contenders(rig: Rig, fleet: Fleet, n: int) -> list[tuple[str, list[str]]]:
    """(name, fleet_client.py arguments after the hosts file) for a fleet of n hosts.

    rexec.Group and the `rexec run PATTERN` CLI are being written on other branches: their
    contenders join the row as soon as `rexec.Group` exists (the CLI's spot is marked below)."""
    token = str(rig.tmp / "home" / "token")
    d = rig.tmp / "ssh"
    rexec_args = [str(fleet.rexec_port), token]
    contenders = [("rexec.Client + asyncio.gather", ["rexec", *rexec_args])]
    if hasattr(rexec, "Group"):
        contenders.append((f"rexec.Group.run, forks {n}", ["rexec-group", *rexec_args]))
        # the CLI, whole process (start-up included): prefixed lines against JSON Lines
        contenders.append((f"rexec run PATTERN (CLI, lines), forks {n}",
                           ["cli", *rexec_args, "lines"]))
        contenders.append((f"rexec run PATTERN --json (CLI), forks {n}",
                           ["cli", *rexec_args, "json"]))
    contenders.append(("asyncssh + asyncio.gather",
                       ["asyncssh", str(fleet.ssh_port), str(d / "client_key"),
                        str(fleet.known_hosts)]))
    if pssh_available():
        contenders.append((f"parallel-ssh, pool {n}",
                           ["pssh", str(fleet.ssh_port), str(d / "client_key"), str(n)]))
        if n > PSSH_DEFAULT_POOL:
            contenders.append((f"parallel-ssh, pool {PSSH_DEFAULT_POOL} (its default)",
                               ["pssh", str(fleet.ssh_port), str(d / "client_key"),
                                str(PSSH_DEFAULT_POOL)]))
    return contenders


def settle_fleet(rig: Rig, fleet: Fleet) -> None:
    """Let the previous contender's connections wind down (sshd's forks gone, bounded)."""
    for proc in fleet.sshds:
        wait_until(lambda pid=proc.pid: not descendants(pid), 15, 0.1)
    settle(rig)


def fleet_row(rig: Rig, plan: Plan, fleet: Fleet) -> list[Series]:
    say(f"[7] fleet fan-out: {', '.join(map(str, plan.fleet))} hosts (loopback addresses)"
        " each running `hostname`, one cold client process per run")
    contenders: list[tuple[Series, Batch]] = []
    for n in plan.fleet:
        hosts = rig.tmp / f"fleet-hosts-{n}"
        hosts.write_text("\n".join(fleet.addresses[:n]) + "\n")
        for name, args in fleet_contenders(rig, fleet, n):
            series = Series(f"{name}, {n} hosts", short=f"{name.split(' ')[0]} {n}")
            argv = [sys.executable, str(FLEET_CLIENT), args[0], str(hosts), *args[1:]]

            def batch(k: int, argv: list[str] = argv, n: int = n, series: Series = series
                      ) -> list[float]:
                times = []
                for _ in range(k):
                    settle_fleet(rig, fleet)
                    overflows = listen_overflows()
                    whole, _, out = timed_process(argv, rig.env, capture=True)
                    series.add_extra("overflows", listen_overflows() - overflows)
                    got = json.loads(out.decode().strip().splitlines()[-1])
                    if got["ok"] != n:
                        raise RuntimeError(f"{n - got['ok']} of {n} failed, e.g."
                                           f" {got['errors'][:1]}")
                    times.append(got["seconds"])
                    series.rss_kib.append(got["peak_rss_kib"])
                    series.add_extra("process", whole)
                return times

            contenders.append((series, batch))
    # Every run is a cold client; the servers are warmed once (their first connections'
    # imports and allocations), by rexec's widest run, not counted.
    warm = [c for c in contenders if c[0].name.startswith("rexec.Client")][-1]
    warm[1](1)
    warm[0].values.clear()
    warm[0].rss_kib.clear()
    warm[0].extra.clear()
    measure_rounds(contenders, plan.fleet_rounds, 1, warmup=0)
    return [s for s, _ in contenders]


def fleet_section(res: Results, fleet_how: str, w: Callable[[str], None],
                  target: Callable[..., None], targets: list[tuple[str, str, str]]) -> None:
    """Table 7 and its targets (in the issue's table, and repeated in the section, which
    `--only fleet` rewrites alone)."""
    fl, plan = res.fleet, res.plan
    w(FLEET_START)
    w("## 7. Fleet fan-out: every host its own loopback address")
    w("")
    w(f"{plan.fleet_rounds} rounds; N hosts, each a distinct loopback address (127.0.1.1 up),"
      " asked to run `hostname` (output checked) at once from one cold client process"
      " (bench/fleet_client.py, started afresh for every run): rexec.Client and asyncssh open"
      " one connection per host with `asyncio.gather`, rexec.Group.run fans out with forks N,"
      " parallel-ssh runs its ParallelSSHClient. The time is from the first connect to the"
      " last result (the client's interpreter start-up and imports outside it; the whole"
      " process beside it); the two CLI rows run `rexec run -q -n -f N --inventory INV"
      " 'h[1-N]' -- hostname` (its prefixed lines, or --json) and are timed as the CLI's"
      " whole process, start-up included, their RSS the CLI's;"
      f" peak RSS is the client process's VmHWM. Servers: {fleet_how}; sshd: one per"
      f" {SSHD_LISTEN_MAX} addresses (MaxStartups {SSHD_MAX_STARTUPS}, SetEnv SHLVL=1).")
    w("")
    w("| contender | median s | p95 s | n | vs rexec | whole process, median s |"
      " client peak RSS, median MiB | listen-queue overflows (max) |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in plan.fleet:
        mine = [s for s in fl if s.name.endswith(f", {n} hosts")]
        base = find(mine, "rexec.Client").median
        for s in mine:
            rss = median([float(v) for v in s.rss_kib]) / 1024
            w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} | {len(s.values)} |"
              f" {fx(ratio(s.median, base))} | {fnum(median(s.extra.get('process', [])), 3)}"
              f" | {fnum(rss, 1)} | {fnum(max(s.extra.get('overflows', []), default=math.nan), 0)}"
              " |")
    w("")
    if not pssh_available():
        w("parallel-ssh is not installed (`pip install parallel-ssh`): its rows are skipped.")
    else:
        w("parallel-ssh (ssh2-python) checks no host key here; asyncssh checks each host's.")
    w("")
    for line in errors_note(fl):
        w(line)
    w("")
    r500 = find(fl, "rexec.Client + asyncio.gather, 500 ").median
    r1000 = find(fl, "rexec.Client + asyncio.gather, 1000 ")
    a500 = find(fl, "asyncssh + asyncio.gather, 500 ").median
    target("fleet: 500 hosts' `hostname` in under 1 s (cold client)", r500, 1.0,
           f"{fnum(r500, 3)} s")
    target("fleet: 1,000 hosts in under 2 s (cold client)", r1000.median, 2.0,
           f"{fnum(r1000.median, 3)} s")
    target("fleet: >= 3x faster than asyncssh at 500 hosts", ratio(a500, r500), 3.0,
           f"{fx(ratio(a500, r500))} ({fnum(r500, 3)} s vs {fnum(a500, 3)} s)", lower=False)
    rss = median([float(v) for v in r1000.rss_kib]) / 1024
    target("fleet: client peak RSS under 100 MB at 1,000 hosts", rss * 1.048576, 100.0,
           f"{fnum(rss * 1.048576, 1)} MB ({fnum(rss, 1)} MiB)")
    shown = 4
    lines = [s for s in fl if s.name.startswith("rexec run PATTERN (CLI, lines)")]
    if lines:  # the CLI's rows: line output against JSON Lines, at the widest fleet
        widest = lines[-1].name.rsplit(", ", 1)[-1]
        cli_lines = find(fl, f"rexec run PATTERN (CLI, lines), forks {widest.split()[0]}").median
        cli_json = find(fl, f"rexec run PATTERN --json (CLI), forks {widest.split()[0]}").median
        target(f"fleet: line output costs no more than 10% over --json ({widest}, the CLI's"
               " whole process)", ratio(cli_lines, cli_json), 1.10,
               f"{fx(ratio(cli_lines, cli_json))} ({fnum(cli_lines, 3)} s vs"
               f" {fnum(cli_json, 3)} s)")
        shown = 5
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")
    for name, text, verdict in targets[-shown:]:
        w(f"| {name} | {text} | {verdict} |")
    w("")
    w(FLEET_END)


FLEET_START = "<!-- fleet row: start (bench/suite.py --only fleet rewrites this part) -->"
FLEET_END = "<!-- fleet row: end -->"


def splice(existing: str, text: str, start: str, end: str) -> str:
    """The section of ``text`` between the markers ``start`` and ``end`` put in place of the
    one in ``existing`` (or before the targets table when it has none), so that a row run
    alone (`--only fleet`, `--only pty`) keeps the other tables."""
    section = text[text.index(start):text.index(end) + len(end)]
    if start in existing and end in existing:
        return (existing[:existing.index(start)] + section
                + existing[existing.index(end) + len(end):])
    anchor = "## The issue's targets"
    at = existing.index(anchor) if anchor in existing else len(existing)
    return existing[:at] + section + "\n\n" + existing[at:]


# ---------------------------------------------------------------------------------------------
# row 8: an interactive session on a PTY

PTY_CLIENT = Path(__file__).resolve().parent / "pty_client.py"
PTY_RELAY_C = Path(__file__).resolve().parent / "pty_relay.c"
PTY_RELAY_PY = Path(__file__).resolve().parent / "pty_relay.py"
PTY_LINE = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 3)[:99] + b"\n"  # 100 bytes, ASCII


@dataclass
class PtyRow:
    echo: list[Series]
    cat: list[Series]
    size: int  # the file's bytes (what MB/s counts)
    lines: int  # the PTY turns each of its newlines into CR LF: size + lines arrive


def pty_file(rig: Rig, size: int) -> tuple[Path, int]:
    """A text file of ``size`` bytes (lines of 99 characters and a newline, the last one
    shorter when size is not a multiple of 100), made once; its path and newline count."""
    path = rig.tmp / f"pty-{size}.txt"
    lines, rest = divmod(size, len(PTY_LINE))
    if not path.exists():
        block = PTY_LINE * 10_000
        with path.open("wb") as f:
            for _ in range(lines // 10_000):
                f.write(block)
            f.write(PTY_LINE * (lines % 10_000) + (PTY_LINE[:rest - 1] + b"\n" if rest else b""))
    if path.stat().st_size != size:
        raise SystemExit(f"{path} has {path.stat().st_size} bytes, not {size}")
    return path, lines + bool(rest)


def rexec_cli(rig: Rig, subcommand: str, *args: str) -> list[str]:
    """`rexec SUBCOMMAND ADDRESS --token-file FILE ARGS...` against the plaintext server."""
    return [str(BIN / "rexec"), subcommand, rig.plain_addr,
            "--token-file", str(rig.tmp / "home" / "token"), *args]


def pty_relay_binary(rig: Rig) -> Path | None:
    """bench/pty_relay.c built with the system's C compiler, or None (no compiler, or it
    failed: the row then goes without the C floor, and says so)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        say("    no C compiler: the echo row goes without the C relay floor")
        return None
    binary = rig.tmp / "pty_relay"
    done = subprocess.run([cc, "-O2", "-o", str(binary), str(PTY_RELAY_C), "-lutil"],
                          capture_output=True, check=False)
    if done.returncode != 0:
        say(f"    {cc} could not build bench/pty_relay.c: {done.stderr.decode()[-300:]}")
        return None
    return binary


def pty_echo(rig: Rig, plan: Plan) -> list[Series]:
    """Keystroke echo latency: every shell in one bench/pty_client.py process, interleaved."""
    shells = [
        ("rexec shell", "`rexec shell ADDRESS` (the login shell, bash)",
         rexec_cli(rig, "shell")),
        ("ssh -tt", "`ssh -tt host` (the login shell, bash; default cipher)", rig.ssh("-tt")),
    ]
    if (relay := pty_relay_binary(rig)) is not None:
        shells.append(("relay C", "floor: a relay with no protocol, in C (bench/pty_relay.c:"
                       " raw terminal, loopback TCP, `bash -l` on a PTY)", [str(relay), "pair"]))
    shells += [
        ("relay Python", "floor: the same relay in Python (bench/pty_relay.py)",
         [sys.executable, str(PTY_RELAY_PY), "pair"]),
        ("local bash", "local floor: `bash -l` on the driver's own PTY (no network)",
         ["bash", "-l"]),
    ]
    series = [Series(name, short) for short, name, _ in shells]
    spec = {"keys": plan.pty_keys, "rounds": plan.pty_key_rounds,
            "contenders": [{"name": short, "argv": argv} for short, _, argv in shells]}
    say(f"    echo: {plan.pty_keys} keystrokes per shell, {plan.pty_key_rounds} interleaved"
        " rounds")
    try:
        _, _, out = timed_process([sys.executable, str(PTY_CLIENT), "echo", json.dumps(spec)],
                                  rig.env, timeout=600, capture=True)
        got = json.loads(out.decode().strip().splitlines()[-1])
    except (RuntimeError, ValueError, IndexError) as exc:
        for s in series:
            s.fail(f"{type(exc).__name__}: {exc}")
        return series
    for s in series:
        s.values = got["samples"][s.label]
        s.add_extra("ready", got["ready"][s.label])
        say(f"    {s.label}: median {s.median * 1e3:.3f} ms, p95 {s.p95 * 1e3:.3f} ms")
    return series


def pty_cat(rig: Rig, plan: Plan, path: Path, lines: int) -> list[Series]:
    """`cat FILE` on a PTY through each client, one bench/pty_client.py process per run."""
    size = path.stat().st_size
    clients = [
        ("rexec run -t", "`rexec run -t ADDRESS -- cat FILE`",
         rexec_cli(rig, "run", "-t", "--", "cat", str(path))),
        ("ssh -tt", "`ssh -tt host cat FILE` (default key exchange and cipher)",
         [*rig.ssh("-tt"), "cat", str(path)]),
        ("ssh -tt curve25519", "`ssh -tt host cat FILE` (-o KexAlgorithms=curve25519-sha256)",
         [*rig.ssh("-tt", "-o", "KexAlgorithms=curve25519-sha256"), "cat", str(path)]),
        ("local cat", "local floor: `cat FILE` on the driver's PTY (no network)",
         ["cat", str(path)]),
    ]
    contenders: list[tuple[Series, Batch]] = []
    for short, name, argv in clients:
        series = Series(name, short)
        driver = [sys.executable, str(PTY_CLIENT), "cat", str(size + lines), str(lines), "--",
                  *argv]

        def batch(k: int, driver: list[str] = driver, series: Series = series) -> list[float]:
            times = []
            for _ in range(k):
                settle(rig)
                _, _, out = timed_process(driver, rig.env, capture=True)
                got = json.loads(out.decode().strip().splitlines()[-1])
                times.append(got["seconds"])
                series.add_extra("stream", got["seconds"] - got["first_byte"])
            return times

        contenders.append((series, batch))
    say(f"    cat: {size:,} bytes ({lines:,} lines) on a PTY, {plan.pty_cat_rounds} rounds")
    measure_rounds(contenders, plan.pty_cat_rounds, 1)
    return [s for s, _ in contenders]


def pty_row(rig: Rig, plan: Plan) -> PtyRow:
    say("[8] an interactive session on a PTY: keystroke echo, and `cat` of a file")
    path, lines = pty_file(rig, plan.pty_size)
    echo = pty_echo(rig, plan)
    return PtyRow(echo, pty_cat(rig, plan, path, lines), plan.pty_size, lines)


def pty_section(row: PtyRow, plan: Plan, w: Callable[[str], None],
                target: Callable[..., None], targets: list[tuple[str, str, str]]) -> None:
    """Table 8 and its targets (in the issue's table, and repeated in the section, which
    `--only pty` rewrites alone)."""
    w(PTY_START)
    w("## 8. An interactive session on a PTY")
    w("")
    w("Each client runs on a real pseudo-terminal of a driver process (bench/pty_client.py,"
      " pexpect's spawn: a new session, the PTY's slave its controlling terminal, stdin and"
      " stdout), which reads the master end as a terminal emulator does; TERM=xterm, 24x80."
      " Both clients are in raw mode and get a PTY on the remote side, over loopback; the"
      " echo sessions run root's login shell, bash (with its rc files, on both sides), and"
      " `cat` runs under `/bin/sh -c` (rexec) and `bash -c` with SHLVL=1 (ssh).")
    w("")
    w(f"**Keystroke echo.** The sessions are started and made idle first (the client has put"
      " the terminal in raw mode, then `PS1='READY> '` is typed and the prompt awaited); then"
      f" {plan.pty_key_rounds} rounds, the order rotated each round, of"
      f" {plan.pty_keys // plan.pty_key_rounds} keystrokes per shell: one printable byte is"
      " written and timed until it is echoed back (what comes back must be exactly that"
      " byte), then a DEL erases it and readline's erase sequence is awaited before the next"
      f" one; {plan.pty_keys} keystrokes per shell in all.")
    w("")
    w("| shell | median ms | p95 ms | n | vs ssh -tt | spawn to first prompt, s |")
    w("| --- | ---: | ---: | ---: | ---: | ---: |")
    ssh_echo = find_label(row.echo, "ssh -tt").median
    for s in row.echo:
        w(f"| {s.name} | {fnum(s.median * 1e3, 3)} | {fnum(s.p95 * 1e3, 3)} | {len(s.values)} |"
          f" {fx(ratio(s.median, ssh_echo))} | {fnum(median(s.extra.get('ready', [])), 2)} |")
    w("")
    relay = [s for s in row.echo if s.label == "relay C" and s.values]
    if relay:
        floor = relay[0].median
        w(f"The C relay is what any remote terminal costs here before its own work: the driver's"
          f" PTY, the client, loopback TCP, the server, the remote PTY and bash, with nothing"
          f" else (no framing, authentication or encryption). It takes {fnum(floor * 1e3, 3)} ms,"
          f" {fx(ratio(floor, ssh_echo))} of `ssh -tt`: a client at 0.5x ssh's"
          f" ({fnum(ssh_echo * 0.5e3, 3)} ms) would have to be"
          f" {fx(ratio(ssh_echo * 0.5, floor))} of this floor.")
        w("")
    mb = row.size / 1e6
    w(f"**Output on a PTY.** `cat` of a {mb:,.0f} MB text file ({row.lines:,} lines of 99"
      " characters and a newline) with the client's stdout the driver's PTY, which counts"
      " and discards what it reads until end of file: it must be exactly"
      f" {row.size + row.lines:,} bytes (the remote PTY turns each newline into CR LF; the"
      " client's raw mode adds nothing) and the client must exit 0."
      f" {plan.pty_cat_rounds} rounds after a warm-up, interleaved; the time is from spawning"
      f" the client to reaping it, start-up and handshake included; MB/s = {mb:,.0f} MB (10^6"
      " bytes, the file's size) over the median; *first byte to exit* leaves the start-up out.")
    w("")
    w("| client | median s | p95 s | n | MB/s | vs ssh -tt | first byte to exit, median s |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    ssh_cat = find_label(row.cat, "ssh -tt").median
    for s in row.cat:
        w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} | {len(s.values)} |"
          f" {fnum(ratio(mb, s.median), 1)} | {fx(ratio(s.median, ssh_cat))} |"
          f" {fnum(median(s.extra.get('stream', [])), 3)} |")
    w("")
    for line in errors_note(row.echo + row.cat):
        w(line)
    w("")
    r_echo = find_label(row.echo, "rexec shell")
    s_echo = find_label(row.echo, "ssh -tt")
    target("pty: keystroke echo, `rexec shell` median at most 0.5x `ssh -tt`'s",
           ratio(r_echo.median, s_echo.median), 0.5,
           f"{fx(ratio(r_echo.median, s_echo.median))} ({fnum(r_echo.median * 1e3, 3)} ms vs"
           f" {fnum(s_echo.median * 1e3, 3)} ms; p95 {fnum(r_echo.p95 * 1e3, 3)} vs"
           f" {fnum(s_echo.p95 * 1e3, 3)} ms)")
    r_cat = find_label(row.cat, "rexec run -t").median
    target(f"pty: `cat` of {mb:,.0f} MB on a PTY, `rexec run -t` at least as fast as `ssh -tt`",
           ratio(ssh_cat, r_cat), 1.0,
           f"{fx(ratio(ssh_cat, r_cat))} ({fnum(ratio(mb, r_cat), 1)} vs"
           f" {fnum(ratio(mb, ssh_cat), 1)} MB/s)", lower=False)
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")
    for name, text, verdict in targets[-2:]:
        w(f"| {name} | {text} | {verdict} |")
    w("")
    w(PTY_END)


PTY_START = "<!-- pty row: start (bench/suite.py --only pty rewrites this part) -->"
PTY_END = "<!-- pty row: end -->"


# ---------------------------------------------------------------------------------------------
# row 9: file transfer

TRANSFER_CLIENT = Path(__file__).resolve().parent / "transfer_client.py"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
TRANSFER_START = "<!-- transfer row: start (bench/suite.py --only transfer rewrites this part) -->"
TRANSFER_END = "<!-- transfer row: end -->"


@dataclass
class TransferRow:
    up: list[Series]
    down: list[Series]
    same: list[Series]
    size: int


def transfer_source(rig: Rig, size: int) -> Path:
    """A file of ``size`` random bytes (nothing compresses or dedups it), made once."""
    path = rig.tmp / f"xfer-{size}.bin"
    if not path.exists():
        with path.open("wb") as f:
            left = size
            while left:
                f.write(os.urandom(min(left, 16 * MIB)))
                left -= min(left, 16 * MIB)
        path.chmod(0o644)
    return path


def transfer_contenders(rig: Rig, src: Path, dst: Path, direction: str
                        ) -> list[tuple[str, str, list[str]]]:
    """(short, name, argv) for one direction: ``put`` copies src to dst over the connection,
    ``get`` copies src back into dst (the "remote" and local sides share this machine)."""
    cli = [str(BIN / "rexec"), direction, "-q", "--token-file", str(rig.tmp / "home" / "token")]
    force = ["--no-skip"] if direction == "put" else []
    cfg = str(rig.ssh_config)
    remote_first = direction == "get"
    scp_from, scp_to = (f"bench:{src}", str(dst)) if remote_first else (str(src), f"bench:{dst}")
    batch = rig.tmp / f"xfer-{direction}.batch"
    batch.write_text(f"{direction} {src} {dst}\n")
    verb = "rexec get" if remote_first else "rexec put"
    return [
        (f"{verb}", f"`{verb}{' --no-skip' if force else ''} ADDR ...` (plaintext)",
         [*cli, *force, rig.plain_addr, str(src), str(dst)]),
        (f"{verb} TLS", f"`{verb}{' --no-skip' if force else ''} --tls-ca CA ADDR ...` (TLS)",
         [*cli, *force, "--tls-ca", str(rig.ca_pem), rig.tls_addr, str(src), str(dst)]),
        ("scp", f"`scp` (default cipher, {rig.facts.get('ssh cipher', '?')})",
         ["scp", "-F", cfg, "-q", scp_from, scp_to]),
        ("scp aes128-gcm", "`scp -c aes128-gcm@openssh.com`",
         ["scp", "-F", cfg, "-q", "-c", "aes128-gcm@openssh.com", scp_from, scp_to]),
        ("scp aes128-gcm + sync", "`scp -c aes128-gcm@openssh.com` then `sync` (the file on"
         " the disk, as rexec's fsync makes it before the rename)",
         ["sh", "-c", f"scp -F {shlex.quote(cfg)} -q -c aes128-gcm@openssh.com"
                      f" {shlex.quote(scp_from)} {shlex.quote(scp_to)} && sync"]),
        ("sftp", f"`sftp -b BATCH host` ({direction} FILE DEST)",
         ["sftp", "-F", cfg, "-q", "-b", str(batch), "bench"]),
        ("asyncssh SFTP", f"asyncssh `SFTPClient.{direction}` (bench/transfer_client.py, its"
         " defaults)", [sys.executable, str(TRANSFER_CLIENT), direction, "127.0.0.1",
                        str(rig.ssh_port), "root", str(rig.ssh_key), str(rig.known_hosts),
                        str(src), str(dst)]),
    ]


def transfer_batches(rig: Rig, rows: list[tuple[str, str, list[str]]], dst: Path, size: int
                     ) -> list[tuple[Series, Batch]]:
    contenders: list[tuple[Series, Batch]] = []
    for short, name, argv in rows:
        series = Series(name, short)

        def batch(k: int, argv: list[str] = argv) -> list[float]:
            times = []
            for _ in range(k):
                settle(rig)
                with contextlib.suppress(FileNotFoundError):
                    dst.unlink()  # every contender writes a new file (no rexec skip either)
                # what the previous contender left dirty (scp does not fsync) is written out
                # now, not during the next one's run
                os.sync()
                elapsed, _, _ = timed_process(argv, rig.env)
                got = dst.stat().st_size
                if got != size:
                    raise RuntimeError(f"{dst} has {got} bytes, not {size}")
                times.append(elapsed)
            return times

        contenders.append((series, batch))
    return contenders


def transfer_row(rig: Rig, plan: Plan) -> TransferRow:
    size = plan.transfer_size
    say(f"[9] file transfer: {size:,} random bytes up and down; an unchanged re-put")
    src = transfer_source(rig, size)
    folder = rig.tmp / "xfer"
    folder.mkdir(exist_ok=True)
    up = transfer_batches(rig, transfer_contenders(rig, src, folder / "up.bin", "put"),
                          folder / "up.bin", size)
    down = transfer_batches(rig, transfer_contenders(rig, src, folder / "down.bin", "get"),
                            folder / "down.bin", size)
    say(f"    up and down: {plan.transfer_rounds} rounds")
    measure_rounds(up + down, plan.transfer_rounds, 1)
    same_dst = folder / "same.bin"
    shutil.copyfile(src, same_dst)
    token = str(rig.tmp / "home" / "token")
    same_rows = [
        ("rexec put, unchanged", "`rexec put ADDR FILE DEST`, DEST already the same (plaintext)",
         [str(BIN / "rexec"), "put", "-q", "--token-file", token, rig.plain_addr, str(src),
          str(same_dst)]),
        ("rexec put TLS, unchanged", "the same over TLS",
         [str(BIN / "rexec"), "put", "-q", "--token-file", token, "--tls-ca", str(rig.ca_pem),
          rig.tls_addr, str(src), str(same_dst)]),
        ("hash twice", "floor: `openssl dgst -sha256 FILE` twice, one after the other (once"
         " per side; OpenSSL's SHA-256, which rexec uses through Python's hashlib)",
         ["sh", "-c", f"openssl dgst -sha256 {src} >/dev/null"
                      f" && openssl dgst -sha256 {src} >/dev/null"]),
    ]
    same: list[tuple[Series, Batch]] = []
    for short, name, argv in same_rows:
        series = Series(name, short)

        def batch(k: int, argv: list[str] = argv) -> list[float]:
            times = []
            for _ in range(k):
                settle(rig)
                before = same_dst.stat().st_mtime_ns
                times.append(timed_process(argv, rig.env)[0])
                if same_dst.stat().st_mtime_ns != before:
                    raise RuntimeError("the unchanged file was written again")
            return times

        same.append((series, batch))
    say(f"    unchanged re-put: {plan.transfer_rounds} rounds")
    measure_rounds(same, plan.transfer_rounds, 1)
    return TransferRow([s for s, _ in up], [s for s, _ in down], [s for s, _ in same], size)


def transfer_section(row: TransferRow, plan: Plan, w: Callable[[str], None],
                     target: Callable[..., None], targets: list[tuple[str, str, str]]) -> None:
    """Table 9 and its targets (repeated in the section, which `--only transfer` rewrites)."""
    mb = row.size / 1e6
    w(TRANSFER_START)
    w("## 9. File transfer")
    w("")
    w(f"One file of {row.size:,} random bytes copied over loopback by a cold client process"
      " (start-up, connection and handshake included), up (the server writes it) and down (the"
      f" client writes it), {plan.transfer_rounds} interleaved rounds after a warm-up; the"
      " destination is removed before every run and its size checked after. rexec's server"
      " and client fsync the file before renaming it into place (that is their atomicity"
      " guarantee); scp and sftp write in place without fsync; `sync` runs before every run,"
      " so no contender pays for the dirty pages of the one before it. The source stays in the page"
      " cache after the first read. sshd is the rig's private one; asyncssh and the OpenSSH"
      " clients check its host key.")
    w("")
    for title, series in (("Up (put)", row.up), ("Down (get)", row.down)):
        gcm = find_label(series, "scp aes128-gcm").median
        w(f"**{title}**")
        w("")
        w("| client | median s | p95 s | n | MB/s | vs scp aes128-gcm |")
        w("| --- | ---: | ---: | ---: | ---: | ---: |")
        for s in series:
            w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} | {len(s.values)} |"
              f" {fnum(ratio(mb, s.median), 0)} | {fx(ratio(s.median, gcm))} |")
        w("")
    floor = find_label(row.same, "hash twice").median
    w("**An unchanged re-put** (the client hashes the file, the server hashes its copy, nothing"
      " is sent), beside hashing the file twice:")
    w("")
    w("| contender | median s | p95 s | n | vs hashing twice |")
    w("| --- | ---: | ---: | ---: | ---: |")
    for s in row.same:
        w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} | {len(s.values)} |"
          f" {fx(ratio(s.median, floor))} |")
    w("")
    for line in errors_note(row.up + row.down + row.same):
        w(line)
    w("")
    for direction, series, verb in (("up", row.up, "put"), ("down", row.down, "get")):
        tls = find_label(series, f"rexec {verb} TLS").median
        gcm = find_label(series, "scp aes128-gcm").median
        sftp = find_label(series, "asyncssh SFTP").median
        for limit in (1.0, 1.5):
            target(f"files {direction}: `rexec {verb}` TLS at least {limit:g}x scp aes128-gcm",
                   ratio(gcm, tls), limit, f"{fx(ratio(gcm, tls))} ({fnum(ratio(mb, tls), 0)}"
                   f" vs {fnum(ratio(mb, gcm), 0)} MB/s)", lower=False)
        target(f"files {direction}: `rexec {verb}` TLS at least 2x asyncssh SFTP",
               ratio(sftp, tls), 2.0, f"{fx(ratio(sftp, tls))} ({fnum(tls, 3)} s vs"
               f" {fnum(sftp, 3)} s)", lower=False)
    same = find_label(row.same, "rexec put, unchanged").median
    target("files: an unchanged re-put costs no more than hashing the file once on each side",
           ratio(same, floor), 1.0, f"{fx(ratio(same, floor))} ({fnum(same, 3)} s vs"
           f" {fnum(floor, 3)} s)")
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")
    for name, text, verdict in targets[-7:]:
        w(f"| {name} | {text} | {verdict} |")
    w("")
    w(TRANSFER_END)


# ---------------------------------------------------------------------------------------------
# row 10: a fleet put

FLEET_PUT_START = ("<!-- fleet put row: start (bench/suite.py --only fleet-put rewrites this"
                   " part) -->")
FLEET_PUT_END = "<!-- fleet put row: end -->"


@dataclass
class FleetPutRow:
    series: list[Series]
    size: int
    hosts: int
    how: str


def proc_io(pid: int, name: str) -> int:
    """A /proc/PID/io counter (rchar: bytes the process read, files and sockets); 0 if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    return 0


def sampled_process(argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """Run argv (no output kept); its wall seconds, peak RSS (KiB) and bytes read (rchar), the
    last two sampled every 10 ms until it exits."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    peak = read = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, read
        while not stop.is_set():
            peak = max(peak, proc_status(proc.pid, "VmHWM"))
            read = max(read, proc_io(proc.pid, "rchar"))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    except BaseException:
        stop_process(proc, argv[0], signal.SIGKILL)
        raise
    finally:
        stop.set()
        sampler.join(5)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}:"
                           f" {err.decode(errors='replace').strip()[-300:]}")
    return elapsed, peak, read


def fleet_put_row(rig: Rig, plan: Plan, stack: contextlib.ExitStack) -> FleetPutRow:
    n, size = plan.fleet_put_hosts, plan.fleet_put_size
    say(f"[10] fleet put: {size:,} bytes to {n} hosts, one cold client process per run")
    fleet = Fleet(fleet_addresses(n))
    start_fleet_servers(rig, fleet, stack, 2)
    src = transfer_source(rig, size)
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="rexec-fleet-put-",
                                   dir=shm if shm.is_dir() else rig.tmp))
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    dst = folder / "dst.bin"
    token = str(rig.tmp / "home" / "token")
    inventory = rig.tmp / "fleet-put.toml"
    inventory.write_text(f'[defaults]\nport = {fleet.rexec_port}\ntoken_file = "{token}"\n'
                         f'connect_timeout = 60\n\n[hosts."h[1-{n}]"]\n'
                         f'address = "{fleet.addresses[0].rsplit(".", 1)[0]}.[1-{n}]"\n')
    hosts_file = rig.tmp / "fleet-put-hosts"
    hosts_file.write_text("\n".join(fleet.addresses) + "\n")
    cli = [str(BIN / "rexec"), "put", "-q", "--inventory", str(inventory)]
    rows = [
        (f"rexec put -f {n}", f"`rexec put --no-skip -f {n} 'h[1-{n}]' FILE DEST` (CLI; read"
         " once)", [*cli, "--no-skip", "-f", str(n), f"h[1-{n}]", str(src), str(dst)], True),
        ("rexec put -f 5", f"`rexec put --no-skip -f 5 'h[1-{n}]' FILE DEST` (CLI; hosts in"
         " passes of about 5)", [*cli, "--no-skip", "-f", "5", f"h[1-{n}]", str(src), str(dst)],
         True),
        ("Client.put x gather", f"{n} x `rexec.Client.put(FILE, DEST, force=True)`,"
         " asyncio.gather (bench/fleet_client.py rexec-put; each reads the file itself)",
         [sys.executable, str(FLEET_CLIENT), "rexec-put", str(hosts_file),
          str(fleet.rexec_port), token, str(src), str(dst)], True),
        ("rexec put, unchanged", f"`rexec put -f {n} 'h[1-{n}]' FILE DEST`, DEST already the"
         " same on every host (nothing sent)",
         [*cli, "-f", str(n), f"h[1-{n}]", str(src), str(dst)], False),
    ]
    contenders: list[tuple[Series, Batch]] = []
    for short, name, argv, writes in rows:
        series = Series(name, short)

        def batch(k: int, argv: list[str] = argv, writes: bool = writes,
                  series: Series = series) -> list[float]:
            times = []
            for _ in range(k):
                settle(rig)
                before = dst.stat().st_mtime_ns if dst.exists() else None
                elapsed, peak, read = sampled_process(argv, rig.env)
                if dst.stat().st_size != size:
                    raise RuntimeError(f"{dst} has {dst.stat().st_size} bytes, not {size}")
                if not writes and dst.stat().st_mtime_ns != before:
                    raise RuntimeError("the unchanged file was written again")
                times.append(elapsed)
                series.rss_kib.append(peak)
                series.add_extra("read", read)
            return times

        contenders.append((series, batch))
    say(f"    {plan.fleet_put_rounds} rounds")
    measure_rounds(contenders, plan.fleet_put_rounds, 1)
    how = (f"{fleet.how}; the destination on {'tmpfs (/dev/shm)' if shm.is_dir() else 'disk'}"
           f", one path for every host (each server writes a temporary file of its own and"
           f" renames it over DEST)")
    return FleetPutRow([s for s, _ in contenders], size, n, how)


def fleet_put_section(row: FleetPutRow, plan: Plan, w: Callable[[str], None]) -> None:
    """Table 10 (`--only fleet-put` rewrites it alone)."""
    mb = row.size / 1e6
    w(FLEET_PUT_START)
    w("## 10. Fleet put")
    w("")
    w(f"One file of {row.size:,} random bytes put to {row.hosts} hosts at once by a cold client"
      f" process (start-up included), {plan.fleet_put_rounds} interleaved rounds after a"
      f" warm-up: {row.how}. The clients, the servers and their writes share this machine's"
      " two cores, so the wall time is mostly the servers' receiving (about 3.7 ms of CPU per"
      f" MiB each, {row.hosts} times over). *read MB*: bytes the client process read (its"
      " `rchar`, sampled: the hash, the file's passes and the sockets), which shows how often"
      " the file was read.")
    w("")
    w("| client | median s | p95 s | n | MB/s to all hosts | client peak RSS MiB | read MB |"
      " vs `rexec put` forks 20 |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = row.series[0].median
    for s in row.series:
        rss = median([float(v) for v in s.rss_kib]) / 1024
        read = median(s.extra.get("read", [])) / 1e6
        moved = "" if s.label.endswith("unchanged") else fnum(ratio(mb * row.hosts, s.median), 0)
        w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} | {len(s.values)} | {moved} |"
          f" {fnum(rss, 1)} | {fnum(read, 0)} | {fx(ratio(s.median, base))} |")
    w("")
    for line in errors_note(row.series):
        w(line)
    w("")
    w(FLEET_PUT_END)


# ---------------------------------------------------------------------------------------------
# row 11: a deploy, beside pyinfra

DEPLOY_START = "<!-- deploy row: start (bench/suite.py --only deploy rewrites this part) -->"
DEPLOY_END = "<!-- deploy row: end -->"
PYINFRA_DEFAULT_HOSTS = 100  # pyinfra at its own default parallelism: this fleet size only
ANSIBLE_HOSTS = 100  # Ansible up to this fleet size (at 500 one run takes minutes)
DEPLOY_CONF = "".join(f"setting_{i} = {i * 7919 % 10007}\n" for i in range(200))  # ~4 KB


@dataclass
class DeployRow:
    series: list[Series]
    how: str
    pyinfra: str
    ansible: str


def pyinfra_bin() -> Path | None:
    found = BIN / "pyinfra"
    return found if found.exists() else None


def ansible_bin() -> Path | None:
    """ansible-playbook: the venv's (the bench extra installs ansible-core), or on PATH."""
    found = BIN / "ansible-playbook"
    if found.exists():
        return found
    other = shutil.which("ansible-playbook")
    return Path(other) if other else None


def ansible_files(d: Path, fleet: Fleet, n: int, base: Path, key: Path) -> list[str]:
    """The same four steps as an Ansible playbook (command's own ``creates`` for the guarded
    step), forks n, facts not gathered (no step needs them); the argv."""
    a = base / "ansible"
    (d / "ansible-inventory.ini").write_text("[fleet]\n" + "".join(
        f"h{i} ansible_host={addr} ansible_port={fleet.ssh_port}\n"
        for i, addr in enumerate(fleet.addresses[:n], 1)) + f"""
[fleet:vars]
ansible_user=root
ansible_ssh_private_key_file={key}
ansible_ssh_common_args='-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes'
ansible_python_interpreter=/usr/bin/python3
""")
    (d / "playbook.yml").write_text(f"""- hosts: fleet
  gather_facts: false
  tasks:
    - name: config
      ansible.builtin.copy:
        src: "{d / 'app.conf'}"
        dest: "{a}/{{{{ inventory_hostname }}}}/app.conf"
        mode: "0644"
    - name: command
      ansible.builtin.shell: "echo deployed > {a}/{{{{ inventory_hostname }}}}/stamp"
    - name: guarded
      ansible.builtin.command:
        cmd: "touch {a}/{{{{ inventory_hostname }}}}/marker"
        creates: "{a}/{{{{ inventory_hostname }}}}/marker"
    - name: template
      ansible.builtin.template:
        src: "{d / 'motd.j2'}"
        dest: "{a}/{{{{ inventory_hostname }}}}/motd"
        mode: "0644"
      vars: {{host_name: "{{{{ inventory_hostname }}}}", release: "42"}}
""")
    found = ansible_bin()
    assert found is not None
    return [str(found), "-f", str(n), "-i", str(d / "ansible-inventory.ini"),
            str(d / "playbook.yml")]


def deploy_files(rig: Rig, fleet: Fleet, n: int, base: Path,
                 ansible: bool = True) -> dict[str, list[str]]:
    """The rexec plan and inventory and the pyinfra deploy and inventory for n hosts: the same
    four steps, pyinfra-performance's shape (a file put, a command, a guarded command, a
    template), every host writing beneath its own folder; the argv of each contender."""
    d = rig.tmp / f"deploy-{n}"
    d.mkdir(exist_ok=True)
    (d / "app.conf").write_text(DEPLOY_CONF)
    (d / "motd.tmpl").write_text("host ${host}, release ${release}\n")
    (d / "motd.j2").write_text("host {{ host_name }}, release {{ release }}\n")
    token = rig.tmp / "home" / "token"
    (d / "inventory.toml").write_text(
        f'[defaults]\nport = {fleet.rexec_port}\ntoken_file = "{token}"\nconnect_timeout = 60\n\n'
        + "".join(f'[hosts.h{i}]\naddress = "{a}"\n' for i, a in enumerate(fleet.addresses[:n], 1)))
    r = base / "rexec"
    (d / "plan.toml").write_text(f"""name = "bench deploy"
targets = "h[1-{n}]"
forks = {n}
[vars]
release = "42"

[[steps]]
name = "config"
put = {{ src = "app.conf", dest = "{r}/${{host}}/app.conf", mode = "0644" }}

[[steps]]
name = "command"
run = "echo deployed > {r}/${{host}}/stamp"

[[steps]]
name = "guarded"
run = "touch {r}/${{host}}/marker"
creates = "{r}/${{host}}/marker"

[[steps]]
name = "template"
template = {{ src = "motd.tmpl", dest = "{r}/${{host}}/motd", mode = "0644" }}
""")
    key = rig.tmp / "ssh" / "client_key"
    (d / "inventory.py").write_text("hosts = [\n" + "".join(
        f'    ("h{i}", {{"ssh_hostname": "{a}", "ssh_port": {fleet.ssh_port}, "ssh_user": "root",'
        f' "ssh_key": "{key}", "ssh_known_hosts_file": "{fleet.known_hosts}",'
        f' "ssh_strict_host_key_checking": "yes", "ssh_allow_agent": False,'
        f' "ssh_look_for_keys": False}}),\n'
        for i, a in enumerate(fleet.addresses[:n], 1)) + "]\n")
    p = base / "pyinfra"
    (d / "deploy.py").write_text(f"""from pyinfra import host
from pyinfra.operations import files, server

base = "{p}/" + host.name
files.put(name="config", src="{d / 'app.conf'}", dest=base + "/app.conf", mode="644")
server.shell(name="command", commands=["echo deployed > " + base + "/stamp"])
files.file(name="guarded", path=base + "/marker")  # made when missing, as creates= does
files.template(name="template", src="{d / 'motd.j2'}", dest=base + "/motd", mode="644",
               host_name=host.name, release="42")
""")
    rexec = [str(BIN / "rexec"), "deploy", str(d / "plan.toml"), "-q", "--inventory",
             str(d / "inventory.toml")]
    argvs = {f"rexec deploy, {n} hosts": [*rexec, "--history", str(d / "history.sqlite")],
             f"rexec deploy --no-history, {n} hosts": [*rexec, "--no-history"]}
    pyinfra = pyinfra_bin()
    if pyinfra is not None:
        py = [str(pyinfra), "-y"]
        argvs[f"pyinfra --parallel {n}, {n} hosts"] = [
            *py, "--parallel", str(n), str(d / "inventory.py"), str(d / "deploy.py")]
        if n == PYINFRA_DEFAULT_HOSTS:
            argvs[f"pyinfra (its default parallelism), {n} hosts"] = [
                *py, str(d / "inventory.py"), str(d / "deploy.py")]
    if ansible and ansible_bin() is not None and n <= ANSIBLE_HOSTS:
        argvs[f"Ansible, forks {n}, {n} hosts"] = ansible_files(d, fleet, n, base, key)
    return argvs


def deployed(folder: Path, n: int) -> str | None:
    """What is wrong with the four files of each of the n hosts' folders, or None."""
    for i in range(1, n + 1):
        host = folder / f"h{i}"
        expected = {"app.conf": DEPLOY_CONF, "stamp": "deployed\n", "marker": "",
                    "motd": f"host h{i}, release 42\n"}
        for name, text in expected.items():
            try:
                got = (host / name).read_text()
            except OSError as exc:
                return f"{host / name}: {exc.strerror}"
            if got != text:
                return f"{host / name}: {got[:60]!r}"
    return None


def deploy_row(rig: Rig, plan: Plan, stack: contextlib.ExitStack) -> DeployRow:
    widest = max(plan.deploy_hosts)
    say(f"[11] deploy: a 4-step plan on {' and '.join(map(str, plan.deploy_hosts))} hosts, first"
        " run and second (idempotent) run, one cold client process per run")
    fleet = Fleet(fleet_addresses(widest))
    start_fleet_servers(rig, fleet, stack, plan.fleet_servers)
    start_fleet_sshds(rig, fleet, stack)
    base = rig.tmp / "deploy-hosts"  # on the disk, as a deploy's files are
    contenders: list[tuple[Series, Batch]] = []
    seconds: list[Series] = []
    for n in plan.deploy_hosts:
        for name, argv in deploy_files(rig, fleet, n, base, plan.deploy_ansible).items():
            tool = name.split()[0].rstrip(",").lower()  # rexec, pyinfra, ansible
            folder = base / tool
            first = Series(f"{name}, first run", short=f"{name.split(',')[0]} {n} 1st")
            second = Series(f"{name}, second run", short=f"{name.split(',')[0]} {n} 2nd")
            seconds.append(second)

            def batch(k: int, argv: list[str] = argv, folder: Path = folder,  # noqa: PLR0917
                      n: int = n, first: Series = first, second: Series = second
                      ) -> list[float]:
                times = []
                for _ in range(k):
                    shutil.rmtree(folder, ignore_errors=True)
                    for i in range(1, n + 1):
                        (folder / f"h{i}").mkdir(parents=True)
                    settle_fleet(rig, fleet)
                    elapsed, peak, _ = sampled_process(argv, rig.env)
                    problem = deployed(folder, n)
                    if problem:
                        raise RuntimeError(f"first run: {problem}")
                    times.append(elapsed)
                    first.rss_kib.append(peak)
                    settle_fleet(rig, fleet)
                    elapsed, peak, _ = sampled_process(argv, rig.env)
                    problem = deployed(folder, n)
                    if problem:
                        raise RuntimeError(f"second run: {problem}")
                    second.values.append(elapsed)
                    second.rss_kib.append(peak)
                return times

            contenders.append((first, batch))
    # the servers' first connections (imports, allocations) are not counted: one rexec run
    warm = next(c for c in contenders if c[0].name.startswith(f"rexec deploy, {widest} "))
    warm[1](1)
    for s in [*(c[0] for c in contenders), *seconds]:
        s.values.clear()
        s.rss_kib.clear()
    say(f"    {plan.deploy_rounds} rounds")
    measure_rounds(contenders, plan.deploy_rounds, 1, warmup=0)
    shutil.rmtree(base, ignore_errors=True)
    series = [s for pair in zip((c[0] for c in contenders), seconds, strict=True) for s in pair]
    series += [history_cost(rig, n) for n in plan.deploy_hosts]
    how = (f"{fleet.how}; sshd: one per {SSHD_LISTEN_MAX} addresses; each host's files in a"
           " folder of its own on the disk, emptied before each first run")
    ansible = (f"Ansible (ansible-core {package_version('ansible-core')}) with forks set to the"
               f" host count, its defaults otherwise (ssh with ControlPersist; facts not"
               f" gathered, as no step needs them), up to {ANSIBLE_HOSTS} hosts: one run of"
               " 500 takes minutes." if ansible_bin() is not None and plan.deploy_ansible
               else "Ansible is not in the row: --no-ansible." if ansible_bin() is not None
               else "Ansible is not in the row: ansible-playbook was not installed.")
    return DeployRow(series, how, package_version("pyinfra"), ansible)


def history_cost(rig: Rig, n: int, rounds: int = 5) -> Series:
    """The recording alone, as a deploy of n hosts does it: the run started, 4 x n results
    (each with a line of output) recorded as the CLI records them (held up to 50 ms, then
    written in one transaction), the run finished and the file closed; seconds, per round."""
    from rexec.deploy.history import COMMIT_EVERY, History

    series = Series(f"recording a deploy's results, {n} hosts ({4 * n} results)",
                    short=f"history {n}")
    for k in range(rounds):
        path = rig.tmp / f"history-cost-{n}-{k}.sqlite"
        started = time.perf_counter()
        history = History.open(path, commit_every=COMMIT_EVERY)
        run = history.start_run("deploy", "bench", targets=f"h[1-{n}]", options={})
        for step in range(4):
            for host in range(1, n + 1):
                history.record(run, host=f"h{host}", step_index=step, step=f"step {step}",
                               status="changed", exit_code=0, duration=0.01,
                               stdout=b"deployed\n")
        history.finish_run(run, "ok", 0)
        history.close()
        series.values.append(time.perf_counter() - started)
        path.unlink()
    return series


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def deploy_section(row: DeployRow, plan: Plan, w: Callable[[str], None],
                   target: Callable[..., None], targets: list[tuple[str, str, str]]) -> None:
    """Table 11 (`--only deploy` rewrites it alone)."""
    w(DEPLOY_START)
    w("## 11. A deploy: rexec deploy beside pyinfra")
    w("")
    w("pyinfra-performance's shape, four steps on every host: put a file (4 KB), run a"
      " command, a guarded command (rexec: `creates`; pyinfra: `files.file`, made when"
      " missing), render a template. The first run starts from empty folders; the second finds"
      " everything done (the command runs again, as both tools' shell steps do). Each run is"
      f" a cold client process, timed whole, {plan.deploy_rounds} interleaved rounds: {row.how}."
      f" pyinfra {row.pyinfra} (paramiko over ssh, host keys checked) with `-y` (its output"
      " to /dev/null);"
      " rexec with `-q`, its history on (the default) and off."
      f" {row.ansible}")
    w("")
    w("| contender | median s | p95 s | n | client peak RSS MiB | vs rexec deploy |")
    w("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in row.series:
        hosts = next(part for part in s.name.split(", ") if part.endswith("hosts")
                     or " hosts (" in part).split(" (")[0]
        run = s.name.rsplit(", ", 1)[1]
        base = find(row.series, f"rexec deploy, {hosts}, {run}").median
        if s.name.startswith("recording"):
            first = find(row.series, f"rexec deploy, {hosts}, first run").median
            w(f"| {s.name} | {fnum(s.median, 4)} | {fnum(s.p95, 4)} | {len(s.values)} | |"
              f" {fnum(100 * ratio(s.median, first), 1)}% of the first run |")
            continue
        rss = median([float(v) for v in s.rss_kib]) / 1024
        w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} | {len(s.values)} |"
          f" {fnum(rss, 1)} | {fx(ratio(s.median, base))} |")
    w("")
    for line in errors_note(row.series):
        w(line)
    w("")
    shown = 0
    for n in plan.deploy_hosts:
        for run in ("first run", "second run"):
            mine = find(row.series, f"rexec deploy, {n} hosts, {run}").median
            theirs = find(row.series, f"pyinfra --parallel {n}, {n} hosts, {run}").median
            target(f"deploy: >= 10x faster than pyinfra, {n} hosts, {run}", ratio(theirs, mine),
                   10.0, f"{fx(ratio(theirs, mine))} ({fnum(mine, 3)} s vs {fnum(theirs, 3)} s)",
                   lower=False)
            shown += 1
    for n in plan.deploy_hosts:
        on = find(row.series, f"rexec deploy, {n} hosts, first run").median
        off = find(row.series, f"rexec deploy --no-history, {n} hosts, first run").median
        cost = find(row.series, f"recording a deploy's results, {n} hosts").median
        target(f"deploy: the history costs at most 5% ({n} hosts, first run)",
               ratio(cost, on), 0.05,
               f"{fnum(100 * ratio(cost, on), 1)}% (recording its results: {fnum(cost * 1e3, 1)}"
               f" ms of {fnum(on, 3)} s); whole runs with and without: {fx(ratio(on, off))}"
               f" ({fnum(on, 3)} s vs {fnum(off, 3)} s, within the runs' noise)")
        shown += 1
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")
    for name, text, verdict in targets[-shown:]:
        w(f"| {name} | {text} | {verdict} |")
    w("")
    w(DEPLOY_END)


# ---------------------------------------------------------------------------------------------
# row 12: UDP ping and discovery


PING_LOAD = Path(__file__).resolve().parent / "ping_load.py"
PING_START = "<!-- ping row: start (bench/suite.py --only ping rewrites this part) -->"
PING_END = "<!-- ping row: end -->"
PING_CPU_PROBES = 10_000
FLOOD_RATE = 40_000.0  # datagrams a second from the flooding source (what one Python sender
FLOOD_SECONDS = 3.0  # reaches here); bounded: FLOOD_RATE x FLOOD_SECONDS datagrams in all
FLOOD_SOURCE, PROBER_SOURCE = "127.0.0.5", "127.0.0.6"
RTT_PROBES, RTT_INTERVAL = 60, 0.04  # 25/s: within the prober's own limit (50/s)


@dataclass
class PingRow:
    series: list[Series]  # the 256-host pings, wall seconds
    cpu: list[Series]  # server CPU seconds per 10,000 probes
    quiet_rtt: list[float]  # seconds: a prober's round trips with no flood
    flood_rtt: list[float]  # the same prober, during the flood
    quiet_lost: int
    flood_lost: int
    flood: dict[str, Any]
    flood_cpu: float  # the server's CPU seconds during the flood
    kernel_drops: int  # UDP datagrams the kernel dropped meanwhile (receive buffers full)
    how: str
    fping: str


def udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (all sockets)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def ping_load(*args: str) -> dict[str, Any]:
    _, _, out = timed_process([sys.executable, str(PING_LOAD), *args], os.environ.copy(),
                              timeout=120, capture=True)
    result: dict[str, Any] = json.loads(out.decode())
    return result


def ping_inventory(rig: Rig, fleet: Fleet, n: int, token: bool) -> Path:
    path = rig.tmp / f"ping-inventory-{'token' if token else 'none'}.toml"
    head = f'[defaults]\ntoken_file = "{rig.tmp / "home" / "token"}"\n\n' if token else ""
    path.write_text(head + "".join(
        f'[hosts.h{i}]\naddress = "{a}"\nport = {fleet.rexec_port}\n\n'
        for i, a in enumerate(fleet.addresses[:n], 1)))
    return path


def fping_version() -> str:
    if shutil.which("fping") is None:
        return "not installed"
    done = run_quiet(["fping", "-v"])
    return (done.stdout + done.stderr).strip().split("\n")[0]


def ensure_fping() -> None:
    """Debian's fping, installed with apt-get when missing (as sshd is)."""
    if shutil.which("fping") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        say("  installing Debian's fping (apt-get)")
        for step in (["install"], ["update"], ["install"]):  # the lists may be stale
            run_quiet(["apt-get", *step, *(["-y", "-q", "fping"] if step[0] == "install"
                                          else [])], timeout=300)
            if step[0] == "install" and shutil.which("fping"):
                break


def ping_checked(rig: Rig, argv: list[str], env: dict[str, str], n: int) -> None:
    """One run of each contender, every host's 3 replies counted (not timed)."""
    if argv[0] == "fping":
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        ok = done.stderr.count("xmt/rcv/%loss = 3/3/0%")
    else:
        done = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60,
                              env=env, check=False)
        ok = sum(1 for line in done.stdout.splitlines()
                 if json.loads(line).get("received") == 3)
    if ok != n:
        raise RuntimeError(f"{argv[0]} {argv[1]}: {ok} of {n} hosts had 3 replies of 3:"
                           f" {(done.stderr or done.stdout)[-300:]}")


def ping_row(rig: Rig, plan: Plan, stack: contextlib.ExitStack) -> PingRow:  # noqa: PLR0915
    n = plan.ping_hosts
    say(f"[12] ping: {n} loopback hosts x 3 probes, one cold client process per run, beside"
        " fping -c 3; the server's CPU per 10,000 probes; reply times under a flood")
    ensure_fping()
    fleet = Fleet(fleet_addresses(n))
    per_process = math.ceil(n / plan.fleet_servers)
    # A real host sees 3 probes from a client; one of these processes serves n / 2 hosts, all
    # probed from 127.0.0.1: its per-source limit is what that many hosts would allow.
    base = (rig.tmp / "server.toml").read_text()
    fleet_config = rig.tmp / "ping-fleet.toml"
    fleet_config.write_text(base + f"discovery_rate = {50.0 * per_process}\n"
                                   f"discovery_burst = {100 * per_process}\n")
    start_fleet_servers(rig, fleet, stack, plan.fleet_servers, fleet_config)
    empty_home = rig.tmp / "ping-home-none"
    empty_home.mkdir(exist_ok=True)
    no_token_env = {**rig.env, "REXEC_HOME": str(empty_home)}
    pattern = f"h[1-{n}]"
    rexec_ping = [str(BIN / "rexec"), "ping", "-q", "-c", "3", pattern, "--inventory"]
    addresses = fleet.addresses[:n]
    runs = [
        ("rexec ping -c 3 (authenticated: the inventory's token)", "rexec auth",
         [*rexec_ping, str(ping_inventory(rig, fleet, n, True))], rig.env),
        ("rexec ping -c 3 (no token)", "rexec anon",
         [*rexec_ping, str(ping_inventory(rig, fleet, n, False))], no_token_env),
    ]
    if shutil.which("fping"):
        runs += [("fping -c 3 -q (its defaults: -i 10 ms between any two probes, -p 1000 ms)",
                  "fping", ["fping", "-c", "3", "-q", *addresses], rig.env),
                 ("fping -c 3 -q -i 1 (1 ms between probes: rexec's rate, 1,000/s)",
                  "fping -i1", ["fping", "-c", "3", "-q", "-i", "1", *addresses], rig.env)]
    contenders: list[tuple[Series, Batch]] = []
    for name, short, argv, env in runs:
        series = Series(f"{name}, {n} hosts", short=short)
        try:
            ping_checked(rig, argv, env, n)
        except Exception as exc:
            series.fail(f"check: {exc}")

        def batch(k: int, argv: list[str] = argv, env: dict[str, str] = env) -> list[float]:
            return [timed_process(argv, env)[0] for _ in range(k)]

        contenders.append((series, batch))
    measure_rounds(contenders, plan.ping_rounds, 1)
    for proc in fleet.servers:
        stop_process(proc, "fleet rexec server")

    # server CPU per 10,000 probes, every one answered (limits out of the way)...
    fast = rig.tmp / "ping-fast.toml"
    fast.write_text(base + "discovery_rate = 1000000.0\ndiscovery_burst = 1000000\n"
                           "discovery_global_rate = 1000000.0\n"
                           "discovery_global_burst = 1000000\n")
    server, address = start_rexec_server(rig, "ping-fast", [], fast)
    stack.callback(stop_process, server, "rexec server (ping, no limits)")
    cpu = [Series("answered, unauthenticated probes"), Series("answered, authenticated probes")]
    token = ["--token-file", str(rig.tmp / "home" / "token")]
    ping_load("answer", address, "1000")  # warm-up
    for _ in range(plan.ping_rounds):
        for series, extra in ((cpu[0], []), (cpu[1], token)):
            before = proc_cpu(server.pid)
            got = ping_load("answer", address, str(PING_CPU_PROBES), *extra)
            if got["received"] != PING_CPU_PROBES:
                series.fail(f"{got['received']} of {PING_CPU_PROBES} answered")
                continue
            series.values.append(proc_cpu(server.pid) - before)
    stop_process(server, "rexec server (ping, no limits)")

    # ...and with the default limits: a flood from one source, another source's round trips
    server, address = start_rexec_server(rig, "ping-default", [])
    stack.callback(stop_process, server, "rexec server (ping, default limits)")
    ping_load("rtt", address, "--count", "20", "--interval", "0.01")  # warm-up
    quiet = ping_load("rtt", address, "--count", str(RTT_PROBES), "--interval",
                      str(RTT_INTERVAL), "--source", PROBER_SOURCE)
    before, drops = proc_cpu(server.pid), udp_rcvbuf_errors()
    flooding = subprocess.Popen(
        [sys.executable, str(PING_LOAD), "flood", address, "--source", FLOOD_SOURCE,
         "--rate", str(FLOOD_RATE), "--seconds", str(FLOOD_SECONDS)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        loud = ping_load("rtt", address, "--count", str(RTT_PROBES), "--interval",
                         str(RTT_INTERVAL), "--source", PROBER_SOURCE)
        out, err = flooding.communicate(timeout=FLOOD_SECONDS + 30)
    finally:
        stop_process(flooding, "flood", signal.SIGKILL)
    flood_cpu, kernel_drops = proc_cpu(server.pid) - before, udp_rcvbuf_errors() - drops
    if flooding.returncode != 0:
        raise RuntimeError(f"the flood failed: {err.decode(errors='replace')[-300:]}")
    flood = json.loads(out.decode())
    stop_process(server, "rexec server (ping, default limits)")
    how = (f"{plan.fleet_servers} rexec server processes of {per_process} addresses each, one"
           " port, their per-source discovery limit raised to that of as many hosts (50 x"
           f" {per_process} probes/s, burst 100 x {per_process}): a real host sees 3 probes"
           " from a client, these see all their addresses' probes from 127.0.0.1")
    return PingRow([s for s, _ in contenders], cpu, quiet["rtts"], loud["rtts"],
                   quiet["lost"], loud["lost"], flood, flood_cpu, kernel_drops, how,
                   fping_version())


def ping_section(row: PingRow, plan: Plan, w: Callable[[str], None],
                 target: Callable[..., None], targets: list[tuple[str, str, str]]) -> None:
    """Table 12 (`--only ping` rewrites it alone)."""
    n = plan.ping_hosts
    w(PING_START)
    w("## 12. UDP ping: rexec ping beside fping")
    w("")
    w(f"Every host of {n} (loopback addresses 127.0.1.1 up) probed 3 times, 1 s apart, by one"
      f" cold client process, timed whole, {plan.ping_rounds} interleaved rounds after a"
      f" warm-up: {row.how}. Every contender was first run once with every host's 3 replies"
      f" counted. fping ({row.fping}) sends ICMP echo, which the kernel answers; rexec's"
      " probes are answered by rexec-server, in Python.")
    w("")
    w("| contender | median s | p95 s | n | vs rexec ping (authenticated) |")
    w("| --- | ---: | ---: | ---: | ---: |")
    base = row.series[0].median
    for s in row.series:
        w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} | {len(s.values)} |"
          f" {fx(ratio(s.median, base))} |")
    w("")
    for line in errors_note([*row.series, *row.cpu]):
        w(line)
    w("")
    w(f"The server's CPU (user + system, its /proc counters) per {PING_CPU_PROBES:,} probes"
      " of 512 bytes from bench/ping_load.py, at most 32 unanswered at once, every one"
      f" answered (limits raised out of the way), {plan.ping_rounds} rounds:")
    w("")
    w("| probes | median CPU s | p95 CPU s | per probe µs |")
    w("| --- | ---: | ---: | ---: |")
    for s in row.cpu:
        w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} |"
          f" {fnum(s.median / PING_CPU_PROBES * 1e6, 0)} |")
    w("")
    sent, answered = row.flood["sent"], row.flood["answered"]
    rate = sent / row.flood["seconds"] if row.flood["seconds"] else math.nan
    w(f"Under a flood, default limits (per source 50/s, burst 100; all sources 2,000/s, burst"
      f" 4,000): {FLOOD_SOURCE} sent {sent:,} probes in {row.flood['seconds']:.1f} s"
      f" ({rate:,.0f}/s) and got {answered:,} replies; the server spent"
      f" {row.flood_cpu:.2f} s of CPU meanwhile ({fnum(row.flood_cpu / sent * 1e6, 1)} µs"
      f" a datagram); the kernel dropped {row.kernel_drops:,} datagrams for a full receive"
      f" buffer (every UDP socket of the machine counted). Meanwhile {PROBER_SOURCE} sent"
      f" {RTT_PROBES} probes"
      f" {RTT_INTERVAL * 1000:.0f} ms apart, as it had before the flood:")
    w("")
    w("| the other source's probes | answered | median RTT ms | p95 RTT ms | max RTT ms |")
    w("| --- | ---: | ---: | ---: | ---: |")
    for label, rtts, lost in (("no flood", row.quiet_rtt, row.quiet_lost),
                              ("during the flood", row.flood_rtt, row.flood_lost)):
        w(f"| {label} | {len(rtts)} of {len(rtts) + lost} |"
          f" {fnum(median(rtts) * 1e3, 3)} | {fnum(percentile(rtts, 95) * 1e3, 3)} |"
          f" {fnum(max(rtts, default=math.nan) * 1e3, 3)} |")
    w("")
    mine = row.series[0].median
    fping = find(row.series, "fping -c 3 -q (its defaults").median
    fping1 = find(row.series, "fping -c 3 -q -i 1").median
    target(f"ping: {n} hosts x 3 probes under 3 s", mine, 3.0,
           f"{fnum(mine, 3)} s (fping at its defaults {fnum(fping, 3)} s, with -i 1"
           f" {fnum(fping1, 3)} s)")
    allowed = 100 + 50 * (row.flood["seconds"] + 1)
    target("ping: a flood from one source leaves another answered", float(row.flood_lost), 0.0,
           f"{len(row.flood_rtt)} of {RTT_PROBES} answered during the flood; the flood got"
           f" {answered:,} replies of {sent:,} (its bucket allows {allowed:,.0f})")
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")
    for name, text, verdict in targets[-2:]:
        w(f"| {name} | {text} | {verdict} |")
    w("")
    w(PING_END)


# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class Results:
    plan: Plan
    latency: list[Series] = field(default_factory=list)
    fresh: list[Series] = field(default_factory=list)
    stream: StreamRow | None = None
    idle: list[IdleRound] = field(default_factory=list)
    idle_sshd: SshdIdle | None = None
    fanout: list[Series] = field(default_factory=list)
    cps: list[Series] = field(default_factory=list)
    fleet: list[Series] = field(default_factory=list)
    fleet_how: str = ""
    pty: PtyRow | None = None
    transfer: TransferRow | None = None
    fleet_put: FleetPutRow | None = None
    deploy: DeployRow | None = None
    ping: PingRow | None = None


def find(series: list[Series], prefix: str) -> Series:
    for s in series:
        if s.name.startswith(prefix):
            return s
    return Series(prefix)


def errors_note(series: list[Series]) -> list[str]:
    lines = []
    for s in series:
        if s.errors:
            lines.append(f"- **{s.name}**: {len(s.errors)} failure(s)"
                         f"{' (dropped from the row)' if s.dropped else ''}: {s.errors[0]}")
    return lines


def find_label(series: list[Series], label: str) -> Series:
    for s in series:
        if s.label == label:
            return s
    return Series(label, label)


def stage_table(fresh: list[Series], ssh: float, rexec_run: Series, plan: Plan,
                w: Callable[[str], None]) -> None:
    """Table 2's second part: where a fresh `rexec run` spends its time."""
    staged = find_label(fresh, STAGED)
    ex = staged.extra
    if not staged.values or not ex.get("wall:start"):
        w("(The stage-by-stage run of `rexec run` was not measured.)")
        w("")
        for line in errors_note([staged]):
            w(line)
        w("")
        import_table(find_label(fresh, IMPORTTIME), ssh, w)
        return
    total = staged.median
    hooked = bool(ex.get("schema:run"))
    w("### Where a fresh `rexec run` spends its time")
    w("")
    w(f"Method: in each of the {plan.fresh_rounds} rounds of table 2, bench/startup.py runs"
      " rexec's own CLI (`rexec.cli.client.app`, the collector off while importing, `os._exit`"
      " at the end, as the `rexec` script does) in a fresh interpreter, importing one stage at a"
      " time in the order below and stamping the end of each with `time.perf_counter()`"
      " (CLOCK_MONOTONIC, so it compares with the suite's own timestamp from just before it"
      " started the process) and `time.process_time()`; a module two stages need is counted"
      " in the first, and parsing ends where typer calls `rexec.cli.run.execute`. The whole"
      " instrumented run and the plain `rexec run` are the same work; on this shared machine"
      " their wall times still drift apart by 20-40% in a run, their CPU times much less."
      + (" *schema ms*: time inside pydantic's schema builds (its `complete_model_class` and"
         " `TypeAdapter._init_core_attrs`, wrapped by the driver once pydantic is imported)."
         if hooked else ""))
    w("")
    w("| stage | median ms | min ms | CPU ms | schema ms | share | vs ssh (default kex) |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    keys = [k for k, _ in STAGES]
    timed = set(keys[keys.index("pydantic") + 1:])  # the driver hooks pydantic once imported
    rows = [*STAGES, ("exit", "exit: write the stamps, `os._exit`, the kernel's teardown,"
                              " the suite's wait returning")]
    for key, text in rows:
        walls = ex.get(f"wall:{key}", [])
        schema = ex.get(f"schema:{key}", [])
        wall = median(walls)
        lowest = min(walls, default=math.nan)
        cpu = median(ex.get(f"cpu:{key}", []))
        schema_ms = fnum(median(schema) * 1e3, 1) if schema and key in timed else ""
        w(f"| {text} | {fnum(wall * 1e3, 1)} | {fnum(lowest * 1e3, 1)} | {fnum(cpu * 1e3, 1)} |"
          f" {schema_ms} | {fnum(ratio(wall, total) * 100, 0)}% | {fx(ratio(wall, ssh))} |")
    schema_all = (fnum(median([sum(v) for v in zip(*(ex.get(f"schema:{k}", []) for k, _ in STAGES),
                                                   strict=True)]) * 1e3, 1) if hooked else "")
    w(f"| **the whole instrumented run** | **{fnum(total * 1e3, 1)}** |"
      f" {fnum(min(staged.values) * 1e3, 1)} | {fnum(median(ex.get('cpu', [])) * 1e3, 1)} |"
      f" {schema_all} | 100% | {fx(ratio(total, ssh))} |")
    plain_min = min(rexec_run.values, default=math.nan)
    plain_cpu = median(rexec_run.extra.get("cpu", []))
    w(f"| `rexec run ADDRESS -- true` itself (table 2's first row, same rounds) |"
      f" {fnum(rexec_run.median * 1e3, 1)} | {fnum(plain_min * 1e3, 1)} |"
      f" {fnum(plain_cpu * 1e3, 1)} | | | {fx(ratio(rexec_run.median, ssh))} |")
    w("")

    def summed(keys: tuple[str, ...]) -> float:  # the median of per-run sums
        return median([sum(v) for v in zip(*(ex.get(f"wall:{k}", []) for k in keys),
                                           strict=True)])

    before = summed(("start", "typer", "pydantic", "adapters"))
    own = summed(("cli", "client"))
    w(f"Before any rexec code runs, Python, typer and the pydantic typer uses take"
      f" {fnum(before * 1e3, 1)} ms ({fx(ratio(before, ssh))} ssh's time); importing rexec's"
      f" own modules {fnum(own * 1e3, 1)} ms; parsing {fnum(median(ex['wall:parse']) * 1e3, 1)}"
      f" ms; the command on the network {fnum(median(ex['wall:run']) * 1e3, 1)} ms. Medians of"
      " per-run sums; the stages' medians need not add up to the whole run's.")
    w("")
    import_table(find_label(fresh, IMPORTTIME), ssh, w)
    for line in errors_note([staged]):
        w(line)
    if staged.errors:
        w("")


def import_table(imp: Series, ssh: float, w: Callable[[str], None]) -> None:
    """The imports of one `rexec run`, by package (`python -X importtime` self times)."""
    if imp.extra.get("total"):
        w(f"The same imports by package: the *self* times `python -X importtime` reports for one"
          f" `rexec run ADDRESS -- true` (the console script itself), summed per top-level"
          f" package, median of {len(imp.extra['total'])} runs (interleaved with the rest of"
          " table 2); a module's self time includes the code it runs when imported, and"
          " `-X importtime` adds a little overhead of its own.")
        w("")
        w("| packages | import self time, median ms | vs ssh (default kex) |")
        w("| --- | ---: | ---: |")
        for group in [g for g, _ in IMPORT_GROUPS] + [OTHER_IMPORTS]:
            v = median(imp.extra.get(group, []))
            w(f"| {group} | {fnum(v * 1e3, 1)} | {fx(ratio(v, ssh))} |")
        t = median(imp.extra["total"])
        w(f"| **all imports** | **{fnum(t * 1e3, 1)}** | {fx(ratio(t, ssh))} |")
        w("")
    for line in errors_note([imp]):
        w(line)
    if imp.errors:
        w("")


def report(res: Results, rig: Rig,  # noqa: PLR0912, PLR0915 (one page, top to bottom)
           info: dict[str, Any]) -> tuple[str, list[tuple[str, str, str]]]:
    plan = res.plan
    out: list[str] = []
    targets: list[tuple[str, str, str]] = []  # (target, measured, verdict)

    def target(name: str, value: float, limit: float, text: str, *, lower: bool = True,
               note: str = "") -> None:
        if math.isnan(value):
            verdict = "not measured"
        else:
            verdict = "met" if (value <= limit if lower else value >= limit) else "**missed**"
            if note:
                verdict += f"; {note}"
        targets.append((name, text, verdict))

    w = out.append
    w("# rexec benchmarks: side by side with ssh and asyncssh")
    w("")
    how = "`make bench`" if plan.name == "full" else "`make bench BENCH_ARGS=--quick`"
    w(f"Generated by `bench/suite.py` ({how},"
      f" {plan.name} run) on {info['date']}; the run took {info['elapsed']:.0f} s.")
    w("Everything ran on loopback on one machine, clients and servers sharing its cores;"
      " absolute figures drift by 20-40% between runs on shared machines, so compare the"
      " ratios, which are taken between medians of this one run.")
    w("")
    w(f"- **Machine**: {info['machine']}")
    for k, v in info["versions"].items():
        w(f"- **{k}**: {v}")
    w(f"- **Negotiated**: ssh default key exchange {rig.facts.get('ssh kex', '?')}, default"
      f" cipher {rig.facts.get('ssh cipher', '?')}; rexec TLS {rig.facts.get('tls', '?')}"
      " (trustme ECDSA certificate)")
    w(f"- **sshd**: {info['sshd']}")
    w(f"- **Load**: {info['load']}")
    w("")
    w("Method: each row interleaves its contenders (A B C ... A B C ..., the order rotated each"
      " round) after a warm-up; *median* and *p95* (nearest rank) are over every sample of the"
      " row (with fewer than 20 samples, p95 is the slowest one). Servers: `rexec-server`"
      " with its default `log_level = \"info\"` (one JSON line per"
      f" command, to a file), `idle_timeout = 3600`, `max_startups` and"
      f" `per_source_max_startups` {REXEC_MAX_STARTUPS};"
      " a private `sshd -D -f CONFIG` (Debian's openssh-server) with host and ed25519 client"
      f" keys made for the run, `UsePAM no`, key-only, `MaxStartups {SSHD_MAX_STARTUPS}`,"
      " `MaxSessions 200`, `StrictModes no`. **bashrc**: root's login shell is bash, and"
      f" Debian's bash reads `~/.bashrc`{info['bashrc']} for every `ssh host cmd`;"
      " rexec's `/bin/sh -c` (dash) reads no rc file. Every ssh and asyncssh figure below was"
      " taken with `SetEnv SHLVL=1` in sshd's config (bash then skips `~/.bashrc`), except the"
      " one row of table 2 that says otherwise. rexec's modules are byte-compiled before the"
      " run, as installing its wheel does (the editable install here leaves them as source).")
    w("")

    # 1
    if res.latency:
        lat = res.latency
        floor = find(lat, "local floor").median
        assh = find(lat, "asyncssh").median
        w("## 1. `true` on one persistent connection")
        w("")
        w(f"{plan.latency_rounds} rounds x {plan.latency_batch} commands per contender; each"
          " sample is one command, from the call to its result (exit status checked).")
        w("")
        w("| contender | median ms | p95 ms | n | vs asyncio floor | vs asyncssh |")
        w("| --- | ---: | ---: | ---: | ---: | ---: |")
        for s in lat:
            w(f"| {s.name} | {fnum(s.median * 1e3)} | {fnum(s.p95 * 1e3)} | {len(s.values)} |"
              f" {fx(ratio(s.median, floor))} | {fx(ratio(s.median, assh))} |")
        w("")
        w("The ssh and asyncssh sessions start root's shell, bash (with SHLVL=1: no rc file); rexec"
          " and the local floors start /bin/sh (dash); the last line shows what starting bash"
          " instead of dash costs locally.")
        out.extend(errors_note(lat))
        w("")
        for label, prefix in (("BlockingClient", "rexec.BlockingClient"), ("async Client",
                                                                            "rexec.Client")):
            m = find(lat, prefix).median
            target(f"persistent `true`, rexec {label} <= 1.3x the asyncio spawn floor",
                   ratio(m, floor), 1.3, f"{fx(ratio(m, floor))} ({fnum(m * 1e3)} ms vs"
                   f" {fnum(floor * 1e3)} ms)")
            target(f"persistent `true`, rexec {label} <= 0.5x asyncssh", ratio(m, assh), 0.5,
                   f"{fx(ratio(m, assh))} ({fnum(m * 1e3)} ms vs {fnum(assh * 1e3)} ms)")

    # 2
    if res.fresh:
        fr = [s for s in res.fresh if s.label not in {STAGED, IMPORTTIME}]
        ssh_default = find(fr, "`ssh host true` (default").median
        ssh_curve = find(fr, "`ssh host true` (-o Kex").median
        py = find(fr, "`python -c pass`").median
        w("## 2. A fresh CLI process running `true`")
        w("")
        w(f"{plan.fresh_rounds} rounds; wall time of the whole process (stdin /dev/null),"
          " exit status checked. *CPU ms*: the median user + system time of the process (and"
          " of any child it reaped), from `getrusage(RUSAGE_CHILDREN)` before and after it;"
          " the servers' side is not counted. The *floor* rows are what any typer + pydantic"
          " CLI pays here before it does anything (typer 0.29 builds a pydantic TypeAdapter"
          " for each parameter).")
        w("")
        w("| contender | median ms | min ms | p95 ms | CPU ms | n | vs ssh (default kex) |"
          " vs ssh (curve25519) | vs python -c pass |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in fr:
            lowest = min(s.values, default=math.nan)
            w(f"| {s.name} | {fnum(s.median * 1e3, 1)} | {fnum(lowest * 1e3, 1)} |"
              f" {fnum(s.p95 * 1e3, 1)} | {fnum(median(s.extra.get('cpu', [])) * 1e3, 1)} |"
              f" {len(s.values)} |"
              f" {fx(ratio(s.median, ssh_default))} | {fx(ratio(s.median, ssh_curve))} |"
              f" {fx(ratio(s.median, py), 1)} |")
        w("")
        out.extend(errors_note(fr))
        w("")
        def vs_ssh(label: str) -> float:
            return ratio(find_label(fr, label).median, ssh_default)

        app, app_fast, pyd = vs_ssh("typer app"), vs_ssh("typer app, fast"), vs_ssh(
            "import pydantic")
        floor_text = (f"`python -c pass` {fx(vs_ssh('python -c pass'))}, `import typer`"
                      f" {fx(vs_ssh('import typer'))}, `from pydantic import BaseModel`"
                      f" {fx(pyd)}, a bare two-argument typer app {fx(app)} ({fx(app_fast)}"
                      " started as rexec starts)")
        app_floor = min(app, app_fast)
        if math.isnan(app_floor):
            conclusion = "the bare typer app was not measured"
        elif app_floor > 0.5:
            conclusion = (f"a bare typer app with two arguments already takes {fx(app_floor)}"
                          " ssh's time here, so 0.5x lies below the floor of the prescribed"
                          " stack (typer + pydantic)")
        else:
            conclusion = (f"a bare typer app with two arguments takes {fx(app_floor)} ssh's"
                          " time in this run: the floor alone does not rule the target out")
        w(f"Floors as a ratio of `ssh host true` (default kex): {floor_text}; {conclusion}.")
        w("")
        stage_table(res.fresh, ssh_default, find(fr, "`rexec run"), plan, w)
        rx = find(fr, "`rexec run").median
        target("fresh `rexec run ADDRESS -- true` <= 0.5x a fresh `ssh host true` (default kex)",
               ratio(rx, ssh_default), 0.5,
               f"{fx(ratio(rx, ssh_default))} ({fnum(rx * 1e3, 1)} ms vs"
               f" {fnum(ssh_default * 1e3, 1)} ms; {fx(ratio(rx, ssh_curve))} of ssh with"
               f" curve25519; {fx(ratio(rx, py), 1)} `python -c pass`)",
               note=f"floors (table 2): {floor_text}; {conclusion}")
        target("fresh `rexec run ADDRESS -- true` <= 1.0x a fresh `ssh host true` (default kex)",
               ratio(rx, ssh_default), 1.0,
               f"{fx(ratio(rx, ssh_default))} ({fnum(rx * 1e3, 1)} ms vs"
               f" {fnum(ssh_default * 1e3, 1)} ms)")

    # 3 and 4
    st = res.stream
    if st is not None:
        size = plan.size
        pipe = find(st.series, "local pipe").median
        tls = find(st.series, "rexec CLI, TLS")
        plain = find(st.series, "rexec CLI, plaintext")
        gcm = find(st.series, "ssh, aes128-gcm").median
        assh_s = find(st.series, "asyncssh")
        api_plain = find(st.series, "rexec Python API, plaintext")
        api_tls = find(st.series, "rexec Python API, TLS")

        floors = {k: find(st.series, f"floor: {v}") for k, v in
                  (("copy", "protocol-free"), ("splice", "the same relay with os.splice"),
                   ("tcp", "loopback TCP alone"))}

        def stream_only(s: Series) -> float:
            return median(s.extra.get("stream", []))

        def cpu_cell(s: Series, key: str) -> str:
            return fnum(median(s.extra[key]), 2) if s.extra.get(key) else ""

        w(f"## 3. Streaming `head -c {size} /dev/zero` back, discarded")
        w("")
        w(f"{plan.stream_rounds} rounds. *median s* and *p95 s* are the wall time of one whole"
          " process each: the rexec CLI and ssh start, connect, authenticate and write the"
          " output to /dev/null within it; the bench/stream_client.py processes start Python,"
          " import their library, connect and discard the output in-process, and report"
          " their own *stream only* time too (from authenticated to the last byte and the exit"
          " status), which leaves out the start-up and the handshake. Every contender was first"
          " checked to deliver exactly SIZE bytes (the Python helpers check their own count and"
          " exit status on every run). GB/s = 10^9 bytes per second at the median."
          " The client's peak RSS is its VmHWM, sampled every 10 ms.")
        w("")
        w("The three *floor* rows (bench/relay_floor.py, interleaved with the others) move the"
          " same SIZE bytes with every rexec cost that is not the relay itself taken out: no"
          " frames, no asyncio, no authentication, blocking sockets, Python start-up but no"
          " imports beyond the standard library. Relay: the helper (the client) forks a relay"
          " server and connects to it over loopback TCP; the server starts `/bin/sh -c 'head -c"
          " SIZE /dev/zero'` with its stdout on a pipe grown to 1 MiB (F_SETPIPE_SZ, as rexec's"
          " runner does), reads it in rexec's 256 KiB chunks (os.readv into a reused buffer)"
          " and sendall()s each chunk; the client recv_into()s a reused 256 KiB buffer and"
          " writes each chunk to /dev/null, as the rexec CLI does: three processes, rexec's"
          " shape. *os.splice*: the same, the server moving the pipe's pages into the socket"
          " with os.splice (256 KiB a call) instead of reading and sending them. *Loopback TCP"
          " alone*: no command and no pipe, the server sendall()s a reused 256 KiB buffer"
          " until SIZE bytes are sent.")
        w("")
        w("*CPU s* is user + system CPU seconds of every process of the contender, median over"
          " the samples: the client process and every process it reaped (the local pipe: sh,"
          " head and cat; a floor: its relay server and command too), plus the server side:"
          " for rexec, the growth across the sample of the `rexec-server` process's"
          " utime + stime + cutime + cstime in /proc/PID/stat (the server, and the command it"
          " reaped; its guardian, which writes one short line per command, is left out); for"
          " ssh and asyncssh, the same growth for the listening sshd, read once it has reaped"
          " the connection's process (that process reaps the session's processes and the shell,"
          " and each one's time reaches its parent's cutime/cstime when it is reaped, so the"
          " listener's counters then hold the whole connection: the comparison is fair)."
          " *server side* is that server part alone (for a floor: its relay server and"
          " command). /proc counts in ticks of 1/"
          f"{CLOCK_TICKS} s.")
        w("")
        w("| contender | median s | p95 s | GB/s | vs local pipe | stream only: median s |"
          " stream only: GB/s | CPU s: all processes (median) | CPU s: server side (median) |"
          " client peak RSS MiB (max) |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in st.series:
            rss = max(s.rss_kib, default=0) / 1024
            so = stream_only(s)
            has_stream = bool(s.extra.get("stream"))
            w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} |"
              f" {fnum(size / s.median / 1e9 if s.values else math.nan)} |"
              f" {fx(ratio(pipe, s.median))} | {fnum(so, 3) if has_stream else ''} |"
              f" {fnum(size / so / 1e9) if has_stream else ''} | {cpu_cell(s, 'cpu')} |"
              f" {cpu_cell(s, 'cpu_server')} | {fnum(rss, 1)} |")
        w("")
        out.extend(errors_note(st.series))
        out.extend(f"- CPU not counted for one sample of {note}" for note in st.cpu_notes)
        w("")
        copy, splice, tcp_only = floors["copy"], floors["splice"], floors["tcp"]
        relay_best = max((ratio(pipe, f.median) for f in (copy, splice)
                          if not math.isnan(ratio(pipe, f.median))), default=math.nan)
        floor_text = (
            f"floors here: a protocol-free Python relay over loopback TCP reaches"
            f" {fx(ratio(pipe, copy.median))} of the pipe with read + sendall,"
            f" {fx(ratio(pipe, splice.median))} with os.splice, and loopback TCP alone (no"
            f" command, no pipe) {fx(ratio(pipe, tcp_only.median))}")
        if not math.isnan(relay_best):
            vs_copy = fx(ratio(plain.median, copy.median))
            vs_splice = fx(ratio(plain.median, splice.median))
            api_vs_copy = fx(ratio(stream_only(api_plain), stream_only(copy)))
            cpus = [cpu_cell(s, "cpu") or "n/a"
                    for s in (plain, copy, find(st.series, "local pipe"))]
            w("**What limits throughput here.** The local pipe moves SIZE bytes between two"
              " processes through one kernel pipe; every remote contender adds at least a"
              f" loopback TCP connection and a relay process. The {floor_text}. rexec"
              f" plaintext takes {vs_copy} the read + sendall relay's time with the CLI (whole"
              f" processes; {vs_splice} the os.splice relay's), and {api_vs_copy} for the"
              " Python API's stream alone against the relay's stream alone. CPU, all"
              f" processes: {cpus[0]} s for the rexec CLI, {cpus[1]} s for the read + sendall"
              f" relay, {cpus[2]} s for the local pipe. " + (
                  "The issue's 0.7x of the local pipe is above every relay floor measured"
                  " here: no TCP relay in Python of this shape reaches it on this machine."
                  if relay_best < 0.7 else
                  "A relay floor reaches the issue's 0.7x of the local pipe on this"
                  " machine."))
            w("")
        target("throughput, rexec plaintext >= 0.7x the local pipe", ratio(pipe, plain.median),
               0.7, f"{fx(ratio(pipe, plain.median))} with the CLI, start-up included;"
               f" {fx(ratio(pipe, stream_only(api_plain)))} for the Python API's stream alone;"
               f" {floor_text}; rexec takes {fx(ratio(plain.median, copy.median))} the"
               " read + sendall relay's time", lower=False,
               note=f"0.7x is above every relay floor here, the best at {fx(relay_best)}"
               if relay_best < 0.7 else "")
        piped = find(st.series, "rexec CLI into a pipe").median
        target("throughput, rexec plaintext into a pipe (`| cat`) >= 0.7x the local pipe",
               ratio(pipe, piped), 0.7, f"{fx(ratio(pipe, piped))} ({fnum(piped, 3)} s vs"
               f" {fnum(pipe, 3)} s; {fx(ratio(plain.median, piped))} the time to /dev/null)",
               lower=False, note=f"0.7x is above every relay floor here, the best at"
               f" {fx(relay_best)}" if relay_best < 0.7 else "")
        for limit in (1.0, 1.5):
            target(f"throughput, rexec TLS >= {limit:g}x ssh with aes128-gcm",
                   ratio(gcm, tls.median), limit, f"{fx(ratio(gcm, tls.median))} (CLI against"
                   " CLI)", lower=False)
        for limit in (2.0, 2.5):
            target(f"throughput, rexec TLS >= {limit:g}x asyncssh",
                   ratio(assh_s.median, tls.median), limit,
                   f"{fx(ratio(assh_s.median, tls.median))} (the CLI against a Python process"
                   f" using asyncssh); {fx(ratio(assh_s.median, api_tls.median))} with the"
                   " Python API on both sides;"
                   f" {fx(ratio(stream_only(assh_s), stream_only(api_tls)))} stream only",
                   lower=False)

    if st is not None or res.idle:
        st4 = st or StreamRow([], {}, {})
        w("## 4. Memory")
        w("")
        w("| what | figure |")
        w("| --- | --- |")
        client_peak = 0
        for s in (find(st4.series, "rexec CLI, plaintext"),
                  find(st4.series, "rexec CLI, TLS"),
                  find(st4.series, "rexec Python API, plaintext"),
                  find(st4.series, "rexec Python API, TLS")):
            if s.rss_kib:
                if "CLI" in s.name:
                    client_peak = max(client_peak, *s.rss_kib)
                w(f"| rexec client peak RSS while streaming ({s.label}) | median"
                  f" {median(s.rss_kib) / 1024:.1f} MiB, max {max(s.rss_kib) / 1024:.1f} MiB"
                  f" ({max(s.rss_kib) * 1024 / 1e6:.1f} MB) |")
        for k, (before, peak, after) in st4.server_rss.items():
            hwm = st4.server_hwm.get(k, (0, 0))
            w(f"| rexec server RSS while streaming ({'plaintext' if k == 'plain' else 'TLS'}),"
              f" sampled every 20 ms | before {before / 1024:.1f} MiB, peak {peak / 1024:.1f}"
              f" MiB, after {after / 1024:.1f} MiB (VmHWM {hwm[0] / 1024:.1f} -> "
              f"{hwm[1] / 1024:.1f} MiB over the row) |")
        for s in st4.series:
            if s.name.startswith(("ssh", "asyncssh")) and s.rss_kib:
                w(f"| peer client: {s.label} peak RSS while streaming | max"
                  f" {max(s.rss_kib) / 1024:.1f} MiB |")
        for i, r in enumerate(res.idle, 1):
            per = (r.rss_held - r.rss_before) / max(1, r.connected)
            w(f"| server holding {r.connected} idle authenticated connections (round {i}) |"
              f" RSS {r.rss_before / 1024:.1f} MiB before, {r.rss_held / 1024:.1f} MiB holding"
              f" them ({per:.1f} KiB each), {r.rss_after / 1024:.1f} MiB after they closed;"
              f" fds {r.fds_before} -> {r.fds_held}; opened in {r.open_seconds:.2f} s"
              f"{'; errors: ' + r.errors[0] if r.errors else ''} |")
        si = res.idle_sshd
        if si is not None:
            w(f"| peer: sshd holding {si.connected} idle authenticated asyncssh connections |"
              f" {si.processes} processes, PSS {si.pss / 1024:.1f} MiB in all"
              f" ({si.pss / max(1, si.connected):.0f} KiB each; RSS {si.rss / 1024:.0f} MiB"
              f" summed); opened in {si.open_seconds:.2f} s"
              f"{'; errors: ' + si.errors[0] if si.errors else ''} |")
        w("")
        if len(res.idle) > 1:
            w("Round 1 is the figure of a server that has not held that many connections"
              " before; its RSS does not shrink back when they close, and later rounds reuse"
              " part of that memory, so their per-connection figure is smaller.")
            w("")
        w("The rexec server figures are the `rexec-server` process alone (not its small"
          " guardian process, nor the commands' processes); sshd's are its processes for the"
          " connections (PSS: shared pages counted once), the listening one excluded.")
        w("")
        if client_peak:
            target("rexec client (the CLI) peak RSS < 50 MB while streaming",
                   client_peak * 1024 / 1e6, 50,
                   f"{client_peak * 1024 / 1e6:.1f} MB ({client_peak / 1024:.1f} MiB)")
        if st4.server_rss:
            growth = max(p - b for b, p, _ in st4.server_rss.values())
            target("server RSS flat while streaming (taken as: peak less than 16 MiB over the"
                   " RSS before each stream, worst server)", growth / 1024, 16,
                   f"+{growth / 1024:.1f} MiB")

    # 5
    fo = res.fanout
    if fo:
        w("## 5. Fan-out through the Python API")
        w("")
        w(f"{plan.fanout_rounds} rounds; N connections opened at once from one asyncio process"
          " (`asyncio.gather`), each authenticating, running `hostname` (output checked) and"
          " closing; wall time of the whole gather.")
        w("")
        w("| contender | median s | p95 s | n | asyncssh / rexec | listen-queue overflows"
          " per run (median, max) |")
        w("| --- | ---: | ---: | ---: | ---: | ---: |")
        for n in plan.fanout:
            r_s, a_s = find(fo, f"rexec.Client, {n} "), find(fo, f"asyncssh, {n} ")
            for s in (r_s, a_s):
                ov = s.extra.get("overflows", [])
                w(f"| {s.name} | {fnum(s.median, 3)} | {fnum(s.p95, 3)} | {len(s.values)} |"
                  f" {fx(ratio(a_s.median, s.median)) if s is r_s else ''} |"
                  f" {fnum(median(ov), 0)}, {fnum(max(ov, default=math.nan), 0)} |")
        w("")
        w("A listen-queue overflow (the machine's TcpExt ListenOverflows counter, so another"
          " program's could count too) is a connection attempt the kernel dropped because the"
          " server's accept backlog was full; the client's SYN is then retried after 1 s, 2 s..."
          " rexec-server listens with a backlog of 1024 (LISTEN_BACKLOG), sshd with 128.")
        w("")
        out.extend(errors_note(fo))
        w("")
        r500 = find(fo, "rexec.Client, 500 ").median
        target("fan-out, 500 rexec connections in under 1 s", r500, 1.0, f"{fnum(r500, 3)} s")
        r50, a50 = find(fo, "rexec.Client, 50 ").median, find(fo, "asyncssh, 50 ").median
        target("fan-out, 50 connections >= 3x faster than asyncssh", ratio(a50, r50), 3.0,
               f"{fx(ratio(a50, r50))} ({fnum(r50, 3)} s vs {fnum(a50, 3)} s)", lower=False)

    # 6
    cp = res.cps
    if cp:
        total = plan.clients * plan.sequential
        w(f"## 6. {plan.clients} clients x {plan.sequential} sequential `true`")
        w("")
        w(f"{plan.cps_rounds} rounds; {plan.clients} connections from one asyncio process, each"
          f" running {plan.sequential} `true` one after another, all at once. Commands per"
          f" second = {total} / the time from all connected to all done; the last column"
          " counts the connections' set-up too.")
        w("")
        w("| contender | median commands/s | p95 (slow end) commands/s | n | vs asyncssh |"
          " with connect, median commands/s |")
        w("| --- | ---: | ---: | ---: | ---: | ---: |")
        a_cps = find(cp, "asyncssh")
        for s in cp:
            w(f"| {s.name} | {fnum(total / s.median, 0)} | {fnum(total / s.p95, 0)} |"
              f" {len(s.values)} | {fx(ratio(a_cps.median, s.median))} |"
              f" {fnum(total / median(s.extra.get('with_connect', [])), 0)} |")
        w("")
        out.extend(errors_note(cp))
        w("")
        rc = find(cp, "rexec.Client").median
        target("commands/s with 20 clients >= 1.5x asyncssh", ratio(a_cps.median, rc), 1.5,
               f"{fx(ratio(a_cps.median, rc))} ({fnum(total / rc, 0)} vs"
               f" {fnum(total / a_cps.median, 0)} commands/s)", lower=False)

    if res.fleet:
        fleet_section(res, res.fleet_how, w, target, targets)
        w("")
    if res.pty:
        pty_section(res.pty, plan, w, target, targets)
        w("")
    if res.transfer:
        transfer_section(res.transfer, plan, w, target, targets)
        w("")
    if res.fleet_put:
        fleet_put_section(res.fleet_put, plan, w)
        w("")
    if res.deploy:
        deploy_section(res.deploy, plan, w, target, targets)
        w("")
    if res.ping:
        ping_section(res.ping, plan, w, target, targets)
        w("")

    w("## The issue's targets (ratios from this run)")
    w("")
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")
    for name, text, verdict in targets:
        w(f"| {name} | {text} | {verdict} |")
    w("")
    w("## What this comparison does not show")
    w("")
    for note in NOTES:
        w(f"- {note}")
    w("")
    return "\n".join(line for line in out if line is not None), targets


NOTES = [
    "paramiko and Fabric are not measured, and parallel-ssh only in the fleet row (the rows"
    " compare with asyncssh, ssh and local spawning). BENCH-NOTES: paramiko leaves Nagle on (~40 ms"
    " delayed ACKs per command), fails 1 GiB transfers at its 512 MiB rekey, and Fabric"
    " collapses identical hosts in a Group.",
    "ssh and asyncssh sessions run root's login shell (bash -c), rexec runs /bin/sh -c"
    " (dash): starting bash costs more per command than dash (table 1's last line), so part"
    " of the ssh-family latency is the shell, not the protocol. Root's ~/.bashrc is kept out"
    " (SetEnv SHLVL=1) except in the one row of table 2 that shows its cost.",
    "The asyncssh helper of row 3 discards its data in-process, the CLIs write to /dev/null"
    " (one cheap write per chunk); both pay a Python interpreter's start-up (the asyncssh"
    " helper's in-process connect and stream times are shown beside it).",
    "The floors of table 3 are Python programs, as rexec is: they bound what a relay of"
    " rexec's shape written in Python does here, not what the kernel can do (a relay in C,"
    " socat for one, is not measured). They keep rexec's buffer sizes (256 KiB reads, a 1 MiB"
    " pipe) and its TCP_NODELAY, but block on their sockets where rexec's server runs"
    " asyncio.",
    "rexec TLS uses what Python's ssl negotiates (TLS 1.3, AES-256-GCM, an ECDSA certificate),"
    " the ssh aes128-gcm row a cipher with a smaller key (fewer rounds), ssh's default row"
    " chacha20-poly1305.",
    "The machine was shared with other work while the suite ran (see the load average in the"
    " header): interleaving spreads that over every contender, but the p95 columns show it.",
    "Clients and servers share the machine's cores (2 here): with sshd forking a process per"
    " connection and rexec serving every connection from one asyncio process, the fan-out rows"
    " measure how each side uses two cores, not only protocol costs.",
    "Idle connections: rexec's figure is the growth of one process's RSS; sshd's is the PSS"
    " of the processes it forks per connection (the fair sum for forked processes); neither"
    " counts the client side.",
    "sshd's MaxStartups is raised to 1000 (BENCH-NOTES used 200) so that neither the"
    " 500-connection fan-out nor the 1,000 idle connections meet sshd's cap on unauthenticated"
    " connections; rexec's max_startups and per_source_max_startups are raised likewise (by"
    " default it refuses a newcomer past 64 unauthenticated connections from one address, and"
    " with a rising probability past 128 in all).",
]


# ---------------------------------------------------------------------------------------------


def main() -> int:  # noqa: PLR0912, PLR0915
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run (2-3 minutes): fewer rounds, smaller streams")
    parser.add_argument("--size", type=int, default=None,
                        help="bytes streamed in row 3 (default 1 GiB, 256 MiB with --quick)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,12",
                        help="rows to run, e.g. 1,3; 7 or fleet: the fleet fan-out, 8 or pty:"
                             " the PTY session, 9 or transfer: file transfer, 10 or"
                             " fleet-put: a fleet put, 11 or deploy: a deploy beside pyinfra,"
                             " 12 or ping: rexec ping beside fping"
                             " (these alone rewrite only their own"
                             " sections of --output)")
    parser.add_argument("--deploy-hosts", default=None,
                        help="row 11's fleet sizes, e.g. 100 (default 100,500)")
    parser.add_argument("--no-ansible", action="store_true",
                        help="row 11 without Ansible (each of its runs takes about 2 minutes)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="where the table goes ('-' for nowhere)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.size is not None:
        if args.size <= 0:
            parser.error("--size must be positive")
        plan = dataclasses.replace(plan, size=args.size)
    if args.deploy_hosts is not None:
        try:
            hosts = tuple(int(x) for x in args.deploy_hosts.split(",") if x.strip())
        except ValueError:
            hosts = ()
        if not hosts or min(hosts) <= 0:
            parser.error(f"--deploy-hosts: positive host counts, e.g. 100,500,"
                         f" not {args.deploy_hosts!r}")
        plan = dataclasses.replace(plan, deploy_hosts=hosts)
    if args.no_ansible:
        plan = dataclasses.replace(plan, deploy_ansible=False)
    names = {"fleet": 7, "pty": 8, "transfer": 9, "fleet-put": 10, "deploy": 11, "ping": 12}
    try:
        rows = {names.get(x.strip()) or int(x) for x in args.only.split(",") if x.strip()}
    except ValueError:
        parser.error(f"--only: row numbers 1-12, fleet, pty, transfer, fleet-put, deploy or ping,"
                     " not"
                     f" {args.only!r}")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # clean up (servers stopped by PID) as on Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    load_start = os.getloadavg()
    say(f"# rexec bench suite, {plan.name} run, {time.strftime('%Y-%m-%d %H:%M')}")
    sshd_how = ensure_sshd()
    created_privsep = not PRIVSEP_DIR.exists()
    res = Results(plan)
    with tempfile.TemporaryDirectory(prefix="rexec-suite-") as tmp, \
            contextlib.ExitStack() as stack, asyncio.Runner() as runner:
        env = {**os.environ, "REXEC_HOME": str(Path(tmp) / "home")}
        for name in ("REXEC_TOKEN", "REXEC_CONFIG", "SSH_AUTH_SOCK", "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)
        compile_bytecode()
        rig = Rig(Path(tmp), env)
        if created_privsep:
            stack.callback(lambda: shutil.rmtree(PRIVSEP_DIR, ignore_errors=True))
        setup_rexec(rig, stack)
        setup_ssh(rig, stack)
        say(f"rexec {rig.plain_addr} (plaintext), {rig.tls_addr} (TLS); sshd 127.0.0.1:"
            f"{rig.ssh_port} (and :{rig.ssh_rc_port} reading ~/.bashrc), pid {rig.sshd.pid}"
            if rig.sshd else "")
        bashrc = Path.home() / ".bashrc"
        info = {"machine": machine(), "versions": versions(rig),
                "bashrc": (" (which runs `pyenv init` here)" if bashrc.exists()
                           and "pyenv init" in bashrc.read_text(errors="replace") else ""),
                "sshd": f"{SSHD} ({sshd_how}), started as `sshd -D -f CONFIG` on a free"
                        " loopback port, stopped by its PID"}
        if 1 in rows:
            with contextlib.ExitStack() as row_stack:
                res.latency = latency_row(rig, plan, runner, row_stack)
        if 2 in rows:
            res.fresh = fresh_row(rig, plan)
        if 3 in rows:
            res.stream = stream_row(rig, plan)
        if 4 in rows:
            res.idle, res.idle_sshd = idle_row(rig, plan, runner)
        if 5 in rows:
            res.fanout = fanout_row(rig, plan, runner)
        if 6 in rows:
            res.cps = cps_row(rig, plan, runner)
        if 7 in rows:
            fleet = setup_fleet(rig, plan, stack)
            res.fleet = fleet_row(rig, plan, fleet)
            res.fleet_how = (f"{fleet.how}; the machine's 1-minute load average was"
                             f" {os.getloadavg()[0]:.1f} at the row's end")
        if 8 in rows:
            res.pty = pty_row(rig, plan)
        if 9 in rows:
            res.transfer = transfer_row(rig, plan)
        if 10 in rows:
            res.fleet_put = fleet_put_row(rig, plan, stack)
        if 11 in rows:
            res.deploy = deploy_row(rig, plan, stack)
        if 12 in rows:
            res.ping = ping_row(rig, plan, stack)
        info["load"] = (f"{load_start[0]:.2f} before the run, {os.getloadavg()[0]:.2f} at its"
                        " end (1-minute load average of the whole machine, the suite's own"
                        " processes included)")
        info["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
        info["elapsed"] = time.monotonic() - started
        text, _ = report(res, rig, info)
    say("")
    say(text)
    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        sections = {7: (FLEET_START, FLEET_END), 8: (PTY_START, PTY_END),
                    9: (TRANSFER_START, TRANSFER_END), 10: (FLEET_PUT_START, FLEET_PUT_END),
                    11: (DEPLOY_START, DEPLOY_END), 12: (PING_START, PING_END)}
        if rows <= sections.keys() and args.output.exists():  # the other tables stay
            existing = args.output.read_text()
            for row in sorted(rows):
                existing = splice(existing, text, *sections[row])
            text = existing
        args.output.write_text(text)
        say(f"written to {args.output}; the whole run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the servers and clients this run started were stopped",
              file=sys.stderr)
        sys.exit(130)
