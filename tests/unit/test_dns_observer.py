"""DnsObserver's packet handling without sockets: client-side counting, query/answer matching,
per-namespace scoping, forwarded packets, timeouts, TCP; the name cache; snapshots."""
import pytest

from netdiag.sources.dns.cache import NameCache, QueryStats, merge_dns, percentile
from netdiag.sources.dns.observer import PACKET_OUTGOING, DnsObserver, _Capture, build_snapshot
from netdiag.sources.namespaces import Namespace

from .dnspkt import answer, ipv4, query, tcp, tcp_framed, udp

HOST = 0                # pkttype PACKET_HOST: arriving
NS1, NS2, SRV = 1001, 1002, 1003
C1, C2, S = "198.18.5.2", "198.18.6.2", "198.18.5.1"


class FakeSock:
    drops = 0

    def getsockopt(self, level, opt, size):
        return (0).to_bytes(4, "little") + self.drops.to_bytes(4, "little")


def cap(inode, local):
    return _Capture(Namespace(inode, f"/x/{inode}", name=f"nd-t-{inode}"), sock=FakeSock(), local=set(local))


@pytest.fixture
def obs():
    o = DnsObserver(threaded=False)
    o._caps = {NS1: cap(NS1, [C1]), NS2: cap(NS2, [C2]), SRV: cap(SRV, [S, "198.18.6.1"])}
    return o


def lookup_pair(o, c, client, name, addrs, qid, t, sport=40000, rtt=0.004, **kw):
    """A UDP query leaving `c` and its answer arriving there."""
    o._handle(c, ipv4(client, S, 17, udp(sport, 53, query(name, qid))), PACKET_OUTGOING, t)
    o._handle(c, ipv4(S, client, 17, udp(53, sport, answer(name, addrs, qid, **kw))), HOST, t + rtt)


def test_query_and_answer_counted_once_in_the_client_namespace(obs):
    c1, srv = obs._caps[NS1], obs._caps[SRV]
    q = ipv4(C1, S, 17, udp(40000, 53, query("api.lab.test", 7)))
    a = ipv4(S, C1, 17, udp(53, 40000, answer("api.lab.test", ["198.18.7.1", "198.18.7.2"], 7)))
    obs._handle(c1, q, PACKET_OUTGOING, 100.0)
    obs._handle(srv, q, HOST, 100.0001)           # the server's side of the same packets: not a lookup of its own
    obs._handle(srv, a, PACKET_OUTGOING, 100.0039)
    obs._handle(c1, a, HOST, 100.004)
    assert obs.lookup(NS1, "198.18.7.1") == ["api.lab.test"]
    assert obs.lookup(SRV, "198.18.7.1") == [] and obs.lookup(NS2, "198.18.7.2") == []
    snap = obs.snapshot()
    assert (snap["queries"], snap["answers"], snap["packets"]) == (1, 1, 2)
    assert snap["latency_ms"]["p50"] == pytest.approx(4.0, abs=0.01)
    assert [r["netns"] for r in snap["netns"]] == [NS1]
    assert snap["lost"] == 0
    obs._caps[NS2].sock.drops = 3                 # PACKET_STATISTICS tp_drops: answers the socket had no room for
    assert obs.snapshot()["lost"] == 3
    assert snap["domains"][0]["domain"] == "api.lab.test"


def test_most_recent_resolution_wins_per_namespace(obs):
    c1, c2 = obs._caps[NS1], obs._caps[NS2]
    lookup_pair(obs, c1, C1, "api.lab.test", ["198.18.7.1", "198.18.7.2"], 1, 10.0)
    lookup_pair(obs, c2, C2, "api.lab.test", ["198.18.7.1"], 2, 10.5)
    lookup_pair(obs, c1, C1, "other.lab.test", ["198.18.7.1"], 3, 11.0)
    assert obs.lookup(NS1, "198.18.7.1") == ["other.lab.test", "api.lab.test"]
    assert obs.lookup(NS1, "198.18.7.2") == ["api.lab.test"]
    assert obs.lookup(NS2, "198.18.7.1") == ["api.lab.test"]            # NS2 never resolved other
    assert obs.lookup(NS1, "198.18.7.1", at=10.9) == ["api.lab.test"]   # as it was before other's answer


def test_cname_chain_and_nxdomain(obs):
    c1 = obs._caps[NS1]
    lookup_pair(obs, c1, C1, "alias.lab.test", [("api.lab.test", "198.18.7.1")], 4, 1.0,
                cnames=[("alias.lab.test", "api.lab.test")])
    lookup_pair(obs, c1, C1, "gone.lab.test", [], 5, 2.0, rcode="NXDOMAIN")
    assert obs.lookup(NS1, "198.18.7.1") == ["api.lab.test"]
    assert obs.chain(NS1, "api.lab.test") == ["alias.lab.test", "api.lab.test"]
    assert obs.chain(NS1, "alias.lab.test") == ["alias.lab.test", "api.lab.test"]
    snap = obs.snapshot()
    dom = {d["domain"]: d for d in snap["domains"]}
    assert dom["gone.lab.test"]["nxdomain"] == 1 and dom["gone.lab.test"]["answers"] == 1
    assert dom["alias.lab.test"]["chain"] == ["alias.lab.test", "api.lab.test"]


def test_forwarded_packets_are_not_a_lookup_of_the_router(obs):
    srv = obs._caps[SRV]
    obs._handle(srv, ipv4("198.18.9.9", "198.18.8.8", 17, udp(40000, 53, query("x.lab.test", 9))), PACKET_OUTGOING, 1)
    obs._handle(srv, ipv4("198.18.8.8", "198.18.9.9", 17, udp(53, 40000, answer("x.lab.test", ["198.18.7.9"], 9))),
                HOST, 1.1)
    assert obs.lookup(SRV, "198.18.7.9") == []
    assert obs._skipped["forwarded"] == 2 and obs.snapshot()["packets"] == 0


def test_timeouts(obs):
    c1 = obs._caps[NS1]
    obs._handle(c1, ipv4(C1, S, 17, udp(40000, 53, query("slow.lab.test", 11))), PACKET_OUTGOING, 100.0)
    obs._expire(104.9)
    assert obs._stats[(NS1, "slow.lab.test")].timeouts == 0
    obs._expire(105.1)
    assert obs._stats[(NS1, "slow.lab.test")].timeouts == 1 and not obs._pending


def test_dns_over_tcp(obs):
    c1 = obs._caps[NS1]
    obs._handle(c1, ipv4(C1, S, 6, tcp(41000, 53, b"", flags=0x02)), PACKET_OUTGOING, 1.0)       # SYN
    obs._handle(c1, ipv4(C1, S, 6, tcp(41000, 53, tcp_framed(query("tcp.lab.test", 12)))), PACKET_OUTGOING, 1.01)
    a = answer("tcp.lab.test", ["198.18.7.5"], 12)
    obs._handle(c1, ipv4(S, C1, 6, tcp(53, 41000, tcp_framed(a))), HOST, 1.02)
    obs._handle(c1, ipv4(S, C1, 6, tcp(53, 41000, tcp_framed(a)[:-3])), HOST, 1.03)   # split: counted, skipped
    assert obs.lookup(NS1, "198.18.7.5") == ["tcp.lab.test"]
    assert obs._skipped["tcp_partial"] == 1
    snap = obs.snapshot()
    assert snap["packets"] == 4 and snap["answers"] == 1 and snap["latency_ms"]["p50"] == pytest.approx(10, abs=0.1)


def test_name_cache_bounds_ties_and_expiry():
    c = NameCache(max_addrs=2, names_per_addr=2)
    c.add(1, "198.18.7.1", "a.test", 1.0, 30)
    c.add(1, "198.18.7.1", "b.test", 2.0, 30)
    c.add(1, "198.18.7.1", "c.test", 3.0, 30)
    assert c.lookup(1, "198.18.7.1") == ["c.test", "b.test"]
    c.add(1, "198.18.7.1", "b.test", 4.0, 1)        # re-resolved: moves to the front, once
    assert c.lookup(1, "198.18.7.1") == ["b.test", "c.test"]
    e = c.entries(1, "198.18.7.1")[0]
    assert e.expires == 5.0                          # expired entries stay (connections opened before expiry)
    c.add(1, "198.18.7.2", "x.test", 5.0, 30)
    c.add(1, "198.18.7.3", "y.test", 6.0, 30)
    assert c.lookup(1, "198.18.7.1") == [] and c.evicted == 1


def test_stats_and_merge():
    assert percentile([], 0.5) is None and percentile([1, 2, 3], 0.5) == 2
    s = QueryStats()
    s.queries, s.packets = 3, 6
    s.add_latency(1.0)
    d = s.as_dict(2.0)
    assert d["pps"] == 3.0 and d["latency_ms"]["p99"] == 1.0
    m = merge_dns(d, {"queries": 1, "packets": 2, "latency_ms": {"p50": 5.0, "p99": 5.0, "max": 5.0}, "pps": 1.0})
    assert m["queries"] == 4 and m["latency_ms"]["p99"] == 5.0 and m["pps"] == 4.0


def test_build_snapshot_breakdowns():
    a, b = QueryStats(), QueryStats()
    a.queries = a.packets = 2
    b.nxdomain, b.packets = 1, 1
    snap = build_snapshot({(1, "x.test"): a, (2, "x.test"): b, (2, None): QueryStats()}, {}, 1.0, {1: "one"})
    assert snap["packets"] == 3 and snap["pps"] == 3.0
    assert snap["domains"] == [{"domain": "x.test", **{k: v for k, v in snap["domains"][0].items() if k != "domain"}}]
    assert snap["domains"][0]["queries"] == 2 and snap["domains"][0]["nxdomain"] == 1
    assert {r["netns"]: r["netns_name"] for r in snap["netns"]} == {1: "one", 2: None}
    assert len(snap["netns_domains"]) == 2


def test_build_snapshot_bounds_a_flood_of_names():
    """1,500 distinct names in one interval (random subdomains): the busiest 1,000 are rows, the
    rest are counted as folded, and every packet stays in the totals."""
    stats = {}
    for i in range(1500):
        st = QueryStats()
        st.packets = st.queries = 1 + (i % 7)
        stats[(1, f"n{i}.flood.test")] = st
    snap = build_snapshot(stats, {}, 1.0, {1: "one"}, max_rows=1000)
    assert len(snap["domains"]) == 1000 and snap["domains_folded"] == 500
    assert len(snap["netns_domains"]) == 1000 and snap["netns_domains_folded"] == 500
    assert snap["packets"] == sum(st.packets for st in stats.values())
    kept = [r["packets"] for r in snap["domains"]]
    assert kept == sorted(kept, reverse=True) and min(kept) >= max(
        st.packets for (_, q), st in stats.items() if q not in {r["domain"] for r in snap["domains"]})
