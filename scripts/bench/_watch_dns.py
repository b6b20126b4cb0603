#!/usr/bin/env python3
"""What `netdiag watch --json --per-domain` does per interval, until the command is wired:
Watcher.sample() then Enricher.apply() (DNS observer, annotate, rollup_domains), one NDJSON line
per interval. Stops on SIGINT/SIGTERM.

  _watch_dns.py --ready-file PATH [--interval 1] [--per-pod] [--no-dns]
"""
import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from netdiag.dns.watchcli import Enricher  # noqa: E402
from netdiag.watch import Watcher  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--per-pod", action="store_true")
    ap.add_argument("--no-dns", action="store_true")
    a = ap.parse_args()
    stop = {"flag": False}
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.update(flag=True))
    w = Watcher()
    e = Enricher(dns=not a.no_dns, per_domain=not a.no_dns, per_pod=a.per_pod)
    try:
        w.start()
        e.start()
        Path(a.ready_file).write_text(json.dumps({"modes": w.plan}) + "\n")
        nxt = time.monotonic() + a.interval
        while not stop["flag"]:
            if time.monotonic() < nxt:
                time.sleep(min(0.1, nxt - time.monotonic()))
                continue
            nxt += a.interval
            rec = e.apply(w.sample())
            sys.stdout.write(json.dumps(rec, separators=(",", ":")) + "\n")
            sys.stdout.flush()
        rec = e.apply(w.sample())
        sys.stdout.write(json.dumps(rec, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    finally:
        e.close()
        w.close()


if __name__ == "__main__":
    main()
