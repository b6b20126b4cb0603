"""Processes a lab runs inside its namespaces: started in their own process group, read as JSON
lines, and ended (SIGTERM, then SIGKILL) by the lab on exit, error or Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


class LabProc:
    def __init__(self, ns: str, argv: list, name: str):
        self.name = name
        self.argv = ["ip", "netns", "exec", ns, *map(str, argv)]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list = []
        self.err: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.lines.append(obj)

    def _read_err(self):
        for line in self.proc.stderr:
            self.err.append(line.rstrip())
            del self.err[:-20]

    def last(self, type_: str = "summary"):
        with self._lock:
            got = [o for o in self.lines if o.get("type") == type_]
        return got[-1] if got else None

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float, stop=None) -> bool:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                return False
            time.sleep(0.05)
        time.sleep(0.05)            # let the reader take the last line
        return True

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)


def netdiag_argv(*args) -> list:
    return [sys.executable, "-m", "netdiag", *map(str, args)]


def peer_argv(*args) -> list:
    return [sys.executable, "-m", "netdiag.labs.peer", *map(str, args)]
