"""The recording format and the recorder sink, on the recorded lab intervals of tests/data/golden:
records come back key for key, files are private, rotation keeps to its bound, a cut file reads up
to its last flush, and bad files are refused with one line."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from netdiag.analysis.diagnose import Diagnoser
from netdiag.errors import BadInput, OutputError
from netdiag.offline import format as fm
from netdiag.offline.keys import with_keys
from netdiag.offline.writer import RecordingWriter, numbered_files
from netdiag.sinks.recorder import Recorder, parse_trigger

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
CTX = {"node": "test", "sysctls": {}, "nat": {"rules": [], "error": None}}


def golden(name: str) -> list[dict]:
    return [with_keys(json.loads(line)) for line in (GOLDEN / f"{name}.ndjson").read_text().splitlines()
            if json.loads(line).get("type") == "interval"]


def diagnosed(name: str) -> list[dict]:
    """Golden intervals with the verdicts the live pipeline would have put on them."""
    d = Diagnoser()
    out = []
    for r in golden(name):
        r = dict(r)
        r["verdicts"] = d.update(r)
        out.append(r)
    return out


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.ndjson")))
def test_records_come_back_key_for_key(tmp_path, name):
    recs = diagnosed(name)
    rec = Recorder(tmp_path / "r.ndrec", context=CTX, flush_s=1e9)
    rec.open({"modes": {}})
    for r in recs:
        rec.interval(r)
    rec.close({"type": "summary", "intervals": len(recs)})
    back = fm.read(tmp_path / "r.ndrec")
    assert fm.records(back) == recs
    assert fm.json_rows(back, "summary") == [{"type": "summary", "intervals": len(recs)}]
    assert back.meta["version"] == fm.VERSION and back.meta["context"]["node"] == "test"


def test_unknown_fields_and_types_survive():
    r = golden("snat-cap")[0]
    r = {**r, "future_field": {"a": [1, 2]}, "map_entries": 2.5}
    r["destinations"] = [{**r["destinations"][0], "pod": None, "new_col": "x", "connects": "many"}]
    tabs = fm.encode([r], 0)
    blob = fm.header({}) + b"".join(fm.segment(k, t) for k, t in tabs.items()) + fm.commit()
    assert fm.records(_read_bytes(blob)) == [r]


def _read_bytes(blob: bytes, tmp=Path("/tmp")):
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".ndrec") as f:
        f.write(blob)
        f.flush()
        return fm.read(f.name)


def test_files_are_private_and_directories_too(tmp_path):
    out = tmp_path / "new" / "dir" / "r.ndrec"
    w = RecordingWriter(out, {})
    w.write(golden("snat-cap"))
    w.close()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(out.parent.parent.stat().st_mode) == 0o700


def test_an_existing_file_is_never_overwritten(tmp_path):
    (tmp_path / "r.ndrec").write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists"):
        RecordingWriter(tmp_path / "r.ndrec", {})
    assert (tmp_path / "r.ndrec").read_bytes() == b"precious"


def test_rotation_keeps_disk_use_under_the_bound(tmp_path):
    recs = golden("microburst")            # 88 intervals
    clock = Clock()
    max_size, keep = 70_000, 3
    rec = Recorder(tmp_path / "r.ndrec", context=CTX, flush_s=0.5, max_size=max_size, keep=keep, clock=clock)
    rec.open({})
    total = 0
    for r in recs:
        clock.t += 1
        rec.interval(r)
        files = numbered_files(tmp_path / "r.ndrec")
        assert len(files) <= keep
        assert all(f.stat().st_size <= max_size for f in files)
        total = max(total, sum(f.stat().st_size for f in files))
    rec.close(None)
    files = numbered_files(tmp_path / "r.ndrec")
    assert len(files) == keep and total <= keep * max_size
    assert rec.writer.next_number - 1 > keep             # it did rotate and remove
    kept = [r for f in files for r in fm.records(fm.read(f))]
    assert kept == recs[-len(kept):]                     # the newest intervals, in order, none twice


def test_rotation_by_age(tmp_path):
    clock = Clock()
    rec = Recorder(tmp_path / "r.ndrec", context=CTX, flush_s=1, max_age=5, keep=10, clock=clock)
    rec.open({})
    for r in golden("remote-cap"):
        clock.t += 1
        rec.interval(r)
    rec.close(None)
    files = numbered_files(tmp_path / "r.ndrec")
    assert len(files) >= 2
    assert [r for f in files for r in fm.records(fm.read(f))] == golden("remote-cap")


def test_flush_interval_bounds_what_a_kill_loses(tmp_path):
    clock = Clock()
    recs = golden("idle-timeout")
    rec = Recorder(tmp_path / "r.ndrec", context=CTX, flush_s=3, clock=clock)
    rec.open({})
    for i, r in enumerate(recs):
        clock.t += 1
        rec.interval(r)
        on_disk = fm.records(fm.read(tmp_path / "r.ndrec"))
        assert i + 1 - len(on_disk) < 3                  # at most a flush window not yet written
        assert on_disk == recs[:len(on_disk)]


def test_a_cut_file_reads_up_to_its_last_flush(tmp_path):
    recs = golden("snat-cap")
    w = RecordingWriter(tmp_path / "r.ndrec", {})
    w.write(recs[:5])
    good = (tmp_path / "r.ndrec").stat().st_size
    w.write(recs[5:])
    w.close()
    data = (tmp_path / "r.ndrec").read_bytes()
    for cut in (good + 3, good + 20, good + (len(data) - good) // 2, len(data) - 1):
        (tmp_path / "c.ndrec").write_bytes(data[:cut])
        r = fm.read(tmp_path / "c.ndrec")
        assert r.truncated == cut - good
        assert fm.records(r) == recs[:5]


@pytest.mark.parametrize("blob,msg", [
    (b"", "not a netdiag recording"),
    (b'{"type":"interval"}\n', "not a netdiag recording"),
    (b"PAR1\x00\x00", "not a netdiag recording"),
    (fm.MAGIC + b"\x05\x00", "truncated header"),
    (fm.MAGIC + b"\x03\x00\x00\x00{x}", "corrupt header"),
    (fm.header({})[: len(fm.MAGIC)] + b"\x02\x00\x00\x00{}", "no format/version"),
])
def test_foreign_and_corrupt_files_are_refused(tmp_path, blob, msg):
    (tmp_path / "x").write_bytes(blob)
    with pytest.raises(BadInput, match=msg):
        fm.read(tmp_path / "x")


def test_a_corrupt_segment_is_refused(tmp_path):
    w = RecordingWriter(tmp_path / "r.ndrec", {})
    w.write(golden("snat-cap"))
    w.close()
    data = bytearray((tmp_path / "r.ndrec").read_bytes())
    head = len(fm.header({}))
    bad = bytes(data[: head + 40]) + b"\xff" * 64 + bytes(data[head + 104:])
    (tmp_path / "b.ndrec").write_bytes(bad)
    with pytest.raises(BadInput, match="corrupt"):
        fm.read(tmp_path / "b.ndrec")
    garbage = bytes(data) + b"GARBAGE!" * 4
    (tmp_path / "g.ndrec").write_bytes(garbage)
    with pytest.raises(BadInput, match="no segment marker"):
        fm.read(tmp_path / "g.ndrec")


def test_a_newer_format_version_is_refused(tmp_path):
    body = json.dumps({"format": fm.FORMAT, "version": fm.VERSION + 1}).encode()
    (tmp_path / "n.ndrec").write_bytes(fm.MAGIC + len(body).to_bytes(4, "little") + body)
    with pytest.raises(BadInput, match="newer"):
        fm.read(tmp_path / "n.ndrec")


def test_a_failed_write_stops_cleanly_and_keeps_what_was_written(tmp_path, monkeypatch):
    recs = golden("snat-cap")
    clock = Clock()
    rec = Recorder(tmp_path / "r.ndrec", context=CTX, flush_s=1, clock=clock)
    rec.open({})
    for r in recs[:4]:
        clock.t += 1
        rec.interval(r)
    real_write = os.write
    calls = {"n": 0}

    def full(fd, data):             # the disk fills half-way through the next flush
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", full)
    clock.t += 1
    with pytest.raises(OutputError, match="disk full"):
        rec.interval(recs[4])
    monkeypatch.setattr(os, "write", real_write)
    rec.interval(recs[5])            # stopped: nothing more is written, nothing raised
    rec.close(None)
    back = fm.read(tmp_path / "r.ndrec")
    assert back.truncated == 0 and fm.records(back) == recs[:4]


def test_flight_recorder_writes_the_minutes_before_the_trigger(tmp_path):
    calm = golden("healthy")
    incident = diagnosed("snat-cap")
    t0 = incident[0]["ts"]
    before = []
    for i, r in enumerate(calm):            # 10 calm intervals just before the incident
        before.append({**r, "ts": t0 - (len(calm) - i) * 0.5, "verdicts": []})
    after = [{**r, "ts": incident[-1]["ts"] + (i + 1) * 0.5, "verdicts": []} for i, r in enumerate(calm)]
    clock = Clock()
    rec = Recorder(tmp_path / "f.ndrec", context=CTX, flush_s=1, ring_s=3.0,
                   trigger=parse_trigger("verdict:snat_port_exhaustion"), clock=clock)
    rec.open({})
    stream = before + incident + after
    for r in stream:
        clock.t += 0.5
        rec.interval(r)
    rec.close(None)
    got = fm.records(fm.read(tmp_path / "f.ndrec"))
    fired = next(r["ts"] for r in incident if r["verdicts"])
    last = max(r["ts"] for r in incident if r["verdicts"])
    assert rec.triggers == 1
    pre = [r for r in got if r["ts"] < fired]
    # the ring's 3 s before the trigger at least (at 0.5 s intervals), at most one flush (1 s) more
    assert pre and 3.0 - 0.5 <= fired - min(r["ts"] for r in pre) <= 3.0 + 1.0
    first = min(r["ts"] for r in got)
    assert [r["ts"] for r in got] == [r["ts"] for r in stream if first <= r["ts"] <= last + 3.0]
    assert [r["verdicts"] for r in got] == [r["verdicts"] for r in stream if first <= r["ts"] <= last + 3.0]


def test_flight_recorder_memory_is_bounded_by_its_duration(tmp_path):
    clock = Clock()
    clock.t = 0.0
    rec = Recorder(tmp_path / "f.ndrec", context=CTX, ring_s=2.0, flush_s=1.0, trigger=parse_trigger("verdict"),
                   clock=clock)
    rec.open({})
    base = golden("healthy")[0]
    for i in range(200):
        clock.t += 0.5
        rec.interval({**base, "ts": 1000.0 + i * 0.5, "verdicts": []})
        assert len(rec.ring) <= 3 and len(rec.pending) <= 2      # 2 s in flushes of 1 s, one being filled
    rec.close(None)
    assert fm.records(fm.read(tmp_path / "f.ndrec")) == []


def test_flight_recorder_twice_keeps_time_order(tmp_path):
    calm = golden("healthy")
    incident = diagnosed("snat-cap")
    stream, t = [], 1000.0
    for part in (calm, incident, calm * 2, incident, calm):
        for r in part:
            t += 0.5
            stream.append({**r, "ts": t})
    clock = Clock()
    rec = Recorder(tmp_path / "f.ndrec", context=CTX, flush_s=1, ring_s=2.0, clock=clock)
    rec.open({})
    for r in stream:
        clock.t += 0.5
        rec.interval(r)
    rec.close(None)
    got = fm.records(fm.read(tmp_path / "f.ndrec"))
    assert rec.triggers == 2
    ts = [r["ts"] for r in got]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert len(got) < len(stream)                       # calm stretches far from a verdict stay out


@pytest.mark.parametrize("spec", ["verdict:nope", "alarm", "verdict:,"])
def test_bad_triggers(spec):
    with pytest.raises(BadInput):
        parse_trigger(spec)


def test_write_behind_writes_every_interval_and_raises_a_failure_at_the_next(tmp_path, monkeypatch):
    """watch --record: each flush is written by a thread; everything is on disk after close, and
    a failed flush stops the recording and is raised by the next interval."""
    recs = golden("snat-cap")
    clock = Clock()
    rec = Recorder(tmp_path / "w.ndrec", context=CTX, flush_s=1, clock=clock, write_behind=True)
    rec.open({})
    for r in recs:
        clock.t += 1
        rec.interval(r)
    rec.close(None)
    assert fm.records(fm.read(tmp_path / "w.ndrec")) == recs

    clock = Clock()
    rec = Recorder(tmp_path / "f.ndrec", context=CTX, flush_s=1, clock=clock, write_behind=True)
    rec.open({})
    for r in recs[:3]:
        clock.t += 1
        rec.interval(r)
    rec._wait()                                  # those flushes are on disk
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    clock.t += 1
    rec.interval(recs[3])                        # its flush fails in the thread
    rec._writing.join()
    monkeypatch.undo()
    with pytest.raises(OutputError, match="disk full"):
        rec.interval(recs[4])
    rec.interval(recs[5])                        # stopped: nothing more, nothing raised
    rec.close(None)
    assert fm.records(fm.read(tmp_path / "f.ndrec")) == recs[:3]
