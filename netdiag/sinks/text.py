"""Text pieces every human-readable sink shares: the one-line verdict, errno lists, DNS figures."""
from __future__ import annotations

from netdiag.analysis.diagnose import NUMBER


def verdict_line(v: dict, advice: bool = False) -> str:
    """``kind target number=N — where`` (plus `` domain=… pods=…`` when named, and the fix with
    ``advice``): the one line a verdict is shown as."""
    num = NUMBER.get(v["kind"])
    target = v.get("dst") or v.get("listener") or v.get("netns_name") or ""
    line = f"{v['kind']} {target} {num}={v.get(num)} — {v['where']}"
    if v.get("domain"):
        line += f" domain={v['domain']}"
    if v.get("pods") and v["kind"] != "dns_rate_limit_risk":
        line += f" pods={','.join(v['pods'])}"
    if advice:
        line += f": {v['advice']}"
    return line


def errs(d: dict | None) -> str:
    """{name: n} as "name:n,…"; None (not measurable on this kernel) as "?"."""
    if d is None:
        return "?"
    return ",".join(f"{k}:{v}" for k, v in d.items())


def lat(d: dict | None) -> str:
    if not d:
        return "-"
    ms = d.get("latency_ms") or {}
    return "-" if ms.get("p99") is None else f"{ms.get('p50')}/{ms.get('p99')}"


def dns_fail(d: dict | None) -> str:
    if not d:
        return "-"
    return f"{d.get('nxdomain', 0)}/{d.get('servfail', 0)}/{d.get('timeouts', 0)}"


def dns_line(rec: dict) -> str | None:
    d = rec.get("dns")
    if not d:
        return None
    return (f"dns: {d.get('pps', 0)} pkt/s queries={d['queries']} answers={d['answers']} nxdomain={d['nxdomain']} "
            f"servfail={d['servfail']} timeouts={d['timeouts']} latency_ms p50/p99={lat(d)} lost={d['lost']} "
            f"namespaces={d.get('netns_covered', 0)}")
