"""`netdiag watch --json` on the real kernel: exact per-destination numbers across namespaces."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from netdiag.labs.topology import Topology

from .conftest import Peer, Watch, record_result

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schema" / "watch-interval.schema.json").read_text())
SRV, CLI = "198.18.4.1", "198.18.4.2"


@pytest.fixture(scope="module")
def topo(doctor):
    with Topology() as t:
        t.srv = t.add_ns("wsrv")
        t.cli = t.add_ns("wcli")
        t.link(t.srv, f"{SRV}/24", t.cli, f"{CLI}/24")
        yield t


# auto: BTF-typed tracepoints where the kernel allows them (raw otherwise); raw and classic: the
# fallbacks, run too. auto/spill: a socket table of two slots, so nearly every outbound socket
# takes the LRU hash path the table falls back to when a slot is taken, and a destination table
# of one slot per CPU, so all but one row per CPU live in the LRU hash (and a row can be in the
# table on one CPU and in the hash on another). auto/cached: the programs of a second start with
# the same options, loaded from the program image the first one left (netdiag/kernel/progcache.py).
FLAVOURS = [f for f in os.environ.get("ND_WATCH_FLAVOURS", "auto,raw,classic,auto/spill,auto/cached").split(",")
            if f]


def btf_tracepoints_work(doctor) -> bool:
    return any(c["name"] == "BTF tracepoints" and c["status"] == "yes" for c in doctor["checks"])


@pytest.fixture(scope="module", params=FLAVOURS)
def watch(request, doctor, topo, tmp_path_factory):
    flavour, _, variant = request.param.partition("/")
    extra = ["--socket-slots", "2", "--dst-slots", "1"] if variant == "spill" else []
    if variant == "cached":       # a first start leaves the image (unless an earlier one did)
        Watch(tmp_path_factory.mktemp("watch"), "--tracepoints", flavour).stop()
    w = Watch(tmp_path_factory.mktemp("watch"), "--tracepoints", flavour, *extra)
    if variant == "cached":
        # plans with fentry programs are compiled on every start (no image of them is written);
        # kprobes are made again from the image through the kprobe PMU
        want = "compiled" if "fentry" in (w.info["modes"]["connect"], w.info["modes"].get("accept")) else "cached"
        assert w.info["program"] == want, w.info
    w.prefix = "watch" if flavour == "auto" else f"watch+{flavour}"
    if variant:
        w.prefix += f"+{variant}"
    got = w.info["modes"]["tracepoints"]
    if flavour != "auto":
        assert got == flavour
    elif w.info["modes"]["connect"] != "kprobe" and btf_tracepoints_work(doctor):
        assert got == "btf"
    try:
        yield w
    finally:
        w.stop()


def settle(watch, netns, dst, direction, field, expected):
    return watch.until(lambda: watch.total(netns, dst, direction, field) >= expected)


def test_23_connects_active_then_closed(topo, watch):
    cli, srv, dst = topo.inode(topo.cli), topo.inode(topo.srv), f"{SRV}:8080"
    server = Peer(topo.srv, "serve", SRV, 8080, 23)
    client = None
    try:
        server.line()
        client = Peer(topo.cli, "connect", SRV, 8080, 23)
        assert client.line()["ok"] == 23
        assert server.line() == {"accepted": 23}
        held = watch.until(lambda: any(r["active"] == 23 for r in watch.rows(cli, dst, "out")))
        assert held, "active never reached 23 while the connections were held"
        settle(watch, srv, dst, "in", "established", 23)
        if watch.info["modes"].get("accept"):
            # handshakes complete before accept() returns: an interval can hold all 23 of them
            # and only some of the accepts
            settle(watch, srv, dst, "in", "accepts", 23)
        client.close()
        client = None
        watch.until(lambda: any(r["active"] == 0 for r in watch.rows(cli, dst, "out")))
    finally:
        server.close()
        if client:
            client.close()
    rows = watch.rows(cli, dst, "out")
    record_result(f"{watch.prefix}/23", {"connects": watch.total(cli, dst, "out", "connects"),
                               "established": watch.total(cli, dst, "out", "established"),
                               "accepts": watch.total(srv, dst, "in", "established"),
                               "modes": watch.info["modes"]})
    assert watch.total(cli, dst, "out", "connects") == 23
    assert watch.total(cli, dst, "out", "established") == 23
    assert watch.total(cli, dst, "out", "failed") == 0
    assert watch.total(srv, dst, "in", "established") == 23      # handshakes completed on the listener
    lst = [li for rec in watch.intervals() for li in rec["listeners"] if li["listen"] == dst and li["netns"] == srv]
    assert sum(li["established"] for li in lst) == 23
    if watch.info["modes"].get("accept"):                          # accept() hooked (kprobe / fentry)
        assert watch.total(srv, dst, "in", "accepts") == 23
        assert sum(li["accepts"] for li in lst) == 23
    assert max(r["active"] for r in rows) == 23
    # after close the row reports active 0 once (then leaves the table while idle)
    assert rows[-1]["active"] == 0, "active never returned to 0 after close"


def rst_reasons_traced() -> bool:
    fmt = Path("/sys/kernel/tracing/events/tcp/tcp_send_reset/format")
    return "reason" in fmt.read_text()


def out_rsts(ns: str) -> int:
    """The namespace's Tcp OutRsts counter (every RST it sent, with or without a socket)."""
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True,
                          text=True, check=True).stdout
    head, vals = [ln.split() for ln in text.splitlines() if ln.startswith("Tcp:")][:2]
    return int(vals[head.index("OutRsts")])


def test_7_refused(topo, watch):
    cli, srv, dst = topo.inode(topo.cli), topo.inode(topo.srv), f"{SRV}:8081"
    rsts_before = out_rsts(topo.srv)
    client = Peer(topo.cli, "connect", SRV, 8081, 7)
    try:
        assert client.line()["errors"] == {"ECONNREFUSED": 7}
        settle(watch, cli, dst, "out", "failed", 7)
        settle(watch, cli, dst, "out", "resets_in", 7)
        if rst_reasons_traced():
            settle(watch, srv, dst, "in", "resets_out", 7)
    finally:
        client.close()
    rows = watch.rows(cli, dst, "out")
    errnos = {}
    for r in rows:
        for k, v in r["failed_by_errno"].items():
            errnos[k] = errnos.get(k, 0) + v
    record_result(f"{watch.prefix}/refused", {"failed": watch.total(cli, dst, "out", "failed"), "errnos": errnos,
                                    "resets_in": watch.total(cli, dst, "out", "resets_in")})
    assert watch.total(cli, dst, "out", "connects") == 7
    assert watch.total(cli, dst, "out", "failed") == 7
    assert errnos == {"ECONNREFUSED": 7}
    assert watch.total(cli, dst, "out", "resets_in") == 7
    if not rst_reasons_traced():
        # before 6.10 tcp:tcp_send_reset does not fire for a RST sent with no socket: the record
        # says the reset reasons are unmeasured and why, and the counter it names has all 7
        for rec in watch.intervals():
            assert "no socket" in rec["unmeasured"]["resets_out_by_reason"], rec["unmeasured"]
            assert "OutRsts" in rec["unmeasured"]["resets_out_by_reason"]
        assert out_rsts(topo.srv) - rsts_before == 7
        return
    srv_rows = watch.rows(srv, dst, "in")
    reasons = {}
    for r in srv_rows:
        for k, v in r["resets_out_by_reason"].items():
            reasons[k] = reasons.get(k, 0) + v
    assert watch.total(srv, dst, "in", "resets_out") == 7
    assert reasons == {"NO_SOCKET": 7}


def test_5_linger0_resets(topo, watch):
    cli, srv, dst = topo.inode(topo.cli), topo.inode(topo.srv), f"{SRV}:8082"
    server = Peer(topo.srv, "serve", SRV, 8082, 5)
    client = None
    try:
        server.line()
        client = Peer(topo.cli, "linger0", SRV, 8082, 5)
        assert client.line()["reset"] == 5
        settle(watch, cli, dst, "out", "resets_out", 5)
        settle(watch, srv, dst, "in", "resets_in", 5)
    finally:
        server.close()
        if client:
            client.close()
    record_result(f"{watch.prefix}/linger0", {"resets_out": watch.total(cli, dst, "out", "resets_out"),
                                    "resets_in": watch.total(srv, dst, "in", "resets_in")})
    assert watch.total(cli, dst, "out", "resets_out") == 5
    assert watch.total(srv, dst, "in", "resets_in") == 5


def test_listen_overflow_and_syn_retrans(topo, watch):
    cli, srv, dst = topo.inode(topo.cli), topo.inode(topo.srv), f"{SRV}:8083"
    listener = Peer(topo.srv, "listen", SRV, 8083, 1)
    client = None
    try:
        listener.line()
        client = Peer(topo.cli, "burst", SRV, 8083, 20)
        client.line()        # after up to 4 s: SYNs were retransmitted at 1 s and 3 s
        settle(watch, cli, dst, "out", "syn_retrans", 1)
        watch.until(lambda: any(li["overflows"] > 0 for rec in watch.intervals() for li in rec["listeners"]
                                if li["listen"] == dst and li["netns"] == srv))
    finally:
        listener.close()
        if client:
            client.close()
    lst = [li for rec in watch.intervals() for li in rec["listeners"] if li["listen"] == dst and li["netns"] == srv]
    record_result(f"{watch.prefix}/overflow", {"overflows": sum(li["overflows"] for li in lst),
                                     "syn_retrans": watch.total(cli, dst, "out", "syn_retrans")})
    assert lst and max(li["backlog"] for li in lst) == 1
    assert sum(li["overflows"] for li in lst) > 0
    assert watch.total(cli, dst, "out", "syn_retrans") > 0


def test_records_validate_against_schema(topo, watch):
    jsonschema = pytest.importorskip("jsonschema")
    recs = watch.intervals()
    assert len(recs) >= 3
    check = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)    # made once: checking the schema
    jsonschema.validators.validator_for(SCHEMA).check_schema(SCHEMA)  # on every record is slow
    for rec in recs:
        check.validate(rec)
    assert all(set(rec["modes"]) >= {"connect", "accept", "conntrack", "snat"} for rec in recs)
    assert all(rec["lost_events"] == 0 for rec in recs)


@pytest.mark.heavy
def test_50000_destinations_stay_bounded(topo, tmp_path):
    """50,000 distinct destinations through a 4,096-entry map: memory bounded, evictions counted.
    The per-CPU destination table in front of the map (64 slots here) holds some rows that never
    reach the map."""
    table_rows = 64 * (os.cpu_count() or 1)
    w = Watch(tmp_path, "--max-dsts", "4096", "--dst-slots", "64", "--netns", topo.cli)
    try:
        sweep = Peer(topo.cli, "sweep", SRV, 10000, 50000)
        res = sweep.line()
        assert res["refused"] == 50000
        w.until(lambda: sum(rec["evictions"] for rec in w.intervals()) >= 50000 - 4096 - table_rows, timeout=60)
        with open(f"/proc/{w.proc.pid}/status") as f:
            hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        sweep.close()
    finally:
        recs = w.stop()
    ivs = [r for r in recs if r["type"] == "interval"]
    assert max(r["map_entries"] for r in ivs) <= 4096
    assert ivs[-1]["evictions_total"] >= 50000 - 4096 - table_rows
    assert sum(r["evictions"] for r in ivs) == ivs[-1]["evictions_total"]
    connects = sum(d["connects"] for r in ivs for d in r["destinations"] if d["direction"] == "out")
    assert connects <= 50000
    assert hwm_kb < 150 * 1024, f"watch peak RSS {hwm_kb} kB"


def test_preexisting_connections_seed_active(topo, tmp_path):
    """11 connections opened before watch starts count in `active` from the first interval, and
    closing them brings it back to 0 (the probes never saw them open)."""
    cli, dst = topo.inode(topo.cli), f"{SRV}:8084"
    server = Peer(topo.srv, "serve", SRV, 8084, 11)
    client = w = None
    try:
        server.line()
        client = Peer(topo.cli, "connect", SRV, 8084, 11)
        assert client.line()["ok"] == 11
        w = Watch(tmp_path, "--netns", topo.cli)
        assert w.until(lambda: any(r["active"] == 11 for r in w.rows(cli, dst, "out")))
        client.close()
        client = None
        assert w.until(lambda: any(r["active"] == 0 for r in w.rows(cli, dst, "out")))
    finally:
        server.close()
        if client:
            client.close()
        recs = w.stop() if w else []
    rows = [r for rec in recs if rec["type"] == "interval" for r in rec["destinations"]
            if r["netns"] == cli and r["dst"] == dst]
    assert max(r["active"] for r in rows) == 11
    assert sum(r["connects"] for r in rows) == 0          # opened before start: no connects counted
    assert rows[-1]["active"] == 0


def test_unmeasured_fields_are_null_never_zero(topo, watch):
    """What this kernel's tracepoints cannot tell is null in every record, with why, and only
    that: the drop reason (skb:kfree_skb before 5.17) and the reset reason (tcp:tcp_send_reset
    before 6.10), checked against the kernel's own format files."""
    def has_field(event, field):
        return f" {field};" in Path(f"/sys/kernel/tracing/events/{event}/format").read_text()
    want = set()
    if not has_field("skb/kfree_skb", "reason"):
        want.add("drops_by_reason")
    if not has_field("tcp/tcp_send_reset", "reason"):
        want.add("resets_out_by_reason")
    recs = watch.intervals()
    assert recs
    for rec in recs:
        assert set(rec["unmeasured"]) == want, rec["unmeasured"]
        drops = rec["node_totals"]["drops_by_reason"]
        assert (drops is None) == ("drops_by_reason" in want)
        if drops is not None:
            assert sum(drops.values()) == rec["node_totals"]["drops"]
        for row in rec["destinations"]:
            assert (row["resets_out_by_reason"] is None) == ("resets_out_by_reason" in want)
    record_result(f"{watch.prefix}/unmeasured", {"fields": sorted(want)})
