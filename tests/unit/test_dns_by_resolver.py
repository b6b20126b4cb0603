"""Per-domain attribution by who resolved: a row's connections split by the process that made
them, each share named by that process's own lookup of the address (its pod's otherwise)."""
from netdiag.analysis.domains import annotate, rollup_domains
from netdiag.sources.dns.cache import NameCache

from .test_dns_attribute import NS1, NS2, FakeObserver, record, row

IP = "198.18.7.1"


def shared_address_observer():
    """Two processes of NS1 resolved two names to one address, B after A; NS2 resolved A only."""
    o = FakeObserver()
    o.cache.add(NS1, IP, "api.lab.test", 90.0, 30, pid=101)
    o.cache.add(NS1, IP, "other.lab.test", 95.0, 30, pid=202)
    o.cache.add(NS2, IP, "api.lab.test", 96.0, 30, pid=303)
    return o


def test_cache_keeps_one_resolution_per_name_and_process():
    c = NameCache()
    c.add(NS1, IP, "a", 1.0, 30, pid=1)
    c.add(NS1, IP, "a", 2.0, 30, pid=2)
    c.add(NS1, IP, "a", 3.0, 30, pid=1)          # replaces pid 1's earlier one
    got = [(e.name, e.ts, e.pid) for e in c.entries(NS1, IP)]
    assert got == [("a", 3.0, 1), ("a", 2.0, 2)]


def test_each_process_share_goes_to_its_own_lookup():
    o = shared_address_observer()
    r1 = row(f"{IP}:8080", NS1, connects=7, established=7, active=2,
             by_process=[{"pid": 101, "connects": 4, "established": 4, "failed": 0},
                         {"pid": 202, "connects": 3, "established": 3, "failed": 0}])
    r2 = row(f"{IP}:8080", NS2, connects=5, established=5,
             by_process=[{"pid": 303, "connects": 5, "established": 5, "failed": 0}])
    rec = record([r1, r2])
    annotate(rec, o)
    # by anyone, NS1's latest name is other.lab.test; by who resolved, 4 of 7 are api's
    assert r1["domain"] == "api.lab.test" and r1["domain_by"] == "process"
    assert [(s["domain"], s["connects"], s["pids"]) for s in r1["domain_split"]] == [
        ("api.lab.test", 4, [101]), ("other.lab.test", 3, [202])]
    assert r2["domain"] == "api.lab.test" and "domain_split" not in r2
    doms = {d["name"]: d for d in rollup_domains(rec)}
    assert doms["api.lab.test"]["connects"] == 9 and doms["other.lab.test"]["connects"] == 3
    assert doms["api.lab.test"]["active"] == 2 and doms["other.lab.test"]["active"] == 0   # the row's, once
    both = {(d["pod"], d["name"]): d["connects"] for d in rollup_domains(rec, per_pod=True)}
    assert both == {("nd-x-11", "api.lab.test"): 4, ("nd-x-11", "other.lab.test"): 3,
                    ("nd-x-12", "api.lab.test"): 5}


def test_a_process_that_resolved_nothing_and_uncovered_connects_take_the_pods_name():
    o = shared_address_observer()
    r = row(f"{IP}:8080", NS1, connects=10, established=9, failed=1,
            by_process=[{"pid": 101, "connects": 2, "established": 2, "failed": 0},
                        {"pid": 999, "connects": 5, "established": 4, "failed": 1}])
    annotate(record([r]), o)
    split = {s["domain"]: s for s in r["domain_split"]}
    assert split["api.lab.test"]["connects"] == 2 and split["api.lab.test"]["by"] == "process"
    # pid 999 (5) and the 3 no process row covers: the namespace's most recent name
    assert split["other.lab.test"]["connects"] == 8 and split["other.lab.test"]["by"] == "pod"
    assert split["other.lab.test"]["failed"] == 1 and r["domain"] == "other.lab.test" and r["domain_by"] == "pod"


def test_rows_without_a_process_breakdown_are_named_as_before():
    o = shared_address_observer()
    r = row(f"{IP}:8080", NS1, connects=3, established=3)
    annotate(record([r]), o)
    assert r["domain"] == "other.lab.test" and "domain_by" not in r and "domain_split" not in r
