"""DNS capture through cgroup_skb programs (bpf/dns.c) instead of packet sockets.

A packet socket in every namespace makes the kernel clone every packet the namespace sends and
run a filter on every packet it receives, DNS or not. The cgroup_skb programs run only for local
sockets' packets, clone nothing, and copy DNS packets alone into a ring buffer with the sending
or receiving socket's namespace cookie. They attach through bpf_links to the root of the cgroup
v2 hierarchy (so every cgroup below it, every container, is covered) and detach when the last
link fd closes: a killed netdiag leaves nothing attached.

``RingCapture`` has the programs compiled and attached in the loader child (netdiag/kernel/loader.py),
this path's or the socket path's (sockcapture.py, whose records it also decodes: ``decode_sock``),
and reads their per-CPU ring buffers in this process; ``cgroup2_root()`` says where this path
attaches, or why it cannot.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from pathlib import Path
from typing import NamedTuple

from netdiag.errors import FeatureMissing

BPF_LINK_CREATE = 28
BPF_MAP_TYPE_RINGBUF = 27
CGROUP_ATTACH = {"ingress": 0, "egress": 1}       # BPF_CGROUP_INET_INGRESS / _EGRESS
SO_NETNS_COOKIE = 71
DIR_EGRESS, DIR_INGRESS = 1, 2
DIR_SEND, DIR_RECV = 3, 4                 # the socket path's records (netdiag/sources/dns/sockcapture.py)
REC_HDR = struct.Struct("<QQIB3x")        # struct nd_dns_rec up to data
SK_HDR = struct.Struct("<BBHHBx16s16s")   # struct nd_dns_sk, after REC_HDR in a socket record
PEER_GUESSED = 1


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


def link_cgroup(prog_fd: int, cgroup: str, where: str) -> int:
    """A bpf_link of a cgroup_skb program to the cgroup directory ``cgroup``, on its ``where``
    ("ingress" or "egress") path; the link fd."""
    from netdiag.kernel.features import _bpf
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = (ctypes.c_uint8 * 64)()
        ctypes.c_uint32.from_buffer(attr, 0).value = prog_fd
        ctypes.c_uint32.from_buffer(attr, 4).value = cg
        ctypes.c_uint32.from_buffer(attr, 8).value = CGROUP_ATTACH[where]
        fd, err = _bpf(BPF_LINK_CREATE, attr)
    finally:
        os.close(cg)
    if fd < 0:
        raise OSError(err, f"cgroup_skb link refused ({errno.errorcode.get(err, err)})")
    return fd


def ring_bytes(ncpus: int) -> int:
    """Bytes per CPU's ring: 16 MiB over all CPUs, each between 256 KiB and 4 MiB (a power of 2)."""
    per = max(256 << 10, min(4 << 20, (16 << 20) // max(ncpus, 1)))
    return 1 << (per.bit_length() - 1)


def _ringbuf_create(size: int) -> int:
    from netdiag.kernel.features import _bpf
    attr = (ctypes.c_uint8 * 72)()
    ctypes.memmove(attr, (ctypes.c_uint32 * 4)(BPF_MAP_TYPE_RINGBUF, 0, 0, size), 16)
    fd, err = _bpf(0, attr)            # BPF_MAP_CREATE
    if fd < 0:
        raise OSError(err, f"ring buffer of {size} bytes refused ({errno.errorcode.get(err, err)})")
    return fd


def compile_with_rings(cflags: list[str] = ()):
    """In the loader child: compile bpf/dns.c and make one ring buffer per CPU (nd_dns_ring<cpu>,
    filled into nd_dns_rings). Returns (the BPF object, {map name: fd})."""
    from bcc import BPF
    from netdiag.kernel.bpfsys import _ncpus
    from netdiag.kernel.engine import bpf_dir
    ncpus = _ncpus()
    size = ring_bytes(ncpus)
    b = BPF(src_file=str(bpf_dir() / "dns.c").encode(),
            cflags=[f"-DND_DNS_RB_PAGES={size // 4096}", f"-DND_DNS_MAX_CPUS={ncpus}", *cflags])
    maps = {"nd_dns_lost": b["nd_dns_lost"].map_fd, "nd_dns_ring0": b["nd_dns_ring0"].map_fd}
    outer = b["nd_dns_rings"]
    for cpu in range(ncpus):
        fd = maps["nd_dns_ring0"] if cpu == 0 else _ringbuf_create(size)
        maps[f"nd_dns_ring{cpu}"] = fd
        outer[ctypes.c_int(cpu)] = ctypes.c_int(fd)
    return b, maps


PROGRAMS = (("nd_dns_egress", "egress"), ("nd_dns_ingress", "ingress"))


def ring_fills(maps: dict[str, int]) -> dict:
    """What fills nd_dns_rings, for a program image (netdiag/kernel/progcache.py ``build``)."""
    rings = {n for n in maps if n.startswith("nd_dns_ring")}
    return {"nd_dns_rings": {"inner": "nd_dns_ring0",
                             "entries": {int(n[len("nd_dns_ring"):]): n for n in rings}}}


def child_attach(cgroup: str) -> tuple[object, dict, list[int], list[tuple[str, str, str]]]:
    """In the loader child: compile bpf/dns.c with its rings, load both programs, link them to
    ``cgroup``. Returns (the BPF object, {map name: fd}, [link fds], the programs as
    netdiag/kernel/progcache.py's ``build`` names them)."""
    from bcc import BPF
    b, maps = compile_with_rings()
    links = []
    try:
        for fn, where in PROGRAMS:
            links.append(link_cgroup(b.load_func(fn, BPF.CGROUP_SKB).fd, cgroup, where))
    except BaseException:
        for fd in links:
            os.close(fd)
        raise
    return b, maps, links, [(fn, "cgroup_skb", where) for fn, where in PROGRAMS]


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


class SockRecord(NamedTuple):
    proto: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    guessed: bool       # raddr is where the socket's last query went (an unconnected UDP read)
    payload: bytes


def decode_sock(data: bytes) -> SockRecord | None:
    """struct nd_dns_sk and the payload after it -> SockRecord, None when malformed."""
    if len(data) < SK_HDR.size:
        return None
    family, proto, lport, rport, flags, la, ra = SK_HDR.unpack_from(data)
    if family not in (socket.AF_INET, socket.AF_INET6) or proto not in (6, 17):
        return None
    if family == socket.AF_INET:
        la, ra = la[:4], ra[:4]
    return SockRecord(proto, socket.inet_ntop(family, la), lport, socket.inet_ntop(family, ra), rport,
                      bool(flags & PEER_GUESSED), data[SK_HDR.size:])


class RingCapture:
    """The attached programs and their ring buffers, held by this process: the cgroup_skb
    programs, or with ``kind="socket"`` the socket path's tracepoints (sockcapture.py)."""

    def __init__(self, kind: str = "cgroup"):
        from netdiag.kernel import loader
        from netdiag.kernel.bpfsys import RingBuffer
        self.kind = kind
        if kind == "socket":
            from netdiag.sources.dns import sockcapture
            sockcapture.cflags()          # FeatureMissing here, before a child is started
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
