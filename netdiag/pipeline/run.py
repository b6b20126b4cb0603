"""One pipeline for `netdiag watch` and `netdiag lab`: each interval it collects (``Watcher.sample``),
keeps the record to its scope, enriches it (DNS names, pods), diagnoses it (``Diagnoser.update``
and the DNS verdict), names each verdict's domain and pods from the rows it is about, and hands
the finished record to every sink.

A sink is anything with ``open(info)`` (once the probes are attached), ``interval(record)`` and
``close(summary)``; the sinks list is the only output a command configures (netdiag/sinks/).
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable, Iterable, Protocol

from netdiag.analysis.domains import name_verdicts
from netdiag.analysis.records import IntervalRecord


class Sink(Protocol):
    def open(self, info: dict) -> None: ...

    def interval(self, record: IntervalRecord) -> None: ...

    def close(self, summary: dict | None) -> None: ...


class Pipeline:
    """collect → scope → enrich → diagnose → name verdicts → sinks, once per interval."""

    def __init__(self, watcher, diagnoser, enricher=None, sinks: Iterable = (),
                 scope: Callable[[dict], dict] | None = None):
        self.watcher = watcher
        self.diagnoser = diagnoser
        self.enricher = enricher
        self.sinks = list(sinks)
        self.scope = scope
        self.intervals = 0
        self._named: dict = {}          # verdict key -> (domain, pods) last seen with its rows

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the enrichment (DNS capture first: its compile is the slower) and the collector."""
        if self.enricher is not None:
            self.enricher.start()
        self.watcher.start()

    def open(self, info: dict) -> None:
        for s in self.sinks:
            s.open(info)

    def close(self) -> None:
        """Detach the probes and stop the enrichment (the sinks are closed by ``finish``)."""
        if self.enricher is not None:
            self.enricher.close()
        self.watcher.close()

    def finish(self, summary: dict | None) -> None:
        for s in self.sinks:
            s.close(summary)

    # -- one interval --------------------------------------------------------------------------------
    def process(self, record: dict) -> dict:
        """A collected record made whole: scoped, enriched, diagnosed, verdicts named."""
        if self.scope is not None:
            record = self.scope(record)
        if self.enricher is not None:
            self.enricher.apply(record)
        verdicts = self.diagnoser.update(record)
        if self.enricher is not None:
            verdicts += self.enricher.verdicts(record)
            if self.enricher.names_verdicts:
                name_verdicts(verdicts, record, self._named)
        record["verdicts"] = verdicts
        return record

    def _held(self):
        """The interval is made (sampled and processed) with the DNS capture's reader paused:
        under a DNS flood the interval comes first, the capture counts what it lost. Not while
        the sinks write: a slow reader of stdout must not stop the capture."""
        hold = getattr(self.enricher, "hold", None)
        return hold() if hold is not None else contextlib.nullcontext()

    def step(self) -> dict:
        with self._held():
            record = self.process(self.watcher.sample())
        self.intervals += 1
        for s in self.sinks:
            s.interval(record)
        return record

    def run(self, interval: float, stop: threading.Event, deadline: float | None = None,
            until: Callable[[float], bool] | None = None, partial_last: bool = False) -> bool:
        """Sample every ``interval`` seconds until ``stop`` is set, the monotonic ``deadline``
        passes, or ``until(now)`` says so. With ``partial_last``, a run that reached its deadline
        hands on the partial last interval too. True when ``stop`` ended the run."""
        next_tick = time.monotonic() + interval
        while not stop.is_set():
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or (until is not None and until(now)):
                break
            wake = min(next_tick, deadline) if deadline is not None else next_tick
            if now < wake:
                stop.wait(min(0.05, wake - now))
                continue
            next_tick += interval
            if next_tick < now:                 # a slow sample: no burst of catch-up intervals
                next_tick = now + interval
            self.step()
        if stop.is_set():
            return True
        if partial_last and deadline is not None:
            record = self.process(self.watcher.sample())
            if record["interval_s"] > 0.05:
                self.intervals += 1
                for s in self.sinks:
                    s.interval(record)
        return False


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[], None], signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
    """Call ``on_stop()`` on SIGINT/SIGTERM/SIGHUP (a closed terminal or a supervisor's stop) while
    inside; the previous handlers come back on exit."""
    old = {s: signal.signal(s, lambda _signum, _frame: on_stop()) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
