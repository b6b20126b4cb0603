"""Floods while `netdiag watch --json --metrics … --record …` runs: SYNs to a closed port (raw
and the kernel's own), connects to a listener whose accept queue overflows, RSTs, and DNS answers
(--per-domain). Each case asserts that the tracer keeps its intervals on time, its memory stays
bounded, its counts are exact (or what it lost is counted and shown), its recording reads back,
its metrics endpoint answers during the flood, and its output names the flood.

Sender: scripts/flood/flood.py, inside namespaces of this module, 198.18.90.0/24 only; bounded
durations (FLOOD_S, 30 s for the SYN flood, 10 s for the others; ND_FLOOD_S scales them). The
achieved rates go to results/floods.json (and ND_RESULTS_DIR) and docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from netdiag.labs.topology import Topology
from tests.kernel.conftest import READY_TIMEOUT, ROOT, record_result

pytestmark = [pytest.mark.kernel, pytest.mark.heavy]
NETDIAG = [sys.executable, "-m", "netdiag"]
FLOOD = ROOT / "scripts" / "flood" / "flood.py"
CLI, SRV = "198.18.90.1", "198.18.90.2"
SCALE = float(os.environ.get("ND_FLOOD_S", "1"))
LONG_S, SHORT_S = 30.0 * SCALE, 10.0 * SCALE
INTERVAL = 1.0
# watch ~47 MB; --record adds ~80 MB (pyarrow, and each 10 s flush encoded in memory); --per-domain
# under the DNS flood levels off near 105 MB without --record, near 300 MB with it
RSS_BOUND_MB = 400
RESULTS = ROOT / "results" / "floods.json"


@pytest.fixture(scope="module")
def pair(doctor):
    with Topology() as t:
        t.cli, t.srv = t.add_ns("flc"), t.add_ns("fls")
        t.link(t.cli, f"{CLI}/24", t.srv, f"{SRV}/24")
        yield t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Run:
    """watch with --json, --metrics, --record; a reader, an RSS sampler and a scraper beside it."""

    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        self.rec = tmp / "flood.ndrec"
        ready = tmp / "watch.ready"
        self.proc = subprocess.Popen([*NETDIAG, "watch", "--json", "--interval", str(INTERVAL),
                                      "--metrics", f"127.0.0.1:{self.port}", "--record", str(self.rec),
                                      "--ready-file", str(ready), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.peak_rss = 0.0
        self.scrapes = {"ok": 0, "failed": 0, "slowest_s": 0.0}
        self.stop_ev = threading.Event()
        self.scraping = threading.Event()
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited {self.proc.returncode}: {self.proc.stderr.read()}")
            assert time.monotonic() < deadline, "watch did not attach in time"
            time.sleep(0.05)
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._read, self._rss, self._scrape)]
        for th in self.threads:
            th.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def _rss(self):
        while not self.stop_ev.is_set():
            self.peak_rss = max(self.peak_rss, rss_mb(self.proc.pid))
            self.stop_ev.wait(0.2)

    def _scrape(self):
        while not self.stop_ev.is_set():
            if self.scraping.is_set():
                t0 = time.monotonic()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                        ok = r.status == 200 and b"netdiag_build_info" in r.read()
                except OSError:
                    ok = False
                self.scrapes["ok" if ok else "failed"] += 1
                self.scrapes["slowest_s"] = max(self.scrapes["slowest_s"], round(time.monotonic() - t0, 3))
            self.stop_ev.wait(0.5)

    def intervals(self) -> list[dict]:
        return [r for r in self.lines if r["type"] == "interval"]

    def stop(self) -> tuple[dict, str]:
        self.proc.send_signal(2)
        rc = self.proc.wait(timeout=60)
        self.stop_ev.set()
        for th in self.threads:
            th.join(timeout=10)
        err = self.proc.stderr.read()
        assert rc == 0, err
        summary = [r for r in self.lines if r["type"] == "summary"]
        assert summary, err
        return summary[-1], err


# The senders (and the DNS responder) run at nice 10: on a node a flood comes from other machines,
# here it is made on the same two cores netdiag runs on; niced, it still takes every cycle netdiag
# leaves, but cannot take netdiag's own.
NICE = ["nice", "-n", "10"]


def flood(ns: str, *args) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *NICE, sys.executable, str(FLOOD), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    return json.loads(out.splitlines()[-1])


def report(path: Path) -> dict:
    p = subprocess.run([*NETDIAG, "report", str(path), "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def save(case: str, values: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[case] = values
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True))
    record_result(f"flood_{case}", values)


def timing(intervals: list[dict]) -> dict:
    """How late the intervals were: each one's length, and each one's end against the schedule.
    The first interval is left out: it runs from the baseline read at attach, so it also holds the
    time the sinks took to open (the recording's header, the metrics server)."""
    intervals = intervals[1:]
    lens = [r["interval_s"] for r in intervals]
    t0 = intervals[0]["ts"] - intervals[0]["interval_s"]
    drift = [abs(r["ts"] - t0 - (i + 1) * INTERVAL) for i, r in enumerate(intervals)]
    return {"intervals": len(lens), "min_s": min(lens), "max_s": max(lens), "max_drift_s": round(max(drift), 3),
            "end_drift_s": round(drift[-1], 3), "within_10pct": sum(abs(x - INTERVAL) <= 0.1 * INTERVAL for x in lens),
            "late": sum(x > 1.1 * INTERVAL for x in lens),
            "lengths": lens}


def common_checks(run: Run, summary: dict, duration: float, on_time: bool = True) -> dict:
    """Responsive, bounded, recorded, scraped; returns the figures for the results."""
    ivs = run.intervals()
    assert len(ivs) >= duration / INTERVAL - 1, f"{len(ivs)} intervals over {duration} s"
    t = timing(ivs)
    if on_time:
        # on this shared 2-core machine another job can take the CPU for a moment: at most one
        # interval in ten more than 10 % late (the next one is as much shorter: the schedule holds),
        # none longer than two, and the last one ends on time
        assert t["late"] <= max(1, len(t["lengths"]) // 10) and t["max_s"] <= 2 * INTERVAL, str(t["lengths"])
        assert t["end_drift_s"] <= 0.1 * INTERVAL, t
    assert run.peak_rss < RSS_BOUND_MB, f"peak RSS {run.peak_rss:.0f} MB"
    assert run.scrapes["failed"] == 0 and run.scrapes["ok"] >= duration / 0.5 * 0.5, run.scrapes
    rep = report(run.rec)
    assert rep["inputs"][0]["intervals"] == len(ivs)
    return {**t, "peak_rss_mb": round(run.peak_rss, 1), "scrapes": run.scrapes,
            "lost_events": summary["lost_events"], "recorded_intervals": rep["inputs"][0]["intervals"],
            "report_verdicts": sorted({v["kind"] for v in rep["verdicts"]})}


def rows(ivs: list[dict], netns: int, dst: str, direction: str) -> list[dict]:
    return [d for r in ivs for d in r["destinations"] if d["netns"] == netns and d["dst"] == dst
            and d["direction"] == direction]


def total(rs: list[dict], field: str) -> int:
    return sum(r[field] for r in rs)


def kinds(ivs: list[dict]) -> set[str]:
    return {v["kind"] for r in ivs for v in r["verdicts"]}


def test_syn_flood_to_a_closed_port(pair, tmp_path):
    """Raw SYNs (IP_HDRINCL) and the kernel's own SYNs (non-blocking connects) to a closed port
    for LONG_S: every SYN is answered by a RST netdiag counts as sent by the server's port, every
    connect fails ECONNREFUSED, counted exactly."""
    run = Run(tmp_path)
    run.scraping.set()
    raw = flood(pair.cli, "syn", CLI, SRV, 9, LONG_S)
    conn = flood(pair.cli, "connect", SRV, 9, LONG_S, "--inflight", "64")
    r_raw, r_conn = result(raw), result(conn)
    time.sleep(2.5 * INTERVAL)
    run.scraping.clear()
    summary, _ = run.stop()
    ivs = run.intervals()
    srv_in = rows(ivs, pair.inode(pair.srv), f"{SRV}:9", "in")
    cli_out = rows(ivs, pair.inode(pair.cli), f"{SRV}:9", "out")
    refused = r_conn["failed"].get("ECONNREFUSED", 0)
    assert summary["lost_events"] == 0
    assert total(cli_out, "connects") == r_conn["attempts"]
    assert sum(d["failed_by_errno"].get("ECONNREFUSED", 0) for d in cli_out) == refused
    # each SYN, raw or the kernel's, gets a RST from the closed port
    assert total(srv_in, "resets_out") == r_raw["sent"] + r_conn["attempts"]
    assert "connection_churn" in kinds(ivs)
    figures = common_checks(run, summary, LONG_S)
    save("syn_closed_port", {"seconds": LONG_S, "raw_syn_per_s": r_raw["rate"], "raw_syns": r_raw["sent"],
                             "connects_per_s": r_conn["rate"], "connects": r_conn["attempts"],
                             "refused_counted": refused, "resets_counted": total(srv_in, "resets_out"),
                             **figures})


def test_syn_flood_to_an_overflowing_listener(pair, tmp_path):
    """Connects to a listener with backlog 4 that never accepts: the accept queue stays full, the
    kernel drops SYNs; netdiag shows the overflows and says listen_overflow."""
    srv = subprocess.Popen(["ip", "netns", "exec", pair.srv, sys.executable, "-c",
                            "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                            f"s.bind(('{SRV}',8080))\ns.listen(4)\nprint('ready',flush=True)\nsys.stdin.read()"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        run = Run(tmp_path)
        run.scraping.set()
        r = result(flood(pair.cli, "connect", SRV, 8080, SHORT_S, "--inflight", "256", "--timeout-ms", "200"))
        time.sleep(2.5 * INTERVAL)
        run.scraping.clear()
        summary, _ = run.stop()
    finally:
        srv.stdin.close()
        srv.wait(timeout=10)
    ivs = run.intervals()
    lis = [ls for rec in ivs for ls in rec["listeners"] if ls["listen"] == f"{SRV}:8080"]
    overflows = sum(ls["overflows"] for ls in lis)
    cli_out = rows(ivs, pair.inode(pair.cli), f"{SRV}:8080", "out")
    assert summary["lost_events"] == 0
    assert total(cli_out, "connects") == r["attempts"]
    assert overflows > 0 and "listen_overflow" in kinds(ivs)
    v = [v for rec in ivs for v in rec["verdicts"] if v["kind"] == "listen_overflow"][-1]
    assert v["backlog"] == 4
    figures = common_checks(run, summary, SHORT_S)
    save("syn_overflowing_listener", {"seconds": SHORT_S, "connects_per_s": r["rate"], "connects": r["attempts"],
                                      "established": r["established"], "overflows_counted": overflows,
                                      **figures})


def test_rst_flood(pair, tmp_path):
    """Raw RSTs to a closed port: the kernel drops each (no socket); netdiag counts every one in
    the server namespace's drops by reason."""
    run = Run(tmp_path)
    run.scraping.set()
    r = result(flood(pair.cli, "rst", CLI, SRV, 9, SHORT_S))
    time.sleep(2.5 * INTERVAL)
    run.scraping.clear()
    summary, _ = run.stop()
    ivs = run.intervals()
    no_socket = sum((rec["node_totals"]["drops_by_reason"] or {}).get("NO_SOCKET", 0) for rec in ivs)
    assert summary["lost_events"] == 0
    # every RST is dropped for want of a socket; other traffic on the node may add a few
    assert r["sent"] <= no_socket <= r["sent"] * 1.01 + 100, (no_socket, r)
    figures = common_checks(run, summary, SHORT_S)
    save("rst", {"seconds": SHORT_S, "rst_per_s": r["rate"], "rsts": r["sent"], "no_socket_drops_counted": no_socket,
                 **figures})


def test_dns_answer_flood_per_domain(pair, tmp_path):
    """A resolver that answers every query eight times, a client that asks for 4,096 names as
    fast as it can: netdiag --per-domain names the node's DNS rate, and what its capture could
    not take is counted (dns.lost), not silently missing."""
    srv = subprocess.Popen(["ip", "netns", "exec", pair.srv, *NICE, sys.executable, str(FLOOD), "dns-serve", "53"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(srv.stdout.readline()) == {"ready": True}
        run = Run(tmp_path, "--per-domain")
        run.scraping.set()
        r = result(flood(pair.cli, "dns", SRV, SHORT_S))
        time.sleep(2.5 * INTERVAL)
        run.scraping.clear()
        summary, _ = run.stop()
    finally:
        srv.stdin.close()
        srv.wait(timeout=10)
    ivs = run.intervals()
    dns = [rec["dns"] for rec in ivs]
    seen = sum(d["packets"] for d in dns)
    lost = sum(d["lost"] for d in dns)
    assert "dns_rate_limit_risk" in kinds(ivs)
    assert seen > 0
    # what the client sent and read, against what the capture saw plus what it counted as lost
    assert seen + lost >= 0.9 * (r["queries"] + r["answers"]), (seen, lost, r)
    assert max(d.get("domains_folded", 0) for d in dns) > 0     # 4,096 names: the record keeps 1,000
    figures = common_checks(run, summary, SHORT_S)
    save("dns_answers", {"seconds": SHORT_S, "answers_per_s": r["rate"], "queries": r["queries"],
                         "answers": r["answers"], "dns_packets_seen": seen, "dns_lost_counted": lost, **figures})
