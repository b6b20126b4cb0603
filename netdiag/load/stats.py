"""Pure functions for the load generator's numbers: percentiles, errno names, summaries.

Nothing here touches a socket, so every function is testable on its own.
"""
from __future__ import annotations

import errno as _errno
import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

PERCENTILES = (50, 90, 99)


def errno_name(code: int) -> str:
    """``111`` -> ``"ECONNREFUSED"``; unknown codes -> ``"E<code>"``."""
    return _errno.errorcode.get(code, f"E{code}")


def count_errnos(codes: Iterable[int]) -> dict:
    """Errno numbers -> {name: count}, sorted by count then name."""
    c = Counter(errno_name(code) for code in codes)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def merge_counts(*counts: Mapping[str, int]) -> dict:
    """Sum name -> count mappings, sorted by count then name."""
    c: Counter = Counter()
    for m in counts:
        c.update(m)
    return dict(sorted(((k, v) for k, v in c.items() if v), key=lambda kv: (-kv[1], kv[0])))


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty).

    Nearest rank: the smallest value such that at least p% of the values are <= it.
    """
    n = len(sorted_values)
    if n == 0:
        return None
    if p <= 0:
        return float(sorted_values[0])
    rank = math.ceil(p / 100.0 * n)
    return float(sorted_values[min(max(rank, 1), n) - 1])


def latency_summary(values_ms: Iterable[float], ndigits: int = 3) -> dict:
    """{"p50", "p90", "p99", "max"} of connect times in ms (all None when there are none)."""
    vals = sorted(values_ms)
    out = {f"p{p}": percentile(vals, p) for p in PERCENTILES}
    out["max"] = float(vals[-1]) if vals else None
    return {k: (round(v, ndigits) if v is not None else None) for k, v in out.items()}


def count_delayed(values_ms: Iterable[float], threshold_ms: float | None) -> int:
    """Connects strictly slower than the threshold (0 when no threshold)."""
    if threshold_ms is None:
        return 0
    return sum(1 for v in values_ms if v > threshold_ms)


def spread_ms(first: float | None, last: float | None) -> float | None:
    """Milliseconds between two monotonic timestamps in seconds (None if either is missing)."""
    if first is None or last is None:
        return None
    return round((last - first) * 1000.0, 3)


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0
