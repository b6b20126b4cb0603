"""DNS capture through cgroup_skb programs (bpf/dns.c) instead of packet sockets.

A packet socket in every namespace makes the kernel clone every packet the namespace sends and
run a filter on every packet it receives, DNS or not. The cgroup_skb programs run only for local
sockets' packets, clone nothing, and copy DNS packets alone into a ring buffer with the sending
or receiving socket's namespace cookie. They attach through bpf_links to the root of the cgroup
v2 hierarchy (so every cgroup below it, every container, is covered) and detach when the last
link fd closes: a killed netdiag leaves nothing attached.

``RingCapture`` has the programs compiled and attached in the loader child (netdiag/kernel/loader.py,
with netdiag/kernel/dnsprog.py), this path's or the socket path's (sockcapture.py, whose records
``decode`` also frames), and reads their per-CPU ring buffers in this process; ``cgroup2_root()``
says where this path attaches, or why it cannot. ``decode`` reads the record header (bpf/nd_dns.h).
"""
from __future__ import annotations

import socket
import struct
from pathlib import Path

from netdiag.errors import FeatureMissing
from netdiag.kernel import dnsprog
from netdiag.kernel.bpfsys import RingBuffer
from netdiag.sources.dns.sockcapture import DIR_RECV, DIR_SEND, SK_HDR

SO_NETNS_COOKIE = 71
DIR_EGRESS, DIR_INGRESS = 1, 2            # bpf/nd_dns.h ND_DNS_EGRESS / ND_DNS_INGRESS
REC_HDR = struct.Struct("<QQIB3x")        # bpf/nd_dns.h struct nd_dns_hdr (nd_dns_rec up to data)


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo", proc1_cgroup: str = "/proc/1/cgroup") -> str:
    """The directory of the cgroup v2 hierarchy's root, to attach at; FeatureMissing when no
    mount shows it.

    In a container with its own cgroup namespace, ``/sys/fs/cgroup`` is the container's cgroup,
    and a program attached there would see the container alone. The node's init (PID 1 with the
    node's PID namespace) tells how far up the real root is: its cgroup path reads
    ``/../../x.scope`` from inside such a namespace. A mount of the node's hierarchy (a hostPath of
    the node's ``/sys/fs/cgroup``) shows that many ``..`` as its root in mountinfo: that one is
    taken; without it, FeatureMissing."""
    up = 0
    try:
        for line in Path(proc1_cgroup).read_text().splitlines():
            if line.startswith("0::"):
                parts = [x for x in line[3:].split("/") if x]
                while up < len(parts) and parts[up] == "..":
                    up += 1
    except OSError:
        pass
    want = "/" + "/".join([".."] * up)
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if right.split(" ", 1)[0] == "cgroup2" and fields[3] == want:
                    return fields[4].replace("\\040", " ")
    except OSError as e:
        raise FeatureMissing("cgroup2", f"cannot read {mountinfo}: {e.strerror}") from e
    if up:
        raise FeatureMissing("cgroup2", "this process is in a cgroup namespace below the node's root and no mount "
                                        "shows the node's cgroup v2 root (mount the node's /sys/fs/cgroup)")
    raise FeatureMissing("cgroup2", "no cgroup v2 hierarchy is mounted")


def netns_cookie() -> int:
    """The calling thread's network namespace cookie (what bpf_get_netns_cookie() returns)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    finally:
        s.close()


def decode(rec: bytes) -> tuple[int, int, int, bytes] | None:
    """A ring buffer record -> (monotonic ns, netns cookie, direction, data): the packet from
    the IP header on (cgroup_skb), or struct nd_dns_sk and the payload (socket path)."""
    if len(rec) < REC_HDR.size:
        return None
    ts, cookie, length, direction = REC_HDR.unpack_from(rec)
    if direction in (DIR_SEND, DIR_RECV):
        length += SK_HDR.size
    # a fixed-size record: the data is its first `length` bytes (cut at the record's room)
    return ts, cookie, direction, rec[REC_HDR.size:REC_HDR.size + length]


class RingCapture:
    """The attached programs and their ring buffers, held by this process: the cgroup_skb
    programs, or with ``kind="socket"`` the socket path's tracepoints (sockcapture.py)."""

    def __init__(self, kind: str = "cgroup"):
        from netdiag.kernel import loader
        self.kind = kind
        if kind == "socket":
            dnsprog.sock_cflags()         # FeatureMissing here, before a child is started
            self.cgroup = None
            self.det = loader.load_dns_capture(None)
        else:
            cgroup = cgroup2_root()
            self.cgroup = cgroup
            self.det = loader.load_dns_capture(cgroup)
        self.rings = []
        try:
            for name in sorted((n for n in self.det.maps if n.startswith("nd_dns_ring")),
                               key=lambda n: int(n[len("nd_dns_ring"):])):
                self.rings.append(RingBuffer(self.det.maps[name]))
        except BaseException:
            self.close()
            raise
        self._lost = self.det.maps["nd_dns_lost"]
        self._lost_seen = 0

    def records(self, limit: int | None = None) -> list[bytes]:
        """What every CPU's ring holds up to one instant, oldest first across CPUs (a query and
        its answer can land in two CPUs' rings; the producer positions are read together first,
        so an answer is never taken before a query committed ahead of it)."""
        ups = [r.producer() for r in self.rings]
        out: list[bytes] = []
        for r, up in zip(self.rings, ups):
            out += r.consume(limit, upto=up)
        if len(self.rings) > 1:
            out.sort(key=lambda rec: rec[:8][::-1])      # ts_ns, little-endian u64
        return out

    def lost(self) -> int:
        """Records the ring buffer had no room for since the previous call."""
        v = self._lost.lookup(struct.pack("I", 0))
        total = sum(struct.unpack_from("Q", x)[0] for x in v) if isinstance(v, list) else 0
        new, self._lost_seen = total - self._lost_seen, total
        return new

    def close(self) -> None:
        for r in self.rings:
            r.close()
        self.rings = []
        self.det.close()         # closing the links detaches the programs
