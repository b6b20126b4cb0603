"""Verdicts from interval records (pure: no I/O, no kernel; replays recorded NDJSON offline).

``Diagnoser().update(record)`` takes one `watch` interval record (docs/contracts.md), its
endpoints as keys (netdiag/analysis/keys.py: a live record's are; one read back from a file gets
them from ``netdiag.offline.keys.with_keys``), and returns the verdicts standing after it;
``.all()`` returns every verdict of the run. A verdict is keyed by (kind, netns, destination or
listener): it appears once its evidence held for ``confirm_intervals`` consecutive intervals over
a window of ``window_s`` seconds, and from then on it is updated in place (``last_ts``,
``intervals``, number, evidence), never repeated.

Every threshold is in ``netdiag.analysis.thresholds``; docs/verdicts.md explains each verdict.
"""
from __future__ import annotations

import copy
from collections import deque
from statistics import median

from netdiag.analysis.keys import WILDCARDS, Endpoint
from netdiag.analysis.processes import fanout_found
from netdiag.analysis.records import IntervalRecord, Verdict
from netdiag.analysis.thresholds import DEFAULT, Thresholds

KINDS = ("snat_port_exhaustion", "remote_connection_cap", "local_port_exhaustion", "conntrack_table_full",
         "conntrack_insert_race", "listen_overflow", "idle_timeout_reset", "connection_burst", "connection_churn",
         "connection_fanout")

# the number each kind reports
NUMBER = {"snat_port_exhaustion": "cap", "remote_connection_cap": "cap", "local_port_exhaustion": "cap",
          "conntrack_table_full": "cap", "conntrack_insert_race": "insert_failed", "listen_overflow": "backlog",
          "idle_timeout_reset": "timeout_s", "connection_burst": "peak_per_ms",
          "connection_churn": "connects_per_active", "cloud_allowance_exceeded": "per_s",
          "cloud_allowance_low": "available", "connection_fanout": "ratio"}

# The NIC driver's allowances (netdiag/sources/nicstats.py): what each one limits and the fix.
ALLOWANCES = {
    "bw_in": ("inbound aggregate bandwidth of the instance",
              "move to an instance size with more network bandwidth, or spread the inbound traffic over more "
              "instances"),
    "bw_out": ("outbound aggregate bandwidth of the instance",
               "move to an instance size with more network bandwidth, or spread the outbound traffic over more "
               "instances"),
    "pps": ("packets per second of the instance (both directions)",
            "move to an instance size with a higher packets-per-second allowance; fewer, larger packets (batching, "
            "keep-alive instead of a connection per request)"),
    "conntrack": ("connections the instance may track (security groups)",
                  "move to a larger instance, or make long-lived, high-volume flows untracked (security group rules "
                  "that allow all traffic both ways on those ports are not tracked), and shorten idle timeouts"),
    "linklocal": ("packets per second to the link-local services (DNS resolver, instance metadata, time sync)",
                  "cache DNS on the node (NodeLocal DNSCache, a local resolver) and fetch instance metadata less "
                  "often: the link-local allowance is per network interface, 1024 packets/s on EC2"),
}

UNDECIDED = object()

# connect() failures that say nothing about a cap beyond the node
_NOT_CAP_ERRNOS = ("ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH", "EHOSTUNREACH", "ECANCELED")


def _by_port(rows: dict) -> dict:
    """{port: [(addr, netns, rows)]} of a ``_rows`` table: what a listener may serve is looked up
    by its port, so a pass over listeners costs the rows on that port, not every row."""
    out: dict = {}
    for (ns, dst), rs in rows.items():
        out.setdefault(dst.port, []).append((dst.addr, ns, rs))
    return out


def _served(listen: Endpoint, by_port: dict) -> list:
    """[(netns, rows)] of the destinations (``_by_port``) listener ``listen`` serves."""
    wild, la = listen.wildcard, listen.addr
    return [(ns, rs) for addr, ns, rs in by_port.get(listen.port, ()) if wild or la == addr]


def _ns_label(name, inode) -> str:
    return f"netns {name}" if name else (f"netns {inode}" if inode is not None else "this node")


class Diagnoser:
    def __init__(self, thresholds: Thresholds | None = None):
        self.t = thresholds or DEFAULT
        self.window: deque = deque()           # recent records (ts, interval_s, record)
        self.verdicts: dict = {}               # key -> verdict dict (the run's verdicts)
        self.streak: dict = {}                 # key -> consecutive intervals the evidence held
        self.cohorts: dict = {}                # (netns, dst) -> deque([ts | None, n]) oldest first
        self.prev_active: dict = {}            # (netns, dst) -> active at the previous interval
        self.idle_events: dict = {}            # (netns, dst) -> list of reset events
        self.now = 0.0

    # -- public -----------------------------------------------------------------------------------
    def update(self, record: IntervalRecord) -> list[Verdict]:
        if record.get("type", "interval") != "interval":
            return self.standing()
        self.now = float(record["ts"])
        self.window.append(record)
        while self.window and self.window[0]["ts"] <= self.now - self.t.window_s:
            self.window.popleft()
        self._track_ages(record)
        found = self._evaluate(record)
        for key in list(self.streak):
            if key not in found:
                self.streak[key] = 0
        for key, v in found.items():
            self.streak[key] = self.streak.get(key, 0) + 1
            if self.streak[key] >= self.t.confirm_intervals or key in self.verdicts:
                self._record(key, v)
        return self.standing()

    def standing(self) -> list[dict]:
        return [copy.deepcopy(v) for v in self.verdicts.values() if v["last_ts"] >= self.now - self.t.stand_s]

    def all(self) -> list[dict]:
        return [copy.deepcopy(v) for v in self.verdicts.values()]

    # -- bookkeeping ----------------------------------------------------------------------------
    def _record(self, key, v: dict) -> None:
        old = self.verdicts.get(key)
        if old is None:
            v.update(first_ts=self.now, last_ts=self.now, intervals=1)
            self.verdicts[key] = v
            return
        num = NUMBER[v["kind"]]
        keep_max = num in ("cap", "peak_per_ms", "connects_per_active", "insert_failed", "ratio")
        if keep_max and old.get(num) is not None and v.get(num) is not None and old[num] > v[num]:
            v[num] = old[num]                 # the number is the largest seen over the run, with its evidence
            v["evidence"] = old["evidence"]
        v.update(first_ts=old["first_ts"], last_ts=self.now, intervals=old["intervals"] + 1)
        self.verdicts[key] = v

    def _track_ages(self, rec: dict) -> None:
        """Ages of open connections per outbound destination, oldest first (FIFO), from the
        per-interval `established` counts: what idle_timeout_reset needs to date a reset."""
        seen = set()
        for r in rec["destinations"]:
            if r["direction"] != "out":
                continue
            key = (r["netns"], r["dst"])
            seen.add(key)
            q = self.cohorts.setdefault(key, deque())
            prev = self.prev_active.get(key)
            if prev is None and r["active"] > r["established"]:
                q.append([None, r["active"] - r["established"]])     # open before we started: age unknown
                prev = r["active"] - r["established"]
            prev = prev or 0
            if r["established"]:
                q.append([rec["ts"], r["established"]])
            resets = max(0, r["resets_in"] - r["failed_by_errno"].get("ECONNREFUSED", 0))
            if resets:
                popped = _pop(q, resets)
                ages = [rec["ts"] - ts for ts, _ in popped if ts is not None]
                surv = [rec["ts"] - ts for ts, _ in q if ts is not None]
                self.idle_events.setdefault(key, []).append({
                    "ts": rec["ts"], "resets": resets,
                    "youngest_reset_age_s": round(min(ages), 3) if ages else None,
                    "oldest_survivor_age_s": round(max(surv), 3) if surv else None,
                    "dst_row": {"netns_name": r.get("netns_name")}})
            closes = prev + r["established"] - resets - r["active"]
            if closes > 0:
                _pop(q, closes)
            self.prev_active[key] = r["active"]
        for key in list(self.prev_active):
            if key not in seen:          # absent row: nothing open (rows stay while active > 0)
                self.prev_active[key] = 0
                self.cohorts.pop(key, None)

    # -- evidence ---------------------------------------------------------------------------------
    def _rows(self, direction: str | None = None):
        """{(netns, dst): [row or None per record in the window]} for rows of this direction."""
        out: dict = {}
        n = len(self.window)
        for i, rec in enumerate(self.window):
            for r in rec["destinations"]:
                if direction and r["direction"] != direction:
                    continue
                out.setdefault((r["netns"], r["dst"]), [None] * n)[i] = r
        return out

    def _evaluate(self, rec: dict) -> dict:
        t = self.t
        found: dict = {}
        win = list(self.window)
        span = sum(r.get("interval_s") or 0 for r in win)
        out_rows = self._rows("out")
        in_rows = self._rows("in")
        out_ports, in_ports = _by_port(out_rows), _by_port(in_rows)

        # per-netns conntrack counters over the window
        ct: dict = {}
        for r in win:
            for n in r.get("conntrack_netns") or []:
                c = ct.setdefault(n["netns"], {"name": n.get("name"), "insert_failed": 0, "drop": 0,
                                               "early_drop": 0, "clash_resolve": 0, "entries": 0,
                                               "max": n.get("max"), "fill": 0.0})
                for k in ("insert_failed", "drop", "early_drop", "clash_resolve"):
                    c[k] += n.get(k) or 0
                c["entries"] = max(c["entries"], n.get("entries") or 0)
                c["fill"] = max(c["fill"], n.get("fill") or 0.0)
                c["max"] = n.get("max") or c["max"]
        # NAT rows over the window, by (nat netns, dst)
        nat: dict = {}
        for r in win:
            for row in r.get("nat") or []:
                a = nat.setdefault((row["netns"], row["dst"]), {
                    "netns_name": row.get("netns_name"), "nat_ip": row.get("nat_ip"), "peak_in_use": 0,
                    "port_range": row.get("port_range"), "allocations": 0, "insert_failed": 0, "drop": 0,
                    "failed_allocations": 0, "utilization": 0.0})
                a["peak_in_use"] = max(a["peak_in_use"], row.get("peak_in_use") or 0, row.get("ports_in_use") or 0)
                a["utilization"] = max(a["utilization"], row.get("peak_utilization") or 0.0,
                                       row.get("utilization") or 0.0)
                for k in ("allocations", "insert_failed", "drop", "failed_allocations"):
                    a[k] += row.get(k) or 0
                a["port_range"] = row.get("port_range") or a["port_range"]
        # listeners over the window
        lst: dict = {}
        for i, r in enumerate(win):
            for ls in r.get("listeners") or []:
                a = lst.setdefault((ls["netns"], ls["listen"]), {"netns_name": ls.get("netns_name"), "backlog": 0,
                                                               "max_queue": 0, "overflows": [0] * len(win),
                                                               "established": [0] * len(win)})
                a["backlog"] = ls.get("backlog") or a["backlog"]
                a["max_queue"] = max(a["max_queue"], ls.get("max_queue") or 0)
                a["overflows"][i] = ls.get("overflows") or 0
                a["established"][i] = ls.get("established") or 0

        # 1. snat_port_exhaustion: a local NAT's range is full and the NAT netns drops SYNs
        snat_dsts = set()
        for (ns, dst), a in nat.items():
            fails = max(a["insert_failed"] + a["drop"] + a["failed_allocations"],
                        ct.get(ns, {}).get("insert_failed", 0))
            if a["port_range"] and a["utilization"] >= t.snat_full_utilization and fails >= t.snat_min_failures:
                snat_dsts.add(dst)
                client = _client_side(out_rows, dst)
                found[("snat_port_exhaustion", ns, dst)] = {
                    "kind": "snat_port_exhaustion", "dst": dst, "netns": ns, "netns_name": a["netns_name"],
                    "where": f"local NAT (MASQUERADE) in {_ns_label(a['netns_name'], ns)}, source {a['nat_ip']}",
                    "cap": a["peak_in_use"],
                    "evidence": {"ports_in_use": a["peak_in_use"], "port_range": a["port_range"],
                                 "utilization": round(a["utilization"], 3),
                                 "nat_insert_failed": ct.get(ns, {}).get("insert_failed", a["insert_failed"]),
                                 "nat_drop": ct.get(ns, {}).get("drop", a["drop"]),
                                 "allocations": a["allocations"], **client, "window_s": round(span, 1)},
                    "advice": (f"every port of the NAT's range ({a['port_range']}) to {dst} is taken: widen the "
                               "MASQUERADE/SNAT --to-ports range or add NAT source addresses; on a cloud NAT raise "
                               "the outbound ports per node (AKS: load balancer allocatedOutboundPorts / more "
                               "outbound IPs; EKS/GKE: NAT gateway min-ports-per-vm); reuse connections (keep-alive "
                               "pools) so fewer ports are held"),
                }
        nat_fail_ns = {ns for ns, c in ct.items() if c["insert_failed"] or c["drop"] or c["early_drop"]}
        # addresses of listeners that overflowed in the window, by port (any netns)
        overflowed: dict = {}
        for (_, ls), a in lst.items():
            if sum(a["overflows"]):
                overflowed.setdefault(ls.port, set()).add(ls.addr)

        # 2./3. per outbound destination: local port exhaustion, remote cap, churn
        for (ns, dst), rows in out_rows.items():
            present = [r for r in rows if r]
            name = present[-1].get("netns_name")
            actives = [r["active"] if r else 0 for r in rows]
            peak = max(actives)
            errs: dict = {}
            for r in present:
                for k, v in r["failed_by_errno"].items():
                    errs[k] = errs.get(k, 0) + v
            syn_rtx = sum(r["syn_retrans"] for r in present)
            connects = sum(r["connects"] for r in present)
            established = sum(r["established"] for r in present)
            eaddr = errs.get("EADDRNOTAVAIL", 0)
            if eaddr >= t.ports_min_eaddrnotavail:
                found[("local_port_exhaustion", ns, dst)] = {
                    "kind": "local_port_exhaustion", "dst": dst, "netns": ns, "netns_name": name,
                    "where": f"this node's {_ns_label(name, ns)} (connect() found no free local port)",
                    "cap": peak,
                    "evidence": {"EADDRNOTAVAIL": eaddr, "peak_active": peak, "connects": connects,
                                 "established": established, "failed_by_errno": errs, "window_s": round(span, 1)},
                    "advice": ("connect() found no free local port to this destination: widen "
                               "net.ipv4.ip_local_port_range in this netns (e.g. \"1024 65535\"), let TIME_WAIT ports be "
                               "reused (net.ipv4.tcp_tw_reuse=1), reuse connections, or spread over more source "
                               "addresses / destination ports (one port per 4-tuple)"),
                }
            cap_fail = syn_rtx + sum(v for k, v in errs.items() if k not in _NOT_CAP_ERRNOS)
            plateau = len(actives) >= t.cap_plateau_intervals and \
                all(a == peak for a in actives[-t.cap_plateau_intervals:])
            local = (dst in snat_dsts or eaddr or nat_fail_ns
                     or _overflowed_for(overflowed, dst))
            if peak >= t.cap_min_active and plateau and cap_fail >= t.cap_min_failures and not local:
                found[("remote_connection_cap", ns, dst)] = {
                    "kind": "remote_connection_cap", "dst": dst, "netns": ns, "netns_name": name,
                    "where": "beyond this node (a cloud SNAT / load balancer / firewall, or the remote's own limit)",
                    "cap": peak,
                    "evidence": {"active_plateau": peak, "plateau_intervals": t.cap_plateau_intervals,
                                 "syn_retrans": syn_rtx, "failed_by_errno": errs, "connects": connects,
                                 "established": established, "local_conntrack_drops": 0, "local_snat": False,
                                 "window_s": round(span, 1)},
                    "advice": (f"connections to {dst} stop at {peak} while SYNs go unanswered and nothing on this "
                               "node drops them: look for the cap beyond the node (AKS/EKS/GKE outbound SNAT ports "
                               "per node, NAT gateway, load balancer or firewall connection limits, the server's "
                               "max connections); reuse connections instead of opening more"),
                }
            if span >= t.churn_min_span_s and connects:
                rate = connects / span
                mean_active = sum(actives) / len(actives)
                cpa = rate / max(mean_active, 1.0)
                if rate >= t.churn_min_rate and cpa >= t.churn_connects_per_active:
                    found[("connection_churn", ns, dst)] = _churn(dst, ns, name, rate, mean_active, cpa, connects,
                                                                 peak, span, "out")

        # churn seen only from the server side (clients elsewhere)
        out_dsts = {d for (_, d) in out_rows}
        for (ns, dst), rows in in_rows.items():
            if dst in out_dsts or span < t.churn_min_span_s:
                continue
            present = [r for r in rows if r]
            est = sum(r["established"] for r in present)
            rate = est / span if span else 0.0
            # inbound rows carry no `active`: the listener's accept-queue / established counts stand in
            if rate >= t.churn_min_rate:
                name = present[-1].get("netns_name")
                closes = sum(r["resets_in"] + r["resets_out"] for r in present)
                cpa = rate  # no concurrency gauge inbound: connects per second per (at least one) connection
                if cpa >= t.churn_connects_per_active and closes >= est // 2:
                    found[("connection_churn", ns, dst)] = _churn(dst, ns, name, rate, 1.0, cpa, est, None, span, "in")

        # 4. conntrack table full / insert race
        full_ns = set()
        for ns, c in ct.items():
            drops = c["drop"] + c["early_drop"]
            if c["fill"] >= t.ct_full_fill and drops >= t.ct_full_min_drops:
                full_ns.add(ns)
                found[("conntrack_table_full", ns, None)] = {
                    "kind": "conntrack_table_full", "dst": None, "netns": ns, "netns_name": c["name"],
                    "where": f"conntrack table of {_ns_label(c['name'], ns)}",
                    "cap": c["max"],
                    "evidence": {"entries": c["entries"], "max": c["max"], "fill": round(c["fill"], 3),
                                 "drop": c["drop"], "early_drop": c["early_drop"],
                                 "insert_failed": c["insert_failed"], "window_s": round(span, 1)},
                    "advice": ("the conntrack table is full and new flows are dropped: raise net.netfilter.nf_conntrack_max "
                               "(kube-proxy --conntrack-max-per-core; ~320 bytes per entry), shorten "
                               "nf_conntrack_tcp_timeout_time_wait / _close_wait, or keep traffic out of conntrack "
                               "(NOTRACK for high-rate local flows, headless services)"),
                }
        snat_ns = {ns for (ns, dst), a in nat.items() if a["port_range"] and
                   a["utilization"] >= t.snat_full_utilization}
        for ns, c in ct.items():
            if ns in full_ns or ns in snat_ns:
                continue
            if c["insert_failed"] >= t.ct_race_min_insert_failed:
                found[("conntrack_insert_race", ns, None)] = {
                    "kind": "conntrack_insert_race", "dst": None, "netns": ns, "netns_name": c["name"],
                    "where": f"conntrack of {_ns_label(c['name'], ns)}",
                    "insert_failed": c["insert_failed"],
                    "evidence": {"insert_failed": c["insert_failed"], "drop": c["drop"],
                                 "clash_resolve": c["clash_resolve"], "entries": c["entries"],
                                 "max": c["max"], "fill": round(c["fill"], 3), "nat_range_full": False,
                                 "window_s": round(span, 1)},
                    "advice": ("conntrack insertions fail with the table not full and no NAT range exhausted: two "
                               "packets of one new flow raced (typically UDP DNS A+AAAA from one socket through a NAT); "
                               "use a node-local DNS cache, `options single-request-reopen` / use-vc, or a kernel "
                               "with the clash-resolution fixes"),
                }

        # 5. listeners: bursts first, plain overflow otherwise
        short = bool(win) and max((r.get("interval_s") or 0) for r in win) <= t.burst_max_interval_s
        for (ns, listen), a in lst.items():
            total_ovf = sum(a["overflows"])
            if not total_ovf:
                continue
            burst = None
            if short:
                burst = self._burst(win, ns, listen, a, out_ports, in_ports)
                if burst is UNDECIDED:
                    continue                     # not enough history yet to tell a burst from a flood
            name = a["netns_name"]
            if burst:
                found[("connection_burst", ns, listen)] = {
                    "kind": "connection_burst", "listener": listen, "dst": None, "netns": ns, "netns_name": name,
                    "where": f"listener {listen} in {_ns_label(name, ns)} (accept queue {a['backlog']})",
                    "peak_per_ms": burst["peak_per_ms"], "evidence": burst,
                    "advice": (f"connects arrive in bursts (peak {burst['peak_per_ms']}/ms, {burst['peak_to_mean']}x the "
                               f"mean) that overflow the accept queue of {a['backlog']}: raise the listen() backlog "
                               "and net.core.somaxconn to hold a whole burst, accept in a tight loop / more workers, "
                               "and spread the clients' connects (jitter, connection pools warmed up front)"),
                }
            elif ("connection_burst", ns, listen) in self.verdicts:
                continue                         # these overflows are the bursts' (one verdict, not two)
            elif total_ovf >= t.overflow_min:
                found[("listen_overflow", ns, listen)] = {
                    "kind": "listen_overflow", "listener": listen, "dst": None, "netns": ns, "netns_name": name,
                    "where": f"this node's {_ns_label(name, ns)}, listener {listen}",
                    "backlog": a["backlog"],
                    "evidence": {"overflows": total_ovf, "backlog": a["backlog"], "max_queue": a["max_queue"],
                                 "established": sum(a["established"]), "window_s": round(span, 1)},
                    "advice": (f"the accept queue ({a['backlog']}) overflowed: raise the listen() backlog of the service "
                               "and net.core.somaxconn in its netns (the queue is the smaller of the two), accept "
                               "faster (more workers, no blocking work before accept()), and alert on "
                               "TcpExt ListenOverflows per pod"),
                }

        # 6. idle timeout resets
        for key, events in list(self.idle_events.items()):
            events[:] = [e for e in events if e["ts"] > self.now - t.window_s]
            if not events:
                del self.idle_events[key]
                continue
            good = [e for e in events if e["resets"] >= t.idle_min_resets and e["youngest_reset_age_s"] is not None
                    and e["youngest_reset_age_s"] >= t.idle_min_age_s]
            if not good:
                continue
            ests = []
            for e in good:
                y, s = e["youngest_reset_age_s"], e["oldest_survivor_age_s"]
                ests.append((y + s) / 2 if s is not None and s < y else y)
            ns, dst = key
            timeout = round(median(ests), 1)
            found[("idle_timeout_reset", ns, dst)] = {
                "kind": "idle_timeout_reset", "dst": dst, "netns": ns,
                "netns_name": good[-1]["dst_row"]["netns_name"],
                "where": "between this node and the destination: a NAT / load balancer that forgets idle flows",
                "timeout_s": timeout,
                "evidence": {"resets_in": sum(e["resets"] for e in good),
                             "youngest_reset_age_s": min(e["youngest_reset_age_s"] for e in good),
                             "oldest_survivor_age_s": max((e["oldest_survivor_age_s"] for e in good
                                                           if e["oldest_survivor_age_s"] is not None), default=None),
                             "events": len(good), "window_s": round(span, 1)},
                "advice": (f"flows idle for about {timeout:g} s are forgotten by a middlebox and answered with RST: "
                           f"enable TCP keepalive below that (SO_KEEPALIVE with TCP_KEEPIDLE < {max(1, int(timeout) - 1)} s, "
                           "e.g. net.ipv4.tcp_keepalive_time), or close idle pooled connections sooner; AWS NAT "
                           "gateway / NLB forget after 350 s, Azure LB after 4 min by default (idle timeout setting)"),
            }

        # 8. the NIC driver's allowances (cloud instance limits)
        self._allowances(win, span, found)
        # 9. connection_fanout: per program and namespace, from the process rows (--per-process)
        found.update(fanout_found(win, span, t))
        return found

    def _allowances(self, win, span, found) -> None:
        t = self.t
        exceeded: dict = {}
        for r in win:
            for a, n in ((r.get("node_totals") or {}).get("allowance_exceeded") or {}).items():
                exceeded[a] = exceeded.get(a, 0) + (n or 0)
        for a, n in sorted(exceeded.items()):
            if n < t.allowance_min_exceeded:
                continue
            what, fix = ALLOWANCES.get(a, (f"the NIC's {a} allowance", "ask the provider what the allowance is "
                                                                        "and stay under it"))
            rate = round(n / span, 2) if span else None
            found[("cloud_allowance_exceeded", None, a)] = {
                "kind": "cloud_allowance_exceeded", "dst": None, "netns": None, "allowance": a,
                "where": f"the instance's network interface ({what})",
                "per_s": rate,
                "evidence": {f"{a}_allowance_exceeded": n, "per_s": rate, "window_s": round(span, 1)},
                "advice": f"the cloud provider queued or dropped {n} packets over its {a} allowance: {fix}",
            }
        last = (win[-1].get("node_totals") or {}).get("allowance_available") or {} if win else {}
        for a, avail in sorted(last.items()):
            if avail is None or avail > t.allowance_low_available or exceeded.get(a):
                continue
            what, fix = ALLOWANCES.get(a, (f"the NIC's {a} allowance", "stay under it"))
            found[("cloud_allowance_low", None, a)] = {
                "kind": "cloud_allowance_low", "dst": None, "netns": None, "allowance": a,
                "where": f"the instance's network interface ({what})",
                "available": avail,
                "evidence": {f"{a}_allowance_available": avail, "threshold": t.allowance_low_available},
                "advice": f"only {avail} left of the {a} allowance before the provider starts dropping: {fix}",
            }

    def _burst(self, win, ns, listen, a, out_ports, in_ports):
        t = self.t
        n = len(win)
        # SYNs towards the listener per interval: from the clients' side when they are watched
        # (connect() calls + SYN retransmissions: exact), else handshakes completed + overflows
        arrivals = [0] * n
        for _, rows in _served(listen, out_ports):
            for i, r in enumerate(rows):
                if r:
                    arrivals[i] += r["connects"] + r["syn_retrans"]
        if not any(arrivals):
            for rns, rows in _served(listen, in_ports):
                if rns == ns:
                    for i, r in enumerate(rows):
                        if r:
                            arrivals[i] += r["established"]
            arrivals = [arrivals[i] + a["overflows"][i] for i in range(n)]
        first = next((i for i, x in enumerate(arrivals) if x), None)
        if first is None:
            return None
        seen = arrivals[first:]
        ivs = [w.get("interval_s") or 0 for w in win[first:]]
        if sum(ivs) < t.burst_min_span_s:
            return UNDECIDED
        mean = sum(seen) / len(seen)
        pi = max(range(len(seen)), key=lambda i: seen[i])
        peak = seen[pi]
        if peak < t.burst_min_connects or mean <= 0 or peak / mean < t.burst_ratio:
            return None
        bursty = {i for i, x in enumerate(seen) if x >= t.burst_ratio * mean and x >= t.burst_min_connects}
        near = {j for i in bursty for j in (i - 1, i, i + 1)}
        ovf = a["overflows"][first:]
        inside = sum(x for i, x in enumerate(ovf) if i in near)
        outside = sum(ovf) - inside
        if inside < 1 or inside < outside:
            return None
        ms = (ivs[pi] or 1) * 1000.0
        return {"peak_per_ms": round(peak / ms, 3), "peak_connects": peak, "peak_interval_ms": round(ms, 1),
                "mean_per_interval": round(mean, 2), "peak_to_mean": round(peak / mean, 1),
                "burst_intervals": len(bursty), "drops_in_bursts": inside, "drops_outside_bursts": outside,
                "backlog": a["backlog"], "max_queue": a["max_queue"], "window_s": round(sum(ivs), 1)}


def _pop(q: deque, n: int) -> list:
    """Take n connections off the oldest end of a cohort queue; returns [(ts, count)] taken."""
    taken = []
    while n > 0 and q:
        ts, c = q[0]
        k = min(c, n)
        taken.append((ts, k))
        n -= k
        if k == c:
            q.popleft()
        else:
            q[0][1] = c - k
    return taken


def _overflowed_for(overflowed: dict, dst: Endpoint) -> bool:
    """Did a listener serving dst overflow (``overflowed``: {port: listener addresses})?"""
    addrs = overflowed.get(dst.port)
    return bool(addrs) and (dst.addr in addrs or any(w in addrs for w in WILDCARDS))


def _client_side(out_rows: dict, dst: str) -> dict:
    """What clients of this node saw towards dst (if watched): peak active, timeouts."""
    peak, syn, failed = 0, 0, 0
    for (_, d), rows in out_rows.items():
        if d != dst:
            continue
        for r in rows:
            if r:
                peak = max(peak, r["active"])
                syn += r["syn_retrans"]
                failed += r["failed"]
    return {"client_peak_active": peak, "client_syn_retrans": syn, "client_failed": failed} if peak or failed else {}


def _churn(dst, ns, name, rate, mean_active, cpa, connects, peak, span, direction) -> dict:
    return {
        "kind": "connection_churn", "dst": dst, "netns": ns, "netns_name": name,
        "where": (f"this node's {_ns_label(name, ns)} opening connections to {dst}" if direction == "out"
                  else f"clients of {dst} ({_ns_label(name, ns)})"),
        "connects_per_active": round(cpa, 1),
        "evidence": {"connects": connects, "connects_per_s": round(rate, 1), "mean_active": round(mean_active, 2),
                     "peak_active": peak, "mean_lifetime_ms": round(1000.0 / cpa, 1) if cpa else None,
                     "direction": direction, "window_s": round(span, 1)},
        "advice": ("far more new connections than open ones: connection reuse is broken somewhere (HTTP keep-alive "
                   "off or recycled after few requests, e.g. nginx keepalive_requests / keepalive_timeout, a proxy "
                   "that does not pool, a client that closes after each request); enable keep-alive and pooling, "
                   "raise keepalive_requests; each new connection costs a handshake, a conntrack entry and a "
                   "TIME_WAIT port"),
    }


def replay(records) -> list[dict]:
    """Run a sequence of interval records (parsed NDJSON through ``netdiag.offline.keys.with_keys``)
    through a fresh Diagnoser."""
    d = Diagnoser()
    for r in records:
        d.update(r)
    return d.all()
