"""The metrics sink (netdiag/sinks/metrics.py) on recorded and synthetic interval records: what
each family exports, the cardinality bound (the most troubled kept, the rest in `other`, a
counter of what was folded), TTL removal, ephemeral ports never a label, both exposition
formats, and the CLI's refusal of bad metrics options before anything starts."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from netdiag.analysis.diagnose import Diagnoser
from netdiag.cli import cli
from netdiag.errors import BadInput
from netdiag.offline.keys import parse_endpoint, with_keys
from netdiag.sinks.metrics import MetricsSink, parse_listen

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def samples(sink: MetricsSink, accept: str | None = None) -> dict:
    """{metric name: [(labels, value), ...]} of one scrape."""
    body, ctype = sink.render(accept)
    text = body.decode()
    fams = om_parse(text) if "openmetrics" in ctype else text_string_to_metric_families(text)
    out: dict = {}
    for fam in fams:
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def replay_into(sink: MetricsSink, name: str) -> list[dict]:
    d = Diagnoser()
    recs = [with_keys(json.loads(line)) for line in (GOLDEN / f"{name}.ndjson").read_text().splitlines()
            if line.strip()]
    for r in recs:
        r["verdicts"] = d.update(r)
        sink.interval(r)
    return recs


def dst_row(dst: str, direction: str = "out", **counts) -> dict:
    row = {"dst": parse_endpoint(dst), "direction": direction, "netns": 1, "netns_name": "ns1", "connects": 0, "established": 0,
           "failed": 0, "active": 0, "resets_in": 0, "resets_out": 0, "syn_retrans": 0, "retrans": 0,
           "failed_by_errno": {}, "resets_out_by_reason": {}, "connect_ms_avg": None}
    row.update(counts)
    return row


def record(rows, ts=0.0, **extra) -> dict:
    rec = {"type": "interval", "ts": ts, "interval_s": 1.0, "modes": {"connect": "tracepoint"}, "lost_events": 0,
           "evictions": 0, "map_entries": len(rows), "map_max": 16384, "destinations": rows, "listeners": [],
           "node_totals": {"drops_by_reason": {}, "connect_latency_hist": {}}, "verdicts": []}
    rec.update(extra)
    return rec


# -- address -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [("9464", ("127.0.0.1", 9464)), ("0.0.0.0:9464", ("0.0.0.0", 9464)),
                                       ("[::1]:9464", ("::1", 9464)), ("10.1.2.3:1", ("10.1.2.3", 1))])
def test_parse_listen(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["0", "65536", "x", "::1:9464", "host.example:9464", ":9464", "[::1]9464", ""])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_sink_refuses_bad_arguments():
    with pytest.raises(BadInput):
        MetricsSink(max_series=0)
    with pytest.raises(BadInput):
        MetricsSink(by="namespace")
    with pytest.raises(BadInput):
        MetricsSink(ttl=0)


# -- the metric set on a lab's records ---------------------------------------------------------------
def test_snat_cap_lab_records():
    sink = MetricsSink(node="n1", ephemeral=(32768, 60999))
    recs = replay_into(sink, "snat-cap")
    s = samples(sink)
    (labels, value), = s["netdiag_snat_ports_in_use"]
    assert labels == {"node": "n1", "netns": "nd-lea1-nat", "nat_ip": "198.19.1.1", "dst": "198.19.1.2:8080",
                      "proto": "tcp"}
    assert value == 13
    assert [v for _, v in s["netdiag_snat_port_range"]] == [13]
    assert [v for _, v in s["netdiag_snat_utilization_ratio"]] == [1.0]
    verdicts = s["netdiag_verdict"]
    assert len(verdicts) == 1
    labels, value = verdicts[0]
    assert labels["kind"] == "snat_port_exhaustion" and labels["dst"] == "198.19.1.2:8080"
    assert labels["place"] == "nd-lea1-nat" and labels["number"] == "cap" and value == 13
    # counters are the records' per-interval values summed
    want = sum(r["connects"] for rec in recs for r in rec["destinations"] if r["direction"] == "out")
    got = sum(v for lab, v in s["netdiag_connects_total"] if lab["direction"] == "out")
    assert got == want > 0
    want_fail = sum(r["failed_by_errno"].get("ECONNABORTED", 0) for rec in recs for r in rec["destinations"])
    assert sum(v for lab, v in s["netdiag_connect_failures_total"] if lab["errno"] == "ECONNABORTED") == want_fail
    insert_failed = sum(n["insert_failed"] for rec in recs for n in rec.get("nat", []))
    assert sum(v for _, v in s["netdiag_snat_insert_failures_total"]) == insert_failed > 0
    entries = {lab["netns"]: v for lab, v in s["netdiag_conntrack_entries"]}
    assert entries["nd-lea1-nat"] == recs[-1]["conntrack_netns"][1]["entries"]
    (lab, one), = s["netdiag_build_info"]
    assert one == 1 and lab["connect"] == "tracepoint" and lab["snat"] == "netlink" and lab["metrics_by"] == "node"
    assert all(lab["node"] == "n1" for fam in s.values() for lab, _ in fam)


def test_listen_overflow_lab_records():
    sink = MetricsSink(node="n1")
    recs = replay_into(sink, "listen-overflow")
    s = samples(sink)
    overflows = sum(lst["overflows"] for rec in recs for lst in rec["listeners"])
    got = {(lab["netns"], lab["listener"]): v for lab, v in s["netdiag_listen_overflows_total"]}
    assert got[("nd-ld96-srv", "198.18.20.1:8080")] == overflows > 0
    backlog = {lab["listener"]: v for lab, v in s["netdiag_listen_backlog"]}
    assert backlog["198.18.20.1:8080"] == 4
    (labels, value), = [x for x in s["netdiag_verdict"] if x[0]["kind"] == "listen_overflow"]
    assert labels["dst"] == "198.18.20.1:8080" and labels["number"] == "backlog" and value == 4


def test_latency_histogram_buckets():
    sink = MetricsSink(node="n1")
    rows = [dst_row("10.0.0.1:80", connects=7, established=7, connect_ms_avg=0.5)]
    sink.interval(record(rows, node_totals={"drops_by_reason": {"NO_SOCKET": 3},
                                            "connect_latency_hist": {"0us": 1, "256us": 4, "512us": 2}}))
    s = samples(sink)
    buckets = {lab["le"]: v for lab, v in s["netdiag_connect_duration_seconds_bucket"]}
    assert buckets["2e-06"] == 1            # [0, 2 us)
    assert buckets["0.000256"] == 1         # nothing in [2, 256) us
    assert buckets["0.000512"] == 5         # 256 us bucket: [256, 512) us
    assert buckets["0.001024"] == 7 and buckets["+Inf"] == 7
    assert s["netdiag_connect_duration_seconds_count"][0][1] == 7
    assert s["netdiag_connect_duration_seconds_sum"][0][1] == pytest.approx(7 * 0.0005)
    assert s["netdiag_drops_total"] == [({"node": "n1", "reason": "NO_SOCKET"}, 3)]


def test_openmetrics_and_text():
    sink = MetricsSink(node="n1")
    sink.interval(record([dst_row("10.0.0.1:80", connects=2)]))
    text = samples(sink)
    om = samples(sink, "application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert text["netdiag_connects_total"] == om["netdiag_connects_total"]
    body, ctype = sink.render("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n") and ctype.startswith("application/openmetrics-text")


# -- labels --------------------------------------------------------------------------------------------
def test_metrics_by_and_ephemeral_ports():
    rows = [dst_row("10.0.0.1:443", connects=3, domain="api.example", pod="default/web"),
            dst_row("10.0.0.2:443", connects=2, domain="api.example", pod="default/web"),
            dst_row("127.0.0.1:40001", "in", resets_out=1, resets_out_by_reason={"NO_SOCKET": 1}),
            dst_row("127.0.0.1:40002", "in", resets_out=1),
            dst_row("127.0.0.1:8080", "in", established=4)]
    got = {}
    for by in ("node", "pod", "domain", "dst"):
        sink = MetricsSink(node="n1", by=by, ephemeral=(32768, 60999))
        sink.interval(record(rows))
        got[by] = samples(sink)
    assert {tuple(sorted(lab.items())): v for lab, v in got["node"]["netdiag_connects_total"]} == {
        (("direction", "out"), ("node", "n1")): 5, (("direction", "in"), ("node", "n1")): 0}
    dom = {(lab["direction"], lab["domain"]): v for lab, v in got["domain"]["netdiag_connects_total"]}
    assert dom[("out", "api.example")] == 5
    pod = {(lab["direction"], lab["pod"]): v for lab, v in got["pod"]["netdiag_connects_total"]}
    assert pod[("out", "default/web")] == 5 and pod[("in", "ns1")] == 0
    dst = {(lab["direction"], lab["dst"]): v for lab, v in got["dst"]["netdiag_established_total"]}
    # the two ephemeral local ports are one label: port 0
    assert set(dst) == {("out", "10.0.0.1:443"), ("out", "10.0.0.2:443"), ("in", "127.0.0.1:0"),
                        ("in", "127.0.0.1:8080")}
    sent = {(lab["dst"], lab["reason"]): v for lab, v in got["dst"]["netdiag_resets_sent_total"]}
    assert sent == {("127.0.0.1:0", "NO_SOCKET"): 1, ("127.0.0.1:0", "unknown"): 1}
    for fam in got["dst"].values():
        for lab, _ in fam:
            for k, v in lab.items():
                if k in ("dst", "listener") and v.rsplit(":", 1)[-1].isdigit():
                    assert not 32768 <= int(v.rsplit(":", 1)[-1]) <= 60999


# -- cardinality -------------------------------------------------------------------------------------
def test_bound_keeps_troubled_folds_the_rest():
    sink = MetricsSink(node="n1", by="dst", max_series=10)
    rows = [dst_row(f"10.0.{i // 256}.{i % 256}:80", connects=1, established=1, active=1) for i in range(100)]
    rows.append(dst_row("10.9.9.9:443", connects=5, failed=5, failed_by_errno={"ETIMEDOUT": 5}, syn_retrans=9))
    sink.interval(record(rows))
    s = samples(sink)
    conn = {lab["dst"]: v for lab, v in s["netdiag_connects_total"]}
    assert len(conn) == 10
    assert conn["10.9.9.9:443"] == 5                     # the troubled one keeps its series
    assert conn["other"] == 100 - 8                      # 9 named: the troubled one and 8 busy ones
    assert sum(conn.values()) == 105
    assert {lab["dst"]: v for lab, v in s["netdiag_active_connections"]}["other"] == 92
    folded = {lab["family"]: v for lab, v in s["netdiag_metrics_folded_total"]}
    assert folded["netdiag_connects"] == 92
    series = {lab["family"]: v for lab, v in s["netdiag_metrics_series"]}
    assert series["netdiag_connects"] == 10
    # a later, more troubled destination takes the place of an idle one
    sink.interval(record([dst_row("10.8.8.8:443", connects=1, failed=1, resets_in=3)]))
    conn = {lab["dst"]: v for lab, v in samples(sink)["netdiag_connects_total"]}
    assert len(conn) == 10 and conn["10.8.8.8:443"] == 1 and conn["10.9.9.9:443"] == 5


def test_fifty_thousand_churning_destinations_stay_bounded():
    """50,000 destinations, 1,000 new ones an interval: every family stays within the bound and the
    sink's memory stops growing once the bound is reached."""
    clock = Clock()
    sink = MetricsSink(node="n1", by="dst", max_series=200, ttl=30, clock=clock)
    tracemalloc.start()
    try:
        sizes = []
        for k in range(50):
            rows = [dst_row(f"10.{k}.{i // 250}.{i % 250}:443", connects=2, established=1, failed=1,
                            failed_by_errno={"ECONNREFUSED": 1}, active=1, resets_out=1,
                            resets_out_by_reason={"NOT_SPECIFIED": 1}) for i in range(1000)]
            sink.interval(record(rows, ts=float(k)))
            clock.t += 1
            if k in (10, 49):
                samples(sink)                            # a scrape renders and caches
                sizes.append(tracemalloc.get_traced_memory()[0])
        counts = sink.series_count()
        assert max(counts.values()) <= 200
        assert counts["netdiag_connects"] == 200 and counts["netdiag_connect_failures"] == 200
        s = samples(sink)
        assert len(s["netdiag_connects_total"]) == 200
        folded = {lab["family"]: v for lab, v in s["netdiag_metrics_folded_total"]}
        assert folded["netdiag_connects"] >= 50 * 1000 - 50 * 199
        # sink memory at interval 50 within 20 % of interval 11 (the records themselves are freed)
        assert sizes[1] < sizes[0] * 1.2 + 200_000, sizes
    finally:
        tracemalloc.stop()


def test_ttl_removes_vanished_series_and_verdicts():
    clock = Clock()
    sink = MetricsSink(node="n1", by="dst", ttl=5, clock=clock)
    verdict = {"kind": "snat_port_exhaustion", "dst": "10.0.0.1:80", "netns": 7, "netns_name": "nat", "cap": 1024}
    sink.interval(record([dst_row("10.0.0.1:80", connects=1)], verdicts=[verdict]))
    for _ in range(4):
        clock.t += 1
        sink.interval(record([dst_row("10.0.0.2:80", connects=1)], verdicts=[verdict]))
    s = samples(sink)
    assert {lab["dst"] for lab, _ in s["netdiag_connects_total"]} == {"10.0.0.1:80", "10.0.0.2:80"}
    assert [v for _, v in s["netdiag_verdict"]] == [1024]
    clock.t += 5.5                                     # 10.0.0.1 last updated 9.5 s ago, the verdict 5.5 s ago
    sink.interval(record([dst_row("10.0.0.2:80", connects=1)]))
    s = samples(sink)
    assert {lab["dst"] for lab, _ in s["netdiag_connects_total"]} == {"10.0.0.2:80"}
    assert "netdiag_verdict" not in s


# -- CLI ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--metrics", "9464", "--metrics-max-series", "0"], "--metrics-max-series"),
    (["--metrics", "9464", "--metrics-by", "namespace"], "--metrics-by"),
    (["--metrics", "70000"], "--metrics"),
    (["--metrics", "::1:9464"], "--metrics"),
    (["--metrics", "9464", "--metrics-ttl", "0"], "--metrics-ttl"),
])
def test_cli_refuses_bad_metrics_options(args, needle):
    """Usage errors (exit 2) raised while parsing: before privileges are checked or anything is
    bound or attached."""
    res = CliRunner().invoke(cli, ["watch", *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "attached" not in res.output


def test_node_level_series_never_expire():
    """With --metrics-by node the per-direction, errno and drop-reason series are the node's own:
    they stay (and keep their totals) however long the node is quiet."""
    clock = Clock()
    sink = MetricsSink(node="n1", ttl=2, clock=clock)
    sink.interval(record([dst_row("10.0.0.1:80", connects=3, failed=1, failed_by_errno={"ETIMEDOUT": 1})],
                         node_totals={"drops_by_reason": {"NO_SOCKET": 2}, "connect_latency_hist": {}}))
    for _ in range(10):
        clock.t += 1
        sink.interval(record([]))
    s = samples(sink)
    assert {lab["direction"]: v for lab, v in s["netdiag_connects_total"]} == {"out": 3, "in": 0}
    assert [v for _, v in s["netdiag_connect_failures_total"]] == [1]
    assert [v for _, v in s["netdiag_drops_total"]] == [2]


def test_verdict_labels_follow_metrics_by():
    v = {"kind": "remote_connection_cap", "dst": "10.0.0.1:443", "netns": 5, "netns_name": "cli", "cap": 300,
         "domain": "api.example", "pods": ["default/web", "default/api"]}
    got = {}
    for by in ("node", "domain", "pod", "dst"):
        sink = MetricsSink(node="n1", by=by)
        sink.interval(record([], verdicts=[v]))
        (labels, value), = samples(sink)["netdiag_verdict"]
        assert value == 300
        got[by] = labels
    base = {"node": "n1", "kind": "remote_connection_cap", "place": "cli", "dst": "10.0.0.1:443", "number": "cap"}
    assert got["node"] == got["dst"] == base
    assert got["domain"] == {**base, "domain": "api.example"}
    assert got["pod"] == {**base, "pod": "default/web"}


class _Bound(Exception):
    pass


@pytest.mark.parametrize("args,env,want", [
    ([], {}, "node"),
    (["--per-domain"], {}, "domain"),
    (["--per-domain", "--metrics-by", "dst"], {}, "dst"),
    ([], {"NETDIAG_METRICS_BY": "pod"}, "pod"),
])
def test_cli_metrics_by_default(monkeypatch, args, env, want):
    """The sink watch builds (stopped at bind, before anything is attached): --per-domain labels by
    domain unless --metrics-by or NETDIAG_METRICS_BY says otherwise; the address and node pass through."""
    import netdiag.kernel.features as features
    seen = {}

    def bind(self):
        seen.update(by=self.by, host=self.host, port=self.port, node=self.node)
        raise _Bound()

    monkeypatch.setattr(features, "require_privileges", lambda: None)
    monkeypatch.setattr(MetricsSink, "bind", bind)
    res = CliRunner().invoke(cli, ["watch", "--metrics", "9464", "--node", "n7", *args], env=env)
    assert isinstance(res.exception, _Bound), res.output
    assert seen == {"by": want, "host": "127.0.0.1", "port": 9464, "node": "n7"}


def test_dns_packets_and_node_counters():
    sink = MetricsSink(node="n1")
    sink.interval(record([], dns={"pps": 900.5, "packets": 901, "queries": 450}, lost_events=3, evictions=2))
    sink.interval(record([], dns={"pps": 10.0, "packets": 10}, lost_events=1))
    s = samples(sink)
    assert s["netdiag_dns_packets_per_second"][0][1] == 10.0
    assert s["netdiag_dns_packets_total"][0][1] == 911
    assert s["netdiag_lost_events_total"][0][1] == 4
    assert s["netdiag_map_evictions_total"][0][1] == 2
    assert s["netdiag_intervals_total"][0][1] == 2
    assert "netdiag_dns_packets_total" not in samples(MetricsSink(node="n1"))      # no DNS capture, no series


def test_nic_allowances_and_drops_without_reasons():
    """The NIC driver's allowance counters become a counter and a gauge by allowance; a kernel
    without drop reasons gives its drops under reason "unknown"."""
    from netdiag.sinks.metrics import MetricsSink
    sink = MetricsSink(node="n1")
    rec = {"type": "interval", "ts": 1.0, "node": "h", "interval_s": 1.0, "modes": {}, "lost_events": 0,
           "destinations": [], "listeners": [], "verdicts": [],
           "node_totals": {"connects": 0, "established": 0, "failed": 0, "active": 0, "drops": 9,
                           "drops_by_reason": None, "allowance_exceeded": {"pps": 6000, "conntrack": 0},
                           "allowance_available": {"conntrack": 800}}}
    sink.interval(rec)
    sink.interval(dict(rec, ts=2.0))
    text = sink.render()[0].decode()
    assert 'netdiag_nic_allowance_exceeded_total{allowance="pps",node="n1"} 12000.0' in text
    assert 'netdiag_nic_allowance_available{allowance="conntrack",node="n1"} 800.0' in text
    assert 'netdiag_drops_total{node="n1",reason="unknown"} 18.0' in text
