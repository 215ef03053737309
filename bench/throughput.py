"""Wall time of streaming 1 GB through rexec beside a local pipe, interleaved, medians.

    make bench                       # 1,000,000,000 bytes, 5 rounds
    python bench/throughput.py --size 200000000 --rounds 3

Runs a private rexec server on a free loopback port, then alternates
  A: rexec run ADDRESS -- 'head -c SIZE /dev/zero' > /dev/null
  B: head -c SIZE /dev/zero | cat > /dev/null
and reports each one's median wall time, throughput, the ratio, the client's peak RSS and the
server's peak RSS (VmHWM). Not part of the test suite: figures drift on shared machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procinfo import proc_status  # bench/ is on sys.path when a script here runs

BIN = Path(sys.executable).parent


def timed(argv: list[str], env: dict[str, str], shell: bool = False) -> tuple[float, int]:
    """Run argv with stdout to /dev/null; return (wall seconds, child's peak RSS in KiB)."""
    with open(os.devnull, "wb") as null:
        started = time.perf_counter()
        proc = subprocess.Popen(argv if not shell else argv[0], stdout=null, env=env,
                                stdin=subprocess.DEVNULL, shell=shell)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}")
    return elapsed, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rexec-bench-") as home:
        env = {**os.environ, "REXEC_HOME": home}
        env.pop("REXEC_TOKEN", None)
        server = subprocess.Popen([str(BIN / "rexec-server"), "--port", "0",
                                   "--log-level", "warning"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            assert server.stdout is not None
            address = server.stdout.readline().decode().split()[-1]
            command = f"head -c {args.size} /dev/zero"
            rexec = [str(BIN / "rexec"), "run", "-n", address, "--", command]
            pipe = [f"head -c {args.size} /dev/zero | cat"]
            timed(rexec, env)  # warm-up: page cache, first connection
            hwm_before = proc_status(server.pid, "VmHWM")
            times: dict[str, list[float]] = {"rexec": [], "pipe": []}
            client_rss: list[int] = []
            for _ in range(args.rounds):
                elapsed, rss = timed(rexec, env)
                times["rexec"].append(elapsed)
                client_rss.append(rss)
                times["pipe"].append(timed(pipe, env, shell=True)[0])
            hwm_after = proc_status(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(10)
            if server.stdout is not None:
                server.stdout.close()
    rexec_median = statistics.median(times["rexec"])
    pipe_median = statistics.median(times["pipe"])
    print(f"# rexec throughput, {time.strftime('%Y-%m-%d')}, {platform.node()},"
          f" {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"size: {args.size} bytes, rounds: {args.rounds} (interleaved), medians")
    print(f"{'contender':<52} {'median s':>9} {'min s':>7} {'GB/s':>6}")
    rows = [
        (f"rexec run ADDR -- 'head -c {args.size} /dev/zero' >/dev/null", times["rexec"]),
        (f"head -c {args.size} /dev/zero | cat >/dev/null", times["pipe"]),
    ]
    for name, values in rows:
        median = statistics.median(values)
        print(f"{name:<52} {median:>9.2f} {min(values):>7.2f} {args.size / median / 1e9:>6.2f}")
    print(f"rexec / pipe wall-time ratio: {rexec_median / pipe_median:.2f}x"
          f"  (rexec reaches {pipe_median / rexec_median:.2f} of the pipe's throughput)")
    print(f"client peak RSS: {max(client_rss) / 1024:.1f} MiB;"
          f" server peak RSS: {hwm_before / 1024:.1f} MiB before, {hwm_after / 1024:.1f} MiB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
