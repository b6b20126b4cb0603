"""ctnetlink statistics over a plain netlink socket (``conntrack -S`` and ``conntrack -C``).

One ``CtStatsSocket`` is created inside each namespace when the monitor first sees it and read
from any thread every interval: one dump of the per-CPU counters and one request for the
table's entries and maximum, each attribute a big-endian u32 at a known type, so no pyroute2
message objects are built.
"""
from __future__ import annotations

import struct

from netdiag.sources.conntrack.stats import COUNTERS
from netdiag.sources.netlink import NLM_F_DUMP, NetlinkSocket, attrs

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET_STATS_CPU, IPCTNL_MSG_CT_GET_STATS = 4, 5
NFGENMSG = struct.Struct("=BBH")            # family, version, res_id (big-endian; the CPU in replies)
CTA_STATS_GLOBAL_ENTRIES, CTA_STATS_GLOBAL_MAX_ENTRIES = 1, 2
BE32 = struct.Struct(">I")


class CtStatsSocket:
    """ctnetlink statistics of the namespace this was created in."""

    def __init__(self):
        self.nl = NetlinkSocket(NETLINK_NETFILTER)
        self._req = NFGENMSG.pack(0, 0, 0)

    def per_cpu(self) -> list[dict[str, int]]:
        """[{counter: value}] per CPU, counters named as in ``stats.COUNTERS``."""
        out = []
        for _, payload in self.nl.request((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS_CPU,
                                          NLM_F_DUMP, self._req, "conntrack statistics"):
            a = attrs(payload, NFGENMSG.size)
            out.append({name: BE32.unpack(a[i + 1])[0] for i, name in enumerate(COUNTERS) if i + 1 in a})
        return out

    def count(self) -> tuple[int | None, int | None]:
        """(entries, maximum) of the namespace's table."""
        got = self.nl.request((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS, 0, self._req,
                              "conntrack count")
        if not got:
            return None, None
        a = attrs(got[0][1], NFGENMSG.size)
        ent, mx = a.get(CTA_STATS_GLOBAL_ENTRIES), a.get(CTA_STATS_GLOBAL_MAX_ENTRIES)
        return (BE32.unpack(ent)[0] if ent else None), (BE32.unpack(mx)[0] if mx else None)

    def close(self) -> None:
        self.nl.close()
