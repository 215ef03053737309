"""UDP probe load for bench/suite.py's ping row; prints one JSON object.

    python bench/ping_load.py answer ADDR:PORT COUNT [--token-file F] [--window 32]
        COUNT probes, at most WINDOW unanswered at once (each waits 1 s at most), the server
        answering every one: {"sent", "received", "seconds"}. With a token, the probes are
        authenticated (one naming the identity first, for its salt; not counted).
    python bench/ping_load.py flood ADDR:PORT --source IP --rate R --seconds S
        R probes a second from IP for S seconds (bounded: R x S datagrams in all), replies
        read as they come: {"sent", "answered", "seconds"}.
    python bench/ping_load.py rtt ADDR:PORT --count K --interval I [--source IP]
        K probes one after another, I seconds apart, each waiting 1 s for its reply:
        {"rtts": [seconds...], "lost": n}.

Probes are rexec's own (rexec.discovery.datagrams), padded to 512 bytes as rexec pads them.
Every loop is bounded; only the address given is sent to.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

from rexec.discovery.datagrams import (
    RECEIVE_BUFFER,
    Probe,
    authenticated_probe,
    encode_probe,
    new_nonce,
    parse_reply,
)

IDENTITY = "default"
WAIT = 1.0


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _socket(source: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    if source:
        sock.bind((source, 0))
    return sock


def _salt(sock: socket.socket, to: tuple[str, int]) -> bytes:
    sock.settimeout(WAIT)
    for _ in range(5):
        sock.sendto(encode_probe(Probe(nonce=new_nonce(), identity=IDENTITY)), to)
        try:
            reply = parse_reply(sock.recv(RECEIVE_BUFFER))
        except TimeoutError:
            continue
        if reply.salt is not None:
            return bytes.fromhex(reply.salt)
    raise SystemExit(f"{to[0]}:{to[1]}: no salt in 5 tries")


def answer(to: tuple[str, int], count: int, token: str | None, window: int) -> dict[str, object]:
    sock = _socket(None)
    salt = _salt(sock, to) if token else b""

    def probe() -> bytes:
        if token:
            return encode_probe(authenticated_probe(token, salt, IDENTITY,
                                                    time.time_ns() // 1_000_000))
        return encode_probe(Probe(nonce=new_nonce()))

    sent = received = 0
    sock.settimeout(WAIT)
    started = time.perf_counter()
    while sent < min(window, count):
        sock.sendto(probe(), to)
        sent += 1
    while received < sent:
        try:
            data = sock.recv(RECEIVE_BUFFER)
        except TimeoutError:
            break  # the rest are lost: the caller sees received < sent
        reply = parse_reply(data)
        if token and not reply.auth:
            raise SystemExit(f"an unauthenticated reply to an authenticated probe: {reply}")
        received += 1
        if sent < count:
            sock.sendto(probe(), to)
            sent += 1
    return {"sent": sent, "received": received, "seconds": time.perf_counter() - started}


def flood(to: tuple[str, int], source: str, rate: float, seconds: float) -> dict[str, object]:
    sock = _socket(source)
    sock.setblocking(False)
    total = int(rate * seconds)
    data = encode_probe(Probe(nonce=new_nonce()))  # one probe, again and again, as a flood is
    sent = answered = 0
    started = time.perf_counter()
    while sent < total:
        due = started + sent / rate
        now = time.perf_counter()
        if now < due:
            time.sleep(min(due - now, 0.001))
            continue
        try:
            sock.sendto(data, to)
            sent += 1
        except BlockingIOError:
            pass
        try:
            while True:
                sock.recv(RECEIVE_BUFFER)
                answered += 1
        except BlockingIOError:
            pass
    end = time.perf_counter() + WAIT
    while time.perf_counter() < end:  # the last replies
        try:
            sock.recv(RECEIVE_BUFFER)
            answered += 1
        except BlockingIOError:
            time.sleep(0.01)
    return {"sent": sent, "answered": answered, "seconds": time.perf_counter() - started - WAIT}


def rtt(to: tuple[str, int], count: int, interval: float, source: str | None
        ) -> dict[str, object]:
    sock = _socket(source)
    rtts: list[float] = []
    lost = 0
    for _ in range(count):
        nonce = new_nonce()
        started = time.perf_counter()
        sock.sendto(encode_probe(Probe(nonce=nonce)), to)
        deadline = started + WAIT
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                lost += 1
                break
            sock.settimeout(left)
            try:
                data = sock.recv(RECEIVE_BUFFER)
            except TimeoutError:
                continue
            if parse_reply(data).nonce == nonce:
                rtts.append(time.perf_counter() - started)
                break
        time.sleep(max(0.0, started + interval - time.perf_counter()))
    return {"rtts": rtts, "lost": lost}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("answer")
    a.add_argument("address")
    a.add_argument("count", type=int)
    a.add_argument("--token-file", type=Path)
    a.add_argument("--window", type=int, default=32)
    f = sub.add_parser("flood")
    f.add_argument("address")
    f.add_argument("--source", required=True)
    f.add_argument("--rate", type=float, required=True)
    f.add_argument("--seconds", type=float, required=True)
    r = sub.add_parser("rtt")
    r.add_argument("address")
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--interval", type=float, required=True)
    r.add_argument("--source")
    args = parser.parse_args()
    to = _address(args.address)
    if not to[0].startswith("127."):
        parser.error("loopback addresses only")
    if args.mode == "answer":
        token = args.token_file.read_text().strip() if args.token_file else None
        result = answer(to, args.count, token, args.window)
    elif args.mode == "flood":
        if args.rate * args.seconds > 1_000_000:
            parser.error("a flood is bounded: rate x seconds at most 1,000,000")
        result = flood(to, args.source, args.rate, args.seconds)
    else:
        result = rtt(to, args.count, args.interval, args.source)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
