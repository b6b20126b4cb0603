"""Plain text: every interval's node totals, destinations, listeners, DNS roll-ups and verdicts
(`watch` off a TTY), or each verdict once as it appears (`lab` off a TTY); the summary or the
lab's result at the end."""
from __future__ import annotations

import sys
import time

from netdiag.sinks.text import dns_fail, dns_line, errs, lat, verdict_line


class PlainSink:
    def __init__(self, top: int, out=None):
        self.top = top
        self.out = out or sys.stdout

    def open(self, info: dict) -> None:
        pass

    def interval(self, record: dict) -> None:
        print_plain(record, self.top, self.out)
        print_plain_rollups(record, self.top, self.out)

    def close(self, summary: dict | None) -> None:
        render_summary(summary, self.top, self.out)


class VerdictLines:
    """Each verdict once, the first interval it stands in."""

    def __init__(self, top: int = 20, out=None):
        self.top = top
        self.out = out or sys.stdout
        self.shown: set = set()

    def open(self, info: dict) -> None:
        pass

    def interval(self, record: dict) -> None:
        for v in record["verdicts"]:
            key = (v["kind"], v.get("netns"), v.get("dst") or v.get("listener"))
            if key not in self.shown:
                self.shown.add(key)
                self.out.write("verdict: " + verdict_line(v) + "\n")
        self.out.flush()

    def close(self, summary: dict | None) -> None:
        render_summary(summary, self.top, self.out)


def render_summary(summary: dict | None, top: int, out=None) -> None:
    """The end of a run: `watch`'s summary or a lab's result."""
    if summary is None:
        return
    if summary.get("type") == "lab":
        print_result(summary, out)
    else:
        print_summary(summary, top, out)


def print_plain(rec: dict, top: int, out=None) -> None:
    t = rec["node_totals"]
    out = out or sys.stdout
    out.write(f"{time.strftime('%H:%M:%S', time.localtime(rec['ts']))} {rec['node']} "
              f"connects={t['connects']} established={t['established']} failed={t['failed']} "
              f"active={t['active']} resets_in={t['resets_in']} resets_out={t['resets_out']} "
              f"syn_retrans={t['syn_retrans']} lost={rec['lost_events']} evictions={rec['evictions']}\n")
    for r in rec["destinations"][:top]:
        out.write(f"  {r['direction']:<3} {r['dst']:<40} {str(r['netns_name'] or r['netns']):<16} "
                  f"act={r['active']:<6} conn={r['connects']:<6} est={r['established']:<6} fail={r['failed']:<5}"
                  f"{(' [' + errs(r['failed_by_errno']) + ']') if r['failed_by_errno'] else ''} "
                  f"rst={r['resets_in']}/{r['resets_out']}"
                  f"{(' [' + errs(r['resets_out_by_reason']) + ']') if r['resets_out_by_reason'] else ''} "
                  f"synrtx={r['syn_retrans']}\n")
    for ls in rec["listeners"][:top]:
        if ls["overflows"] or ls["established"] or ls["queue"]:
            out.write(f"  lst {ls['listen']:<40} {str(ls['netns_name'] or ls['netns']):<16} "
                      f"queue={ls['queue']}/{ls['backlog']} max={ls['max_queue']} est={ls['established']} "
                      f"accepts={'-' if ls['accepts'] is None else ls['accepts']} overflows={ls['overflows']}\n")
    for v in rec.get("verdicts", []):
        out.write(f"  verdict {verdict_line(v, advice=True)}\n")
    out.flush()


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
                  f"nx/servfail/timeout={dns_fail(r['dns'])} dns_ms={lat(r['dns'])}\n")
    for r in rec.get("pods", [])[:top]:
        out.write(f"  pod {r['pod']} dsts={r['dsts']} ips={r['ips']} domains={len(r['domains'])} act={r['active']} "
                  f"conn={r['connects']} est={r['established']} fail={r['failed']} "
                  f"rst={r['resets_in']}/{r['resets_out']} dns_pkts={(r['dns'] or {}).get('packets', 0)} "
                  f"nx/servfail/timeout={dns_fail(r['dns'])}\n")
    for r in rec.get("processes", [])[:top]:
        out.write(f"  proc {r['pid']} {r.get('comm') or '?'} netns={r.get('netns_name') or r['netns']} "
                  f"conn={r['connects']} est={r['established']} fail={r['failed']} "
                  f"rst={r['resets_in']}/{r['resets_out']} inbound={r['inbound']} ({r['inbound_via']})\n")
    out.flush()


def print_summary(s: dict, top: int, out=None) -> None:
    out = out or sys.stdout
    t = s["node_totals"]
    out.write(f"summary: {s['intervals']} intervals, {s['duration_s']}s, connects={t.get('connects', 0)} "
              f"established={t.get('established', 0)} failed={t.get('failed', 0)} "
              f"resets_in={t.get('resets_in', 0)} resets_out={t.get('resets_out', 0)} "
              f"lost={s['lost_events']} evictions={s['evictions']}\n")
    for r in s["destinations"][:top]:
        out.write(f"  {r['direction']:<3} {r['dst']:<40} peak_active={r['peak_active']} connects={r['connects']} "
                  f"failed={r['failed']}{(' [' + errs(r['failed_by_errno']) + ']') if r['failed_by_errno'] else ''} "
                  f"resets={r['resets_in']}/{r['resets_out']} syn_retrans={r['syn_retrans']}\n")
    out.flush()


def print_result(r: dict, out=None) -> None:
    out = out or sys.stdout
    out.write(f"\nlab {r['scenario']} ({' '.join(f'{k}={v}' for k, v in r['params'].items())}): "
              f"{r['intervals']} intervals in {r['duration_s']} s; expected verdict: {r['expected'] or 'none'}\n")
    if not r["verdicts"]:
        out.write("verdicts: none\n")
    for v in r["verdicts"]:
        out.write("verdict: " + verdict_line(v) + "\n")
        out.write("  evidence: " + ", ".join(f"{k}={val}" for k, val in v["evidence"].items()) + "\n")
        out.write("  fix: " + v["advice"] + "\n")
    for n in r["notes"]:
        out.write(f"note: {n}\n")
    if r["kept"]:
        out.write("kept: " + " ".join(r["namespaces"]) + "  (remove with: netdiag lab cleanup)\n")
    out.flush()
