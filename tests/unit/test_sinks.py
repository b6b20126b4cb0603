"""Sinks on hand-made records: ready file, NDJSON, plain text, the verdict lines, the live view, the summary."""
import io
import json
import os

from netdiag.sinks.ndjson import NdjsonSink
from netdiag.sinks.plain import PlainSink, VerdictLines, render_summary
from netdiag.sinks.ready import ReadyFile, write_ready
from netdiag.sinks.summary import RunSummary
from netdiag.sinks.text import verdict_line


def dst_row(dst="198.18.7.1:8080", **kw):
    r = {"dst": dst, "direction": "out", "netns": 11, "netns_name": "nd-x-11", "connects": 4, "established": 3,
         "failed": 1, "active": 3, "resets_in": 0, "resets_out": 0, "syn_retrans": 2, "retrans": 0, "accepts": None,
         "connect_ms_avg": 0.5, "failed_by_errno": {"ETIMEDOUT": 1}, "resets_out_by_reason": {}}
    r.update(kw)
    return r


VERDICT = {"kind": "remote_connection_cap", "dst": "198.18.7.1:8080", "netns": 11, "netns_name": "nd-x-11",
           "where": "beyond this node", "cap": 3, "evidence": {"active_plateau": 3}, "advice": "look beyond",
           "domain": "api.lab.test", "pods": ["default/web-1"]}


def interval(ts=100.0, verdicts=(VERDICT,)):
    return {"type": "interval", "ts": ts, "node": "n1", "interval_s": 1.0, "modes": {"connect": "tracepoint"},
            "lost_events": 0, "evictions": 0, "evictions_total": 0, "map_entries": 1, "map_max": 16384,
            "seeding": False, "destinations": [dst_row()],
            "listeners": [{"listen": "0.0.0.0:8080", "netns": 12, "netns_name": "nd-x-12", "queue": 0,
                           "max_queue": 1, "backlog": 128, "established": 3, "accepts": None, "synack_retrans": 0,
                           "resets_in": 0, "resets_out": 0, "overflows": 0}],
            "node_totals": {"connects": 4, "established": 3, "failed": 1, "active": 3, "resets_in": 0,
                            "resets_out": 0, "syn_retrans": 2, "retrans": 0, "drops_by_reason": {},
                            "listen_overflows": 0},
            "verdicts": [dict(v) for v in verdicts]}


def test_ready_file_is_written_whole_and_leaves_nothing_else(tmp_path):
    p = tmp_path / "ready"
    write_ready(p, {"modes": {"connect": "kprobe"}})
    assert json.loads(p.read_text()) == {"modes": {"connect": "kprobe"}}
    write_ready(str(p), {"again": 1})                   # replaced, never appended to
    assert json.loads(p.read_text()) == {"again": 1}
    ReadyFile(tmp_path / "r2").open({"program": "cached"})
    assert json.loads((tmp_path / "r2").read_text()) == {"program": "cached"}
    assert sorted(os.listdir(tmp_path)) == ["r2", "ready"]


def test_ndjson_writes_records_then_summary_unchanged():
    buf = io.StringIO()
    s = NdjsonSink(buf)
    rec = interval()
    s.open({})
    s.interval(rec)
    s.close({"type": "summary", "intervals": 1})
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert lines == [rec, {"type": "summary", "intervals": 1}]


def test_verdict_line_names_domain_and_pods():
    line = verdict_line(VERDICT)
    assert line.startswith("remote_connection_cap 198.18.7.1:8080 cap=3 — beyond this node")
    assert "domain=api.lab.test" in line and "pods=default/web-1" in line
    assert verdict_line(VERDICT, advice=True).endswith(": look beyond")
    bare = {k: v for k, v in VERDICT.items() if k not in ("domain", "pods")}
    assert verdict_line(bare) == "remote_connection_cap 198.18.7.1:8080 cap=3 — beyond this node"


def test_plain_sink_and_summary():
    buf = io.StringIO()
    run, plain = RunSummary(), PlainSink(10, buf)
    for ts in (100.0, 101.0):
        rec = interval(ts)
        run.interval(rec)
        plain.interval(rec)
    text = buf.getvalue()
    assert "connects=4" in text and "198.18.7.1:8080" in text and "[ETIMEDOUT:1]" in text
    assert "lst 0.0.0.0:8080" in text
    assert "  verdict remote_connection_cap 198.18.7.1:8080 cap=3" in text
    s = run.summary()
    assert s["intervals"] == 2 and s["node_totals"]["connects"] == 8 and s["destinations"][0]["peak_active"] == 3
    plain.close(s)
    assert "summary: 2 intervals" in buf.getvalue()


def test_verdict_lines_show_each_verdict_once_and_the_lab_result():
    buf = io.StringIO()
    v = VerdictLines(out=buf)
    v.interval(interval(100.0))
    v.interval(interval(101.0))
    assert buf.getvalue().count("verdict: remote_connection_cap") == 1
    result = {"type": "lab", "scenario": "remote-cap", "params": {"ports": 3}, "expected": "remote_connection_cap",
              "intervals": 2, "duration_s": 1.0, "verdicts": [VERDICT], "notes": ["n"], "kept": False}
    v.close(result)
    out = buf.getvalue()
    assert "lab remote-cap (ports=3)" in out and "  fix: look beyond" in out and "note: n" in out
    render_summary(None, 10, buf)                        # an aborted run: nothing more


def test_live_view_renders_a_record():
    from rich.console import Console

    from netdiag.sinks.live import LiveView
    view = LiveView(10)
    view.console = Console(file=io.StringIO(), width=200)
    con = Console(file=io.StringIO(), width=200)
    con.print(view.render(interval()))
    text = con.file.getvalue()
    assert "remote_connection_cap 198.18.7.1:8080" in text and "api.lab.test" in text and "listeners" in text


def _with_processes():
    rec = interval()
    rec["modes"]["process_inbound"] = "listener"
    rec["processes"] = [
        {"pid": 4711, "comm": "nginx", "netns": 12, "netns_name": "nd-x-12", "connects": 40, "established": 40,
         "failed": 0, "resets_in": 0, "resets_out": 0, "accepts": None, "inbound": 4, "inbound_via": "listener",
         "listens": ["0.0.0.0:8080"]}]
    rec["verdicts"].append({"kind": "connection_fanout", "dst": None, "netns": 12, "netns_name": "nd-x-12",
                            "process": "nginx", "pids": [4711], "where": "nginx in netns nd-x-12", "ratio": 10.0,
                            "evidence": {"connects": 40, "inbound": 4}, "advice": "pool upstream connections"})
    return rec


def test_process_rows_in_the_plain_and_live_views():
    from rich.console import Console

    from netdiag.sinks.live import LiveView
    buf = io.StringIO()
    PlainSink(10, buf).interval(_with_processes())
    text = buf.getvalue()
    assert "proc 4711 nginx netns=nd-x-12 conn=40" in text and "inbound=4 (listener)" in text
    assert "verdict connection_fanout nd-x-12 ratio=10.0" in text
    con = Console(file=io.StringIO(), width=200)
    con.print(LiveView(10).render(_with_processes()))
    out = con.file.getvalue()
    assert "processes (inbound by listener)" in out and "4711" in out and "10.0" in out


def test_ndjson_line_survives_a_signal_on_a_full_pipe():
    """A 2.4 MB line waits on a pipe nobody reads; the stop signal arrives: the whole line, then
    the summary, still come out (Python's buffered text layer would drop the rest of the line)."""
    import signal
    import subprocess
    import sys
    import time
    code = ("import signal, threading\n"
            "from netdiag.sinks.ndjson import NdjsonSink\n"
            "stop = threading.Event()\n"
            "signal.signal(signal.SIGINT, lambda *a: stop.set())\n"
            "s = NdjsonSink()\n"
            "s.interval({'type': 'interval', 'pad': 'x' * 2400000})\n"
            "s.close({'type': 'summary'})\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    lines = out.decode().splitlines()
    assert [json.loads(ln)["type"] for ln in lines] == ["interval", "summary"]
    assert len(json.loads(lines[0])["pad"]) == 2400000
