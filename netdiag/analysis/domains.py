"""Domains and pods on interval records (pure functions over the record and lookups).

``annotate(record, observer, pods)`` fills ``domain`` on each outbound destination row from what
that row's namespace resolved to its address (most recent resolution at or before the record's
time; ties listed in ``domain_ties``), adds ``pod`` when a PodMap is given, puts the observer's
interval snapshot in ``record["dns"]``; ``name_verdicts`` names the domain and pods of each
verdict once the verdicts exist.
``rollup_domains`` / ``rollup_pods`` turn the rows into per-domain / per-pod rows with the same
counter keys plus ``ips`` and ``dns``. ``dns_rate_limit_verdict`` reads a snapshot.
"""
from __future__ import annotations

import queue
import socket
import threading
from collections import OrderedDict

from netdiag.sources.dns.cache import merge_dns

COUNTERS = ("connects", "established", "failed", "active", "resets_in", "resets_out", "syn_retrans", "retrans")
LINK_LOCAL_PPS = 1024        # per-instance packet limit of a cloud's link-local DNS resolver (AWS)


class ReverseResolver:
    """PTR lookups for addresses never seen in DNS (``--resolve``), one background thread,
    bounded cache; ``lookup`` never blocks: None until the answer is in."""

    def __init__(self, max_entries: int = 10_000, resolver=None):
        self._resolve = resolver or self._ptr
        self._cache: OrderedDict = OrderedDict()
        self._q: queue.Queue = queue.Queue(maxsize=1024)
        self._queued: set = set()
        self._max = max_entries
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._run, name="reverse-dns", daemon=True)
        self._t.start()

    @staticmethod
    def _ptr(ip: str) -> str | None:
        try:
            return socket.gethostbyaddr(ip)[0].rstrip(".").lower()
        except (OSError, UnicodeError):
            return None

    def _run(self):
        while True:
            ip = self._q.get()
            if ip is None:
                return
            name = self._resolve(ip)
            with self._lock:
                self._cache[ip] = name
                self._queued.discard(ip)
                if len(self._cache) > self._max:
                    self._cache.popitem(last=False)

    def lookup(self, ip: str) -> str | None:
        with self._lock:
            if ip in self._cache:
                return self._cache[ip]
            if ip in self._queued:
                return None
            self._queued.add(ip)
        try:
            self._q.put_nowait(ip)
        except queue.Full:
            with self._lock:
                self._queued.discard(ip)
        return None

    def wait_idle(self, timeout: float = 5.0) -> None:
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queued:
                    return
            time.sleep(0.01)

    def close(self):
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass


def annotate(record: dict, observer, pods=None, reverse: ReverseResolver | None = None) -> None:
    """Fill ``domain`` (and ``domain_source``, ``domain_chain``, ``domain_ties``,
    ``domain_expired``) on outbound rows, ``pod`` on every row when ``pods`` is given, and
    ``record["dns"]`` with ``observer.snapshot()``. Calls snapshot() once: call annotate once
    per interval."""
    ts = record.get("ts")
    start = ts - record.get("interval_s", 0) if ts is not None else None
    for row in record.get("destinations", []):
        if pods is not None:
            row["pod"] = pods.label(row["netns"])
        if row.get("direction", "out") != "out":
            continue
        ip = row["dst"].addr
        entries = observer.entries(row["netns"], ip, at=ts) if observer is not None else []
        if entries:
            top = entries[0]
            if row.get("by_process"):
                top = _split_by_resolver(row, entries) or top
            row["domain"] = top.name
            row["domain_source"] = "dns"
            if len(top.chain) > 1:
                row["domain_chain"] = list(top.chain)
            ties = [e.name for e in entries if e.ts == top.ts]
            if len(ties) > 1:
                row["domain_ties"] = ties
            # connections opened in this interval to an address whose answer had already expired
            row["domain_expired"] = bool(start is not None and top.expires < start)
        elif reverse is not None:
            name = reverse.lookup(ip)
            if name:
                row["domain"] = name
                row["domain_source"] = "reverse"
    if observer is not None:
        snapshot = observer.snapshot()
        if pods is not None:
            for r in snapshot.get("netns", []) + snapshot.get("netns_domains", []):
                r["pod"] = pods.label(r["netns"])
        record["dns"] = snapshot


def _split_by_resolver(row: dict, entries: list):
    """Each process's share of the row (``by_process``) goes to the name *that process* resolved
    for the address most recently (its pod's, the namespace's most recent, where it resolved
    nothing or the capture does not say who read the answer); connects no process row covers go
    to the pod's name too. Sets ``domain_by`` ("process" when every share was named by its own
    process's lookup, else "pod") and, when the shares name more than one domain,
    ``domain_split``; returns the resolution of the largest share (None: nothing to split)."""
    pod_top = entries[0]
    shares: dict = {}

    def share(res, by):
        s = shares.get(res.name)
        if s is None:
            s = shares[res.name] = {"domain": res.name, "connects": 0, "established": 0, "failed": 0,
                                    "pids": [], "by": by, "_res": res}
        elif by == "pod":
            s["by"] = "pod"
        return s

    covered = {"connects": 0, "established": 0, "failed": 0}
    for p in row["by_process"]:
        mine = [e for e in entries if e.pid and e.pid == p["pid"]]
        s = share(mine[0] if mine else pod_top, "process" if mine else "pod")
        for c in covered:
            s[c] += p[c]
            covered[c] += p[c]
        s["pids"].append(p["pid"])
    rest = {c: max(0, (row.get(c) or 0) - covered[c]) for c in covered}
    if any(rest.values()):
        s = share(pod_top, "pod")
        for c in rest:
            s[c] += rest[c]
    if not shares:
        return None
    parts = sorted(shares.values(), key=lambda s: (-s["connects"], -s["_res"].ts, s["domain"]))
    row["domain_by"] = "process" if all(s["by"] == "process" for s in parts) else "pod"
    if len(parts) > 1:
        row["domain_split"] = [{k: v for k, v in s.items() if k != "_res"} for s in parts]
    return parts[0]["_res"]


def name_verdicts(verdicts: list[dict], record: dict, memo: dict | None = None) -> None:
    """Give each verdict ``domain`` (str or None) and ``pods`` (list) from the destination rows it
    is about: rows of its ``dst`` in its ``netns`` (any namespace when none there: a NAT's
    verdict names the clients' rows), or for a listener the inbound rows it serves, or for a
    namespace-wide verdict that namespace's rows. ``domain`` is the rows' domain when they
    agree on one. A verdict that stands without rows this interval keeps what ``memo`` (a dict
    kept across intervals) last saw for it. A ``pods`` already there is kept."""
    rows = record.get("destinations", [])
    index = _RowIndex(rows) if verdicts else None
    for v in verdicts:
        mine = _verdict_rows(v, index)
        key = (v.get("kind"), v.get("netns"), v.get("dst") or v.get("listener"))
        if mine:
            doms = {r.get("domain") for r in mine if r.get("domain")}
            named = (doms.pop() if len(doms) == 1 else None, sorted({_who(r) for r in mine}))
            if memo is not None:
                memo[key] = named
        else:
            named = (memo or {}).get(key, (None, []))
        v.setdefault("domain", named[0])
        v.setdefault("pods", list(named[1]))


class _RowIndex:
    """An interval's rows by endpoint and by namespace: naming V verdicts costs the rows each one
    is about, not V passes over every row."""

    def __init__(self, rows: list[dict]):
        self.by_dst: dict = {}
        self.by_ns: dict = {}
        for r in rows:
            self.by_dst.setdefault(r["dst"], []).append(r)
            self.by_ns.setdefault(r["netns"], []).append(r)


def _verdict_rows(v: dict, index: _RowIndex) -> list[dict]:
    ns, dst, listen = v.get("netns"), v.get("dst"), v.get("listener")
    if dst:
        same = index.by_dst.get(dst, [])
        here = [r for r in same if r["netns"] == ns]
        out = [r for r in (here or same) if r.get("direction") == "out"]
        return out or here or same
    if listen:
        port, wild, addr = listen.port, listen.wildcard, listen.addr
        return [r for r in index.by_ns.get(ns, []) if r.get("direction") == "in"
                and r["dst"].port == port and (wild or r["dst"].addr == addr)]
    if ns is not None:
        return list(index.by_ns.get(ns, []))
    return []


def _who(row: dict) -> str:
    return row.get("pod") or row.get("netns_name") or f"netns:{row.get('netns')}"


def _merge_map(dst: dict, src: dict) -> None:
    for k, n in (src or {}).items():
        dst[k] = dst.get(k, 0) + n


def _new_group(**keys) -> dict:
    g = dict(keys)
    g.update({c: 0 for c in COUNTERS})
    g.update({"accepts": None, "failed_by_errno": {}, "resets_out_by_reason": {}, "_ips": set(), "_ports": set(),
              "_who": set(), "_pods": set(), "_chain": [], "_ms": 0.0, "_ms_n": 0, "dsts": 0})
    return g


def _add_row(g: dict, row: dict) -> None:
    for c in COUNTERS:
        g[c] += row.get(c, 0) or 0
    if row.get("accepts") is not None:
        g["accepts"] = (g["accepts"] or 0) + row["accepts"]
    _merge_map(g["failed_by_errno"], row.get("failed_by_errno"))
    _merge_map(g["resets_out_by_reason"], row.get("resets_out_by_reason"))
    dst = row["dst"]
    g["_ips"].add(dst.addr)
    g["_ports"].add(dst.port)
    g["_who"].add(row.get("netns_name") or f"netns:{row.get('netns')}")
    if row.get("pod"):
        g["_pods"].add(row["pod"])
    g["dsts"] += 1
    for n in row.get("domain_chain") or []:
        if n not in g["_chain"]:
            g["_chain"].append(n)
    if row.get("connect_ms_avg") is not None and row.get("established"):
        g["_ms"] += row["connect_ms_avg"] * row["established"]
        g["_ms_n"] += row["established"]


def _finish(g: dict, who_key: str | None) -> dict:
    g["ips"] = len(g["_ips"])
    g["addrs"] = sorted(g.pop("_ips"))
    g["ports"] = sorted(g.pop("_ports"))
    who, pods = sorted(g.pop("_who")), sorted(g.pop("_pods"))
    if who_key:
        g["netns_names"] = who
        if pods:
            g["pods"] = pods
    chain = g.pop("_chain")
    if len(chain) > 1 or g.get("chain"):
        g["chain"] = g.get("chain") or chain
    n = g.pop("_ms_n")
    ms = g.pop("_ms")
    g["connect_ms_avg"] = round(ms / n, 3) if n else None
    g.setdefault("dns", None)
    return g


def _trouble(g: dict):
    d = g.get("dns") or {}
    return (-g["failed"], -(g["resets_in"] + g["resets_out"]),
            -(d.get("nxdomain", 0) + d.get("servfail", 0) + d.get("timeouts", 0)), -g["syn_retrans"], -g["active"],
            -g["connects"], str(g.get("pod") or ""), str(g.get("domain") or g.get("name")))


def _aliases(dns: dict) -> dict:
    """alias -> canonical name, from the chains seen this interval."""
    out = {}
    for r in dns.get("domains", []) + dns.get("netns_domains", []):
        ch = r.get("chain")
        if ch and len(ch) > 1:
            for n in ch[:-1]:
                out[n] = ch[-1]
    return out


def rollup_domains(record: dict, per_pod: bool = False) -> list[dict]:
    """Outbound rows merged by domain (all its IPs and ports, every namespace), or by
    (pod, domain) with ``per_pod``. Addresses never named stay rows of their own IP
    (``domain`` null, ``name`` the IP). Domains seen only in DNS (an NXDOMAIN, a lookup not
    followed by a connection) get a row with zero counters. Each row: ``name``, ``domain``,
    ``domain_source``, the counters of the destination rows, ``ips`` (distinct addresses),
    ``addrs``, ``ports``, ``dsts``, ``chain`` (the CNAME chain that led to it, when one did),
    ``netns_names`` or ``pod`` and ``dns`` (queries, answers, nxdomain, servfail, timeouts,
    packets, latency_ms of this name and its aliases, or null)."""
    dns = record.get("dns") or {}
    alias = _aliases(dns)
    groups: dict = {}
    for whole in record.get("destinations", []):
        if whole.get("direction", "out") != "out":
            continue
        for row in _parts(whole):
            name = row.get("domain") or row["dst"].addr
            key = (_who(row) if per_pod else None, name)
            g = groups.get(key)
            if g is None:
                extra = {"pod": key[0]} if per_pod else {}
                g = groups[key] = _new_group(name=name, domain=row.get("domain"),
                                             domain_source=row.get("domain_source"), **extra)
            _add_row(g, row)
    # DNS statistics: per name (node-wide) or per (pod, name); aliases fold into their target
    if per_pod:
        src = [((r.get("pod") or r.get("netns_name") or f"netns:{r['netns']}"), r) for r in dns.get("netns_domains", [])]
    else:
        src = [(None, r) for r in dns.get("domains", [])]
    for who, r in src:
        name = alias.get(r["domain"], r["domain"])
        key = (who, name)
        g = groups.get(key)
        if g is None:
            extra = {"pod": who} if per_pod else {}
            g = groups[key] = _new_group(name=name, domain=name, domain_source="dns", **extra)
        stats = {k: r.get(k) for k in ("queries", "answers", "nxdomain", "servfail", "timeouts", "packets",
                                        "tcp", "latency_ms", "pps")}
        g["dns"] = merge_dns(g.get("dns"), stats)
        if r.get("chain") and len(r["chain"]) > 1:
            g["chain"] = r["chain"]
    out = [_finish(g, None if per_pod else "netns_names") for g in groups.values()]
    out.sort(key=_trouble)
    return out


def _parts(row: dict) -> list[dict]:
    """A row whose connections several names share (``domain_split``) as one row per name: each
    with its share's connects, established and failed; the row's other counters (active,
    resets, retransmits, errno breakdown) stay with its main domain (the first share)."""
    split = row.get("domain_split")
    if not split:
        return [row]
    out = []
    for i, s in enumerate(split):
        part = dict(row) if i == 0 else {**row, **{c: 0 for c in COUNTERS}, "failed_by_errno": {},
                                         "resets_out_by_reason": {}, "connect_ms_avg": None}
        part.update(domain=s["domain"], connects=s["connects"], established=s["established"], failed=s["failed"])
        out.append(part)
    return out


def rollup_pods(record: dict) -> list[dict]:
    """Outbound rows merged by pod (ip-netns name, or ``netns:<inode>``, off Kubernetes), with
    ``ips``, ``domains`` (distinct names), ``dsts`` and the pod's DNS statistics."""
    dns = record.get("dns") or {}
    groups: dict = {}
    for row in record.get("destinations", []):
        if row.get("direction", "out") != "out":
            continue
        who = _who(row)
        g = groups.get(who)
        if g is None:
            g = groups[who] = _new_group(pod=who)
            g["_domains"] = set()
        _add_row(g, row)
        if row.get("domain"):
            g["_domains"].add(row["domain"])
    for r in dns.get("netns", []):
        who = r.get("pod") or r.get("netns_name") or f"netns:{r['netns']}"
        g = groups.get(who)
        if g is None:
            g = groups[who] = _new_group(pod=who)
            g["_domains"] = set()
        stats = {k: r.get(k) for k in ("queries", "answers", "nxdomain", "servfail", "timeouts", "packets",
                                        "tcp", "latency_ms", "pps")}
        g["dns"] = merge_dns(g.get("dns"), stats)
    out = []
    for g in groups.values():
        g["domains"] = sorted(g.pop("_domains"))
        g = _finish(g, None)
        g.pop("chain", None)
        out.append(g)
    out.sort(key=_trouble)
    return out


def dns_rate_limit_verdict(snapshot: dict | None, share: float = 0.5, limit_pps: int = LINK_LOCAL_PPS,
                           top: int = 5) -> dict | None:
    """``dns_rate_limit_risk`` when the node's DNS packet rate is over ``share`` of the
    link-local resolver limit (1,024 packets/s per instance on AWS: seed 003), with the pods
    (or namespaces) sending the most DNS packets."""
    if not snapshot or snapshot.get("pps") is None:
        return None
    pps = snapshot["pps"]
    if pps <= share * limit_pps:
        return None
    per: dict = {}
    for r in snapshot.get("netns", []):
        who = r.get("pod") or r.get("netns_name") or f"netns:{r['netns']}"
        e = per.setdefault(who, {"pod": who, "packets": 0, "pps": 0.0, "queries": 0})
        e["packets"] += r.get("packets", 0)
        e["pps"] = round(e["pps"] + r.get("pps", 0.0), 1)
        e["queries"] += r.get("queries", 0)
    tops = sorted(per.values(), key=lambda e: (-e["packets"], e["pod"]))[:top]
    doms = [{"domain": d["domain"], "packets": d["packets"]} for d in snapshot.get("domains", [])[:top]]
    pct = round(100.0 * pps / limit_pps, 1)
    return {
        "kind": "dns_rate_limit_risk",
        "dst": None,
        "where": "this node: DNS packets its namespaces send and receive as clients",
        "cap": limit_pps,
        "pods": [e["pod"] for e in tops],
        "evidence": {"dns_pps": pps, "limit_pps": limit_pps, "share_of_limit": round(pps / limit_pps, 3),
                     "threshold_share": share, "packets": snapshot.get("packets", 0),
                     "queries": snapshot.get("queries", 0), "interval_s": snapshot.get("interval_s"),
                     "top_pods": tops, "top_domains": doms},
        "advice": (f"DNS runs at {pps:.0f} packets/s on this node, {pct}% of the {limit_pps} packets/s a cloud's "
                   "link-local resolver accepts per instance (AWS; packets, not queries: a UDP lookup is 2, "
                   "over TCP more); beyond it lookups are dropped and time out. Cache closer to the pods "
                   "(NodeLocal DNSCache), cut search-path expansion (ndots:1 or fully qualified names with a "
                   "trailing dot), cache in the top pods listed, spread CoreDNS replicas over nodes."),
    }
