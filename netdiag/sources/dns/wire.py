"""Decoding what the capture sockets read: IP + UDP/TCP headers by hand (fixed offsets, cheap),
DNS messages with dnslib. Pure functions, tested on crafted packets without root."""
from __future__ import annotations

import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

UDP, TCP = 17, 6
T_A, T_AAAA, T_CNAME = 1, 28, 5


@dataclass(frozen=True)
class Packet:
    proto: int          # 6 or 17
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes      # the UDP payload, or the TCP segment's data


def decode_ip(pkt: bytes) -> Packet | None:
    """A network-layer packet (what a SOCK_DGRAM packet socket returns) -> Packet, or None
    when it is not a complete IPv4/IPv6 UDP/TCP header."""
    if not pkt:
        return None
    ver = pkt[0] >> 4
    if ver == 4:
        if len(pkt) < 20:
            return None
        ihl = (pkt[0] & 0xF) * 4
        total = struct.unpack_from("!H", pkt, 2)[0]
        proto = pkt[9]
        src, dst = socket.inet_ntop(socket.AF_INET, pkt[12:16]), socket.inet_ntop(socket.AF_INET, pkt[16:20])
        off = ihl
        end = min(total, len(pkt)) if total else len(pkt)    # GSO packets may carry total 0
    elif ver == 6:
        if len(pkt) < 40:
            return None
        plen = struct.unpack_from("!H", pkt, 4)[0]
        proto = pkt[6]
        src, dst = socket.inet_ntop(socket.AF_INET6, pkt[8:24]), socket.inet_ntop(socket.AF_INET6, pkt[24:40])
        off = 40
        end = min(40 + plen, len(pkt)) if plen else len(pkt)
    else:
        return None
    if proto == UDP:
        if end < off + 8:
            return None
        sport, dport = struct.unpack_from("!HH", pkt, off)
        return Packet(UDP, src, sport, dst, dport, pkt[off + 8:end])
    if proto == TCP:
        if end < off + 20:
            return None
        sport, dport = struct.unpack_from("!HH", pkt, off)
        doff = (pkt[off + 12] >> 4) * 4
        return Packet(TCP, src, sport, dst, dport, pkt[off + doff:end])
    return None


def tcp_messages(payload: bytes) -> tuple[list[bytes], int]:
    """DNS over TCP: each message has a 2-byte length prefix (RFC 1035 4.2.2). Returns the
    complete messages in this segment and the number of bytes left over (a message split
    over segments, which is not reassembled: the caller counts it)."""
    out, i, n = [], 0, len(payload)
    while i + 2 <= n:
        ln = struct.unpack_from("!H", payload, i)[0]
        if ln == 0 or i + 2 + ln > n:
            break
        out.append(payload[i + 2:i + 2 + ln])
        i += 2 + ln
    return out, n - i


@dataclass
class Message:
    """The id-free content of a DNS message (so it can be cached across ids)."""
    qr: bool
    rcode: str                       # NOERROR, NXDOMAIN, SERVFAIL, ...
    qname: str | None                # lower case, no trailing dot
    qtype: str | None
    addrs: list = field(default_factory=list)     # (owner, ip, ttl)
    cnames: dict = field(default_factory=dict)    # alias -> (target, ttl)
    truncated: bool = False

    def chain(self, owner: str) -> list[str]:
        """The CNAME chain from the question to ``owner`` (inclusive), e.g.
        ['alias.lab.test', 'api.lab.test']; just [owner] without aliases."""
        if not self.qname:
            return [owner]
        path, name = [self.qname], self.qname
        for _ in range(16):
            if name == owner or name not in self.cnames:
                break
            name = self.cnames[name][0]
            path.append(name)
        return path if path[-1] == owner else [owner]


def _name(label) -> str:
    return str(label).rstrip(".").lower()


def parse(msg: bytes) -> Message | None:
    try:
        r = DNSRecord.parse(msg)
    except (DNSError, struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None
    q = r.questions[0] if r.questions else None
    m = Message(qr=bool(r.header.qr), rcode=RCODE.get(r.header.rcode, str(r.header.rcode)),
                qname=_name(q.qname) if q else None, qtype=QTYPE.get(q.qtype, str(q.qtype)) if q else None,
                truncated=bool(r.header.tc))
    for rr in r.rr:
        if rr.rtype in (T_A, T_AAAA):
            m.addrs.append((_name(rr.rname), str(rr.rdata), rr.ttl))
        elif rr.rtype == T_CNAME:
            m.cnames[_name(rr.rname)] = (_name(rr.rdata.label), rr.ttl)
    return m


class ParseCache:
    """dnslib parses at tens of microseconds a message; answers to the same question from a
    cache differ only in the id (bytes 0-1), so messages are parsed once per distinct body."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, msg: bytes) -> Message | None:
        body = bytes(msg[2:])
        m = self._d.get(body)
        if m is not None:
            self.hits += 1
            self._d.move_to_end(body)
            return m
        self.misses += 1
        m = parse(msg)
        if m is not None:
            self._d[body] = m
            if len(self._d) > self.size:
                self._d.popitem(last=False)
        return m


def msg_id(msg: bytes) -> int:
    return struct.unpack_from("!H", msg, 0)[0]
