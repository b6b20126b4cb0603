"""The diagnosis replayed over a long recording without judging every destination every interval.

Each interval, the ``Diagnoser`` judges every destination over the rows of its window (the records
of the last ``window_s`` seconds). Over an hour of 1,000 destinations at 1 s that is 36 million row
visits, and nearly all of them find nothing. ``plan`` computes, with numpy over the recording's
columns (no Python object per row), which destinations each interval *could* find something for:
every condition of the per-destination verdicts (local_port_exhaustion, remote_connection_cap,
connection_churn both ways) evaluated on the window sums, each loosened by a rounding margin, so the
set is a superset of what the diagnosis finds. The Diagnoser is then handed records holding only
the rows of those destinations' windows, with ``Diagnoser.only_dsts`` naming the ones to judge that
interval. A destination judged sees every row of its window, so it finds what it finds over the
whole recording; one skipped finds nothing there either way. The verdicts, their numbers, evidence
and order are those of the replay over every row (tests/unit/test_report.py compares the two).

Destinations judged every interval, with every row kept: those a verdict about something else reads
(a NAT's destinations: snat_port_exhaustion's client side; the ports of listeners that overflowed:
connection_burst's arrivals), those whose connection ages are tracked for idle_timeout_reset (a row
that received resets), and those with two rows for one key in one interval.

``plan`` returns None, and the replay visits every row as before, where this does not hold or is
not worth it: NDJSON input, records with per-process rows (connection_fanout reads a namespace's
rows), rows with a null where the diagnosis reads a number, thresholds outside their sense
(``window_s``, ``churn_min_span_s``, ``cap_min_active`` or ``cap_plateau_intervals`` not positive).
"""
from __future__ import annotations

import json

from netdiag.analysis.diagnose import _NOT_CAP_ERRNOS
from netdiag.offline import format as fm
from netdiag.offline.keys import parse_endpoint, with_keys

_NUMERIC = ("connects", "established", "active", "syn_retrans", "resets_in")
_TOL = 1e-6                     # relative: sums here are numpy's, the Diagnoser's are Python's
_PIECE = 1 << 19                # rows judged at a time (whole keys): bounds the memory of the pairs


class _Judged:
    """``only_dsts`` of one interval: the destinations judged every interval, and this one's."""
    __slots__ = ("full", "now")

    def __init__(self, full, now):
        self.full, self.now = full, now

    def __contains__(self, dst) -> bool:
        return dst in self.now or dst in self.full


class Plan:
    """What the replay of one node's recordings needs: ``records()`` (the records, rows outside
    every judged window left out), ``judged(i)`` (``only_dsts`` of the i-th record) and
    ``naming_record(i, verdicts)`` (record i with every row those verdicts are named from)."""

    def __init__(self, srcs, keep, order, full, per_interval, since, until, aged):
        self.srcs, self.keep, self.order = srcs, keep, order
        self.full, self.per_interval, self.aged = full, per_interval, aged
        self.since, self.until = since, until
        self._empty = frozenset()
        self._idcache: dict = {}

    def records(self):
        last = None
        for src, mask in zip(self.srcs, self.keep):
            rec = src.rec
            tables = dict(rec.tables)
            if "destinations" in tables:
                import pyarrow as pa
                tables["destinations"] = tables["destinations"].filter(pa.array(mask))
            reduced = fm.Recording(rec.path, rec.meta, tables, rec.truncated, rec.segments)
            for r in fm.iter_records(reduced):
                ts = r["ts"]
                if last is not None and ts <= last:
                    continue
                if self.since is not None and ts < self.since:
                    continue
                if self.until is not None and ts > self.until:
                    continue
                last = ts
                yield r

    def judged(self, i: int):
        now = self.per_interval.get(i, self._empty)
        if not self.full:
            return now
        return _Judged(self.full, now) if len(self.full) > 256 else self.full | now

    def naming_record(self, i: int, verdicts: list) -> dict:
        """The destination rows of record i that verdicts are named from (netdiag.analysis.domains.
        name_verdicts): rows of a verdict's dst, and for one without a dst, of its namespace."""
        import pyarrow as pa
        import pyarrow.compute as pc
        dsts = sorted({v["dst"] for v in verdicts if v.get("dst")})
        nss = [v.get("netns") for v in verdicts if not v.get("dst")]
        s, iv = self.order[i]
        t = self.srcs[s].tables.get("destinations")
        if t is None or not (dsts or nss):
            return {"destinations": []}
        ids = self._ids(s)
        a, b = int(ids.searchsorted(iv, "left")), int(ids.searchsorted(iv, "right"))
        part = t.slice(a, b - a)
        mask = pc.is_in(part["dst"], value_set=pa.array(dsts, pa.string()))      # (dictionary-encoded too)
        if nss:
            has_null = any(n is None for n in nss)
            vals = pa.array([n for n in nss if n is not None], pa.int64())
            inns = pc.is_in(part["netns"], value_set=vals)
            if has_null:
                inns = pc.or_(inns, pc.is_null(part["netns"]))
            mask = pc.or_(mask, pc.fill_null(inns, False))
        part = part.filter(pc.fill_null(mask, False))
        return with_keys({"destinations": [row for *_, row in fm._table_rows(part, fm.ROW_TABLES["destinations"])]})

    def _ids(self, s: int):
        if s not in self._idcache:
            self._idcache[s] = self.srcs[s].tables["destinations"].column("interval").to_numpy()
        return self._idcache[s]


def _judge(out: bool, comp, key, cols: dict, win, th):
    """(record index, row) of each (row's key, record) pair where a per-destination verdict's
    conditions could hold: rows sorted by ``comp`` (key * (n + 1) + record index), whole keys; a
    pair for each record whose window holds a row of the key, judged on the window sums of
    ``cols``."""
    import numpy as np
    lo, span, nwin, n = win
    gs = comp - key * (n + 1)                   # each row's record index
    m = len(comp)
    same_next = np.zeros(m, bool)
    same_next[:-1] = key[1:] == key[:-1]
    next_g = np.where(same_next, np.roll(gs, -1), n)
    hi = np.searchsorted(lo, gs, side="right") - 1          # the last record whose window holds the row
    cnt = np.maximum(np.minimum(hi, next_g - 1) - gs + 1, 0)   # ... up to the key's next row
    r = np.repeat(np.arange(m), cnt)
    i = gs[r] + (np.arange(len(r)) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    first = np.searchsorted(comp, key[r] * (n + 1) + lo[i], side="left")    # the window's first row

    def wsum(x):
        cs = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
        return cs[r + 1] - cs[first]
    sp = span[i]
    low = 1 - _TOL
    with np.errstate(divide="ignore", invalid="ignore"):
        if out:
            conns = wsum(cols["connects"])
            rate = np.where(sp > 0, conns / sp, np.inf)
            cpa = rate / np.maximum(wsum(cols["active"]) / nwin[i], 1.0)
            hit = (conns > 0) & (sp >= th.churn_min_span_s * low) & (rate >= th.churn_min_rate * low) & \
                (cpa >= th.churn_connects_per_active * low)                          # connection_churn
            del conns, rate, cpa
            hit |= wsum(cols["eaddr"]) >= th.ports_min_eaddrnotavail * low          # local_port_exhaustion
            # remote_connection_cap: `active` the same (and at least cap_min_active) over the last
            # cap_plateau_intervals records, all in the window, with failures in the window
            a = cols["active"]
            step = np.zeros(m, bool)
            step[1:] = same_next[:-1] & (gs[1:] == gs[:-1] + 1) & (a[1:] == a[:-1])
            brk = np.flatnonzero(~step)
            run = np.arange(m) - np.repeat(brk, np.diff(np.append(brk, m))) + 1     # equal rows ending here
            plateau = (run >= th.cap_plateau_intervals) & (a >= th.cap_min_active)
            cap = plateau[r] & (i == gs[r]) & (nwin[i] >= th.cap_plateau_intervals)
            hit |= cap & (wsum(cols["capfail"]) >= th.cap_min_failures * low)
        else:
            rate = np.where(sp > 0, wsum(cols["established"]) / sp, np.inf)
            hit = (sp >= th.churn_min_span_s * low) & (rate >= th.churn_min_rate * low) & \
                (rate >= th.churn_connects_per_active * low)
    return i[hit], r[hit]


def stream_order(srcs, since, until):
    """[(source position, interval number, ts)] of the records the replay reads, in its order
    (by interval number in each source, sources by their first ts, a record whose ts is not after
    the last one read left out: an overlapping copy), or None when a source's intervals are not
    numbered in order."""
    import numpy as np
    order = []
    last = None
    for s, src in enumerate(srcs):
        itab = src.tables.get("intervals")
        if itab is None or itab.num_rows == 0:
            continue
        ids = itab.column("interval").to_numpy()
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            return None
        for iv, ts in zip(ids.tolist(), itab.column("ts").to_pylist()):
            if last is not None and ts <= last:
                continue
            if since is not None and ts < since:
                continue
            if until is not None and ts > until:
                continue
            last = ts
            order.append((s, iv, ts))
    return order


def plan(srcs, th, since=None, until=None) -> Plan | None:
    """The replay's plan for one node's sources (recordings, in the order they are read), or None
    to replay every row (see the module's docstring)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    if any(s.rec is None for s in srcs):
        return None
    if not (th.window_s > 0 and th.churn_min_span_s > 0 and th.cap_min_active > 0
            and th.cap_plateau_intervals >= 1):
        return None
    for s in srcs:
        extra = s.tables["intervals"].column("extra") if "extra" in s.tables["intervals"].column_names else None
        if extra is not None and pc.any(pc.match_substring(extra.cast(pa.string()), '"processes"')).as_py():
            return None
        d = s.tables.get("destinations")
        if d is not None and d.num_rows:
            if not {"interval", "dst", "direction", "netns", "failed_by_errno", *_NUMERIC} <= set(d.column_names):
                return None
            if d.column("dst").null_count or d.column("direction").null_count or \
                    d.column("failed_by_errno").null_count or any(d.column(c).null_count for c in _NUMERIC):
                return None
            ids = d.column("interval").to_numpy()
            if len(ids) > 1 and (np.diff(ids) < 0).any():
                return None
    order = stream_order(srcs, since, until)
    if order is None:
        return None
    n = len(order)
    if n == 0:
        return None
    rec_ts = np.array([o[2] for o in order], dtype=np.float64)
    rec_iv = np.zeros(n)
    pos = {}                                # (source, interval number) -> record index
    for i, (s, iv, _) in enumerate(order):
        pos[(s, iv)] = i
    for s, src in enumerate(srcs):
        itab = src.tables["intervals"]
        if "interval_s" not in itab.column_names:
            continue
        ivs = itab.column("interval").to_pylist()
        vals = itab.column("interval_s").to_pylist()
        for iv, v in zip(ivs, vals):
            i = pos.get((s, iv))
            if i is not None:
                rec_iv[i] = v or 0
    # destination rows of every source, as numpy columns, with their record index g (-1: not read)
    parts = [s.tables.get("destinations") for s in srcs]
    g_parts, keep_sizes = [], []
    for s, t in enumerate(parts):
        if t is None or not t.num_rows:
            keep_sizes.append(0)
            continue
        ids = t.column("interval").to_numpy()
        sids = np.array([iv for (ss, iv, _) in order if ss == s], dtype=np.int64)
        gi = np.array([i for i, (ss, _, _) in enumerate(order) if ss == s], dtype=np.int64)
        at = np.searchsorted(sids, ids)
        at_c = np.minimum(at, max(len(sids) - 1, 0))
        ok = (at < len(sids)) & (sids[at_c] == ids) if len(sids) else np.zeros(len(ids), bool)
        g_parts.append(np.where(ok, gi[at_c] if len(gi) else -1, -1))
        keep_sizes.append(t.num_rows)
    tables = [t for t in parts if t is not None and t.num_rows]
    if not tables:
        return None
    g = np.concatenate(g_parts)

    def column(name):
        return pa.chunked_array([c for t in tables for c in t.column(name).chunks], type=tables[0].schema.field(name).type)

    def codes(name):
        """(int code per row, [value per code]) of a column; a null is a value of its own."""
        col = column(name)
        if pa.types.is_dictionary(col.type):
            col = col.unify_dictionaries()
            values = col.chunks[0].dictionary.to_pylist() if col.num_chunks else []
            idx = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in col.chunks]) \
                if col.num_chunks else np.zeros(0)
            if col.null_count:
                nulls = np.concatenate([c.is_null().to_numpy(zero_copy_only=False) for c in col.chunks])
                idx = np.where(nulls, len(values), idx)
                values.append(None)
            return idx.astype(np.int32), values
        uniq = pc.unique(col)
        return pc.index_in(col, value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int32), uniq.to_pylist()

    dst_code, dst_names = codes("dst")
    ns_code, _ = codes("netns")
    dir_code, dirs = codes("direction")
    out_c = dirs.index("out") if "out" in dirs else -1
    in_c = dirs.index("in") if "in" in dirs else -1
    vals = {c: column(c).to_numpy() for c in _NUMERIC}
    fbe_code, fbe_uniq = codes("failed_by_errno")
    eaddr_u, capf_u, refused_u = [], [], []
    for text in fbe_uniq:
        try:
            errs = json.loads(text)
            if not isinstance(errs, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in errs.values()):
                return None
        except ValueError:
            return None
        eaddr_u.append(errs.get("EADDRNOTAVAIL", 0))
        capf_u.append(sum(v for k, v in errs.items() if k not in _NOT_CAP_ERRNOS))
        refused_u.append(errs.get("ECONNREFUSED", 0))
    eaddr_u, capf_u = np.array(eaddr_u, np.float64), np.array(capf_u, np.float64)
    refused_u = np.array(refused_u, np.float64)

    lo = np.searchsorted(rec_ts, rec_ts - th.window_s, side="right")
    csum_iv = np.concatenate([[0.0], np.cumsum(rec_iv)])
    idx = np.arange(n)
    span = csum_iv[idx + 1] - csum_iv[lo]
    nwin = idx - lo + 1

    read = g >= 0
    full = np.zeros(len(dst_names), bool)
    # ages tracked for idle_timeout_reset: every row of a destination that received resets
    is_out = dir_code == out_c
    resets = vals["resets_in"] - refused_u[fbe_code]
    aged = np.zeros(len(dst_names), bool)
    aged[dst_code[read & is_out & (resets >= max(th.idle_min_resets, 1))]] = True
    full |= aged
    del resets, is_out
    # a NAT's destinations (snat's client side) and the ports of listeners that overflowed (bursts)
    nat_dsts, ports = set(), set()
    for t in (s.tables.get("nat") for s in srcs):
        if t is not None and "dst" in t.column_names:
            nat_dsts.update(d for d in t.column("dst").to_pylist() if d)
    for t in (s.tables.get("listeners") for s in srcs):
        if t is not None and t.num_rows and "overflows" in t.column_names:
            ovf = t.filter(pc.fill_null(pc.greater(t.column("overflows"), 0), False))
            for listen in ovf.column("listen").to_pylist():
                try:
                    ports.add(parse_endpoint(listen).port)
                except (ValueError, AttributeError):
                    return None
    if ports or nat_dsts:
        for c, d in enumerate(dst_names):
            if d in nat_dsts:
                full[c] = True
            elif ports:
                try:
                    if parse_endpoint(d).port in ports:
                        full[c] = True
                except ValueError:
                    full[c] = True

    cand_i, cand_d = [], []
    n_dst = len(dst_names)
    win = (lo, span, nwin, n)
    for direction in (out_c, in_c):
        if direction < 0:
            continue
        sel = np.flatnonzero(read & (dir_code == direction))
        if not len(sel):
            continue
        comp = (ns_code[sel].astype(np.int64) * n_dst + dst_code[sel]) * (n + 1) + g[sel]
        o = np.argsort(comp, kind="stable")
        sel, comp = sel[o], comp[o]
        del o
        dup = np.flatnonzero(comp[1:] == comp[:-1])
        full[dst_code[sel[dup]]] = True
        # in pieces of whole keys: the pairs (row, record) below hold several arrays per pair
        key = comp // (n + 1)
        starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        at = 0
        while at < len(sel):
            nxt = np.searchsorted(starts, at + _PIECE, side="left")
            end = int(starts[nxt]) if nxt < len(starts) else len(sel)
            piece = sel[at:end]
            cols = {c: vals[c][piece] for c in (("connects", "active") if direction == out_c else ("established",))}
            if direction == out_c:
                cols["eaddr"] = eaddr_u[fbe_code[piece]]
                cols["capfail"] = vals["syn_retrans"][piece] + capf_u[fbe_code[piece]]
            ii, rr = _judge(direction == out_c, comp[at:end], key[at:end], cols, win, th)
            cand_i.append(ii)
            cand_d.append(dst_code[piece[rr]])
            at = end
    ci = np.concatenate(cand_i) if cand_i else np.zeros(0, np.int64)
    cd = np.concatenate(cand_d).astype(np.int64) if cand_d else np.zeros(0, np.int64)
    keep_c = ~full[cd]
    cc = np.unique(cd[keep_c] * (n + 1) + ci[keep_c])        # (dst, record) judged, sorted
    # rows kept: a full destination's, and those inside the window of a record their dst is judged at
    rc = dst_code.astype(np.int64) * (n + 1) + np.maximum(g, 0)
    p = np.searchsorted(cc, rc, side="left")
    pc_ = np.minimum(p, max(len(cc) - 1, 0))
    if len(cc):
        hit_dst = (p < len(cc)) & (cc[pc_] // (n + 1) == dst_code)
        at = cc[pc_] % (n + 1)
        inside = hit_dst & (lo[at] <= g)
    else:
        inside = np.zeros(len(g), bool)
    keep = read & (full[dst_code] | inside)
    per_interval: dict = {}
    for d, i in zip((cc // (n + 1)).tolist(), (cc % (n + 1)).tolist()):
        per_interval.setdefault(i, set()).add(dst_names[d])
    keeps, at = [], 0
    for size in keep_sizes:
        keeps.append(keep[at:at + size])
        at += size
    return Plan(srcs, keeps, [(s, iv) for s, iv, _ in order], {dst_names[c] for c in np.flatnonzero(full)},
                per_interval, since, until, {dst_names[c] for c in np.flatnonzero(aged)})
