"""`netdiag watch` options and rendering for domains and pods (--per-domain, --per-pod, --resolve).

The watch command needs three things from here: the ``dns_options`` decorator, an ``Enricher``
built from those options (``start()`` next to ``Watcher.start()``, ``apply(record)`` right after
each ``Watcher.sample()``, ``close()`` in the ``finally``), and the renderers
``print_plain_rollups`` / ``rich_rollup_tables`` for the plain and live views.
"""
from __future__ import annotations

import sys

import click

from netdiag.analysis.domains import LINK_LOCAL_PPS


def dns_options(f):
    """--dns/--no-dns, --dns-capture, --per-domain, --per-pod, --resolve, --dns-share, --host-root."""
    f = click.option("--host-root", type=click.Path(file_okay=False), default="/", show_default=True,
                     help="Where the node's /var/log/pods, /run/netns, /sys/fs/cgroup and CRI socket are "
                          "(/host in `kubectl debug node/... --profile=sysadmin`); processes are read from /proc.")(f)
    f = click.option("--dns-share", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
                     help=f"Verdict dns_rate_limit_risk when the node's DNS packets/s exceed this share of "
                          f"{LINK_LOCAL_PPS} (the link-local resolver limit per instance).")(f)
    f = click.option("--resolve", is_flag=True,
                     help="Name addresses never seen in DNS by reverse (PTR) lookup; marked "
                          "domain_source: reverse.")(f)
    f = click.option("--per-pod", is_flag=True,
                     help="Roll destinations up by pod (namespace/name on Kubernetes, ip-netns name "
                          "otherwise); with --per-domain, by pod and domain.")(f)
    f = click.option("--per-domain", is_flag=True,
                     help="Roll destinations up by the domain each namespace resolved (all IPs and ports "
                          "merged), with DNS latency and failures per domain.")(f)
    f = click.option("--dns-capture", type=click.Choice(["auto", "socket", "cgroup", "packet"]), default="auto",
                     show_default=True,
                     help="socket: tracepoints on the socket send/receive calls copy what client sockets "
                          "send to and read from port 53 (nothing runs per packet); cgroup: cgroup_skb "
                          "programs on the root cgroup copy local sockets' DNS packets; packet: a packet "
                          "socket in every namespace; auto: the first of these the kernel allows.")(f)
    f = click.option("--dns/--no-dns", "dns", default=False, show_default=True,
                     help="Watch DNS answers in every namespace to fill `domain` (on with --per-domain). "
                          "Off by default: capturing costs every packet of every local socket a little.")(f)
    return f


class Enricher:
    """Domains, pods, DNS statistics and the DNS verdict on each interval record."""

    def __init__(self, dns: bool = True, per_domain: bool = False, per_pod: bool = False,
                 resolve: bool = False, dns_share: float = 0.5, netns: int | None = None,
                 host_root: str = "/", observer=None, dns_capture: str = "auto"):
        self.dns = dns or per_domain
        self.per_domain, self.per_pod, self.resolve = per_domain, per_pod, resolve
        self.dns_share = dns_share
        self.netns = netns
        self.host_root = host_root
        self.observer = observer
        self.dns_capture = dns_capture
        self.pods = None
        self.reverse = None
        self.note = None

    @property
    def program(self) -> str | None:
        """Where the DNS capture's programs came from ("compiled" or "cached"); None without any."""
        return self.observer.program if self.observer is not None else None

    @property
    def active(self) -> bool:
        return self.dns or self.per_pod or self.resolve

    def start(self) -> "Enricher":
        if self.dns and self.observer is None:
            from netdiag.sources.dns.observer import DnsObserver
            try:
                from pathlib import Path
                self.observer = DnsObserver(netns_filter=self.netns, capture=self.dns_capture,
                                            run=Path(self.host_root, "run", "netns")).start()
            except OSError as e:             # no CAP_NET_RAW: connections stay unnamed, and we say so
                self.observer, self.note = None, f"DNS capture unavailable: {e}"
            else:
                if self.observer.fallback:
                    self.note = f"DNS capture on {self.observer.mode} ({self.observer.fallback})"
        if self.per_pod or self.per_domain:
            from netdiag.sources.pods import PodMap
            self.pods = PodMap(self.host_root, proc="/proc")
        if self.resolve:
            from netdiag.analysis.domains import ReverseResolver
            self.reverse = ReverseResolver()
        return self

    def apply(self, rec: dict) -> dict:
        from netdiag.analysis.domains import annotate, dns_rate_limit_verdict, rollup_domains, rollup_pods
        annotate(rec, self.observer, pods=self.pods, reverse=self.reverse)
        rec.setdefault("modes", {})["dns"] = self.observer.mode if self.observer is not None else "off"
        if self.per_domain:
            rec["domains"] = rollup_domains(rec, per_pod=self.per_pod)
        if self.per_pod:
            rec["pods"] = rollup_pods(rec)
        v = dns_rate_limit_verdict(rec.get("dns"), share=self.dns_share)
        if v is not None:
            rec.setdefault("verdicts", []).append(v)
        return rec

    def close(self) -> None:
        if self.observer is not None:
            self.observer.close()
            self.observer = None
        if self.reverse is not None:
            self.reverse.close()
            self.reverse = None


def _lat(d: dict | None) -> str:
    if not d:
        return "-"
    lat = d.get("latency_ms") or {}
    return "-" if lat.get("p99") is None else f"{lat.get('p50')}/{lat.get('p99')}"


def _dns_fail(d: dict | None) -> str:
    if not d:
        return "-"
    return f"{d.get('nxdomain', 0)}/{d.get('servfail', 0)}/{d.get('timeouts', 0)}"


def dns_line(rec: dict) -> str | None:
    d = rec.get("dns")
    if not d:
        return None
    return (f"dns: {d.get('pps', 0)} pkt/s queries={d['queries']} answers={d['answers']} nxdomain={d['nxdomain']} "
            f"servfail={d['servfail']} timeouts={d['timeouts']} latency_ms p50/p99={_lat(d)} lost={d['lost']} "
            f"namespaces={d.get('netns_covered', 0)}")


def print_plain_rollups(rec: dict, top: int, out=None) -> None:
    out = out or sys.stdout
    line = dns_line(rec)
    if line:
        out.write(f"  {line}\n")
    for r in rec.get("domains", [])[:top]:
        who = f" {r['pod']}" if r.get("pod") else ""
        chain = f" [{' -> '.join(r['chain'])}]" if r.get("chain") else ""
        src = " (reverse)" if r.get("domain_source") == "reverse" else ""
        out.write(f"  dom{who} {r['name']}{src}{chain} ips={r['ips']} act={r['active']} conn={r['connects']} "
                  f"est={r['established']} fail={r['failed']} rst={r['resets_in']}/{r['resets_out']} "
                  f"synrtx={r['syn_retrans']} dns_q={(r['dns'] or {}).get('queries', 0)} "
                  f"nx/servfail/timeout={_dns_fail(r['dns'])} dns_ms={_lat(r['dns'])}\n")
    for r in rec.get("pods", [])[:top]:
        out.write(f"  pod {r['pod']} dsts={r['dsts']} ips={r['ips']} domains={len(r['domains'])} act={r['active']} "
                  f"conn={r['connects']} est={r['established']} fail={r['failed']} "
                  f"rst={r['resets_in']}/{r['resets_out']} dns_pkts={(r['dns'] or {}).get('packets', 0)} "
                  f"nx/servfail/timeout={_dns_fail(r['dns'])}\n")
    for v in rec.get("verdicts", []):
        if v.get("kind") == "dns_rate_limit_risk":
            out.write(f"  VERDICT dns_rate_limit_risk {v['evidence']['dns_pps']} pkt/s of {v['cap']}: "
                      f"top {', '.join(v['pods'])}\n")
    out.flush()


def rich_rollup_tables(rec: dict, top: int) -> list:
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
                _dns_fail(r.get("dns")), _lat(r.get("dns"))]
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
                      f"{r['resets_in']}/{r['resets_out']}", str(d.get("packets", 0)), _dns_fail(r.get("dns")),
                      style="bold red" if r["failed"] or r["resets_in"] or r["resets_out"] else "")
        out.append(t)
    return out
