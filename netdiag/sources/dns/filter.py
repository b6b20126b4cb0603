"""The classic BPF filter the capture sockets carry: IPv4/IPv6, UDP or TCP, port 53 either way.

The program is assembled here from named instructions rather than pasted from ``tcpdump -dd``:
tcpdump compiles for a link layer (Ethernet offsets), while netdiag's ``AF_PACKET`` sockets are
``SOCK_DGRAM`` (cooked): the kernel runs the filter with the packet starting at the network
header on every device type (veth, loopback, tun, wireguard alike) and the network protocol
readable through the ``SKF_AD_PROTOCOL`` ancillary load. It is the same logic as
``tcpdump -dd 'port 53'`` minus the Ethernet type test and with offsets shifted by 14, plus:

* IPv4 fragments with a non-zero offset are refused (they carry no ports), like tcpdump does;
* IPv6 extension headers are not walked (DNS does not use them in practice; tcpdump does not
  either for ``port``).

``interpret()`` is a small cBPF interpreter used by the unit tests to run the very bytes that
are attached against crafted packets.
"""
from __future__ import annotations

import ctypes
import socket
import struct

# opcodes (linux/filter.h, linux/bpf_common.h)
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_H_IND = 0x48
LDX_B_MSH = 0xB1
JEQ_K, JSET_K = 0x15, 0x45
RET_K = 0x06
SKF_AD_PROTOCOL = 0xFFFFF000      # SKF_AD_OFF (-0x1000) + SKF_AD_PROTOCOL (0), as u32
SO_ATTACH_FILTER = 26
SNAPLEN = 262144
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17
DNS_PORT = 53


def _assemble(prog: list) -> list[tuple[int, int, int, int]]:
    """(label | None, code, jt_label | None, jf_label | None, k) -> (code, jt, jf, k) with
    relative jump offsets; a jump target of None means 'next instruction'."""
    where = {ins[0]: i for i, ins in enumerate(prog) if ins[0] is not None}
    out = []
    for i, (_label, code, jt, jf, k) in enumerate(prog):
        rel = lambda tgt: 0 if tgt is None else where[tgt] - i - 1   # noqa: E731
        out.append((code, rel(jt), rel(jf), k))
    return out


def dns_filter(port: int = DNS_PORT) -> list[tuple[int, int, int, int]]:
    p = [
        (None, LD_W_ABS, None, None, SKF_AD_PROTOCOL),      # A = skb->protocol
        (None, JEQ_K, None, "v6", ETH_P_IP),
        # IPv4
        (None, LD_B_ABS, None, None, 9),                     # A = ip->protocol
        (None, JEQ_K, "v4l4", None, IPPROTO_UDP),
        (None, JEQ_K, None, "drop", IPPROTO_TCP),
        ("v4l4", LD_H_ABS, None, None, 6),                   # A = frag_off
        (None, JSET_K, "drop", None, 0x1FFF),                # a later fragment: no ports
        (None, LDX_B_MSH, None, None, 0),                    # X = 4 * ihl
        (None, LD_H_IND, None, None, 0),                     # A = source port
        (None, JEQ_K, "accept", None, port),
        (None, LD_H_IND, None, None, 2),                     # A = destination port
        (None, JEQ_K, "accept", "drop", port),
        # IPv6 (no extension headers)
        ("v6", JEQ_K, None, "drop", ETH_P_IPV6),
        (None, LD_B_ABS, None, None, 6),                     # A = next header
        (None, JEQ_K, "v6l4", None, IPPROTO_UDP),
        (None, JEQ_K, None, "drop", IPPROTO_TCP),
        ("v6l4", LD_H_ABS, None, None, 40),
        (None, JEQ_K, "accept", None, port),
        (None, LD_H_ABS, None, None, 42),
        (None, JEQ_K, "accept", "drop", port),
        ("accept", RET_K, None, None, SNAPLEN),
        ("drop", RET_K, None, None, 0),
    ]
    return _assemble(p)


def packed(prog) -> bytes:
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def attach(sock: socket.socket, prog=None) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog {unsigned short len; struct sock_filter *filter}."""
    prog = dns_filter() if prog is None else prog
    buf = ctypes.create_string_buffer(packed(prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def interpret(prog, pkt: bytes, protocol: int) -> int:
    """Run a cBPF program over ``pkt`` (network header first) as the kernel would for a
    SOCK_DGRAM packet socket; returns the accepted length (0 = dropped)."""
    a = x = 0
    pc = 0
    for _ in range(4096):
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == LD_W_ABS:
            if k == SKF_AD_PROTOCOL:
                a = protocol
            elif k + 4 <= len(pkt):
                a = struct.unpack_from("!I", pkt, k)[0]
            else:
                return 0
        elif code in (LD_H_ABS, LD_H_IND):
            off = k + (x if code == LD_H_IND else 0)
            if off + 2 > len(pkt):
                return 0
            a = struct.unpack_from("!H", pkt, off)[0]
        elif code == LD_B_ABS:
            if k >= len(pkt):
                return 0
            a = pkt[k]
        elif code == LDX_B_MSH:
            if k >= len(pkt):
                return 0
            x = 4 * (pkt[k] & 0xF)
        elif code == JEQ_K:
            pc += jt if a == k else jf
        elif code == JSET_K:
            pc += jt if a & k else jf
        elif code == RET_K:
            return min(k, len(pkt))
        else:
            raise ValueError(f"opcode {code:#x} not handled")
    raise RuntimeError("cBPF program did not return")
