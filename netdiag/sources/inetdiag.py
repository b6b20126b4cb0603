"""Socket snapshots per network namespace through inet_diag, and the TcpExt counters of
/proc/net/netstat.

``DiagSocket`` and ``NetstatFile`` are created once inside a namespace and read from any thread
afterwards: a netlink socket keeps the namespace it was created in, and a procfs ``net/`` file
keeps the namespace of the thread that opened it (each read regenerates the text from that
namespace's counters).
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from netdiag.sources.netlink import NLM_F_DUMP, NetlinkSocket

TCP_ESTABLISHED, TCP_LISTEN = 1, 10
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid
REQ = struct.Struct("=BBBxI48x")
# struct inet_diag_msg: family, state, timer, retrans; sockid (sport, dport big-endian, src,
# dst 16 bytes each, if, cookie); expires, rqueue, wqueue, uid, inode
MSG = struct.Struct("=BBBB2H16s16s4x8xIIIII")


@dataclass(frozen=True)
class Sock:
    family: int          # 4 / 6
    state: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    rqueue: int          # LISTEN: current accept queue; else bytes unread
    wqueue: int          # LISTEN: backlog (max accept queue)
    inode: int = 0       # the socket's inode (who holds it: /proc/<pid>/fd)


class DiagSocket:
    """An inet_diag socket of the namespace it was created in."""

    def __init__(self):
        self.nl = NetlinkSocket(NETLINK_SOCK_DIAG)

    def dump(self, states_mask: int) -> list[Sock]:
        """TCP sockets (IPv4 and IPv6) in the given states."""
        out = []
        for fam, v in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            body = REQ.pack(fam, socket.IPPROTO_TCP, 0, states_mask)
            alen = 4 if fam == socket.AF_INET else 16
            for _, payload in self.nl.request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, body, "inet_diag dump"):
                _, state, _, _, sport, dport, src, dst, _, rq, wq, _, inode = MSG.unpack_from(payload)
                out.append(Sock(v, state, socket.inet_ntop(fam, src[:alen]), socket.ntohs(sport),
                                socket.inet_ntop(fam, dst[:alen]), socket.ntohs(dport), rq, wq, inode))
        return out

    def close(self) -> None:
        self.nl.close()


def dump(states_mask: int) -> list[Sock]:
    """TCP sockets of the calling thread's network namespace in the given states."""
    ds = DiagSocket()
    try:
        return ds.dump(states_mask)
    finally:
        ds.close()


class NetstatFile:
    """``/proc/net/netstat`` of the namespace the opening thread is in, kept open; ``read()``
    parses the TcpExt counters (``wanted``: only those) when the text changed since the previous
    read."""

    def __init__(self, path: str = "/proc/thread-self/net/netstat", wanted: tuple[str, ...] | None = None):
        self.wanted = wanted              # these counters only (None: every TcpExt counter)
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._raw = b""
        self._parsed: dict[str, int] = {}

    def read(self) -> dict[str, int]:
        raw = os.pread(self.fd, 1 << 16, 0)
        if raw != self._raw:
            self._raw, self._parsed = raw, parse_netstat(raw.decode(), self.wanted)
        return self._parsed

    def close(self) -> None:
        os.close(self.fd)


def parse_netstat(text: str, wanted: tuple[str, ...] | None = None) -> dict[str, int]:
    """The TcpExt counters of /proc/net/netstat text (``wanted``: only those present of these)."""
    lines = text.splitlines()
    out = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            names, values = head.split()[1:], vals.split()[1:]
            if wanted is None:
                out.update({n: int(v) for n, v in zip(names, values)})
            else:
                out.update({n: int(values[names.index(n)]) for n in wanted if n in names})
    return out


def netstat() -> dict[str, int]:
    """TcpExt counters of the calling thread's network namespace."""
    with open("/proc/thread-self/net/netstat") as f:
        return parse_netstat(f.read())


def outbound_established(socks: list[Sock]) -> list[Sock]:
    """ESTABLISHED sockets that are not on a local listening port: the ones this node opened."""
    listening = {(s.laddr, s.lport) for s in socks if s.state == TCP_LISTEN}
    wildcard_ports = {s.lport for s in socks if s.state == TCP_LISTEN and s.laddr in ("0.0.0.0", "::")}
    return [s for s in socks if s.state == TCP_ESTABLISHED
            and s.lport not in wildcard_ports and (s.laddr, s.lport) not in listening]
