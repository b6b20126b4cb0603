"""NDJSON: one compact JSON object a line for every interval record, then the summary."""
from __future__ import annotations

import io
import json
import os
import sys


class NdjsonSink:
    def __init__(self, out=None):
        self.out = out or sys.stdout

    def _write(self, obj: dict) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        try:
            fd = self.out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self.out.write(line)
            self.out.flush()
            return
        # Straight to the file descriptor, each partial write continued: a signal (the SIGINT that
        # stops watch) arriving while a large line waits on a full pipe makes write() return short,
        # and Python's buffered text layer then drops the rest of the line.
        self.out.flush()
        view = memoryview(line.encode())
        while view:
            view = view[os.write(fd, view):]

    def open(self, info: dict) -> None:
        pass

    def interval(self, record: dict) -> None:
        self._write(record)

    def close(self, summary: dict | None) -> None:
        if summary is not None:
            self._write(summary)
