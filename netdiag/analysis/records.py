"""The interval record's types: what flows from aggregation through enrichment and diagnosis to
every sink. They are TypedDicts, so the record stays the plain JSON object of the contract
(docs/contracts.md, docs/schema/watch-interval.schema.json) and a sink writes it as it is;
tests/unit/test_records.py checks these declarations against the schema, field by field.

Fields may be added, never renamed. Optional parts (`NotRequired`) appear only with the options
or hooks that produce them.

Endpoints (a row's `dst`, a listener's `listen`, a verdict's `dst` or `listener`, a process's
`listens`) are ``Endpoint`` keys (netdiag/analysis/keys.py): structured, read by their `addr` and
`port`, and as text the contract's "addr:port", which is what the sinks write.
"""

from typing import Any, Optional

from typing_extensions import NotRequired, TypedDict

from netdiag.analysis.keys import Endpoint


class DestinationRow(TypedDict):
    """One destination (out) or local service endpoint (in) in one namespace, for one interval."""
    dst: Endpoint                     # remote (out) or local (in) endpoint: "addr:port" ("[addr]:port" for IPv6)
    domain: Optional[str]             # the name the namespace resolved it by (--per-domain)
    direction: str                    # "out" | "in"
    netns: int
    netns_name: Optional[str]
    connects: int
    established: int
    failed: int
    active: int                       # a gauge: connections held now
    resets_in: int
    resets_out: int
    syn_retrans: int
    retrans: int
    accepts: Optional[int]            # null where accept() is not hooked
    connect_ms_avg: Optional[float]
    failed_by_errno: dict[str, int]
    resets_out_by_reason: Optional[dict[str, int]]   # null where the kernel gives no reset reason
    pod: NotRequired[Optional[str]]   # --per-pod
    by_process: NotRequired[list[dict[str, int]]]   # --per-domain: connects by the process that started them
    domain_by: NotRequired[str]       # --per-domain: "process" | "pod"
    domain_split: NotRequired[list[dict[str, Any]]]  # --per-domain: one share per name the processes resolved


class ListenerRow(TypedDict):
    listen: Endpoint
    netns: int
    netns_name: Optional[str]
    queue: int
    max_queue: int
    backlog: int
    established: int
    accepts: Optional[int]
    overflows: int
    synack_retrans: int
    overflows_shared: NotRequired[bool]
    inode: NotRequired[int]           # the listening socket's inode (who holds it)


class ProcessRow(TypedDict):
    """One process (tgid in the network namespace of its sockets), for one interval (--per-process)."""
    pid: int
    comm: Optional[str]
    netns: int
    netns_name: NotRequired[Optional[str]]
    pod: NotRequired[Optional[str]]   # --per-pod
    connects: int
    established: int
    failed: int
    resets_in: int
    resets_out: int
    accepts: Optional[int]            # null where no accept hook runs
    inbound: int                      # accepts, or the handshakes on the listeners it holds
    inbound_via: str                  # "accept" | "listener"
    listens: NotRequired[list[Endpoint]]


class Verdict(TypedDict):
    kind: str
    where: str
    evidence: dict[str, Any]
    advice: str
    dst: NotRequired[Optional[str]]   # an Endpoint (a NAT verdict's: the NAT row's "addr:port" text)
    cap: NotRequired[Any]             # the number: a cap, a backlog, a timeout
    netns: NotRequired[Optional[int]]
    netns_name: NotRequired[Optional[str]]
    listener: NotRequired[Endpoint]   # listener verdicts: the listening endpoint
    domain: NotRequired[Optional[str]]     # --per-domain: named by the pipeline from the verdict's rows
    pods: NotRequired[list[str]]           # --per-pod


class IntervalRecord(TypedDict):
    type: str                         # "interval"
    ts: float
    node: str
    interval_s: float
    modes: dict[str, Any]
    lost_events: int
    evictions: int
    evictions_total: int
    map_entries: int
    map_max: int
    socket_map_entries: int
    socket_map_max: int
    seeding: bool
    unmeasured: NotRequired[dict[str, str]]   # record fields this kernel cannot fill (null there) -> why
    destinations: list[DestinationRow]
    listeners: list[ListenerRow]
    processes: NotRequired[list[ProcessRow]]     # --per-process
    process_evictions: NotRequired[int]
    process_map_entries: NotRequired[int]
    process_map_max: NotRequired[int]
    node_totals: dict[str, Any]
    verdicts: list[Verdict]
