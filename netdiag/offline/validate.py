"""What `report` reads from a file, checked once where it comes in: a `watch --json` interval
object (NDJSON), and a recording's header, tables and JSON columns. One description of the
interval record (docs/contracts.md) serves both, so the diagnosis and the pandas tables after it
only ever see values of the types the contract names. Anything else is ``BadInput`` (one line,
exit 65) naming the file, the line or table, and the field."""
from __future__ import annotations

import json
import math
import re

from netdiag.errors import BadInput

INT64 = 2 ** 63
MAX_DEPTH = 32                  # nesting of any JSON value a record may hold (evidence, extra keys)
_ENDPOINT = re.compile(r"(\[[0-9A-Za-z:.%_-]*\]|[0-9A-Za-z.%_-]*):[0-9]{1,5}")
_HIST_KEY = re.compile(r"[0-9]{1,19}us")


class F:
    """One field: ``kind`` (below), ``req`` (must be there), ``null`` (may be null), ``rows``/``obj``
    (the spec of each row of a list / of an object), ``values`` (an enum)."""
    __slots__ = ("kind", "req", "null", "spec", "values")

    def __init__(self, kind, req=False, null=False, spec=None, values=None):
        self.kind, self.req, self.null, self.spec, self.values = kind, req, null, spec, values


def count(req=False, null=False):
    return F("count", req, null)


def num(req=False, null=False):
    return F("num", req, null)


def string(req=False, null=True):
    return F("str", req, null)


COUNTS = ("connects", "established", "failed", "active", "resets_in", "resets_out", "syn_retrans")

DESTINATION = {
    "dst": F("endpoint", True), "direction": F("enum", True, values=("out", "in")), "netns": F("int", True),
    "netns_name": string(), "domain": string(), "pod": string(), "domain_source": string(),
    **{c: count(True) for c in COUNTS}, "retrans": count(), "accepts": count(null=True),
    "connect_ms_avg": num(null=True), "failed_by_errno": F("counts", True), "resets_out_by_reason": F("counts", null=True),
    "snat": F("obj", null=True, spec={
        "ports_in_use": count(null=True), "port_range": count(null=True), "utilization": num(null=True),
        "allocations": count(null=True), "failed_allocations": count(null=True), "insert_failed": count(null=True),
        "drop": count(null=True), "nat_ip": string(), "netns": F("int", null=True), "netns_name": string()}),
    "by_process": F("rows", null=True, spec={"pid": F("int", True), "connects": count(True),
                                             "established": count(True), "failed": count(True)}),
    "domain_by": string(),
    "domain_split": F("rows", null=True, spec={"domain": string(True), "connects": count(True),
                                               "established": count(True), "failed": count(True),
                                               "pids": F("ints", null=True), "by": string()}),
    "domain_chain": F("any", null=True), "domain_ties": F("any", null=True), "domain_expired": F("any", null=True),
}
LISTENER = {
    "listen": F("endpoint", True), "netns": F("int", True), "netns_name": string(), "queue": count(),
    "max_queue": count(), "backlog": count(), "established": count(), "accepts": count(null=True),
    "synack_retrans": count(), "resets_in": count(), "resets_out": count(), "overflows": count(),
    "listen_drops_netns": count(), "inode": F("int"), "overflows_shared": F("bool"), "pod": string(),
}
NAT = {
    "netns": F("int", True), "netns_name": string(), "nat_ip": string(), "dst": F("endpoint", True),
    "proto": string(), "ports_in_use": count(), "peak_in_use": count(), "port_range": count(null=True),
    "utilization": num(null=True), "peak_utilization": num(null=True), "allocations": count(), "releases": count(),
    "insert_failed": count(), "drop": count(), "failed_allocations": count(),
}
CONNTRACK_NETNS = {
    "netns": F("int", True), "name": string(), "entries": count(null=True), "max": count(null=True),
    "fill": num(null=True), "fill_warning": F("bool", null=True), "insert_failed": count(), "drop": count(),
    "early_drop": count(), "clash_resolve": count(),
}
ROLLUP = {"domain": string(), "pod": string(), **{c: count() for c in COUNTS}, "retrans": count()}
PROCESS = {"pid": F("int", True), "comm": string(), "netns": F("int", True), "netns_name": string(),
           "pod": string(), "connects": count(), "established": count(), "failed": count(), "resets_in": count(),
           "resets_out": count(), "accepts": count(null=True), "inbound": count(), "inbound_via": string(),
           "listens": F("endpoints", null=True)}
VERDICT = {
    "kind": string(True, null=False), "dst": string(), "listener": string(), "where": string(),
    "domain": string(), "pods": F("strs", null=True), "evidence": F("obj", null=True), "advice": string(),
    "netns": F("int", null=True), "netns_name": string(), "first_ts": num(null=True), "last_ts": num(null=True),
    "intervals": count(null=True),
}
NODE_TOTALS = {
    **{c: count() for c in COUNTS}, "retrans": count(), "listen_overflows": count(), "drops": count(),
    "drops_by_reason": F("counts", null=True), "connect_latency_hist": F("hist", null=True),
    "conntrack": F("obj", null=True, spec={"entries": count(null=True), "max": count(null=True),
                                           "fill": num(null=True)}),
    "allowance_exceeded": F("nums", null=True), "allowance_available": F("nums", null=True),
}
DNS = {
    "pps": num(null=True), "packets": count(null=True), "queries": count(null=True), "interval_s": num(null=True),
    "netns": F("rows", null=True, spec={"netns": F("int", True), "pod": string(), "netns_name": string(),
                                        "packets": count(), "pps": num(), "queries": count()}),
    "domains": F("rows", null=True, spec={"domain": string(True), "packets": count()}),
}
ROWS = {"destinations": DESTINATION, "listeners": LISTENER, "nat": NAT, "conntrack_netns": CONNTRACK_NETNS,
        "domains": ROLLUP, "pods": ROLLUP, "processes": PROCESS, "verdicts": VERDICT}
INTERVAL = {
    "type": F("enum", values=("interval",)), "ts": num(True), "node": string(), "interval_s": num(null=True),
    "modes": F("obj", null=True), "lost_events": count(null=True), "evictions": count(null=True),
    "evictions_total": count(null=True), "map_entries": count(null=True), "map_max": count(null=True),
    "socket_map_entries": count(null=True), "socket_map_max": count(null=True), "seeding": F("bool", null=True),
    "unmeasured": F("obj", null=True), "node_totals": F("obj", null=True, spec=NODE_TOTALS),
    "dns": F("obj", null=True, spec=DNS), "process_evictions": count(null=True),
    "process_map_entries": count(null=True), "process_map_max": count(null=True),
    "destinations": F("rows", True, spec=DESTINATION),
    **{k: F("rows", null=True, spec=v) for k, v in ROWS.items() if k != "destinations"},
}


SNAPSHOT = {"node": string(), "ts": num(null=True), "hostname": string(), "kernel": string(),
            "sysctls": F("obj", null=True), "namespaces": count(null=True), "errors": F("any", null=True)}


class _Bad(Exception):
    pass


def _expect(path: str, what: str, v) -> _Bad:
    shown = json.dumps(v, default=str)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return _Bad(f"{path}: expected {what}, not {shown}")


def depth_ok(v, limit: int = MAX_DEPTH) -> bool:
    """No list or object nested deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(v, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            if d >= limit:
                return False
            stack.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            if d >= limit:
                return False
            stack.extend((y, d + 1) for y in x)
    return True


def _utf8(s: str) -> bool:
    """No lone surrogate (JSON's "\\ud800"): the string can be written as UTF-8."""
    if s.isascii():
        return True
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def no_lone_surrogates(obj, raw: bytes) -> None:
    """ValueError when a JSON text's escapes (``"\\ud800"``) made a string or key that cannot be
    written as UTF-8; looked at only when ``raw`` holds such an escape (a pair is fine)."""
    if not _SURROGATE_ESCAPE.search(raw):
        return
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("a lone surrogate") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -INT64 <= v < INT64


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e300


def _field(v, f: F, path: str) -> None:
    if v is None:
        if f.null:
            return
        raise _expect(path, f"a value ({f.kind})", v)
    k = f.kind
    if k == "count":
        if not (_is_int(v) and v >= 0):
            raise _expect(path, "a count (an integer >= 0)", v)
    elif k == "int":
        if not _is_int(v):
            raise _expect(path, "an integer", v)
    elif k == "num":
        if not _is_num(v):
            raise _expect(path, "a finite number", v)
    elif k == "str":
        if not isinstance(v, str) or not _utf8(v):
            raise _expect(path, "a string", v)
    elif k == "bool":
        if not isinstance(v, bool):
            raise _expect(path, "true or false", v)
    elif k == "enum":
        if v not in f.values:
            raise _expect(path, " or ".join(map(repr, f.values)), v)
    elif k == "endpoint":
        if not (isinstance(v, str) and _utf8(v) and _ENDPOINT.fullmatch(v) and int(v.rpartition(":")[2]) <= 65535):
            raise _expect(path, "ip:port", v)
    elif k == "endpoints":
        if not isinstance(v, list):
            raise _expect(path, "a list of ip:port", v)
        for i, x in enumerate(v):
            _field(x, F("endpoint"), f"{path}[{i}]")
    elif k in ("counts", "hist", "nums"):
        if not isinstance(v, dict):
            raise _expect(path, "an object of counts", v)
        for key, n in v.items():
            ok = _is_num(n) if k == "nums" else (_is_int(n) and n >= 0)
            if not ok or (k == "hist" and not _HIST_KEY.fullmatch(key)):
                raise _expect(f"{path}.{key}", "a count" + (" keyed by a bucket such as 64us" if k == "hist" else ""), n)
    elif k in ("strs", "ints"):
        if not isinstance(v, list) or not all(isinstance(x, str) if k == "strs" else _is_int(x) for x in v):
            raise _expect(path, "a list of " + ("strings" if k == "strs" else "integers"), v)
    elif k == "obj":
        if not isinstance(v, dict):
            raise _expect(path, "an object", v)
        if f.spec is not None:
            _object(v, f.spec, path)
        elif not depth_ok(v):
            raise _Bad(f"{path}: nested deeper than {MAX_DEPTH}")
    elif k == "rows":
        if not isinstance(v, list):
            raise _expect(path, "a list", v)
        for i, row in enumerate(v):
            if not isinstance(row, dict):
                raise _expect(f"{path}[{i}]", "an object", row)
            _object(row, f.spec, f"{path}[{i}]")
    elif k == "any":
        if not depth_ok(v):
            raise _Bad(f"{path}: nested deeper than {MAX_DEPTH}")


def _object(obj: dict, spec: dict, path: str, partial: bool = False) -> None:
    for name, f in spec.items():
        if name in obj:
            _field(obj[name], f, f"{path}.{name}" if path else name)
        elif f.req and not partial:
            raise _Bad(f"{path + '.' if path else ''}{name}: missing")
    for name, v in obj.items():
        if name not in spec and isinstance(v, (dict, list)) and not depth_ok(v):
            raise _Bad(f"{path + '.' if path else ''}{name}: nested deeper than {MAX_DEPTH}")


def interval(obj, where: str) -> dict:
    """``obj`` as an interval record, or BadInput naming ``where`` (file:line) and the field."""
    if not isinstance(obj, dict):
        raise BadInput(f"{where}: not a watch --json object")
    try:
        _object(obj, INTERVAL, "")
    except _Bad as e:
        raise BadInput(f"{where}: interval object: {e}") from None
    return obj


def row(obj, spec: dict, where: str, partial: bool = True) -> None:
    """One row (or, ``partial``, the part of it a recording's ``extra`` column holds)."""
    try:
        _object(obj, spec, "", partial=partial)
    except _Bad as e:
        raise BadInput(f"{where}: {e}") from None


def json_value(text, where: str):
    """A JSON column's value; BadInput when it is not JSON (or nested too deep)."""
    try:
        v = json.loads(text)
        no_lone_surrogates(v, text.encode("utf-8", "surrogatepass"))
    except (ValueError, TypeError, RecursionError, AttributeError):
        raise BadInput(f"{where}: not JSON") from None
    if not depth_ok(v):
        raise BadInput(f"{where}: nested deeper than {MAX_DEPTH}")
    return v


# -- recordings ---------------------------------------------------------------------------------------
def recording(rec) -> None:
    """A recording's header and tables (format.read gave them): every declared column there with
    its type, interval/ts set and finite, strings valid UTF-8, each distinct value of a JSON column
    (and of ``extra``) of the shape its field has. Raises BadInput; costs a pass over the distinct
    JSON values, not over the rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from netdiag.offline import format as fm
    path = rec.path
    meta = rec.meta
    for key, typ in (("context", dict), ("info", dict), ("kind", str), ("snapshot", dict),
                     ("flight_recorder", dict)):
        if meta.get(key) is not None and not isinstance(meta[key], typ):
            raise BadInput(f"{path}: corrupt header ({key!r} is not {'an object' if typ is dict else 'a string'})")
    if not depth_ok(meta):
        raise BadInput(f"{path}: corrupt header (nested deeper than {MAX_DEPTH})")
    ctx = meta.get("context") or {}
    if ctx.get("node") is not None and not isinstance(ctx["node"], str):
        raise BadInput(f"{path}: corrupt header (context.node is not a string)")
    snapshot = meta.get("kind") == "snapshot"
    if snapshot:
        try:
            _object(meta.get("snapshot") or {}, SNAPSHOT, "snapshot")
        except _Bad as e:
            raise BadInput(f"{path}: corrupt header ({e})") from None
    interval_spec = {**{c: t for c, t in fm.INTERVAL_COLUMNS}, **{"nt_" + c: t for c, t in fm.NODE_TOTAL_COLUMNS}}
    specs = {"intervals": (interval_spec, INTERVAL),
             **{name: (dict(cols), ROWS[name]) for name, cols in fm.ROW_TABLES.items()}}
    for name, table in list(rec.tables.items()):
        # the file's own schema metadata (pandas' index and dtypes, extension types) is not
        # trusted: the tables are read as the plain columns they hold
        try:
            table = pa.Table.from_arrays(table.columns, names=table.column_names)
            table.validate(full=True)               # offsets in range, strings UTF-8 (names too)
        except (pa.ArrowException, ValueError) as e:
            raise BadInput(f"{path}: corrupt table {name!r}: {str(e).splitlines()[0]}") from None
        rec.tables[name] = table
        if name in ("summary",) or snapshot:
            if name == "summary":
                if table.schema.names != ["json"] or table.schema.field("json").type != pa.string():
                    raise BadInput(f"{path}: corrupt table 'summary' (not one JSON column)")
                for i, v in enumerate(table.column("json").to_pylist()):
                    if not isinstance(json_value(v, f"{path}: summary row {i}"), dict):
                        raise BadInput(f"{path}: summary row {i}: not an object")
            continue
        if name not in specs:
            continue                                # a table a later netdiag adds: not read
        columns, row_spec = specs[name]
        want = {"interval": fm.I_, "ts": fm.F, "node": fm.S, **columns, "extra": fm.J}
        for col, typ in want.items():
            if col not in table.column_names:
                raise BadInput(f"{path}: table {name!r} has no column {col!r}")
            if table.schema.field(col).type != fm._arrow_type(typ):
                raise BadInput(f"{path}: table {name!r}: column {col!r} is {table.schema.field(col).type}, "
                               f"not {fm._arrow_type(typ)}")
        if table.column_names != list(want):        # only the declared columns, once each, in order
            if len(set(table.column_names)) != len(table.column_names):
                raise BadInput(f"{path}: table {name!r}: a column twice")
            table = table.select(list(want))
            rec.tables[name] = table
        if table.num_rows == 0:
            continue
        if table.column("interval").null_count or table.column("ts").null_count:
            raise BadInput(f"{path}: table {name!r}: a row without interval or ts")
        if not pc.all(pc.is_finite(table.column("ts"))).as_py():
            raise BadInput(f"{path}: table {name!r}: a ts that is not a finite number")
        where = f"{path}: table {name!r}"
        for col, typ in columns.items():
            f = row_spec.get(col) if name != "intervals" else _interval_field(col)
            data = table.column(col)
            if f is None:
                continue
            if typ == fm.J:
                for v in pc.unique(data).to_pylist():
                    if v is not None:
                        _check(json_value(v, f"{where}: column {col!r}"), f, f"{where}: column {col!r}")
            elif typ == fm.I_ and f.kind == "count" and data.null_count < len(data):
                if pc.min(data).as_py() < 0:
                    raise BadInput(f"{where}: column {col!r}: a negative count")
            elif typ == fm.F and data.null_count < len(data):
                if not pc.all(pc.is_finite(pc.drop_null(data))).as_py():
                    raise BadInput(f"{where}: column {col!r}: a number that is not finite")
            if f.req and data.null_count:
                raise BadInput(f"{where}: column {col!r}: missing in a row")
        if name == "intervals" and table.column("extra").null_count:
            raise BadInput(f"{where}: an interval without its list of tables")
        for v in pc.unique(table.column("extra")).to_pylist():
            if v is None:
                continue
            extra = json_value(v, f"{where}: column 'extra'")
            if not isinstance(extra, dict):
                raise BadInput(f"{where}: column 'extra': not an object")
            if name == "intervals":
                _interval_extra(extra, where)
            else:
                row(extra, row_spec, f"{where}: column 'extra'")


def _interval_field(col: str):
    if col.startswith("nt_"):
        return NODE_TOTALS.get(col[3:])
    return INTERVAL.get(col)


def _interval_extra(extra: dict, where: str) -> None:
    from netdiag.offline import format as fm
    lists = extra.get("__lists", [])
    if not isinstance(lists, list) or not all(x in fm.ROW_TABLES for x in lists) or "destinations" not in lists:
        raise BadInput(f"{where}: column 'extra': __lists is not a list of tables with destinations")
    for k, v in extra.items():
        if k.startswith("__"):
            continue
        f = _interval_field(k)
        if f is not None:
            _check(v, f, f"{where}: column 'extra'", k)
        elif not depth_ok(v):
            raise BadInput(f"{where}: column 'extra': {k}: nested deeper than {MAX_DEPTH}")


def _check(v, f: F, where: str, name: str = "value") -> None:
    try:
        _field(v, f, name)
    except _Bad as e:
        raise BadInput(f"{where}: {e}") from None
