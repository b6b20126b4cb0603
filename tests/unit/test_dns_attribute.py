"""annotate / rollup_domains / rollup_pods / dns_rate_limit_verdict on hand-made records."""
from netdiag.analysis.domains import (
    ReverseResolver,
    annotate,
    dns_rate_limit_verdict,
    name_verdicts,
    rollup_domains,
    rollup_pods,
)
from netdiag.offline.keys import parse_endpoint
from netdiag.sources.dns.cache import NameCache, QueryStats
from netdiag.sources.dns.observer import build_snapshot

NS1, NS2 = 11, 12


class FakeObserver:
    def __init__(self, snap=None):
        self.cache = NameCache()
        self.snap = snap or {}
        self.snaps = 0
        self.mode = "packet"        # what DnsObserver.mode says once started

    def entries(self, netns, ip, at=None):
        return self.cache.entries(netns, ip, at)

    def snapshot(self):
        self.snaps += 1
        return self.snap


class FakePods:
    def label(self, inode):
        return {NS1: "default/web-1", NS2: "shop/api-0"}.get(inode, "host")


def row(dst, netns, **kw):
    r = {"dst": parse_endpoint(dst), "domain": None, "direction": "out", "netns": netns, "netns_name": f"nd-x-{netns}",
         "connects": 0, "established": 0, "failed": 0, "active": 0, "resets_in": 0, "resets_out": 0,
         "syn_retrans": 0, "retrans": 0, "accepts": None, "connect_ms_avg": None, "failed_by_errno": {},
         "resets_out_by_reason": {}}
    r.update(kw)
    return r


def stats(**kw):
    s = QueryStats()
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def record(rows, ts=100.0, verdicts=()):
    return {"type": "interval", "ts": ts, "interval_s": 1.0, "destinations": rows, "verdicts": list(verdicts)}


def lab_observer():
    o = FakeObserver()
    c = o.cache
    c.add(NS1, "198.18.7.1", "api.lab.test", 90.0, 30)
    c.add(NS1, "198.18.7.2", "api.lab.test", 90.0, 30)
    c.add(NS1, "198.18.7.1", "other.lab.test", 95.0, 30)
    c.add(NS2, "198.18.7.1", "api.lab.test", 91.0, 30, chain=("alias.lab.test", "api.lab.test"))
    c.add(NS2, "198.18.7.2", "api.lab.test", 91.0, 30, chain=("alias.lab.test", "api.lab.test"))
    st = {(NS1, "api.lab.test"): stats(queries=1, answers=1, packets=2, lat=[2.0]),
          (NS1, "other.lab.test"): stats(queries=1, answers=1, packets=2, lat=[3.0]),
          (NS2, "alias.lab.test"): stats(queries=1, answers=1, packets=2, lat=[9.0]),
          (NS2, "gone.lab.test"): stats(queries=1, answers=1, nxdomain=1, packets=2)}
    o.snap = build_snapshot(st, {(NS2, "alias.lab.test"): ("alias.lab.test", "api.lab.test")}, 1.0,
                            {NS1: "nd-x-11", NS2: "nd-x-12"})
    return o


def test_annotate_fills_domains_per_namespace_and_names_verdicts():
    o = lab_observer()
    rows = [row("198.18.7.1:8080", NS1, connects=3), row("198.18.7.2:8080", NS1, connects=2),
            row("198.18.7.1:8080", NS2, connects=5), row("198.18.9.9:443", NS1, connects=1),
            row("198.18.7.1:8080", NS1, direction="in")]
    rec = record(rows, verdicts=[{"kind": "connection_churn", "dst": "198.18.7.2:8080", "where": "x",
                                  "evidence": {}, "advice": ""}])
    annotate(rec, o, pods=FakePods())
    name_verdicts(rec["verdicts"], rec)
    d = rec["destinations"]
    assert d[0]["domain"] == "other.lab.test" and d[0]["domain_source"] == "dns"
    assert d[1]["domain"] == "api.lab.test"
    assert d[2]["domain"] == "api.lab.test" and d[2]["domain_chain"] == ["alias.lab.test", "api.lab.test"]
    assert d[3]["domain"] is None and "domain_source" not in d[3]
    assert d[4]["domain"] is None                     # inbound rows are local endpoints
    assert [r["pod"] for r in d] == ["default/web-1", "default/web-1", "shop/api-0", "default/web-1", "default/web-1"]
    assert rec["dns"] is o.snap and o.snaps == 1
    assert rec["verdicts"][0]["domain"] == "api.lab.test" and rec["verdicts"][0]["pods"] == ["default/web-1"]
    assert {r["pod"] for r in rec["dns"]["netns"]} == {"default/web-1", "shop/api-0"}


def test_annotate_only_counts_resolutions_up_to_the_record_time_and_flags_expiry():
    o = FakeObserver()
    o.cache.add(NS1, "198.18.7.1", "api.lab.test", 10.0, 5)
    o.cache.add(NS1, "198.18.7.1", "late.lab.test", 200.0, 5)
    rec = record([row("198.18.7.1:80", NS1, connects=1)], ts=100.0)
    annotate(rec, o)
    r = rec["destinations"][0]
    assert r["domain"] == "api.lab.test" and r["domain_expired"] is True      # answer expired at 15 s, still named


def test_ties_are_listed():
    o = FakeObserver()
    o.cache.add(NS1, "198.18.7.1", "a.lab.test", 50.0, 30)
    o.cache.add(NS1, "198.18.7.1", "b.lab.test", 50.0, 30)
    rec = record([row("198.18.7.1:80", NS1)])
    annotate(rec, o)
    assert rec["destinations"][0]["domain"] == "b.lab.test"
    assert sorted(rec["destinations"][0]["domain_ties"]) == ["a.lab.test", "b.lab.test"]


def test_reverse_names_are_marked():
    rr = ReverseResolver(resolver=lambda ip: "host-9.example" if ip == "198.18.9.9" else None)
    rec = record([row("198.18.9.9:443", NS1), row("198.18.9.8:443", NS1)])
    annotate(rec, FakeObserver(), reverse=rr)
    rr.wait_idle()
    rec = record([row("198.18.9.9:443", NS1), row("198.18.9.8:443", NS1)])
    annotate(rec, FakeObserver(), reverse=rr)
    rr.close()
    assert rec["destinations"][0]["domain"] == "host-9.example"
    assert rec["destinations"][0]["domain_source"] == "reverse"
    assert rec["destinations"][1]["domain"] is None


def lab_record():
    rows = [row("198.18.7.1:8080", NS1, connects=3, established=3, active=3, connect_ms_avg=1.0),
            row("198.18.7.2:8080", NS1, connects=2, established=2, active=2, connect_ms_avg=4.0),
            row("198.18.7.2:9090", NS1, connects=1, failed=1, failed_by_errno={"ECONNREFUSED": 1}),
            row("198.18.7.1:8080", NS2, connects=5, established=5),
            row("198.18.7.2:8080", NS2, connects=4, established=4),
            row("198.18.9.9:443", NS1, connects=1, established=1)]
    rec = record(rows)
    annotate(rec, lab_observer(), pods=FakePods())
    return rec


def test_rollup_domains_merges_ips_ports_and_namespaces():
    doms = {d["name"]: d for d in rollup_domains(lab_record())}
    api = doms["api.lab.test"]
    assert (api["connects"], api["established"], api["failed"], api["ips"], api["dsts"]) == (12, 11, 1, 2, 4)
    assert api["addrs"] == ["198.18.7.1", "198.18.7.2"] and api["ports"] == [8080, 9090]
    assert api["failed_by_errno"] == {"ECONNREFUSED": 1}
    assert api["chain"] == ["alias.lab.test", "api.lab.test"]
    assert api["netns_names"] == ["nd-x-11", "nd-x-12"] and api["pods"] == ["default/web-1", "shop/api-0"]
    # DNS of api and of its alias fold into the row
    assert api["dns"]["queries"] == 2 and api["dns"]["latency_ms"]["p99"] == 9.0
    other = doms["other.lab.test"]
    assert (other["connects"], other["ips"]) == (3, 1) and other["connect_ms_avg"] == 1.0
    assert doms["gone.lab.test"]["connects"] == 0 and doms["gone.lab.test"]["dns"]["nxdomain"] == 1
    assert doms["198.18.9.9"]["domain"] is None and doms["198.18.9.9"]["ips"] == 1
    assert "alias.lab.test" not in doms
    first = rollup_domains(lab_record())[0]
    assert first["name"] == "api.lab.test"             # failures sort first


def test_rollup_domains_per_pod():
    rows = rollup_domains(lab_record(), per_pod=True)
    by = {(r["pod"], r["name"]): r for r in rows}
    assert by[("default/web-1", "api.lab.test")]["connects"] == 3
    assert by[("shop/api-0", "api.lab.test")]["connects"] == 9
    assert by[("shop/api-0", "api.lab.test")]["dns"]["queries"] == 1          # alias lookups by that pod
    assert by[("default/web-1", "other.lab.test")]["connects"] == 3
    assert by[("shop/api-0", "gone.lab.test")]["dns"]["nxdomain"] == 1


def test_rollup_pods():
    pods = {p["pod"]: p for p in rollup_pods(lab_record())}
    assert pods["default/web-1"]["connects"] == 7 and pods["shop/api-0"]["connects"] == 9
    assert pods["default/web-1"]["domains"] == ["api.lab.test", "other.lab.test"]
    assert pods["default/web-1"]["ips"] == 3 and pods["default/web-1"]["dns"]["queries"] == 2
    assert pods["shop/api-0"]["dns"]["nxdomain"] == 1


def test_rollup_pods_without_a_pod_map_uses_netns_names():
    rec = record([row("198.18.7.1:80", NS1, connects=2), row("198.18.7.1:80", NS2, connects=3)])
    annotate(rec, FakeObserver({}))
    assert {p["pod"]: p["connects"] for p in rollup_pods(rec)} == {"nd-x-11": 2, "nd-x-12": 3}


def test_dns_rate_limit_verdict():
    st = {(NS1, "a.test"): stats(packets=700, queries=350), (NS2, "b.test"): stats(packets=100, queries=50)}
    snap = build_snapshot(st, {}, 1.0, {NS1: "nd-x-11", NS2: "nd-x-12"})
    assert dns_rate_limit_verdict(snap, share=0.8) is None                   # 800 pps <= 819.2
    v = dns_rate_limit_verdict(snap, share=0.5)
    assert v["kind"] == "dns_rate_limit_risk" and v["cap"] == 1024
    assert v["evidence"]["dns_pps"] == 800.0 and v["pods"] == ["nd-x-11", "nd-x-12"]
    assert v["evidence"]["top_pods"][0] == {"pod": "nd-x-11", "packets": 700, "pps": 700.0, "queries": 350}
    assert dns_rate_limit_verdict(None) is None
