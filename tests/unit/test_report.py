"""`netdiag report` without root: the diagnosis replayed over recorded lab intervals gives the
labs' verdicts, tables are exact, several nodes side by side, plots of the promised shape, and
bad input is one line with its exit code."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from netdiag.offline import format as fm
from netdiag.offline import report as rp
from netdiag.sinks.recorder import Recorder

from .test_recording import CTX, GOLDEN, diagnosed, golden

EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
NUMBERS = ("cap", "backlog", "timeout_s", "peak_per_ms", "connects_per_active")


def record(path, recs, node=None, summary=None):
    rec = Recorder(path, node=node, context=dict(CTX, node=node or "vm"), flush_s=1e9)
    rec.open({})
    for r in recs:
        rec.interval(r)
    rec.close(summary)
    return path


def netdiag(*args):
    p = subprocess.run([sys.executable, "-m", "netdiag", *map(str, args)], capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replay_gives_each_labs_verdict_and_number(tmp_path, name):
    f = record(tmp_path / f"{name}.ndrec", diagnosed(name))
    rep = rp.Report([rp.load(f)])
    got = [{"kind": v["kind"], "target": v.get("dst") or v.get("listener"),
            **{k: v[k] for k in NUMBERS if k in v}} for v in rep.verdicts]
    assert got == EXPECTED[name]["verdicts"]
    assert rep.replay_matches == {"vm": True}           # each interval's verdicts, as recorded


def test_replay_equals_the_live_diagnosis_field_for_field(tmp_path):
    d_live = __import__("netdiag.analysis.diagnose", fromlist=["Diagnoser"]).Diagnoser()
    for r in golden("idle-timeout"):
        d_live.update(r)
    f = record(tmp_path / "i.ndrec", diagnosed("idle-timeout"))
    rep = rp.Report([rp.load(f)])
    assert [{k: v for k, v in x.items() if k != "node"} for x in rep.verdicts] == d_live.all()


def test_ndjson_and_recording_give_the_same_report(tmp_path):
    recs = diagnosed("snat-cap")
    nd = tmp_path / "n.ndjson"
    nd.write_text("".join(json.dumps(r) + "\n" for r in recs))
    a = rp.Report([rp.load(nd)]).as_json()
    b = rp.Report([rp.load(record(tmp_path / "r.ndrec", recs))]).as_json()
    for k in ("verdicts", "tables", "nodes"):
        assert a[k] == b[k]


def test_destination_table_is_exact(tmp_path):
    recs = golden("remote-cap")
    rep = rp.Report([rp.load(record(tmp_path / "r.ndrec", recs))])
    t = rep.tables["destinations"]
    out = t[t["direction"] == "out"].iloc[0]
    rows = [d for r in recs for d in r["destinations"] if d["direction"] == "out"]
    assert out["connects"] == sum(d["connects"] for d in rows)
    assert out["failed"] == sum(d["failed"] for d in rows)
    assert out["syn_retrans"] == sum(d["syn_retrans"] for d in rows)
    peak = max(d["active"] for d in rows)
    assert out["peak_active"] == peak
    first = next(r["ts"] for r in recs for d in r["destinations"] if d["direction"] == "out" and d["active"] == peak)
    assert out["peak_ts"] == first
    for errno_name in {e for d in rows for e in d["failed_by_errno"]}:
        assert out["failed_" + errno_name] == sum(d["failed_by_errno"].get(errno_name, 0) for d in rows)


def test_two_nodes_side_by_side(tmp_path):
    a = record(tmp_path / "a.ndrec", golden("snat-cap"), node="node-a")
    b = record(tmp_path / "b.ndrec", golden("churn"), node="node-b")
    rep = rp.Report([rp.load(a), rp.load(b)])
    nodes = rep.tables["nodes"].set_index("node")
    assert list(nodes.index) == ["node-a", "node-b"]
    for node, name in (("node-a", "snat-cap"), ("node-b", "churn")):
        recs = golden(name)
        assert nodes.loc[node, "connects"] == sum(r["node_totals"]["connects"] for r in recs)
        assert nodes.loc[node, "peak_active"] == max(r["node_totals"]["active"] for r in recs)
        assert nodes.loc[node, "intervals"] == len(recs)
    tot = rep.tables["node_totals"].iloc[0]
    assert tot["connects"] == nodes["connects"].sum()
    assert {v["node"]: v["kind"] for v in rep.verdicts} == {"node-a": "snat_port_exhaustion",
                                                           "node-b": "connection_churn"}
    assert len(rp.Report([rp.load(a), rp.load(b)], filters=rp.Filters(node="node-b")).nodes) == 1


def test_since_until_and_dst_filter(tmp_path):
    recs = golden("idle-timeout")
    f = record(tmp_path / "r.ndrec", recs)
    mid = recs[len(recs) // 2]["ts"]
    rep = rp.Report([rp.load(f)], filters=rp.Filters(since=mid))
    assert rep.tables["nodes"].iloc[0]["intervals"] == sum(1 for r in recs if r["ts"] >= mid)
    rep = rp.Report([rp.load(f)], filters=rp.Filters(dst="10.0.0.0/8"))
    assert rep.verdicts == [] and "destinations" not in rep.tables


def test_thresholds_change_the_diagnosis(tmp_path):
    f = record(tmp_path / "r.ndrec", golden("listen-overflow"))
    assert rp.Report([rp.load(f)]).verdicts
    strict = rp.thresholds(["overflow_min=1000000"])
    assert rp.Report([rp.load(f)], strict).verdicts == []
    with pytest.raises(ValueError, match="unknown threshold"):
        rp.thresholds(["nope=1"])


def _png_size(p: Path):
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_pngs_and_html(tmp_path):
    from netdiag.offline import plots
    f = record(tmp_path / "r.ndrec", diagnosed("snat-cap"))
    rep = rp.Report([rp.load(f)])
    paths = plots.write_pngs(rep, tmp_path / "png")
    assert sorted(p.name for p in paths) == sorted(f"{n}.png" for n in plots.PLOTS) and len(paths) == 5
    for p in paths:
        assert _png_size(p) == (1000, 400)
    plots.write_html(rep, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert text.count("<img ") == 5 and text.count("src='data:image/png;base64,") == 5
    assert "http://" not in text and "https://" not in text and "<script" not in text


@pytest.mark.parametrize("args,code,msg", [
    (["--since", "2030-01-01", "--until", "2020-01-01"], 2, "--since is after --until"),
    (["--threshold", "nope=3"], 2, "unknown threshold"),
    (["--threshold", "window_s=abc"], 2, "not a number"),
    (["--dst", "banana"], 2, "not a network"),
    (["--node", "other"], 65, "no such node"),
])
def test_bad_options(tmp_path, args, code, msg):
    f = record(tmp_path / "r.ndrec", golden("healthy"))
    rc, out, err = netdiag("report", f, *args)
    assert rc == code and msg in err, err
    assert sum("rror" in line for line in err.splitlines()) == 1     # one error line (click adds its usage)


def test_bad_files(tmp_path):
    cases = {}
    (tmp_path / "foreign.ndrec").write_bytes(b"\x89PNG\r\n\x1a\nnot a recording")
    cases["foreign.ndrec"] = "not a netdiag recording"
    (tmp_path / "bad.ndjson").write_text('{"type":"interval","ts":1,"destinations":[]}\n{"type":"inter')
    cases["bad.ndjson"] = "truncated line"
    empty = tmp_path / "empty.ndrec"
    record(empty, [])
    cases["empty.ndrec"] = "no intervals"
    cases["missing.ndrec"] = "no such file"
    body = json.dumps({"format": fm.FORMAT, "version": 99}).encode()
    (tmp_path / "new.ndrec").write_bytes(fm.MAGIC + len(body).to_bytes(4, "little") + body)
    cases["new.ndrec"] = "newer"
    for name, msg in cases.items():
        rc, out, err = netdiag("report", tmp_path / name)
        assert rc == 65, (name, err)
        assert msg in err and len(err.strip().splitlines()) == 1, (name, err)


def test_unwritable_html_output(tmp_path):
    f = record(tmp_path / "r.ndrec", golden("healthy"))
    rc, out, err = netdiag("report", f, "--html", tmp_path / "no" / "such" / "dir" / "r.html")
    assert rc == 73 and "does not exist" in err and len(err.strip().splitlines()) == 1   # checked before reading


def test_a_cut_recording_reports_what_was_flushed(tmp_path):
    from netdiag.offline.writer import RecordingWriter
    recs = diagnosed("snat-cap")
    w = RecordingWriter(tmp_path / "r.ndrec", {"context": CTX})
    w.write(recs[:8])
    w.write(recs[8:])
    w.close()
    data = (tmp_path / "r.ndrec").read_bytes()
    (tmp_path / "cut.ndrec").write_bytes(data[:-10])
    rc, out, err = netdiag("report", tmp_path / "cut.ndrec", "--json")
    assert rc == 0, err
    assert "partial last flush" in err
    rep = json.loads(out)
    assert rep["tables"]["nodes"][0]["intervals"] == 8
    assert [v["kind"] for v in rep["verdicts"]] == ["snat_port_exhaustion"]


def test_overlapping_copies_count_once(tmp_path):
    recs = golden("remote-cap")
    a = record(tmp_path / "a.ndrec", recs)
    b = record(tmp_path / "b.ndrec", recs[5:])
    one = rp.Report([rp.load(a)]).as_json()
    two = rp.Report([rp.load(a), rp.load(b)]).as_json()
    assert one["tables"] == two["tables"] and one["verdicts"] == two["verdicts"]


@pytest.mark.parametrize("name", ["snat-cap", "idle-timeout", "listen-overflow", "remote-cap"])
def test_recorded_verdicts_equal_the_replayed_ones(tmp_path, name):
    f = record(tmp_path / "r.ndrec", diagnosed(name))
    assert rp.Report([rp.load(f)], recorded=True).verdicts == rp.Report([rp.load(f)]).verdicts
