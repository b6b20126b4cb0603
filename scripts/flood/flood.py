#!/usr/bin/env python3
"""Packet floods for netdiag's flood tests, as fast as this machine sends them, for a bounded time.
Run it inside a network namespace the test made (198.18.0.0/15 addresses only); it refuses any
other destination, and any duration over 120 s.

  flood.py syn SRC DST PORT SECONDS     TCP SYNs through a raw socket (IP_HDRINCL), source ports
                                        cycling over 4,096; the other side answers each with a RST
                                        (closed port) or a SYN-ACK (listener)
  flood.py rst SRC DST PORT SECONDS     TCP RSTs likewise
  flood.py connect DST PORT SECONDS [--inflight N] [--timeout-ms T]
                                        the kernel's own SYNs: non-blocking connect()s, N at once,
                                        each closed when it completes or after T ms; counts the
                                        outcomes by errno
  flood.py dns-serve PORT               answers every query on UDP PORT with the same answer
                                        blasted back --burst times (the "answer flood"), prints
                                        {"ready": true}; ends when stdin closes
  flood.py dns SERVER SECONDS [--names N]
                                        DNS answers at the highest rate: one connected UDP socket
                                        sends a query for one of N names, the server's answers are
                                        read as they come

Each prints one JSON line when done: what it sent (and got), the seconds it ran and the rate.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import random
import select
import socket
import struct
import sys
import time

LAB_NET = ipaddress.ip_network("198.18.0.0/15")
MAX_SECONDS = 120.0
POOL = 4096


def _lab(addr: str) -> str:
    if ipaddress.ip_address(addr) not in LAB_NET:
        sys.exit(f"flood: {addr} is outside {LAB_NET}: refused")
    return addr


def _seconds(s: float) -> float:
    if not 0 < s <= MAX_SECONDS:
        sys.exit(f"flood: duration {s} s: 0 < seconds <= {MAX_SECONDS}")
    return s


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_packet(src: str, dst: str, sport: int, dport: int, flags: int, seq: int) -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 64240, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.randrange(65536), 0, 64,
                     socket.IPPROTO_TCP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp


def raw_flood(kind: str, src: str, dst: str, port: int, seconds: float) -> dict:
    flags = {"syn": 0x02, "rst": 0x04}[kind]
    pool = [tcp_packet(src, dst, 20000 + i, port, flags, random.randrange(1 << 32)) for i in range(POOL)]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)   # IP_HDRINCL implied
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    to = (dst, 0)
    sent = errors = 0
    sendto = s.sendto
    t0 = time.monotonic()
    end = t0 + seconds
    while True:
        for pkt in pool[:512]:
            try:
                sendto(pkt, to)
                sent += 1
            except OSError:             # ENOBUFS: the queue is full; count and go on
                errors += 1
        pool = pool[512:] + pool[:512]
        if time.monotonic() >= end:
            break
    took = time.monotonic() - t0
    s.close()
    return {"kind": kind, "sent": sent, "send_errors": errors, "seconds": round(took, 3),
            "rate": round(sent / took)}


def connect_flood(dst: str, port: int, seconds: float, inflight: int, timeout_ms: float) -> dict:
    ep = select.epoll()
    socks: dict[int, tuple[socket.socket, float]] = {}
    outcome: dict[str, int] = {}
    attempts = established = 0
    t0 = time.monotonic()
    end = t0 + seconds
    tmo = timeout_ms / 1000

    def start():
        nonlocal attempts
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        attempts += 1
        err = s.connect_ex((dst, port))
        if err not in (0, errno.EINPROGRESS):
            name = errno.errorcode.get(err, str(err))
            outcome[name] = outcome.get(name, 0) + 1
            s.close()
            return
        socks[s.fileno()] = (s, time.monotonic() + tmo)
        ep.register(s.fileno(), select.EPOLLOUT)

    def done(fd, name):
        nonlocal established
        s, _ = socks.pop(fd)
        ep.unregister(fd)
        s.close()
        if name == "ok":
            established += 1
        else:
            outcome[name] = outcome.get(name, 0) + 1

    while True:
        now = time.monotonic()
        if now < end:
            while len(socks) < inflight:
                start()
        elif not socks:
            break
        for fd, _ev in ep.poll(0.01):
            s = socks[fd][0]
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            done(fd, "ok" if err == 0 else errno.errorcode.get(err, str(err)))
        now = time.monotonic()
        for fd in [fd for fd, (_s, dl) in socks.items() if dl <= now]:
            done(fd, "TIMEOUT")        # closed by us while still connecting
    took = time.monotonic() - t0
    ep.close()
    return {"kind": "connect", "attempts": attempts, "established": established, "failed": outcome,
            "seconds": round(took, 3), "rate": round(attempts / took)}


def _dns_query(name: str, txid: int) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def _dns_answer(query: bytes, addr: bytes) -> bytes:
    """The answer to ``query``: one A record (TTL 30) pointing back at the question's name."""
    txid = query[:2]
    qend = query.index(b"\0", 12) + 5
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + addr
    return txid + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + query[12:qend] + rr


def dns_serve(port: int, burst: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.setblocking(False)
    print(json.dumps({"ready": True}), flush=True)
    answered = 0
    addr = socket.inet_aton("198.18.7.1")
    while True:
        r, _, _ = select.select([s, sys.stdin], [], [], 1.0)
        if sys.stdin in r and not sys.stdin.readline():
            break
        if s not in r:
            continue
        for _ in range(64):
            try:
                q, peer = s.recvfrom(2048)
            except BlockingIOError:
                break
            ans = _dns_answer(q, addr)
            for _ in range(burst):
                try:
                    s.sendto(ans, peer)
                    answered += 1
                except OSError:
                    break
    print(json.dumps({"answered": answered}), flush=True)


def dns_flood(server: str, seconds: float, names: int) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect((server, 53))
    s.setblocking(False)
    pool = [_dns_query(f"n{i}.flood.lab.test", i & 0xFFFF) for i in range(names)]
    sent = got = 0
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    while time.monotonic() < end:
        try:
            s.send(pool[i % names])
            sent += 1
            i += 1
        except BlockingIOError:
            pass
        for _ in range(64):
            try:
                s.recv(2048)
                got += 1
            except BlockingIOError:
                break
    took = time.monotonic() - t0
    s.close()
    return {"kind": "dns", "queries": sent, "answers": got, "seconds": round(took, 3),
            "rate": round(got / took)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for k in ("syn", "rst"):
        p = sub.add_parser(k)
        p.add_argument("src")
        p.add_argument("dst")
        p.add_argument("port", type=int)
        p.add_argument("seconds", type=float)
    p = sub.add_parser("connect")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("--inflight", type=int, default=256)
    p.add_argument("--timeout-ms", type=float, default=200.0)
    p = sub.add_parser("dns-serve")
    p.add_argument("port", type=int, nargs="?", default=53)
    p.add_argument("--burst", type=int, default=8)
    p = sub.add_parser("dns")
    p.add_argument("server")
    p.add_argument("seconds", type=float)
    p.add_argument("--names", type=int, default=4096)
    a = ap.parse_args(argv)
    if a.cmd in ("syn", "rst"):
        out = raw_flood(a.cmd, _lab(a.src), _lab(a.dst), a.port, _seconds(a.seconds))
    elif a.cmd == "connect":
        out = connect_flood(_lab(a.dst), a.port, _seconds(a.seconds), max(1, min(a.inflight, 4096)),
                            a.timeout_ms)
    elif a.cmd == "dns-serve":
        dns_serve(a.port, max(1, min(a.burst, 64)))
        return
    else:
        out = dns_flood(_lab(a.server), _seconds(a.seconds), max(1, min(a.names, 65536)))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
