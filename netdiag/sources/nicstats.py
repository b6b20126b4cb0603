"""The NIC driver's allowance counters: the limits a cloud provider enforces on an instance's
network interface, which nothing else on the node shows.

Amazon's ENA driver exports them among its ethtool statistics (`ethtool -S eth0`):
``bw_in_allowance_exceeded``, ``bw_out_allowance_exceeded``, ``pps_allowance_exceeded``,
``conntrack_allowance_exceeded``, ``linklocal_allowance_exceeded`` (packets queued or dropped
because the instance went over that allowance; cumulative) and ``conntrack_allowance_available``
(tracked connections the instance may still open; a gauge). Any statistic whose name ends in
``_allowance_exceeded`` or ``_allowance_available`` is taken, so other drivers that follow the
same naming are read too.

The statistics are read with the ETHTOOL_GSTATS ioctl through pyroute2, on one socket per
interface that stays open; the names (ETHTOOL_GSTRINGS) are read once per interface. An
interface whose driver has no statistics (loopback, say) is remembered and not asked again.
Only the node's own network namespace is read: those are the interfaces a provider meters.
"""
from __future__ import annotations

import os
import re

ALLOWANCE = re.compile(r"^(?P<name>[a-z0-9_]+)_allowance_(?P<what>exceeded|available)$")
SYS_NET = "/sys/class/net"


def allowance_of(stat: str) -> tuple[str, str] | None:
    """'pps_allowance_exceeded' -> ('pps', 'exceeded'); None for other statistics."""
    m = ALLOWANCE.match(stat)
    return (m.group("name"), m.group("what")) if m else None


def parse_ethtool_s(text: str) -> dict[str, int]:
    """`ethtool -S IFACE` output -> {statistic: value} (every statistic, in the order printed)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().rpartition(":")
        if not sep or not name or name.endswith("statistics"):
            continue
        try:
            out[name.strip()] = int(value.strip())
        except ValueError:
            continue
    return out


def allowances(stats: dict[str, int]) -> dict[str, dict[str, int]]:
    """{statistic: value} -> {"exceeded": {allowance: n}, "available": {allowance: n}}."""
    out: dict[str, dict[str, int]] = {"exceeded": {}, "available": {}}
    for stat, value in stats.items():
        a = allowance_of(stat)
        if a:
            out[a[1]][a[0]] = value
    return out


class AllowanceAccount:
    """Pure bookkeeping of allowance readings: cumulative ``*_exceeded`` counters per interface
    become per-interval deltas summed over the node; ``*_available`` gauges keep their lowest.
    The first reading of an interface is its baseline (delta 0); a counter that went down (a
    driver reset) counts its new value."""

    def __init__(self):
        self.prev: dict[str, dict[str, int]] = {}

    def update(self, readings: dict[str, dict[str, int]]) -> dict:
        exceeded: dict[str, int] = {}
        available: dict[str, int] = {}
        for name, stats in sorted(readings.items()):
            cur = allowances(stats)
            prev = self.prev.get(name)
            for a, v in cur["exceeded"].items():
                d = 0 if prev is None else v - prev.get(a, 0)
                exceeded[a] = exceeded.get(a, 0) + (d if d >= 0 else v)
            for a, v in cur["available"].items():
                available[a] = min(v, available.get(a, v))
            self.prev[name] = cur["exceeded"]
        for gone in set(self.prev) - set(readings):
            del self.prev[gone]
        return {"allowance_exceeded": exceeded, "allowance_available": available,
                "interfaces": sorted(readings)}


class NicStats:
    """Reads every interface's allowance counters each interval through ethtool; ``interval()``
    gives the node's figures for the interval (see AllowanceAccount)."""

    def __init__(self, sys_net: str = SYS_NET):
        self.sys_net = sys_net
        self.ethtool: dict[str, object] = {}     # name -> pyroute2 IoctlEthtool, kept open
        self.unsupported: set[str] = set()
        self.account = AllowanceAccount()

    def _names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.sys_net))
        except OSError:
            return []

    def _read(self, name: str) -> dict[str, int] | None:
        """The interface's statistics, or None (and asked no more) where its driver has none,
        or none named like an allowance."""
        e = self.ethtool.get(name)
        if e is None:
            from pyroute2.ethtool.ioctl import IoctlEthtool
            try:
                e = IoctlEthtool(name)
            except OSError:
                self.unsupported.add(name)
                return None
        try:
            stats = dict(e.get_statistics())
        except Exception:                    # no statistics (NotSupportedError), or gone
            e.close()
            self.ethtool.pop(name, None)
            self.unsupported.add(name)
            return None
        if name not in self.ethtool:
            if not any(allowance_of(s) for s in stats):
                e.close()
                self.unsupported.add(name)
                return None
            self.ethtool[name] = e
        return stats

    def read_all(self, name: str) -> dict[str, int]:
        """Every ethtool statistic of one interface, read now."""
        from pyroute2.ethtool.ioctl import IoctlEthtool
        e = IoctlEthtool(name)
        try:
            return dict(e.get_statistics())
        finally:
            e.close()

    def interval(self) -> dict:
        """{"allowance_exceeded": {allowance: delta}, "allowance_available": {allowance: lowest},
        "interfaces": [names with allowances]}."""
        present = set(self._names())
        for gone in [n for n in self.ethtool if n not in present]:
            self.ethtool.pop(gone).close()
        self.unsupported &= present
        readings = {}
        for name in sorted(present - self.unsupported):
            stats = self._read(name)
            if stats is not None:
                readings[name] = stats
        return self.account.update(readings)

    def close(self) -> None:
        for e in self.ethtool.values():
            e.close()
        self.ethtool.clear()
