"""`netdiag conntrack`: conntrack table fill and SNAT port allocation in every namespace."""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click

from netdiag.commands.options import duration_option, interval_option, json_option


def _pct(x):
    return "?" if x is None else f"{100 * x:.0f}%"


def render(obj: dict):
    from rich.table import Table
    t = Table(title="SNAT port allocation", title_justify="left", expand=False)
    for col, just in (("NETNS", "left"), ("NAT SRC", "left"), ("DESTINATION", "left"), ("PROTO", "left"),
                      ("USED/RANGE", "right"), ("UTIL", "right"), ("ALLOC", "right"),
                      ("INS_FAILED", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    for r in sorted(obj["snat"], key=lambda r: -(r["utilization"] or 0)):
        rng = "?" if r["port_range"] is None else str(r["port_range"])
        util = _pct(r["utilization"])
        if (r["utilization"] or 0) >= 1.0:
            util = f"[bold red]{util}[/]"
        t.add_row(r["netns_name"] or str(r["netns"]), r["nat_ip"], r["dst"], r["proto"],
                  f"{r['ports_in_use']}/{rng}", util, str(r["allocations"]), str(r["insert_failed"]))
    n = Table(title="Conntrack per namespace", title_justify="left", expand=False)
    for col in ("NETNS", "ENTRIES", "MAX", "FILL", "INSERT_FAILED", "DROP", "EARLY_DROP", "LOST"):
        n.add_column(col, justify="left" if col == "NETNS" else "right", no_wrap=True)
    for ns in obj["netns"]:
        fill = _pct(ns["fill"])
        if ns["fill_warning"]:
            fill = f"[bold red]{fill}[/]"
        un = ns["unattributed"]["insert_failed"]
        n.add_row(ns["name"], str(ns["entries"]), str(ns["max"]), fill,
                  f"{ns['insert_failed']}" + (f" ({un} unattributed)" if un else ""),
                  str(ns["drop"]), str(ns["early_drop"]), str(ns["lost_events"]))
    return t, n


@click.command("conntrack")
@json_option
@interval_option(1.0)
@duration_option()
@click.option("--netns", "netns_spec", metavar="NAME|INODE", multiple=True,
              help="Only this network namespace (repeatable; default: every namespace).")
@click.option("--once", is_flag=True, help="Print one interval (after --interval seconds) and exit.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), hidden=True,
              help="Create this file once subscribed to events.")
def command(as_json, interval, duration, netns_spec, once, ready_file):
    """Conntrack table fill and SNAT port allocation, per network namespace.

    For every namespace (pods' too), per NAT source address and destination: the ports
    in use now against the NAT rule's port range, allocations and failed allocations
    (insert_failed) per interval, and each namespace's table fill (warning at 80 %).
    Reads ctnetlink events and statistics; the rule's range comes from the nftables ruleset
    (iptables-nft rules included).

    \b
    Example:
      sudo netdiag conntrack
      sudo netdiag conntrack --netns nd-nat --interval 2 --duration 30
      sudo netdiag conntrack --json --once | jq '.snat[] | select(.utilization >= 0.9)'
    """
    from netdiag.inputs import check_netns_spec, check_output_file
    for s in netns_spec:
        check_netns_spec(s)
    if ready_file is not None:
        check_output_file(ready_file, "--ready-file", may_exist=True, make_dirs=False)
    from netdiag.kernel.features import require_privileges
    require_privileges()
    from netdiag.sources import namespaces as nsmod
    from netdiag.sources.conntrack import ConntrackMonitor

    flt = None
    if netns_spec:
        known = nsmod.discover()
        flt = {nsmod.resolve(s, known).inode for s in netns_spec}
    mon = ConntrackMonitor(flt).start()
    stop = {"flag": False}

    def on_signal(*_):
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ready_file:
        ready_file.write_text(json.dumps({"modes": mon.modes, "netns": sorted(mon.ns)}))
    console = None
    if not as_json:
        from rich.console import Console
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
    t_end = time.monotonic() + duration if duration else None
    try:
        while True:
            deadline = time.monotonic() + interval
            while not stop["flag"] and time.monotonic() < deadline:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            obj = mon.snapshot()
            if as_json:
                sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
                sys.stdout.flush()
            else:
                console.print(f"[dim]{time.strftime('%H:%M:%S')}  modes: conntrack={obj['modes']['conntrack']} "
                              f"snat={obj['modes']['snat']}  lost events: {obj['lost_events']}[/]")
                for table in render(obj):
                    console.print(table)
            if once or stop["flag"] or (t_end is not None and time.monotonic() >= t_end):
                break
    finally:
        mon.close()
