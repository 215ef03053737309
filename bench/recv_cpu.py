"""The server's CPU per byte it receives in an upload, plaintext and TLS.

    python bench/recv_cpu.py [--size MIB] [--runs N] [--baseline DIR] [--profile DIR]

Starts a plaintext and a TLS rexec-server on loopback, then uploads one file of ``--size`` MiB
(default 512) to each ``--runs`` times, alternating, with the BlockingClient and ``force``
(every byte sent). Source and destination are in /dev/shm, so neither disk is measured; each
destination is removed after its upload and one round goes first uncounted, so that every
upload writes into memory used before (in a virtual machine a page touched for the first time
can cost the writing thread seconds per GiB, the host's fault, counted as its CPU time). For
each upload it prints the server process's CPU seconds (utime + stime from /proc/PID/stat,
before and after) per GiB received, and the wall time from the first byte sent to the end (the
client's hash of the file before it sends is left out: that is the client's cost).

``--cli`` uploads with ``rexec put --no-skip`` in a process of its own instead, and its wall
time is then the whole process's, start-up and the client's hash of the file included.

``--baseline DIR`` also starts the servers of another version of rexec, a source tree holding
its ``server.py`` and ``rexec/`` (``git archive COMMIT server.py rexec | tar -x -C DIR``), and
interleaves its uploads with this version's, so that both see the same noise.

``--profile DIR`` runs each server under cProfile and writes DIR/plain.prof and DIR/tls.prof
when they stop (the event loop's thread only). ``--spy DIR`` samples each server, all its
threads and native frames, with py-spy (``pip install py-spy``) into DIR/plain.txt and
DIR/tls.txt (collapsed stacks); ``--perf DIR`` records each server with ``perf record``
(native frames and the kernel's, CPU time only) into DIR/plain.data and DIR/tls.data.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import rexec

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
GIB = 1024 * MIB
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, task: int | None = None) -> float:
    """utime + stime of process ``pid`` (all its threads, or its thread ``task``), in seconds."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def loop_seconds(pid: int) -> float:
    """CPU seconds of the server's main thread (the event loop); the rest is its threads'."""
    return cpu_seconds(pid, pid)


def start_server(tmp: Path, name: str, extra: list[str], profile: Path | None,
                 root: Path = ROOT) -> tuple[subprocess.Popen[bytes], str]:
    """The rexec-server of the source tree ``root`` on 127.0.0.1 port 0; returns it and the
    address it printed."""
    argv = [sys.executable]
    if profile is not None:
        argv += ["-m", "cProfile", "-o", str(profile / f"{name}.prof")]
    argv += [str(root / "server.py"), "--host", "127.0.0.1", "--port", "0",
             "--token-file", str(tmp / "token"), "--log-level", "warning", *extra]
    stderr = (tmp / f"{name}.log").open("wb")
    env = {**os.environ, "HOME": str(tmp), "PYTHONPATH": str(root)}  # its rexec, not ours
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr,
                            stdin=subprocess.DEVNULL, env=env)
    stderr.close()
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the {name} server did not start: {(tmp / f'{name}.log').read_text()}")
    return proc, line.split()[2]


def write_pki(tmp: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1: (ca, cert, key)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    (tmp / "server.key").chmod(0o600)
    (tmp / "server.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"


def upload(address: str, token: str, ca: Path | None, src: Path, dst: str, *,
           pid: int) -> tuple[float, float, float]:
    """One forced put to the server process ``pid``; (its CPU seconds, those of its event
    loop's thread, wall seconds from the first byte sent)."""
    first: list[float] = []

    def progress(done: int, total: int) -> None:
        if not first:
            first.append(time.perf_counter())

    with rexec.BlockingClient(address, token=token, tls_ca=ca) as client:
        client.run("true", check=True)  # connected and warm before the clock starts
        cpu, loop = cpu_seconds(pid), loop_seconds(pid)
        client.put(src, dst, force=True, on_progress=progress)
        ended = time.perf_counter()
        cpu, loop = cpu_seconds(pid) - cpu, loop_seconds(pid) - loop
    return cpu, loop, ended - first[0]


def upload_cli(address: str, token: Path, ca: Path | None, src: Path, dst: str, *,
               pid: int) -> tuple[float, float, float]:
    """One ``rexec put --no-skip`` to the server process ``pid``; (its CPU seconds, those of
    its event loop's thread, the CLI's wall seconds)."""
    rexec_cli = Path(sys.executable).with_name("rexec")
    trust = ["--tls-ca", str(ca)] if ca is not None else []
    argv = [str(rexec_cli), "put", "-q", "--no-skip", "--token-file", str(token), *trust,
            address, str(src), dst]
    cpu, loop = cpu_seconds(pid), loop_seconds(pid)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return cpu_seconds(pid) - cpu, loop_seconds(pid) - loop, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="MiB to upload (default 512)")
    parser.add_argument("--runs", type=int, default=3, help="uploads per server (default 3)")
    parser.add_argument("--cli", action="store_true", help="upload with `rexec put --no-skip`")
    parser.add_argument("--baseline", type=Path,
                        help="a source tree of another version to compare, run for run")
    parser.add_argument("--profile", type=Path, help="cProfile the servers into this folder")
    parser.add_argument("--spy", type=Path, help="py-spy the servers into this folder")
    parser.add_argument("--perf", type=Path, help="perf record the servers into this folder")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir="/dev/shm")))
        token = secrets.token_urlsafe(32)
        (tmp / "token").write_text(token + "\n")
        (tmp / "token").chmod(0o600)
        ca, cert, key = write_pki(tmp)
        src = tmp / "source"
        with src.open("wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(MIB))
        for folder in (args.profile, args.spy, args.perf):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
        servers: Servers = {}
        for suffix, root in [("", ROOT)] + ([("-base", args.baseline)] if args.baseline else []):
            servers["plain" + suffix] = (start_server(tmp, "plain" + suffix, [], args.profile,
                                                      root), None)
            servers["tls" + suffix] = (start_server(tmp, "tls" + suffix, tls, args.profile,
                                                    root), ca)
        servers = dict(sorted(servers.items()))  # plain, plain-base, tls, tls-base
        for name, ((proc, _), _ca) in servers.items():
            stack.callback(stop, proc)
            if args.spy is not None:
                stack.callback(stop, spy(proc.pid, args.spy / f"{name}.txt"))
            if args.perf is not None:
                stack.callback(stop, sample(proc.pid, args.perf / f"{name}.data"))
        results = measure(args, servers, tmp, token, src)
        for name, rows in results.items():
            cpu, loop, wall = (statistics.median(r[i] for r in rows) for i in range(3))
            other = statistics.median(r[0] - r[1] for r in rows)
            print(f"median {name:10}: server CPU {cpu:.2f} s/GiB (event loop {loop:.2f},"
                  f" other threads {other:.2f}), wall {wall:.2f} s for {args.size} MiB")
    return 0


Servers = dict[str, tuple[tuple[subprocess.Popen[bytes], str], Path | None]]


def measure(args: argparse.Namespace, servers: Servers, tmp: Path, token: str,
            src: Path) -> dict[str, list[tuple[float, float, float]]]:
    """Upload ``src`` to each server in turn, ``args.runs`` rounds after a warm-up; per server
    and run (server CPU s/GiB, event loop CPU s/GiB, wall seconds)."""
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in servers}
    per_gib = GIB / (args.size * MIB)
    for run in range(-1, args.runs):  # run -1: the warm-up
        for name, ((proc, address), trust) in servers.items():
            dst = tmp / f"dst-{name}"
            if args.cli:
                cpu, loop, wall = upload_cli(address, tmp / "token", trust, src, str(dst),
                                             pid=proc.pid)
            else:
                cpu, loop, wall = upload(address, token, trust, src, str(dst), pid=proc.pid)
            dst.unlink()
            if run < 0:
                continue
            results[name].append((cpu * per_gib, loop * per_gib, wall))
            print(f"run {run + 1} {name:10}: server CPU {cpu * per_gib:.2f} s/GiB (event"
                  f" loop {loop * per_gib:.2f}, other threads {(cpu - loop) * per_gib:.2f}),"
                  f" wall {wall:.2f} s ({args.size * MIB / wall / 1e6:.0f} MB/s)", flush=True)
    return results


def spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling process ``pid`` until it is stopped."""
    py_spy = Path(sys.executable).with_name("py-spy")
    return sampler([str(py_spy), "record", "--pid", str(pid), "--native", "--threads",
                    "--format", "raw", "--rate", "200", "--output", str(output)])


def sample(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """perf sampling process ``pid`` (call graphs) until it is stopped."""
    return sampler(["perf", "record", "--freq", "999", "--call-graph", "dwarf,16384",
                    "--pid", str(pid), "--output", str(output)])


def sampler(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a sampling profiler, and give it a second to attach before the first upload."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT a sampler, SIGTERM a server (so each writes its profile), SIGKILL lingerers."""
    argv = cast(list[str], proc.args)
    proc.send_signal(signal.SIGINT if Path(argv[0]).name in ("py-spy", "perf")
                     else signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
