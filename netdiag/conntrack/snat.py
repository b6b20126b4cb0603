"""SNAT port allocation table (pure: fed with CtRecords, no sockets).

A row is (netns, NAT source ip, destination ip:port, protocol). Each conntrack entry of a row
holds one NAT port: entries to one destination from one NAT address cannot share a reply tuple,
so ``ports_in_use`` is the number of live entries of the row. ``allocations`` counts NEW entries
in the interval, ``releases`` DESTROYed ones.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ctmsg import CtRecord, snat_of

RowKey = tuple  # (netns inode, nat_ip, dst_ip, dst_port, proto)


@dataclass
class RowState:
    in_use: int = 0
    peak: int = 0          # highest in_use during the interval
    allocations: int = 0
    releases: int = 0


class SnatTable:
    def __init__(self):
        self.rows: dict[RowKey, RowState] = {}
        self._entries: dict[int, dict] = {}    # netns -> {entry id: RowKey}

    @staticmethod
    def _eid(rec: CtRecord):
        return rec.ct_id if rec.ct_id is not None else (rec.orig, rec.zone)

    def _add(self, netns: int, rec: CtRecord, count_allocation: bool) -> None:
        s = snat_of(rec)
        if s is None:
            return
        entries = self._entries.setdefault(netns, {})
        eid = self._eid(rec)
        if eid in entries:          # already seeded by the dump that raced this event
            return
        nat_ip, dst_ip, dst_port, proto, _port = s
        key = (netns, nat_ip, dst_ip, dst_port, proto)
        entries[eid] = key
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = RowState()
        row.in_use += 1
        if row.in_use > row.peak:
            row.peak = row.in_use
        if count_allocation:
            row.allocations += 1

    def seed(self, netns: int, records) -> None:
        """Entries that existed before monitoring started (a dump): in use, not allocations."""
        for rec in records:
            self._add(netns, rec, count_allocation=False)

    def apply(self, netns: int, rec: CtRecord) -> None:
        if rec.kind == "destroy":
            entries = self._entries.get(netns)
            key = entries.pop(self._eid(rec), None) if entries else None
            if key is None:
                return            # not SNATed, or never seen (destroyed before the dump)
            row = self.rows[key]
            row.in_use -= 1
            row.releases += 1
        else:
            self._add(netns, rec, count_allocation=(rec.kind == "new"))

    def apply_many(self, netns: int, records) -> None:
        for rec in records:
            self.apply(netns, rec)

    def reset_netns(self, netns: int) -> None:
        """Forget a namespace's entries (before a re-dump after lost events, or when it is gone)."""
        self._entries.pop(netns, None)
        for key in [k for k in self.rows if k[0] == netns]:
            del self.rows[key]

    def take_interval(self) -> dict[RowKey, RowState]:
        """This interval's view of every row; then interval counters restart and idle rows go."""
        out = {}
        for key, row in list(self.rows.items()):
            out[key] = RowState(row.in_use, row.peak, row.allocations, row.releases)
            row.allocations = row.releases = 0
            row.peak = row.in_use
            if row.in_use == 0:
                del self.rows[key]
        return out


def attribute_failures(rows: list[dict], insert_failed: int, drop: int) -> tuple[dict | None, str]:
    """Which row of one namespace this interval's insert_failed/drop belong to.

    Shown only when exactly one row of the namespace was saturated (peak ports in use reached
    its known port range) during the interval: a full range is what makes NAT fail to find a
    free tuple, and the failing SYN leaves no conntrack entry naming its destination. Otherwise
    (no saturated row, several, or ranges unknown) the failures stay with the namespace.
    Returns (row or None, reason).
    """
    if not insert_failed and not drop:
        return None, "none"
    full = [r for r in rows if r.get("port_range") and r["peak_in_use"] >= r["port_range"]]
    if len(full) == 1:
        return full[0], "only saturated destination"
    if not full:
        return None, "no saturated destination"
    return None, f"{len(full)} saturated destinations"


def utilization(in_use: int, port_range: int | None) -> float | None:
    if not port_range:
        return None
    return round(in_use / port_range, 4)
