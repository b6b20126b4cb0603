"""The Kubernetes DNS race on this kernel: a resolver socket sends two queries of one new UDP
flow at the same moment from two CPUs, through a NAT that DNATs port 53 to one of two backends
at random. Both packets reach conntrack before either entry is confirmed, so the second one
clashes at confirm time. Kernels with clash resolution insert or merge it (conntrack counts
`clash_resolve`); older ones drop it (`insert_failed`), which is what conntrack_insert_race
explains. `watch` must show which of the two this kernel does, in the NAT's namespace."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from netdiag.labs.topology import Topology, ns_exec

from .conftest import Peer, Watch, record_result

# host lane only (heavy): the emulated VM lane has no network for installs and no time for it
pytestmark = [pytest.mark.kernel, pytest.mark.heavy]

CLI, NAT_IN, NAT_OUT, SRV_A, SRV_B = "198.18.21.2", "198.18.21.1", "198.19.21.1", "198.19.21.2", "198.19.21.3"
QUERIES = 20000
ROUNDS = 10
GOLDEN_OUT = os.environ.get("ND_DNS_RACE_RECORDS")      # where to write the NAT's records (golden data)


@pytest.fixture(scope="module")
def topo(doctor):
    with Topology() as t:
        t.cli, t.nat, t.srv = t.add_ns("rcli"), t.add_ns("rnat"), t.add_ns("rsrv")
        t.link(t.cli, f"{CLI}/24", t.nat, f"{NAT_IN}/24")
        _, vs = t.link(t.nat, f"{NAT_OUT}/24", t.srv, f"{SRV_A}/24")
        ns_exec(t.srv, "ip", "addr", "add", f"{SRV_B}/24", "dev", vs)
        ns_exec(t.cli, "ip", "route", "add", "default", "via", NAT_IN)
        ns_exec(t.srv, "ip", "route", "add", "default", "via", NAT_OUT)
        ns_exec(t.nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for rule in (["-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "DNAT",
                      "--to-destination", f"{SRV_A}:53"],
                     ["-j", "DNAT", "--to-destination", f"{SRV_B}:53"]):
            ns_exec(t.nat, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-d", NAT_IN,
                    "--dport", "53", *rule)
        yield t


def kernel_counts(ns) -> dict:
    """`conntrack -S` of a namespace, summed over CPUs: the kernel's own figures."""
    out = ns_exec(ns, "conntrack", "-S").stdout
    tot = {"clash_resolve": 0, "insert_failed": 0}
    for k in tot:
        tot[k] = sum(int(v) for v in re.findall(rf"\b{k}=(\d+)", out))
    return tot


def test_parallel_queries_through_dnat(topo, tmp_path):
    nat = topo.inode(topo.nat)
    w = Watch(tmp_path)

    def nat_rows():
        return [n for rec in w.intervals() for n in rec.get("conntrack_netns", []) if n["netns"] == nat]
    try:
        assert w.until(lambda: len(nat_rows()) >= 2, timeout=30), "the NAT's namespace never appeared"
        before = kernel_counts(topo.nat)
        n_before = len(nat_rows())
        # clashes need the two sends to meet on two CPUs: rare on a busy machine, so rounds of
        # QUERIES until the kernel counted some (bounded)
        for _ in range(ROUNDS):
            racer = Peer(topo.cli, "udprace", NAT_IN, 53, QUERIES)
            try:
                assert racer.line()["sent"] == 2 * QUERIES
            finally:
                racer.close()
            now = kernel_counts(topo.nat)
            if now["clash_resolve"] + now["insert_failed"] > before["clash_resolve"] + before["insert_failed"]:
                break
        after = kernel_counts(topo.nat)
        n_done = len(nat_rows())
        w.until(lambda: len(nat_rows()) >= n_done + 3, timeout=30)    # intervals after the last send
    finally:
        w.stop()
    modes = w.intervals()[-1]["modes"]
    assert modes.get("conntrack") in ("netlink", "kprobe"), modes
    rows = nat_rows()[n_before:]
    clashes = sum(n["clash_resolve"] or 0 for n in rows)
    failed = sum(n["insert_failed"] or 0 for n in rows)
    kinds = {v["kind"] for rec in w.intervals() for v in rec["verdicts"]}
    record_result("dns-race", {"clash_resolve": clashes, "insert_failed": failed, "kinds": sorted(kinds)})
    if GOLDEN_OUT:
        keep = []
        for rec in w.intervals():
            r = dict(rec, destinations=[], listeners=[], nat=[],
                     conntrack_netns=[n for n in rec.get("conntrack_netns", []) if n["netns"] == nat])
            keep.append(json.dumps(r, sort_keys=True))
        Path(GOLDEN_OUT).write_text("\n".join(keep) + "\n")
    assert after["clash_resolve"] + after["insert_failed"] > before["clash_resolve"] + before["insert_failed"], \
        f"no two packets of one flow met in conntrack in {ROUNDS} rounds: the race was not reproduced"
    # netdiag's per-interval figures add up to the kernel's own counters, exactly
    assert clashes == after["clash_resolve"] - before["clash_resolve"]
    assert failed == after["insert_failed"] - before["insert_failed"]
    if failed == 0:
        # this kernel resolves every clash: nothing is dropped, and netdiag says nothing is wrong
        assert "conntrack_insert_race" not in kinds
    else:
        assert "conntrack_insert_race" in kinds
