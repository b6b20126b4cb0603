"""`netdiag lab` end to end on the real kernel: each scenario, run with non-default parameters,
yields exactly its verdict with the right number; nothing is left behind, also when the lab is
killed mid-run. Scenarios run one after another (each compiles its BPF program once)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .conftest import record_result

pytestmark = pytest.mark.kernel
CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


LAB_TIMEOUT = float(os.environ.get("ND_LAB_TIMEOUT", "150"))   # the emulated VM lane raises it


def run_lab(*args, timeout=LAB_TIMEOUT):
    p = subprocess.run([sys.executable, "-m", "netdiag", "lab", *map(str, args), "--json"],
                       capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(rec) for rec in p.stdout.splitlines() if rec.strip()]
    assert lines and lines[-1]["type"] == "lab", f"exit {p.returncode}: {p.stderr[-2000:]}"
    res = lines[-1]
    res["_tag"] = lab_tag(p.stderr)
    res["_records"] = [rec for rec in lines if rec["type"] == "interval"]
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-2000:]}"
    assert res["error"] is None and not res["interrupted"]
    assert_gone(res["_tag"])
    return res


def lab_tag(stderr: str) -> str:
    m = re.search(r"nd-(l[0-9a-f]+)-\*", stderr)
    assert m, stderr
    return m.group(1)


def assert_gone(tag: str) -> None:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"nd-{tag}-" not in ns, ns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"nd{tag}" not in links
    pids = subprocess.run(["pgrep", "-f", f"nd-{tag}-"], capture_output=True, text=True).stdout
    assert not pids.strip(), f"processes left: {pids}"


def only(res) -> dict:
    kinds = [v["kind"] for v in res["verdicts"]]
    assert len(kinds) == 1, res["verdicts"]
    assert kinds[0] == res["expected"]
    return res["verdicts"][0]


@pytest.fixture(scope="module", autouse=True)
def host_untouched(doctor):
    before = open(CT_MAX).read()
    yield
    assert open(CT_MAX).read() == before


def test_snat_cap_13():
    res = run_lab("snat-cap", "--ports", 13)
    v = only(res)
    record_result("lab/snat-cap", {"kind": v["kind"], "cap": v["cap"],
                                   "modes": res["_records"][-1]["modes"] if res["_records"] else {}})
    assert v["cap"] == 13 and v["evidence"]["port_range"] == 13
    assert v["evidence"]["nat_insert_failed"] > 0 and "nd-" in v["where"]


def test_remote_cap_13_from_client_side_alone():
    res = run_lab("remote-cap", "--ports", 13)
    v = only(res)
    record_result("lab/remote-cap", {"kind": v["kind"], "cap": v["cap"],
                                     "kinds": sorted({x["kind"] for x in res["verdicts"]}),
                                     "modes": res["_records"][-1]["modes"] if res["_records"] else {}})
    assert v["kind"] == "remote_connection_cap" and v["cap"] == 13
    assert "snat_port_exhaustion" not in {x["kind"] for x in res["verdicts"]}
    assert all(not r.get("nat") for r in res["_records"])        # netdiag saw no NAT
    assert v["where"].startswith("beyond this node")


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_port_exhaustion_6():
    res = run_lab("port-exhaustion", "--ports", 6)
    v = only(res)
    record_result("lab/port-exhaustion", {"kind": v["kind"], "cap": v["cap"],
                                          "EADDRNOTAVAIL": v["evidence"]["EADDRNOTAVAIL"]})
    assert v["cap"] == 6 == res["load"]["client"]["established"]
    assert v["evidence"]["EADDRNOTAVAIL"] == res["load"]["client"]["failed_by_errno"]["EADDRNOTAVAIL"] == 5


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_listen_overflow_backlog_4():
    v = only(run_lab("listen-overflow", "--backlog", 4))
    record_result("lab/listen-overflow", {"kind": v["kind"], "backlog": v["backlog"],
                                          "overflows": v["evidence"]["overflows"]})
    assert v["backlog"] == 4 and v["evidence"]["overflows"] > 0


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_idle_timeout_5():
    res = run_lab("idle-timeout", "--timeout", 5)
    v = only(res)
    assert abs(v["timeout_s"] - 5) <= 1, v
    assert res["load"]["client"]["reset"] >= 2 and res["load"]["client"]["alive"] >= 2


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_microburst():
    v = only(run_lab("microburst", "--burst", 150, "--window-ms", 10, "--backlog", 8))
    assert v["peak_per_ms"] > 0 and v["evidence"]["peak_connects"] >= 20
    assert v["evidence"]["drops_in_bursts"] > 0 and v["evidence"]["backlog"] == 8


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_churn_one_request_per_connection():
    v = only(run_lab("churn", "--requests-per-conn", 1, "--seconds", 4))
    assert v["connects_per_active"] >= 10


def _nginx_gone(pids) -> None:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                assert f.read().strip() != "nginx", f"nginx {pid} left running"
        except FileNotFoundError:
            pass


def test_fanout_through_nginx_ratio_is_the_requests_per_connection():
    k, n = 7, 6
    res = run_lab("fanout", "--requests-per-conn", k, "--clients", n)
    load = res["load"]["client"]
    assert load["established"] == n and load["requests"] == n * k and load["requests_failed"] == 0
    fan = [v for v in res["verdicts"] if v["kind"] == "connection_fanout"]
    assert len(fan) == 1, res["verdicts"]
    v = fan[0]
    # N client connections x K requests -> N x K backend connects, N accepted: the ratio is K, exactly
    assert v["evidence"]["connects"] == n * k and v["evidence"]["inbound"] == n
    assert v["ratio"] == load["requests"] / load["established"] == k
    assert v["process"] == "nginx" and v["evidence"]["inbound_via"] == "accept"
    assert {d["dst"] for d in v["evidence"]["destinations"]} == {"198.18.41.2:8080", "198.18.41.2:8081"}
    assert sum(d["connects"] for d in v["evidence"]["destinations"]) == n * k
    assert "keepalive" in v["advice"] and "nd-" in v["where"]
    procs = [p for rec in res["_records"] for p in rec.get("processes", [])]
    assert sum(p["inbound"] for p in procs if p["comm"] == "nginx") == n
    assert sum(p["connects"] for p in procs if p["comm"] == "nginx") == n * k
    _nginx_gone(v["pids"])
    record_result("lab/fanout", {"kind": v["kind"], "ratio": v["ratio"], "connects": v["evidence"]["connects"],
                                 "inbound": v["evidence"]["inbound"]})


def test_fanout_with_upstream_keepalive_is_silent():
    k, n = 7, 6
    res = run_lab("fanout", "--requests-per-conn", k, "--clients", n, "--upstream-keepalive", 16)
    load = res["load"]["client"]
    assert load["established"] == n and load["requests"] == n * k and load["requests_failed"] == 0
    assert [v for v in res["verdicts"] if v["kind"] == "connection_fanout"] == []
    procs = [p for rec in res["_records"] for p in rec.get("processes", [])]
    nginx = [p for p in procs if p["comm"] == "nginx"]
    assert sum(p["inbound"] for p in nginx) == n          # the same clients came in …
    assert 1 <= sum(p["connects"] for p in nginx) <= n     # … and the upstream connections were reused
    _nginx_gone({p["pid"] for p in nginx})


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_healthy_has_no_verdict():
    res = run_lab("healthy", "--clients", 15)
    assert res["verdicts"] == []
    assert res["load"]["client"]["established"] == 15


def _start(tmp_args):
    return subprocess.Popen([sys.executable, "-m", "netdiag", "lab", *map(str, tmp_args), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_running(p) -> set:
    """Until the first interval record (probes attached, load running); returns {the lab's tag},
    read from what the lab says it builds (other labs may run on the machine meanwhile)."""
    deadline = time.monotonic() + 120
    tag = None
    while tag is None and time.monotonic() < deadline:
        err = p.stderr.readline()
        assert err, "the lab exited before naming its namespaces"
        m = re.search(r"nd-(l[0-9a-f]+)-\*", err)
        tag = m.group(1) if m else None
    assert tag, "the lab never named its namespaces"
    line = p.stdout.readline()
    while line and '"type":"interval"' not in line and time.monotonic() < deadline:
        line = p.stdout.readline()
    assert line, p.stderr.read()
    assert f"nd-{tag}-" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {tag}


@pytest.mark.heavy
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_lab_removes_everything(sig):
    p = _start(["snat-cap", "--ports", 11])
    try:
        tags = _wait_running(p)
        assert len(tags) == 1
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130
    assert json.loads(out.splitlines()[-1])["interrupted"] is True
    assert_gone(tags.pop())


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_killed_lab_is_cleaned_by_lab_cleanup():
    p = _start(["churn", "--seconds", 30])
    try:
        tags = _wait_running(p)
        assert len(tags) == 1
        p.kill()                                  # no chance to clean up
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    tag = tags.pop()
    assert f"nd-{tag}-" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    c = subprocess.run([sys.executable, "-m", "netdiag", "lab", "cleanup"], capture_output=True, text=True)
    assert c.returncode == 0 and f"nd-{tag}-cli" in c.stdout
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", f"nd-{tag}-"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert_gone(tag)


CT_FULL_MAX = 300


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_conntrack_full_300_and_sysctl_restored():
    """The table of a node-wide maximum of 300 fills through the lab's NAT: the verdict's numbers
    are that maximum, the load generator's 50 extra connections are the ones that failed, and
    the node's nf_conntrack_max is back to what it was."""
    before = open(CT_MAX).read()
    res = run_lab("conntrack-full", "--max", CT_FULL_MAX, "--allow-host-sysctl")
    v = only(res)
    record_result("lab/conntrack-full", {"kind": v["kind"], "cap": v["cap"], "evidence": v["evidence"]})
    assert v["cap"] == CT_FULL_MAX
    assert v["evidence"]["entries"] == CT_FULL_MAX and v["evidence"]["max"] == CT_FULL_MAX
    assert v["evidence"]["fill"] == 1.0
    client = res["load"]["client"]
    assert client["established"] == CT_FULL_MAX
    assert client["failed"] == client["attempted"] - CT_FULL_MAX > 0
    assert set(client["failed_by_errno"]) == {"ETIMEDOUT"}       # SYNs dropped, never refused
    assert v["evidence"]["drop"] >= client["failed"]             # each failed connect's SYN dropped
    assert open(CT_MAX).read() == before


@pytest.mark.heavy   # host lane only: no kprobe signal of its own
def test_killed_conntrack_full_lab_sysctl_restored_by_cleanup():
    before = open(CT_MAX).read()
    p = _start(["conntrack-full", "--max", CT_FULL_MAX, "--allow-host-sysctl"])
    try:
        _wait_running(p)
        assert int(open(CT_MAX).read()) == CT_FULL_MAX
        p.kill()                                  # no chance to restore it itself
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert int(open(CT_MAX).read()) == CT_FULL_MAX
    c = subprocess.run([sys.executable, "-m", "netdiag", "lab", "cleanup"], capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    assert f"restored {CT_MAX}={before.strip()}" in c.stdout
    assert open(CT_MAX).read() == before
