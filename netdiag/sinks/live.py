"""The rich live view (on a TTY): header, node totals, verdicts, DNS roll-ups, destinations and
listeners, redrawn every interval; the plain summary or the lab's result once it stops."""
from __future__ import annotations

import os
from collections import defaultdict, deque

from netdiag.analysis.diagnose import NUMBER
from netdiag.sinks.plain import render_summary
from netdiag.sinks.text import dns_fail, dns_line, errs, lat

SPARK = "▁▂▃▄▅▆▇█"


class LiveView:
    def __init__(self, top: int, title: str = "netdiag watch"):
        from rich.console import Console
        self.top = top
        self.title = title
        self.console = Console()
        self.history = defaultdict(lambda: deque(maxlen=60))
        self._live = None

    def open(self, info: dict) -> None:
        from rich.live import Live
        from rich.text import Text
        self._live = Live(Text(f"{self.title}: first interval…"), console=self.console, refresh_per_second=4,
                          screen=False)
        self._live.start()

    def interval(self, record: dict) -> None:
        if self._live is not None:
            self._live.update(self.render(record))

    def close(self, summary: dict | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        render_summary(summary, self.top)

    def spark(self, key, value):
        h = self.history[key]
        h.append(value)
        hi = max(h) or 1
        return "".join(SPARK[min(len(SPARK) - 1, int(v * (len(SPARK) - 1) / hi))] for v in h)

    def render(self, rec):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        m = rec["modes"]
        head = Text.assemble((f"{self.title} ", "bold"), f"{rec['node']}  kernel {os.uname().release}  ",
                             "modes: " + " ".join(f"{k}={v}" for k, v in m.items()),
                             f"  lost={rec['lost_events']}  evictions={rec['evictions_total']}"
                             f"  map={rec['map_entries']}/{rec['map_max']}",
                             ("  (seeding active from inet_diag…)" if rec.get("seeding") else ""))
        t = rec["node_totals"]
        totals = Text(f"node: connects {t['connects']}  established {t['established']}  failed {t['failed']}  "
                      f"active {t['active']}  resets in/out {t['resets_in']}/{t['resets_out']}  "
                      f"SYN retrans {t['syn_retrans']}  retrans {t['retrans']}  "
                      f"drops {', '.join(f'{k}:{v}' for k, v in list((t['drops_by_reason'] or {'?': t.get('drops', 0)}).items())[:4]) or '0'}")
        dt = Table(title="destinations (per interval; active = open now)", title_justify="left", expand=True)
        for col in ("dir", "destination", "netns", "active", "last minute", "conn", "est", "failed", "resets in/out",
                    "SYN rtx", "ms"):
            dt.add_column(col, overflow="fold")
        for r in rec["destinations"][:self.top]:
            style = "bold red" if r["failed"] or r["resets_out"] or r["resets_in"] else ""
            key = (r["dst"], r["netns"], r["direction"])
            dt.add_row(r["direction"], r["dst"], str(r["netns_name"] or r["netns"]), str(r["active"]),
                       self.spark(key, r["active"]), str(r["connects"]), str(r["established"]),
                       f"{r['failed']} {errs(r['failed_by_errno'])}".strip(),
                       f"{r['resets_in']}/{r['resets_out']} {errs(r['resets_out_by_reason'])}".strip(),
                       str(r["syn_retrans"]), "" if r["connect_ms_avg"] is None else f"{r['connect_ms_avg']:.2f}",
                       style=style)
        lt = Table(title="listeners", title_justify="left", expand=True)
        for col in ("listen", "netns", "queue/backlog", "max queue", "established", "accepts", "overflows",
                    "SYN-ACK rtx"):
            lt.add_column(col)
        for ls in rec["listeners"][:self.top]:
            style = "bold red" if ls["overflows"] else ""
            lt.add_row(ls["listen"], str(ls["netns_name"] or ls["netns"]), f"{ls['queue']}/{ls['backlog']}",
                       str(ls["max_queue"]), str(ls["established"]),
                       "-" if ls["accepts"] is None else str(ls["accepts"]), str(ls["overflows"]),
                       str(ls["synack_retrans"]), style=style)
        parts = [head, totals, *rollup_tables(rec, self.top), dt, lt]
        if rec.get("verdicts"):
            vt = Table(title="verdicts", title_justify="left", expand=True, title_style="bold red")
            for col in ("verdict", "where", "number", "evidence", "fix"):
                vt.add_column(col, overflow="fold")
            for v in rec["verdicts"]:
                num = NUMBER.get(v["kind"])
                what = f"{v['kind']} {v.get('dst') or v.get('listener') or ''}".strip()
                if v.get("domain"):
                    what += f"\n  {v['domain']}"
                vt.add_row(what, v["where"], f"{num}={v.get(num)}",
                           ", ".join(f"{k}={x}" for k, x in list(v["evidence"].items())[:6]),
                           v["advice"], style="bold")
            parts.insert(2, vt)
        return Group(*parts)


def rollup_tables(rec: dict, top: int) -> list:
    """rich renderables (a DNS line, the domains table, the pods table) for the live view."""
    from rich.table import Table
    from rich.text import Text
    out = []
    line = dns_line(rec)
    if line:
        out.append(Text(line))
    doms = rec.get("domains")
    if doms is not None:
        per_pod = any(r.get("pod") for r in doms)
        t = Table(title="domains (per interval; active = open now)", title_justify="left", expand=True)
        cols = (["pod"] if per_pod else []) + ["domain", "ips", "active", "conn", "est", "failed", "resets in/out",
                                               "SYN rtx", "DNS q", "NX/SERVFAIL/timeout", "DNS ms p50/p99"]
        for c in cols:
            t.add_column(c, overflow="fold")
        for r in doms[:top]:
            d = r.get("dns") or {}
            bad = r["failed"] or r["resets_in"] or r["resets_out"] or d.get("nxdomain") or d.get("servfail") \
                or d.get("timeouts")
            name = r["name"] + (" (reverse)" if r.get("domain_source") == "reverse" else "")
            if r.get("chain"):
                name += "\n  via " + " -> ".join(r["chain"][:-1])
            cells = ([r["pod"]] if per_pod else []) + [
                name, str(r["ips"]), str(r["active"]), str(r["connects"]), str(r["established"]), str(r["failed"]),
                f"{r['resets_in']}/{r['resets_out']}", str(r["syn_retrans"]), str(d.get("queries", 0)),
                dns_fail(r.get("dns")), lat(r.get("dns"))]
            t.add_row(*cells, style="bold red" if bad else "")
        out.append(t)
    pods = rec.get("pods")
    if pods is not None:
        t = Table(title="pods", title_justify="left", expand=True)
        for c in ("pod", "dsts", "ips", "domains", "active", "conn", "est", "failed", "resets in/out", "DNS pkts",
                  "NX/SERVFAIL/timeout"):
            t.add_column(c, overflow="fold")
        for r in pods[:top]:
            d = r.get("dns") or {}
            t.add_row(r["pod"], str(r["dsts"]), str(r["ips"]), str(len(r["domains"])), str(r["active"]),
                      str(r["connects"]), str(r["established"]), str(r["failed"]),
                      f"{r['resets_in']}/{r['resets_out']}", str(d.get("packets", 0)), dns_fail(r.get("dns")),
                      style="bold red" if r["failed"] or r["resets_in"] or r["resets_out"] else "")
        out.append(t)
    procs = rec.get("processes")
    if procs is not None:
        via = (rec.get("modes") or {}).get("process_inbound")
        t = Table(title=f"processes (inbound by {via or 'accept'})", title_justify="left", expand=True)
        for c in ("pid", "comm", "netns", "conn", "est", "failed", "resets in/out", "inbound", "conn/inbound"):
            t.add_column(c, overflow="fold")
        for r in procs[:top]:
            ratio = f"{r['connects'] / r['inbound']:.1f}" if r["inbound"] else "-"
            t.add_row(str(r["pid"]), r.get("comm") or "?", r.get("netns_name") or str(r["netns"]),
                      str(r["connects"]), str(r["established"]), str(r["failed"]),
                      f"{r['resets_in']}/{r['resets_out']}", str(r["inbound"]), ratio,
                      style="bold red" if r["failed"] or r["resets_in"] or r["resets_out"] else "")
        out.append(t)
    return out
