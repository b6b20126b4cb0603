"""`netdiag watch`: per-destination and per-listener counters every interval."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import defaultdict, deque
from pathlib import Path

import click

from netdiag.pipeline.dnswatch import Enricher, dns_options, print_plain_rollups, rich_rollup_tables
from netdiag.commands.options import DST_SLOTS, SOCKET_SLOTS, duration_option, flavour_kwargs, interval_option, json_option, tracepoints_option

SPARK = "▁▂▃▄▅▆▇█"


@click.command("watch")
@interval_option()
@duration_option()
@json_option
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Rows per table.")
@click.option("--netns", metavar="NAME|INODE", help="Only this network namespace.")
@click.option("--port", type=click.IntRange(1, 65535), help="Only destinations / listeners on this port.")
@click.option("--dst", metavar="CIDR", help="Only destinations inside this network.")
@click.option("--mode", type=click.Choice(["auto", "kprobe", "fentry", "tracepoint"]), default="auto",
              show_default=True, help="Force a hook mode where a signal has it.")
@click.option("--max-dsts", type=click.IntRange(min=64), default=16384, show_default=True,
              help="Bound of the in-kernel destination map (LRU; evictions are counted).")
@click.option("--socket-slots", type=click.IntRange(min=2), default=SOCKET_SLOTS, show_default=True,
              help="Slots of the in-kernel table of outbound sockets (a power of two); a socket whose slot "
                   "is taken goes to an LRU hash of 262,144.")
@click.option("--dst-slots", type=click.IntRange(min=1), default=DST_SLOTS, show_default=True,
              help="Per-CPU slots of the in-kernel table that holds the first destinations' rows (a power of "
                   "two); the others go to the LRU hash of --max-dsts.")
@click.option("--accepts", "count_accepts", is_flag=True,
              help="Count accept() calls per listener on kernels without kprobes/fentry too (adds syscall "
                   "tracepoints, which slow every syscall a little).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Create this file once the probes are attached.")
@tracepoints_option
@dns_options
def command(interval, duration, as_json, top, netns, port, dst, mode, max_dsts, socket_slots, dst_slots, count_accepts,
            ready_file,
            tracepoints, dns, dns_capture, per_domain, per_pod, resolve, dns_share, host_root):
    """Watch connections per destination and listener, counted in the kernel.

    Every interval: connects, established, failed (by errno), active (open now, including
    connections that existed before start), resets in/out (with the kernel's reason), SYN and data
    retransmits, listener queues and overflows, drops by reason. Rows are sorted by trouble.

    \b
    Examples:
      sudo netdiag watch
      sudo netdiag watch --json | jq -c '.destinations[] | select(.failed > 0)'
      sudo netdiag watch --port 443 --dst 10.0.0.0/8 --interval 5
    """
    from netdiag.sources import netns as nsmod
    from netdiag.kernel.features import require_privileges
    from netdiag.analysis.diagnose import Diagnoser
    from netdiag.pipeline.collector import Watcher

    netns_inode = nsmod.resolve(netns) if netns else None
    if dst:
        import ipaddress
        try:
            ipaddress.ip_network(dst, strict=False)
        except ValueError:
            raise click.BadParameter(f"{dst!r} is not a network (e.g. 10.0.0.0/8)", param_hint="--dst")
    if socket_slots & (socket_slots - 1):
        raise click.BadParameter(f"{socket_slots} is not a power of two", param_hint="--socket-slots")
    if dst_slots & (dst_slots - 1):
        raise click.BadParameter(f"{dst_slots} is not a power of two", param_hint="--dst-slots")
    require_privileges()
    watcher = Watcher(mode=mode, netns=netns_inode, port=port, dst=dst, max_dsts=max_dsts,
                      socket_slots=socket_slots, dst_slots=dst_slots, syscall_tracepoints=count_accepts, diagnoser=Diagnoser(),
                      **flavour_kwargs(tracepoints))
    enricher = Enricher(dns=dns, per_domain=per_domain, per_pod=per_pod, resolve=resolve,
                        dns_share=dns_share, netns=netns_inode, host_root=host_root, dns_capture=dns_capture)
    watcher.enrich = enricher.apply
    stop = {"flag": False}

    def on_signal(signum, _frame):
        stop["flag"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    run = RunSummary()
    tty = sys.stdout.isatty() and not as_json
    try:
        try:
            enricher.start()
            if enricher.note:
                click.echo(f"netdiag: {enricher.note}", err=True)
            watcher.start()
        except Exception:
            if stop["flag"]:             # Ctrl-C while compiling: nothing attached, nothing to say
                sys.exit(130)
            raise
        plan = dict(watcher.plan, tracepoints=watcher.modes["tracepoints"])
        modes = " ".join(f"{k}={v}" for k, v in plan.items())
        program = watcher.prog.program if watcher.prog is not None else "compiled"
        dns_program = enricher.program
        click.echo(f"netdiag: attached ({modes} program={program}"
                   f"{f' dns_program={dns_program}' if dns_program else ''})", err=True)
        verbose = (click.get_current_context().find_root().obj or {}).get("verbose")
        if watcher.prog is not None and watcher.prog.cache_note and verbose:
            click.echo(f"netdiag: {watcher.prog.cache_note}", err=True)
        if dns_program and enricher.observer.cache_note and verbose:
            click.echo(f"netdiag: DNS capture: {enricher.observer.cache_note}", err=True)
        if watcher.prog is not None and watcher.prog.btf_refused:
            click.echo(f"netdiag: the kernel refused the BTF-typed tracepoint programs, raw tracepoints "
                       f"instead: {watcher.prog.btf_refused}", err=True)
        if ready_file:
            # whole or not at all: a waiter polls for the file and reads it as soon as it exists
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            ready = {"modes": plan, "program": program}
            if dns_program:
                ready["dns_program"] = dns_program
            tmp.write_text(json.dumps(ready) + "\n")
            tmp.replace(ready_file)
        view = LiveView(top) if tty else None
        deadline = time.monotonic() + duration if duration else None
        next_tick = time.monotonic() + interval
        with (view.live() if view else _nullcontext()):
            while not stop["flag"]:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                wake = min(next_tick, deadline) if deadline else next_tick
                if now < wake:
                    time.sleep(min(0.1, wake - now))
                    continue
                next_tick += interval
                rec = watcher.sample()
                run.add(rec)
                if as_json:
                    sys.stdout.write(json.dumps(rec, separators=(",", ":")) + "\n")
                    sys.stdout.flush()
                elif view:
                    view.update(rec)
                else:
                    print_plain(rec, top)
                    print_plain_rollups(rec, top)
        if deadline is not None and not stop["flag"]:
            rec = watcher.sample()            # the partial last interval
            if rec["interval_s"] > 0.05:
                run.add(rec)
                if as_json:
                    sys.stdout.write(json.dumps(rec, separators=(",", ":")) + "\n")
                elif not view:
                    print_plain(rec, top)
                    print_plain_rollups(rec, top)
    finally:
        enricher.close()
        watcher.close()
        for s, h in old.items():
            signal.signal(s, h)
    summary = run.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    else:
        print_summary(summary, top)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class RunSummary:
    """Totals over the whole run, for the final summary."""

    def __init__(self):
        self.rows = defaultdict(lambda: defaultdict(int))
        self.peak = defaultdict(int)
        self.meta = {}
        self.totals = defaultdict(int)
        self.drops = defaultdict(int)
        self.intervals = 0
        self.t0 = None

    def add(self, rec):
        self.intervals += 1
        self.t0 = self.t0 or rec["ts"] - rec["interval_s"]
        self.last = rec
        for r in rec["destinations"]:
            k = (r["dst"], r["netns"], r["direction"])
            for c in ("connects", "established", "failed", "resets_in", "resets_out", "syn_retrans", "retrans"):
                self.rows[k][c] += r[c]
            for name, n in r["failed_by_errno"].items():
                self.rows[k]["errno:" + name] += n
            self.peak[k] = max(self.peak[k], r["active"])
            self.meta[k] = r["netns_name"]
        for c, v in rec["node_totals"].items():
            if isinstance(v, int) and c != "active":
                self.totals[c] += v
        for name, n in rec["node_totals"]["drops_by_reason"].items():
            self.drops[name] += n

    def summary(self) -> dict:
        last = getattr(self, "last", None)
        dests = []
        for (dst, ns, direction), c in self.rows.items():
            dests.append({"dst": dst, "netns": ns, "netns_name": self.meta[(dst, ns, direction)],
                          "direction": direction, "peak_active": self.peak[(dst, ns, direction)],
                          **{k: v for k, v in c.items() if not k.startswith("errno:")},
                          "failed_by_errno": {k[6:]: v for k, v in c.items() if k.startswith("errno:")}})
        dests.sort(key=lambda r: (-r["failed"], -(r["resets_in"] + r["resets_out"]), -r["peak_active"]))
        return {"type": "summary", "intervals": self.intervals,
                "duration_s": round(last["ts"] - self.t0, 3) if last else 0.0,
                "modes": last["modes"] if last else {}, "lost_events": last["lost_events"] if last else 0,
                "evictions": last["evictions_total"] if last else 0,
                "node_totals": dict(self.totals), "drops_by_reason": dict(self.drops), "destinations": dests}


def _errs(d: dict) -> str:
    return ",".join(f"{k}:{v}" for k, v in d.items())


def print_plain(rec, top):
    t = rec["node_totals"]
    out = sys.stdout
    out.write(f"{time.strftime('%H:%M:%S', time.localtime(rec['ts']))} {rec['node']} "
              f"connects={t['connects']} established={t['established']} failed={t['failed']} "
              f"active={t['active']} resets_in={t['resets_in']} resets_out={t['resets_out']} "
              f"syn_retrans={t['syn_retrans']} lost={rec['lost_events']} evictions={rec['evictions']}\n")
    for r in rec["destinations"][:top]:
        out.write(f"  {r['direction']:<3} {r['dst']:<40} {str(r['netns_name'] or r['netns']):<16} "
                  f"act={r['active']:<6} conn={r['connects']:<6} est={r['established']:<6} fail={r['failed']:<5}"
                  f"{(' [' + _errs(r['failed_by_errno']) + ']') if r['failed_by_errno'] else ''} "
                  f"rst={r['resets_in']}/{r['resets_out']}"
                  f"{(' [' + _errs(r['resets_out_by_reason']) + ']') if r['resets_out_by_reason'] else ''} "
                  f"synrtx={r['syn_retrans']}\n")
    for l in rec["listeners"][:top]:
        if l["overflows"] or l["established"] or l["queue"]:
            out.write(f"  lst {l['listen']:<40} {str(l['netns_name'] or l['netns']):<16} "
                      f"queue={l['queue']}/{l['backlog']} max={l['max_queue']} est={l['established']} "
                      f"accepts={'-' if l['accepts'] is None else l['accepts']} overflows={l['overflows']}\n")
    for v in rec.get("verdicts", []):
        out.write(f"  verdict {verdict_text(v)}\n")
    out.flush()


def verdict_text(v: dict) -> str:
    from netdiag.analysis.diagnose import NUMBER
    num = NUMBER.get(v["kind"])
    target = v.get("dst") or v.get("listener") or v.get("netns_name") or ""
    return f"{v['kind']} {target} {num}={v.get(num)} ({v['where']}): {v['advice']}"


def print_summary(s, top):
    out = sys.stdout
    t = s["node_totals"]
    out.write(f"summary: {s['intervals']} intervals, {s['duration_s']}s, connects={t.get('connects', 0)} "
              f"established={t.get('established', 0)} failed={t.get('failed', 0)} "
              f"resets_in={t.get('resets_in', 0)} resets_out={t.get('resets_out', 0)} "
              f"lost={s['lost_events']} evictions={s['evictions']}\n")
    for r in s["destinations"][:top]:
        out.write(f"  {r['direction']:<3} {r['dst']:<40} peak_active={r['peak_active']} connects={r['connects']} "
                  f"failed={r['failed']}{(' [' + _errs(r['failed_by_errno']) + ']') if r['failed_by_errno'] else ''} "
                  f"resets={r['resets_in']}/{r['resets_out']} syn_retrans={r['syn_retrans']}\n")
    out.flush()


class LiveView:
    """The rich live view (only on a TTY)."""

    def __init__(self, top):
        from rich.console import Console
        self.top = top
        self.console = Console()
        self.history = defaultdict(lambda: deque(maxlen=60))
        self._live = None

    def live(self):
        from rich.live import Live
        from rich.text import Text
        self._live = Live(Text("netdiag watch: first interval…"), console=self.console, refresh_per_second=4,
                          screen=False)
        return self._live

    def spark(self, key, value):
        h = self.history[key]
        h.append(value)
        hi = max(h) or 1
        return "".join(SPARK[min(len(SPARK) - 1, int(v * (len(SPARK) - 1) / hi))] for v in h)

    def update(self, rec):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        m = rec["modes"]
        head = Text.assemble(("netdiag watch ", "bold"), f"{rec['node']}  kernel {os.uname().release}  ",
                             "modes: " + " ".join(f"{k}={v}" for k, v in m.items()),
                             f"  lost={rec['lost_events']}  evictions={rec['evictions_total']}"
                             f"  map={rec['map_entries']}/{rec['map_max']}",
                             ("  (seeding active from inet_diag…)" if rec.get("seeding") else ""))
        t = rec["node_totals"]
        totals = Text(f"node: connects {t['connects']}  established {t['established']}  failed {t['failed']}  "
                      f"active {t['active']}  resets in/out {t['resets_in']}/{t['resets_out']}  "
                      f"SYN retrans {t['syn_retrans']}  retrans {t['retrans']}  "
                      f"drops {', '.join(f'{k}:{v}' for k, v in list(t['drops_by_reason'].items())[:4]) or '0'}")
        dt = Table(title="destinations (per interval; active = open now)", title_justify="left", expand=True)
        for col in ("dir", "destination", "netns", "active", "last minute", "conn", "est", "failed", "resets in/out",
                    "SYN rtx", "ms"):
            dt.add_column(col, overflow="fold")
        for r in rec["destinations"][:self.top]:
            style = "bold red" if r["failed"] or r["resets_out"] or r["resets_in"] else ""
            key = (r["dst"], r["netns"], r["direction"])
            dt.add_row(r["direction"], r["dst"], str(r["netns_name"] or r["netns"]), str(r["active"]),
                       self.spark(key, r["active"]), str(r["connects"]), str(r["established"]),
                       f"{r['failed']} {_errs(r['failed_by_errno'])}".strip(),
                       f"{r['resets_in']}/{r['resets_out']} {_errs(r['resets_out_by_reason'])}".strip(),
                       str(r["syn_retrans"]), "" if r["connect_ms_avg"] is None else f"{r['connect_ms_avg']:.2f}",
                       style=style)
        lt = Table(title="listeners", title_justify="left", expand=True)
        for col in ("listen", "netns", "queue/backlog", "max queue", "established", "accepts", "overflows",
                    "SYN-ACK rtx"):
            lt.add_column(col)
        for l in rec["listeners"][:self.top]:
            style = "bold red" if l["overflows"] else ""
            lt.add_row(l["listen"], str(l["netns_name"] or l["netns"]), f"{l['queue']}/{l['backlog']}",
                       str(l["max_queue"]), str(l["established"]),
                       "-" if l["accepts"] is None else str(l["accepts"]), str(l["overflows"]),
                       str(l["synack_retrans"]), style=style)
        parts = [head, totals, *rich_rollup_tables(rec, self.top), dt, lt]
        if rec.get("verdicts"):
            vt = Table(title="verdicts", title_justify="left", expand=True, title_style="bold red")
            for col in ("verdict", "where", "number", "evidence", "fix"):
                vt.add_column(col, overflow="fold")
            from netdiag.analysis.diagnose import NUMBER
            for v in rec["verdicts"]:
                num = NUMBER.get(v["kind"])
                vt.add_row(f"{v['kind']} {v.get('dst') or v.get('listener') or ''}".strip(), v["where"],
                           f"{num}={v.get(num)}", ", ".join(f"{k}={x}" for k, x in list(v["evidence"].items())[:6]),
                           v["advice"], style="bold")
            parts.insert(2, vt)
        self._live.update(Group(*parts))
