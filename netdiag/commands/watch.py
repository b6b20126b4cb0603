"""`netdiag watch`: per-destination and per-listener counters every interval."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import click

from netdiag.analysis.domains import LINK_LOCAL_PPS
from netdiag.commands.options import (
    DST_SLOTS,
    SOCKET_SLOTS,
    duration_option,
    finite,
    flavour_kwargs,
    interval_option,
    json_option,
    tracepoints_option,
)
from netdiag.errors import BadInput


def dns_options(f):
    """--dns/--no-dns, --dns-capture, --per-domain, --per-pod, --resolve, --dns-share, --host-root."""
    f = click.option("--host-root", type=click.Path(file_okay=False), default="/", show_default=True,
                     help="Where the node's /var/log/pods, /run/netns, /sys/fs/cgroup and CRI socket are "
                          "(/host in `kubectl debug node/... --profile=sysadmin`); processes are read from /proc.")(f)
    f = click.option("--dns-share", type=finite(min=0.01), default=0.5, show_default=True,
                     help=f"Verdict dns_rate_limit_risk when the node's DNS packets/s exceed this share of "
                          f"{LINK_LOCAL_PPS} (the link-local resolver limit per instance).")(f)
    f = click.option("--resolve", is_flag=True,
                     help="Name addresses never seen in DNS by reverse (PTR) lookup; marked "
                          "domain_source: reverse.")(f)
    f = click.option("--per-pod", is_flag=True,
                     help="Roll destinations up by pod (namespace/name on Kubernetes, ip-netns name "
                          "otherwise); with --per-domain, by pod and domain.")(f)
    f = click.option("--per-domain", is_flag=True,
                     help="Roll destinations up by the domain their process (else their namespace) resolved (all IPs and ports "
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


def metrics_options(f):
    """--metrics, --node, --metrics-by, --metrics-max-series, --metrics-ttl, --quiet."""
    f = click.option("--quiet", "-q", is_flag=True,
                     help="Print nothing but errors (and the NDJSON of --json): for DaemonSets.")(f)
    f = click.option("--metrics-ttl", type=finite(min=0, min_open=True), default=300.0,
                     show_default=True, metavar="S",
                     help="Remove a series (a destination, pod, verdict) not updated for S seconds.")(f)
    f = click.option("--metrics-max-series", type=click.IntRange(min=1), default=500, show_default=True,
                     metavar="N",
                     help="At most N series per metric family: the most troubled and busiest keep theirs, "
                          "the rest are summed into one series labelled `other`.")(f)
    f = click.option("--metrics-by", type=click.Choice(["node", "pod", "domain", "dst"]), default="node",
                     show_default=True, envvar="NETDIAG_METRICS_BY",
                     help="Label of the per-destination metrics: node (none), pod (turns on --per-pod), "
                          "domain (turns on --dns), dst (remote ip:port); default: $NETDIAG_METRICS_BY, "
                          "else domain with --per-domain, else node.")(f)
    f = click.option("--node", metavar="NAME", envvar="NETDIAG_NODE",
                     help="The `node` label of every metric (default: $NETDIAG_NODE, else the host name).")(f)
    f = click.option("--metrics", "metrics", metavar="[ADDR:]PORT", callback=_metrics_address,
                     envvar="NETDIAG_METRICS",
                     help="Serve Prometheus metrics on ADDR:PORT (/metrics; ADDR 127.0.0.1 unless given; "
                          "default: $NETDIAG_METRICS, else none).")(f)
    return f


def _metrics_address(ctx, param, value):
    if value is None:
        return None
    from netdiag.sinks.metrics import parse_listen
    try:
        return parse_listen(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def filter_options(f):
    """The options `watch` and `record` share: what is watched and how it attaches."""
    for deco in reversed([
        click.option("--netns", metavar="NAME|INODE", help="Only this network namespace."),
        click.option("--port", type=click.IntRange(1, 65535), help="Only destinations / listeners on this port."),
        click.option("--dst", metavar="CIDR", help="Only destinations inside this network."),
        click.option("--mode", type=click.Choice(["auto", "kprobe", "fentry", "tracepoint"]), default="auto",
                     show_default=True, help="Force a hook mode where a signal has it."),
        click.option("--max-dsts", type=click.IntRange(min=64), default=16384, show_default=True,
                     help="Bound of the in-kernel destination map (LRU; evictions are counted)."),
        click.option("--socket-slots", type=click.IntRange(min=2), default=SOCKET_SLOTS, show_default=True,
                     help="Slots of the in-kernel table of outbound sockets (a power of two, 72 bytes each); a "
                          "socket whose slot is taken goes to an LRU hash of --max-socks."),
        click.option("--max-socks", type=click.IntRange(min=1024), default=None, metavar="N",
                     help="Bound of the in-kernel LRU hash of outbound sockets whose slot is taken (136 bytes of "
                          "kernel memory each, used or not). Default sized from the node: one per 32 KiB of "
                          "memory, a power of two, 262,144 to 1,048,576 (35.7 to 142.6 MB). `active` stays exact "
                          "while fewer than N outbound connections are open at once outside the slots' table."),
        click.option("--dst-slots", type=click.IntRange(min=1), default=DST_SLOTS, show_default=True,
                     help="Per-CPU slots of the in-kernel table that holds the first destinations' rows (a power of "
                          "two); the others go to the LRU hash of --max-dsts."),
        click.option("--accepts", "count_accepts", is_flag=True,
                     help="Count accept() calls per listener on kernels without kprobes/fentry too (adds syscall "
                          "tracepoints, which slow every syscall a little)."),
        click.option("--per-process", is_flag=True,
                     help="Count connects, failures, resets and accepts per process (tgid, name, network "
                          "namespace) in the kernel and roll them up as `processes` (bounded map, evictions "
                          "counted)."),
        click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Create this file once the probes are attached."),
        tracepoints_option,
        dns_options,
    ]):
        f = deco(f)
    return f


@click.command("watch")
@interval_option()
@duration_option()
@json_option
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Rows per table.")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Also record every interval into this file (as `netdiag record --out PATH`, default bounds).")
@filter_options
@metrics_options
def command(interval, duration, as_json, top, record_path, metrics, node, metrics_by, metrics_max_series,
            metrics_ttl, quiet, **options):
    """Watch connections per destination and listener, counted in the kernel.

    Every interval: connects, established, failed (by errno), active (open now, including
    connections that existed before start), resets in/out (with the kernel's reason), SYN and data
    retransmits, listener queues and overflows, drops by reason. Rows are sorted by trouble.

    \b
    Examples:
      sudo netdiag watch
      sudo netdiag watch --json | jq -c '.destinations[] | select(.failed > 0)'
      sudo netdiag watch --port 443 --dst 10.0.0.0/8 --interval 5
      sudo netdiag watch --metrics 9464 --quiet
    """
    if metrics is not None:
        source = click.get_current_context().get_parameter_source("metrics_by")
        if options["per_domain"] and source == click.core.ParameterSource.DEFAULT:
            metrics_by = "domain"            # --per-domain: connects per domain in the metrics too
        options["dns"] = options["dns"] or metrics_by == "domain"
        options["per_pod"] = options["per_pod"] or metrics_by == "pod"
    from netdiag.inputs import check_name
    if node is not None:
        check_name(node, "--node")
    if record_path is not None:
        from netdiag.offline.writer import check_recording_path
        check_recording_path(record_path, "--record")
    check_input(options["netns"], options["dst"], options["socket_slots"], options["dst_slots"],
                options["ready_file"], options["host_root"])
    sinks = output_sinks(as_json, top, options["ready_file"], quiet)
    recorder = None
    if record_path is not None:
        from netdiag.sinks.recorder import Recorder
        recorder = Recorder(record_path, write_behind=True)
        sinks.insert(0, recorder)
    if metrics is not None:
        from netdiag.kernel.features import require_privileges
        from netdiag.sinks.metrics import MetricsSink
        require_privileges()
        metrics_sink = MetricsSink(*metrics, node=node, by=metrics_by, max_series=metrics_max_series,
                                   ttl=metrics_ttl)
        metrics_sink.bind()              # a port in use fails here, before anything is attached
        sinks.insert(0, metrics_sink)
    run_watch(interval, duration, sinks, recorder=recorder, quiet=quiet, **options)


def check_input(netns, dst, socket_slots, dst_slots, ready_file, host_root):
    """Refuse bad input of `watch`/`record` (one line, exit 2/65/73) before anything is bound,
    attached or written; returns the --netns inode (or None)."""
    from netdiag.inputs import check_netns_spec, check_output_file
    from netdiag.sources import netns as nsmod
    netns_inode = nsmod.resolve(check_netns_spec(netns)) if netns else None
    if ready_file is not None:
        check_output_file(ready_file, "--ready-file", may_exist=True, make_dirs=False)
    if not Path(host_root).is_dir():
        raise BadInput(f"--host-root {host_root}: no such directory")
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
    return netns_inode


def run_watch(interval, duration, sinks, netns, port, dst, mode, max_dsts, socket_slots, max_socks, dst_slots,
              count_accepts,
              per_process, ready_file, tracepoints, dns, dns_capture, per_domain, per_pod, resolve, dns_share,
              host_root, recorder=None, quiet=False):
    """The interval loop of `watch` (and `record`) handing every record to ``sinks``."""
    from netdiag.analysis.diagnose import Diagnoser
    from netdiag.kernel.features import require_privileges
    from netdiag.pipeline.collector import Watcher
    from netdiag.pipeline.dnswatch import Enricher
    from netdiag.pipeline.run import Pipeline, stop_on_signals
    from netdiag.sinks.summary import RunSummary

    netns_inode = check_input(netns, dst, socket_slots, dst_slots, ready_file, host_root)
    require_privileges()
    if max_socks is None:
        from netdiag.kernel.engine import node_max_socks
        max_socks = node_max_socks()
    watcher = Watcher(mode=mode, netns=netns_inode, port=port, dst=dst, max_dsts=max_dsts,
                      socket_slots=socket_slots, max_socks=max_socks, dst_slots=dst_slots,
                      syscall_tracepoints=count_accepts, per_process=per_process, proc_dsts=per_domain,
                      **flavour_kwargs(tracepoints))
    enricher = Enricher(dns=dns, per_domain=per_domain, per_pod=per_pod, resolve=resolve,
                        dns_share=dns_share, netns=netns_inode, host_root=host_root, dns_capture=dns_capture)
    summary = RunSummary()
    pipeline = Pipeline(watcher, Diagnoser(), enricher, sinks=[summary, *sinks])
    stop = threading.Event()
    try:
        with stop_on_signals(stop.set):
            try:
                try:
                    pipeline.start()
                except Exception:
                    if stop.is_set():            # Ctrl-C while compiling: nothing attached, nothing to say
                        sys.exit(130)
                    raise
                if enricher.note and not quiet:
                    click.echo(f"netdiag: {enricher.note}", err=True)
                pipeline.open(_attached(watcher, enricher, quiet))
                deadline = time.monotonic() + duration if duration else None
                pipeline.run(interval, stop, deadline=deadline, partial_last=True)
            except BaseException:
                pipeline.finish(None)            # the live view gives the terminal back
                raise
            finally:
                pipeline.close()
            pipeline.finish(summary.summary())   # a second signal here changes nothing
    finally:
        if recorder is not None:
            _say_recorded(recorder)


def _say_recorded(recorder) -> None:
    """One line: what the recording holds (also after Ctrl-C, SIGTERM or a write failure)."""
    st = recorder.stats()
    files = st["files"]
    where = files[0] if len(files) == 1 else f"{len(files)} files ({files[0]} … {files[-1]})" if files else "no file"
    extra = f", {st['dropped']} interval(s) over --max-size dropped" if st["dropped"] else ""
    click.echo(f"netdiag: recorded {st['intervals']} interval(s), {st['bytes']} bytes to {where}{extra}", err=True)


def output_sinks(as_json: bool, top: int, ready_file=None, quiet: bool = False) -> list:
    """The sinks `watch` hands its records to: a ready file, then NDJSON, the live view on a TTY,
    or plain text (none of the last two with ``quiet``)."""
    from netdiag.sinks.ready import ReadyFile
    sinks = [ReadyFile(ready_file)] if ready_file else []
    if as_json:
        from netdiag.sinks.ndjson import NdjsonSink
        return sinks + [NdjsonSink()]
    if quiet:
        return sinks
    if sys.stdout.isatty():
        from netdiag.sinks.live import LiveView
        return sinks + [LiveView(top)]
    from netdiag.sinks.plain import PlainSink
    return sinks + [PlainSink(top)]


def _attached(watcher, enricher, quiet: bool = False) -> dict:
    """Say what got attached (stderr) and return it: what the ready file holds."""
    plan = dict(watcher.plan, tracepoints=watcher.modes["tracepoints"])
    modes = " ".join(f"{k}={v}" for k, v in plan.items())
    program = watcher.prog.program if watcher.prog is not None else "compiled"
    dns_program = enricher.program
    if not quiet:
        click.echo(f"netdiag: attached ({modes} program={program}"
                   f"{f' dns_program={dns_program}' if dns_program else ''})", err=True)
    if watcher.conntrack_note and watcher.want_conntrack and not quiet:
        click.echo(f"netdiag: conntrack off: {watcher.conntrack_note}", err=True)
    verbose = (click.get_current_context().find_root().obj or {}).get("verbose")
    if watcher.prog is not None and watcher.prog.cache_note and verbose:
        click.echo(f"netdiag: {watcher.prog.cache_note}", err=True)
    if dns_program and enricher.observer.cache_note and verbose:
        click.echo(f"netdiag: DNS capture: {enricher.observer.cache_note}", err=True)
    if watcher.prog is not None and watcher.prog.btf_refused:
        click.echo(f"netdiag: the kernel refused the BTF-typed tracepoint programs, raw tracepoints "
                   f"instead: {watcher.prog.btf_refused}", err=True)
    ready = {"modes": plan, "program": program}
    if dns_program:
        ready["dns_program"] = dns_program
    return ready
