"""The recording format (docs/recording.md): interval records as Parquet tables in one append-only file.

A recording is a header (magic line, then one JSON object: format name and version, the node's
context) followed by segments. A segment is one complete Parquet file holding one table's rows for
the intervals of one flush; it is framed by ``NDSG``, the table name and the Parquet length. A file
cut short (SIGKILL, a full disk) ends in a partial segment, which the reader drops: everything up
to the last complete flush reads back.

``encode(records)`` turns interval records (docs/contracts.md) into one Arrow table per table name;
``decode(frames)`` turns the tables back into the same records, key for key: declared columns are
typed, every other key of a row goes to its ``extra`` column as JSON, so a field ``watch`` adds
later is kept without a format change.
"""
from __future__ import annotations

import io
import json
import struct

from netdiag.errors import BadInput

MAGIC = b"NETDIAG-RECORDING\n"
SEGMENT = b"NDSG"
FORMAT = "netdiag-recording"
VERSION = 1
SUFFIX = ".ndrec"

I_, F, S, B, J = "int64", "float64", "string", "bool", "json"

# table -> [(column, type)]; every table also has interval (int64: the interval's number in the
# recording), ts, node and extra (JSON text of the row's other keys, null when there are none).
INTERVAL_COLUMNS = [
    ("interval_s", F), ("lost_events", I_), ("evictions", I_), ("evictions_total", I_), ("map_entries", I_),
    ("map_max", I_), ("seeding", B), ("modes", J), ("dns", J)]
NODE_TOTAL_COLUMNS = [
    ("connects", I_), ("established", I_), ("failed", I_), ("active", I_), ("syn_retrans", I_), ("resets_in", I_),
    ("resets_out", I_), ("retrans", I_), ("listen_overflows", I_), ("drops_by_reason", J),
    ("connect_latency_hist", J), ("conntrack", J)]
ROW_TABLES = {
    "destinations": [
        ("dst", S), ("direction", S), ("netns", I_), ("netns_name", S), ("domain", S), ("pod", S),
        ("connects", I_), ("established", I_), ("failed", I_), ("active", I_), ("resets_in", I_), ("resets_out", I_),
        ("syn_retrans", I_), ("retrans", I_), ("accepts", I_), ("connect_ms_avg", F), ("failed_by_errno", J),
        ("resets_out_by_reason", J), ("snat", J)],
    "listeners": [
        ("listen", S), ("netns", I_), ("netns_name", S), ("queue", I_), ("max_queue", I_), ("backlog", I_),
        ("established", I_), ("accepts", I_), ("synack_retrans", I_), ("resets_in", I_), ("resets_out", I_),
        ("overflows", I_), ("listen_drops_netns", I_)],
    "nat": [
        ("netns", I_), ("netns_name", S), ("nat_ip", S), ("dst", S), ("proto", S), ("ports_in_use", I_),
        ("peak_in_use", I_), ("port_range", I_), ("utilization", F), ("allocations", I_), ("releases", I_),
        ("insert_failed", I_), ("drop", I_), ("failed_allocations", I_)],
    "conntrack_netns": [
        ("netns", I_), ("name", S), ("entries", I_), ("max", I_), ("fill", F), ("insert_failed", I_), ("drop", I_),
        ("early_drop", I_)],
    "domains": [("domain", S), ("pod", S), ("connects", I_), ("established", I_), ("failed", I_), ("active", I_),
                ("resets_in", I_), ("resets_out", I_), ("syn_retrans", I_)],
    "pods": [("pod", S), ("connects", I_), ("established", I_), ("failed", I_), ("active", I_), ("resets_in", I_),
             ("resets_out", I_), ("syn_retrans", I_)],
    "verdicts": [("kind", S), ("dst", S), ("where", S), ("domain", S), ("evidence", J), ("advice", S)],
}
TABLES = ("intervals", *ROW_TABLES)
_LIST_KEYS = tuple(ROW_TABLES)          # record keys holding a list of rows


def _arrow():
    import pyarrow as pa
    return pa


def _arrow_type(t: str):
    pa = _arrow()
    return {I_: pa.int64(), F: pa.float64(), S: pa.string(), B: pa.bool_(), J: pa.string()}[t]


def _fits(value, t: str) -> bool:
    if t == I_:
        return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63
    if t == F:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == S:
        return isinstance(value, str)
    if t == B:
        return isinstance(value, bool)
    return True


def _dumps(v) -> str:
    return json.dumps(v, separators=(",", ":"))


class _Columns:
    """Column lists of one table being built row by row."""

    def __init__(self, spec):
        self.spec = spec
        self.cols = {"interval": [], "ts": [], "node": [], **{c: [] for c, _ in spec}, "extra": []}

    def add(self, n: int, ts: float, node, row: dict, skip=()) -> None:
        cols = self.cols
        cols["interval"].append(n)
        cols["ts"].append(ts)
        cols["node"].append(node)
        extra = {}
        declared = set()
        for c, t in self.spec:
            declared.add(c)
            v = row.get(c, _ABSENT)
            if v is _ABSENT or v is None:
                cols[c].append(None)
                if v is None:
                    extra[c] = None                 # present and null: kept as such
            elif _fits(v, t):
                cols[c].append(_dumps(v) if t == J else (float(v) if t == F else v))
            else:
                cols[c].append(None)
                extra[c] = v                        # another type than declared: kept as it was
        for k, v in row.items():
            if k not in declared and k not in skip:
                extra[k] = v
        cols["extra"].append(_dumps(extra) if extra else None)

    def table(self):
        pa = _arrow()
        fields = [("interval", I_), ("ts", F), ("node", S), *self.spec, ("extra", J)]
        return pa.table({c: pa.array(self.cols[c], type=_arrow_type(t)) for c, t in fields})


_ABSENT = object()


def encode(records: list[dict], first: int, node: str | None = None) -> dict:
    """{table: pyarrow.Table} for these interval records, numbered from ``first``; ``node``, when
    given, names the node instead of each record's ``node``."""
    intervals = _Columns(INTERVAL_COLUMNS + [("nt_" + c, t) for c, t in NODE_TOTAL_COLUMNS])
    rows = {name: _Columns(spec) for name, spec in ROW_TABLES.items()}
    for i, rec in enumerate(records):
        n = first + i
        ts = float(rec["ts"])
        rec_node = node if node is not None else rec.get("node")
        flat = {k: v for k, v in rec.items() if k not in _LIST_KEYS and k not in ("ts", "node", "node_totals")}
        lists = [k for k in _LIST_KEYS if k in rec]
        nt = rec.get("node_totals")
        for k, v in (nt or {}).items():
            flat["nt_" + k] = v
        flat["__lists"] = lists
        if nt is None:
            flat["__no_node_totals"] = True
        if "node" not in rec:
            flat["__no_node"] = True
        intervals.add(n, ts, rec_node, flat)
        for k in lists:
            for r in rec[k] or []:
                rows[k].add(n, ts, rec_node, r)
    return {"intervals": intervals.table(), **{k: c.table() for k, c in rows.items()}}


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=True)
    return buf.getvalue()


def segment(name: str, table) -> bytes:
    data = parquet_bytes(table)
    nb = name.encode()
    return SEGMENT + struct.pack("<H", len(nb)) + nb + struct.pack("<Q", len(data)) + data


COMMIT = "commit"


def commit() -> bytes:
    """The segment that ends a flush: segments after the last one are a partial flush, dropped."""
    nb = COMMIT.encode()
    return SEGMENT + struct.pack("<H", len(nb)) + nb + struct.pack("<Q", 0)


def header(meta: dict) -> bytes:
    body = _dumps({"format": FORMAT, "version": VERSION, **meta}).encode()
    return MAGIC + struct.pack("<I", len(body)) + body


# -- reading ----------------------------------------------------------------------------------------
class Recording:
    """One recording file read back: ``meta`` (the header), ``tables`` ({name: pyarrow.Table}),
    ``truncated`` (bytes of a partial last segment that were dropped)."""

    def __init__(self, path, meta, tables, truncated, segments):
        self.path, self.meta, self.tables, self.truncated, self.segments = path, meta, tables, truncated, segments


def is_recording(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read(path, dictionary: bool = False) -> Recording:
    """Read one recording; raise ``BadInput`` (one line) when it is not one, or is corrupt, or newer.
    With ``dictionary``, text columns are read dictionary-encoded (each distinct value held once:
    an hour of rows repeats a few thousand addresses and names millions of times)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror})") from None
    if not data.startswith(MAGIC):
        raise BadInput(f"{path}: not a netdiag recording (no {MAGIC[:-1].decode()} header)")
    pos = len(MAGIC)
    if len(data) < pos + 4:
        raise BadInput(f"{path}: truncated header")
    (n,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if len(data) < pos + n:
        raise BadInput(f"{path}: truncated header")
    try:
        meta = json.loads(data[pos:pos + n])
    except ValueError:
        raise BadInput(f"{path}: corrupt header") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("version"), int):
        raise BadInput(f"{path}: corrupt header (no format/version)")
    if meta["version"] > VERSION:
        raise BadInput(f"{path}: recording format version {meta['version']} is newer than this netdiag reads "
                       f"({VERSION}); upgrade netdiag")
    pos += n
    parts: dict = {}
    pending: list = []              # segments of a flush whose commit segment is not read yet
    pending_from = pos
    truncated = 0
    segments = 0
    while pos < len(data):
        rest = len(data) - pos
        if data[pos:pos + min(4, rest)] != SEGMENT[:min(4, rest)]:
            raise BadInput(f"{path}: corrupt at byte {pos} (no segment marker)")
        if rest < 6:
            break
        (ln,) = struct.unpack_from("<H", data, pos + 4)
        if rest < 6 + ln + 8:
            break
        name = data[pos + 6:pos + 6 + ln].decode(errors="replace")
        (size,) = struct.unpack_from("<Q", data, pos + 6 + ln)
        start = pos + 6 + ln + 8
        if start + size > len(data):
            break
        pos = start + size
        if name == COMMIT:
            for nm, tb in pending:
                parts.setdefault(nm, []).append(tb)
                segments += 1
            pending, pending_from = [], pos
            continue
        try:
            table = _parquet(pa, pq, data[start:start + size], dictionary)
        except (pa.ArrowException, OSError, ValueError) as e:     # ValueError: a schema's bad UTF-8
            raise BadInput(f"{path}: corrupt segment {name!r} at byte {start}: {str(e).splitlines()[0]}") from None
        pending.append((name, table))
    truncated = len(data) - pending_from
    tables = {}
    for name, ts in parts.items():
        try:
            tables[name] = pa.concat_tables(ts, promote_options="default")
        except pa.ArrowException as e:
            raise BadInput(f"{path}: segments of table {name!r} disagree: {e}") from None
    return Recording(path, meta, tables, truncated, segments)


def _parquet(pa, pq, buf, dictionary: bool):
    if not dictionary:
        return pq.read_table(pa.BufferReader(buf))
    schema = pq.read_schema(pa.BufferReader(buf))
    text = [f.name for f in schema if pa.types.is_string(f.type)]
    return pq.read_table(pa.BufferReader(buf), read_dictionary=text)


def _loads(v):
    return None if v is None else json.loads(v)


_EMPTY_OBJ = dict


def _table_rows(table, spec, names=None):
    """(interval, dict) for each row of an Arrow table, undoing ``_Columns.add``."""
    cols = table.to_pydict()
    n = table.num_rows
    json_cols = {c for c, t in spec if t == J}
    present = [(c, cols[c], c in json_cols) for c, _ in spec if c in cols]
    extras = cols.get("extra") or [None] * n
    ivs, tss, nodes = cols["interval"], cols["ts"], cols["node"]
    loads = json.loads
    for i in range(n):
        row = {}
        for c, col, is_json in present:
            v = col[i]
            if v is not None:
                row[c] = (_EMPTY_OBJ() if v == "{}" else loads(v)) if is_json else v
        extra = extras[i]
        if extra is not None:
            row.update(loads(extra))
        yield ivs[i], tss[i], nodes[i], row


def records(rec: Recording) -> list[dict]:
    """The interval records of a recording, as ``watch`` handed them to its sinks."""
    itab = rec.tables.get("intervals")
    if itab is None:
        return []
    spec = INTERVAL_COLUMNS + [("nt_" + c, t) for c, t in NODE_TOTAL_COLUMNS]
    out: dict = {}
    for n, ts, node, flat in _table_rows(itab, spec):
        lists = flat.pop("__lists", [])
        r = {"ts": ts}
        if not flat.pop("__no_node", False):
            r["node"] = node
        no_nt = flat.pop("__no_node_totals", False)
        nt = {k[3:]: flat.pop(k) for k in list(flat) if k.startswith("nt_")}
        r.update(flat)
        if not no_nt:
            r["node_totals"] = nt
        for k in lists:
            r[k] = []
        out[n] = r
    for name, spec in ROW_TABLES.items():
        t = rec.tables.get(name)
        if t is None:
            continue
        for n, _ts, _node, row in _table_rows(t, spec):
            r = out.get(n)
            if r is not None and name in r:
                r[name].append(row)
    return [out[n] for n in sorted(out)]


def json_table(objs: list):
    """A one-column table (``json``) of JSON objects: the run's summary, a snapshot's parts."""
    pa = _arrow()
    return pa.table({"json": pa.array([_dumps(o) for o in objs], type=pa.string())})


def json_rows(rec: Recording, name: str) -> list:
    t = rec.tables.get(name)
    return [] if t is None else [json.loads(v) for v in t.column("json").to_pylist()]


def iter_records(rec: Recording, chunk: int = 256, only=None):
    """The interval records of a recording, ``chunk`` intervals decoded at a time (memory stays
    that of a chunk, whatever the recording's length); with ``only``, of the row tables only those
    are decoded (the others' lists stay empty)."""
    import numpy as np
    itab = rec.tables.get("intervals")
    if itab is None or itab.num_rows == 0:
        return
    ids = itab.column("interval").to_numpy()
    order = np.argsort(ids, kind="stable")
    if not (order == np.arange(len(ids))).all():        # not in order (never written so): sort once
        rec = Recording(rec.path, rec.meta, {k: t.sort_by("interval") for k, t in rec.tables.items()
                                             if "interval" in t.column_names}, rec.truncated, rec.segments)
        itab = rec.tables["intervals"]
        ids = itab.column("interval").to_numpy()
    cols = {name: rec.tables[name].column("interval").to_numpy() for name in ROW_TABLES
            if name in rec.tables and (only is None or name in only)}
    for start in range(0, len(ids), chunk):
        lo, hi = ids[start], ids[min(start + chunk, len(ids)) - 1]
        part = {"intervals": itab.slice(start, min(chunk, len(ids) - start))}
        for name, iv in cols.items():
            a, b = np.searchsorted(iv, lo, "left"), np.searchsorted(iv, hi, "right")
            part[name] = rec.tables[name].slice(a, b - a)
        yield from records(Recording(rec.path, rec.meta, part, 0, 0))
