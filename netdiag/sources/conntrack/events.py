"""ctnetlink event subscription, one socket per namespace.

pyroute2 0.9.7 has no conntrack event API (``NFCTSocket`` dumps, reads stats and edits
entries), so the event socket is a plain ``AF_NETLINK``/``NETLINK_NETFILTER`` socket joined to
pyroute2's ``NFNLGRP_CONNTRACK_NEW`` and ``NFNLGRP_CONNTRACK_DESTROY`` groups (not UPDATE: SNAT
accounting needs only births and deaths, which is 2 events per flow instead of the 5-7 that
``conntrack -E`` receives). Messages are decoded by ``ctmsg.decode_fast``.

A receive buffer overrun (``ENOBUFS``) means the kernel dropped events for this socket: it is
counted in ``overruns`` and the caller re-reads the table with a dump.

Anything with the same ``open/drain/fileno/close`` shape can stand in for ``NetlinkEvents``
(the kprobe source on ``nf_nat_setup_info`` will), see ``ConntrackMonitor(event_source=...)``.
"""
from __future__ import annotations

import errno
import socket

from pyroute2.netlink import NETLINK_NETFILTER
from pyroute2.netlink.nfnetlink import NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW

from netdiag.sources.conntrack.ctmsg import (
    MSG_DELETE,
    MSG_NEW,
    NLM_F_CREATE,
    decode_fast,
    entry_key,
    fast_fields,
    snat_of,
)

SO_RCVBUFFORCE = 33
GROUPS = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
DEFAULT_RCVBUF = 8 << 20
RECV_SIZE = 65536


class NetlinkEvents:
    """Events of one namespace. ``open`` runs inside the namespace (``NetnsExecutor.call``)."""

    mode = "netlink"

    def __init__(self, rcvbuf: int = DEFAULT_RCVBUF):
        self.rcvbuf = rcvbuf
        self.sock: socket.socket | None = None
        self.overruns = 0
        self.events = 0
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)

    def open(self) -> "NetlinkEvents":
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                          NETLINK_NETFILTER)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except OSError:                       # without CAP_NET_ADMIN: capped by rmem_max
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        s.bind((0, GROUPS))
        self.sock = s
        return self

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock else -1

    def drain(self, limit: int = 1 << 30) -> list:
        """Every event queued now (non-blocking), as ``[(is_new, entry key)]``: NEW events of
        source-NATed entries and every DESTROY (the table ignores the ones it never saw)."""
        out = []
        append = out.append
        recv_into, view, buf = self.sock.recv_into, self._view, self._buf
        n_msgs = 0
        while n_msgs < limit:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            if n == 0:
                break
            n_msgs += 1
            f = fast_fields(buf, n)
            if f is not None:
                msg_type, flags, src, sport, ekey = f
                if msg_type == MSG_DELETE:
                    append((False, ekey))
                elif msg_type == MSG_NEW and flags & NLM_F_CREATE and (ekey[1] != src or ekey[4] != sport):
                    append((True, ekey))
                continue
            for rec in decode_fast(view[:n]):       # IPv6, ICMP, or anything unusual
                if rec.kind == "destroy":
                    append((False, entry_key(rec)))
                elif rec.kind == "new" and snat_of(rec) is not None:
                    append((True, entry_key(rec)))
        self.events += n_msgs
        return out

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
