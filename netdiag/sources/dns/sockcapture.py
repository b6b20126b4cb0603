"""DNS capture at the socket calls (bpf/dns.c with -DND_DNS_SOCK): the default where it works.

The cgroup_skb programs run for every packet of every local socket and packet sockets see every
packet of a namespace, DNS or not: on a node busy with short connections, that is ten program
runs per connection (handshake, ACKs, FIN or RST, each way) for nothing. These two BTF-typed
tracepoints run once per *send or receive call* a socket completes (``sock:sock_send_length``,
``sock:sock_recv_length``, kernel 6.3+), and leave at once unless the socket talks to port 53:
a connection that carries no data runs none of them.

A DNS message is read from the calling thread's own buffer, found through the syscall's
arguments in its saved user registers (``bpf_task_pt_regs``): for that the syscall numbers and
the registers' names are per architecture (``ARCHES``; only x86_64 here). Sends through
io_uring or by kernel sockets have no such buffer and are not seen; neither is a datagram read
with ``MSG_PEEK`` until it is read for real.

Everything is per socket, so each message is seen once, in the namespace of the socket that
sent or read it: a lookup a pod makes through the node's routing namespace counts in the pod
only, and nothing forwarded or answered by a local server is mistaken for the node's own.

``cflags()`` says whether the kernel and architecture allow it (FeatureMissing otherwise);
``child_attach()`` compiles and attaches in the loader child; ``cgcapture.RingCapture`` with
``kind="socket"`` holds the result and reads the rings.
"""
from __future__ import annotations

import os
import platform

from netdiag.kernel import btf as btfmod
from netdiag.errors import FeatureMissing

EVENTS = (("nd_dns_send", "sock_send_length"), ("nd_dns_recv", "sock_recv_length"))

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

# socket fields the programs read (names as in netdiag/kernel/btf.py)
SOCK_FIELDS = ("ND_OFF_SKC_DADDR", "ND_OFF_SKC_RCV_SADDR", "ND_OFF_SKC_DPORT", "ND_OFF_SKC_NUM",
               "ND_OFF_SKC_FAMILY", "ND_OFF_SKC_V6_DADDR", "ND_OFF_SKC_V6_RCV_SADDR",
               "ND_OFF_SK_PROTOCOL")


def cflags(machine: str | None = None, btf: "btfmod.Btf | None" = None) -> list[str]:
    """The compile flags of the socket path: -DND_DNS_SOCK, offsets, syscall numbers.
    FeatureMissing("dns socket path", why) where it cannot work."""
    machine = machine or platform.machine()
    arch = ARCHES.get(machine)
    if arch is None:
        raise FeatureMissing("dns socket path", f"no syscall table for {machine} (x86_64 only)")
    for _, event in EVENTS:
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
        for _, event in EVENTS:
            b.find(btfmod.TYPEDEF, "btf_trace_" + event)
    except KeyError as e:
        raise FeatureMissing("dns socket path", f"kernel BTF lacks {e.args[0] if e.args else e}") from e
    flags = ["-DND_DNS_SOCK"]
    flags += [f"-D{name}={off}" for name, off in sorted(offs.items())]
    flags += [f"-DND_NR_{name}={nr}" for name, nr in sorted(arch["nr"].items())]
    return flags


def child_attach() -> tuple[object, dict, list[int], list[tuple[str, str, str]]]:
    """In the loader child: compile bpf/dns.c for the socket path with its rings, load both
    programs as tp_btf and attach them. Returns (the BPF object, {map name: fd}, [link and
    program fds], the programs as netdiag/kernel/progcache.py's ``build`` names them)."""
    from netdiag.kernel.features import load_tp_btf
    from netdiag.sources.dns.cgcapture import compile_with_rings
    b, maps = compile_with_rings(cflags())
    fds: list[int] = []
    try:
        for fn, event in EVENTS:
            prog, link = load_tp_btf(b.dump_func(fn.encode()), event, name=fn[:15])
            fds += [link, prog]
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return b, maps, fds, [(fn, "tp_btf", event) for fn, event in EVENTS]
