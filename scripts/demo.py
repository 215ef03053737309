"""`make demo`: start a server on loopback with a generated token and run a few commands through it;
then a fleet: one server process serving several loopback addresses, an inventory naming them, a
fan-out, a host that is down, a batch, and a deploy (check, diff, apply, again, history).

Everything happens in a temporary REXEC_HOME, so the demo touches nothing of yours and leaves no
process behind.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def show(title: str, argv: list[str], env: dict[str, str], stdin: bytes | None = None,
         limit: int = 400) -> None:
    print(f"\n$ {shlex.join(argv)}" + ("   # with stdin" if stdin is not None else ""), flush=True)
    started = time.monotonic()
    result = subprocess.run(argv, input=stdin, capture_output=True, env=env, check=False,
                            stdin=None if stdin is not None else subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    out = result.stdout
    shown = (out if len(out) < limit
             else out[:limit // 2] + b"...(" + str(len(out)).encode() + b" bytes)")
    sys.stdout.buffer.write(shown)
    for line in result.stderr.splitlines(keepends=True):
        sys.stdout.buffer.write(b"[stderr] " + line)
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


FLEET = [f"127.0.0.{n}" for n in range(2, 6)]  # web1 ... web4
DOWN = "127.0.0.9"  # web5: nothing listens there


def free_port(hosts: list[str]) -> int:
    """A port free on every one of ``hosts``."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every loopback address")


def fleet_demo(home: Path, env: dict[str, str]) -> int:
    """One rexec-server serving four loopback addresses, an inventory of five hosts (one of
    them down), a fan-out gathered with -b, a batch, a ping and a discover."""
    port = free_port([*FLEET, DOWN])
    hosts = [arg for host in FLEET for arg in ("--host", host)]
    print(f"\n--- a fleet: one server process on {len(FLEET)} addresses, port {port} ---")
    log = (home / "fleet-server.log").open("wb")
    server = subprocess.Popen([str(BIN / "rexec-server"), *hosts, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=log, env=env,
                              stdin=subprocess.DEVNULL)
    log.close()
    try:
        assert server.stdout is not None
        for _ in FLEET:
            line = server.stdout.readline().decode().strip()
            if not line.startswith("listening on "):
                print((home / "fleet-server.log").read_text(), file=sys.stderr)
                return 1
            print(line)
        inventory = home / "inventory.toml"  # $REXEC_HOME/inventory.toml: found by default
        inventory.write_text(f"""# the demo's fleet (the token: the server's, in $REXEC_HOME/token)
[defaults]
port = {port}
connect_timeout = 2.0

[hosts."web[1-4]"]
address = "127.0.0.[2-5]"

[hosts.web5]
address = "{DOWN}"  # nothing listens here

[groups.web]
hosts = ["web[1-5]"]
""")
        print(f"\n$ cat {inventory}\n{inventory.read_text()}", end="")
        rexec = str(BIN / "rexec")
        show("what @web names", [rexec, "hosts", "@web"], env)
        show("a fan-out, each line prefixed with its host",
             [rexec, "run", "web[1-4]", "--", "echo hello from $$"], env)
        show("-b gathers identical outputs under one header; web5 is unreachable (exit 3)",
             [rexec, "run", "-b", "@web", "--", "uname -s; echo $REXEC_IDENTITY"], env)
        batch = home / "deploy.batch"
        batch.write_text("# one command a line, in order, over one connection per host\n"
                         "echo step 1: $(uname -s)\n"
                         "echo step 2: a line continued \\\n"
                         "  on the next\n"
                         "\n"
                         "test -e /nonexistent  # fails: each host stops here, unless -k\n"
                         "echo step 4\n")
        print(f"\n$ cat {batch}\n{batch.read_text()}", end="")
        show("rexec batch: the summary names the line that failed (exit 1)",
             [rexec, "batch", "web[1-4]", str(batch)], env)
        show("-k/--keep-going runs the rest; one host, no prefixes",
             [rexec, "batch", "-k", "web1", str(batch)], env)
        show("rexec ping: UDP probes, answered by the server on its TCP port's number",
             [rexec, "ping", "-c", "3", "-i", "0.2", "web1"], env)
        show("a pattern: one summary line a host, as fping -c; web5 is down (exit 1)",
             [rexec, "ping", "-c", "2", "-i", "0.2", "@web"], env)
        show("rexec discover: every server answering in a network (with the token, their"
             " names)", [rexec, "discover", "127.0.0.0/29", "--port", str(port),
                         "--timeout", "1"], env)
        deploy_demo(home, env)
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    return 0


def deploy_demo(home: Path, env: dict[str, str]) -> None:
    """A plan on the fleet: --check --diff, the apply, a second apply that changes nothing,
    and the history of both."""
    rexec = str(BIN / "rexec")
    (home / "app.conf").write_text("listen = 8080\nworkers = 4\n")
    (home / "motd.tmpl").write_text("${host}: release ${release}, deployed by rexec\n")
    plan = home / "site.toml"
    plan.write_text(f"""name = "demo site"
targets = "web[1-4]"
serial = [1, "50%"]                 # a canary, then two hosts at a time

[vars]
release = "2026.12"
root = "{home / 'hosts'}"           # every "host" is this machine: a folder each

[[steps]]
name = "folder"
run = "mkdir -p ${{root}}/${{host}}"
creates = "${{root}}/${{host}}"

[[steps]]
name = "config"
put = {{ src = "app.conf", dest = "${{root}}/${{host}}/app.conf", mode = "0644" }}
notify = ["reload"]

[[steps]]
name = "motd"
template = {{ src = "motd.tmpl", dest = "${{root}}/${{host}}/motd" }}

[[handlers]]
name = "reload"
run = "echo reloaded > ${{root}}/${{host}}/reloaded"

[health]
run = "test -s ${{root}}/${{host}}/motd"
""")
    print(f"\n--- a deploy ---\n\n$ cat {plan}\n{plan.read_text()}", end="")
    show("--check --diff: what would change, nothing changed",
         [rexec, "deploy", str(plan), "--check", "--diff"], env, limit=8000)
    show("the apply: batch after batch, a recap per host",
         [rexec, "deploy", str(plan)], env, limit=8000)
    show("again: nothing to change (every step ok or skipped, no handler)",
         [rexec, "deploy", str(plan)], env, limit=8000)
    show("the history of both runs (and the batches before)", [rexec, "history"], env, limit=8000)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rexec-demo-") as home:
        env = {**os.environ, "REXEC_HOME": home}
        env.pop("REXEC_TOKEN", None)
        env.pop("REXEC_HISTORY", None)  # its batches are recorded in the temporary home
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
            if fleet_demo(Path(home), env):
                return 1
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
