"""The pipeline's order on hand-made records: collect, enrich, diagnose, name the verdicts, sinks."""
import signal
import threading

from netdiag.analysis.diagnose import Diagnoser
from netdiag.offline.keys import parse_endpoint
from netdiag.pipeline.dnswatch import Enricher
from netdiag.pipeline.run import Pipeline, stop_on_signals

from .test_dns_attribute import NS1, NS2, FakePods, lab_observer, record, row


class FakeWatcher:
    """Hands out the records it was given, one per sample(), like Watcher (verdicts empty)."""

    def __init__(self, records):
        self.records = list(records)
        self.started = self.closed = False

    def start(self):
        self.started = True

    def sample(self):
        return self.records.pop(0)

    def close(self):
        self.closed = True


class CapDiagnoser:
    """A remote cap on 198.18.7.2:8080 from NS1 and a netns-wide verdict in NS2; checks that the
    rows were already enriched when diagnosis ran."""

    def __init__(self):
        self.seen = []

    def update(self, rec):
        self.seen.append([r.get("domain") for r in rec["destinations"]])
        return [{"kind": "remote_connection_cap", "dst": "198.18.7.2:8080", "netns": NS1, "netns_name": "nd-x-11",
                 "where": "beyond", "cap": 17, "evidence": {}, "advice": "x"},
                {"kind": "conntrack_table_full", "dst": None, "netns": NS2, "netns_name": "nd-x-12",
                 "where": "here", "entries": 1, "evidence": {}, "advice": "y"},
                {"kind": "listen_overflow", "dst": None, "listener": parse_endpoint("0.0.0.0:9"), "netns": 99, "netns_name": None,
                 "where": "there", "overflows": 1, "evidence": {}, "advice": "z"}]


class ListSink:
    def __init__(self):
        self.opened, self.records, self.closed = None, [], []

    def open(self, info):
        self.opened = info

    def interval(self, rec):
        self.records.append(rec)

    def close(self, summary):
        self.closed.append(summary)


def rows():
    return [row("198.18.7.1:8080", NS1, connects=3), row("198.18.7.2:8080", NS1, connects=17, active=17),
            row("198.18.7.1:8080", NS2, connects=5)]


def enricher(**kw):
    e = Enricher(observer=lab_observer(), dns_share=0.001, **kw)
    e.pods = FakePods()
    return e


def test_verdicts_name_their_domain_and_pods():
    diag, sink = CapDiagnoser(), ListSink()
    p = Pipeline(FakeWatcher([record(rows())]), diag, enricher(per_domain=True, per_pod=True), sinks=[sink])
    rec = p.step()
    assert diag.seen == [["other.lab.test", "api.lab.test", "api.lab.test"]]     # enriched before diagnosis
    cap, full, ovf, dns = rec["verdicts"]
    assert cap["kind"] == "remote_connection_cap" and cap["cap"] == 17
    assert cap["domain"] == "api.lab.test" and cap["pods"] == ["default/web-1"]
    assert full["domain"] == "api.lab.test" and full["pods"] == ["shop/api-0"]    # the namespace's rows
    assert ovf["domain"] is None and ovf["pods"] == []                            # no rows for it
    assert dns["kind"] == "dns_rate_limit_risk" and dns["pods"]                   # its own pods stay
    assert "domain" in dns and dns["domain"] is None
    assert sink.records == [rec] and rec["domains"] and rec["pods"]


def test_standing_verdict_keeps_the_names_its_rows_had():
    later = record([row("198.18.9.9:443", NS1, connects=1)], ts=101.0)
    p = Pipeline(FakeWatcher([record(rows()), later]), CapDiagnoser(), enricher(per_domain=True))
    p.step()
    cap = p.step()["verdicts"][0]
    assert cap["domain"] == "api.lab.test" and cap["pods"] == ["default/web-1"]


def test_verdicts_unnamed_without_per_domain_or_per_pod():
    p = Pipeline(FakeWatcher([record(rows())]), CapDiagnoser(), enricher())
    cap = p.step()["verdicts"][0]
    assert "domain" not in cap and "pods" not in cap


def test_real_diagnoser_and_scope_and_sinks_lifecycle():
    sink = ListSink()
    w = FakeWatcher([record(rows(), ts=100.0 + i) for i in range(3)])
    p = Pipeline(w, Diagnoser(), sinks=[sink], scope=lambda r: dict(r, scoped=True))
    p.start()
    p.open({"modes": {}})
    stop = threading.Event()
    assert p.run(0.001, stop, until=lambda now: not w.records) is False
    p.close()
    p.finish({"type": "summary"})
    assert w.started and w.closed and sink.opened == {"modes": {}}
    assert p.intervals == 3 and all(r["scoped"] and r["verdicts"] == [] for r in sink.records)
    assert sink.closed == [{"type": "summary"}]


def test_stop_on_signals_restores_the_previous_handlers():
    def mine(signum, frame):
        pass
    before = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = threading.Event()
        with stop_on_signals(stop.set):
            assert signal.getsignal(signal.SIGTERM) is not mine
            signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
        try:
            with stop_on_signals(stop.set):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for s, h in before.items():
            signal.signal(s, h)
