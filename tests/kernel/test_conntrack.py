"""ConntrackMonitor on the real kernel: a real MASQUERADE with a 10-port range, real conntrack.

Topology (netdiag.labs.natlab.SnatLab): client 198.18.1.2 -> NAT (MASQUERADE --to-ports 40000-40009)
-> server 198.19.1.2. Every namespace and rule is removed at the end, also on failure.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Peer, snat_lab

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
CTPEERS = ROOT / "tests" / "ctpeers.py"
CONNECT_TIMEOUT = 2.0   # SYN at t=0 and its one retransmission at t=1 s (the next would be at t=3 s)


class Proc(Peer):
    """ctpeers.py inside a namespace."""

    script = CTPEERS


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, iptables and ctnetlink")
    yield from snat_lab()


@pytest.fixture(scope="module")
def mon(lab):
    from netdiag.sources.conntrack import ConntrackMonitor
    prefix = f"nd-{lab.tag}-"
    m = ConntrackMonitor(lambda ns: bool(ns.name and ns.name.startswith(prefix)), discover_every_s=0.1)
    m.start()
    try:
        yield m
    finally:
        m.close()


class Acc:
    """Snapshots accumulated until a condition holds (bounded)."""

    def __init__(self, mon, nat_ns_inode):
        self.mon, self.nat = mon, nat_ns_inode
        self.rows: dict = {}
        self.ns: dict = {}
        self.last = None

    def take(self):
        snap = self.mon.snapshot()
        self.last = snap
        for r in snap["snat"]:
            a = self.rows.setdefault((r["netns"], r["dst"]), {"allocations": 0, "releases": 0, "insert_failed": 0,
                                                              "drop": 0})
            for k in a:
                a[k] += r[k]
            a.update({k: r[k] for k in ("ports_in_use", "peak_in_use", "port_range", "utilization", "nat_ip",
                                         "range_source", "proto")})
        for n in snap["netns"]:
            a = self.ns.setdefault(n["netns"], {"insert_failed": 0, "drop": 0, "un_insert_failed": 0, "lost": 0})
            a["insert_failed"] += n["insert_failed"]
            a["drop"] += n["drop"]
            a["un_insert_failed"] += n["unattributed"]["insert_failed"]
            a["lost"] += n["lost_events"]
        return snap

    def until(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            self.mon.poll()
            self.take()
            if pred(self):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def row(self, dst):
        return self.rows.get((self.nat, dst))


def _flush(ns):
    """Delete the NAT's conntrack entries over ctnetlink (DESTROY events follow at once)."""
    from pyroute2 import NFCTSocket

    from netdiag.sources.namespaces import run_in

    def flush():
        with NFCTSocket() as s:
            s.flush()
    run_in(f"/run/netns/{ns}", flush)


def test_port_range_exhaustion_then_release(lab, mon):
    nat = mon_inode(lab.nat)
    acc = Acc(mon, nat)
    acc.take()                                            # baseline interval
    dst = f"{lab.server_ip}:8080"
    server = Proc(lab.server, "serve", lab.server_ip, 8080)
    client = None
    try:
        server.line()
        client = Proc(lab.client, "burst", lab.server_ip, 8080, 30, CONNECT_TIMEOUT)
        res = client.line()
        assert (res["ok"], res["failed"]) == (10, 20), res
        assert set(res["errors"]) == {"ETIMEDOUT"}        # SYNs dropped at the NAT: no RST, no reply
        ok = acc.until(lambda a: a.row(dst) and a.row(dst)["allocations"] == 10
                       and a.ns[nat]["insert_failed"] >= 40)
        r = acc.row(dst)
        assert ok, (r, acc.ns.get(nat))
        assert r["ports_in_use"] == 10 and r["port_range"] == 10 and r["range_source"] == "rule"
        assert r["utilization"] == 1.0
        assert r["nat_ip"] == lab.nat_out_ip and r["proto"] == "tcp"
        # On this kernel (6.18) a SYN that finds no free NAT tuple is dropped at confirm time: each
        # one counts once in insert_failed AND once in drop. 20 failed connects x 2 SYNs each.
        ns = acc.ns[nat]
        assert ns["insert_failed"] == 40 and ns["drop"] == 40, ns
        assert r["insert_failed"] == 40 and ns["un_insert_failed"] == 0   # one saturated destination
        assert ns["lost"] == 0
        # release: both ends close; expired entries are reaped by the kernel's GC only after
        # seconds, so the NAT's table is flushed over ctnetlink (same DESTROY events, at once)
        client.close()
        server.close()
        _flush(lab.nat)
        assert acc.until(lambda a: a.row(dst)["releases"] == 10 and a.row(dst)["ports_in_use"] == 0), acc.row(dst)
    finally:
        server.close()
        if client:
            client.close()
    from .conftest import record_result
    record_result("conntrack/exhaustion", {"ports_in_use": 10, "insert_failed": acc.ns[nat]["insert_failed"]})


def test_two_destinations_get_their_own_ranges(lab, mon):
    nat = mon_inode(lab.nat)
    acc = Acc(mon, nat)
    acc.take()
    servers = [Proc(lab.server, "serve", lab.server_ip, p) for p in (8081, 8082)]
    clients = []
    try:
        for s in servers:
            s.line()
        clients = [Proc(lab.client, "burst", lab.server_ip, p, 13, CONNECT_TIMEOUT) for p in (8081, 8082)]
        results = [c.line() for c in clients]
        assert [(r["ok"], r["failed"]) for r in results] == [(10, 3), (10, 3)], results
        d1, d2 = f"{lab.server_ip}:8081", f"{lab.server_ip}:8082"
        assert acc.until(lambda a: all(a.row(d) and a.row(d)["allocations"] == 10 for d in (d1, d2))
                         and a.ns[nat]["insert_failed"] >= 12)
        for d in (d1, d2):
            r = acc.row(d)
            assert (r["ports_in_use"], r["port_range"], r["utilization"]) == (10, 10, 1.0), r
        # both destinations saturated in the same intervals: failures stay with the namespace
        ns = acc.ns[nat]
        assert ns["insert_failed"] == 12 and ns["un_insert_failed"] == 12, ns
        assert acc.row(d1)["insert_failed"] == 0 and acc.row(d2)["insert_failed"] == 0
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.close()
        _flush(lab.nat)


def test_namespace_created_later_is_picked_up(lab, mon):
    late = lab.topo.add_ns("late")
    inode = os.stat(f"/run/netns/{late}").st_ino
    deadline = time.monotonic() + 10
    while inode not in mon.ns and time.monotonic() < deadline:
        mon.poll()
        time.sleep(0.05)
    assert inode in mon.ns
    snap = mon.snapshot()
    assert [n["name"] for n in snap["netns"] if n["netns"] == inode] == [late]
    subprocess.run(["ip", "netns", "del", late], check=True)
    lab.topo.namespaces.remove(late)
    deadline = time.monotonic() + 10
    while inode in mon.ns and time.monotonic() < deadline:
        mon.poll()
        time.sleep(0.05)
    assert inode not in mon.ns
    assert any(g["netns"] == inode for g in mon.snapshot()["netns_gone"])


def mon_inode(ns_name: str) -> int:
    return os.stat(f"/run/netns/{ns_name}").st_ino
