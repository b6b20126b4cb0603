"""DNS capture at the socket calls (bpf/dns.c with -DND_DNS_SOCK): the default where it works.

The cgroup_skb programs run for every packet of every local socket and packet sockets see every
packet of a namespace, DNS or not: on a node busy with short connections, that is ten program
runs per connection (handshake, ACKs, FIN or RST, each way) for nothing. These two BTF-typed
tracepoints run once per *send or receive call* a socket completes (``sock:sock_send_length``,
``sock:sock_recv_length``, kernel 6.3+), and leave at once unless the socket talks to port 53:
a connection that carries no data runs none of them.

A DNS message is read from the calling thread's own buffer, found through the syscall's
arguments in its saved user registers (``bpf_task_pt_regs``): for that the syscall numbers and
the registers' names are per architecture (netdiag/kernel/dnsprog.py ``ARCHES``; only x86_64
here). Sends through io_uring or by kernel sockets have no such buffer and are not seen; neither
is a datagram read with ``MSG_PEEK`` until it is read for real.

Everything is per socket, so each message is seen once, in the namespace of the socket that
sent or read it: a lookup a pod makes through the node's routing namespace counts in the pod
only, and nothing forwarded or answered by a local server is mistaken for the node's own.

netdiag/kernel/dnsprog.py says whether the kernel and architecture allow it (``sock_cflags``)
and compiles and attaches in the loader child; ``cgcapture.RingCapture`` with ``kind="socket"``
holds the result and reads the rings. Here: the socket records' layout, after the record header
(bpf/nd_dns.h struct nd_dns_sk), and its decoding (``decode_sock``).
"""
from __future__ import annotations

import socket
import struct
from typing import NamedTuple

DIR_SEND, DIR_RECV = 3, 4                 # bpf/nd_dns.h ND_DNS_SEND / ND_DNS_RECV
SK_HDR = struct.Struct("<BBHHBx16s16sI4x")   # bpf/nd_dns.h struct nd_dns_sk, after the record header
PEER_GUESSED = 1                          # bpf/nd_dns.h ND_DNS_PEER_GUESSED


class SockRecord(NamedTuple):
    proto: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    guessed: bool       # raddr is where the socket's last query went (an unconnected UDP read)
    payload: bytes
    pid: int = 0        # the process that sent or read it


def decode_sock(data: bytes) -> SockRecord | None:
    """struct nd_dns_sk and the payload after it -> SockRecord, None when malformed."""
    if len(data) < SK_HDR.size:
        return None
    family, proto, lport, rport, flags, la, ra, pid = SK_HDR.unpack_from(data)
    if family not in (socket.AF_INET, socket.AF_INET6) or proto not in (6, 17):
        return None
    if family == socket.AF_INET:
        la, ra = la[:4], ra[:4]
    return SockRecord(proto, socket.inet_ntop(family, la), lport, socket.inet_ntop(family, ra), rport,
                      bool(flags & PEER_GUESSED), data[SK_HDR.size:], pid)
