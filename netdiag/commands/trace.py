"""`netdiag trace`: connect and accept events, one line (or NDJSON object) each."""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click

from netdiag.commands.options import duration_option, flavour_kwargs, flavour_of, json_option, tracepoints_option

WHAT = {"connect": ("connect",), "accept": ("accept",), "all": ("connect", "accept")}
HEADER = f"{'TIME(s)':<9} {'EVENT':<7} {'PID':<7} {'COMM':<15} {'NETNS':<14} {'LOCAL':<28} {'REMOTE':<28} {'RESULT':<13} {'MS':>8}"


@click.command("trace")
@click.argument("what", type=click.Choice(sorted(WHAT)), default="all")
@json_option
@duration_option()
@click.option("--netns", metavar="NAME|INODE", help="Only this network namespace (ip netns name or inode).")
@click.option("--pid", type=click.IntRange(min=1, max=4194304), help="Only this process id.")
@click.option("--mode", type=click.Choice(["auto", "kprobe", "fentry", "tracepoint"]), default="auto",
              show_default=True, help="Force a hook mode for every signal (fails if the kernel cannot).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Create this file once the probes are attached.")
@click.option("--dump-bpf", is_flag=True, hidden=True, help="Print the BPF C program and exit (no root needed).")
@tracepoints_option
@click.pass_context
def command(ctx, what, as_json, duration, netns, pid, mode, ready_file, dump_bpf, tracepoints):
    """Trace TCP connects (with their outcome and errno) and accepts.

    One line per event, like bcc's tcpconnect and tcpaccept together, but with each connect's
    result (ok, ECONNREFUSED, ETIMEDOUT, EADDRNOTAVAIL, …) and latency. On exit a summary line
    gives the counts and the events lost.

    \b
    Examples:
      sudo netdiag trace
      sudo netdiag trace connect --json --duration 10 | jq 'select(.result=="error")'
      sudo netdiag trace --netns nd-client --pid 1234
    """
    from netdiag.analysis.decode import decode_event, endpoint
    from netdiag.inputs import check_netns_spec, check_output_file
    from netdiag.kernel.engine import ProbeEngine
    from netdiag.sources import netns as nsmod
    signals = WHAT[what]
    netns_inode = nsmod.resolve(check_netns_spec(netns)) if netns else None
    if ready_file is not None:
        check_output_file(ready_file, "--ready-file", may_exist=True, make_dirs=False)
    if dump_bpf:
        click.echo(ProbeEngine.for_dump(signals, mode, pid=pid, netns=netns_inode).dump())
        return

    from netdiag.kernel.features import require_privileges
    require_privileges()
    engine = ProbeEngine(signals, mode=mode, pid=pid, netns=netns_inode,
                         **flavour_kwargs(tracepoints))
    names = nsmod.NetnsNames()
    out = sys.stdout
    t0 = [None]

    def on_event(raw: bytes):
        ev = decode_event(raw)
        ev["netns_name"] = names.label(ev["netns"])
        if as_json:
            out.write(json.dumps(ev, separators=(",", ":")) + "\n")
            out.flush()
            return
        if t0[0] is None:
            t0[0] = ev["ts_ns"]
        rel = (ev["ts_ns"] - t0[0]) / 1e9
        ns = ev["netns_name"] or str(ev["netns"])
        if ev["type"] == "accept":
            local, remote, result, ms = ev["listen"], ev["peer"], "accepted", ev["wait_ms"]
        else:
            local, remote = endpoint(ev["saddr"], ev["sport"]), ev["dst"]
            result, ms = (ev["errno_name"] or "ok"), ev["latency_ms"]
        out.write(f"{rel:<9.3f} {ev['type']:<7} {ev['pid']:<7} {ev['comm']:<15.15} {ns:<14.14} "
                  f"{local:<28} {remote:<28} {result:<13} {ms:>8.3f}\n")
        out.flush()

    stop = {"flag": False}

    def on_signal(signum, _frame):
        stop["flag"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        engine.start(on_event)
        modes = " ".join(f"{s}={m}" for s, m in engine.plan.items())
        flavour = flavour_of(engine)
        click.echo(f"netdiag: attached ({modes}, tracepoints={flavour}, {engine.buffer})", err=True)
        if engine.btf_refused:
            click.echo(f"netdiag: the kernel refused the BTF-typed tracepoint programs, raw tracepoints "
                       f"instead: {engine.btf_refused}", err=True)
        if ready_file:
            from netdiag.sinks.ready import write_ready
            write_ready(ready_file, {"modes": engine.plan, "buffer": engine.buffer, "tracepoints": flavour})
        if not as_json:
            out.write(HEADER + "\n")
            out.flush()
        deadline = time.monotonic() + duration if duration else None
        while not stop["flag"] and (deadline is None or time.monotonic() < deadline):
            engine.poll(100)
        engine.drain()
        stats = engine.stats()
    finally:
        engine.close()
        for s, h in old.items():
            signal.signal(s, h)
    summary = {"type": "summary", "modes": engine.plan, **stats}
    if as_json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write("summary: " + " ".join(f"{k}={v}" for k, v in stats.items()) +
                  " modes=" + ",".join(f"{s}:{m}" for s, m in engine.plan.items()) + "\n")
    out.flush()
