"""Node scale: 60 pod-like namespaces watched at once (netdiag/labs/fleet.py), each with its own
listener and held connections; listeners, `active` and ListenOverflows must be exact in every
one of them, including namespaces created and deleted while `watch` runs."""
from __future__ import annotations

import time

import pytest

from netdiag.labs.fleet import ADDR, Fleet
from netdiag.labs.topology import Topology
from netdiag.sources import inetdiag, namespaces
from tests.kernel.conftest import Watch

# host lane only (heavy): 60 namespaces take too long under emulation
pytestmark = [pytest.mark.kernel, pytest.mark.heavy]

N = 60
PORT = 8080
DST = f"{ADDR}:{PORT}"


def held_for(i: int) -> int:
    return 2 + i % 7                    # a different count per neighbour, so no mix-up passes


def overflows_now(name: str) -> int:
    return namespaces.run_in(f"/run/netns/{name}", inetdiag.netstat).get("ListenOverflows", 0)


def settled_overflows(name: str) -> int:
    """ListenOverflows once it stopped moving (its SYNs were reset and nothing retries)."""
    last = overflows_now(name)
    for _ in range(20):
        time.sleep(0.6)
        now = overflows_now(name)
        if now == last:
            return now
        last = now
    raise AssertionError(f"ListenOverflows of {name} never settled")


def last_record(w: Watch) -> dict:
    recs = w.intervals()
    return recs[-1] if recs else {"listeners": [], "destinations": []}


def listeners_by_ns(rec: dict) -> dict[int, set]:
    out: dict[int, set] = {}
    for ls in rec["listeners"]:
        out.setdefault(ls["netns"], set()).add(ls["listen"])
    return out


def active_by_ns(rec: dict) -> dict[int, int]:
    return {r["netns"]: r["active"] for r in rec["destinations"] if r["direction"] == "out" and r["dst"] == DST}


def mismatches(w: Watch, want: dict[int, int]) -> dict:
    """What the newest record gets wrong: a namespace in ``want`` without its listener or with
    another active count than expected, or a deleted one still listed."""
    rec = last_record(w)
    lst, act = listeners_by_ns(rec), active_by_ns(rec)
    bad = {i: (lst.get(i), act.get(i), n) for i, n in want.items() if DST not in lst.get(i, ()) or act.get(i) != n}
    # an inode is reused once its namespace is freed (by a namespace made later here or elsewhere):
    # a deleted member is still listed if its inode shows the fleet's listener and is no member now
    bad.update({i: ("deleted but listed", lst[i]) for i in gone - want.keys() if DST in lst.get(i, ())})
    return bad


def exact(w: Watch, want: dict[int, int]) -> bool:
    return not mismatches(w, want)


gone: set[int] = set()


def overflow_sum(w: Watch, inode: int) -> int:
    return sum(ls["overflows"] for rec in w.intervals() for ls in rec["listeners"] if ls["netns"] == inode)


def test_sixty_namespaces_exact_while_they_come_and_go(doctor, tmp_path):
    gone.clear()
    with Topology() as topo:
        fleet = Fleet(topo)
        try:
            members = [fleet.add(f"p{i}", held=held_for(i)) for i in range(N)]
            want = {m.inode: held_for(i) for i, m in enumerate(members)}
            before = {m.name: overflows_now(m.name) for m in members}
            w = Watch(tmp_path)
            try:
                assert w.until(lambda: exact(w, want), timeout=30), mismatches(w, want)

                # backlog-1 listeners overflow in a third of them, by a different amount each
                burst = {m.name: 3 + i % 4 for i, m in enumerate(members[::3])}
                for m in members[::3]:
                    fleet.overflow(m, burst[m.name])

                # namespaces come and go while watched
                for m in members[-5:]:
                    fleet.remove(m)
                    gone.add(m.inode)
                    del want[m.inode]
                born = [fleet.add(f"q{i}", held=held_for(i + 3)) for i in range(5)]
                want.update({m.inode: held_for(i + 3) for i, m in enumerate(born)})
                assert w.until(lambda: exact(w, want), timeout=30), mismatches(w, want)
                t_born = time.monotonic()
                born_before = {m.name: overflows_now(m.name) for m in born}
                for m in born[:2]:
                    fleet.overflow(m, 4, port=PORT + 2)

                # overflow sockets closed with RSTs: the counters stop; watch reports them in full
                for m in members[::3] + born[:2]:
                    for s in m.extra:
                        s.close()
                    m.extra.clear()
                expect = {m.inode: settled_overflows(m.name) - before[m.name] for m in members[::3]
                          if m.inode not in gone}
                expect.update({m.inode: settled_overflows(m.name) - born_before[m.name] for m in born[:2]})
                n_recs = len(w.intervals())
                assert w.until(lambda: len(w.intervals()) >= n_recs + 2, timeout=10)
                assert all(v > 0 for v in expect.values()), expect
                got = {i: overflow_sum(w, i) for i in expect}
                assert got == expect
                # and none elsewhere
                quiet = [i for i in want if i not in expect]
                assert all(overflow_sum(w, i) == 0 for i in quiet)
                assert mismatches(w, want) == {}
                assert time.monotonic() - t_born < 60
            finally:
                w.stop()
            assert w.proc.returncode == 0, w.proc.stderr.read()[-2000:]
        finally:
            fleet.close()
