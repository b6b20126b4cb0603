"""Per-process rows (analysis/processes.py) and socket owners (sources/procowners.py)."""
from __future__ import annotations

import os

from netdiag.analysis import processes as P
from netdiag.analysis.decode import PROC_KEY, PROC_VAL, PROC_VAL_FIELDS
from netdiag.sources.procowners import SocketOwners, scan


def label(ns):
    return {1: "nd-a"}.get(ns)


def totals(**kw):
    v = dict.fromkeys(P.COUNTERS, 0)
    v["comm"] = kw.pop("comm", "")
    v.update(kw)
    return v


def test_percpu_values_add_up_and_the_name_comes_from_the_cpu_that_has_it():
    raw = [PROC_VAL.pack(3, 2, 1, 0, 1, 0, b""), PROC_VAL.pack(4, 4, 0, 2, 0, 5, b"nginx\0\0\0")]
    vals = [dict(zip(PROC_VAL_FIELDS, PROC_VAL.unpack(r))) for r in raw]
    for v in vals:
        v["comm"] = v["comm"].split(b"\0", 1)[0].decode()
    got = P.sum_percpu(vals)
    assert got == {"connects": 7, "established": 6, "failed": 1, "resets_in": 2, "resets_out": 1, "accepts": 5,
                   "comm": "nginx"}
    assert PROC_KEY.unpack(PROC_KEY.pack(42, 7)) == (42, 7)


def test_rows_are_deltas_of_processes_that_did_something():
    prev = {(10, 1): totals(connects=5, established=5, comm="a"), (11, 1): totals(connects=2, comm="b")}
    cur = {(10, 1): totals(connects=8, established=7, failed=1, comm="a"), (11, 1): totals(connects=2, comm="b"),
           (12, 2): totals(accepts=4, comm="srv")}
    rows = {r["pid"]: r for r in P.build_rows(cur, prev, label, accepts_measured=True)}
    assert set(rows) == {10, 12}                       # 11 did nothing this interval
    assert rows[10]["connects"] == 3 and rows[10]["established"] == 2 and rows[10]["failed"] == 1
    assert rows[10]["netns_name"] == "nd-a" and rows[10]["comm"] == "a"
    assert rows[12]["accepts"] == 4 and rows[12]["inbound"] == 4 and rows[12]["inbound_via"] == "accept"


def test_a_process_evicted_and_back_counts_from_its_new_row():
    prev = {(10, 1): totals(connects=50)}
    cur = {(10, 1): totals(connects=3)}
    (row,) = P.build_rows(cur, prev, label, accepts_measured=True)
    assert row["connects"] == 3


def test_without_an_accept_hook_accepts_are_null_and_listeners_give_inbound_to_their_first_holder():
    cur = {(21, 1): totals(connects=40, established=40, comm="nginx")}
    rows = P.build_rows(cur, {}, label, accepts_measured=False)
    assert rows[0]["accepts"] is None and rows[0]["inbound"] == 0 and rows[0]["inbound_via"] == "listener"
    listeners = [{"listen": "0.0.0.0:80", "netns": 1, "established": 4},
                 {"listen": "0.0.0.0:81", "netns": 1, "established": 0},
                 {"listen": "0.0.0.0:82", "netns": 1, "established": 3}]
    owners = {(1, "0.0.0.0:80"): [(20, "nginx"), (21, "nginx")], (1, "0.0.0.0:81"): [(20, "nginx")]}
    P.attribute_listeners(rows, listeners, owners, label)
    by = {r["pid"]: r for r in rows}
    assert by[20]["inbound"] == 4 and by[20]["listens"] == ["0.0.0.0:80"] and by[20]["connects"] == 0
    assert by[21]["inbound"] == 0
    groups = P.rollup_groups(rows)
    g = groups[(1, "nginx")]
    assert g["connects"] == 40 and g["inbound"] == 4 and g["pids"] == {20, 21}


def test_fanout_destinations_of_a_namespace():
    recs = [{"destinations": [{"netns": 1, "direction": "out", "dst": "10.0.0.1:80", "connects": 3},
                              {"netns": 1, "direction": "in", "dst": "10.0.0.9:80", "connects": 0},
                              {"netns": 2, "direction": "out", "dst": "10.0.0.2:80", "connects": 9}]},
            {"destinations": [{"netns": 1, "direction": "out", "dst": "10.0.0.3:80", "connects": 5},
                              {"netns": 1, "direction": "out", "dst": "10.0.0.1:80", "connects": 3}]}]
    assert P.fanout_dsts(recs, 1) == [{"dst": "10.0.0.1:80", "connects": 6}, {"dst": "10.0.0.3:80", "connects": 5}]


def _fake_proc(tmp_path, procs):
    for pid, (comm, links) in procs.items():
        d = tmp_path / str(pid) / "fd"
        d.mkdir(parents=True)
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
        for i, target in enumerate(links):
            os.symlink(target, d / str(i))
    (tmp_path / "self").mkdir()
    return str(tmp_path)


def test_socket_owners_from_fd_links(tmp_path):
    proc = _fake_proc(tmp_path, {30: ("nginx", ["/dev/null", "socket:[777]"]), 31: ("nginx", ["socket:[777]"]),
                                 40: ("sshd", ["socket:[888]", "pipe:[5]"])})
    assert scan({777, 888, 999}, proc) == {777: [(30, "nginx"), (31, "nginx")], 888: [(40, "sshd")]}
    assert scan(set(), proc) == {}


def test_socket_owners_cache_scans_a_miss_again_only_after_retry(tmp_path):
    proc = _fake_proc(tmp_path, {30: ("a", ["socket:[1]"])})
    own = SocketOwners(proc=proc, retry_s=3600)
    assert own.owners({1, 2}) == {1: [(30, "a")]}
    d = tmp_path / "31" / "fd"
    d.mkdir(parents=True)
    (tmp_path / "31" / "comm").write_text("b\n")
    os.symlink("socket:[2]", d / "0")
    assert own.owners({1, 2}) == {1: [(30, "a")]}         # 2 missed a moment ago: not scanned again yet
    own.retry_s = 0
    assert own.owners({1, 2}) == {1: [(30, "a")], 2: [(31, "b")]}
