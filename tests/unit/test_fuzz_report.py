"""`netdiag report` against mutated input: a small valid recording written by netdiag's own
recorder, then truncated, bit-flipped, overwritten, given garbage segments, other schemas, other
headers and other JSON in its JSON columns; and valid `watch --json` intervals (tests/data/golden)
with values of other types, missing fields, huge numbers, deep nesting and invalid UTF-8.

Every case runs the whole command in-process (`netdiag.cli.main`, as the console script does) under
a time limit and must end in success (exit 0) or the one-line error of bad input (exit 65): never a
traceback, never a hang. Hypothesis runs derandomized (the same cases every run) and bounded; the
case counts are in docs/reliability.md."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from netdiag.cli import main  # noqa: E402
from netdiag.offline import format as fm  # noqa: E402

from .test_recording import CTX, diagnosed, golden  # noqa: E402

pytest.importorskip("pandas")

LIMIT_S = 20.0            # one case; a loaded 2-core box runs one in well under a second

# how many cases each strategy runs (documented in docs/reliability.md: keep them in step)
# (a case that passes validation costs a whole report, ~0.1 s; NETDIAG_FUZZ_SCALE=4 runs four times
# as many, as docs/reliability.md's deeper run did)
EXAMPLES = {
    "truncate": 60, "bitflip": 150, "overwrite": 100, "garbage_segment": 80, "schema": 60,
    "header": 80, "json_column": 100, "ndjson_value": 150, "ndjson_delete": 60, "ndjson_raw": 120,
    "snapshot": 60,
}
SCALE = float(os.environ.get("NETDIAG_FUZZ_SCALE", "1"))


def fuzz(name):
    return settings(max_examples=max(1, int(EXAMPLES[name] * SCALE)), derandomize=True, database=None,
                    deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang(f"report ran longer than {LIMIT_S} s")


def run_report(path, *extra, json_out=True):
    """`netdiag report PATH --json` (or the text report) in-process: (exit code, stdout, stderr).
    Anything but SystemExit escaping main() is a crash (the user would see a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(["report", str(path), *(["--json"] if json_out else []), *extra])
    except SystemExit as e:
        code = e.code
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return code, out.getvalue(), err.getvalue()


def check(path, *extra):
    code, out, err = run_report(path, *extra)
    assert "Traceback" not in err
    if code == 0:
        json.loads(out)                     # a whole report
        return code
    assert code == 65, (code, err)
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("netdiag: error: "), err
    assert len([x for x in lines if x.startswith("netdiag: error")]) == 1, err
    return code


# -- the valid inputs ---------------------------------------------------------------------------
RECORDS = diagnosed("snat-cap")[:3] + diagnosed("listen-overflow")[:2]
META = {"context": dict(CTX, node="vm"), "info": {}, "flight_recorder": None}


def segments(tables: dict) -> bytes:
    return b"".join(fm.segment(n, t) for n, t in tables.items()) + fm.commit()


def recording(tables=None, meta=None) -> bytes:
    """Two flushes: the first three intervals, then (``tables``, default the encoded last two)
    the rest with the run's summary."""
    first = segments(fm.encode(RECORDS[:3], 0, "vm"))
    tables = fm.encode(RECORDS[3:], 3, "vm") if tables is None else tables
    summary = {"summary": fm.json_table([{"type": "summary", "intervals": len(RECORDS)}])}
    return fm.header(META if meta is None else meta) + first + segments({**tables, **summary})


VALID = recording()
NDJSON_LINES = [json.dumps(r) for r in golden("snat-cap")[:3] + golden("listen-overflow")[:2]]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def write(work, name: str, data: bytes):
    p = work / name
    p.write_bytes(data)
    return p


def test_the_unmutated_inputs_report(work):
    assert check(write(work, "v.ndrec", VALID)) == 0
    assert check(write(work, "v.ndjson", ("\n".join(NDJSON_LINES) + "\n").encode())) == 0


# -- recordings ---------------------------------------------------------------------------------
@fuzz("truncate")
@given(cut=st.integers(0, len(VALID) - 1))
def test_truncated_recording(work, cut):
    check(write(work, "t.ndrec", VALID[:cut]))


@fuzz("bitflip")
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flipped_recording(work, flips):
    data = bytearray(VALID)
    for off, bit in flips:
        data[off] ^= 1 << bit
    check(write(work, "b.ndrec", bytes(data)))


@fuzz("overwrite")
@given(off=st.integers(0, len(VALID) - 1), junk=st.binary(min_size=1, max_size=64))
def test_overwritten_recording(work, off, junk):
    data = VALID[:off] + junk + VALID[off + len(junk):]
    check(write(work, "o.ndrec", data))


SEGMENT_NAMES = list(fm.TABLES) + ["summary", "commit", "", "x" * 300]


@fuzz("garbage_segment")
@given(name=st.sampled_from(SEGMENT_NAMES), payload=st.binary(max_size=300),
       size_delta=st.sampled_from([0, 0, 0, 1, -1, 2 ** 40]), committed=st.booleans(), at_end=st.booleans())
def test_garbage_segment(work, name, payload, size_delta, committed, at_end):
    nb = name.encode()
    size = max(0, len(payload) + size_delta)
    seg = fm.SEGMENT + struct.pack("<H", len(nb)) + nb + struct.pack("<Q", size) + payload
    if committed:
        seg += fm.commit()
    head = len(fm.header(META))
    data = VALID + seg if at_end else VALID[:head] + seg + VALID[head:]
    check(write(work, "g.ndrec", data))


def _junk_array(kind: str, n: int):
    import pyarrow as pa
    return {"str": pa.array(["x"] * n), "int": pa.array(list(range(n)), pa.int64()),
            "float": pa.array([math.nan] * n), "null": pa.nulls(n), "bool": pa.array([True] * n),
            "list": pa.array([[1]] * n), "big": pa.array([2 ** 62] * n, pa.int64()),
            "neg": pa.array([-5] * n, pa.int64()), "json": pa.array(['{"a": "b"}'] * n)}[kind]


@fuzz("schema")
@given(data=st.data())
def test_other_schema(work, data):
    tables = fm.encode(RECORDS[3:], 3, "vm")
    name = data.draw(st.sampled_from(sorted(tables)))
    t = tables[name]
    op = data.draw(st.sampled_from(["drop", "retype", "rename", "add", "empty", "rename_table", "dup_interval",
                                    "pandas_meta", "dup_column"]))
    col = data.draw(st.sampled_from(t.column_names))
    if op == "drop":
        t = t.drop_columns([col])
    elif op == "retype":
        i = t.column_names.index(col)
        t = t.set_column(i, col, _junk_array(data.draw(st.sampled_from(
            ["str", "int", "float", "null", "bool", "list", "big", "neg", "json"])), t.num_rows))
    elif op == "rename":
        t = t.rename_columns([c if c != col else col + "_x" for c in t.column_names])
    elif op == "add":
        t = t.append_column("junk", _junk_array("str", t.num_rows))
    elif op == "empty":
        t = t.slice(0, 0)
    elif op == "dup_interval":
        import pyarrow as pa
        t = pa.concat_tables([t, t])
    elif op == "pandas_meta":                   # pandas' own metadata, as a hostile writer would set it
        t = t.replace_schema_metadata({b"pandas": data.draw(st.sampled_from(
            [b"{", b'{"columns": 5}', b'{"index_columns": ["nope"], "columns": []}', b"[]"]))})
    elif op == "dup_column":
        t = t.append_column(col, t.column(col))
    tables[name] = t
    if op == "rename_table":
        tables[data.draw(st.sampled_from(["summary", "nope", "intervals"]))] = tables.pop(name)
    check(write(work, "s.ndrec", recording(tables)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


@fuzz("header")
@given(data=st.data())
def test_other_header(work, data):
    meta = {"format": fm.FORMAT, "version": fm.VERSION, **META}
    key = data.draw(st.sampled_from(["format", "version", "context", "kind", "info", "snapshot", "node"]))
    if data.draw(st.booleans()):
        meta[key] = data.draw(json_values)
    else:
        meta.pop(key, None)
    if meta.get("kind") == "snapshot" and data.draw(st.booleans()):
        meta["snapshot"] = data.draw(json_values)
    body = json.dumps(meta).encode()
    n = len(body) + data.draw(st.sampled_from([0, 0, 0, 1, -1, 1000]))
    blob = fm.MAGIC + struct.pack("<I", max(0, n)) + body + VALID[len(fm.header(META)):]
    check(write(work, "h.ndrec", blob))


JSON_COLUMNS = [(name, c) for name, spec in [("intervals", fm.INTERVAL_COLUMNS
                                              + [("nt_" + c, t) for c, t in fm.NODE_TOTAL_COLUMNS]),
                                             *fm.ROW_TABLES.items()]
                for c, t in spec if t == fm.J] + [(name, "extra") for name in fm.TABLES]


@fuzz("json_column")
@given(where=st.sampled_from(JSON_COLUMNS), data=st.data())
def test_other_json_in_json_columns(work, where, data):
    import pyarrow as pa
    tables = fm.encode(RECORDS[3:], 3, "vm")
    name, col = where
    t = tables[name]
    if t.num_rows == 0 or col not in t.column_names:
        return
    raw = data.draw(st.one_of(st.text(max_size=30), json_values.map(json.dumps),
                              st.just("[" * 5000 + "]" * 5000), st.just('{"\\ud800": 1}'),
                              st.just('"\\udfff"')))
    t = t.set_column(t.column_names.index(col), col, pa.array([raw] * t.num_rows, pa.string()))
    tables[name] = t
    check(write(work, "j.ndrec", recording(tables)))


# -- NDJSON ------------------------------------------------------------------------------------------
def _paths(obj, prefix=()):
    """Every path (tuple of keys/indices) into a JSON object."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value=None, delete=False):
    for k in path[:-1]:
        obj = obj[k]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


PATHS = [[p for p in _paths(json.loads(line)) if p] for line in NDJSON_LINES]
extreme_values = st.sampled_from([10 ** 30, -(10 ** 30), 2 ** 63, -1, 1e308, -1e308, 0.5, "NaN", "", {}, [],
                                  None, True, "x" * 10000, [[[[[]]]]], {"": {"": {}}}])


def ndjson(lines) -> bytes:
    return b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)


@fuzz("ndjson_value")
@given(line=st.integers(0, len(NDJSON_LINES) - 1), data=st.data())
def test_ndjson_values_of_other_types(work, line, data):
    obj = json.loads(NDJSON_LINES[line])
    path = data.draw(st.sampled_from(PATHS[line]))
    _set(obj, path, data.draw(st.one_of(json_values, extreme_values)))
    lines = list(NDJSON_LINES)
    lines[line] = json.dumps(obj)
    check(write(work, "v.ndjson", ndjson(lines)))


@fuzz("ndjson_delete")
@given(line=st.integers(0, len(NDJSON_LINES) - 1), data=st.data())
def test_ndjson_missing_fields(work, line, data):
    obj = json.loads(NDJSON_LINES[line])
    path = data.draw(st.sampled_from(PATHS[line]))
    _set(obj, path, delete=True)
    lines = list(NDJSON_LINES)
    lines[line] = json.dumps(obj)
    check(write(work, "d.ndjson", ndjson(lines)))


@fuzz("ndjson_raw")
@given(line=st.integers(0, len(NDJSON_LINES) - 1), data=st.data())
def test_ndjson_raw_bytes(work, line, data):
    raw = NDJSON_LINES[line].encode()
    how = data.draw(st.sampled_from(["utf8", "nest", "cut", "splice", "nan", "dup", "surrogate"]))
    if how == "utf8":
        off = data.draw(st.integers(0, len(raw)))
        raw = raw[:off] + data.draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"])) + raw[off:]
    elif how == "nest":
        depth = data.draw(st.sampled_from([10, 1000, 100_000]))
        raw = raw[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    elif how == "cut":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif how == "splice":
        off = data.draw(st.integers(0, len(raw)))
        raw = raw[:off] + data.draw(st.binary(max_size=16)) + raw[off:]
    elif how == "surrogate":                    # valid JSON, but no UTF-8 string can hold it
        raw = raw.replace(b'"dst":"', b'"dst":"\\ud800', 1).replace(b'"node":"', b'"node":"\\udc00', 1)
    elif how == "nan":
        raw = raw.replace(b'"ts":', b'"ts":NaN,"was":', 1)
    else:
        raw = raw[:-1] + b',"ts":-Infinity}'
    lines = [x.encode() for x in NDJSON_LINES]
    lines[line] = raw
    check(write(work, "r.ndjson", ndjson(lines)))


# -- snapshots ---------------------------------------------------------------------------------------
SNAP_META = {"kind": "snapshot", "context": dict(CTX, node="vm"),
             "snapshot": {"node": "vm", "ts": 1714533120.0, "hostname": "vm", "kernel": "6.1.0",
                          "sysctls": {"net.ipv4.ip_local_port_range": "32768 60999"}, "namespaces": 1, "errors": []}}


def snapshot_tables():
    import pyarrow as pa
    return {"sockets": pa.table({"netns": [1], "netns_name": ["host"], "state": ["ESTABLISHED"], "count": [3]}),
            "listeners": pa.table({"netns": [1], "netns_name": ["host"], "listen": ["0.0.0.0:22"], "queue": [0],
                                   "backlog": [128]})}


@fuzz("snapshot")
@given(data=st.data())
def test_mutated_snapshot(work, data):
    import copy
    meta = copy.deepcopy(SNAP_META)
    key = data.draw(st.sampled_from(sorted(meta["snapshot"]) + ["snapshot", "context"]))
    value = data.draw(st.one_of(json_values, extreme_values))
    if key in ("snapshot", "context"):
        meta[key] = value
    else:
        meta["snapshot"][key] = value
    tables = snapshot_tables()
    if data.draw(st.booleans()):
        name = data.draw(st.sampled_from(sorted(tables)))
        t = tables[name]
        col = data.draw(st.sampled_from(t.column_names))
        t = t.set_column(t.column_names.index(col), col, _junk_array(data.draw(st.sampled_from(
            ["str", "int", "float", "null", "list", "json"])), t.num_rows))
        tables[name] = t
    blob = fm.header(meta) + segments(tables)
    for json_out in (True, False):
        code, out, err = run_report(write(work, "n.ndsnap", blob), json_out=json_out)
        assert "Traceback" not in err and code in (0, 65), (code, err)
