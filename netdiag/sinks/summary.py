"""The run summary: totals over every interval record, for the summary line or object at the end."""
from __future__ import annotations

from collections import defaultdict


class RunSummary:
    """A sink that keeps totals per destination and node; ``summary()`` is the run's summary record."""

    def __init__(self):
        self.rows = defaultdict(lambda: defaultdict(int))
        self.peak = defaultdict(int)
        self.meta = {}
        self.totals = defaultdict(int)
        self.drops = defaultdict(int)
        self.intervals = 0
        self.t0 = None
        self.last = None

    def open(self, info: dict) -> None:
        pass

    def interval(self, rec: dict) -> None:
        self.intervals += 1
        self.t0 = self.t0 or rec["ts"] - rec["interval_s"]
        self.last = rec
        for r in rec["destinations"]:
            k = (r["dst"], r["netns"], r["direction"])
            for c in ("connects", "established", "failed", "resets_in", "resets_out", "syn_retrans", "retrans"):
                self.rows[k][c] += r[c]
            for name, n in r["failed_by_errno"].items():
                self.rows[k]["errno:" + name] += n
            self.peak[k] = max(self.peak[k], r["active"])
            self.meta[k] = r["netns_name"]
        for c, v in rec["node_totals"].items():
            if isinstance(v, int) and c != "active":
                self.totals[c] += v
        for name, n in (rec["node_totals"].get("drops_by_reason") or {}).items():
            self.drops[name] += n

    def close(self, summary: dict | None) -> None:
        pass

    def summary(self) -> dict:
        last = self.last
        dests = []
        for (dst, ns, direction), c in self.rows.items():
            dests.append({"dst": dst, "netns": ns, "netns_name": self.meta[(dst, ns, direction)],
                          "direction": direction, "peak_active": self.peak[(dst, ns, direction)],
                          **{k: v for k, v in c.items() if not k.startswith("errno:")},
                          "failed_by_errno": {k[6:]: v for k, v in c.items() if k.startswith("errno:")}})
        dests.sort(key=lambda r: (-r["failed"], -(r["resets_in"] + r["resets_out"]), -r["peak_active"]))
        return {"type": "summary", "intervals": self.intervals,
                "duration_s": round(last["ts"] - self.t0, 3) if last else 0.0,
                "modes": last["modes"] if last else {}, "lost_events": last["lost_events"] if last else 0,
                "evictions": last["evictions_total"] if last else 0,
                "node_totals": dict(self.totals), "drops_by_reason": dict(self.drops), "destinations": dests}
