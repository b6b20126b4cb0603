"""SNAT port allocation table (pure: fed with CtRecords, no sockets).

A row is (netns, NAT source ip, destination ip:port, protocol). Each conntrack entry of a row
holds one NAT port: entries to one destination from one NAT address cannot share a reply tuple,
so ``ports_in_use`` is the number of live entries of the row. ``allocations`` counts NEW entries
in the interval, ``releases`` DESTROYed ones.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from netdiag.sources.conntrack.ctmsg import PROTO_NAMES, CtRecord, entry_key, snat_of

RowKey = tuple  # (netns inode, nat_ip, dst_ip, dst_port, proto) -- strings/ints once reported


@dataclass
class RowState:
    in_use: int = 0
    peak: int = 0          # highest in_use during the interval
    allocations: int = 0
    releases: int = 0


def _ip(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(b) == 4 else socket.AF_INET6, b)


class SnatTable:
    """Entries are keyed by their reply tuple in raw form ``(r_src, r_dst, proto, r_sport,
    r_dport)`` (bytes, as ``ctmsg.fast_fields`` reads them): unique per live entry, present in
    NEW and DESTROY alike. Rows are keyed ``(netns, nat_ip, dst_ip, dst_port, proto)`` raw and
    turned into text only when reported."""

    def __init__(self):
        self.rows: dict[tuple, RowState] = {}
        self._entries: dict[int, dict] = {}    # netns -> {entry key: row key}

    def add(self, netns: int, ekey: tuple, count_allocation: bool = True) -> None:
        """A source-NATed entry was created (the caller checked it is source-NATed)."""
        entries = self._entries.get(netns)
        if entries is None:
            entries = self._entries[netns] = {}
        elif ekey in entries:          # already seeded by the dump that raced this event
            return
        key = (netns, ekey[1], ekey[0], ekey[3], ekey[2])
        entries[ekey] = key
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = RowState()
        row.in_use += 1
        if row.in_use > row.peak:
            row.peak = row.in_use
        if count_allocation:
            row.allocations += 1

    def remove(self, netns: int, ekey: tuple) -> None:
        entries = self._entries.get(netns)
        key = entries.pop(ekey, None) if entries else None
        if key is None:
            return            # not source-NATed, or never seen (destroyed before the dump)
        row = self.rows[key]
        row.in_use -= 1
        row.releases += 1

    def apply_ops(self, netns: int, ops) -> None:
        """[(is_new, entry key)] as ``NetlinkEvents.drain`` returns them."""
        add, remove = self.add, self.remove
        for is_new, ekey in ops:
            if is_new:
                add(netns, ekey)
            else:
                remove(netns, ekey)

    def seed(self, netns: int, records) -> None:
        """Entries that existed before monitoring started (a dump): in use, not allocations."""
        for rec in records:
            if snat_of(rec) is not None:
                self.add(netns, entry_key(rec), count_allocation=False)

    def apply(self, netns: int, rec: CtRecord) -> None:
        if rec.kind == "destroy":
            self.remove(netns, entry_key(rec))
        elif snat_of(rec) is not None:
            self.add(netns, entry_key(rec), count_allocation=(rec.kind == "new"))

    def apply_many(self, netns: int, records) -> None:
        for rec in records:
            self.apply(netns, rec)

    def reset_netns(self, netns: int) -> None:
        """Forget a namespace's entries (before a re-dump after lost events, or when it is gone)."""
        self._entries.pop(netns, None)
        for key in [k for k in self.rows if k[0] == netns]:
            del self.rows[key]

    def take_interval(self) -> dict[RowKey, RowState]:
        """This interval's view of every row (text keys); then interval counters restart and
        rows with nothing in use go."""
        out = {}
        for key, row in list(self.rows.items()):
            netns, nat_ip, dst_ip, dport, proto = key
            tkey = (netns, _ip(nat_ip), _ip(dst_ip), int.from_bytes(dport, "big"), PROTO_NAMES.get(proto, str(proto)))
            out[tkey] = RowState(row.in_use, row.peak, row.allocations, row.releases)
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
