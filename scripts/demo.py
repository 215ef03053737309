"""`make demo`: start a server on loopback with a generated token and run a few commands through it.

Everything happens in a temporary REXEC_HOME, so the demo touches nothing of yours and leaves no
process behind.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def show(title: str, argv: list[str], env: dict[str, str], stdin: bytes | None = None) -> None:
    print(f"\n$ {shlex.join(argv)}" + ("   # with stdin" if stdin is not None else ""), flush=True)
    started = time.monotonic()
    result = subprocess.run(argv, input=stdin, capture_output=True, env=env, check=False,
                            stdin=None if stdin is not None else subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    out = result.stdout
    shown = out if len(out) < 400 else out[:200] + b"...(" + str(len(out)).encode() + b" bytes)"
    sys.stdout.buffer.write(shown)
    if result.stderr:
        sys.stdout.buffer.write(b"[stderr] " + result.stderr)
    print(f"-> {title}: exit status {result.returncode} in {elapsed:.2f} s", flush=True)


def stream_and_hash(argv: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Run argv, hashing its stdout as it streams; return (bytes, sha256, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    digest, received = hashlib.sha256(), 0
    while chunk := proc.stdout.read1(1 << 20):
        digest.update(chunk)
        received += len(chunk)
    proc.stdout.close()
    proc.wait()
    return received, digest.hexdigest(), time.monotonic() - started


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rexec-demo-") as home:
        env = {**os.environ, "REXEC_HOME": home}
        env.pop("REXEC_TOKEN", None)
        server = subprocess.Popen(
            [str(BIN / "rexec-server"), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            assert server.stdout is not None and server.stderr is not None
            line = server.stdout.readline().decode().strip()
            if not line.startswith("listening on "):
                print(server.stderr.read().decode(), file=sys.stderr)
                return 1
            print(line)
            print(server.stderr.readline().decode().strip())
            address = line.split()[-1]
            rexec = str(BIN / "rexec")
            show("remote uname", [rexec, "run", address, "--", "uname", "-sr"], env)
            show("exit status and stderr come back",
                 [rexec, "run", address, "--", "echo oops >&2; exit 3"], env)
            show("stdin is forwarded", [rexec, "run", address, "--", "tr a-z A-Z"], env,
                 stdin=b"hello from the client\n")
            show("env and cwd", [rexec, "run", "-e", "GREETING=hi", "--cwd", "/tmp", address,
                                 "--", 'echo "$GREETING from $(pwd)"'], env)
            show("one JSON object with --json (binary output as base64)",
                 [rexec, "run", "--json", address, "--", r"printf 'text\377'"], env)
            show("a timeout kills the whole process group (status 124)",
                 [rexec, "run", "--timeout", "1", address, "--", "sleep 30 & sleep 30"], env)
            size = 200_000_000
            print(f"\n$ rexec run {address} -- 'head -c {size} /dev/zero' | sha256sum")
            received, digest, elapsed = stream_and_hash(
                [rexec, "run", "-n", address, "--", f"head -c {size} /dev/zero"], env)
            same = digest == hashlib.sha256(bytes(size)).hexdigest()
            print(f"-> {received} bytes, byte-identical to the local zeros: {same}"
                  f" ({elapsed:.2f} s, hashing included)")
        finally:
            server.terminate()
            server.wait(10)
            for stream in (server.stdout, server.stderr):
                if stream is not None:
                    stream.close()
    print("\nserver stopped; demo done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
