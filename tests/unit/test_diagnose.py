"""The diagnosis engine, offline: golden interval records recorded from the labs replay with exact
verdicts, and hand-made records pin each threshold (no root, no kernel)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from netdiag.analysis.diagnose import KINDS, NUMBER, Diagnoser, replay
from netdiag.analysis.thresholds import DEFAULT, Thresholds
from netdiag.offline.keys import parse_endpoint, with_keys

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


def load(name):
    return [with_keys(json.loads(line)) for line in (GOLDEN / f"{name}.ndjson").read_text().splitlines()
            if line.strip()]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_replays_exactly(name):
    got = [{"kind": v["kind"], "target": v.get("dst") or v.get("listener"), NUMBER[v["kind"]]: v[NUMBER[v["kind"]]]}
           for v in replay(load(name))]
    assert got == EXPECTED[name]["verdicts"]


def test_golden_numbers_match_the_lab_parameters():
    e = {k: v["verdicts"] for k, v in EXPECTED.items()}
    assert e["snat-cap"][0]["cap"] == EXPECTED["snat-cap"]["params"]["ports"] == 13
    assert e["remote-cap"][0]["cap"] == 13
    assert e["port-exhaustion"][0]["cap"] == 6
    assert e["listen-overflow"][0]["backlog"] == 4
    assert abs(e["idle-timeout"][0]["timeout_s"] - 5) <= 1
    assert e["microburst"][0]["peak_per_ms"] > 0
    assert e["churn"][0]["connects_per_active"] >= 10
    assert e["healthy"] == []


def test_verdict_appears_once_and_is_updated_not_repeated():
    d = Diagnoser()
    recs = load("snat-cap")
    seen = []
    for r in recs:
        seen.append(len(d.update(r)))
    assert max(seen) == 1
    (v,) = d.all()
    assert v["intervals"] > 1 and v["first_ts"] < v["last_ts"]
    assert set(v) >= {"kind", "dst", "where", "cap", "evidence", "advice", "first_ts", "last_ts", "intervals"}
    assert v["evidence"]["port_range"] == 13 and v["evidence"]["nat_insert_failed"] > 0


def test_remote_cap_is_not_claimed_when_the_nat_is_watched():
    kinds = {v["kind"] for v in replay(load("snat-cap"))}
    assert "remote_connection_cap" not in kinds and "conntrack_insert_race" not in kinds


def test_replay_needs_no_io(monkeypatch):
    import builtins

    def no_open(*a, **k):
        raise AssertionError("the engine must not do I/O")
    recs = load("idle-timeout")
    monkeypatch.setattr(builtins, "open", no_open)
    assert [v["kind"] for v in replay(recs)] == ["idle_timeout_reset"]


# -- hand-made records ---------------------------------------------------------------------------
def rec(ts, dests=(), listeners=(), ct=(), nat=(), interval=1.0):
    return {"type": "interval", "ts": ts, "interval_s": interval, "destinations": list(dests),
            "listeners": list(listeners), "node_totals": {}, "conntrack_netns": list(ct), "nat": list(nat)}


def row(dst="10.0.0.1:443", ns=1, **kw):
    r = {"dst": parse_endpoint(dst), "direction": "out", "netns": ns, "netns_name": "pod", "connects": 0, "established": 0,
         "failed": 0, "failed_by_errno": {}, "active": 0, "resets_in": 0, "resets_out": 0,
         "resets_out_by_reason": {}, "syn_retrans": 0, "retrans": 0, "accepts": None, "connect_ms_avg": None}
    r.update(kw)
    return r


def ctns(ns=1, **kw):
    c = {"netns": ns, "name": "nat", "entries": 10, "max": 1000, "fill": 0.01, "fill_warning": False,
         "insert_failed": 0, "drop": 0, "early_drop": 0}
    c.update(kw)
    return c


def kinds(records, thresholds=None):
    d = Diagnoser(thresholds)
    for r in records:
        d.update(r)
    return d.all()


def test_conntrack_table_full():
    recs = [rec(t, ct=[ctns(entries=1000, fill=1.0, drop=5 if t > 1 else 0)]) for t in range(1, 5)]
    (v,) = kinds(recs)
    assert (v["kind"], v["cap"], v["evidence"]["drop"]) == ("conntrack_table_full", 1000, 15)
    assert "nf_conntrack_max" in v["advice"]


def test_conntrack_full_needs_drops():
    assert kinds([rec(t, ct=[ctns(entries=990, fill=0.99)]) for t in range(1, 6)]) == []


def test_conntrack_insert_race_without_full_table_or_nat_range():
    recs = [rec(t, ct=[ctns(insert_failed=3)]) for t in range(1, 4)]
    (v,) = kinds(recs)
    assert (v["kind"], v["insert_failed"]) == ("conntrack_insert_race", 9)


def test_insert_failed_with_full_nat_range_is_snat_not_race():
    nat = {"netns": 1, "netns_name": "nat", "dst": "10.0.0.1:443", "nat_ip": "1.2.3.4", "ports_in_use": 7,
           "peak_in_use": 7, "port_range": 7, "utilization": 1.0, "allocations": 0, "insert_failed": 2, "drop": 2}
    recs = [rec(t, ct=[ctns(insert_failed=2, drop=2)], nat=[nat]) for t in range(1, 4)]
    (v,) = kinds(recs)
    assert (v["kind"], v["cap"]) == ("snat_port_exhaustion", 7)


def test_confirm_intervals_gate():
    one = [rec(1, ct=[ctns(insert_failed=1)])]
    assert kinds(one) == []
    assert [v["kind"] for v in kinds(one, Thresholds(confirm_intervals=1))] == ["conntrack_insert_race"]


def test_remote_cap_needs_a_plateau_and_unanswered_syns():
    flat = [rec(t, dests=[row(active=50, syn_retrans=3 if t == 2 else 0)]) for t in range(1, 6)]
    (v,) = kinds(flat)
    assert (v["kind"], v["cap"]) == ("remote_connection_cap", 50)
    growing = [rec(t, dests=[row(active=10 * t, syn_retrans=3)]) for t in range(1, 6)]
    assert kinds(growing) == []
    quiet = [rec(t, dests=[row(active=50)]) for t in range(1, 6)]
    assert kinds(quiet) == []


def test_remote_cap_refused_when_local_drops():
    recs = [rec(t, dests=[row(active=50, syn_retrans=3)], ct=[ctns(ns=2, drop=1)]) for t in range(1, 6)]
    assert "remote_connection_cap" not in {v["kind"] for v in kinds(recs)}


def test_local_port_exhaustion_cap_is_what_plateaued():
    recs = [rec(1, dests=[row(connects=9, established=7, active=7, failed=2, failed_by_errno={"EADDRNOTAVAIL": 2})]),
            rec(2, dests=[row(active=7)]), rec(3, dests=[row(active=7)])]
    (v,) = kinds(recs)
    assert (v["kind"], v["cap"]) == ("local_port_exhaustion", 7)


def test_idle_timeout_from_connection_ages():
    # one connection established per second for 12 s, then 6 RSTs: the 6 oldest (ages 12..7 s)
    recs = [rec(t, dests=[row(connects=1, established=1, active=t)]) for t in range(1, 13)]
    recs.append(rec(13, dests=[row(active=6, resets_in=6)]))
    recs.append(rec(14, dests=[row(active=6)]))
    (v,) = kinds(recs)
    # youngest reset was established at t=6 (age 7 s), oldest survivor at t=7 (age 6 s)
    assert (v["kind"], v["timeout_s"]) == ("idle_timeout_reset", 6.5)


def test_refused_connects_are_not_idle_resets():
    recs = [rec(t, dests=[row(connects=3, failed=3, failed_by_errno={"ECONNREFUSED": 3}, resets_in=3)])
            for t in range(1, 6)]
    assert kinds(recs) == []


def test_churn_and_no_churn():
    churn = [rec(t, dests=[row(connects=500, established=500, active=2)]) for t in range(1, 6)]
    (v,) = kinds(churn)
    assert v["kind"] == "connection_churn" and v["connects_per_active"] == 250.0
    pooled = [rec(t, dests=[row(connects=5, established=5, active=100)]) for t in range(1, 6)]
    assert kinds(pooled) == []


def listener(ovf, backlog=16, ns=2):
    return {"listen": parse_endpoint("10.0.0.1:443"), "netns": ns, "netns_name": "srv", "queue": 0, "max_queue": backlog,
            "backlog": backlog, "established": 0, "accepts": None, "overflows": ovf, "synack_retrans": 0}


def test_burst_versus_steady_overflow():
    # 0.1 s intervals: 200 connects in one interval every 10, overflows in the burst intervals
    recs = []
    for i in range(1, 41):
        b = i % 10 == 1
        recs.append(rec(i / 10, interval=0.1, dests=[row(connects=200 if b else 0, active=200 * ((i - 1) // 10 + 1))],
                        listeners=[listener(50 if b else 0)]))
    (v,) = kinds(recs)
    assert v["kind"] == "connection_burst" and v["listener"] == "10.0.0.1:443"
    assert v["peak_per_ms"] == 2.0 and v["evidence"]["drops_in_bursts"] > 0
    steady = [rec(i / 2, interval=0.5, dests=[row(connects=20, active=20 * i)], listeners=[listener(5, backlog=4)])
              for i in range(1, 11)]
    (v,) = kinds(steady)
    assert (v["kind"], v["backlog"]) == ("listen_overflow", 4)


def test_standing_verdicts_expire_but_all_keeps_them():
    d = Diagnoser()
    for t in range(1, 4):
        d.update(rec(t, ct=[ctns(insert_failed=1)]))
    assert len(d.update(rec(4))) == 1
    assert d.update(rec(30)) == []
    assert [v["kind"] for v in d.all()] == ["conntrack_insert_race"]


def test_catalog_and_thresholds_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "verdicts.md").read_text()
    for k in KINDS:
        assert f"`{k}`" in doc
    for name in DEFAULT.as_dict():
        assert f"`{name}`" in doc, f"threshold {name} is not documented"


def test_records_are_not_modified():
    recs = load("port-exhaustion")
    before = copy.deepcopy(recs)
    replay(recs)
    assert recs == before


def test_verdicts_fit_the_watch_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schema" /
                         "watch-interval.schema.json").read_text())["$defs"]["verdict"]
    made = [v for name in EXPECTED for v in replay(load(name))]
    made += kinds([rec(t, ct=[ctns(entries=1000, fill=1.0, drop=5)]) for t in range(1, 4)])
    assert len({v["kind"] for v in made}) == 8
    for v in made:
        jsonschema.validate(v, schema)
        assert v[NUMBER[v["kind"]]] is not None


def test_dns_race_recorded_on_a_kernel_that_resolves_clashes():
    """Intervals recorded by tests/kernel/test_dns_race.py (ND_DNS_RACE_RECORDS): this kernel
    resolved every clash (clash_resolve counted, nothing dropped), so nothing is wrong. The same
    intervals as a kernel without clash resolution reports them (each clashing packet dropped:
    insert_failed and drop) give conntrack_insert_race with that number."""
    recs = load("dns-race")
    clashes = sum(n["clash_resolve"] for r in recs for n in r["conntrack_netns"])
    assert clashes == 7
    assert sum(n["insert_failed"] for r in recs for n in r["conntrack_netns"]) == 0
    assert replay(recs) == []
    for r in recs:
        for n in r["conntrack_netns"]:
            n["insert_failed"] = n["drop"] = n.pop("clash_resolve")
    vs = replay(recs)
    assert [(v["kind"], v["insert_failed"]) for v in vs] == [("conntrack_insert_race", clashes)]
    assert "single-request-reopen" in vs[0]["advice"]
