"""The recorder: one more sink. Interval records go into a recording (docs/recording.md), flushed
at least every ``flush_s`` seconds; with ``ring_s`` it is a flight recorder that keeps the last
``ring_s`` seconds in memory and writes them, and what follows for as long, when a verdict fires.
The ring holds intervals encoded (compressed Parquet segments, one per ``flush_s``), so its
memory is about what those intervals take on disk."""
from __future__ import annotations

import threading
import time
from collections import deque

from netdiag.errors import BadInput
from netdiag.offline import format as fm
from netdiag.offline.writer import RecordingWriter

DNS_KIND = "dns_rate_limit_risk"


def parse_trigger(spec: str | None) -> set | None:
    """"verdict" -> every kind; "verdict:a,b" -> {a, b}. Unknown kinds are bad input."""
    from netdiag.analysis.diagnose import KINDS
    if spec is None:
        return None
    head, _, kinds = spec.partition(":")
    if head != "verdict":
        raise BadInput(f"--trigger {spec!r}: expected verdict or verdict:KIND[,KIND…]")
    if not kinds:
        return set(KINDS) | {DNS_KIND}
    want = {k.strip() for k in kinds.split(",") if k.strip()}
    unknown = sorted(want - set(KINDS) - {DNS_KIND})
    if unknown or not want:
        raise BadInput(f"--trigger: unknown verdict kind {', '.join(unknown) or '(none)'} "
                       f"(kinds: {', '.join(KINDS + (DNS_KIND,))})")
    return want


class Recorder:
    """Sink: ``open`` writes the header (node context), ``interval`` buffers, ``close`` flushes
    and writes the run's summary. ``stats()`` says what was written."""

    def __init__(self, path, node: str | None = None, flush_s: float = 10.0, max_size: int | None = None,
                 max_age: float | None = None, keep: int | None = None, ring_s: float | None = None,
                 trigger: set | None = None, context=None, clock=time.monotonic, write_behind: bool = False):
        self.path = path
        self.node = node
        self.flush_s = flush_s
        self.ring_s = ring_s
        self.trigger = trigger if trigger is not None else (parse_trigger("verdict") if ring_s else None)
        self.clock = clock
        self.context = context
        self.writer_args = dict(max_size=max_size, max_age=max_age, keep=keep)
        self.writer = None
        self.buffer: list = []
        self.ring: deque = deque()      # flight recorder: (last ts, encoded flush, intervals) oldest first
        self.pending: list = []         # flight recorder: intervals not yet sealed into the ring
        self.n = 0                      # the next interval's number in the recording
        self.until_ts = None            # flight recorder: write records up to this ts
        self.triggers = 0
        self.last_flush = clock()
        self.error = None
        self.seen = 0
        self.write_behind = write_behind                # periodic flushes written by a thread
        self._writing: threading.Thread | None = None   # the flush being written (plain recordings)
        self._failed: Exception | None = None            # its failure, raised by the next call

    def open(self, info: dict) -> None:
        from netdiag.offline.context import node_context
        ctx = self.context if self.context is not None else node_context(self.node, info.get("modes"))
        if self.node:
            ctx = dict(ctx, node=self.node)
        meta = {"context": ctx, "info": info,
                "flight_recorder": {"ring_s": self.ring_s, "trigger": sorted(self.trigger)} if self.ring_s else None}
        self.writer = RecordingWriter(self.path, meta, node=self.node, clock=self.clock, **self.writer_args)
        import pyarrow.parquet  # noqa: F401  (imported now, not by the first flush, in the interval loop)

    def interval(self, record: dict) -> None:
        self._raise_failed()
        if self.writer is None or self.error is not None:
            return
        self.seen += 1
        if self.ring_s is None:
            self.buffer.append(record)
        else:
            self._ring(record)
        if self.clock() - self.last_flush >= self.flush_s:
            self.flush(wait=not self.write_behind)

    def _ring(self, record: dict) -> None:
        ts = record["ts"]
        while self.ring and self.ring[0][0] <= ts - self.ring_s:
            self.ring.popleft()
        fired = any(v.get("kind") in self.trigger for v in record.get("verdicts") or ())
        if fired and self.until_ts is None:
            self.triggers += 1
            self._spill()                            # the minutes before the incident
        if fired:
            self.until_ts = ts + self.ring_s         # and as long after its last verdict
        if self.until_ts is not None and ts <= self.until_ts:
            self.buffer.append(record)
            return
        self.until_ts = None
        self.pending.append(record)

    def _seal(self) -> None:
        """The pending intervals into the ring, encoded."""
        if self.pending:
            data = self.writer.encode(self.pending, first=self.n)
            self.ring.append((self.pending[-1]["ts"], data, len(self.pending)))
            self.n += len(self.pending)
            self.pending = []

    def _spill(self) -> None:
        """Write the ring (and the intervals not sealed yet) to the file."""
        self._seal()
        try:
            while self.ring:
                _last, data, count = self.ring.popleft()
                self.writer.write_encoded(data, count)
        except Exception as e:
            self.error = e
            self.writer.close()
            raise

    def _raise_failed(self) -> None:
        if self._failed is not None:
            e, self._failed = self._failed, None
            raise e

    def _wait(self) -> None:
        """The flush being written finished (its failure raised)."""
        if self._writing is not None:
            self._writing.join()
            self._writing = None
        self._raise_failed()

    def _write_behind(self, batch: list, first: int) -> None:
        try:
            self.writer.write(batch, None, first=first)
        except Exception as e:
            self.error = self._failed = e
            self.writer.close()

    def flush(self, extra: dict | None = None, wait: bool = True) -> None:
        """Write what is buffered; a write failure stops the recording (``error``) and is raised.
        With ``wait=False`` (a plain recording's periodic flush) the batch is encoded and written
        by a thread while the intervals go on, so a slow disk or a busy CPU does not make the
        interval loop late; its failure is raised by the next call."""
        self._wait()
        self.last_flush = self.clock()
        if self.writer is None or self.error is not None:
            return
        batch, self.buffer = self.buffer, []
        if not wait and self.ring_s is None and extra is None:
            first, self.n = self.n, self.n + len(batch)
            self._writing = threading.Thread(target=self._write_behind, args=(batch, first),
                                             name="recorder-flush", daemon=True)
            self._writing.start()
            return
        try:
            self.writer.write(batch, extra, first=self.n)
            self.n += len(batch)
        except Exception as e:
            self.error = e
            self.writer.close()
            raise
        if self.ring_s is not None:             # after the batch: the ring's intervals are the newer
            self._seal()

    def close(self, summary: dict | None) -> None:
        if self.writer is None:
            return
        try:
            if self._writing is not None:
                self._writing.join()
                self._writing = None
            if self.error is None:
                self.flush({"summary": fm.json_table([summary])} if summary is not None else None)
            self._raise_failed()
        finally:
            self.writer.close()

    def stats(self) -> dict:
        w = self.writer
        return {"intervals": w.intervals if w else 0, "bytes": w.bytes if w else 0,
                "files": [str(p) for p in (w.files if w else []) if p.exists()],
                "dropped": w.dropped if w else 0, "triggers": self.triggers, "seen": self.seen}
