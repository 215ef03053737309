"""A floor for bench/suite.py's PTY row (8): a remote terminal with no protocol, in Python.

    python bench/pty_relay.py pair [PROGRAM [ARG0]]   # bash as a login shell (-bash) by default

bench/pty_relay.c in Python, for what the language costs with nothing of rexec's: the process
started is the client, on the caller's terminal (put in raw mode). It listens on a free
127.0.0.1 port and forks the server (a new session, stdin, stdout and stderr on /dev/null),
which connects back, starts PROGRAM on a new PTY (pty.fork) and relays bytes between the PTY's
master and the socket, as the client does between its terminal and the socket: blocking
sockets, select(), one read and one write a hop. No framing, no authentication, no asyncio.

The shell's end of file (EIO on the master) ends the server, which closes the socket and reaps
the shell; the client restores its terminal, reaps the server and exits 0 (1 on a failure).
"""

from __future__ import annotations

import os
import pty
import select
import socket
import sys
import termios
import tty

READ_SIZE = 65536


def relay(a_in: int, a_out: int, sock: socket.socket) -> None:
    """Move bytes both ways until either side ends: a_in -> sock, sock -> a_out."""
    s = sock.fileno()
    while True:
        ready, _, _ = select.select([a_in, s], [], [])
        if a_in in ready:
            try:
                data = os.read(a_in, READ_SIZE)
            except OSError:  # EIO: the shell's side of its PTY is closed everywhere
                return
            if not data:
                return
            sock.sendall(data)
        if s in ready:
            data = sock.recv(READ_SIZE)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(a_out, view):]


def server(port: int, program: str, arg0: str) -> int:
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    shell, master = pty.fork()
    if shell == 0:
        try:
            os.execvp(program, [arg0])  # noqa: S606 - the shell under test, by name
        finally:
            os._exit(127)
    try:
        relay(master, master, sock)
    finally:
        sock.close()
        os.close(master)
        os.waitpid(shell, 0)
    return 0


def main(args: list[str]) -> int:
    if args[:1] != ["pair"]:
        print(__doc__, file=sys.stderr)
        return 2
    program = args[1] if len(args) > 1 else "bash"
    arg0 = args[2] if len(args) > 2 else "-bash"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    srv = os.fork()
    if srv == 0:
        listener.close()
        try:
            status = server(port, program, arg0)
        except BaseException:
            status = 1
        os._exit(status)
    sock, _ = listener.accept()
    listener.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    saved = termios.tcgetattr(0) if os.isatty(0) else None
    if saved is not None:
        tty.setraw(0)
    try:
        relay(0, 1, sock)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        sock.close()
    _, status = os.waitpid(srv, 0)
    return 0 if os.waitstatus_to_exitcode(status) == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
