"""ctnetlink statistics: per-CPU counters summed, deltas between reads, table fill (pure)."""
from __future__ import annotations

# Counters of `conntrack -S` (CTA_STATS_*), in the kernel's order. searched/new/delete/
# delete_list/insert are no longer maintained by current kernels (always 0) but still sent.
COUNTERS = ("searched", "found", "new", "invalid", "ignore", "delete", "delete_list", "insert",
            "insert_failed", "drop", "early_drop", "error", "search_restart", "clash_resolve",
            "chaintoolong")
FILL_WARN = 0.8


def sum_cpu_stats(per_cpu: list[dict]) -> dict[str, int]:
    """[{counter: value} per CPU] -> {counter: sum}. Unknown counters are kept, missing ones are 0."""
    total = dict.fromkeys(COUNTERS, 0)
    for cpu in per_cpu:
        for k, v in cpu.items():
            total[k] = total.get(k, 0) + int(v or 0)
    return total


def from_pyroute2_cpu(msgs) -> list[dict]:
    """``NFCTSocket.stat()`` messages -> [{counter: value}] (one dict per CPU)."""
    out = []
    for m in msgs:
        d = {}
        for name, value in m.get("attrs", []):
            if name.startswith("CTA_STATS_") and name != "CTA_STATS_UNSPEC":
                d[name[len("CTA_STATS_"):].lower()] = value
        # pyroute2 names it CHAIN_TOOLONG; `conntrack -S` and the kernel doc say chaintoolong
        if "chain_toolong" in d:
            d["chaintoolong"] = d.pop("chain_toolong")
        out.append(d)
    return out


def deltas(prev: dict[str, int] | None, cur: dict[str, int]) -> dict[str, int]:
    """cur - prev per counter; the first read (prev None) gives zeros. A counter that went
    backwards (a namespace recreated under the same inode) restarts from its current value."""
    if prev is None:
        return dict.fromkeys(cur, 0)
    out = {}
    for k, v in cur.items():
        p = prev.get(k, 0)
        out[k] = v - p if v >= p else v
    return out


def fill(entries: int | None, maximum: int | None, warn: float = FILL_WARN) -> dict:
    """Table fill and the warning (``entries >= warn * max``). Unknown max -> fill None."""
    if not maximum or entries is None:
        return {"fill": None, "fill_warning": False}
    f = entries / maximum
    return {"fill": round(f, 4), "fill_warning": f >= warn}


def read_conntrack_max(path: str = "/proc/sys/net/netfilter/nf_conntrack_max") -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
