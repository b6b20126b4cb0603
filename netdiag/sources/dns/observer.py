"""DNS on the wire in every network namespace of the node.

Three capture paths (``capture=``). ``socket``: tracepoints on the socket send/receive calls copy
what client sockets send to and read from port 53, with the socket's addresses and its
namespace's cookie (``sockcapture.py``; nothing runs per packet). ``cgroup``: cgroup_skb programs
on the root cgroup copy the DNS packets of local sockets into a ring buffer with their
namespace's cookie (``cgcapture.py``; nothing is cloned and nothing else reaches userspace). ``packet``, the fallback: one
``AF_PACKET``/``SOCK_DGRAM`` socket per namespace (opened inside it through
``namespaces.NetnsExecutor``), carrying the classic BPF filter of ``filter.py`` so only port-53
packets (UDP and TCP, IPv4 and IPv6) reach userspace; all sockets are read non-blocking by one
thread through ``selectors``. Namespaces that appear later (a new pod, a lab) are picked up by a
rescan every ``rescan_s`` seconds, and those that go away are closed (an open packet socket
would otherwise keep a deleted namespace alive). ``auto`` takes the socket path where the kernel
allows it, then the cgroup path (cgroup v2 mounted and visible whole, bpf_get_netns_cookie() in
cgroup_skb programs), and packet sockets otherwise; ``mode`` and ``fallback`` say which and why.

With the socket and cgroup paths, a namespace's cookie is read once (``SO_NETNS_COOKIE`` on a socket opened
in it); a packet from a namespace not known yet makes the observer rescan at once, so a new
namespace's first lookup is kept.

Each namespace counts the DNS traffic *it* originates as a client, each packet once:

* a query is counted where it leaves a namespace that owns its source address;
* an answer is counted where it arrives in a namespace that owns its destination address.

So a pod's lookup through the node's routing namespace is counted in the pod (not again in the
host, which only forwards it), and a server namespace answering queries resolves nothing
itself. Local addresses are read from the namespace's ``/proc/net/fib_trie`` and ``if_inet6``.
Answers fill a per-namespace ``NameCache`` (address -> names with TTL and CNAME chain); queries
are matched to answers by (namespace, transport, client address and port, server address, id)
for latency; a query unanswered after ``timeout_s`` is a timeout.

Lost answers: the kernel's per-socket drop counter (``PACKET_STATISTICS`` ``tp_drops``, packets
the socket buffer had no room for) is summed into ``lost``. DNS over TCP: every complete
length-prefixed message in a segment is decoded; with packets, a message split over segments is
counted in ``skipped.tcp_partial`` and not reassembled; with the socket path, what a socket
sends or reads is a byte stream, reassembled per socket across calls.
"""
from __future__ import annotations

import contextlib
import heapq
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path

from netdiag.sources import namespaces as nsx
from netdiag.sources.dns import filter as bpf
from netdiag.sources.dns.cache import NameCache, QueryStats
from netdiag.sources.dns.cgcapture import DIR_EGRESS, netns_cookie
from netdiag.sources.dns.cgcapture import decode as decode_record
from netdiag.sources.dns.sockcapture import DIR_RECV, DIR_SEND, decode_sock
from netdiag.sources.dns.wire import TCP, UDP, Packet, ParseCache, decode_ip, msg_id, tcp_messages

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
DNS_PORT = 53
DRAIN_BATCH = 1024            # packets per socket per round, so one busy namespace starves no other
CAPTURES = ("auto", "socket", "cgroup", "packet")
STREAM_MAX = 65537            # a DNS-over-TCP message and its length prefix
STREAMS_MAX = 4096            # socket-path TCP streams holding part of a message
UNMAPPED_MAX = 10_000         # packets held while their namespace is being looked up
UNMAPPED_AGE_S = 1.0


def _open_capture(rcvbuf: int) -> socket.socket:
    """Runs inside the target namespace."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    try:
        bpf.attach(s)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def local_addresses(proc_net: str = "/proc/thread-self/net") -> set[str]:
    """Addresses the calling thread's namespace owns (IPv4 from fib_trie's LOCAL routes, IPv6
    from if_inet6). Empty when unreadable (then nothing is filtered as forwarded)."""
    out: set[str] = set()
    try:
        last = None
        for line in Path(proc_net, "fib_trie").read_text().splitlines():
            s = line.strip()
            if s.startswith("|--"):
                last = s[3:].strip()
            elif s.startswith("/32 host LOCAL") and last:
                out.add(last)
    except OSError:
        pass
    try:
        for line in Path(proc_net, "if_inet6").read_text().splitlines():
            h = line.split()[0]
            out.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(h)))
    except (OSError, ValueError, IndexError):
        pass
    return out


class _Capture:
    __slots__ = ("ns", "inode", "name", "sock", "local")

    def __init__(self, ns: nsx.Namespace, sock: socket.socket | None, local: set):
        self.ns, self.inode, self.name, self.sock, self.local = ns, ns.inode, ns.name, sock, local


class DnsObserver:
    """``start()``, then ``lookup()`` / ``chain()`` any time and ``snapshot()`` once per interval;
    ``poll()`` processes everything already received (and rescans namespaces) before returning;
    ``close()``. With ``threaded=False`` nothing runs in the background and ``poll()`` is the
    only reader."""

    def __init__(self, netns_filter=None, timeout_s: float = 5.0, rescan_s: float = 2.0,
                 rcvbuf: int = 4 << 20, threaded: bool = True, max_addrs: int = 200_000,
                 max_pending: int = 200_000, proc: Path = nsx.PROC, run: Path = nsx.NETNS_RUN,
                 capture: str = "auto"):
        if capture not in CAPTURES:
            raise ValueError(f"capture must be one of {', '.join(CAPTURES)}")
        if isinstance(netns_filter, int):
            netns_filter = {netns_filter}
        self.netns_filter = set(netns_filter) if netns_filter is not None else None
        self.timeout_s, self.rescan_s, self.rcvbuf = timeout_s, rescan_s, rcvbuf
        self.threaded = threaded
        self.max_pending = max_pending
        self.cache = NameCache(max_addrs=max_addrs)
        self.parser = ParseCache()
        self._ns_watch = nsx.NamespaceWatcher(only=self.netns_filter, proc=proc, run=run)
        self._caps: dict[int, _Capture] = {}
        self._sel = selectors.DefaultSelector()
        self._lock = threading.RLock()
        self._pending: OrderedDict = OrderedDict()    # key -> (ts, netns, qname)
        self._stats: dict = {}                         # (netns, qname|None) -> QueryStats
        self._chains: dict = {}                        # (netns, qname) -> chain, this interval
        self._skipped = {"tcp_partial": 0, "malformed": 0, "pending_evicted": 0, "forwarded": 0, "unknown_netns": 0,
                         "unmatched": 0}
        self._streams: OrderedDict = OrderedDict()     # socket-path TCP stream -> bytes not yet a message
        self._lost = 0
        self._lost_total = 0
        self._open_errors: dict[int, str] = {}
        self._exec = None
        self._thread = None
        self._stop = threading.Event()
        self._go = threading.Event()     # clear while an interval is being made: the reader waits
        self._go.set()
        self._last_scan = 0.0
        self._last_expire = 0.0
        self._t_snap = None
        self.capture = capture
        self.mode = None                 # "socket", "cgroup_skb" or "packet" once started
        self.fallback = None             # why auto passed over the paths before it
        self._ring = None
        self._cookies: dict[int, int] = {}     # netns cookie -> inode (cgroup path)
        self._unmapped: list = []              # records from a namespace not known yet
        self._last_forced = 0.0
        self._foreign: set[int] = set()        # cookies a rescan could not place
        self._mono_off = 0.0

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> "DnsObserver":
        from netdiag.errors import NetdiagError
        from netdiag.sources.dns.cgcapture import RingCapture
        why = []
        for kind, mode in (("socket", "socket"), ("cgroup", "cgroup_skb")):
            if self.capture not in ("auto", kind):
                continue
            try:
                self._ring = RingCapture(kind)
            except NetdiagError as e:
                if self.capture == kind:
                    raise
                why.append(str(e))
            else:
                self.mode = mode
                break
        if self._ring is None:
            self.mode = "packet"
        self.fallback = "; ".join(why) or None
        self._mono_off = time.time() - time.monotonic()
        if self._ring is not None:
            for r in self._ring.rings:
                self._sel.register(r, selectors.EVENT_READ, None)
        self._exec = nsx.NetnsExecutor(name="dns-capture")
        with self._lock:
            self._rescan()
            self._t_snap = time.time()
        if self.threaded:
            self._thread = threading.Thread(target=self._loop, name="dns-observer", daemon=True)
            self._thread.start()
        return self

    @property
    def program(self) -> str | None:
        """The ring paths' programs: "compiled", or "cached" (from a program image); None for
        packet sockets."""
        return self._ring.det.program if self._ring is not None else None

    @property
    def cache_note(self) -> str | None:
        """Why they were compiled although an image could hold them."""
        return self._ring.det.cache_note if self._ring is not None else None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for inode in list(self._caps):
                self._drop(inode)
        if self._exec is not None:
            self._exec.close()
            self._exec = None
        if self._ring is not None:
            for r in self._ring.rings:
                try:
                    self._sel.unregister(r)
                except (KeyError, ValueError):
                    pass
            self._ring.close()
            self._ring = None
        self._sel.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def covered(self) -> dict[int, str | None]:
        """inode -> ip-netns name of every namespace being captured."""
        with self._lock:
            return {i: c.name for i, c in self._caps.items()}

    # -- namespaces -----------------------------------------------------------------------------
    def _rescan(self, periodic: bool = True) -> None:
        if periodic:
            self._foreign.clear()
        added, removed = self._ns_watch.poll()
        for ns in removed:
            self._drop(ns.inode)
        for ns in added:
            self._add(ns)
        for cap in self._caps.values():                # addresses come and go (pod IPs, labs)
            if cap.sock is None:
                continue                               # cgroup path: every packet is a local socket's
            try:
                cap.local = self._exec.call(cap.ns, local_addresses, timeout=5)
            except (OSError, nsx.NetnsError):
                pass
        if periodic:
            self._last_scan = time.monotonic()

    def _add(self, ns: nsx.Namespace) -> None:
        if self._ring is not None:
            try:
                cookie = self._exec.call(ns, netns_cookie, timeout=5)
            except (OSError, nsx.NetnsError) as e:
                self._open_errors[ns.inode] = str(e)
                return
            self._cookies[cookie] = ns.inode
            self._caps[ns.inode] = _Capture(ns, None, set())
            return
        try:
            sock = self._exec.call(ns, _open_capture, self.rcvbuf, timeout=5)
            local = self._exec.call(ns, local_addresses, timeout=5)
        except (OSError, nsx.NetnsError) as e:
            self._open_errors[ns.inode] = str(e)
            return
        cap = _Capture(ns, sock, local)
        self._caps[ns.inode] = cap
        self._sel.register(sock, selectors.EVENT_READ, cap)
        self._drain(cap, limit=None)      # what queued before the filter was attached goes through _handle's checks

    def _drop(self, inode: int) -> None:
        cap = self._caps.pop(inode, None)
        if cap is None:
            return
        if cap.sock is None:
            self._drain_ring(limit=None)
            self._cookies = {c: i for c, i in self._cookies.items() if i != inode}
            return
        self._drain(cap, limit=None)
        self._lost += self._read_drops(cap)
        try:
            self._sel.unregister(cap.sock)
        except (KeyError, ValueError):
            pass
        cap.sock.close()

    @staticmethod
    def _read_drops(cap: _Capture) -> int:
        try:
            _pk, drops = struct.unpack("II", cap.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return 0
        return drops             # the kernel resets the counters on each read

    # -- reading --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self):
        """While inside, the background reader takes no packet (what arrives waits in the rings
        and sockets, or is counted lost where they overflow): the interval being made gets the
        CPU, so a DNS flood cannot make it late."""
        self._go.clear()
        try:
            yield
        finally:
            self._go.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._go.is_set():
                self._go.wait(0.5)
                continue
            try:
                events = self._sel.select(timeout=0.2)
            except (OSError, ValueError):       # closed under us
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            with self._lock:
                if any(key.data is None for key, _ in events):
                    self._drain_ring()                  # every CPU's ring at once, in time order
                for key, _ in events:
                    cap = key.data
                    if cap is not None and cap.inode in self._caps:
                        self._drain(cap)
                self._housekeeping()

    def _housekeeping(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_scan >= self.rescan_s:
            self._rescan()
        if force or now - self._last_expire >= 0.25:
            self._expire(time.time())
            self._last_expire = now

    def poll(self) -> None:
        """Process every packet already queued on every socket, rescan namespaces (new ones are
        captured from now on) and expire unanswered queries; returns when done."""
        with self._lock:
            for cap in list(self._caps.values()):
                if cap.sock is not None:
                    self._drain(cap, limit=None)
            self._drain_ring(limit=None)
            self._housekeeping(force=True)
            for cap in list(self._caps.values()):
                if cap.sock is not None:
                    self._drain(cap, limit=None)
            self._drain_ring(limit=None)
            self._retry_unmapped(final=True)

    def _drain(self, cap: _Capture, limit: int | None = DRAIN_BATCH) -> None:
        sock = cap.sock
        n = 0
        while limit is None or n < limit:
            try:
                data, anc, _flags, addr = sock.recvmsg(65535, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            n += 1
            ts = None
            for lvl, typ, val in anc:
                if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(val) >= 16:
                    sec, nsec = struct.unpack_from("qq", val)
                    ts = sec + nsec * 1e-9
            self._handle(cap, data, addr[2], ts or time.time())

    def _drain_ring(self, limit: int | None = DRAIN_BATCH) -> None:
        if self._ring is None:
            return
        for rec in self._ring.records(limit):
            d = decode_record(rec)
            if d is None:
                self._skipped["malformed"] += 1
                continue
            ts_ns, cookie, direction, data = d
            self._ring_packet(cookie, direction, ts_ns / 1e9 + self._mono_off, data)
        self._retry_unmapped()

    def _ring_packet(self, cookie: int, direction: int, ts: float, data: bytes, retry: bool = False) -> bool:
        inode = self._cookies.get(cookie)
        cap = self._caps.get(inode) if inode is not None else None
        if cap is None:
            if cookie in self._foreign:
                self._skipped["unknown_netns"] += 1
            elif not retry:
                self._unmapped.append((time.monotonic(), cookie, direction, ts, data))
                if len(self._unmapped) > UNMAPPED_MAX:
                    self._unmapped.pop(0)
                    self._skipped["unknown_netns"] += 1
            return False
        if direction in (DIR_SEND, DIR_RECV):
            self._handle_sock(cap, direction, data, ts)
        else:
            self._handle(cap, data, PACKET_OUTGOING if direction == DIR_EGRESS else 0, ts)
        return True

    def _retry_unmapped(self, final: bool = False) -> None:
        """Packets from a namespace that had no cookie mapped yet: rescan (at most every 0.1 s)
        and place them; those still unplaced after a few rescans belong to a namespace the
        observer does not watch (a --netns filter) or one already gone."""
        if not self._unmapped:
            return
        now = time.monotonic()
        rescanned = now - self._last_forced >= 0.1
        if rescanned:
            self._last_forced = now
            self._rescan(periodic=False)
        keep = []
        for item in self._unmapped:
            if item[1] not in self._foreign and self._ring_packet(item[1], item[2], item[3], item[4], retry=True):
                continue
            if rescanned or final or now - item[0] > UNMAPPED_AGE_S:
                self._skipped["unknown_netns"] += 1
                if rescanned:
                    self._foreign.add(item[1])     # until the next periodic rescan
            else:
                keep.append(item)
        self._unmapped = keep

    def _handle(self, cap: _Capture, data: bytes, pkttype: int, ts: float) -> None:
        p = decode_ip(data)
        if p is None:
            return
        outgoing = pkttype == PACKET_OUTGOING
        local = cap.local
        if outgoing and p.dport == DNS_PORT:
            if local and p.src not in local:
                self._skipped["forwarded"] += 1
                return
            is_query = True
        elif not outgoing and p.sport == DNS_PORT:
            if local and p.dst not in local:
                self._skipped["forwarded"] += 1
                return
            is_query = False
        else:
            return          # the server side of a lookup, or not DNS at all
        if p.proto == UDP:
            msgs = [p.payload] if p.payload else []
        else:
            msgs, rest = tcp_messages(p.payload)
            if rest:
                self._skipped["tcp_partial"] += 1
        self._messages(cap.inode, p, msgs, is_query, ts)

    def _handle_sock(self, cap: _Capture, direction: int, data: bytes, ts: float) -> None:
        """A socket-path record: what a client socket sent to or read from port 53."""
        r = decode_sock(data)
        if r is None:
            self._skipped["malformed"] += 1
            return
        is_query = direction == DIR_SEND
        if is_query:
            p = Packet(r.proto, r.laddr, r.lport, r.raddr, r.rport, r.payload)
        else:
            p = Packet(r.proto, r.raddr, r.rport, r.laddr, r.lport, r.payload)
        if r.proto == UDP:
            msgs = [r.payload]
        else:                 # a piece of the byte stream: messages complete across reads
            key = (cap.inode, direction, r.laddr, r.lport, r.raddr, r.rport)
            buf = self._streams.pop(key, b"") + r.payload
            msgs, rest = tcp_messages(buf)
            if rest and rest <= STREAM_MAX:
                self._streams[key] = buf[len(buf) - rest:]
                if len(self._streams) > STREAMS_MAX:
                    self._streams.popitem(last=False)
                    self._skipped["tcp_partial"] += 1
            elif rest:
                self._skipped["tcp_partial"] += 1
            if not msgs:
                return        # the rest of this message comes with a later read
        if r.guessed:
            # an unconnected socket's read: its source is known only as where the socket's last
            # query went, so it counts only as the answer to a query seen
            msgs = [m for m in msgs if len(m) >= 12 and
                    (cap.inode, p.proto, p.dst, p.dport, p.src, msg_id(m)) in self._pending]
            if not msgs:
                self._skipped["unmatched"] += 1
                return
        self._messages(cap.inode, p, msgs, is_query, ts, pid=r.pid)

    def _messages(self, inode: int, p: Packet, msgs: list, is_query: bool, ts: float, pid: int = 0) -> None:
        if not msgs:
            self._st(inode, None).packets += 1       # TCP handshake / ACKs: DNS packets all the same
            return
        first = True
        for msg in msgs:
            m = self.parser.get(msg) if len(msg) >= 12 else None
            if m is None:
                self._skipped["malformed"] += 1
                if first:
                    self._st(inode, None).packets += 1
                first = False
                continue
            st = self._st(inode, m.qname)
            if first:
                st.packets += 1
                first = False
            if p.proto == TCP:
                st.tcp += 1
            if is_query and not m.qr:
                key = (inode, p.proto, p.src, p.sport, p.dst, msg_id(msg))
                self._pending[key] = (ts, inode, m.qname)
                if len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
                    self._skipped["pending_evicted"] += 1
                st.queries += 1
            elif not is_query and m.qr:
                q = self._pending.pop((inode, p.proto, p.dst, p.dport, p.src, msg_id(msg)), None)
                st.answers += 1
                if m.rcode == "NXDOMAIN":
                    st.nxdomain += 1
                elif m.rcode == "SERVFAIL":
                    st.servfail += 1
                if q is not None:
                    st.add_latency(max(0.0, (ts - q[0]) * 1000.0))
                for owner, ip, ttl in m.addrs:
                    chain = m.chain(owner)
                    self.cache.add(inode, ip, owner, ts, ttl, chain, pid=pid)
                    if len(chain) > 1:
                        self._chains[(inode, m.qname)] = chain

    def _st(self, inode: int, qname) -> QueryStats:
        st = self._stats.get((inode, qname))
        if st is None:
            st = self._stats[(inode, qname)] = QueryStats()
        return st

    def _expire(self, now: float) -> None:
        limit = now - self.timeout_s
        pend = self._pending
        while pend:
            key, (ts, inode, qname) = next(iter(pend.items()))
            if ts > limit:
                break
            pend.popitem(last=False)
            self._st(inode, qname).timeouts += 1

    # -- queries --------------------------------------------------------------------------------
    def lookup(self, netns: int, ip: str, at: float | None = None) -> list[str]:
        """Names ``netns`` resolved to ``ip`` (at or before ``at``), most recent first."""
        with self._lock:
            return self.cache.lookup(netns, ip, at)

    def entries(self, netns: int, ip: str, at: float | None = None):
        with self._lock:
            return self.cache.entries(netns, ip, at)

    def chain(self, netns: int, name: str) -> list[str]:
        """The CNAME chain that last led ``netns`` to ``name`` (from the question asked)."""
        with self._lock:
            return self.cache.chain(netns, name)

    def snapshot(self) -> dict:
        """Counters since the previous snapshot (call once per interval)."""
        with self._lock:
            self._expire(time.time())
            for cap in self._caps.values():
                if cap.sock is not None:
                    self._lost += self._read_drops(cap)
            if self._ring is not None:
                self._lost += self._ring.lost()
            now = time.time()
            interval = max(now - (self._t_snap or now), 1e-6)
            stats, self._stats = self._stats, {}
            chains, self._chains = self._chains, {}
            lost, self._lost = self._lost, 0
            self._lost_total += lost
            skipped = dict(self._skipped)
            names = {i: c.name for i, c in self._caps.items()}
            covered = len(self._caps)
            pending = len(self._pending)
            self._t_snap = now
        return build_snapshot(stats, chains, interval, names, lost=lost, lost_total=self._lost_total,
                              skipped=skipped, covered=covered, pending=pending)


MAX_NAME_ROWS = 1000     # per interval, in `domains` and in `netns_domains`: the busiest; the rest counted


def build_snapshot(stats: dict, chains: dict, interval_s: float, names: dict, lost: int = 0,
                   lost_total: int = 0, skipped: dict | None = None, covered: int = 0, pending: int = 0,
                   max_rows: int = MAX_NAME_ROWS) -> dict:
    """(netns, qname) -> QueryStats of one interval -> the snapshot dict (pure). A flood of
    distinct names (random subdomains) keeps the record bounded: `domains` and `netns_domains`
    hold at most ``max_rows`` rows each, the most packets first; `domains_folded` and
    `netns_domains_folded` say how many were left out (their packets stay in the totals)."""
    node, by_dom, by_ns = QueryStats(), {}, {}
    for (inode, qname), st in stats.items():
        node.merge(st)
        by_ns.setdefault(inode, QueryStats()).merge(st)
        if qname is not None:
            by_dom.setdefault(qname, QueryStats()).merge(st)
    chain_by_name: dict = {}
    for (inode, qname), ch in chains.items():
        chain_by_name[qname] = list(ch)
    out = node.as_dict(interval_s)
    def busiest(rows, key):
        return heapq.nsmallest(max_rows, rows, key=key) if len(rows) > max_rows else sorted(rows, key=key)

    dom_rows = [(d, st) for d, st in by_dom.items()]
    nd_rows = [(k, st) for k, st in stats.items() if k[1] is not None]
    dom_rows = busiest(dom_rows, lambda t: (-t[1].packets, t[0]))
    folded_nd = max(0, len(nd_rows) - max_rows)
    nd_rows = busiest(nd_rows, lambda t: (-t[1].packets, t[0][0], t[0][1]))
    out.update({
        "interval_s": round(interval_s, 3),
        "lost": lost,
        "lost_total": lost_total,
        "pending": pending,
        "netns_covered": covered,
        "skipped": skipped or {},
        "domains": [{"domain": d, **st.as_dict(interval_s), **({"chain": chain_by_name[d]} if d in chain_by_name else {})}
                    for d, st in dom_rows],
        "domains_folded": len(by_dom) - len(dom_rows),
        "netns": sorted(({"netns": i, "netns_name": names.get(i), **st.as_dict(interval_s)}
                         for i, st in by_ns.items()), key=lambda r: (-r["packets"], r["netns"])),
        "netns_domains": [{"netns": i, "netns_name": names.get(i), "domain": q, **st.as_dict(interval_s),
                           **({"chain": list(chains[(i, q)])} if (i, q) in chains else {})}
                          for (i, q), st in nd_rows],
        "netns_domains_folded": folded_nd,
    })
    return out
