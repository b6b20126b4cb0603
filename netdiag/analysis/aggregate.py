"""Pure aggregation for `netdiag watch`: cumulative kernel counters -> per-interval rows.

Kernel maps hold cumulative counters that never reset; each interval subtracts the previous
read, so no increment is lost or counted twice at a boundary. A key that vanished (LRU
eviction) and came back starts from zero: its delta is its new value.
"""
from __future__ import annotations

from typing import NamedTuple

from netdiag.analysis.keys import Endpoint, endpoint
from netdiag.analysis.records import DestinationRow

COUNTERS = ("connects", "established", "failed", "resets_in", "resets_out", "syn_retrans", "retrans",
            "accepts", "lat_sum_ns", "lat_count")
DIR_OUT, DIR_IN = 1, 2                               # bpf/nd_events.h ND_DIR_OUT / ND_DIR_IN
CODE_CONNECT_ERRNO, CODE_RST_OUT_REASON = 1, 2       # bpf/nd_events.h ND_CODE_*


class DstKey(NamedTuple):
    """A destination row's identity (a tuple: hashed and compared in C, it keys every dict of
    an interval)."""
    netns: int
    family: int       # 4 / 6
    addr: str
    port: int
    out: bool = True  # remote endpoint of outbound connections (False: a local service endpoint)

    @property
    def endpoint(self) -> Endpoint:
        """The row's ``dst`` key (its text, ``addr:port``, is what the sinks write)."""
        return endpoint(self.addr, self.port)


def delta(cur: dict, prev: dict | None) -> dict:
    """Per-counter difference of two cumulative readings of one key."""
    if prev is None:
        return {c: cur.get(c, 0) for c in COUNTERS}
    out = {}
    for c in COUNTERS:
        d = cur.get(c, 0) - prev.get(c, 0)
        out[c] = d if d >= 0 else cur.get(c, 0)       # evicted and re-inserted
    return out


def code_deltas(cur: dict, prev: dict) -> dict:
    """{(DstKey, kind, code): cumulative} pairs -> {(DstKey, kind): {code: delta}}."""
    out: dict = {}
    for k, v in cur.items():
        d = v - prev.get(k, 0)
        if d < 0:
            d = v
        if d:
            out.setdefault((k[0], k[1]), {})[k[2]] = d
    return out


def codes_seen(cur: dict, prev: dict, shown: set) -> dict:
    """The code counts to subtract next interval: advanced only for destinations that had a row
    this interval. A code counted between the read of the destination counters and the read of
    the codes belongs to a row that is not built until its counter moves; its delta waits for that
    row instead of being lost."""
    return {k: v if k[0] in shown else min(prev.get(k, 0), v) for k, v in cur.items()}


def trouble_key(row: dict):
    """Sort order of the destinations table: failures, then resets, then active."""
    return (-(row["failed"]), -(row["resets_in"] + row["resets_out"]), -(row["syn_retrans"]),
            -(row["active"]), row["dst"])


def build_rows(cur: dict, prev: dict, dirs: dict, active: dict, codes: dict,
               errno_name, rst_reason_name, netns_label, prev_active: dict | None = None,
               shown: set | None = None) -> list[DestinationRow]:
    """Interval rows for every key that did something this interval, holds connections, or
    whose `active` changed (so a destination going back to 0 is reported once).

    cur/prev: {DstKey: counters}; dirs: {DstKey: dir bits}; active: {DstKey: current gauge};
    codes: output of code_deltas (the domain is null here: the pipeline's enrichment names it);
    shown: if given, the keys that got a row are added to it."""
    rows = []
    for key, vals in cur.items():
        d = delta(vals, prev.get(key))
        act = active.get(key, 0)
        busy = any(d[c] for c in COUNTERS if c not in ("lat_sum_ns", "lat_count"))
        if not busy and act <= 0 and (prev_active or {}).get(key, 0) <= 0:
            continue
        if shown is not None:
            shown.add(key)
        bits = dirs.get(key, DIR_OUT)
        row = {
            "dst": key.endpoint,
            "domain": None,
            "direction": "out" if bits & DIR_OUT else "in",
            "netns": key.netns,
            "netns_name": netns_label(key.netns),
            "connects": d["connects"],
            "established": d["established"],
            "failed": d["failed"],
            "active": max(act, 0),
            "resets_in": d["resets_in"],
            "resets_out": d["resets_out"],
            "syn_retrans": d["syn_retrans"],
            "retrans": d["retrans"],
            "accepts": d["accepts"],
            "connect_ms_avg": round(d["lat_sum_ns"] / d["lat_count"] / 1e6, 3) if d["lat_count"] else None,
            "failed_by_errno": {errno_name(c): n for c, n in
                                sorted(codes.get((key, CODE_CONNECT_ERRNO), {}).items())},
            "resets_out_by_reason": {rst_reason_name(c): n for c, n in
                                     sorted(codes.get((key, CODE_RST_OUT_REASON), {}).items())},
        }
        rows.append(row)
    rows.sort(key=trouble_key)
    return rows


def node_totals(rows: list[dict]) -> dict:
    out_rows = [r for r in rows if r["direction"] == "out"]
    tot = {k: sum(r[k] for r in out_rows) for k in ("connects", "established", "failed", "active", "syn_retrans")}
    tot["resets_in"] = sum(r["resets_in"] for r in rows)
    tot["resets_out"] = sum(r["resets_out"] for r in rows)
    tot["retrans"] = sum(r["retrans"] for r in rows)
    return tot


def hist_delta(cur: list[int], prev: list[int] | None) -> dict[str, int]:
    """log2(us) buckets -> {"<lower>us": count} for the non-empty ones."""
    out = {}
    for i, v in enumerate(cur):
        d = v - (prev[i] if prev else 0)
        if d > 0:
            out[f"{1 << i}us" if i else "0us"] = d
    return out


def attribute_overflows(listeners: list[dict], overflow_delta: int) -> None:
    """Give a netns's ListenOverflows delta to its listeners whose accept queue is (or was) full."""
    if overflow_delta <= 0 or not listeners:
        for lst in listeners:
            lst.setdefault("overflows", 0)
        return
    full = [lst for lst in listeners if lst["backlog"] and lst["max_queue"] >= lst["backlog"]]
    if not full:
        full = [max(listeners, key=lambda lst: (lst["max_queue"] / lst["backlog"]) if lst["backlog"] else 0)]
    for lst in listeners:
        lst["overflows"] = overflow_delta if lst in full and len(full) == 1 else 0
    if len(full) > 1:
        for lst in full:
            lst["overflows"] = overflow_delta       # shared: each full listener may be the one
            lst["overflows_shared"] = True
