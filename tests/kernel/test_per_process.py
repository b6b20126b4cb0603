"""`netdiag watch --json --per-process` on the real kernel: two client processes in one
namespace with different numbers of connects (and one refused connect each), a server process
accepting them in another; every process row exact, with the accepts given to the accepting
process (--accepts: the accept hook runs in its context) or to the process holding the
listener (listener mode)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netdiag.labs.topology import Topology

from .conftest import Watch, record_result

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schema" / "watch-interval.schema.json").read_text())
SRV, CLI = "198.18.9.1", "198.18.9.2"
PORT, CLOSED = 8090, 8091
COMM = Path(sys.executable).name[:15]      # the kernel's comm: the name the program was run by

SERVER = f"""
import os, socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("{SRV}", {PORT})); ls.listen(64)
print(os.getpid(), flush=True)
n = int(sys.stdin.readline())
for _ in range(n):
    c, _ = ls.accept(); c.close()
print("done", flush=True)
sys.stdin.readline()
"""

CLIENT = f"""
import os, socket, sys
n = int(sys.argv[1])
print(os.getpid(), flush=True)
sys.stdin.readline()
for _ in range(n):
    s = socket.create_connection(("{SRV}", {PORT}), timeout=5); s.close()
try:
    socket.create_connection(("{SRV}", {CLOSED}), timeout=5)
except ConnectionRefusedError:
    pass
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def topo(doctor):
    with Topology() as t:
        t.srv = t.add_ns("psrv")
        t.cli = t.add_ns("pcli")
        t.link(t.srv, f"{SRV}/24", t.cli, f"{CLI}/24")
        yield t


def _spawn(ns, code, *args):
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _rows(w, pid):
    return [p for rec in w.intervals() for p in rec.get("processes", []) if p["pid"] == pid]


def _sum(rows, field):
    return sum(r[field] or 0 for r in rows)


@pytest.mark.parametrize("accepts", [False, True], ids=["listener", "accept"])
def test_two_processes_exact_rows(topo, tmp_path, accepts):
    w = Watch(tmp_path, "--per-process", *(["--accepts"] if accepts else []))
    procs = []
    try:
        n1, n2 = 3, 7
        server = _spawn(topo.srv, SERVER)
        procs.append(server)
        srv_pid = int(server.stdout.readline())
        server.stdin.write(f"{n1 + n2}\n")
        server.stdin.flush()
        c1, c2 = _spawn(topo.cli, CLIENT, n1), _spawn(topo.cli, CLIENT, n2)
        procs += [c1, c2]
        pids = [int(c1.stdout.readline()), int(c2.stdout.readline())]
        for c in (c1, c2):
            c.stdin.write("go\n")
            c.stdin.flush()
        for c in (c1, c2):
            assert c.stdout.readline().strip() == "done"
        assert server.stdout.readline().strip() == "done"
        cli, srv = topo.inode(topo.cli), topo.inode(topo.srv)
        want_inbound = n1 + n2
        w.until(lambda: all(_sum(_rows(w, p), "connects") == n + 1 for p, n in zip(pids, (n1, n2)))
                and _sum(_rows(w, srv_pid), "inbound") >= want_inbound, timeout=30)
        # one more interval: nothing more may arrive
        seen = len(w.intervals())
        w.until(lambda: len(w.intervals()) >= seen + 2, timeout=10)
        server.stdin.write("bye\n")
        server.stdin.flush()
    finally:
        records = w.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    intervals = [r for r in records if r["type"] == "interval"]
    # accepts are the accepting process's wherever an accept hook runs: with --accepts, or on
    # kernels with kprobes/fentry (inet_csk_accept) without it
    via = "accept" if "accept" in w.info["modes"] else "listener"
    assert via == "accept" or not accepts
    jsonschema = pytest.importorskip("jsonschema")
    for rec in intervals:
        jsonschema.validate(rec, SCHEMA)
        assert rec["modes"]["process_inbound"] == via
    got = {}
    for pid, n in zip(pids, (n1, n2)):
        rows = _rows(w, pid)
        assert rows and all(r["netns"] == cli and r["comm"] == COMM for r in rows), rows
        got[pid] = {f: _sum(rows, f) for f in ("connects", "established", "failed", "resets_in", "resets_out")}
        assert got[pid] == {"connects": n + 1, "established": n, "failed": 1, "resets_in": 1, "resets_out": 0}
        assert _sum(rows, "inbound") == 0
    srows = _rows(w, srv_pid)
    assert srows and all(r["netns"] == srv for r in srows)
    assert _sum(srows, "connects") == 0
    assert _sum(srows, "inbound") == n1 + n2
    if via == "accept":
        assert _sum(srows, "accepts") == n1 + n2 and all(r["inbound_via"] == "accept" for r in srows)
        assert all(r["comm"] == COMM for r in srows)
    else:
        assert all(r["accepts"] is None and r["inbound_via"] == "listener" for r in srows)
        assert any(f"{SRV}:{PORT}" in r.get("listens", []) for r in srows)
    assert sum(r["process_evictions"] for r in intervals) == 0
    record_result(f"per_process_{'accept' if accepts else 'listener'}", {
        "clients": {str(n): got[p] for p, n in zip(pids, (n1, n2))}, "server_inbound": _sum(srows, "inbound"),
        "inbound_via": via, "modes": w.info["modes"]})


FORKS = f"""
import os, socket, sys
n = int(sys.argv[1])
ls = socket.socket(); ls.bind(("{CLI}", 0)); ls.listen(256); port = ls.getsockname()[1]
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        s = socket.create_connection(("{CLI}", port), timeout=5); s.close()
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print(n, flush=True)
"""


def test_a_full_process_map_counts_its_evictions(topo):
    """More processes than the map holds (--per-process's bound, here 64): the map stays at its
    bound and every process it had to drop is counted in process_evictions."""
    from netdiag.pipeline.collector import Watcher
    bound, n = 64, 160
    w = Watcher(netns=topo.inode(topo.cli), conntrack=False, per_process=True, max_procs=bound)
    w.start()
    try:
        w.sample()
        p = _spawn(topo.cli, FORKS, n)
        out, _ = p.communicate(timeout=60)
        assert out.strip() == str(n)
        rec = w.sample()
    finally:
        w.close()
    assert rec["process_map_max"] == bound and rec["process_map_entries"] <= bound
    # n forked clients and the process that forked them (its accepts are not hooked here)
    assert rec["process_evictions"] >= n - bound
    assert rec["process_evictions"] + rec["process_map_entries"] >= n
    seen = [r for r in rec["processes"] if r["connects"]]
    assert len(seen) <= bound and all(r["connects"] == 1 and r["established"] == 1 for r in seen)
