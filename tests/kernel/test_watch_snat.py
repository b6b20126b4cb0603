"""`netdiag watch --json` through a real local SNAT (MASQUERADE to 10 ports): the destination row
carries the NAT's port usage, and the client side shows 10 established / 20 failed."""
from __future__ import annotations

import os

import pytest

from .conftest import Watch, record_result, snat_lab
from .test_conntrack import Proc, _flush

pytestmark = pytest.mark.kernel


def _expected_snat_mode() -> str:
    from netdiag.kernel.engine import SIGNALS, mode_available
    from netdiag.kernel.features import Features
    ok, _ = mode_available(SIGNALS["snat"], "kprobe", Features.probe(want_fentry=False))
    return "kprobe" if ok else "netlink"


@pytest.fixture(scope="module")
def lab(doctor):
    yield from snat_lab(net=7)


def test_watch_shows_snat_cap(lab, tmp_path):
    dst = f"{lab.server_ip}:8080"
    cli = os.stat(f"/run/netns/{lab.client}").st_ino
    nat = os.stat(f"/run/netns/{lab.nat}").st_ino
    w = Watch(tmp_path)
    server = client = None
    try:
        server = Proc(lab.server, "serve", lab.server_ip, 8080)
        server.line()
        client = Proc(lab.client, "burst", lab.server_ip, 8080, 30, 3)
        res = client.line()
        assert res["ok"] == 10 and res["failed"] == 20
        w.until(lambda: w.total(cli, dst, "out", "failed") >= 20)
        w.until(lambda: any((r.get("snat") or {}).get("ports_in_use") == 10 for r in w.rows(cli, dst, "out")))
        client.close()
        client = None
        # The row shows ports_in_use 0 in the one interval where the entries went away (a row
        # with nothing in use and no change is left out after that): look at every interval
        # since the flush, not the last few, which a slow (emulated) machine can poll past.
        since = len(w.intervals())
        _flush(lab.nat)
        released = w.until(lambda: any(n["dst"] == dst and n["netns"] == nat and n["ports_in_use"] == 0
                                       for rec in w.intervals()[since:] for n in rec.get("nat", [])), timeout=120)
    finally:
        if client:
            client.close()
        if server:
            server.close()
        recs = w.stop()
    ivs = [r for r in recs if r["type"] == "interval"]
    rows = [r for rec in ivs for r in rec["destinations"]
            if r["netns"] == cli and r["dst"] == dst and r["direction"] == "out"]
    snat = [r["snat"] for r in rows if r.get("snat")]
    nat_ns = [n for rec in ivs for n in rec.get("conntrack_netns", []) if n["netns"] == nat]
    ranges = sorted({s["port_range"] for s in snat}, key=str)
    record_result("watch/snat", {
        "modes": ivs[-1]["modes"] if ivs else {},
        "snat_modes": sorted({rec["modes"]["snat"] for rec in ivs}),
        "established": sum(r["established"] for r in rows), "failed": sum(r["failed"] for r in rows),
        "active": max((r["active"] for r in rows), default=0),
        "ports_in_use": max((s["ports_in_use"] for s in snat), default=0),
        "port_range": ranges[0] if len(ranges) == 1 else ranges,
        "utilization": max((s["utilization"] or 0 for s in snat), default=0),
        "insert_failed": sum(s["insert_failed"] for s in snat),
        "insert_failed_netns": sum(n["insert_failed"] for n in nat_ns),
        "released": bool(released),
    })
    # kprobes on nf_nat_setup_info/__nf_conntrack_confirm where the kernel has them, else ctnetlink
    assert {rec["modes"]["snat"] for rec in ivs} == {_expected_snat_mode()}
    assert sum(r["established"] for r in rows) == 10
    assert sum(r["failed"] for r in rows) == 20
    assert max(r["active"] for r in rows) == 10
    assert max(s["ports_in_use"] for s in snat) == 10
    assert {s["port_range"] for s in snat} == {10}
    assert max(s["utilization"] for s in snat) == 1.0
    assert {s["netns"] for s in snat} == {nat}
    assert sum(n["insert_failed"] for n in nat_ns) > 0
    assert sum(s["insert_failed"] for s in snat) > 0
    assert released, "ports_in_use never returned to 0 after the client closed"
