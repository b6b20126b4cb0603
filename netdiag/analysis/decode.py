"""Decode raw events from the kernel into plain dicts (pure functions, no kernel needed).

``EVENT_FIELDS`` mirrors ``struct nd_event`` in bpf/nd_events.h, ``AGG_STRUCTS`` the aggregation
maps' keys and values declared there; tests/unit/test_header_contract.py checks every mirror
here, offset by offset, and every constant, against the header.
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import struct

AF_INET, AF_INET6 = 2, 10
EV_CONNECT, EV_ACCEPT = 1, 2          # bpf/nd_events.h ND_EV_CONNECT / ND_EV_ACCEPT
KIND_NAMES = {EV_CONNECT: "connect", EV_ACCEPT: "accept"}

# (name, C type, struct format) in header order
EVENT_FIELDS = (
    ("ts_ns", "u64", "Q"),
    ("latency_ns", "u64", "Q"),
    ("netns", "u32", "I"),
    ("pid", "u32", "I"),
    ("tid", "u32", "I"),
    ("err", "s32", "i"),
    ("kind", "u16", "H"),
    ("family", "u16", "H"),
    ("sport", "u16", "H"),
    ("dport", "u16", "H"),
    ("saddr", "u8[16]", "16s"),
    ("daddr", "u8[16]", "16s"),
    ("comm", "char[16]", "16s"),
)
EVENT = struct.Struct("<" + "".join(f for _, _, f in EVENT_FIELDS))


@functools.lru_cache(maxsize=65536)
def format_addr(family: int, raw: bytes) -> str:
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return str(ipaddress.IPv4Address(raw[:4]))


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def errno_name(err: int) -> str | None:
    if not err:
        return None
    return errno.errorcode.get(err, f"E{err}")


def decode_event(raw: bytes) -> dict:
    """Turn one ``struct nd_event`` into the dict netdiag prints (``trace --json``)."""
    v = dict(zip((n for n, _, _ in EVENT_FIELDS), EVENT.unpack_from(raw)))
    saddr = format_addr(v["family"], v["saddr"])
    daddr = format_addr(v["family"], v["daddr"])
    ev = {
        "type": KIND_NAMES.get(v["kind"], f"kind{v['kind']}"),
        "ts_ns": v["ts_ns"],
        "pid": v["pid"],
        "tid": v["tid"],
        "comm": v["comm"].split(b"\0", 1)[0].decode(errors="replace"),
        "netns": v["netns"],
        "family": 6 if v["family"] == AF_INET6 else 4,
    }
    if v["kind"] == EV_ACCEPT:
        ev.update(listen=endpoint(saddr, v["sport"]), peer=endpoint(daddr, v["dport"]),
                  laddr=saddr, lport=v["sport"], raddr=daddr, rport=v["dport"],
                  wait_ms=round(v["latency_ns"] / 1e6, 3))
    else:
        ev.update(src=endpoint(saddr, v["sport"]), dst=endpoint(daddr, v["dport"]),
                  saddr=saddr, sport=v["sport"], daddr=daddr, dport=v["dport"],
                  result="ok" if v["err"] == 0 else "error", errno=v["err"] or None,
                  errno_name=errno_name(v["err"]), latency_ms=round(v["latency_ns"] / 1e6, 3))
    return ev


# Mirrors of the aggregation maps' keys and values (bpf/nd_events.h, used by bpf/agg.c).
AGG_STRUCTS = {
    "nd_dst_key": (("netns", "u32"), ("family", "u8"), ("dir", "u8"), ("port", "u16"), ("addr", "u8[16]")),
    "nd_dst_val": (("connects", "u64"), ("established", "u64"), ("failed", "u64"), ("resets_in", "u64"),
                   ("resets_out", "u64"), ("syn_retrans", "u64"), ("retrans", "u64"), ("accepts", "u64"),
                   ("lat_sum_ns", "u64"), ("lat_count", "u64"), ("active", "s64"), ("dir", "u32"), ("pad", "u32")),
    "nd_code_key": (("d", "struct nd_dst_key"), ("kind", "u32"), ("code", "u32")),
    "nd_sock_key": (("netns", "u32"), ("family", "u16"), ("lport", "u16"), ("rport", "u16"), ("pad", "u16"),
                    ("pad2", "u32"), ("laddr", "u8[16]"), ("raddr", "u8[16]")),
    "nd_drop_key": (("netns", "u32"), ("reason", "u32")),
    "nd_dst_slot": (("state", "u64"), ("k", "struct nd_dst_key"), ("v", "struct nd_dst_val")),
    "nd_code_slot": (("state", "u64"), ("k", "struct nd_code_key"), ("n", "u64")),
    "nd_proc_key": (("tgid", "u32"), ("netns", "u32")),
    "nd_proc_val": (("connects", "u64"), ("established", "u64"), ("failed", "u64"), ("resets_in", "u64"),
                    ("resets_out", "u64"), ("accepts", "u64"), ("comm", "char[16]")),
    "nd_proc_dst_key": (("tgid", "u32"), ("netns", "u32"), ("family", "u8"), ("pad", "u8"), ("port", "u16"),
                        ("pad2", "u32"), ("addr", "u8[16]")),
    "nd_proc_dst_val": (("connects", "u64"), ("established", "u64"), ("failed", "u64")),
}
_FMT = {"u64": "Q", "s64": "q", "u32": "I", "s32": "i", "u16": "H", "u8": "B", "u8[16]": "16s", "char[16]": "16s",
        "struct nd_dst_key": "IBBH16s"}
_FMT["struct nd_dst_val"] = "".join(_FMT[t] for _, t in AGG_STRUCTS["nd_dst_val"])
_FMT["struct nd_code_key"] = "".join(_FMT[t] for _, t in AGG_STRUCTS["nd_code_key"])
DST_KEY, DST_VAL, CODE_KEY, SOCK_KEY, DROP_KEY, DST_SLOT, CODE_SLOT = (
    struct.Struct("<" + "".join(_FMT[t] for _, t in AGG_STRUCTS[n]))
    for n in ("nd_dst_key", "nd_dst_val", "nd_code_key", "nd_sock_key", "nd_drop_key", "nd_dst_slot",
              "nd_code_slot"))
PROC_KEY, PROC_VAL, PROC_DST_KEY, PROC_DST_VAL = (struct.Struct("<" + "".join(_FMT[t] for _, t in AGG_STRUCTS[n]))
                                                  for n in ("nd_proc_key", "nd_proc_val", "nd_proc_dst_key",
                                                            "nd_proc_dst_val"))
PROC_VAL_FIELDS = tuple(n for n, _ in AGG_STRUCTS["nd_proc_val"])
DST_SLOT_HELD = 2       # bpf/nd_events.h ND_DST_SLOT_HELD
U64 = struct.Struct("<Q")
DST_VAL_FIELDS = tuple(n for n, _ in AGG_STRUCTS["nd_dst_val"])
