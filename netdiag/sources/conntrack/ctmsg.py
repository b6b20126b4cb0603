"""ctnetlink messages -> flat records (pure functions, no sockets).

Two decoders give the same record:

* ``decode_fast(buf)`` walks the netlink attributes with ``struct`` and reads only what SNAT
  accounting needs (both tuples, status, id). It is the hot path: at tens of thousands of events
  per second pyroute2's general-purpose decoder costs several times more CPU per message.
* ``from_pyroute2(msg)`` takes a message pyroute2's ``NFCTSocket`` already decoded (dumps).

``tests/unit/test_conntrack_unit.py`` checks that both agree on captured kernel messages.
"""
from __future__ import annotations

import socket
import struct
from typing import Iterator, NamedTuple

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2
MSG_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
MSG_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
NLM_F_CREATE = 0x400

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_ID, CTA_ZONE = 1, 2, 3, 12, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_TYPE_MASK = 0x3FFF

IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5

_HDR = struct.Struct("=IHHII")       # nlmsghdr
_NLA = struct.Struct("=HH")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 33: "dccp"}


class Tuple(NamedTuple):
    src: str
    dst: str
    proto: int
    sport: int
    dport: int


class CtRecord(NamedTuple):
    kind: str            # "new" | "destroy" | "entry" (from a dump)
    ct_id: int | None
    orig: Tuple
    reply: Tuple
    status: int
    zone: int


def _ip(data: bytes) -> str:
    if len(data) == 4:
        return socket.inet_ntop(socket.AF_INET, data)
    return socket.inet_ntop(socket.AF_INET6, data)


def _attrs(buf, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) for each attribute in buf[start:end]."""
    off = start
    while off + 4 <= end:
        length, typ = _NLA.unpack_from(buf, off)
        if length < 4:
            return
        yield typ & NLA_TYPE_MASK, off + 4, off + length
        off += (length + 3) & ~3


def _tuple(buf, start: int, end: int) -> Tuple:
    src = dst = ""
    proto = sport = dport = 0
    for typ, s, e in _attrs(buf, start, end):
        if typ == CTA_TUPLE_IP:
            for t2, s2, e2 in _attrs(buf, s, e):
                if t2 in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = _ip(bytes(buf[s2:e2]))
                elif t2 in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = _ip(bytes(buf[s2:e2]))
        elif typ == CTA_TUPLE_PROTO:
            for t2, s2, e2 in _attrs(buf, s, e):
                if t2 == CTA_PROTO_NUM:
                    proto = buf[s2]
                elif t2 == CTA_PROTO_SRC_PORT:
                    sport = _BE16.unpack_from(buf, s2)[0]
                elif t2 == CTA_PROTO_DST_PORT:
                    dport = _BE16.unpack_from(buf, s2)[0]
    return Tuple(src, dst, proto, sport, dport)


EMPTY = Tuple("", "", 0, 0, 0)


def decode_one(buf, off: int, length: int, msg_type: int, flags: int) -> CtRecord | None:
    if msg_type == MSG_NEW:
        kind = "new" if flags & NLM_F_CREATE else "entry"
    elif msg_type == MSG_DELETE:
        kind = "destroy"
    else:
        return None
    orig = reply = EMPTY
    status = zone = 0
    ct_id = None
    for typ, s, e in _attrs(buf, off + 20, off + length):   # 16 nlmsghdr + 4 nfgenmsg
        if typ == CTA_TUPLE_ORIG:
            orig = _tuple(buf, s, e)
        elif typ == CTA_TUPLE_REPLY:
            reply = _tuple(buf, s, e)
        elif typ == CTA_STATUS:
            status = _BE32.unpack_from(buf, s)[0]
        elif typ == CTA_ID:
            ct_id = _BE32.unpack_from(buf, s)[0]
        elif typ == CTA_ZONE:
            zone = _BE16.unpack_from(buf, s)[0]
    return CtRecord(kind, ct_id, orig, reply, status, zone)


def decode_fast(buf) -> list[CtRecord]:
    """Every ctnetlink conntrack record in one datagram (events arrive one per datagram)."""
    out = []
    off, n = 0, len(buf)
    while off + 16 <= n:
        length, msg_type, flags, _seq, _pid = _HDR.unpack_from(buf, off)
        if length < 16:
            break
        rec = decode_one(buf, off, length, msg_type, flags)
        if rec is not None:
            out.append(rec)
        off += (length + 3) & ~3
    return out


def _pr_tuple(t) -> Tuple:
    if not t:
        return EMPTY
    ip = t.get_attr("CTA_TUPLE_IP") or {}
    pr = t.get_attr("CTA_TUPLE_PROTO") or {}

    def g(a, k):
        return a.get_attr(k) if a else None

    src = g(ip, "CTA_IP_V4_SRC") or g(ip, "CTA_IP_V6_SRC") or ""
    dst = g(ip, "CTA_IP_V4_DST") or g(ip, "CTA_IP_V6_DST") or ""
    return Tuple(src, dst, g(pr, "CTA_PROTO_NUM") or 0, g(pr, "CTA_PROTO_SRC_PORT") or 0,
                 g(pr, "CTA_PROTO_DST_PORT") or 0)


def from_pyroute2(msg, kind: str = "entry") -> CtRecord:
    """A record from a pyroute2 ``nfct_msg`` (as yielded by ``NFCTSocket.dump()``)."""
    return CtRecord(kind, msg.get_attr("CTA_ID"), _pr_tuple(msg.get_attr("CTA_TUPLE_ORIG")),
                    _pr_tuple(msg.get_attr("CTA_TUPLE_REPLY")), msg.get_attr("CTA_STATUS") or 0,
                    msg.get_attr("CTA_ZONE") or 0)


# --- hot path ---------------------------------------------------------------------------------
# An IPv4 TCP/UDP/SCTP/DCCP conntrack message always starts with the same attribute skeleton
# (ctnetlink_dump_tuples: CTA_TUPLE_ORIG{IP{SRC,DST},PROTO{NUM,SPORT,DPORT}}, then the same for
# CTA_TUPLE_REPLY), so its fields sit at fixed offsets. When the skeleton's headers match, one
# precompiled unpack reads everything; otherwise the generic walk above is used.
_SKEL_ORIG = struct.pack("=HHHH", 52, 0x8000 | CTA_TUPLE_ORIG, 20, 0x8000 | CTA_TUPLE_IP)
_SKEL_REPLY = struct.pack("=HHHH", 52, 0x8000 | CTA_TUPLE_REPLY, 20, 0x8000 | CTA_TUPLE_IP)
_SKEL_PROTO = struct.pack("=HH", 28, 0x8000 | CTA_TUPLE_PROTO)
#                 src   sport    rsrc    rdst  proto   rsport  rdport
_FIXED = struct.Struct("=12x4s24x2s22x4s4x4s8xB7x2s6x2s")   # from offset 20 to 122


def fast_fields(buf, n: int):
    """(msg_type, flags, orig_src, orig_sport, (r_src, r_dst, proto, r_sport, r_dport)) with raw
    bytes, or None when the datagram is not one fixed-layout IPv4 message."""
    if n < 124:
        return None
    length, msg_type, flags = _HDR3.unpack_from(buf, 0)
    if length != n or buf[20:28] != _SKEL_ORIG or buf[72:80] != _SKEL_REPLY \
            or buf[44:48] != _SKEL_PROTO or buf[96:100] != _SKEL_PROTO:
        return None
    src, sport, rsrc, rdst, proto, rsport, rdport = _FIXED.unpack_from(buf, 20)
    return msg_type, flags, src, sport, (rsrc, rdst, proto, rsport, rdport)


_HDR3 = struct.Struct("=IHH")


def entry_key(rec: CtRecord) -> tuple:
    """The same key ``fast_fields`` gives (the reply tuple, raw): unique per live entry."""
    r = rec.reply
    fam = socket.AF_INET6 if ":" in r.src else socket.AF_INET
    return (socket.inet_pton(fam, r.src), socket.inet_pton(fam, r.dst), rec.orig.proto,
            _BE16.pack(r.sport), _BE16.pack(r.dport))


def is_snat_raw(src: bytes, sport: bytes, ekey: tuple) -> bool:
    return ekey[1] != src or ekey[4] != sport


def snat_of(rec: CtRecord) -> tuple[str, str, int, str, int] | None:
    """(nat_ip, dst_ip, dst_port, proto_name, nat_port) when ``rec`` is source-NATed, else None.

    Source NAT shows as the reply tuple not pointing back at the original source: the reply's
    destination is the NAT source address and its destination port the allocated port. The
    destination is the reply's source, i.e. the real peer after any DNAT (a Service VIP is
    already translated to the pod there).
    """
    o, r = rec.orig, rec.reply
    if not r.dst or (r.dst == o.src and r.dport == o.sport):
        return None
    return r.dst, r.src, r.sport, PROTO_NAMES.get(o.proto, str(o.proto)), r.dport
