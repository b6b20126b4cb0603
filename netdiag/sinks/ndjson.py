"""NDJSON: one compact JSON object a line for every interval record, then the summary."""
from __future__ import annotations

import json
import sys


class NdjsonSink:
    def __init__(self, out=None):
        self.out = out or sys.stdout

    def _write(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    def open(self, info: dict) -> None:
        pass

    def interval(self, record: dict) -> None:
        self._write(record)

    def close(self, summary: dict | None) -> None:
        if summary is not None:
            self._write(summary)
