"""`netdiag trace` on the real kernel: exact connect/accept counts across two namespaces."""
from __future__ import annotations

import os

import pytest

from netdiag.labs.topology import Topology, ns_exec

from .conftest import Peer, Tracer, record_result

pytestmark = pytest.mark.kernel

SRV, CLI, CLI2 = "198.18.0.1", "198.18.0.2", "198.18.2.2"
SRV2 = "198.18.2.1"


@pytest.fixture(scope="module")
def topo(doctor):
    with Topology() as t:
        t.srv = t.add_ns("srv")
        t.cli = t.add_ns("cli")
        t.cli2 = t.add_ns("cli2")
        t.link(t.srv, f"{SRV}/24", t.cli, f"{CLI}/24")
        t.link(t.srv, f"{SRV2}/24", t.cli2, f"{CLI2}/24")
        yield t


# ND_TRACE_MODES=auto,fentry,tracepoint runs the whole module once per forced mode (the VM lane
# does, where all three hook paths exist).
MODES = [m for m in os.environ.get("ND_TRACE_MODES", "auto").split(",") if m]
# The shared tracepoints attach raw where the kernel allows it ("auto"); the classic fallback is
# run once too, in tracepoint mode (results keyed "<mode>+classic/...").
CLASSIC_MODES = [m for m in os.environ.get("ND_CLASSIC_MODES", "tracepoint").split(",") if m]
RUNS = [(m, "auto") for m in MODES] + [(m, "classic") for m in CLASSIC_MODES]


@pytest.fixture(scope="module", params=RUNS, ids=[f"{m}-{f}" for m, f in RUNS])
def tracer(request, doctor, topo, tmp_path_factory):
    mode, flavour = request.param
    tr = Tracer(tmp_path_factory.mktemp("trace"), "--mode", mode, "--tracepoints", flavour)
    tr.mode = mode if flavour == "auto" else f"{mode}+classic"
    tr.flavour = flavour
    try:
        tr.ready_info = tr.wait_ready()
        got = tr.ready_info.get("tracepoints")
        btf_ok = any(c["name"] == "BTF tracepoints" and c["status"] == "yes" for c in doctor["checks"])
        if flavour == "classic":
            assert got == "classic"
        elif "kprobe" not in tr.ready_info["modes"].values() and btf_ok:
            assert got == "btf"            # the tp_btf programs loaded (no fallback to raw)
        yield tr
    finally:
        if tr.proc.poll() is None:
            tr.summary = tr.stop()


def _connects(tr, ns_inode, dst):
    return lambda e: e["type"] == "connect" and e["netns"] == ns_inode and e["dst"] == dst


def _marker(tr, topo, ns, server, port):
    """A refused connect to a marker port: once its event is in, every earlier event is too."""
    marker = Peer(ns, "connect", server, port, 1)
    try:
        marker.line()
    finally:
        marker.close()           # else it holds (and keeps its namespace alive) until the session ends
    got = tr.wait_for(_connects(tr, topo.inode(ns), f"{server}:{port}"), 1)
    assert got, "marker connect event never arrived"


def test_23_connects_and_accepts(topo, tracer):
    server = Peer(topo.srv, "serve", SRV, 8080, 23)
    client = None
    try:
        srv_pid = server.line()["pid"]
        client = Peer(topo.cli, "connect", SRV, 8080, 23)
        res = client.line()
        assert res["ok"] == 23 and not res["errors"]
        assert server.line() == {"accepted": 23}
        tracer.wait_for(_connects(tracer, topo.inode(topo.cli), f"{SRV}:8080"), 23)
        _marker(tracer, topo, topo.cli, SRV, 8091)
    finally:
        server.close()
        if client:
            client.close()
    conns = [e for e in tracer.events if _connects(tracer, topo.inode(topo.cli), f"{SRV}:8080")(e)]
    accepts = [e for e in tracer.events if e["type"] == "accept" and e["netns"] == topo.inode(topo.srv)
               and e["listen"] == f"{SRV}:8080"]
    ok = [e for e in conns if e["result"] == "ok"]
    record_result(f"{tracer.mode}/connect_accept", {"connects_ok": len(ok), "connects": len(conns), "accepts": len(accepts),
                                     "modes": tracer.ready_info["modes"],
                                     "tracepoints": tracer.ready_info.get("tracepoints")})
    assert len(conns) == 23 and len(ok) == 23
    assert len(accepts) == 23
    assert {e["pid"] for e in ok} == {res["pid"]}
    assert {e["saddr"] for e in ok} == {CLI}
    assert all(e["sport"] > 0 and e["latency_ms"] >= 0 for e in ok)
    assert {e["pid"] for e in accepts} == {srv_pid}
    assert {e["raddr"] for e in accepts} == {CLI}
    # every accepted peer port is one of the client's source ports
    assert sorted(e["rport"] for e in accepts) == sorted(e["sport"] for e in ok)
    assert {e["netns_name"] for e in ok} == {topo.cli}


def test_7_refused(topo, tracer):
    client = Peer(topo.cli, "connect", SRV, 8081, 7)
    try:
        res = client.line()
        assert res["errors"] == {"ECONNREFUSED": 7}
        tracer.wait_for(_connects(tracer, topo.inode(topo.cli), f"{SRV}:8081"), 7)
        _marker(tracer, topo, topo.cli, SRV, 8092)
    finally:
        client.close()
    fails = [e for e in tracer.events if _connects(tracer, topo.inode(topo.cli), f"{SRV}:8081")(e)]
    record_result(f"{tracer.mode}/refused", {"failed": len(fails), "errnos": sorted({e["errno_name"] for e in fails}),
                              "pids": len({e["pid"] for e in fails})})
    assert len(fails) == 7
    assert {e["errno_name"] for e in fails} == {"ECONNREFUSED"}
    assert {e["result"] for e in fails} == {"error"}
    assert {e["pid"] for e in fails} == {res["pid"]}


def test_port_range_exhaustion(topo, tracer):
    ns_exec(topo.cli2, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40002")
    server = Peer(topo.srv, "serve", SRV2, 8082, 0)
    client = None
    try:
        server.line()
        client = Peer(topo.cli2, "connect", SRV2, 8082, 5)
        res = client.line()
        # 3 ports in range; the kernel's connect() port search may use fewer (it walks an even count)
        assert res["ok"] >= 1 and res["errors"] == {"EADDRNOTAVAIL": 5 - res["ok"]}
        tracer.wait_for(_connects(tracer, topo.inode(topo.cli2), f"{SRV2}:8082"), 5)
        # the marker needs a free local port: release the held connections first
        client.close()
        _marker(tracer, topo, topo.cli2, SRV2, 8093)
    finally:
        server.close()
        if client:
            client.close()
    evs = [e for e in tracer.events if _connects(tracer, topo.inode(topo.cli2), f"{SRV2}:8082")(e)]
    ok = [e for e in evs if e["result"] == "ok"]
    bad = [e for e in evs if e["result"] == "error"]
    record_result(f"{tracer.mode}/port_range", {"ok": len(ok), "failed": len(bad), "client_ok": res["ok"],
                                 "errnos": sorted({e["errno_name"] for e in bad})})
    assert len(ok) == res["ok"] and len(bad) == 5 - res["ok"]
    assert {e["errno_name"] for e in bad} == {"EADDRNOTAVAIL"}
    assert {e["pid"] for e in evs} == {res["pid"]}
    assert all(40000 <= e["sport"] <= 40002 for e in ok)


def test_summary_counts_lost_events(topo, tracer):
    summary = tracer.stop()
    assert summary["type"] == "summary"
    assert summary["lost_events"] == 0
    assert summary["connects_ok"] >= 23 + 1
    assert summary["connects_failed"] >= 7 + 1
    assert summary["accepts"] >= 23
    record_result(f"{tracer.mode}/summary", {"lost_events": summary["lost_events"]})
