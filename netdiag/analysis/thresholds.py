"""Every threshold the diagnosis engine uses, in one place (documented in docs/verdicts.md).

Change them by passing ``Thresholds(...)`` to ``Diagnoser``; the defaults are what `watch` and
the labs use.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Thresholds:
    # -- all verdicts --------------------------------------------------------------------------
    window_s: float = 10.0            # evidence is summed over the intervals of the last window_s seconds
    confirm_intervals: int = 2        # a verdict appears once its evidence held in this many consecutive intervals
    stand_s: float = 10.0             # a verdict stands (is returned by update()) this long after its evidence was last seen

    # -- snat_port_exhaustion -------------------------------------------------------------------
    snat_full_utilization: float = 1.0   # NAT ports in use / MASQUERADE range at or above this…
    snat_min_failures: int = 1           # …and at least this many insert_failed/drop in the NAT netns in the window

    # -- remote_connection_cap --------------------------------------------------------------------
    cap_plateau_intervals: int = 3    # `active` equal to its window peak for this many consecutive intervals…
    cap_min_failures: int = 1         # …while at least this many SYN retransmits or failed connects (not refused,
                                      #    not EADDRNOTAVAIL) happened in the window
    cap_min_active: int = 1

    # -- local_port_exhaustion ----------------------------------------------------------------------
    ports_min_eaddrnotavail: int = 1  # connect() failures with EADDRNOTAVAIL in the window

    # -- conntrack_table_full / conntrack_insert_race ----------------------------------------------
    ct_full_fill: float = 0.95        # entries / max at or above this…
    ct_full_min_drops: int = 1        # …and drop + early_drop in the window
    ct_race_min_insert_failed: int = 1  # insert_failed with the table below ct_full_fill and no NAT range full

    # -- listen_overflow ------------------------------------------------------------------------
    overflow_min: int = 1             # listen overflows (ListenOverflows of the listener's netns) in the window

    # -- idle_timeout_reset -------------------------------------------------------------------------
    idle_min_resets: int = 2          # RSTs received on established connections in one interval…
    idle_min_age_s: float = 2.0       # …by connections at least this old (youngest reset connection)

    # -- connection_burst -------------------------------------------------------------------------
    burst_ratio: float = 4.0          # connects in the peak interval / mean connects per interval in the window
    burst_min_connects: int = 20      # connects in the peak interval
    burst_min_span_s: float = 1.0     # the window must cover at least this much time since arrivals began
    burst_max_interval_s: float = 0.25  # bursts are judged only on intervals this short or shorter (use --interval 0.1)

    # -- connection_churn ---------------------------------------------------------------------------
    churn_connects_per_active: float = 10.0   # connects per second / mean active connections (≈ 1 / mean lifetime)
    churn_min_rate: float = 20.0              # connects per second over the window
    churn_min_span_s: float = 3.0             # seconds of data before churn is judged

    # -- connection_fanout (watch --per-process) ---------------------------------------------------
    fanout_ratio: float = 2.0                 # outbound connects per inbound connection of one program in one netns…
    fanout_min_inbound: int = 5               # …over at least this many inbound connections in the window…
    fanout_min_connects: int = 20             # …and this many connects

    # -- cloud_allowance_exceeded / cloud_allowance_low ----------------------------------------------
    allowance_min_exceeded: int = 1           # packets over a NIC allowance (*_allowance_exceeded) in the window
    allowance_low_available: int = 1000       # *_allowance_available at or below this warns before drops begin

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT = Thresholds()
