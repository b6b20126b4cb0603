"""connection_fanout from process rows (netdiag/analysis/processes.py through the Diagnoser)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from netdiag.analysis.diagnose import Diagnoser
from netdiag.analysis.thresholds import Thresholds
from netdiag.offline.keys import parse_endpoint

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schema" /
                     "watch-interval.schema.json").read_text())
NS = 4026532999


def prow(pid, comm, connects=0, inbound=0, via="accept", failed=0):
    return {"pid": pid, "comm": comm, "netns": NS, "netns_name": "nd-x-proxy", "connects": connects,
            "established": connects - failed, "failed": failed, "resets_in": 0, "resets_out": 0,
            "accepts": inbound if via == "accept" else None, "inbound": inbound, "inbound_via": via}


def rec(t, procs, dsts=()):
    return {"type": "interval", "ts": float(t), "interval_s": 0.5, "node": "n", "modes": {}, "lost_events": 0,
            "destinations": [{"dst": parse_endpoint(d), "direction": "out", "netns": NS, "netns_name": "nd-x-proxy", "connects": n,
                              "established": n, "failed": 0, "active": 0, "resets_in": 0, "resets_out": 0,
                              "syn_retrans": 0, "retrans": 0, "accepts": None, "connect_ms_avg": None,
                              "failed_by_errno": {}, "resets_out_by_reason": {}} for d, n in dsts],
            "listeners": [], "node_totals": {}, "verdicts": [], "processes": procs}


def fanouts(records, **kw):
    d = Diagnoser(Thresholds(**kw)) if kw else Diagnoser()
    for r in records:
        d.update(r)
    return [v for v in d.all() if v["kind"] == "connection_fanout"]


def test_ten_connects_per_accepted_connection_give_ratio_ten():
    recs = [rec(1, [prow(11, "nginx", connects=60, inbound=6)], [("10.0.0.1:80", 30), ("10.0.0.2:80", 30)]),
            rec(2, [prow(11, "nginx", connects=40, inbound=4)], [("10.0.0.1:80", 20), ("10.0.0.2:80", 20)]),
            rec(3, [])]
    (v,) = fanouts(recs)
    assert v["ratio"] == 10.0 and v["process"] == "nginx" and v["pids"] == [11] and v["netns"] == NS
    assert v["evidence"]["connects"] == 100 and v["evidence"]["inbound"] == 10
    assert v["evidence"]["destinations"] == [{"dst": "10.0.0.1:80", "connects": 50},
                                             {"dst": "10.0.0.2:80", "connects": 50}]
    assert "keepalive" in v["advice"]
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(v, SCHEMA["$defs"]["verdict"])


def test_workers_of_one_program_add_up_in_listener_mode():
    # the master holds the listener (given the inbound connections), the workers connect
    recs = [rec(t, [prow(10, "nginx", inbound=5, via="listener"), prow(11, "nginx", connects=15),
                    prow(12, "nginx", connects=10)]) for t in (1, 2)]
    (v,) = fanouts(recs)
    assert v["ratio"] == 5.0 and v["pids"] == [10, 11, 12] and v["evidence"]["inbound_via"] == "listener"


def test_a_pooling_proxy_and_a_plain_client_get_no_verdict():
    pooled = [rec(t, [prow(11, "nginx", connects=4, inbound=10)]) for t in (1, 2, 3)]
    assert fanouts(pooled) == []
    client = [rec(t, [prow(20, "curl", connects=50)]) for t in (1, 2, 3)]   # connects, accepts nothing
    assert fanouts(client) == []
    other = [rec(t, [prow(11, "nginx", inbound=10), prow(30, "app", connects=100)]) for t in (1, 2, 3)]
    assert fanouts(other) == []                       # different programs: not one proxy


def test_thresholds_apply():
    recs = [rec(t, [prow(11, "nginx", connects=30, inbound=10)]) for t in (1, 2)]
    (v,) = fanouts(recs)                               # ratio 3 >= the default 2
    assert v["ratio"] == 3.0
    assert fanouts(recs, fanout_ratio=4.0) == []
    assert fanouts(recs, fanout_min_inbound=21) == []
    assert fanouts(recs, fanout_min_connects=61) == []
    assert fanouts(recs[:1]) == []                     # one interval: not confirmed yet
