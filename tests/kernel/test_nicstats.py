"""The allowance reader on this machine's real devices: veths in namespaces of the test (whose
driver statistics name the peer's ifindex), the node's own interfaces, and loopback (no driver
statistics at all). None of them has allowance counters: the reader must say so, ask them
once, and give `watch` empty allowance figures."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netdiag.labs.topology import Topology
from netdiag.sources.nicstats import NicStats

from .conftest import Watch

# host lane only (heavy): nothing in it differs by kernel that the guests would add, and the
# emulated guests have the time of make test for the hook paths only they have
pytestmark = [pytest.mark.kernel, pytest.mark.heavy]

PROBE = """
import json, os
from netdiag.sources.nicstats import NicStats
n = NicStats()
first = n.interval()
second = n.interval()
names = sorted(os.listdir("/sys/class/net"))
veth = [x for x in names if x != "lo"][0]
stats = n.read_all(veth)
print(json.dumps({"first": first, "second": second, "unsupported": sorted(n.unsupported), "names": names,
                  "veth": veth, "peer_ifindex": stats.get("peer_ifindex"),
                  "ifindex": {x: int(open(f"/sys/class/net/{x}/ifindex").read()) for x in names}}))
"""


@pytest.fixture(scope="module")
def topo(doctor):
    with Topology() as t:
        t.a = t.add_ns("nica")
        t.b = t.add_ns("nicb")
        t.link(t.a, "198.18.9.1/24", t.b, "198.18.9.2/24")
        yield t


def _probe(ns):
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_veths_and_loopback_have_no_allowances(topo):
    a, b = _probe(topo.a), _probe(topo.b)
    for got in (a, b):
        assert got["first"] == {"allowance_exceeded": {}, "allowance_available": {}, "interfaces": []}
        assert got["second"] == got["first"]
        assert set(got["unsupported"]) == set(got["names"])        # each asked once, then left alone
    # the veth driver's own statistics, read through the same ioctl: each end names its peer
    assert a["peer_ifindex"] == b["ifindex"][b["veth"]]
    assert b["peer_ifindex"] == a["ifindex"][a["veth"]]


def test_node_interfaces_read():
    n = NicStats()
    try:
        figures = n.interval()
        assert figures["allowance_exceeded"] == {} and figures["allowance_available"] == {}
        assert "lo" in n.unsupported
    finally:
        n.close()


def test_watch_records_carry_allowance_figures(doctor, tmp_path):
    w = Watch(tmp_path)
    try:
        assert w.until(lambda: len(w.intervals()) >= 2)
    finally:
        w.stop()
    for rec in w.intervals():
        assert rec["node_totals"]["allowance_exceeded"] == {}
        assert rec["node_totals"]["allowance_available"] == {}
