"""Per-process rows of an interval record (watch --per-process) and the connection_fanout
evidence (pure functions: no I/O).

The kernel counts per (tgid, netns) (bpf/agg.c nd_procs): connects a process started, their
outcomes, the resets on the connections it opened, and the connections it accepted where an
accept hook runs in the acceptor's context (kretprobe/fexit on inet_csk_accept, or
syscalls:sys_exit_accept4 with `watch --accepts`). Elsewhere a process's inbound connections are
the handshakes completed on the listeners it holds (``attribute_listeners``).
"""
from __future__ import annotations

COUNTERS = ("connects", "established", "failed", "resets_in", "resets_out", "accepts")
INBOUND_ACCEPT, INBOUND_LISTENER = "accept", "listener"


def sum_percpu(values: list[dict]) -> dict:
    """One nd_proc_val per CPU -> the process's totals; its name from the first CPU that has it."""
    out = dict.fromkeys(COUNTERS, 0)
    out["comm"] = ""
    for v in values:
        for c in COUNTERS:
            out[c] += v[c]
        if not out["comm"] and v["comm"]:
            out["comm"] = v["comm"]
    return out


def build_rows(cur: dict, prev: dict, netns_label, accepts_measured: bool) -> list[dict]:
    """Rows of the processes that did something this interval. cur/prev: {(tgid, netns): totals}
    (``sum_percpu``); a process seen for the first time counts from zero (it started after attach,
    or was evicted and came back: its earlier counts were reported before)."""
    rows = []
    for (tgid, netns), v in cur.items():
        p = prev.get((tgid, netns))
        d = {c: v[c] - (p[c] if p else 0) for c in COUNTERS}
        if any(x < 0 for x in d.values()):          # evicted and inserted anew since the last read
            d = {c: v[c] for c in COUNTERS}
        if not any(d.values()):
            continue
        rows.append({
            "pid": tgid,
            "comm": v["comm"] or (p or {}).get("comm") or None,
            "netns": netns,
            "netns_name": netns_label(netns),
            "connects": d["connects"],
            "established": d["established"],
            "failed": d["failed"],
            "resets_in": d["resets_in"],
            "resets_out": d["resets_out"],
            "accepts": d["accepts"] if accepts_measured else None,
            "inbound": d["accepts"] if accepts_measured else 0,
            "inbound_via": INBOUND_ACCEPT if accepts_measured else INBOUND_LISTENER,
        })
    return rows


def attribute_listeners(rows: list[dict], listeners: list[dict], owners: dict, netns_label) -> None:
    """Where no accept hook runs: each listener's handshakes completed this interval become the
    ``inbound`` of the first (lowest tgid) process that holds it. ``owners``: {(netns, listen):
    [(tgid, comm), ...]}. Rows are added for holders that did nothing else."""
    by_key = {(r["pid"], r["netns"]): r for r in rows}
    for ls in listeners:
        n = ls.get("established") or 0
        holders = owners.get((ls["netns"], ls["listen"]))
        if not n or not holders:
            continue
        tgid, comm = holders[0]
        r = by_key.get((tgid, ls["netns"]))
        if r is None:
            r = by_key[(tgid, ls["netns"])] = {
                "pid": tgid, "comm": comm or None, "netns": ls["netns"], "netns_name": netns_label(ls["netns"]),
                "connects": 0, "established": 0, "failed": 0, "resets_in": 0, "resets_out": 0,
                "accepts": None, "inbound": 0, "inbound_via": INBOUND_LISTENER}
            rows.append(r)
        r["inbound"] += n
        r.setdefault("listens", [])
        if ls["listen"] not in r["listens"]:
            r["listens"].append(ls["listen"])


def sort_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (-r["failed"], -(r["resets_in"] + r["resets_out"]), -r["connects"],
                                       -r["inbound"], r["netns"], r["pid"]))


def rollup_groups(rows: list[dict]) -> dict:
    """{(netns, comm): totals} of processes of one name in one namespace (a server's workers, a
    pod's replicas of one program): connects, inbound and the pids."""
    out: dict = {}
    for r in rows:
        g = out.setdefault((r["netns"], r.get("comm") or f"pid {r['pid']}"), {
            "connects": 0, "inbound": 0, "failed": 0, "pids": set(), "netns_name": r.get("netns_name"),
            "inbound_via": r.get("inbound_via")})
        g["connects"] += r["connects"]
        g["inbound"] += r["inbound"]
        g["failed"] += r["failed"]
        g["pids"].add(r["pid"])
    return out


def fanout_dsts(records: list[dict], netns: int, top: int = 5) -> list[dict]:
    """The outbound destinations of a namespace over some records, most connects first."""
    per: dict = {}
    for rec in records:
        for d in rec.get("destinations", []):
            if d["netns"] == netns and d.get("direction") == "out" and d.get("connects"):
                per[d["dst"]] = per.get(d["dst"], 0) + d["connects"]
    return [{"dst": k, "connects": v} for k, v in sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def _ns_text(name, inode) -> str:
    return f"netns {name}" if name else f"netns {inode}"


def fanout_found(win: list[dict], span: float, t) -> dict:
    """connection_fanout over the records of the window: processes of one name in one namespace
    (a proxy's workers, a pod's program) that open more outbound connections per inbound
    connection than ``t.fanout_ratio``. Keyed like every verdict: (kind, netns, name)."""
    groups: dict = {}
    for rec in win:
        if "processes" not in rec:
            continue
        for key, g in rollup_groups(rec["processes"]).items():
            a = groups.setdefault(key, {"connects": 0, "inbound": 0, "failed": 0, "pids": set(),
                                        "netns_name": g["netns_name"], "inbound_via": g["inbound_via"]})
            a["connects"] += g["connects"]
            a["inbound"] += g["inbound"]
            a["failed"] += g["failed"]
            a["pids"] |= g["pids"]
            a["inbound_via"] = g["inbound_via"] or a["inbound_via"]
    found = {}
    for (ns, comm), a in groups.items():
        if a["inbound"] < t.fanout_min_inbound or a["connects"] < t.fanout_min_connects:
            continue
        ratio = a["connects"] / a["inbound"]
        if ratio < t.fanout_ratio:
            continue
        dsts = fanout_dsts(win, ns)
        r = round(ratio, 2)
        found[("connection_fanout", ns, comm)] = {
            "kind": "connection_fanout", "dst": None, "netns": ns, "netns_name": a["netns_name"],
            "process": comm, "pids": sorted(a["pids"]),
            "where": f"{comm} in {_ns_text(a['netns_name'], ns)}: between its clients and its upstreams",
            "ratio": r,
            "evidence": {"connects": a["connects"], "inbound": a["inbound"], "inbound_via": a["inbound_via"],
                         "connects_per_inbound": r, "failed": a["failed"], "destinations": dsts,
                         "threshold": t.fanout_ratio, "window_s": round(span, 1)},
            "advice": (f"{comm} opens {r:g} upstream connections per connection it accepts: each client "
                       "connection becomes a burst of new backend connections (handshakes, conntrack entries, "
                       "TIME_WAIT ports, SNAT ports). Pool and reuse upstream connections: on nginx, `keepalive N` "
                       "in the upstream block with `proxy_http_version 1.1` and `proxy_set_header Connection \"\"`; "
                       "in an application, a shared HTTP client with keep-alive. Raise keepalive_requests on both "
                       "sides, and make idle timeouts match: the side that keeps idle connections open must close "
                       "them before the other side does (upstream keepalive_timeout below the backend's idle "
                       "timeout), or pooled connections die under requests"),
        }
    return found
