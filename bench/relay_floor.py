"""A floor for bench/suite.py's streaming row: the same bytes over loopback TCP, no protocol.

    python bench/relay_floor.py copy SIZE     # head -> pipe -> read/sendall -> TCP -> client
    python bench/relay_floor.py splice SIZE   # head -> pipe -> os.splice -> TCP -> client
    python bench/relay_floor.py tcp SIZE      # a reused buffer -> sendall -> TCP -> client

The process started is the client. It listens on a free 127.0.0.1 port, forks the relay
server, connects to it, and from then on times: it sends one byte (the "request"), the server
starts `/bin/sh -c 'head -c SIZE /dev/zero'` with its stdout on a pipe (grown to 1 MiB with
F_SETPIPE_SZ, as rexec's runner does) and relays that pipe to the socket until end of file,
then closes the socket, reaps the child and exits with the child's status; the client reads
the socket until end of file (recv_into a reused 256 KiB buffer, each chunk written to
/dev/null, as the rexec CLI does with -n and stdout on /dev/null) and reaps the server. That is
rexec's shape, three processes (command, server, client), with every rexec cost that is not
the relay itself taken out: no frames, no asyncio, no authentication, blocking sockets.

  copy    the server reads the pipe in rexec's chunks (os.readv into a reused 256 KiB buffer,
          rexec.server.exec.child.READ_CHUNK) and sendall()s each chunk: two copies through user
          space.
  splice  the server moves the pipe's pages into the socket with os.splice (up to 256 KiB a
          call): no copy through user space on the sending side.
  tcp     no command and no pipe: the server sendall()s a reused 256 KiB buffer until SIZE
          bytes are sent (two processes), the cost of loopback TCP alone from Python.

Prints one JSON line, as bench/stream_client.py does: bytes received, the exit status, seconds
to connect, seconds from connected to the last byte and the server's exit, and the CPU seconds
(user + system) of the server side (the server and its command) and of the client.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

# rexec.server.exec.child.READ_CHUNK, rexec.sockets.READ_SIZE (both clients read that much)
CHUNK = 256 * 1024
PIPE_SIZE = 1024 * 1024  # rexec.server.exec.child.PIPE_SIZE
TIMEOUT = 300.0  # no socket operation waits longer; the suite also kills a slow run
MODES = ("copy", "splice", "tcp")


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def relay(conn: socket.socket, mode: str, size: int) -> int:
    """The server's side, in the forked process: the exit status of its command (0 for tcp)."""
    conn.settimeout(TIMEOUT)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if conn.recv(1) != b"x":
        return 2
    if mode == "tcp":
        view = memoryview(bytearray(CHUNK))
        left = size
        while left > 0:
            conn.sendall(view[:min(left, CHUNK)])
            left -= CHUNK
        return 0
    child = subprocess.Popen(["/bin/sh", "-c", f"head -c {size} /dev/zero"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert child.stdout is not None
    fd = child.stdout.fileno()
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    try:
        if mode == "copy":
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while count := os.readv(fd, [buffer]):
                conn.sendall(view[:count])
        else:
            # A blocking socket: splice waits for room in it, and for data in the pipe
            # (0 at the pipe's end of file).
            conn.setblocking(True)
            out = conn.fileno()
            while os.splice(fd, out, CHUNK):
                pass
    finally:
        conn.close()
        child.stdout.close()
        try:
            child.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


def serve(listener: socket.socket, mode: str, size: int) -> None:
    """The forked server: accept one connection, relay, exit (never return)."""
    status = 1
    try:
        listener.settimeout(60)
        conn, _ = listener.accept()
        listener.close()
        status = relay(conn, mode, size)
    except BaseException as exc:  # report, and never run the client's code in this process
        with contextlib.suppress(BaseException):
            print(f"relay_floor server: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        os._exit(status)


def run(mode: str, size: int) -> dict[str, Any]:
    started = time.perf_counter()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        serve(listener, mode, size)
    listener_address = listener.getsockname()
    received = 0
    connected = started
    try:
        sock = socket.create_connection(listener_address, timeout=60)
        listener.close()
        sock.settimeout(TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connected = time.perf_counter()
        sock.sendall(b"x")
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            while count := sock.recv_into(buffer):
                received += count
                os.write(null, view[:count])
        finally:
            os.close(null)
            sock.close()
    finally:
        _, wait_status = os.waitpid(pid, 0)  # the server ends: its socket or its child did
        status = os.waitstatus_to_exitcode(wait_status)
    done = time.perf_counter()
    return {"bytes": received, "exit_status": status,
            "connect": connected - started,
            "stream": done - connected,
            "cpu_server": cpu(resource.RUSAGE_CHILDREN), "cpu_client": cpu(resource.RUSAGE_SELF)}


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in MODES or not sys.argv[2].isdigit():
        raise SystemExit(f"usage: relay_floor.py {{{'|'.join(MODES)}}} SIZE")
    mode, size = sys.argv[1], int(sys.argv[2])
    result = run(mode, size)
    print(json.dumps(result))
    return 0 if result["exit_status"] == 0 and result["bytes"] == size else 1


if __name__ == "__main__":
    sys.exit(main())
