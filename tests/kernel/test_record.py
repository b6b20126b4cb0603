"""`netdiag record` and `report` on the real kernel: labs recorded and reported with the live run's
verdicts, field for field; SIGKILL and Ctrl-C; two nodes; the flight recorder; a full disk."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netdiag.labs.topology import Topology
from netdiag.offline import format as fm

from .conftest import READY_TIMEOUT, Peer, record_result
from .test_labs import LAB_TIMEOUT, assert_gone, lab_tag

# host lane only (heavy): the emulated VM lane has no network for installs and no time for it
pytestmark = [pytest.mark.kernel, pytest.mark.heavy]
NETDIAG = [sys.executable, "-m", "netdiag"]
SRV_A, CLI_A, SRV_B, CLI_B = "198.18.6.1", "198.18.6.2", "198.18.7.1", "198.18.7.2"


@pytest.fixture(scope="module")
def topo(doctor):
    with Topology() as t:
        t.srv_a, t.cli_a = t.add_ns("rsa"), t.add_ns("rca")
        t.srv_b, t.cli_b = t.add_ns("rsb"), t.add_ns("rcb")
        t.link(t.srv_a, f"{SRV_A}/24", t.cli_a, f"{CLI_A}/24")
        t.link(t.srv_b, f"{SRV_B}/24", t.cli_b, f"{CLI_B}/24")
        yield t


def report(*args) -> dict:
    p = subprocess.run([*NETDIAG, "report", *map(str, args), "--json"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


class Recording:
    """`netdiag record` in the background, attached (its ready file exists)."""

    def __init__(self, tmp: Path, out: Path, *args):
        self.out = out
        ready = tmp / f"{out.stem}.ready"
        self.proc = subprocess.Popen([*NETDIAG, "record", "--out", str(out), "--ready-file", str(ready), *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"record exited {self.proc.returncode}: {self.proc.stderr.read()}")
            assert time.monotonic() < deadline, "record did not attach in time"
            time.sleep(0.05)
        self.started = time.monotonic()

    def stop(self, sig=signal.SIGINT):
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


def connections(topo, srv_ns, cli_ns, srv, n):
    server = Peer(srv_ns, "serve", srv, 8080, n)
    assert server.line()["ready"]
    client = Peer(cli_ns, "connect", srv, 8080, n)
    assert client.line()["ok"] == n
    assert server.line() == {"accepted": n}
    return server, client


# -- the labs: live verdicts == replayed verdicts ---------------------------------------------------
LABS = [("snat-cap", "--ports", 13), ("remote-cap", "--ports", 13), ("listen-overflow", "--backlog", 4),
        ("idle-timeout", "--timeout", 5)]


@pytest.mark.parametrize("lab", LABS, ids=[lab[0] for lab in LABS])
def test_report_on_a_recorded_lab_gives_the_live_verdicts(doctor, tmp_path, lab):
    out = tmp_path / "lab" / f"{lab[0]}.ndrec"
    p = subprocess.run([*NETDIAG, "lab", *map(str, lab), "--json", "--record", str(out)],
                       capture_output=True, text=True, timeout=LAB_TIMEOUT)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.splitlines()[-1])
    assert_gone(lab_tag(p.stderr))
    live = res["verdicts"]
    assert [v["kind"] for v in live] == [res["expected"]], {k: res[k] for k in ("intervals", "duration_s", "load")}
    assert (out.stat().st_mode & 0o777) == 0o600 and (out.parent.stat().st_mode & 0o777) == 0o700
    rep = report(out)
    replayed = [{k: v for k, v in x.items() if k != "node"} for x in rep["verdicts"]]
    assert replayed == live                                 # kinds, places, numbers, evidence, first/last
    assert all(rep["replay_matches_recording"].values()) and rep["replay_matches_recording"]
    rec = fm.read(out)
    assert rec.truncated == 0 and len(fm.records(rec)) == res["intervals"]
    assert fm.json_rows(rec, "summary")[0]["verdicts"] == live
    record_result(f"record/{lab[0]}", {"verdicts": [v["kind"] for v in replayed], "intervals": res["intervals"]})


# -- durability -------------------------------------------------------------------------------------
def test_sigkill_loses_at_most_the_flush_window(topo, tmp_path):
    out = tmp_path / "k.ndrec"
    rec = Recording(tmp_path, out, "--netns", topo.cli_a, "--interval", "0.25", "--flush", "1")
    server = client = None
    try:
        server, client = connections(topo, topo.srv_a, topo.cli_a, SRV_A, 23)
        time.sleep(3.0)                       # the connects are flushed at least twice over
        killed_at = time.time()
        rec.proc.send_signal(signal.SIGKILL)
        rec.proc.communicate(timeout=30)
    finally:
        rec.kill()
        for p in (client, server):
            if p:
                p.close()
    r = fm.read(out)
    recs = fm.records(r)
    assert recs
    # everything up to the last flush: the file reaches to within one flush (1 s) of the kill, plus the
    # interval in progress when the flush was due (intervals stretch on a busy machine: the longest seen)
    longest = max(x["interval_s"] for x in recs)
    assert recs[-1]["ts"] >= killed_at - 1.0 - 2 * max(longest, 0.25) - 0.5, (recs[-1]["ts"], killed_at, longest)
    assert all(b["ts"] > a["ts"] for a, b in zip(recs, recs[1:]))          # no interval missing in between
    assert sum(x["interval_s"] for x in recs[1:]) == pytest.approx(recs[-1]["ts"] - recs[0]["ts"], abs=0.1)
    assert [x["ts"] for x in recs] == sorted(x["ts"] for x in recs)
    dst = f"{SRV_A}:8080"
    assert sum(d["connects"] for x in recs for d in x["destinations"] if d["dst"] == dst) == 23
    assert fm.json_rows(r, "summary") == []                 # killed: no closing summary
    rep = report(out)
    assert rep["tables"]["nodes"][0]["intervals"] == len(recs)


def test_ctrl_c_closes_the_file_valid_and_complete(topo, tmp_path):
    out = tmp_path / "c.ndrec"
    rec = Recording(tmp_path, out, "--netns", topo.cli_a, "--interval", "0.25", "--flush", "30")
    server = client = None
    try:
        server, client = connections(topo, topo.srv_a, topo.cli_a, SRV_A, 23)
        time.sleep(1.0)
        rc, err = rec.stop(signal.SIGINT)
    finally:
        rec.kill()
        for p in (client, server):
            if p:
                p.close()
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if "recorded" in ln]
    assert len(lines) == 1, err
    n = int(lines[0].split("recorded ")[1].split()[0])
    r = fm.read(out)
    assert r.truncated == 0
    recs = fm.records(r)
    assert len(recs) == n and n > 0                       # a 30 s flush window, all of it written at exit
    summary = fm.json_rows(r, "summary")
    assert len(summary) == 1 and summary[0]["intervals"] == n
    dst = f"{SRV_A}:8080"
    assert sum(d["connects"] for x in recs for d in x["destinations"] if d["dst"] == dst) == 23
    ctx = r.meta["context"]
    assert ctx["sysctls"]["net.ipv4.ip_local_port_range"] and ctx["kernel"]["release"]


def test_two_nodes_per_node_table_exact(topo, tmp_path):
    a = Recording(tmp_path, tmp_path / "a.ndrec", "--netns", topo.cli_a, "--node", "node-a", "--interval", "0.5")
    b = Recording(tmp_path, tmp_path / "b.ndrec", "--netns", topo.cli_b, "--node", "node-b", "--interval", "0.5")
    peers = []
    try:
        peers += connections(topo, topo.srv_a, topo.cli_a, SRV_A, 23)
        peers += connections(topo, topo.srv_b, topo.cli_b, SRV_B, 7)
        time.sleep(1.5)
        for r in (a, b):
            rc, err = r.stop()
            assert rc == 0, err
    finally:
        for r in (a, b):
            r.kill()
        for p in peers:
            p.close()
    rep = report(tmp_path / "a.ndrec", tmp_path / "b.ndrec")
    nodes = {n["node"]: n for n in rep["tables"]["nodes"]}
    assert set(nodes) == {"node-a", "node-b"}
    assert nodes["node-a"]["connects"] == 23 and nodes["node-a"]["established"] == 23
    assert nodes["node-b"]["connects"] == 7 and nodes["node-b"]["established"] == 7
    assert nodes["node-a"]["peak_active"] == 23 and nodes["node-b"]["peak_active"] == 7
    assert rep["tables"]["node_totals"][0]["connects"] == 30
    dests = {(d["node"], d["dst"]): d for d in rep["tables"]["destinations"] if d["direction"] == "out"}
    assert dests[("node-a", f"{SRV_A}:8080")]["connects"] == 23
    assert dests[("node-b", f"{SRV_B}:8080")]["connects"] == 7


# -- the flight recorder --------------------------------------------------------------------------------
def test_flight_recorder_file_holds_the_minutes_before_the_trigger(doctor, tmp_path):
    out = tmp_path / "ring.ndrec"
    rec = Recording(tmp_path, out, "--interval", "0.5", "--flush", "1", "--ring", "4",
                    "--trigger", "verdict:snat_port_exhaustion")
    try:
        time.sleep(2.5)                       # calm intervals in the ring before the lab starts
        p = subprocess.run([*NETDIAG, "lab", "snat-cap", "--ports", "11", "--json"], capture_output=True,
                           text=True, timeout=LAB_TIMEOUT)
        assert p.returncode == 0, p.stderr[-2000:]
        time.sleep(1.0)
        rc, err = rec.stop()
    finally:
        rec.kill()
    assert rc == 0, err
    r = fm.read(out)
    recs = fm.records(r)
    assert r.meta["flight_recorder"] == {"ring_s": 4.0, "trigger": ["snat_port_exhaustion"]}
    fired = [x["ts"] for x in recs if any(v["kind"] == "snat_port_exhaustion" for v in x.get("verdicts", []))]
    assert fired, "the trigger never fired"
    before = [x for x in recs if x["ts"] < fired[0]]
    assert before, "no interval from before the trigger"
    # the ring's 4 s before the trigger are in the file (its first interval began at least 4 s before),
    # and at most one flush (1 s) and one interval more
    longest = max(x["interval_s"] for x in before)
    assert before[0]["ts"] - before[0]["interval_s"] <= fired[0] - 4.0 + 1e-6
    assert before[0]["ts"] > fired[0] - 4.0 - 1.0 - longest
    assert [x["ts"] for x in recs] == sorted(x["ts"] for x in recs)
    rep = report(out)
    assert "snat_port_exhaustion" in {v["kind"] for v in rep["verdicts"]}
    cap = [v for v in rep["verdicts"] if v["kind"] == "snat_port_exhaustion"][0]["cap"]
    assert cap == 11


# -- a full disk --------------------------------------------------------------------------------------
def test_a_full_disk_stops_cleanly_and_keeps_what_was_written(topo, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], check=True)
    try:
        out = mnt / "d" / "full.ndrec"
        rec = Recording(tmp_path, out, "--netns", topo.cli_a, "--interval", "0.1", "--flush", "0.1")
        try:
            rc = rec.proc.wait(timeout=60)
            err = rec.proc.stderr.read()
        finally:
            rec.kill()
        assert rc == 73, err
        errors = [ln for ln in err.splitlines() if "error" in ln]
        assert len(errors) == 1 and "disk full" in errors[0], err
        r = fm.read(out)
        assert r.truncated == 0
        recs = fm.records(r)
        assert recs and out.stat().st_size <= 96 * 1024
        assert f"recorded {len(recs)} interval(s)" in err
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_an_existing_output_is_refused_before_anything_is_lost(doctor, tmp_path):
    out = tmp_path / "exists.ndrec"
    out.write_bytes(b"an earlier incident")
    p = subprocess.run([*NETDIAG, "record", "--out", str(out), "--duration", "1"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 73 and "exists" in p.stderr
    assert out.read_bytes() == b"an earlier incident"


# -- snapshot ---------------------------------------------------------------------------------------
def test_snapshot_holds_sockets_listeners_and_counters_per_namespace(topo, tmp_path):
    listener = Peer(topo.srv_b, "listen", SRV_B, 9090, 6)          # never accepts: the queue fills
    client = None
    try:
        assert listener.line()["ready"]
        client = Peer(topo.cli_b, "connect", SRV_B, 9090, 3)
        assert client.line()["ok"] == 3
        out = tmp_path / "snap" / "node.ndsnap"
        p = subprocess.run([*NETDIAG, "snapshot", "--out", str(out), "--node", "snap-node"], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    finally:
        for x in (client, listener):
            if x:
                x.close()
    assert (out.stat().st_mode & 0o777) == 0o600
    rep = report(out)
    snap = rep["snapshots"][0]
    assert snap["node"] == "snap-node"
    t = snap["tables"]
    lst = [r for r in t["listeners"] if r["netns_name"] == topo.srv_b and r["listen"] == f"{SRV_B}:9090"]
    assert lst == [{"netns": lst[0]["netns"], "netns_name": topo.srv_b, "listen": f"{SRV_B}:9090", "queue": 3,
                    "backlog": 6}]
    est = {(r["netns_name"], r["state"]): r["count"] for r in t["sockets"]}
    assert est[(topo.cli_b, "ESTABLISHED")] == 3 and est[(topo.srv_b, "ESTABLISHED")] == 3
    mib = {(r["netns_name"], r["counter"]): r["value"] for r in t["netstat"]}
    assert mib[(topo.cli_b, "ActiveOpens")] >= 3 and mib[(topo.srv_b, "PassiveOpens")] >= 3
    assert any(r["netns_name"] == topo.srv_b and r["max"] for r in t["conntrack"]) or \
        all(r["max"] is None for r in t["conntrack"])
    assert {r["name"] for r in t["doctor"]} >= {"privileges", "BTF"}
    sysctls = {(r["netns_name"], r["name"]) for r in t["sysctls"]}
    assert (topo.cli_b, "net.ipv4.ip_local_port_range") in sysctls
    rc = subprocess.run([*NETDIAG, "snapshot", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert rc.returncode == 73 and "exists" in rc.stderr


def test_watch_record_writes_what_watch_prints(topo, tmp_path):
    from .conftest import Watch
    out = tmp_path / "w.ndrec"
    w = Watch(tmp_path, "--netns", topo.cli_a, "--record", str(out))
    peers = []
    try:
        peers += connections(topo, topo.srv_a, topo.cli_a, SRV_A, 5)
        w.until(lambda: sum(d["connects"] for r in w.intervals() for d in r["destinations"]) >= 5)
    finally:
        printed = w.stop()
        for p in peers:
            p.close()
    intervals = [r for r in printed if r["type"] == "interval"]
    recorded = fm.records(fm.read(out))
    assert recorded == intervals and len(intervals) > 0          # key for key, interval for interval
    assert fm.json_rows(fm.read(out), "summary") == [r for r in printed if r["type"] == "summary"]
