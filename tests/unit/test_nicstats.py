"""The NIC driver's allowance counters: the `ethtool -S` parser and the per-interval bookkeeping
on an ENA interface's listings (tests/data/ethtool/), and the verdicts on interval records built
from them."""
from __future__ import annotations

from pathlib import Path

from netdiag.analysis.diagnose import Diagnoser
from netdiag.sources.nicstats import AllowanceAccount, allowance_of, allowances, parse_ethtool_s

DATA = Path(__file__).resolve().parents[1] / "data" / "ethtool"
EARLY = parse_ethtool_s((DATA / "ena-eth0.txt").read_text())
LATER = parse_ethtool_s((DATA / "ena-eth0-later.txt").read_text())


def test_parser_reads_every_statistic():
    assert len(EARLY) == 52 and "NIC statistics" not in EARLY
    assert EARLY["pps_allowance_exceeded"] == 1204 and EARLY["queue_0_rx_bytes"] == 131702563417
    assert allowance_of("linklocal_allowance_exceeded") == ("linklocal", "exceeded")
    assert allowance_of("conntrack_allowance_available") == ("conntrack", "available")
    assert allowance_of("queue_0_tx_cnt") is None
    assert allowances(EARLY) == {
        "exceeded": {"bw_in": 0, "bw_out": 0, "pps": 1204, "conntrack": 0, "linklocal": 3310},
        "available": {"conntrack": 368140}}


def test_account_gives_deltas_summed_over_interfaces():
    acct = AllowanceAccount()
    first = acct.update({"eth0": EARLY, "eth1": EARLY})
    assert first["allowance_exceeded"] == {"bw_in": 0, "bw_out": 0, "pps": 0, "conntrack": 0, "linklocal": 0}
    assert first["allowance_available"] == {"conntrack": 368140}
    second = acct.update({"eth0": LATER, "eth1": EARLY})
    assert second["allowance_exceeded"]["pps"] == 6000 and second["allowance_exceeded"]["conntrack"] == 120
    assert second["allowance_available"] == {"conntrack": 0}              # the lowest interface
    # a driver reset (counters back near 0) counts the new value; an interface that left is forgotten
    reset = dict(LATER, pps_allowance_exceeded=5)
    third = acct.update({"eth0": reset})
    assert third["allowance_exceeded"]["pps"] == 5 and third["interfaces"] == ["eth0"]
    assert set(acct.prev) == {"eth0"}


def _record(ts, exceeded, available):
    return {"type": "interval", "ts": ts, "node": "n", "interval_s": 1.0, "modes": {}, "lost_events": 0,
            "destinations": [], "listeners": [], "verdicts": [],
            "node_totals": {"connects": 0, "established": 0, "failed": 0, "active": 0,
                            "allowance_exceeded": exceeded, "allowance_available": available}}


def test_verdicts_from_records_built_from_the_listings():
    acct = AllowanceAccount()
    d = Diagnoser()
    figures = acct.update({"eth0": EARLY})
    v0 = d.update(_record(1.0, figures["allowance_exceeded"], figures["allowance_available"]))
    assert v0 == []
    figures = acct.update({"eth0": LATER})
    for ts in (2.0, 3.0):                       # confirmed over two intervals
        verdicts = d.update(_record(ts, figures["allowance_exceeded"], figures["allowance_available"]))
        figures = acct.update({"eth0": LATER})  # nothing more exceeded after the first minute
    by = {(v["kind"], v["allowance"]): v for v in verdicts}
    assert set(by) == {("cloud_allowance_exceeded", "pps"), ("cloud_allowance_exceeded", "conntrack")}
    pps = by[("cloud_allowance_exceeded", "pps")]
    assert pps["evidence"]["pps_allowance_exceeded"] == 6000
    assert pps["per_s"] == 2000.0               # 6000 over the window: three 1 s intervals
    assert "instance size" in pps["advice"]
    assert "untracked" in by[("cloud_allowance_exceeded", "conntrack")]["advice"]


def test_low_available_warns_before_drops():
    d = Diagnoser()
    for ts in (1.0, 2.0):
        verdicts = d.update(_record(ts, {"conntrack": 0}, {"conntrack": 800}))
    assert [(v["kind"], v["allowance"], v["available"]) for v in verdicts] == [("cloud_allowance_low", "conntrack", 800)]
    d = Diagnoser()
    for ts in (1.0, 2.0):
        verdicts = d.update(_record(ts, {"conntrack": 0}, {"conntrack": 368140}))
    assert verdicts == []
