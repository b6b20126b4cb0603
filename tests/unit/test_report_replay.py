"""`report`'s replay judges only the destinations whose window could hold a verdict
(netdiag/offline/replay.py): its verdicts, in their order, with their numbers, evidence, names and
the interval-by-interval match with the recording, are those of the replay over every row, on the
recorded labs and on generated intervals built to meet every per-destination verdict now and then."""
from __future__ import annotations

import json
import random

import pytest

from netdiag.analysis.diagnose import Diagnoser
from netdiag.analysis.thresholds import Thresholds
from netdiag.offline import replay as rpl
from netdiag.offline import report as rp
from netdiag.offline.keys import with_keys

from .test_recording import GOLDEN, diagnosed
from .test_report import record

LABS = sorted(p.stem for p in GOLDEN.glob("*.ndjson"))
PLAN = rpl.plan


def both(monkeypatch, sources_fn, **kw):
    """(as_json with the plan, as_json replaying every row), and whether the plan was used."""
    used = []

    def spy(*a, **k):
        p = PLAN(*a, **k)
        used.append(p is not None)
        return p
    monkeypatch.setattr(rpl, "plan", spy)
    fast = rp.Report(sources_fn(), **kw).as_json()
    monkeypatch.setattr(rpl, "plan", lambda *a, **k: None)
    full = rp.Report(sources_fn(), **kw).as_json()
    return fast, full, any(used)


def same(fast, full):
    assert fast["verdicts"] == full["verdicts"]               # order included
    assert fast["replay_matches_recording"] == full["replay_matches_recording"]
    assert fast["tables"] == full["tables"]


@pytest.mark.parametrize("name", LABS)
def test_labs_replay_the_same(tmp_path, monkeypatch, name):
    recs = diagnosed(name)
    f = record(tmp_path / f"{name}.ndrec", recs)
    fast, full, used = both(monkeypatch, lambda: [rp.load(f)])
    same(fast, full)
    assert used == any(r["destinations"] for r in recs)     # nothing to plan without rows


def generated(n=240, dsts=40, seed=3, naming=False):
    """Intervals of outbound and inbound rows that meet remote_connection_cap (plateaus with SYN
    retransmits), local_port_exhaustion (EADDRNOTAVAIL), connection_churn both ways, and
    idle_timeout_reset (resets on old connections) now and then; gaps longer than the window,
    destinations coming and going, two namespaces, a NAT and a listener that overflows."""
    rnd = random.Random(seed)
    ts = 1_700_000_000.0
    active = [rnd.randint(0, 30) for _ in range(dsts)]
    recs = []
    for i in range(n):
        ts += rnd.choice((1.0, 1.0, 1.0, 0.5, 2.0)) if i % 97 else 15.0
        rows = []
        for j in range(dsts):
            if j % 7 == 3 and (i // 20) % 2:            # comes and goes
                continue
            if rnd.random() < 0.6:                       # a plateau now and then
                active[j] = max(0, active[j] + rnd.randint(-2, 2))
            connects = rnd.choice((0, 1, 2, 5, 30, 60)) if j % 5 else rnd.randint(0, 4)
            errs = {}
            if rnd.random() < 0.08:
                errs["ETIMEDOUT"] = 1
            if j % 11 == 0 and rnd.random() < 0.05:
                errs["EADDRNOTAVAIL"] = 2
            if rnd.random() < 0.03:
                errs["ECONNREFUSED"] = 1
            failed = sum(errs.values())
            est = max(0, connects - failed)
            resets = rnd.randint(0, 1) if j % 4 == 0 else 0
            if j == 9:                                   # connections held, reset when old
                phase = i % 40
                resets = 3 if phase in (38, 39) else 0
                est = connects = 20 if phase == 0 else (3 if phase in (1, 39) and i > 0 else 0)
                errs, failed = {}, 0
                active[j] = 20 if phase not in (38,) else 17
            row = {"dst": f"10.{j % 3}.0.{j}:{443 if j % 6 else 8080}", "direction": "out",
                   "netns": 4026531840 + (j % 2), "netns_name": None if j % 2 else "pod-a",
                   "connects": connects, "established": est, "failed": failed, "active": active[j],
                   "resets_in": resets, "resets_out": 0, "syn_retrans": rnd.choice((0, 0, 0, 1)),
                   "retrans": 0, "accepts": None, "connect_ms_avg": 1.5 if est else None,
                   "failed_by_errno": errs, "resets_out_by_reason": {}}
            if naming:
                row["domain"] = f"svc{j % 4}.example" if j % 3 else None
                row["pod"] = f"pod-{j % 5}" if j % 2 else None
            rows.append(row)
        for j in range(3):                               # inbound, some of them busy
            rows.append({"dst": f"10.9.0.{j}:80", "direction": "in", "netns": 4026531840, "netns_name": "pod-a",
                         "connects": 0, "established": rnd.choice((0, 10, 40, 90)) if j else 1, "failed": 0,
                         "active": 0, "resets_in": rnd.randint(0, 50), "resets_out": rnd.randint(0, 50),
                         "syn_retrans": 0, "retrans": 0, "accepts": None, "connect_ms_avg": None,
                         "failed_by_errno": {}, "resets_out_by_reason": {}})
        rows.append({**rows[0], "dst": "10.9.0.1:80", "direction": "out"})    # one dst both ways
        ovf = 3 if i % 50 == 10 else 0
        rec = {"type": "interval", "ts": ts, "node": "gen", "interval_s": 1.0, "destinations": rows,
               "listeners": [{"listen": "0.0.0.0:8080", "netns": 4026531840, "netns_name": "pod-a", "queue": 0,
                              "max_queue": 5, "backlog": 128, "established": 4, "accepts": 4,
                              "synack_retrans": 0, "resets_in": 0, "resets_out": 0, "overflows": ovf}],
               "nat": [{"netns": 4026531841, "netns_name": None, "nat_ip": "192.0.2.1", "dst": "10.1.0.1:443",
                        "proto": "tcp", "ports_in_use": 10, "peak_in_use": 10, "port_range": 10,
                        "utilization": 1.0, "allocations": 1, "insert_failed": 1 if i % 30 == 0 else 0,
                        "drop": 0, "failed_allocations": 0}],
               "conntrack_netns": [{"netns": 4026531841, "name": None, "entries": 5, "max": 100, "fill": 0.05,
                                    "insert_failed": 1 if i % 45 == 5 else 0, "drop": 0, "early_drop": 0}],
               "node_totals": {"connects": sum(r["connects"] for r in rows), "active": sum(active)}}
        if naming:
            rec["domains"] = []
        recs.append(rec)
    d = Diagnoser()
    for r in recs:
        r["verdicts"] = d.update(with_keys(r))          # a live record's endpoints are keys
    return recs


@pytest.mark.parametrize("naming", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_generated_intervals_replay_the_same(tmp_path, monkeypatch, naming, seed):
    recs = generated(seed=seed, naming=naming)
    f = record(tmp_path / "g.ndrec", recs)
    fast, full, used = both(monkeypatch, lambda: [rp.load(f)])
    assert used
    kinds = {v["kind"] for v in full["verdicts"]}
    assert {"remote_connection_cap", "local_port_exhaustion", "connection_churn",
            "idle_timeout_reset"} <= kinds, kinds
    same(fast, full)
    if naming:
        assert any(v.get("pods") for v in fast["verdicts"])


def test_generated_with_thresholds_and_two_copies(tmp_path, monkeypatch):
    monkeypatch.setattr(rpl, "_PIECE", 97)                      # rows judged in many pieces
    recs = generated(seed=5)
    a = record(tmp_path / "a.ndrec", recs[:150])
    b = record(tmp_path / "b.ndrec", recs[100:])                 # overlapping copies of one node
    for th in (Thresholds(), Thresholds(confirm_intervals=1, cap_plateau_intervals=2, churn_min_rate=5.0),
               Thresholds(window_s=4.0, idle_min_resets=1, ports_min_eaddrnotavail=3)):
        fast, full, used = both(monkeypatch, lambda: [rp.load(a), rp.load(b)], th=th)
        assert used
        same(fast, full)
    mid = recs[120]["ts"]
    fast, full, _ = both(monkeypatch, lambda: [rp.load(a), rp.load(b)],
                         filters=rp.Filters(since=mid, until=recs[200]["ts"]))
    same(fast, full)


def test_falls_back_where_it_cannot_plan(tmp_path):
    recs = generated(n=30)
    f = record(tmp_path / "g.ndrec", recs)
    assert rpl.plan([rp.load(f)], Thresholds()) is not None
    assert rpl.plan([rp.load(f)], Thresholds(cap_min_active=0)) is None
    nd = tmp_path / "g.ndjson"
    nd.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert rpl.plan([rp.load(nd)], Thresholds()) is None
    procs = [dict(r, processes=[]) for r in recs]
    assert rpl.plan([rp.load(record(tmp_path / "p.ndrec", procs))], Thresholds()) is None
