"""The DNS capture's programs (bpf/dns.c): compiled, given their rings, loaded and attached.

Two paths share the file and its rings. The cgroup_skb path (netdiag/sources/dns/cgcapture.py)
links ``nd_dns_egress`` / ``nd_dns_ingress`` to a cgroup v2 directory; the socket path (built
with -DND_DNS_SOCK, netdiag/sources/dns/sockcapture.py) loads ``nd_dns_send`` / ``nd_dns_recv``
as tp_btf programs on ``sock:sock_send_length`` / ``sock:sock_recv_length``. Either way the
records go to one ring buffer per CPU (``nd_dns_ring<cpu>``, held in the map of maps
``nd_dns_rings``; ``nd_dns_ring0`` is BCC's and the template), and ``nd_dns_lost`` counts the
records no ring had room for. The loader child (netdiag/kernel/loader.py) calls
``cgroup_child_attach`` or ``socket_child_attach``; a program image (netdiag/kernel/progcache.py)
refills the rings through ``ring_fills`` and relinks through ``CGROUP_ATTACH``. The records'
layout and decoding belong to netdiag/sources/dns/.

The socket path reads a DNS message from the calling thread's own buffer, found through the
syscall's arguments in its saved user registers (``bpf_task_pt_regs``): for that the syscall
numbers and the registers' names are per architecture (``ARCHES``; only x86_64 here).
"""
from __future__ import annotations

import ctypes
import os
import platform

from netdiag.errors import FeatureMissing
from netdiag.kernel import bpfsys
from netdiag.kernel import btf as btfmod
from netdiag.kernel.bpfsrc import source_dir

CGROUP_ATTACH = {"ingress": bpfsys.BPF_CGROUP_INET_INGRESS, "egress": bpfsys.BPF_CGROUP_INET_EGRESS}
PROGRAMS = (("nd_dns_egress", "egress"), ("nd_dns_ingress", "ingress"))
SOCK_EVENTS = (("nd_dns_send", "sock_send_length"), ("nd_dns_recv", "sock_recv_length"))

# Per architecture: syscall numbers, and the user-register names (struct pt_regs members, read
# at their BTF offsets) that hold the syscall number and arguments 1, 2 and 4 (0-based).
ARCHES = {
    "x86_64": {
        "nr": {"READ": 0, "WRITE": 1, "READV": 19, "WRITEV": 20, "SENDTO": 44, "RECVFROM": 45,
               "SENDMSG": 46, "RECVMSG": 47, "RECVMMSG": 299, "SENDMMSG": 307},
        "regs": {"ND_OFF_REGS_NR": "orig_ax", "ND_OFF_REGS_A1": "si", "ND_OFF_REGS_A2": "dx",
                 "ND_OFF_REGS_A4": "r8"},
    },
}

# socket fields the socket path reads (names as in netdiag/kernel/btf.py)
SOCK_FIELDS = ("ND_OFF_SKC_DADDR", "ND_OFF_SKC_RCV_SADDR", "ND_OFF_SKC_DPORT", "ND_OFF_SKC_NUM",
               "ND_OFF_SKC_FAMILY", "ND_OFF_SKC_V6_DADDR", "ND_OFF_SKC_V6_RCV_SADDR",
               "ND_OFF_SK_PROTOCOL")


def sock_cflags(machine: str | None = None, btf: "btfmod.Btf | None" = None) -> list[str]:
    """The compile flags of the socket path: -DND_DNS_SOCK, offsets, syscall numbers.
    FeatureMissing("dns socket path", why) where it cannot work."""
    machine = machine or platform.machine()
    arch = ARCHES.get(machine)
    if arch is None:
        raise FeatureMissing("dns socket path", f"no syscall table for {machine} (x86_64 only)")
    for _, event in SOCK_EVENTS:
        if not os.path.isdir(f"/sys/kernel/tracing/events/sock/{event}") and \
                not os.path.isdir(f"/sys/kernel/debug/tracing/events/sock/{event}"):
            raise FeatureMissing("dns socket path", f"no tracepoint sock:{event} (kernel < 6.3)")
    try:
        b = btf or btfmod.kernel_btf()
        offs = {name: b.offset(*btfmod.RAWTP_OFFSETS[name]) for name in SOCK_FIELDS}
        if b.member_size("sock", "sk_protocol") != 2:
            raise KeyError("sock.sk_protocol is not a u16")
        offs["ND_OFF_SOCK_NET"] = b.offset(*btfmod.OFFSETS["ND_OFF_SOCK_NET"])
        if b.member_size(*btfmod.OPTIONAL_OFFSETS["ND_OFF_NET_COOKIE"]) != 8:
            raise KeyError("net.net_cookie is not a u64")
        offs["ND_OFF_NET_COOKIE"] = b.offset(*btfmod.OPTIONAL_OFFSETS["ND_OFF_NET_COOKIE"])
        for name, member in arch["regs"].items():
            offs[name] = b.offset("pt_regs", member)
        for _, event in SOCK_EVENTS:
            b.find(btfmod.TYPEDEF, "btf_trace_" + event)
    except KeyError as e:
        raise FeatureMissing("dns socket path", f"kernel BTF lacks {e.args[0] if e.args else e}") from e
    flags = ["-DND_DNS_SOCK"]
    flags += [f"-D{name}={off}" for name, off in sorted(offs.items())]
    flags += [f"-DND_NR_{name}={nr}" for name, nr in sorted(arch["nr"].items())]
    return flags


def ring_bytes(ncpus: int) -> int:
    """Bytes per CPU's ring: 16 MiB over all CPUs, each between 256 KiB and 4 MiB (a power of 2)."""
    per = max(256 << 10, min(4 << 20, (16 << 20) // max(ncpus, 1)))
    return 1 << (per.bit_length() - 1)


def compile_with_rings(cflags: list[str] = ()):
    """In the loader child: compile bpf/dns.c and make one ring buffer per CPU (nd_dns_ring<cpu>,
    filled into nd_dns_rings). Returns (the BPF object, {map name: fd})."""
    from bcc import BPF
    ncpus = bpfsys.ncpus()
    size = ring_bytes(ncpus)
    d = source_dir()
    b = BPF(src_file=str(d / "dns.c").encode(),
            cflags=[f"-I{d}", f"-DND_DNS_RB_PAGES={size // 4096}", f"-DND_DNS_MAX_CPUS={ncpus}", *cflags])
    maps = {"nd_dns_lost": b["nd_dns_lost"].map_fd, "nd_dns_ring0": b["nd_dns_ring0"].map_fd}
    outer = b["nd_dns_rings"]
    for cpu in range(ncpus):
        fd = maps["nd_dns_ring0"] if cpu == 0 else bpfsys.ringbuf_create(size)
        maps[f"nd_dns_ring{cpu}"] = fd
        outer[ctypes.c_int(cpu)] = ctypes.c_int(fd)
    return b, maps


def ring_fills(maps: dict[str, int]) -> dict:
    """What fills nd_dns_rings, for a program image (netdiag/kernel/progcache.py ``build``)."""
    rings = {n for n in maps if n.startswith("nd_dns_ring")}
    return {"nd_dns_rings": {"inner": "nd_dns_ring0",
                             "entries": {int(n[len("nd_dns_ring"):]): n for n in rings}}}


def link_cgroup(prog_fd: int, cgroup: str, where: str) -> int:
    """A bpf_link of a cgroup_skb program to the cgroup directory ``cgroup``, on its ``where``
    ("ingress" or "egress") path; the link fd."""
    return bpfsys.link_cgroup(prog_fd, cgroup, CGROUP_ATTACH[where])


def _closing_on_failure(attach):
    fds: list[int] = []
    try:
        attach(fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def cgroup_child_attach(cgroup: str) -> tuple[object, dict, list[int], list[tuple[str, str, str]]]:
    """In the loader child: compile bpf/dns.c with its rings, load both cgroup_skb programs, link
    them to ``cgroup``. Returns (the BPF object, {map name: fd}, [link fds], the programs as
    netdiag/kernel/progcache.py's ``build`` names them)."""
    from bcc import BPF
    b, maps = compile_with_rings()

    def attach(fds: list[int]) -> None:
        for fn, where in PROGRAMS:
            fds.append(link_cgroup(b.load_func(fn, BPF.CGROUP_SKB).fd, cgroup, where))
    return b, maps, _closing_on_failure(attach), [(fn, "cgroup_skb", where) for fn, where in PROGRAMS]


def socket_child_attach() -> tuple[object, dict, list[int], list[tuple[str, str, str]]]:
    """In the loader child: compile bpf/dns.c for the socket path with its rings, load both
    programs as tp_btf and attach them. Returns (the BPF object, {map name: fd}, [link and
    program fds], the programs as netdiag/kernel/progcache.py's ``build`` names them)."""
    b, maps = compile_with_rings(sock_cflags())

    def attach(fds: list[int]) -> None:
        for fn, event in SOCK_EVENTS:
            prog, link = bpfsys.load_tp_btf(b.dump_func(fn.encode()), event, name=fn[:15])
            fds += [link, prog]
    return b, maps, _closing_on_failure(attach), [(fn, "tp_btf", event) for fn, event in SOCK_EVENTS]
