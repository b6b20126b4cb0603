"""SNAT rows from the kernel counters of bpf/snat.c (the kprobe path), in the shape
``ConntrackMonitor.snapshot()["snat"]`` has, so both paths feed the same watch fields.

What each number is, in this path:

* ``ports_in_use``: source-NATed entries confirmed after attach and not yet removed from the
  table (``nf_ct_delete``, or ``nf_conntrack_free`` as a catch-all). Entries created before
  netdiag attached are not counted: no allocation was seen for them.
* ``port_range``: from the ``nf_nat_range2`` the NAT rule passed to ``nf_nat_setup_info``
  (min/max proto) when it names ports; otherwise the range the ctnetlink path derived from the
  namespace's NAT rules.
* ``allocations`` / ``releases``: confirmed entries created / removed in the interval.
* ``insert_failed``: ``__nf_conntrack_confirm`` returned NF_DROP for an entry of this row, in the
  interval: attributed to the destination directly, not inferred from saturation.
* ``peak_in_use``: the larger of the values at the interval's start and end (the kernel keeps no
  per-interval high-water mark).
"""
from __future__ import annotations

import socket
import struct

from netdiag.sources.conntrack.ctmsg import PROTO_NAMES
from netdiag.sources.conntrack.snat import utilization

# bpf/nd_events.h struct nd_snat_key / struct nd_snat_val (tests/unit/test_header_contract.py)
SNAT_KEY = struct.Struct("<IHHB7x16s16s")
SNAT_VAL = struct.Struct("<qQQQQIHH")
NF_NAT_RANGE_PROTO_SPECIFIED = 1 << 1
AF_INET6 = 10
COUNTERS = ("allocations", "releases", "insert_failed", "setups")


def _ip(family: int, raw: bytes) -> str:
    if family == AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def decode(items) -> dict:
    """[(key bytes, value bytes)] of nd_snat -> {(netns, nat_ip|None, dst_ip, dst_port, proto): values}."""
    out = {}
    for kb, vb in items:
        netns, family, dport, proto, nat, dst = SNAT_KEY.unpack(kb)
        in_use, allocs, rels, failed, setups, flags, lo, hi = SNAT_VAL.unpack(vb)
        nat_ip = None if not any(nat) else _ip(family, nat)
        key = (netns, nat_ip, _ip(family, dst), dport, PROTO_NAMES.get(proto, str(proto)))
        out[key] = {"in_use": in_use, "allocations": allocs, "releases": rels, "insert_failed": failed,
                    "setups": setups,
                    "range": (hi - lo + 1) if flags & NF_NAT_RANGE_PROTO_SPECIFIED and hi >= lo else None}
    return out


def _dst(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def rows(cur: dict, prev: dict, netlink_rows: list[dict], label=lambda inode: None) -> list[dict]:
    """This interval's SNAT rows from two reads of nd_snat (``decode`` output). ``netlink_rows``
    (the ctnetlink path's rows of the same interval) give the rule and, where the kernel's range
    names no ports, the rule's port range. Rows without a NAT address (insert failures of entries
    that were not source-NATed) are not SNAT rows and are left out."""
    by_key = {(r["netns"], r["nat_ip"], r["dst"], r["proto"]): r for r in netlink_rows}
    out = []
    for key, v in sorted(cur.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2], kv[0][3])):
        netns, nat_ip, dst_ip, dport, proto = key
        if nat_ip is None:
            continue
        p = prev.get(key, {})
        d = {c: v[c] - p.get(c, 0) for c in COUNTERS}
        before = p.get("in_use", 0)
        if not (v["in_use"] or before or any(d.values())):
            continue
        dst = _dst(dst_ip, dport)
        nl = by_key.get((netns, nat_ip, dst, proto))
        prange, source = v["range"], "nf_nat_range2"
        if prange is None:
            prange = nl["port_range"] if nl else None
            source = nl["range_source"] if nl else "unknown"
        in_use, peak = max(v["in_use"], 0), max(v["in_use"], before, 0)
        out.append({
            "netns": netns, "netns_name": label(netns), "nat_ip": nat_ip, "dst": dst, "proto": proto,
            "ports_in_use": in_use, "peak_in_use": peak, "port_range": prange, "range_source": source,
            "utilization": utilization(in_use, prange), "peak_utilization": utilization(peak, prange),
            "allocations": d["allocations"], "releases": d["releases"],
            "insert_failed": d["insert_failed"], "drop": nl["drop"] if nl else 0,
            "failed_allocations": d["insert_failed"],
            "rule": nl["rule"] if nl else None, "source": "kprobe",
        })
    return out


def merge_into_snapshot(snap: dict, krows: list[dict]) -> dict:
    """A ConntrackMonitor snapshot whose SNAT rows are the kprobe path's (the netlink ones are
    replaced, not mixed: one source per number). Per-namespace stats and table fill stay."""
    out = dict(snap)
    out["snat"] = krows
    modes = dict(snap.get("modes") or {})
    modes.update({"snat": "kprobe", "conntrack": "kprobe"})
    out["modes"] = modes
    return out
