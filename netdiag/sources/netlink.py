"""A plain netlink request/response socket, for the per-namespace sources that stay open.

A socket keeps the network namespace it was created in, so one created inside a namespace (a
thread that ``setns()``-ed there, ``namespaces.NetnsExecutor``) answers for that namespace from
any thread, every interval, without entering it again. No pyroute2 here: its sockets are tied to
the thread that made them and parse every attribute into objects; a request here is one
``send`` and a few ``recv_into`` calls, and the caller unpacks only the fields it reads.
"""
from __future__ import annotations

import os
import socket
import struct
import threading

from netdiag.errors import NetdiagError

NLMSG_HDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
NLA_HDR = struct.Struct("=HH")
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLA_TYPE_MASK = 0x3FFF
RECV_SIZE = 1 << 16
TIMEOUT_S = 5.0                         # a request the kernel never answers fails, not hangs


class NetlinkError(NetdiagError, OSError):
    """A netlink request the kernel refused (the message names the request and the errno); an
    OSError too, like the socket errors around it."""


class NetlinkSocket:
    """One ``AF_NETLINK`` socket of protocol ``proto``, in the namespace of the thread that
    created it. ``request`` sends one message and returns the payloads of the replies."""

    def __init__(self, proto: int):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
        self.sock.bind((0, 0))
        self.sock.settimeout(TIMEOUT_S)
        self._seq = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def request(self, msg_type: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        """[(message type, payload)] answering one request (a dump's parts until NLMSG_DONE)."""
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        self.sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(body), msg_type, flags | NLM_F_REQUEST, seq, 0) + body)
        dump = bool(flags & NLM_F_DUMP)
        out: list[tuple[int, bytes]] = []
        buf = _buffer()
        view = memoryview(buf)
        while True:
            try:
                n = self.sock.recv_into(buf)
            except TimeoutError:
                raise NetlinkError(f"{what}: no answer in {TIMEOUT_S:.0f} s") from None
            data = view[:n]
            off = 0
            while off + NLMSG_HDR.size <= n:
                ln, typ, _, mseq, _ = NLMSG_HDR.unpack_from(data, off)
                if ln < NLMSG_HDR.size:
                    raise NetlinkError(f"{what}: malformed netlink reply")
                if mseq != seq:                     # a stale reply of an interrupted request
                    off += (ln + 3) & ~3
                    continue
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + NLMSG_HDR.size)[0]
                    if err:
                        raise NetlinkError(f"{what}: {os.strerror(err)}")
                    return out                      # an ACK
                out.append((typ, bytes(data[off + NLMSG_HDR.size:off + ln])))
                if not dump:
                    return out                      # one answer (ctnetlink marks it MULTI anyway)
                off += (ln + 3) & ~3


_local = threading.local()


def _buffer() -> bytearray:
    """This thread's receive buffer: one per thread, not one per socket (a node's hundreds of
    namespaces hold two sockets each)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(RECV_SIZE)
    return buf


def attrs(payload: bytes, start: int) -> dict[int, bytes]:
    """{attribute type: value bytes} of the netlink attributes from ``start`` on (one level)."""
    out = {}
    off, n = start, len(payload)
    while off + NLA_HDR.size <= n:
        ln, typ = NLA_HDR.unpack_from(payload, off)
        if ln < NLA_HDR.size:
            break
        out[typ & NLA_TYPE_MASK] = payload[off + NLA_HDR.size:off + ln]
        off += (ln + 3) & ~3
    return out
