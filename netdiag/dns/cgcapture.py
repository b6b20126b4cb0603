"""DNS capture through cgroup_skb programs (bpf/dns.c) instead of packet sockets.

A packet socket in every namespace makes the kernel clone every packet the namespace sends and
run a filter on every packet it receives, DNS or not. The cgroup_skb programs run only for local
sockets' packets, clone nothing, and copy DNS packets alone into a ring buffer with the sending
or receiving socket's namespace cookie. They attach through bpf_links to the root of the cgroup
v2 hierarchy (so every cgroup below it, every container, is covered) and detach when the last
link fd closes: a killed netdiag leaves nothing attached.

``available()`` says whether this path can work here and why not; ``CgroupCapture`` compiles and
attaches in the loader child (netdiag/loader.py) and reads the ring buffer in this process.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from pathlib import Path

from ..errors import FeatureMissing

BPF_LINK_CREATE = 28
BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS = 0, 1
SO_NETNS_COOKIE = 71
DIR_EGRESS, DIR_INGRESS = 1, 2
REC_HDR = struct.Struct("<QQIB3x")        # struct nd_dns_rec up to data


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo", proc1_cgroup: str = "/proc/1/cgroup") -> str:
    """The cgroup v2 mount to attach at; FeatureMissing when there is none, or when it is the root
    of a cgroup namespace that does not hold the node's init (a container's view: attaching there
    would cover the container only)."""
    root = None
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2" and left.split()[3] == "/":
                    root = left.split()[4]
                    break
    except OSError as e:
        raise FeatureMissing("cgroup2", f"cannot read {mountinfo}: {e.strerror}") from e
    if root is None:
        raise FeatureMissing("cgroup2", "no cgroup v2 hierarchy is mounted")
    try:
        for line in Path(proc1_cgroup).read_text().splitlines():
            if line.startswith("0::") and line[3:].startswith("/.."):
                raise FeatureMissing("cgroup2", "this process is in a cgroup namespace that does not hold "
                                                "the node's init: a cgroup program here would not see the node")
    except OSError:
        pass
    return root


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    from ..features import _bpf
    attr = (ctypes.c_uint8 * 64)()
    ctypes.c_uint32.from_buffer(attr, 0).value = prog_fd
    ctypes.c_uint32.from_buffer(attr, 4).value = target_fd
    ctypes.c_uint32.from_buffer(attr, 8).value = attach_type
    fd, err = _bpf(BPF_LINK_CREATE, attr)
    if fd < 0:
        raise OSError(err, f"cgroup_skb link refused ({errno.errorcode.get(err, err)})")
    return fd


def child_attach(cgroup: str) -> tuple[dict, list[int]]:
    """In the loader child: compile bpf/dns.c, load both programs, link them to ``cgroup``.
    Returns ({map name: fd}, [link fds])."""
    from bcc import BPF
    from ..engine import bpf_dir
    b = BPF(src_file=str(bpf_dir() / "dns.c").encode())
    maps = {n: b[n].map_fd for n in ("nd_dns_events", "nd_dns_lost")}
    links = []
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for fn, kind in (("nd_dns_egress", BPF_CGROUP_INET_EGRESS), ("nd_dns_ingress", BPF_CGROUP_INET_INGRESS)):
            prog = b.load_func(fn, BPF.CGROUP_SKB)
            links.append(link_create(prog.fd, cg, kind))
    except BaseException:
        for fd in links:
            os.close(fd)
        raise
    finally:
        os.close(cg)
    return maps, links


def netns_cookie() -> int:
    """The calling thread's network namespace cookie (what bpf_get_netns_cookie() returns)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    finally:
        s.close()


def decode(rec: bytes) -> tuple[int, int, int, bytes] | None:
    """A ring buffer record -> (monotonic ns, netns cookie, direction, packet from the IP header)."""
    if len(rec) < REC_HDR.size:
        return None
    ts, cookie, _len, direction = REC_HDR.unpack_from(rec)
    return ts, cookie, direction, rec[REC_HDR.size:]


class CgroupCapture:
    """The attached programs and their ring buffer, held by this process."""

    def __init__(self):
        from .. import loader
        from ..bpfsys import RingBuffer
        cgroup = cgroup2_root()
        self.cgroup = cgroup
        self.det = loader.load_dns_capture(cgroup)
        try:
            self.ring = RingBuffer(self.det.maps["nd_dns_events"])
        except BaseException:
            self.det.close()
            raise
        self._lost = self.det.maps["nd_dns_lost"]
        self._lost_seen = 0

    def fileno(self) -> int:
        return self.ring.fileno()

    def records(self, limit: int | None = None) -> list[bytes]:
        return self.ring.consume(limit)

    def lost(self) -> int:
        """Records the ring buffer had no room for since the previous call."""
        v = self._lost.lookup(struct.pack("I", 0))
        total = sum(struct.unpack_from("Q", x)[0] for x in v) if isinstance(v, list) else 0
        new, self._lost_seen = total - self._lost_seen, total
        return new

    def close(self) -> None:
        self.ring.close()
        self.det.close()         # closing the links detaches the programs
