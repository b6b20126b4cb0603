"""Crafted IPv4/IPv6 UDP/TCP packets carrying DNS messages (dnslib) for the unit tests."""
import socket
import struct

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSRecord


def ipv4(src, dst, proto, l4, frag=0):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr + l4


def ipv6(src, dst, proto, l4):
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, socket.inet_pton(socket.AF_INET6, src),
                      socket.inet_pton(socket.AF_INET6, dst))
    return hdr + l4


def udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport, dport, payload, flags=0x18):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + payload


def query(name, qid=0x1234, qtype="A"):
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    return bytes(q.pack())


def answer(name, addrs=(), qid=0x1234, cnames=(), rcode=None, ttl=30, qtype="A"):
    """cnames: [(alias, target), ...]; addrs: [(owner, ip), ...] or plain ips owned by name."""
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    r = q.reply()
    for alias, target in cnames:
        r.add_answer(RR(alias, QTYPE.CNAME, rdata=CNAME(target), ttl=ttl))
    for a in addrs:
        owner, ip = a if isinstance(a, tuple) else (name, a)
        if ":" in ip:
            r.add_answer(RR(owner, QTYPE.AAAA, rdata=AAAA(ip), ttl=ttl))
        else:
            r.add_answer(RR(owner, QTYPE.A, rdata=A(ip), ttl=ttl))
    if rcode:
        r.header.rcode = getattr(RCODE, rcode)
    return bytes(r.pack())


def tcp_framed(*msgs):
    return b"".join(struct.pack("!H", len(m)) + m for m in msgs)
