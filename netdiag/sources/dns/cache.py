"""What each network namespace resolved: address -> names (with TTL and CNAME chain), and the
per-query statistics of an interval. Pure data structures: no sockets, tested without root."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Resolution:
    name: str            # the owner of the A/AAAA record (the canonical name)
    ts: float            # when the answer was seen
    expires: float       # ts + TTL
    chain: tuple         # names from the question to `name`, e.g. ('alias.lab.test', 'api.lab.test')
    pid: int = 0         # the process that read the answer (0: not known on this capture path)


class NameCache:
    """(netns, ip) -> recent resolutions, most recent first.

    Entries outlive their TTL on purpose: a connection opened before expiry still belongs to the
    name (and an application that keeps using an address after its TTL is worth seeing). The
    cache is bounded in addresses (LRU) and in names per address.
    """

    def __init__(self, max_addrs: int = 200_000, names_per_addr: int = 8):
        self.max_addrs = max_addrs
        self.names_per_addr = names_per_addr
        self._by_addr: OrderedDict = OrderedDict()      # (netns, ip) -> list[Resolution]
        self._chains: dict = {}                         # (netns, name) -> chain tuple (latest)
        self.evicted = 0

    def __len__(self):
        return len(self._by_addr)

    def add(self, netns: int, ip: str, name: str, ts: float, ttl: int, chain=(), pid: int = 0) -> None:
        key = (netns, ip)
        chain = tuple(chain) or (name,)
        lst = self._by_addr.get(key)
        if lst is None:
            lst = self._by_addr[key] = []
            if len(self._by_addr) > self.max_addrs:
                self._by_addr.popitem(last=False)
                self.evicted += 1
        else:
            self._by_addr.move_to_end(key)
            lst[:] = [r for r in lst if r.name != name or r.pid != pid]
        lst.insert(0, Resolution(name, ts, ts + ttl, chain, pid))
        del lst[self.names_per_addr:]
        self._chains[(netns, name)] = chain
        for alias in chain[:-1]:
            self._chains[(netns, alias)] = chain

    def entries(self, netns: int, ip: str, at: float | None = None) -> list[Resolution]:
        """Resolutions of ``ip`` by ``netns`` seen at or before ``at``, most recent first (each
        has the ``pid`` of the process that read the answer, where the capture knows it)."""
        lst = self._by_addr.get((netns, ip), [])
        if at is None:
            return list(lst)
        return [r for r in lst if r.ts <= at]

    def lookup(self, netns: int, ip: str, at: float | None = None) -> list[str]:
        return [r.name for r in self.entries(netns, ip, at)]

    def chain(self, netns: int, name: str) -> list[str]:
        return list(self._chains.get((netns, name), (name,)))


def percentile(sorted_vals: list, q: float):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return round(sorted_vals[i], 3)


class QueryStats:
    """Counters of one interval for one (netns, question name)."""
    __slots__ = ("queries", "answers", "nxdomain", "servfail", "timeouts", "packets", "lat", "tcp")
    MAX_SAMPLES = 20_000          # latency samples kept per key per interval (bounded memory)

    def __init__(self):
        self.queries = self.answers = self.nxdomain = self.servfail = self.timeouts = 0
        self.packets = self.tcp = 0
        self.lat: list = []

    def add_latency(self, ms: float) -> None:
        if len(self.lat) < self.MAX_SAMPLES:
            self.lat.append(ms)

    def merge(self, o: "QueryStats") -> None:
        for k in ("queries", "answers", "nxdomain", "servfail", "timeouts", "packets", "tcp"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.lat.extend(o.lat)

    def as_dict(self, interval_s: float | None = None) -> dict:
        lat = sorted(self.lat)
        d = {"queries": self.queries, "answers": self.answers, "nxdomain": self.nxdomain,
             "servfail": self.servfail, "timeouts": self.timeouts, "packets": self.packets,
             "tcp": self.tcp, "latency_ms": {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99),
                            "max": round(lat[-1], 3) if lat else None}}
        if interval_s:
            d["pps"] = round(self.packets / interval_s, 1)
        return d


def merge_dns(a: dict | None, b: dict | None) -> dict | None:
    """Sum two `dns` dicts (as produced by QueryStats.as_dict); latency percentiles cannot be
    merged exactly, the larger of each is kept (a pessimistic bound)."""
    if not a:
        return dict(b) if b else None
    if not b:
        return dict(a)
    out = {k: (a.get(k) or 0) + (b.get(k) or 0) for k in ("queries", "answers", "nxdomain", "servfail",
                                                           "timeouts", "packets", "tcp")}
    la, lb = a.get("latency_ms") or {}, b.get("latency_ms") or {}
    out["latency_ms"] = {k: max((v for v in (la.get(k), lb.get(k)) if v is not None), default=None)
                         for k in ("p50", "p99", "max")}
    if "pps" in a or "pps" in b:
        out["pps"] = round(a.get("pps", 0) + b.get("pps", 0), 1)
    return out
