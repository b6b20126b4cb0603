"""ConntrackMonitor: conntrack stats, table fill and SNAT port allocation in every namespace.

Usage (what ``netdiag conntrack`` and ``netdiag watch`` do every interval)::

    mon = ConntrackMonitor().start()
    while ...:
        mon.poll()                 # cheap; may be called more often than snapshot()
        obj = mon.snapshot()       # one interval: {"netns": [...], "snat": [...], "node_totals": {...}}
    mon.close()

Threads: one reader thread drains the event sockets as events arrive (a 1 s interval of a busy
NAT would otherwise overflow the socket buffer), and one ``NetnsExecutor`` thread enters a
namespace when it appears, to open its event and statistics sockets (plain netlink sockets,
read from any thread afterwards), and for table dumps and ruleset reads (pyroute2 0.9.7 ties its
objects to a thread, so those are made and used there).
"""
from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass, field

from netdiag.errors import NetdiagError
from netdiag.sources.conntrack import natrules
from netdiag.sources.conntrack.ctmsg import from_pyroute2
from netdiag.sources.conntrack.events import DEFAULT_RCVBUF, NetlinkEvents
from netdiag.sources.conntrack.nlstats import CtStatsSocket
from netdiag.sources.conntrack.snat import SnatTable, attribute_failures, utilization
from netdiag.sources.conntrack.stats import deltas, fill, read_conntrack_max, sum_cpu_stats
from netdiag.sources.namespaces import Namespace, NamespaceWatcher, NetnsExecutor

INTERVAL_COUNTERS = ("insert_failed", "drop", "early_drop", "clash_resolve", "chaintoolong",
                     "search_restart", "found", "invalid", "error")


class ConntrackUnavailable(NetdiagError):
    pass


@dataclass
class NsState:
    ns: Namespace
    stats_sock: CtStatsSocket | None = None      # created inside the namespace, read from any thread
    events: object = None
    stats: dict | None = None            # cumulative, last read
    stats_at_snapshot: dict | None = None
    entries: int | None = None
    max: int | None = None
    rules: natrules.NamespaceRules | None = None
    rules_at: float = 0.0
    resync: bool = False
    overruns_reported: int = 0
    events_reported: int = 0
    error: str | None = None
    extra: dict = field(default_factory=dict)


def _dump_table() -> list:
    """The calling thread's namespace's conntrack table, as CtRecords (a pyroute2 socket made
    for this one dump: it runs when a namespace is attached or resynchronised, not per interval)."""
    from pyroute2 import NFCTSocket
    with NFCTSocket() as s:
        return [from_pyroute2(m) for m in s.dump()]


class ConntrackMonitor:
    """Conntrack and SNAT visibility per network namespace.

    ``netns_filter``: None (every namespace), a set of inodes, or a callable(Namespace) -> bool.
    ``event_source``: a factory returning an object with ``open()`` (called inside the
    namespace), ``drain() -> [CtRecord]``, ``fileno()``, ``close()``, ``overruns``, ``events`` and
    ``mode``; default ``NetlinkEvents``. ``mode`` is reported as ``modes["snat"]``.
    """

    def __init__(self, netns_filter=None, *, event_source=None, threaded: bool = True,
                 rules_refresh_s: float = 10.0, discover_every_s: float = 1.0,
                 rcvbuf: int = DEFAULT_RCVBUF, node_max_path: str = "/proc/sys/net/netfilter/nf_conntrack_max"):
        self.netns_filter = netns_filter
        self.event_source = event_source or (lambda: NetlinkEvents(rcvbuf))
        self.threaded = threaded
        self.rules_refresh_s = rules_refresh_s
        self.discover_every_s = discover_every_s
        self.node_max_path = node_max_path
        self.table = SnatTable()
        self.ns: dict[int, NsState] = {}
        self.gone: list[dict] = []           # namespaces removed since the last snapshot
        self.lost_events = 0
        self._lock = threading.RLock()
        self._exec: NetnsExecutor | None = None
        self._watcher = NamespaceWatcher()
        self._epoll = None
        self._fd_ns: dict[int, int] = {}
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_discover = 0.0
        self._last_snapshot: float | None = None
        self._polled = False
        self.modes = {"conntrack": "netlink", "snat": "netlink"}
        self.batch_s = 0.02

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> "ConntrackMonitor":
        self._exec = NetnsExecutor("ct-netns")
        self._epoll = select.epoll()
        try:
            probe = self.event_source()
            self.modes["snat"] = getattr(probe, "mode", "netlink")
            self._discover(force=True)
        except Exception:
            self.close()
            raise
        if not self.ns:
            self.close()
            raise ConntrackUnavailable("no network namespace matched")
        failed = [st.error for st in self.ns.values() if st.error and st.error.startswith("attach:")]
        if len(failed) == len(self.ns):       # ctnetlink answers nowhere (nfnetlink modules absent)
            self.close()
            raise ConntrackUnavailable(f"ctnetlink unavailable in every namespace ({failed[0]})")
        if self.threaded:
            self._reader = threading.Thread(target=self._read_loop, name="ct-events", daemon=True)
            self._reader.start()
        self._last_snapshot = time.time()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        with self._lock:
            for inode in list(self.ns):
                self._detach(inode)
        if self._exec is not None:
            self._exec.close()
            self._exec = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # --- namespaces ---------------------------------------------------------------------------
    def _wanted(self, ns: Namespace) -> bool:
        f = self.netns_filter
        if f is None:
            return True
        if callable(f):
            return bool(f(ns))
        return ns.inode in f

    def _discover(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_discover < self.discover_every_s:
            return
        self._last_discover = now
        added, removed = self._watcher.poll()
        for ns in removed:
            if ns.inode in self.ns:
                with self._lock:
                    self.gone.append({"netns": ns.inode, "name": ns.label})
                    self._detach(ns.inode)
        for ns in added:
            if self._wanted(ns) and ns.inode not in self.ns:
                try:
                    self._attach(ns)
                except Exception as e:   # a namespace can vanish while we attach; report, go on
                    if ns.inode in self.ns:
                        self.ns[ns.inode].error = f"attach: {e}"

    def _attach(self, ns: Namespace) -> None:
        st = NsState(ns)
        self.ns[ns.inode] = st
        st.stats_sock = self._exec.call(ns, CtStatsSocket)
        ev = self.event_source()
        self._exec.call(ns, ev.open)            # subscribe first, then dump: no gap
        st.events = ev
        with self._lock:
            self._seed(st)
            self._read_stats(st)
            st.stats_at_snapshot = st.stats
            fd = ev.fileno()
            if fd >= 0:
                self._fd_ns[fd] = ns.inode
                self._epoll.register(fd, select.EPOLLIN)

    def _detach(self, inode: int) -> None:
        st = self.ns.pop(inode, None)
        if st is None:
            return
        if st.events is not None:
            fd = st.events.fileno()
            if fd >= 0 and self._epoll is not None:
                self._fd_ns.pop(fd, None)
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass
            st.events.close()
        if st.stats_sock is not None:
            st.stats_sock.close()
        self.table.reset_netns(inode)

    def _seed(self, st: NsState) -> None:
        self.table.seed(st.ns.inode, self._exec.call(st.ns, _dump_table))

    # --- events -------------------------------------------------------------------------------
    def _drain_fd(self, fd: int) -> None:
        inode = self._fd_ns.get(fd)
        st = self.ns.get(inode) if inode is not None else None
        if st is None or st.events is None:
            return
        before = st.events.overruns
        ops = st.events.drain()
        if ops:
            self.table.apply_ops(inode, ops)
        if st.events.overruns != before:
            st.resync = True

    def _read_loop(self) -> None:
        # Wake at most every BATCH_S: under churn each wake-up then drains hundreds of events
        # instead of one or two (fewer epoll calls and lock round trips); the socket buffer holds
        # far more than BATCH_S of events.
        while not self._stop.wait(self.batch_s):
            try:
                ready = self._epoll.poll(0.2)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            with self._lock:
                for fd, _ in ready:
                    try:
                        self._drain_fd(fd)
                    except OSError:
                        pass

    def _drain_all(self) -> None:
        with self._lock:
            for fd in list(self._fd_ns):
                self._drain_fd(fd)

    # --- stats --------------------------------------------------------------------------------
    def _read_stats(self, st: NsState) -> None:
        # the namespace's own socket, read from this thread: no setns, no thread round trip
        if st.stats_sock is None:
            return              # its attach failed (the namespace went away meanwhile): error says so
        try:
            per_cpu = st.stats_sock.per_cpu()
            entries, mx = st.stats_sock.count()
        except OSError as e:
            st.error = f"stats: {e}"
            return
        st.stats = sum_cpu_stats(per_cpu)
        if entries is not None:
            st.entries, st.max = entries, mx
        st.error = None

    def poll(self) -> None:
        """Drain events (when not threaded), pick up new/removed namespaces, read stats."""
        if self._exec is None:
            raise ConntrackUnavailable("monitor not started")
        if not self.threaded:
            self._drain_all()
        self._discover()
        for st in list(self.ns.values()):
            if st.resync:
                with self._lock:
                    st.resync = False
                    if self.threaded:
                        self._drain_fd(st.events.fileno())
                    self.table.reset_netns(st.ns.inode)
                    self._seed(st)
            self._read_stats(st)
        self._polled = True

    # --- rules --------------------------------------------------------------------------------
    def _rules(self, st: NsState) -> natrules.NamespaceRules:
        now = time.monotonic()
        if st.rules is None or now - st.rules_at >= self.rules_refresh_s:
            st.rules = natrules.read_namespace_rules(st.ns)
            st.rules_at = now
        return st.rules

    # --- snapshot -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """One interval: counters since the previous snapshot, gauges now."""
        if not self._polled:
            self.poll()
        self._polled = False
        now = time.time()
        interval = now - (self._last_snapshot or now)
        self._last_snapshot = now
        with self._lock:
            rows_state = self.table.take_interval()
        node_max = read_conntrack_max(self.node_max_path)

        by_ns: dict[int, list] = {}
        for key, rs in sorted(rows_state.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3])):
            inode, nat_ip, dst_ip, dst_port, proto = key
            st = self.ns.get(inode)
            rule = None
            if st is not None:
                nr = self._rules(st)
                rule = natrules.match_rule(nr.rules, nat_ip, dst_ip, proto, nr.if_addrs)
            prange = rule.port_range if rule else None
            by_ns.setdefault(inode, []).append({
                "netns": inode, "netns_name": st.ns.label if st else None,
                "nat_ip": nat_ip, "dst": f"{dst_ip}:{dst_port}" if ":" not in dst_ip else f"[{dst_ip}]:{dst_port}",
                "proto": proto, "ports_in_use": rs.in_use, "peak_in_use": rs.peak,
                "port_range": prange, "range_source": rule.range_source if rule else "unknown",
                "utilization": utilization(rs.in_use, prange),
                "peak_utilization": utilization(rs.peak, prange),
                "allocations": rs.allocations, "releases": rs.releases,
                "insert_failed": 0, "drop": 0, "failed_allocations": 0,
                "rule": f"{rule.family} {rule.table} {rule.chain} #{rule.handle}" if rule else None,
            })

        netns_out, snat_out = [], []
        totals = {"entries": 0, "max": node_max, "insert_failed": 0, "drop": 0, "early_drop": 0}
        lost_now = 0
        for inode, st in sorted(self.ns.items()):
            d = deltas(st.stats_at_snapshot, st.stats) if st.stats is not None else {}
            st.stats_at_snapshot = st.stats
            rows = by_ns.get(inode, [])
            row, why = attribute_failures(rows, d.get("insert_failed", 0), d.get("drop", 0))
            unattributed = {"insert_failed": d.get("insert_failed", 0), "drop": d.get("drop", 0)}
            if row is not None:
                row["insert_failed"], row["drop"] = unattributed["insert_failed"], unattributed["drop"]
                row["failed_allocations"] = max(row["insert_failed"], row["drop"])
                unattributed = {"insert_failed": 0, "drop": 0}
            ev = st.events
            overruns = (ev.overruns - st.overruns_reported) if ev else 0
            events = (ev.events - st.events_reported) if ev else 0
            if ev:
                st.overruns_reported, st.events_reported = ev.overruns, ev.events
            lost_now += overruns
            mx = st.max or node_max
            netns_out.append({
                "netns": inode, "name": st.ns.label, "entries": st.entries, "max": mx,
                **fill(st.entries, mx),
                **{k: d.get(k, 0) for k in INTERVAL_COUNTERS},
                "unattributed": unattributed, "attribution": why,
                "events": events, "lost_events": overruns,
                "nat_rules": [r.as_dict() for r in st.rules.rules] if st.rules else [],
                "read_error": st.error or (st.rules.error if st.rules else None),
            })
            snat_out.extend(rows)
            totals["entries"] += st.entries or 0
            for k in ("insert_failed", "drop", "early_drop"):
                totals[k] += d.get(k, 0)
        self.lost_events += lost_now
        gone, self.gone = self.gone, []
        return {"type": "conntrack", "ts": now, "node": os.uname().nodename, "interval_s": round(interval, 3),
                "modes": dict(self.modes), "lost_events": lost_now, "netns": netns_out, "snat": snat_out,
                "netns_gone": gone, "node_totals": totals}
