"""The Prometheus endpoint of `netdiag watch --metrics`: a sink like the others. Each interval
record updates bounded families of series; a scrape renders them (Prometheus text or
OpenMetrics, as the scraper asks) once per interval and format, then serves the cached bytes.

Cardinality is bounded by design (docs/metrics.md):

* the label granularity of the destination families is chosen (``by``: node, pod, domain, dst);
* a family holds at most ``max_series`` series: the most troubled and busiest label sets keep
  their own series, the rest are summed into one series whose labels say ``other``, and
  ``netdiag_metrics_folded_total`` counts what was folded;
* a series not updated for ``ttl`` seconds is removed (vanished destinations, pods, verdicts);
* ephemeral local ports are never a label (inbound rows on them are folded to port 0).

prometheus-client is imported here and nowhere else.
"""
from __future__ import annotations

import heapq
import ipaddress
import os
import socket
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from netdiag import __version__
from netdiag.analysis.diagnose import NUMBER
from netdiag.analysis.keys import endpoint
from netdiag.errors import BIND_REFUSALS, BadInput

BY_CHOICES = ("node", "pod", "domain", "dst")
DEFAULT_BY = "node"
DEFAULT_MAX_SERIES = 500
DEFAULT_TTL = 300.0
DEFAULT_PORT = 9464
OTHER = "other"
BY_DIRECTION = ("netdiag_connects", "netdiag_established", "netdiag_active_connections", "netdiag_resets_received",
                "netdiag_syn_retransmits", "netdiag_retransmits")
NODE_LEVEL = (*BY_DIRECTION, "netdiag_connect_failures", "netdiag_resets_sent", "netdiag_drops")
DECAY = 0.5                     # a named series' score halves each interval it is not refreshed
LAT_BUCKETS = 25                # log2(us) buckets 0..24: upper bounds 2 us .. 33.6 s, then +Inf


# -- address ---------------------------------------------------------------------------------------
def parse_listen(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``[ADDR:]PORT`` (``[v6]:PORT`` for IPv6) -> (host, port). Raises ValueError."""
    text = text.strip()
    host = default_host
    port_s = text
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise ValueError(f"{text!r} is not [ADDR:]PORT (IPv6 as [::1]:9464)")
        host, port_s = text[1:end], text[end + 2:]
    elif ":" in text:
        host, _, port_s = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    if host == "":
        raise ValueError(f"{text!r}: empty address (0.0.0.0 listens on every address)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, int(port_s)


class AddressUnusable(BadInput):
    """The metrics address cannot be bound (in use, not local, not permitted)."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True      # TIME_WAIT of a previous run; a live listener still refuses

    def handle_error(self, request, client_address) -> None:
        pass                        # a scraper's broken connection is not netdiag's to report


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    timeout = 10.0      # a client that sends nothing, or reads nothing, frees its thread and socket

    def log_message(self, *args) -> None:
        pass

    def get_stderr(self):
        return _Discard()

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:     # the scraper went away mid-request or mid-response, or timed out
            self.close_connection = True


class _Discard:
    def write(self, _text) -> None:
        pass

    def flush(self) -> None:
        pass


# -- bounded families ----------------------------------------------------------------------------
class Family:
    """One metric family: named series (labels tuple -> [value, last update, score]) plus at
    most one ``other`` series. ``update`` takes this interval's observations: a delta for a
    counter, the current value for a gauge."""

    def __init__(self, name: str, kind: str, doc: str, labelnames: tuple, max_series: int, agg: str = "sum"):
        self.name, self.kind, self.doc, self.labelnames = name, kind, doc, labelnames
        self.cap = max_series - 1          # room for named series; one slot is kept for `other`
        self.max_series = max_series
        self.agg = agg                     # how gauges fold into `other`: sum or max
        self.series: dict = {}
        self.other: float | None = None
        self.folded = 0                    # label sets folded into `other`, counted per interval

    def update(self, obs: dict, now: float) -> None:
        series = self.series
        for s in series.values():
            s[2] *= DECAY
        new = []
        counter = self.kind == "counter"
        for key, (value, score) in obs.items():
            s = series.get(key)
            if s is None:
                new.append((score, key, value))
                continue
            s[0] = s[0] + value if counter else value
            s[1] = now
            if score > s[2]:
                s[2] = score
        folded_value = None
        if new:
            new.sort(key=lambda t: -t[0])
            room = self.cap - len(series)
            heap = None
            i = 0
            for i, (score, key, value) in enumerate(new):
                if room > 0:
                    series[key] = [value, now, score]
                    room -= 1
                    continue
                if heap is None:
                    heap = [(s[2], k) for k, s in series.items()]
                    heapq.heapify(heap)
                if heap and score > heap[0][0]:
                    _, victim = heapq.heappop(heap)
                    del series[victim]
                    series[key] = [value, now, score]
                    continue
                break
            else:
                i = len(new)
            rest = new[i:]
            if rest:
                self.folded += len(rest)
                vals = [v for _, _, v in rest]
                folded_value = max(vals) if (self.agg == "max" and not counter) else sum(vals)
        if counter:
            if folded_value is not None:
                self.other = (self.other or 0) + folded_value
        else:
            self.other = folded_value

    def expire(self, now: float, ttl: float) -> None:
        dead = [k for k, s in self.series.items() if now - s[1] > ttl]
        for k in dead:
            del self.series[k]

    def count(self) -> int:
        return len(self.series) + (self.other is not None)

    def render(self, node: str):
        labels = ["node", *self.labelnames]
        if self.kind == "counter":
            m = CounterMetricFamily(self.name, self.doc, labels=labels)
        else:
            m = GaugeMetricFamily(self.name, self.doc, labels=labels)
        for key, s in self.series.items():
            m.add_metric([node, *key], s[0])
        if self.other is not None:
            m.add_metric([node, *([OTHER] * len(self.labelnames))], self.other)
        return m


# -- the sink --------------------------------------------------------------------------------------
def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    try:
        lo, hi = open(path).read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _score(r: dict) -> float:
    """Trouble first (failures, resets, SYN retransmits), then how busy (connects, active)."""
    trouble = r.get("failed", 0) + r.get("resets_in", 0) + r.get("resets_out", 0) + r.get("syn_retrans", 0)
    return trouble * 1e6 + r.get("connects", 0) + r.get("established", 0) + r.get("active", 0) + 1e-3


class MetricsSink:
    """``open`` starts serving (the address was bound by ``bind``), ``interval`` updates the
    families, ``close`` stops the server."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, node: str | None = None,
                 by: str = DEFAULT_BY, max_series: int = DEFAULT_MAX_SERIES, ttl: float = DEFAULT_TTL,
                 ephemeral: tuple[int, int] | None = None, clock=time.monotonic):
        if by not in BY_CHOICES:
            raise BadInput(f"--metrics-by {by!r}: one of {', '.join(BY_CHOICES)}")
        if max_series < 1:
            raise BadInput(f"--metrics-max-series {max_series}: at least 1")
        if ttl <= 0:
            raise BadInput(f"--metrics-ttl {ttl}: more than 0 s")
        self.host, self.port = host, port
        self.node = node or socket.gethostname()
        self.by, self.max_series, self.ttl = by, max_series, ttl
        self.ephemeral = ephemeral or ephemeral_range()
        self.clock = clock
        self.lock = threading.Lock()
        self.server = None
        self.thread = None
        self.info: dict = {}
        self.modes: dict = {}
        self.intervals = 0
        self.generation = 0
        self._cache: dict = {}
        self.hist = [0] * (LAT_BUCKETS + 1)   # cumulative per bucket, last one is +Inf
        self.hist_sum = 0.0
        self.node_counters = {"lost_events": 0, "evictions": 0}
        self.allowance_exceeded: dict = {}      # allowance -> packets over it since start
        self.allowance_available: dict = {}     # allowance -> what is left, last interval
        self.node_gauges: dict = {}
        self.families = self._families()

    # -- family set ---------------------------------------------------------------------------------
    def _families(self) -> dict:
        by = {"node": (), "pod": ("pod",), "domain": ("domain",), "dst": ("dst",)}[self.by]
        dl = ("direction", *by)
        n = self.max_series
        verdict_labels = ("kind", "place", "dst", *(by if self.by in ("pod", "domain") else ()), "number")
        specs = [
            ("netdiag_connects", "counter", "Connect attempts (out).", dl),
            ("netdiag_established", "counter", "Connections established (out: connects that succeeded; "
                                               "in: handshakes completed).", dl),
            ("netdiag_connect_failures", "counter", "Connect attempts that failed, by errno.", (*dl, "errno")),
            ("netdiag_active_connections", "gauge", "Connections established and open now.", dl),
            ("netdiag_resets_received", "counter", "TCP RSTs received.", dl),
            ("netdiag_resets_sent", "counter", "TCP RSTs sent, by the kernel's reason (unknown: kernels "
                                               "without reasons).", (*dl, "reason")),
            ("netdiag_syn_retransmits", "counter", "SYN (out) and SYN-ACK (in) retransmits.", dl),
            ("netdiag_retransmits", "counter", "Data retransmits.", dl),
            ("netdiag_listen_overflows", "counter", "Accept queue overflows (ListenOverflows) given to the "
                                                    "listener whose queue was full.", ("netns", "listener")),
            ("netdiag_listen_queue", "gauge", "Accept queue length now.", ("netns", "listener")),
            ("netdiag_listen_backlog", "gauge", "Accept queue bound (backlog).", ("netns", "listener")),
            ("netdiag_listen_queue_fill_ratio", "gauge", "Accept queue length now / backlog.",
             ("netns", "listener"), "max"),
            ("netdiag_drops", "counter", "Packets dropped by the kernel, by drop reason.", ("reason",)),
            ("netdiag_snat_ports_in_use", "gauge", "Source-NAT ports in use per NAT address and destination.",
             ("netns", "nat_ip", "dst", "proto")),
            ("netdiag_snat_port_range", "gauge", "Ports the NAT rule may use for the destination.",
             ("netns", "nat_ip", "dst", "proto")),
            ("netdiag_snat_utilization_ratio", "gauge", "Ports in use / port range.",
             ("netns", "nat_ip", "dst", "proto"), "max"),
            ("netdiag_snat_insert_failures", "counter", "Conntrack insertions that failed for the NAT's "
                                                        "destination (no free tuple).",
             ("netns", "nat_ip", "dst", "proto")),
            ("netdiag_conntrack_entries", "gauge", "Conntrack entries per network namespace.", ("netns",)),
            ("netdiag_conntrack_limit", "gauge", "Conntrack table maximum (nf_conntrack_max).", ("netns",)),
            ("netdiag_conntrack_fill_ratio", "gauge", "Conntrack entries / limit.", ("netns",), "max"),
            ("netdiag_conntrack_insert_failures", "counter", "Conntrack insert_failed.", ("netns",)),
            ("netdiag_conntrack_drops", "counter", "Conntrack drops (drop + early_drop).", ("netns",)),
            ("netdiag_verdict", "gauge", "One series per standing verdict; its value is the verdict's number "
                                         "(label number: cap, backlog, timeout_s, ...).", verdict_labels, "max"),
        ]
        fams = {}
        for spec in specs:
            name, kind, doc, labels = spec[:4]
            agg = spec[4] if len(spec) > 4 else "sum"
            fams[name] = Family(name, kind, doc, labels, n, agg)
        return fams

    # -- lifecycle ----------------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind the endpoint now (before any probe is attached): a port in use or an address
        that is not local is a typed error."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        cls = _V6Server if family == socket.AF_INET6 else _Server
        try:
            self.server = make_server(self.host, self.port, self._app, cls, handler_class=_Quiet)
        except OSError as e:
            why = BIND_REFUSALS.get(e.errno, os.strerror(e.errno or 0) or str(e))
            raise AddressUnusable(f"--metrics {self.host}:{self.port}: cannot listen: {why}") from None
        self.port = self.server.server_address[1]

    def open(self, info: dict) -> None:
        if self.server is None:
            self.bind()
        self.info = info
        self.modes = dict(info.get("modes", {}))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="metrics-http", daemon=True)
        self.thread.start()

    def close(self, summary: dict | None) -> None:
        if self.server is not None:
            if self.thread is not None:
                self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- one interval -------------------------------------------------------------------------------
    def _dst_key(self, r: dict) -> tuple:
        d = r["direction"]
        if self.by == "node":
            return (d,)
        if self.by == "pod":
            return (d, r.get("pod") or r.get("netns_name") or f"netns:{r['netns']}")
        if self.by == "domain":
            return (d, r.get("domain") or "")
        dst = r["dst"]
        if d == "in" and self.ephemeral[0] <= dst.port <= self.ephemeral[1]:
            dst = endpoint(dst.addr, 0)      # a local ephemeral port is never a label
        return (d, dst)

    def interval(self, rec: dict) -> None:
        now = self.clock()
        obs: dict = {name: {} for name in self.families}
        lat_sum = 0.0

        def add(fam, key, value, score, agg="sum"):
            o = obs[fam]
            if key in o:
                v, s = o[key]
                o[key] = ((max(v, value) if agg == "max" else v + value), max(s, score))
            else:
                o[key] = (value, score)

        if self.by == "node":
            # node-level series (per direction, errno, reason): refreshed every interval, never expired
            for fam in NODE_LEVEL:
                o = obs[fam]
                for key in self.families[fam].series:
                    o[key] = (0, 0.0)
                if fam in BY_DIRECTION:
                    for d in ("out", "in"):
                        o[(d,)] = (0, 0.0)
        else:
            for key in self.families["netdiag_drops"].series:
                obs["netdiag_drops"][key] = (0, 0.0)
        for r in rec.get("destinations", ()):
            key = self._dst_key(r)
            sc = _score(r)
            add("netdiag_connects", key, r.get("connects", 0), sc)
            add("netdiag_established", key, r.get("established", 0), sc)
            add("netdiag_active_connections", key, r.get("active", 0), sc)
            add("netdiag_resets_received", key, r.get("resets_in", 0), sc)
            add("netdiag_syn_retransmits", key, r.get("syn_retrans", 0), sc)
            add("netdiag_retransmits", key, r.get("retrans", 0), sc)
            for name, n in r.get("failed_by_errno", {}).items():
                add("netdiag_connect_failures", (*key, name), n, sc)
            reasons = r.get("resets_out_by_reason") or {}
            for name, n in reasons.items():
                add("netdiag_resets_sent", (*key, name), n, sc)
            rest = r.get("resets_out", 0) - sum(reasons.values())
            if rest > 0:
                add("netdiag_resets_sent", (*key, "unknown"), rest, sc)
            if r.get("connect_ms_avg") is not None and r.get("established"):
                lat_sum += r["connect_ms_avg"] * r["established"] / 1000.0
        for lst in rec.get("listeners", ()):
            key = (lst.get("netns_name") or f"netns:{lst['netns']}", lst["listen"])
            sc = lst.get("overflows", 0) * 1e6 + lst.get("queue", 0) + lst.get("established", 0) + 1e-3
            add("netdiag_listen_overflows", key, lst.get("overflows", 0), sc)
            add("netdiag_listen_queue", key, lst.get("queue", 0), sc)
            add("netdiag_listen_backlog", key, lst.get("backlog", 0), sc)
            fill = (lst.get("queue") or 0) / lst["backlog"] if lst.get("backlog") else 0.0
            add("netdiag_listen_queue_fill_ratio", key, fill, sc, "max")
        totals = rec.get("node_totals", {})
        by_reason = totals.get("drops_by_reason")
        if by_reason is None and totals.get("drops") is not None:      # a kernel without drop reasons
            by_reason = {"unknown": totals["drops"]}
        for name, n in (by_reason or {}).items():
            add("netdiag_drops", (name,), n, n)
        for nat in rec.get("nat", ()) or ():
            key = (nat.get("netns_name") or f"netns:{nat['netns']}", nat["nat_ip"], nat["dst"], nat.get("proto", "tcp"))
            sc = (nat.get("insert_failed", 0) + nat.get("drop", 0)) * 1e6 + nat.get("ports_in_use", 0) + 1e-3
            add("netdiag_snat_ports_in_use", key, nat.get("ports_in_use", 0), sc)
            add("netdiag_snat_port_range", key, nat.get("port_range") or 0, sc)
            add("netdiag_snat_utilization_ratio", key, nat.get("utilization") or 0.0, sc, "max")
            add("netdiag_snat_insert_failures", key, nat.get("insert_failed", 0), sc)
        for ct in rec.get("conntrack_netns", ()) or ():
            key = (ct.get("name") or f"netns:{ct['netns']}",)
            trouble = ct.get("insert_failed", 0) + ct.get("drop", 0) + ct.get("early_drop", 0)
            sc = trouble * 1e6 + (ct.get("fill") or 0.0) * 1e3 + (ct.get("entries") or 0) * 1e-3 + 1e-3
            add("netdiag_conntrack_entries", key, ct.get("entries") or 0, sc)
            add("netdiag_conntrack_limit", key, ct.get("max") or 0, sc)
            fill = ct.get("fill")
            if fill is None and ct.get("max"):
                fill = (ct.get("entries") or 0) / ct["max"]
            add("netdiag_conntrack_fill_ratio", key, fill or 0.0, sc, "max")
            add("netdiag_conntrack_insert_failures", key, ct.get("insert_failed", 0), sc)
            add("netdiag_conntrack_drops", key, ct.get("drop", 0) + ct.get("early_drop", 0), sc)
        for v in rec.get("verdicts", ()) or ():
            num = NUMBER.get(v["kind"], "cap")
            value = v.get(num)
            if value is None:
                continue
            key = (v["kind"], v.get("netns_name") or ("host" if v.get("netns") else "node"),
                   v.get("dst") or v.get("listener") or "")
            if self.by == "domain":
                key += (v.get("domain") or "",)
            elif self.by == "pod":
                pods = v.get("pods") or []
                key += (pods[0] if pods else (v.get("netns_name") or ""),)
            add("netdiag_verdict", key + (num,), float(value), 1e9, "max")

        with self.lock:
            # node-wide series
            self.hist_sum += lat_sum
            for label, n in totals.get("connect_latency_hist", {}).items():
                lower = int(label[:-2]) if label[:-2].isdigit() else 0
                i = lower.bit_length() - 1 if lower else 0
                self.hist[min(i, LAT_BUCKETS)] += n
            for name, fam in self.families.items():
                fam.update(obs[name], now)
                fam.expire(now, self.ttl)
            self.node_counters["lost_events"] += rec.get("lost_events", 0)
            self.node_counters["evictions"] += rec.get("evictions", 0)
            for a, n in (totals.get("allowance_exceeded") or {}).items():
                self.allowance_exceeded[a] = self.allowance_exceeded.get(a, 0) + n
            self.allowance_available = dict(totals.get("allowance_available") or {})
            self.node_gauges = {
                "netdiag_map_entries": rec.get("map_entries", 0),
                "netdiag_map_capacity": rec.get("map_max", 0),
                "netdiag_last_interval_timestamp_seconds": rec.get("ts", time.time()),
                "netdiag_interval_seconds": rec.get("interval_s", 0.0),
            }
            dns = rec.get("dns") or {}
            if dns.get("pps") is not None:
                self.node_gauges["netdiag_dns_packets_per_second"] = dns["pps"]
            if dns:
                self.node_counters["dns_packets"] = self.node_counters.get("dns_packets", 0) + dns.get("packets", 0)
            self.modes.update(rec.get("modes", {}))
            self.intervals += 1
            self.generation += 1
            self._cache.clear()

    # -- exposition ---------------------------------------------------------------------------------
    def series_count(self) -> dict:
        with self.lock:
            return {name: fam.count() for name, fam in self.families.items()}

    def collect(self):
        """The families as prometheus-client metric families (caller holds the lock)."""
        node = self.node
        for fam in self.families.values():
            yield fam.render(node)
        h = HistogramMetricFamily("netdiag_connect_duration_seconds",
                                  "Connect latency (attempt to established), log2 buckets.", labels=["node"])
        buckets, cum = [], 0
        for i in range(LAT_BUCKETS):
            cum += self.hist[i]
            buckets.append((repr(float(2 ** (i + 1)) / 1e6), cum))
        cum += self.hist[LAT_BUCKETS]
        buckets.append(("+Inf", cum))
        h.add_metric([node], buckets, round(self.hist_sum, 9))
        yield h
        c = CounterMetricFamily("netdiag_lost_events", "Events the kernel could not hand over (ring buffer "
                                "full, conntrack netlink overrun).", labels=["node"])
        c.add_metric([node], self.node_counters["lost_events"])
        yield c
        c = CounterMetricFamily("netdiag_map_evictions", "Destination rows the in-kernel LRU map evicted.",
                                labels=["node"])
        c.add_metric([node], self.node_counters["evictions"])
        yield c
        if "dns_packets" in self.node_counters:
            c = CounterMetricFamily("netdiag_dns_packets", "DNS packets the node's namespaces sent and "
                                    "received as clients.", labels=["node"])
            c.add_metric([node], self.node_counters["dns_packets"])
            yield c
        for name, value in self.node_gauges.items():
            g = GaugeMetricFamily(name, _NODE_DOCS[name], labels=["node"])
            g.add_metric([node], value)
            yield g
        if self.allowance_exceeded:
            c = CounterMetricFamily("netdiag_nic_allowance_exceeded", "Packets the cloud provider queued or "
                                    "dropped over a NIC allowance (the driver's <allowance>_allowance_exceeded, "
                                    "summed over the node's interfaces).", labels=["node", "allowance"])
            for a, n in sorted(self.allowance_exceeded.items()):
                c.add_metric([node, a], n)
            yield c
        if self.allowance_available:
            g = GaugeMetricFamily("netdiag_nic_allowance_available", "What is left of a NIC allowance (the "
                                  "driver's <allowance>_allowance_available, lowest interface).",
                                  labels=["node", "allowance"])
            for a, n in sorted(self.allowance_available.items()):
                g.add_metric([node, a], n)
            yield g
        c = CounterMetricFamily("netdiag_intervals", "Interval records processed.", labels=["node"])
        c.add_metric([node], self.intervals)
        yield c
        folded = CounterMetricFamily("netdiag_metrics_folded", "Label sets summed into a family's `other` "
                                     "series (each counted once per interval it was folded).",
                                     labels=["node", "family"])
        count = GaugeMetricFamily("netdiag_metrics_series", "Series a family exports now (at most "
                                  "--metrics-max-series).", labels=["node", "family"])
        for name, fam in self.families.items():
            folded.add_metric([node, name], fam.folded)
            count.add_metric([node, name], fam.count())
        yield folded
        yield count
        modes = {k: str(v) for k, v in sorted(self.modes.items())}
        b = GaugeMetricFamily("netdiag_build_info", "Always 1: the version, the metric label granularity and "
                              "the hook mode of each signal.",
                              labels=["node", "version", "metrics_by", *modes])
        b.add_metric([node, __version__, self.by, *modes.values()], 1)
        yield b

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for this Accept header, rendered once per interval and format."""
        encoder, content_type = choose_encoder(accept or "")
        with self.lock:
            hit = self._cache.get(content_type)
            if hit is None:
                hit = encoder(_Registry(self))
                self._cache[content_type] = hit
        return hit, content_type

    def _app(self, environ, start_response):
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"netdiag: the metrics are at /metrics\n"]
        body, content_type = self.render(environ.get("HTTP_ACCEPT"))
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]


class _Registry:
    """What prometheus-client's encoders read: ``collect()``."""

    def __init__(self, sink: MetricsSink):
        self.sink = sink

    def collect(self):
        return self.sink.collect()


_NODE_DOCS = {
    "netdiag_map_entries": "Destination rows in the in-kernel map now.",
    "netdiag_map_capacity": "Bound of the in-kernel destination map (--max-dsts).",
    "netdiag_last_interval_timestamp_seconds": "Unix time of the end of the last interval.",
    "netdiag_interval_seconds": "Length of the last interval.",
    "netdiag_dns_packets_per_second": "DNS packets per second the node's namespaces sent and received as "
                                      "clients, over the last interval.",
}
