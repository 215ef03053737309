"""TCP tuning and the I/O sizes both ends share."""

from __future__ import annotations

import contextlib
import socket

KEEPALIVE = 30.0
"""Seconds of silence before TCP keepalive probes start (default, both sides)."""

PROBES = 3
READ_SIZE = 256 * 1024
STREAM_LIMIT = 1024 * 1024


def tune(sock: socket.socket, keepalive: float = KEEPALIVE) -> None:
    """TCP_NODELAY (frames are small and latency matters), and dead-peer detection.

    A peer that vanished without a FIN or RST (power loss, a cut cable, a dropped NAT entry) is
    found by keepalive probes when the connection is idle: after ``keepalive`` seconds, then
    PROBES probes ``keepalive / 3`` seconds apart. TCP_USER_TIMEOUT bounds the same wait while
    data is unacknowledged (a peer that vanished mid-stream), which keepalive does not cover.
    ``keepalive`` 0 turns both off.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive <= 0:
        return
    interval = max(1, int(keepalive / 3))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), max(1, int(keepalive))),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), PROBES),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None),
         int((keepalive + interval * PROBES) * 1000)),
    ]
    for level, name, value in options:
        if name is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, name, value)
