"""Socket snapshots per network namespace through inet_diag (pyroute2), and /proc/net/netstat."""
from __future__ import annotations

import socket
from dataclasses import dataclass

TCP_ESTABLISHED, TCP_LISTEN = 1, 10


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


def dump(states_mask: int) -> list[Sock]:
    """TCP sockets of the calling thread's network namespace in the given states."""
    from pyroute2 import DiagSocket

    out = []
    with DiagSocket() as ds:
        ds.bind()
        for fam, v in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            for m in ds.get_sock_stats(family=fam, states=states_mask):
                out.append(Sock(v, m["idiag_state"], m["idiag_src"], m["idiag_sport"], m["idiag_dst"],
                                m["idiag_dport"], m["idiag_rqueue"], m["idiag_wqueue"], m.get("idiag_inode") or 0))
    return out


def netstat() -> dict[str, int]:
    """TcpExt counters of the calling thread's network namespace."""
    with open("/proc/thread-self/net/netstat") as f:
        lines = f.read().splitlines()
    out = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        names, values = head.split()[1:], vals.split()[1:]
        prefix = head.split(":")[0]
        if prefix == "TcpExt":
            out.update({n: int(v) for n, v in zip(names, values)})
    return out


def outbound_established(socks: list[Sock]) -> list[Sock]:
    """ESTABLISHED sockets that are not on a local listening port: the ones this node opened."""
    listening = {(s.laddr, s.lport) for s in socks if s.state == TCP_LISTEN}
    wildcard_ports = {s.lport for s in socks if s.state == TCP_LISTEN and s.laddr in ("0.0.0.0", "::")}
    return [s for s in socks if s.state == TCP_ESTABLISHED
            and s.lport not in wildcard_ports and (s.laddr, s.lport) not in listening]
