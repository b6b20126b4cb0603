"""The collector behind `netdiag watch`: loads the aggregating probes, seeds the `active` gauges
from inet_diag, and turns each interval's kernel maps into one record of the interval contract (docs/contracts.md)
(verdicts empty: enrichment and diagnosis are the pipeline's, netdiag/pipeline/run.py)."""
from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

from netdiag.analysis import aggregate as agg
from netdiag.analysis import processes as procs
from netdiag.analysis.decode import (
    CODE_KEY,
    CODE_SLOT,
    DROP_KEY,
    DST_KEY,
    DST_SLOT,
    DST_SLOT_HELD,
    DST_VAL,
    DST_VAL_FIELDS,
    PROC_DST_KEY,
    PROC_DST_VAL,
    PROC_KEY,
    PROC_VAL,
    PROC_VAL_FIELDS,
    SOCK_KEY,
    U64,
    format_addr,
)
from netdiag.analysis.keys import endpoint
from netdiag.errors import FeatureMissing
from netdiag.kernel import loader, tracefs
from netdiag.kernel.engine import DST_SLOTS, MAX_PROCS, MAX_SOCKS, SOCKET_SLOTS, flavour_of, signal_gaps
from netdiag.sources import inetdiag, namespaces
from netdiag.sources import netns as nsmod
from netdiag.sources.nicstats import NicStats
from netdiag.sources.taps import NamespaceTaps

WATCH_SIGNALS = ("connect", "accept", "resets", "retrans", "drops", "snat")   # snat: kprobes only
MAPS = ("nd_dsts", "nd_dst_table", "nd_codes", "nd_code_table", "nd_out_seeded", "nd_seed_window", "nd_seed_ctl", "nd_drops", "nd_lat_hist",
        "nd_stats", "nd_conn_spill")
OPTIONAL_MAPS = ("nd_snat", "nd_procs", "nd_proc_dsts")   # the snat signal's (kprobe path); --per-process's;
                                                          # --per-domain's
AF_INET6 = 10
STAT_DST_NEW, STAT_LOST = 6, 4      # bpf/nd_events.h
STAT_PROC_NEW, STAT_PROC_DST_NEW = 9, 10


def _errno_name(code: int) -> str:
    import errno
    return errno.errorcode.get(code, f"E{code}")


def _enum_namer(category: str, event: str, field: str):
    try:
        table = tracefs.enum_table(category, event, field)
    except FeatureMissing:
        table = {}
    return lambda code: table.get(code, str(code))


class Watcher:
    def __init__(self, mode: str = "auto", netns: int | None = None, port: int | None = None,
                 dst: str | None = None, max_dsts: int = 16384, syscall_tracepoints: bool = False,
                 conntrack: bool = True, raw_tracepoints: bool | None = None,
                 btf_tracepoints: bool | None = None, socket_slots: int = SOCKET_SLOTS,
                 dst_slots: int = DST_SLOTS, per_process: bool = False, max_procs: int = MAX_PROCS,
                 proc_dsts: bool = False, max_socks: int = MAX_SOCKS):
        # Syscall tracepoints put every syscall of every task on the slow path: off by default.
        # Without them, EADDRNOTAVAIL is inferred from the state tracepoint, and accept() calls
        # are counted only where inet_csk_accept can be hooked (kprobe/fentry).
        self.engine_kwargs = dict(signals=list(WATCH_SIGNALS), mode=mode, netns=netns, stream=False,
                                  aggregate=True, max_dsts=max_dsts, syscall_tracepoints=syscall_tracepoints,
                                  raw_tracepoints=raw_tracepoints, btf_tracepoints=btf_tracepoints,
                                  socket_slots=socket_slots, dst_slots=dst_slots, max_socks=max_socks)
        if per_process:      # only then: the program and its image stay what they were without it
            self.engine_kwargs.update(per_process=True, max_procs=max_procs)
        if proc_dsts:        # connects per (process, destination): --per-domain by who resolved
            self.engine_kwargs.update(proc_dsts=True)
        self.prev_proc_dsts: dict = {}
        self.per_process = per_process
        self.max_procs = max_procs
        self.prev_procs: dict = {}
        self.prev_proc_evictions = 0
        self.owners = None              # netdiag.sources.procowners.SocketOwners (listener mode)
        self.prog = None
        self.plan: dict = {}
        self.want_conntrack = conntrack
        self.conntrack = None          # netdiag.sources.conntrack.ConntrackMonitor when ctnetlink answers
        self.conntrack_note = None
        self.netns_filter = netns
        self.port = port
        self.dst_net = ipaddress.ip_network(dst, strict=False) if dst else None
        self.max_dsts = max_dsts
        self.max_socks = max_socks
        self.node = socket.gethostname()
        self.labels = nsmod.NetnsNames()
        self.nic = NicStats()           # the NIC driver's allowance counters (cloud instance limits)
        self.gaps = signal_gaps()       # record fields this kernel cannot fill -> why
        self.rst_reason = _enum_namer("tcp", "tcp_send_reset", "reason")
        self.drop_reason = _enum_namer("skb", "kfree_skb", "reason")
        self.seed: dict = {}
        self._seed_lock = threading.Lock()
        self._seeder = None
        self.prev_vals: dict = {}
        self._decoded: dict = {}        # nd_dsts key bytes -> (value bytes, decoded row parts)
        self._slots: dict = {}          # nd_dst_table index bytes -> (value bytes, [decoded row parts])
        self._code_cache: dict = {}     # the same for nd_codes
        self._code_slots: dict = {}     # the same for nd_code_table
        self.prev_active: dict = {}
        self.prev_codes: dict = {}
        self.prev_drops: dict = {}
        self.prev_hist: list | None = None
        self.prev_netstat: dict = {}
        self.prev_evictions = 0
        self.prev_snat: dict = {}
        self.max_queue: dict = {}
        self.taps = NamespaceTaps(only={netns} if netns is not None else None)
        self.t_prev = None

    @property
    def modes(self) -> dict:
        m = {"connect": self.plan["connect"], "accept": self.plan.get("accept", "tracepoint"),
             "tracepoints": flavour_of(self.prog) if self.prog is not None else "classic"}
        m.update(self.conntrack.modes if self.conntrack else {"conntrack": "off", "snat": "off"})
        if self.plan.get("snat") == "kprobe":
            # SNAT allocations, ranges and insert failures from kprobes (bpf/snat.c); table fill
            # and per-namespace stats stay on ctnetlink
            m.update({"conntrack": "kprobe", "snat": "kprobe"})
        return m

    def start(self) -> None:
        self.prog = loader.load(self.engine_kwargs, list(MAPS) + list(OPTIONAL_MAPS), OPTIONAL_MAPS)
        self.plan = self.prog.plan
        self.maps = self.prog.maps
        if self.want_conntrack:
            self._start_conntrack()
        self.sample()          # baseline: the first reported interval starts now
        self.t_prev = time.time()
        # Pre-existing connections are read from inet_diag after attach (so none slips between
        # the two); on a node with 100k+ sockets that takes seconds, so it runs beside the loop.
        self._seeder = threading.Thread(target=self._seed_active, name="seed-active", daemon=True)
        self._seeder.start()

    @property
    def accepts_measured(self) -> bool:
        """Are accept() calls counted (not just handshakes completed)?"""
        return "accept" in self.plan

    @property
    def seeding(self) -> bool:
        return self._seeder is not None and self._seeder.is_alive()

    def _start_conntrack(self) -> None:
        from netdiag.sources.conntrack import ConntrackMonitor, ConntrackUnavailable
        flt = {self.netns_filter} if self.netns_filter is not None else None
        try:
            self.conntrack = ConntrackMonitor(netns_filter=flt).start()
        except (ConntrackUnavailable, OSError) as e:
            self.conntrack, self.conntrack_note = None, str(e)

    def close(self) -> None:
        self.taps.close()
        if self.conntrack is not None:
            self.conntrack.close()
            self.conntrack = None
        if self.prog is not None:
            self.prog.close()
            self.prog = None
        self.nic.close()

    # -- seeding --------------------------------------------------------------------------------
    def _namespaces(self) -> dict[int, str]:
        spaces = {inode: ns.path for inode, ns in namespaces.discover().items()}
        if self.netns_filter is not None:
            spaces = {k: v for k, v in spaces.items() if k == self.netns_filter}
        return spaces

    def _seed_active(self) -> None:
        """Connections that existed before attach count in `active` from the first interval."""
        try:
            self._seed_all()
        except Exception:       # the maps were closed under us (Ctrl-C during seeding)
            if self.prog is not None:
                raise

    def _seed_all(self) -> None:
        try:
            self._seed_namespaces()
        finally:
            if self.prog is not None:      # probes stop noting tuples
                self.maps["nd_seed_ctl"].update(struct.pack("<I", 0), struct.pack("<I", 1))

    def _seed_namespaces(self) -> None:
        table, window, ctl = self.maps["nd_out_seeded"], self.maps["nd_seed_window"], self.maps["nd_seed_ctl"]
        flagged = False
        for inode, path in self._namespaces().items():
            try:
                socks = namespaces.run_in(path, inetdiag.dump, (1 << inetdiag.TCP_ESTABLISHED) | (1 << inetdiag.TCP_LISTEN))
            except (OSError, namespaces.NetnsError):
                continue        # the namespace went away
            for s in inetdiag.outbound_established(socks):
                key = SOCK_KEY.pack(inode, AF_INET6 if s.family == 6 else 2, s.lport, s.rport, 0, 0,
                                    _packed(s.laddr), _packed(s.raddr))
                if window.lookup(key) is not None or not table.insert(key, b"\x01"):
                    continue    # established after attach: the probes count it already
                if not flagged:
                    ctl.update(struct.pack("<I", 1), struct.pack("<I", 1))
                    flagged = True
                dk = agg.DstKey(inode, s.family, s.raddr, s.rport)
                with self._seed_lock:
                    self.seed[dk] = self.seed.get(dk, 0) + 1

    # -- one interval ---------------------------------------------------------------------------
    def sample(self) -> dict:
        now = time.time()
        with self._seed_lock:
            seed = dict(self.seed)
        cur, dirs, active = {}, {}, {}
        self._decoded, fresh = _decode_changed(self.maps["nd_dsts"], self._decoded, _dst_row)
        changed = {self._decoded[kb][1][0] for kb in fresh}
        for _, (key, counters, bits, act) in self._decoded.values():
            cur[key] = counters
            dirs[key] = bits
            active[key] = act
        # rows in the per-CPU table: a key there on some CPUs may be in nd_dsts for others
        self._slots, fresh = _decode_changed(self.maps["nd_dst_table"], self._slots, _slot_rows, skip_zero=True)
        changed.update(key for kb in fresh for key, *_ in self._slots[kb][1])
        for _, held in self._slots.values():
            for key, counters, bits, act in held:
                if key in cur:
                    counters = {c: cur[key][c] + n for c, n in counters.items()}
                cur[key] = counters
                dirs[key] = dirs.get(key, 0) | bits
                active[key] = active.get(key, 0) + act
        for key in cur:
            active[key] += seed.get(key, 0)
        for key, n in seed.items():
            if key not in cur:                      # seeded, never touched since attach
                cur[key] = {c: 0 for c in agg.COUNTERS}
                dirs[key] = agg.DIR_OUT
                active[key] = n
        # rows worth building: counters moved, or connections held now or a moment ago (an
        # unchanged row with neither has nothing to report)
        prev_active = self.prev_active
        live = {k: cur[k] for k in cur
                if k in changed or active.get(k, 0) > 0 or prev_active.get(k, 0) > 0}
        self._code_cache, _ = _decode_changed(self.maps["nd_codes"], self._code_cache, _code_entry)
        codes = dict(hit for _, hit in self._code_cache.values())
        self._code_slots, _ = _decode_changed(self.maps["nd_code_table"], self._code_slots, _code_slot_counts,
                                              skip_zero=True)
        for _, held in self._code_slots.values():
            for ck, n in held:
                codes[ck] = codes.get(ck, 0) + n
        drops = {DROP_KEY.unpack(kb): U64.unpack(vb)[0] for kb, vb in self.maps["nd_drops"].items()}
        hist = [sum(U64.unpack(c)[0] for c in self.maps["nd_lat_hist"].lookup(struct.pack("<I", i)))
                for i in range(32)]
        stats = {i: sum(U64.unpack(v)[0] for v in self.maps["nd_stats"].lookup(struct.pack("<I", i)))
                 for i in (STAT_DST_NEW, STAT_LOST, STAT_PROC_NEW, STAT_PROC_DST_NEW)}
        # outbound sockets in the LRU hash behind the socket table (inserted - removed: an entry
        # the LRU evicted stays counted, so nearing the bound shows before `active` goes wrong)
        spilled = U64.unpack(self.maps["nd_conn_spill"].lookup(struct.pack("<I", 0)))[0]
        # distinct keys of the dump; one taken while keys are evicted and inserted can see one
        # more key than the map holds at any moment, and it never holds more than its size
        n_entries = min(len(self._decoded), self.max_dsts)
        # inserted - present; a key inserted between the dump and the counter read shows up as one
        # eviction too many for an interval: the total never goes back, so the next one is not -1
        evictions = max(stats[STAT_DST_NEW] - n_entries, self.prev_evictions)

        code_d = agg.code_deltas(codes, self.prev_codes)
        shown: set = set()
        live = {k: v for k, v in live.items() if self._wanted(k)}
        rows = agg.build_rows(live, self.prev_vals, dirs, active, code_d, _errno_name, self.rst_reason,
                              self.labels.label, self.prev_active, shown)
        if not self.accepts_measured:
            for r in rows:
                r["accepts"] = None
        if "resets_out_by_reason" in self.gaps:          # unmeasurable here: null, never {}
            for r in rows:
                r["resets_out_by_reason"] = None
        drop_d = {}
        for (ns, reason), v in drops.items():
            d = v - self.prev_drops.get((ns, reason), 0)
            if d > 0 and (self.netns_filter is None or ns == self.netns_filter):
                name = self.drop_reason(reason)
                drop_d[name] = drop_d.get(name, 0) + d
        listeners = self._listeners(rows)
        totals = agg.node_totals(rows)
        totals["drops_by_reason"] = dict(sorted(drop_d.items(), key=lambda kv: -kv[1]))
        totals["drops"] = sum(drop_d.values())
        if "drops_by_reason" in self.gaps:
            totals["drops_by_reason"] = None
        totals["connect_latency_hist"] = agg.hist_delta(hist, self.prev_hist)
        totals["listen_overflows"] = sum(ls["overflows"] for ls in listeners if not ls.get("overflows_shared"))
        nic = self.nic.interval()
        totals["allowance_exceeded"] = nic["allowance_exceeded"]
        totals["allowance_available"] = nic["allowance_available"]
        interval = now - self.t_prev if self.t_prev else 0.0
        record = {
            "type": "interval",
            "ts": round(now, 3),
            "node": self.node,
            "interval_s": round(interval, 3),
            "modes": self.modes,
            "lost_events": stats[STAT_LOST],
            "evictions": evictions - self.prev_evictions,
            "evictions_total": evictions,
            "map_entries": n_entries,
            "map_max": self.max_dsts,
            "socket_map_entries": spilled,
            "socket_map_max": self.max_socks,
            "seeding": self.seeding,
            "unmeasured": self.gaps,
            "destinations": rows,
            "listeners": listeners,
            "node_totals": totals,
            "verdicts": [],
        }
        snap = self.conntrack.snapshot() if self.conntrack is not None else None
        if "nd_snat" in self.maps:
            from netdiag.sources.conntrack import kprobe as ksnat
            cur_snat = ksnat.decode(self.maps["nd_snat"].items())
            krows = ksnat.rows(cur_snat, self.prev_snat, (snap or {}).get("snat", []), self.labels.label)
            self.prev_snat = cur_snat
            snap = ksnat.merge_into_snapshot(snap or {}, krows)
        if snap is not None:
            merge_conntrack(record, snap)
        if "nd_proc_dsts" in self.maps:
            self._by_process(rows)
        if self.per_process and "nd_procs" in self.maps:
            self._processes(record, stats[STAT_PROC_NEW])
        self.prev_vals, self.prev_drops, self.prev_hist = cur, drops, hist
        self.prev_codes = agg.codes_seen(codes, self.prev_codes, shown)
        self.prev_active = active
        self.prev_evictions = evictions
        self.t_prev = now
        return record

    @property
    def process_inbound(self) -> str:
        """How a process's inbound connections are counted: "accept" (the accept hook runs in
        the acceptor's context) or "listener" (handshakes on the listeners it holds)."""
        return procs.INBOUND_ACCEPT if self.accepts_measured else procs.INBOUND_LISTENER

    def _processes(self, record: dict, inserted: int) -> None:
        """`processes` (one row per process that did something), the map's evictions, and in
        listener mode each listener's handshakes given to the process that holds it."""
        cur = {}
        m = self.maps["nd_procs"]
        for kb, raw in m.items(split=False):
            vals = [dict(zip(PROC_VAL_FIELDS, PROC_VAL.unpack(v))) for v in m.split_percpu(raw)]
            for v in vals:
                v["comm"] = v["comm"].split(b"\0", 1)[0].decode(errors="replace")
            cur[PROC_KEY.unpack(kb)] = procs.sum_percpu(vals)
        present = len(cur)                  # the map's entries: evictions = inserted - present
        if self.netns_filter is not None:
            cur = {k: v for k, v in cur.items() if k[1] == self.netns_filter}
        rows = procs.build_rows(cur, self.prev_procs, self.labels.label, self.accepts_measured)
        self.prev_procs = cur
        if not self.accepts_measured:
            if self.owners is None:
                from netdiag.sources.procowners import SocketOwners
                self.owners = SocketOwners()
            busy = [ls for ls in record["listeners"] if ls.get("established") and ls.get("inode")]
            found = self.owners.owners({ls["inode"] for ls in busy})
            owners = {(ls["netns"], ls["listen"]): found[ls["inode"]] for ls in busy if ls["inode"] in found}
            procs.attribute_listeners(rows, record["listeners"], owners, self.labels.label)
        n_entries = min(present, self.max_procs)
        evictions = max(inserted - n_entries, self.prev_proc_evictions)
        record["processes"] = procs.sort_rows(rows)
        record["process_evictions"] = evictions - self.prev_proc_evictions
        record["process_map_entries"] = n_entries
        record["process_map_max"] = self.max_procs
        record["modes"]["process_inbound"] = self.process_inbound
        self.prev_proc_evictions = evictions

    def _by_process(self, rows: list[dict]) -> None:
        """`by_process` on each outbound row: this interval's connects, established and failed of
        the row by the process that started them (nd_proc_dsts)."""
        cur: dict = {}
        for kb, raw in self.maps["nd_proc_dsts"].items(split=False):
            tgid, netns, fam, _pad, port, _pad2, addr = PROC_DST_KEY.unpack(kb)
            tot = [0, 0, 0]
            for v in self.maps["nd_proc_dsts"].split_percpu(raw):
                for i, x in enumerate(PROC_DST_VAL.unpack(v)):
                    tot[i] += x
            cur[(netns, format_addr(fam, addr), port, tgid)] = tot
        per_row: dict = {}
        for (netns, addr, port, tgid), tot in cur.items():
            prev = self.prev_proc_dsts.get((netns, addr, port, tgid))
            d = [a - b for a, b in zip(tot, prev)] if prev else tot
            if any(x < 0 for x in d):              # evicted and inserted anew since the last read
                d = tot
            if not any(d):
                continue
            per_row.setdefault((netns, endpoint(addr, port)), []).append(
                {"pid": tgid, "connects": d[0], "established": d[1], "failed": d[2]})
        self.prev_proc_dsts = cur
        for r in rows:
            if r["direction"] == "out":
                got = per_row.get((r["netns"], r["dst"]))
                if got:
                    r["by_process"] = sorted(got, key=lambda x: (-x["connects"], x["pid"]))

    def _wanted(self, key: agg.DstKey) -> bool:
        """Is this destination inside --port and --dst?"""
        if self.port is not None and key.port != self.port:
            return False
        return self.dst_net is None or ipaddress.ip_address(key.addr) in self.dst_net

    def _listeners(self, rows: list[dict]) -> list[dict]:
        inbound: dict = {}
        for r in rows:
            if r["direction"] == "in":
                dst = r["dst"]
                inbound.setdefault((r["netns"], dst.port), []).append((dst.addr, r))
        out = []
        self.taps.refresh(hint={r["netns"] for r in rows})
        for inode, tap in list(self.taps.taps.items()):
            try:
                socks, ns_stat = tap.diag.dump(1 << inetdiag.TCP_LISTEN), tap.netstat.read()
            except OSError:
                self.taps.drop(inode)
                continue
            mine = []
            for s in socks:
                if self.port is not None and s.lport != self.port:
                    continue
                key = (inode, s.family, s.laddr, s.lport)
                self.max_queue[key] = max(self.max_queue.get(key, 0), s.rqueue)
                rs = [r for addr, r in inbound.get((inode, s.lport), [])
                      if s.laddr in ("0.0.0.0", "::") or addr == s.laddr]
                mine.append({
                    "listen": endpoint(s.laddr, s.lport),
                    "netns": inode,
                    "netns_name": self.labels.label(inode),
                    "queue": s.rqueue,
                    "max_queue": self.max_queue[key],
                    "backlog": s.wqueue,
                    "established": sum(r["established"] for r in rs),
                    "accepts": sum(r["accepts"] for r in rs) if self.accepts_measured else None,
                    "synack_retrans": sum(r["syn_retrans"] for r in rs),
                    "resets_in": sum(r["resets_in"] for r in rs),
                    "resets_out": sum(r["resets_out"] for r in rs),
                    "inode": s.inode,
                })
            prev = self.prev_netstat.get(inode)
            self.prev_netstat[inode] = ns_stat
            ovf = (ns_stat.get("ListenOverflows", 0) - prev.get("ListenOverflows", 0)) if prev else 0
            drops = (ns_stat.get("ListenDrops", 0) - prev.get("ListenDrops", 0)) if prev else 0
            agg.attribute_overflows(mine, ovf)
            for ls in mine:
                ls["listen_drops_netns"] = drops
            out.extend(mine)
        if len(self.prev_netstat) > len(self.taps.taps):       # namespaces went away
            self.prev_netstat = {i: v for i, v in self.prev_netstat.items() if i in self.taps.taps}
            self.max_queue = {k: v for k, v in self.max_queue.items() if k[0] in self.taps.taps}
        out.sort(key=lambda ls: (-ls["overflows"], -ls["queue"], ls["listen"]))
        return out


def merge_conntrack(record: dict, snap: dict) -> None:
    """Put a ConntrackMonitor snapshot into an interval record: `snat` on each destination a local
    NAT allocates ports to, the NAT table as `nat`, table fill as node_totals.conntrack."""
    by_dst: dict = {}
    for row in snap.get("snat", []):
        by_dst.setdefault(row["dst"], []).append(row)
    for d in record["destinations"]:
        rows = by_dst.get(d["dst"])
        if not rows or d["direction"] != "out":
            continue
        r = max(rows, key=lambda x: (x.get("utilization") or 0, x["ports_in_use"]))
        d["snat"] = {"ports_in_use": r["ports_in_use"], "port_range": r["port_range"],
                     "utilization": r["utilization"], "insert_failed": r["insert_failed"],
                     "drop": r.get("drop", 0), "allocations": r["allocations"],
                     "failed_allocations": r.get("failed_allocations", 0), "nat_ip": r["nat_ip"],
                     "netns": r["netns"], "netns_name": r.get("netns_name")}
    record["nat"] = snap.get("snat", [])
    record["conntrack_netns"] = [{k: ns.get(k) for k in ("netns", "name", "entries", "max", "fill", "fill_warning",
                                                         "insert_failed", "drop", "early_drop", "clash_resolve")}
                                 for ns in snap.get("netns", [])]
    record["node_totals"]["conntrack"] = snap.get("node_totals", {})
    record["lost_events"] += snap.get("lost_events", 0)


def _dst_key(netns: int, fam: int, kdir: int, port: int, addr: bytes) -> agg.DstKey:
    """A struct nd_dst_key's fields as the row key."""
    return agg.DstKey(netns, 6 if fam == AF_INET6 else 4, format_addr(fam, addr), port, kdir != agg.DIR_IN)


def _dst_row(kb: bytes, values: list) -> tuple:
    """An nd_dsts entry: (row key, counters, direction bits, active)."""
    return _row_parts(_dst_key(*DST_KEY.unpack(kb)), _sum_percpu(values))


def _row_parts(key: agg.DstKey, v: dict) -> tuple:
    """(row key, counters, direction bits, active) of a struct nd_dst_val's fields."""
    return key, {c: v[c] for c in agg.COUNTERS}, v["dir"], v["active"]


def _slot_rows(kb: bytes, values: list) -> list:
    """An nd_dst_table slot: one (row key, counters, direction bits, active) per CPU whose copy
    holds a key."""
    out = []
    for raw in values:
        state, *key_and_val = DST_SLOT.unpack(raw)
        if state != DST_SLOT_HELD:
            continue
        out.append(_row_parts(_dst_key(*key_and_val[:5]), dict(zip(DST_VAL_FIELDS, key_and_val[5:]))))
    return out


def _code_slot_counts(kb: bytes, values: list) -> list:
    """An nd_code_table slot: one ((row key, kind, code), count) per CPU whose copy holds a key."""
    out = []
    for raw in values:
        state, *dk, kind, code, n = CODE_SLOT.unpack(raw)
        if state == DST_SLOT_HELD:
            out.append(((_dst_key(*dk), kind, code), n))
    return out


def _code_entry(kb: bytes, values: list) -> tuple:
    """An nd_codes entry: ((row key, kind, code), count)."""
    *dk, kind, code = CODE_KEY.unpack(kb)
    return (_dst_key(*dk), kind, code), sum(U64.unpack(c)[0] for c in values)


def _decode_changed(m, cache: dict, decode, skip_zero: bool = False) -> tuple[dict, list]:
    """Every entry of map ``m`` as ``decode(key bytes, per-CPU value list)``, reusing the value
    in ``cache`` for entries whose bytes did not change since, and with ``skip_zero`` leaving out
    entries whose bytes are all zero (an array's unused slots). Returns the new cache ({key bytes:
    (value bytes, decoded)}) and the key bytes decoded anew."""
    out, fresh = {}, []
    skip = bytes(m.stride * m.ncpus) if skip_zero else None
    for kb, raw in m.items(split=False):
        if raw == skip:
            continue
        hit = cache.get(kb)
        if hit is None or hit[0] != raw:
            hit = (raw, decode(kb, m.split_percpu(raw) if m.percpu else [raw]))
            fresh.append(kb)
        out[kb] = hit
    return out, fresh


def _sum_percpu(values) -> dict:
    """nd_dsts values are per CPU: counters and the active gauge add up, direction bits OR."""
    out = dict.fromkeys(DST_VAL_FIELDS, 0)
    for raw in values if isinstance(values, list) else [values]:
        for name, x in zip(DST_VAL_FIELDS, DST_VAL.unpack(raw)):
            if name == "dir":
                out["dir"] |= x
            else:
                out[name] += x
    return out


def _packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed.ljust(16, b"\0")
