"""`netdiag load server|client`: make connection caps, overflows, churn and bursts happen on demand."""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import click

from netdiag.commands.options import finite, json_option
from netdiag.errors import BadInput

EXAMPLES_GROUP = """
\b
Examples:
  netdiag load server --port 8080 --max-conns 100
  netdiag load client 127.0.0.1:8080 --connections 150 --timeout 2 --json
"""


@click.group(name="load", help="Generate TCP load: a server that holds/echoes/answers HTTP, and a client "
                               "that opens, holds, churns or bursts connections.\n" + EXAMPLES_GROUP)
def command():
    pass


def _emit(obj: dict) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


# -- server -------------------------------------------------------------------------------------
@command.command("server", help="""Listen, accept and hold (or echo, or answer HTTP/1.1) connections.

Prints a ready line once listening, then connections held, accepted/s and closed every
--stats-interval seconds, and a summary on exit (Ctrl-C, SIGTERM or --duration).

\b
Examples:
  netdiag load server --port 8080 --max-conns 100          # seed 000's capped server
  netdiag load server --port 8080 --backlog 1 --accept-delay-ms 200   # listen overflow
  netdiag load server --port 8080-8083 --mode http --json  # churn target, NDJSON stats
""")
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="IP", help="Address to listen on.")
@click.option("--port", "port_spec", required=True, metavar="P[,P2|P-Q]", help="Port(s) to listen on.")
@click.option("--max-conns", type=int, default=None, metavar="N",
              help="Hold at most N connections; beyond that SYNs go unanswered (clients time out).")
@click.option("--backlog", type=int, default=4096, show_default=True, metavar="B", help="listen() backlog.")
@click.option("--accept-delay-ms", type=finite(), default=0.0, show_default=True, metavar="D",
              help="Wait D ms after each accept (with a small --backlog: listen overflow).")
@click.option("--mode", type=click.Choice(["hold", "echo", "http"]), default="hold", show_default=True,
              help="hold: read and discard; echo: send back; http: minimal HTTP/1.1 200 responder.")
@click.option("--max-requests", type=int, default=None, metavar="K",
              help="http: close a connection after K requests (nginx keepalive_requests).")
@click.option("--idle-timeout", type=finite(), default=None, metavar="S",
              help="Close connections idle for S seconds (nginx keepalive_timeout).")
@click.option("--workers", type=int, default=1, show_default=True, metavar="W",
              help="Worker processes sharing the listeners.")
@click.option("--stats-interval", type=finite(), default=1.0, show_default=True, metavar="S",
              help="Seconds between stats lines.")
@click.option("--duration", type=finite(), default=3600.0, show_default=True, metavar="S",
              help="Stop after S seconds.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write a JSON line here once listening.")
@json_option
def server_cmd(bind, port_spec, max_conns, backlog, accept_delay_ms, mode, max_requests, idle_timeout,
               workers, stats_interval, duration, ready_file, as_json):
    from netdiag.load.server import Server, ServerConfig
    from netdiag.load.targets import parse_ports

    if stats_interval <= 0:
        raise BadInput(f"--stats-interval must be above 0, not {stats_interval}")
    if duration <= 0:
        raise BadInput(f"--duration must be above 0, not {duration}")
    ports = parse_ports(port_spec)
    cfg = ServerConfig(ports=ports, bind=bind, max_conns=max_conns, backlog=backlog,
                       accept_delay_ms=accept_delay_ms, mode=mode, workers=workers,
                       max_requests=max_requests, idle_timeout=idle_timeout)
    srv = Server(cfg)
    stop = {"flag": False}

    def on_term(signum, frame):
        stop["flag"] = True

    old_term = signal.signal(signal.SIGTERM, on_term)
    start = time.monotonic()
    srv.start()
    try:
        srv.wait_ready()
        listen = [f"{bind}:{p}" for p in ports]
        ready = {"type": "ready", "listen": listen, "mode": mode, "workers": workers, "pid": os.getpid(),
                 "worker_pids": srv.pids, "max_conns": max_conns, "backlog": backlog}
        if ready_file:
            tmp = ready_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(ready) + "\n")
            os.replace(tmp, ready_file)
        if as_json:
            _emit(ready)
        else:
            click.echo(f"netdiag load server: ready on {', '.join(listen[:4])}"
                       f"{' …' if len(listen) > 4 else ''} (mode {mode}, {workers} worker(s), pid {os.getpid()})",
                       err=True)
        sys.stdout.flush()
        start = time.monotonic()
        end = start + duration
        last = srv.snapshot()
        last_t = start
        next_stats = start + stats_interval
        while not stop["flag"]:
            now = time.monotonic()
            if now >= end:
                break
            if not srv.alive():
                break
            if now >= next_stats:
                snap = srv.snapshot()
                dt = now - last_t
                _server_stats(snap, last, dt, now - start, as_json)
                last, last_t = snap, now
                next_stats += stats_interval
            time.sleep(max(0.0, min(0.05, next_stats - time.monotonic(), end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old_term)
        summary = srv.snapshot()
        srv.stop()
    summary = {"type": "summary", **summary, "duration_s": round(time.monotonic() - start, 3)}
    if as_json:
        _emit(summary)
    else:
        click.echo(f"held {summary['held']}  peak held {summary['peak_held']}  accepted {summary['accepted']}  "
                   f"closed {summary['closed']}  requests {summary['requests']}")


def _server_stats(snap: dict, last: dict, dt: float, elapsed: float, as_json: bool) -> None:
    acc_s = (snap["accepted"] - last["accepted"]) / dt if dt > 0 else 0.0
    req_s = (snap["requests"] - last["requests"]) / dt if dt > 0 else 0.0
    if as_json:
        _emit({"type": "stats", "ts": round(time.time(), 3), "elapsed_s": round(elapsed, 3),
               "held": snap["held"], "accepted": snap["accepted"], "accepted_per_s": round(acc_s, 1),
               "closed": snap["closed"], "requests": snap["requests"], "requests_per_s": round(req_s, 1)})
    else:
        click.echo(f"{elapsed:8.1f}s  held {snap['held']:>8}  accepted/s {acc_s:>9.1f}  "
                   f"accepted {snap['accepted']:>9}  closed {snap['closed']:>9}  requests {snap['requests']:>9}")
    if snap["accept_errors"] > last["accept_errors"]:
        import resource
        click.echo(f"netdiag load server: {snap['accept_errors'] - last['accept_errors']} accept() failures "
                   f"(open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} per worker?): "
                   f"use more --workers", err=True)
    sys.stdout.flush()


# -- client -------------------------------------------------------------------------------------
@command.command("client", help="""Open, hold, churn or burst TCP connections to TARGET[:PORT]... and count
what happened: established, failed by errno, delayed (slower than a threshold), connect time
percentiles, peak concurrent.

Targets must be loopback or in 198.18.0.0/15 (netdiag's lab namespaces) unless --allow-remote.
Exits 69 when no connection at all could be established.

\b
Examples:
  netdiag load client 127.0.0.1:8080 --connections 5000 --delay-threshold-ms 1000 --hold 30
  netdiag load client 127.0.0.1:8080 --connections 150 --single --timeout 2 --json
  netdiag load client 127.0.0.1:8080-8083 --connections 100000 --source-ips 127.0.1.1-127.0.1.8 --hold 10
  netdiag load client 127.0.0.1:8080 --connections 64 --requests-per-conn 1 --requests 100 --json
  netdiag load client 127.0.0.1:8080 --connections 2000 --burst 500 --burst-window-ms 50
""")
@click.argument("targets", nargs=-1, metavar="TARGET[:PORT]...")
@click.option("--port", "port_spec", default=None, metavar="P[,P2|P-Q]", help="Port(s) for targets given without one.")
@click.option("-n", "--connections", type=int, default=1, show_default=True, metavar="N",
              help="Connections to open (churn mode: concurrent clients).")
@click.option("-c", "--concurrency", type=int, default=None, metavar="C",
              help="Connects in flight at once, across workers [default: 1024 per worker].")
@click.option("--threads", type=int, default=None, metavar="T",
              help="Blocking connects from T threads (like a thread-per-connection client).")
@click.option("--single", is_flag=True, help="One connect at a time, like a single-threaded client.")
@click.option("--rate", "rate_spec", default=None, metavar="R[/s]", help="At most R connects per second.")
@click.option("--burst", type=int, default=None, metavar="N", help="Start connects in bursts of N.")
@click.option("--burst-window-ms", type=finite(), default=50.0, show_default=True, metavar="W",
              help="Each burst is started within W ms.")
@click.option("--burst-interval-ms", type=finite(), default=1000.0, show_default=True, metavar="I",
              help="Time from one burst's start to the next.")
@click.option("--hold", type=finite(), default=0.0, show_default=True, metavar="S",
              help="Hold the connections S seconds once all are open.")
@click.option("--keepalive", type=finite(), default=None, metavar="S",
              help="While holding, send one byte on each connection every S seconds.")
@click.option("--delay-threshold-ms", type=finite(), default=None, metavar="MS",
              help="Count connects slower than MS as delayed.")
@click.option("--timeout", type=finite(), default=5.0, show_default=True, metavar="S", help="Connect (and request) timeout.")
@click.option("--requests-per-conn", type=int, default=None, metavar="K",
              help="Churn: K HTTP/1.1 requests per connection, then a new connection.")
@click.option("--requests", type=int, default=None, metavar="R",
              help="Churn: requests each client makes in all [default: K].")
@click.option("--idle-ms", type=finite(), default=0.0, show_default=True, metavar="I",
              help="Churn: idle gap between requests on a connection.")
@click.option("--source-ips", default=None, metavar="CIDR|LIST",
              help="Source addresses to spread connections over (e.g. 127.0.0.2-127.0.0.9).")
@click.option("--workers", type=int, default=None, metavar="W",
              help="Worker processes [default: one per core above 2,000 connections].")
@click.option("--duration", type=finite(), default=None, metavar="S", help="Stop churning/holding after S seconds.")
@click.option("--max-time", type=finite(), default=None, metavar="S",
              help="Hard bound on the whole run [default: derived from N, --timeout and --hold].")
@click.option("--allow-remote", is_flag=True, help="Allow targets outside loopback and 198.18.0.0/15.")
@json_option
def client_cmd(targets, port_spec, connections, concurrency, threads, single, rate_spec, burst,
               burst_window_ms, burst_interval_ms, hold, keepalive, delay_threshold_ms, timeout,
               requests_per_conn, requests, idle_ms, source_ips, workers, duration, max_time,
               allow_remote, as_json):
    from netdiag.load.client import ClientConfig, NothingEstablished, run_client
    from netdiag.load.targets import (
        check_source_ips_local,
        check_targets_allowed,
        parse_ports,
        parse_source_ips,
        parse_target,
    )

    if not targets:
        raise BadInput("no target: give TARGET[:PORT] (there is no default target)")
    if connections < 0:
        raise BadInput(f"--connections must be 0 or more, not {connections}")
    default_ports = parse_ports(port_spec) if port_spec else None
    tlist = []
    for t in targets:
        tlist.extend(parse_target(t, default_ports))
    check_targets_allowed(tlist, allow_remote)
    sources = parse_source_ips(source_ips)
    check_source_ips_local(sources)
    cfg = ClientConfig(targets=tlist, connections=connections, concurrency=concurrency, threads=threads,
                       single=single, rate=_parse_rate(rate_spec), burst=burst, burst_window_ms=burst_window_ms,
                       burst_interval_ms=burst_interval_ms, hold=hold, keepalive=keepalive,
                       delay_threshold_ms=delay_threshold_ms, timeout=timeout,
                       requests_per_conn=requests_per_conn, requests=requests, idle_ms=idle_ms,
                       source_ips=sources, workers=workers, duration=duration, max_time=max_time)
    cfg.validate()
    show_bar = not as_json and sys.stderr.isatty()
    if show_bar:
        summary = _run_with_bar(cfg, run_client)
    else:
        summary = run_client(cfg)
    if as_json:
        _emit(summary)
    if summary["attempted"] > 0 and summary["established"] == 0:
        errs = ", ".join(f"{k} {v}" for k, v in summary["failed_by_errno"].items()) or "none"
        raise NothingEstablished(
            f"no connection established to {', '.join(summary['targets'][:3])}"
            f"{' …' if len(summary['targets']) > 3 else ''} ({summary['attempted']} attempted; {errs})")
    if not as_json:
        _print_summary(summary)


def _parse_rate(spec):
    if spec is None:
        return None
    s = str(spec).strip().lower()
    for suffix in ("/s", "/sec", "ps"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
            break
    try:
        r = float(s)
    except ValueError:
        raise BadInput(f"bad --rate {spec!r}: expected R or R/s") from None
    if r <= 0:
        raise BadInput(f"--rate must be above 0, not {spec}")
    return r


def _run_with_bar(cfg, run_client):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    total = cfg.planned_connects() or 1
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("est [green]{task.fields[est]}[/] failed [red]{task.fields[failed]}[/] "
                             "delayed [yellow]{task.fields[delayed]}[/] open {task.fields[open]} "
                             "{task.fields[extra]}"),
                  TimeElapsedColumn(), console=console, transient=True, refresh_per_second=8) as bar:
        task = bar.add_task("connecting", total=total, est=0, failed=0, delayed=0, open=0, extra="")
        last = {"t": 0.0, "a": 0}

        def on_progress(s):
            dt = s["elapsed_s"] - last["t"]
            extra = ""
            if dt >= 0.5:
                last["rate"] = (s["attempted"] - last["a"]) / dt
                last["t"], last["a"] = s["elapsed_s"], s["attempted"]
            if "rate" in last:
                extra = f"{last['rate']:.0f}/s"
            if cfg.churn:
                extra += f" requests {s['requests']}"
            desc = "holding" if s["done"] and not cfg.churn and cfg.hold else "connecting"
            bar.update(task, completed=min(s["attempted"], total), est=s["established"], failed=s["failed"],
                       delayed=s["delayed"], open=s["open"], extra=extra, description=desc)

        return run_client(cfg, on_progress=on_progress)


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"netdiag load client: {', '.join(s['targets'][:4])}{' …' if len(s['targets']) > 4 else ''}",
              show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    cm = s["connect_ms"]
    rows = [
        ("attempted", s["attempted"]),
        ("established", s["established"]),
        ("failed", f"{s['failed']}  " + " ".join(f"{k}={v}" for k, v in s["failed_by_errno"].items())),
        ("delayed", f"{s['delayed']} (> {s['delay_threshold_ms']} ms)" if s["delay_threshold_ms"] is not None
         else "- (no --delay-threshold-ms)"),
        ("connect ms p50/p90/p99/max", " / ".join("-" if cm[k] is None else f"{cm[k]:.2f}"
                                                  for k in ("p50", "p90", "p99", "max"))),
        ("peak concurrent", s["peak_concurrent"]),
        ("dropped while held", f"{s['dropped']}  " + " ".join(f"{k}={v}" for k, v in s["dropped_by_reason"].items())),
        ("connects/s", s["connects_per_s"]),
        ("duration s", s["duration_s"]),
    ]
    if "requests" in s:
        rows.append(("requests", f"{s['requests']} ({s['requests_per_s']}/s), failed {s['requests_failed']}"))
    if "burst_start_spread_ms" in s:
        rows.append(("bursts", f"{s['bursts']} × {s['burst_size']}, start spread {s['burst_start_spread_ms']} ms "
                               f"(window {s['burst_window_ms']} ms)"))
    if s.get("stopped"):
        rows.append(("stopped", s["stopped"]))
    for k, v in rows:
        t.add_row(k, str(v))
    Console().print(t)
