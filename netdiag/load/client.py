"""The load client: opens, holds, churns or bursts TCP connections and counts what happened.

Connections are spread over worker processes (one per core by default); each worker runs one
epoll loop over non-blocking sockets kept as bare file descriptors (no object per connection
beyond a dict entry), so holding 100k connections costs little userspace memory.

Every failure is counted by errno name (``ECONNREFUSED``, ``ETIMEDOUT``, ``EADDRNOTAVAIL``…);
nothing expected is raised. Every run is bounded in count (``connections``) and in time
(``timeout`` per connect, ``max_time`` for the whole run).
"""
from __future__ import annotations

import errno
import heapq
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import socket
import threading
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from netdiag.errors import BadInput, NetdiagError
from netdiag.load import _sys, stats
from netdiag.load.limits import (
    FD_SLACK,
    ResourceLimit,
    check_file_max,
    check_port_capacity,
    max_fds_per_process,
    raise_nofile,
)
from netdiag.load.targets import IP_BIND_ADDRESS_NO_PORT

Target = Tuple[str, int]

# shared counter slots per worker
ATTEMPTED, ESTABLISHED, FAILED, DELAYED, OPEN_NOW, PEAK, REQUESTS, DONE, OPEN_AT_HOLD = range(9)
NSLOTS = 9

MAX_WORKERS = 512
DEFAULT_CONCURRENCY = 1024       # connects in flight per worker unless --concurrency says otherwise
CANCELLED = errno.ECANCELED     # in flight when the run was stopped (deadline or Ctrl-C)
EOF_NAME = "EOF"                # peer closed a held connection in order

_EP_CONNECT = select.EPOLLOUT | select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_EP_BAD = select.EPOLLERR | select.EPOLLHUP
_EP_IN = select.EPOLLIN | select.EPOLLRDHUP
_SOCK_TYPE = socket.SOCK_STREAM | _sys.SOCK_NONBLOCK | _sys.SOCK_CLOEXEC


class ClientError(NetdiagError):
    """Workers failed in a way that left no result."""


class NothingEstablished(NetdiagError):
    """Every connect failed: the target is unreachable or refusing."""
    exit_code = 69


@dataclass
class ClientConfig:
    targets: List[Target]
    connections: int = 1
    concurrency: Optional[int] = None       # connects in flight at once (total)
    threads: Optional[int] = None           # blocking connects from T threads (seed 000's threaded client)
    single: bool = False                    # one connect at a time, one worker
    rate: Optional[float] = None            # connects per second (total)
    burst: Optional[int] = None             # connects per burst
    burst_window_ms: float = 50.0
    burst_interval_ms: float = 1000.0
    hold: float = 0.0
    keepalive: Optional[float] = None       # send one byte on each held connection every S seconds
    delay_threshold_ms: Optional[float] = None
    timeout: float = 5.0
    requests_per_conn: Optional[int] = None  # churn: K HTTP requests per connection
    requests: Optional[int] = None          # churn: requests per client (default K)
    idle_ms: float = 0.0                    # churn: gap between requests on a connection
    source_ips: List[str] = field(default_factory=list)
    workers: Optional[int] = None
    duration: Optional[float] = None        # churn/hold: stop after S seconds
    max_time: Optional[float] = None        # hard bound on the whole run
    host_header: str = "netdiag"

    @property
    def churn(self) -> bool:
        return self.requests_per_conn is not None

    def mode(self) -> str:
        if self.churn:
            return "churn"
        if self.burst:
            return "burst"
        if self.threads:
            return "threads"
        return "hold"

    def validate(self) -> None:
        if not self.targets:
            raise BadInput("no target given")
        for ip, port in self.targets:
            if not 1 <= port <= 65535:
                raise BadInput(f"port {port} out of range 1-65535")
        if self.connections < 0:
            raise BadInput(f"--connections must be 0 or more, not {self.connections}")
        if self.connections > 10_000_000:
            raise BadInput(f"--connections {self.connections} is above the 10,000,000 bound")
        picked = sum(x is not None and x is not False for x in (self.concurrency, self.threads,
                                                               self.single or None))
        if picked > 1:
            raise BadInput("pick one of --concurrency, --threads and --single")
        if self.concurrency is not None and self.concurrency < 1:
            raise BadInput(f"--concurrency must be at least 1, not {self.concurrency}")
        if self.threads is not None and not 1 <= self.threads <= 20000:
            raise BadInput(f"--threads must be 1-20000, not {self.threads}")
        if self.rate is not None and self.rate <= 0:
            raise BadInput(f"--rate must be above 0, not {self.rate}")
        if self.burst is not None:
            if self.burst < 1:
                raise BadInput(f"--burst must be at least 1, not {self.burst}")
            if self.burst_window_ms <= 0:
                raise BadInput(f"--burst-window-ms must be above 0, not {self.burst_window_ms}")
            if self.burst_interval_ms < self.burst_window_ms:
                raise BadInput("--burst-interval-ms must be at least --burst-window-ms")
        if self.hold < 0:
            raise BadInput(f"--hold must be 0 or more, not {self.hold}")
        if self.keepalive is not None and self.keepalive <= 0:
            raise BadInput(f"--keepalive must be above 0, not {self.keepalive}")
        if self.timeout <= 0:
            raise BadInput(f"--timeout must be above 0, not {self.timeout}")
        if self.delay_threshold_ms is not None and self.delay_threshold_ms < 0:
            raise BadInput(f"--delay-threshold-ms must be 0 or more, not {self.delay_threshold_ms}")
        if self.requests_per_conn is not None and self.requests_per_conn < 1:
            raise BadInput(f"--requests-per-conn must be at least 1, not {self.requests_per_conn}")
        if self.requests is not None:
            if self.requests_per_conn is None:
                raise BadInput("--requests needs --requests-per-conn (churn mode)")
            if self.requests < 1:
                raise BadInput(f"--requests must be at least 1, not {self.requests}")
        if self.idle_ms < 0:
            raise BadInput(f"--idle-ms must be 0 or more, not {self.idle_ms}")
        if self.churn and (self.threads or self.burst):
            raise BadInput("--requests-per-conn (churn) cannot be combined with --threads or --burst")
        if self.threads and self.burst:
            raise BadInput("--burst cannot be combined with --threads")
        if self.workers is not None and not 1 <= self.workers <= MAX_WORKERS:
            raise BadInput(f"--workers must be 1-{MAX_WORKERS}, not {self.workers}")
        if self.duration is not None and self.duration <= 0:
            raise BadInput(f"--duration must be above 0, not {self.duration}")
        if self.max_time is not None and self.max_time <= 0:
            raise BadInput(f"--max-time must be above 0, not {self.max_time}")

    def effective_max_time(self) -> float:
        if self.max_time is not None:
            return self.max_time
        if self.duration is not None:
            return self.duration + self.timeout + 30.0
        # generous: at least 1,000 connects/s, every connect timing out once, the hold, a minute
        return self.hold + self.timeout * 2 + self.connections / 1000.0 + 60.0

    def n_workers(self) -> int:
        if self.single or self.threads:
            return 1
        if self.workers:
            return max(1, min(self.workers, self.connections or 1))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.connections <= 2000:
            return 1
        return max(1, cpus)

    def slot_requests(self) -> int:
        return self.requests if self.requests is not None else (self.requests_per_conn or 1)

    def planned_connects(self) -> int:
        if self.churn:
            k = self.requests_per_conn
            return self.connections * math.ceil(self.slot_requests() / k)
        return self.connections


def target_of(i: int, targets: List[Target], sources: List[str]) -> Tuple[Target, Optional[str]]:
    """Connection i -> (destination, source address): destinations round-robin, then sources."""
    nt = len(targets)
    dst = targets[i % nt]
    src = sources[(i // nt) % len(sources)] if sources else None
    return dst, src


def max_per_tuple(n: int, n_targets: int, n_sources: int) -> int:
    """The most connections the round-robin plan puts on one (source, destination) pair."""
    if n <= 0:
        return 0
    return math.ceil(n / (n_targets * max(1, n_sources)))


# -- the worker event loop ---------------------------------------------------------------------
class _Worker:
    def __init__(self, cfg: ClientConfig, w: int, nw: int, counters, t0: float, deadline: float):
        self.cfg = cfg
        self.w = w
        self.nw = nw
        self.c = counters
        self.base = w * NSLOTS
        self.stop_slot = len(counters) - 1
        self.t0 = t0
        self.deadline = deadline
        self.ep = select.epoll()
        self.targets = cfg.targets
        self.sources = cfg.source_ips
        self.connecting: Dict[int, float] = {}
        self.pending: deque = deque()               # (start, fd) in start order, for timeouts
        self.open: set = set()                      # established fds we hold
        self.attempted = 0
        self.established = 0
        self.delayed = 0
        self.failed: Counter = Counter()
        self.dropped: Counter = Counter()
        self.connect_ms = array("d")
        self.peak = 0
        self.requests = 0
        self.requests_failed: Counter = Counter()
        self.burst_marks: List[Tuple[int, float, float]] = []
        self.stopped: Optional[str] = None
        self.open_at_hold = 0
        self.open_done_at: Optional[float] = None
        self.threshold = cfg.delay_threshold_ms
        self.timeout = cfg.timeout

    # my share of connection indices: w, w+nw, w+2nw, ...
    def _my_count(self, total: int) -> int:
        if total <= self.w:
            return 0
        return (total - self.w + self.nw - 1) // self.nw

    def _publish(self) -> None:
        c, b = self.c, self.base
        c[b + ATTEMPTED] = self.attempted
        c[b + ESTABLISHED] = self.established
        c[b + FAILED] = sum(self.failed.values())
        c[b + DELAYED] = self.delayed
        c[b + OPEN_NOW] = len(self.open)
        c[b + PEAK] = self.peak
        c[b + REQUESTS] = self.requests

    def _stop_requested(self) -> bool:
        return bool(self.c[self.stop_slot])

    # -- connect path ----------------------------------------------------------------------
    def _start(self, i: int, now: float) -> Optional[int]:
        """Start connect number i; returns its fd when in flight or established, else None."""
        dst, src = target_of(i, self.targets, self.sources)
        self.attempted += 1
        try:
            s = socket.socket(socket.AF_INET, _SOCK_TYPE)
        except OSError as e:
            self.failed[e.errno] += 1
            return None
        if src is not None:
            try:
                s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((src, 0))
            except OSError as e:
                s.close()
                self.failed[e.errno] += 1
                return None
        t = time.monotonic()
        err = s.connect_ex(dst)
        fd = s.detach()
        if err == errno.EINPROGRESS:
            self.ep.register(fd, _EP_CONNECT)
            self.connecting[fd] = t
            self.pending.append((t, fd))
            return fd
        if err == 0:
            self.ep.register(fd, _EP_CONNECT)
            self._connected(fd, t, time.monotonic())
            return fd
        os.close(fd)
        self.failed[err] += 1
        return None

    def _connected(self, fd: int, t_start: float, now: float) -> None:
        ms = (now - t_start) * 1000.0
        self.connect_ms.append(ms)
        if self.threshold is not None and ms > self.threshold:
            self.delayed += 1
        self.established += 1
        self.open.add(fd)
        if len(self.open) > self.peak:
            self.peak = len(self.open)

    def _connect_failed(self, fd: int, code: int) -> None:
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        os.close(fd)
        self.failed[code] += 1

    @staticmethod
    def _so_error(fd: int) -> int:
        s = socket.socket(fileno=fd)
        try:
            return s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        finally:
            s.detach()

    def _expire_connects(self, now: float) -> None:
        limit = now - self.timeout
        pending, connecting = self.pending, self.connecting
        while pending and pending[0][0] <= limit:
            t, fd = pending.popleft()
            if connecting.get(fd) == t:
                del connecting[fd]
                self._connect_failed(fd, errno.ETIMEDOUT)
                self._on_conn_gone(fd, failed=True)

    def _next_connect_expiry(self) -> Optional[float]:
        pending, connecting = self.pending, self.connecting
        while pending and connecting.get(pending[0][1]) != pending[0][0]:
            pending.popleft()
        return pending[0][0] + self.timeout if pending else None

    def _on_conn_gone(self, fd: int, failed: bool) -> None:
        """Hook for churn mode: a slot's connection failed or closed."""

    def _close_open(self, fd: int, reason: Optional[str]) -> None:
        self.open.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass
        if reason is not None:
            self.dropped[reason] += 1

    def _cancel_inflight(self) -> None:
        for fd in list(self.connecting):
            del self.connecting[fd]
            self._connect_failed(fd, CANCELLED)
        self.pending.clear()

    # -- hold mode -------------------------------------------------------------------------
    def _held_event(self, fd: int, ev: int) -> None:
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    self._close_open(fd, EOF_NAME)
                    return
                if len(data) < 65536:
                    return
        except BlockingIOError:
            return
        except OSError as e:
            self._close_open(fd, stats.errno_name(e.errno))

    def _dispatch_connecting(self, fd: int, ev: int, now: float) -> bool:
        """Handle an event for a connecting fd; True when it was one."""
        t = self.connecting.pop(fd, None)
        if t is None:
            return False
        if ev & _EP_BAD:
            code = self._so_error(fd)
            if code == 0 and (ev & select.EPOLLERR):
                code = errno.EIO
            if code != 0 or not (ev & select.EPOLLOUT):
                self._connect_failed(fd, code or errno.ECONNRESET)
                self._on_conn_gone(fd, failed=True)
                return True
        self._connected(fd, t, now)
        self._on_connected(fd, ev)
        return True

    def _on_connected(self, fd: int, ev: int) -> None:
        if ev & _EP_IN:
            self._held_event(fd, ev)

    def _poll(self, timeout: float) -> None:
        events = self.ep.poll(max(0.0, timeout), 4096)
        if not events:
            return
        now = time.monotonic()
        for fd, ev in events:
            if not self._dispatch_connecting(fd, ev, now):
                if fd in self.open:
                    self._held_event(fd, ev)

    def _open_phase(self) -> None:
        cfg = self.cfg
        my_n = self._my_count(cfg.connections)
        conc = None
        if cfg.single:
            conc = 1
        elif cfg.concurrency is not None:
            conc = max(1, cfg.concurrency // self.nw + (1 if self.w < cfg.concurrency % self.nw else 0))
        elif not cfg.burst:
            conc = DEFAULT_CONCURRENCY
        rate = (cfg.rate / self.nw) if cfg.rate else None
        burst_w = None
        if cfg.burst:
            burst_w = cfg.burst // self.nw + (1 if self.w < cfg.burst % self.nw else 0)
        k = 0                # local attempts so far
        last_pub = 0.0
        burst_no = -1
        burst_left = 0
        burst_first = burst_last = 0.0
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                self.stopped = "deadline"
                break
            if self._stop_requested():
                self.stopped = "interrupted"
                break
            next_at = None
            # start what the schedule allows
            while k < my_n:
                if burst_w is not None:
                    if burst_left == 0:
                        if burst_no >= 0:
                            self.burst_marks.append((burst_no, burst_first, burst_last))
                        burst_no += 1
                        at = self.t0 + burst_no * cfg.burst_interval_ms / 1000.0
                        burst_left = min(max(burst_w, 1), my_n - k)
                        burst_first = 0.0
                        self._burst_at = at
                    if now < self._burst_at:
                        next_at = self._burst_at
                        break
                elif rate is not None:
                    at = self.t0 + k / rate
                    if now < at:
                        next_at = at
                        break
                elif now < self.t0:
                    next_at = self.t0
                    break
                if conc is not None and len(self.connecting) >= conc:
                    break
                i = self.w + k * self.nw
                t_start = time.monotonic()
                self._start(i, t_start)
                k += 1
                if burst_w is not None:
                    if not burst_first:
                        burst_first = t_start
                    burst_last = t_start
                    burst_left -= 1
                now = time.monotonic()
                if (k & 63) == 0:
                    break            # let the loop service events
            if k >= my_n and not self.connecting:
                break
            self._expire_connects(now)
            wait = 0.1
            exp = self._next_connect_expiry()
            if exp is not None:
                wait = min(wait, exp - now)
            if next_at is not None:
                wait = min(wait, next_at - now)
            if k < my_n and next_at is None and (conc is None or len(self.connecting) < conc):
                wait = 0.0
            self._poll(min(wait, self.deadline - now))
            if now - last_pub > 0.05:
                self._publish()
                last_pub = now
        if burst_w is not None and burst_first:
            self.burst_marks.append((burst_no, burst_first, burst_last))
        if self.stopped:
            self._cancel_inflight()
        self.open_done_at = time.monotonic()

    def _all_done(self) -> bool:
        c = self.c
        return all(c[w * NSLOTS + DONE] for w in range(self.nw))

    def _hold_phase(self) -> None:
        cfg = self.cfg
        # wait for every worker to finish opening, so the hold is simultaneous
        while not self._all_done():
            now = time.monotonic()
            if now >= self.deadline or self._stop_requested():
                break
            self._poll(0.02)
            self._publish()
        self.open_at_hold = len(self.open)
        self.c[self.base + OPEN_AT_HOLD] = self.open_at_hold
        hold = cfg.hold
        if cfg.duration is not None:
            hold = max(0.0, min(hold, self.t0 + cfg.duration - time.monotonic()))
        end = min(time.monotonic() + hold, self.deadline)
        next_ka = time.monotonic() + cfg.keepalive if cfg.keepalive else None
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if self._stop_requested():
                self.stopped = self.stopped or "interrupted"
                break
            if next_ka is not None and now >= next_ka:
                self._send_keepalive()
                next_ka = now + cfg.keepalive
            wait = min(0.1, end - now)
            if next_ka is not None:
                wait = min(wait, next_ka - now)
            self._poll(wait)
            self._publish()
        if time.monotonic() >= self.deadline and hold > 0 and not self.stopped:
            self.stopped = "deadline"

    def _send_keepalive(self) -> None:
        for fd in list(self.open):
            try:
                os.write(fd, b"\0")
            except BlockingIOError:
                pass
            except OSError as e:
                self._close_open(fd, stats.errno_name(e.errno))

    def _close_all(self) -> None:
        for fd in self.open:
            try:
                os.close(fd)
            except OSError:
                pass
        self.open = set()
        self.ep.close()

    def run(self) -> dict:
        self._publish()
        self._open_phase()
        self.c[self.base + DONE] = 1
        self._publish()
        self._hold_phase()
        self._publish()
        result = self._result()
        self._close_all()
        return result

    def _result(self) -> dict:
        return {
            "attempted": self.attempted,
            "established": self.established,
            "failed": dict(self.failed),
            "delayed": self.delayed,
            "connect_ms": self.connect_ms.tobytes(),
            "peak": self.peak,
            "open_at_hold": self.open_at_hold,
            "dropped": dict(self.dropped),
            "requests": self.requests,
            "requests_failed": dict(self.requests_failed),
            "burst_marks": self.burst_marks,
            "stopped": self.stopped,
            "open_done_at": self.open_done_at,
        }


class _ChurnWorker(_Worker):
    """Each client slot sends R HTTP/1.1 requests, K per connection, then opens a new one."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        cfg = self.cfg
        self.k = cfg.requests_per_conn
        self.slot_of: Dict[int, int] = {}          # fd -> slot
        self.left: Dict[int, int] = {}             # slot -> requests still to make
        self.conn_reqs: Dict[int, int] = {}        # fd -> requests sent on this connection
        self.inbuf: Dict[int, bytes] = {}          # fd -> partial response
        self.sent_at: Dict[int, float] = {}        # fd -> when the outstanding request was sent
        self.timers: list = []                     # (when, seq, fd) sends after an idle gap
        self.seq = 0
        self.next_index = 0
        host = cfg.host_header.encode()
        self.req_keep = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        self.req_close = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        self.idle = cfg.idle_ms / 1000.0
        self.slots_active = 0
        self.end_at = self.t0 + cfg.duration if cfg.duration is not None else None

    def _new_conn(self, slot: int) -> None:
        while self.left.get(slot, 0) > 0:
            if self._winding_down():
                self.left[slot] = 0
                break
            i = self.w + self.next_index * self.nw
            self.next_index += 1
            fd = self._start(i, time.monotonic())
            if fd is not None:
                self.slot_of[fd] = slot
                self.conn_reqs[fd] = 0
                if fd in self.open:         # connected at once
                    self._send(fd)
                return
            # the connect failed at once: its K requests fail with it
            self._fail_requests(slot, "connect")
        self._slot_finished(slot)

    def _winding_down(self) -> bool:
        now = time.monotonic()
        return (now >= self.deadline or self._stop_requested()
                or (self.end_at is not None and now >= self.end_at))

    def _slot_finished(self, slot: int) -> None:
        if self.left.get(slot, 0) <= 0 and slot in self.left:
            del self.left[slot]
            self.slots_active -= 1

    def _fail_requests(self, slot: int, reason: str) -> None:
        n = min(self.k, self.left.get(slot, 0))
        self.requests_failed[reason] += n
        self.left[slot] -= n

    def _on_conn_gone(self, fd: int, failed: bool) -> None:
        slot = self.slot_of.pop(fd, None)
        self.conn_reqs.pop(fd, None)
        self.inbuf.pop(fd, None)
        self.sent_at.pop(fd, None)
        if slot is None:
            return
        if failed:
            self._fail_requests(slot, "connect")
        self._new_conn(slot)

    def _on_connected(self, fd: int, ev: int) -> None:
        self._send(fd)

    def _send(self, fd: int) -> None:
        slot = self.slot_of.get(fd)
        if slot is None:
            return
        n = self.conn_reqs[fd] + 1
        last = n >= self.k or self.left[slot] <= 1
        self.conn_reqs[fd] = n
        try:
            os.write(fd, self.req_close if last else self.req_keep)
        except OSError as e:
            self._conn_broken(fd, stats.errno_name(e.errno or errno.EIO))
            return
        self.sent_at[fd] = time.monotonic()

    def _conn_broken(self, fd: int, reason: str) -> None:
        slot = self.slot_of.get(fd)
        if slot is not None and fd in self.sent_at:
            self.requests_failed[reason] += 1
            self.left[slot] -= 1
        self._close_open(fd, reason)
        self._on_conn_gone(fd, failed=False)

    def _held_event(self, fd: int, ev: int) -> None:
        if fd not in self.slot_of:
            return super()._held_event(fd, ev)
        buf = self.inbuf.pop(fd, b"")
        eof = False
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    eof = True
                    break
                buf += data
                if len(data) < 65536:
                    break
        except BlockingIOError:
            pass
        except OSError as e:
            self._conn_broken(fd, stats.errno_name(e.errno))
            return
        done, server_close = _response_complete(buf)
        if done is None:
            if eof:
                self._conn_broken(fd, EOF_NAME)
            elif buf:
                self.inbuf[fd] = buf
            return
        # one response complete
        slot = self.slot_of[fd]
        self.requests += 1
        self.left[slot] -= 1
        self.sent_at.pop(fd, None)
        if self.left[slot] <= 0 or self.conn_reqs[fd] >= self.k or server_close or eof:
            self._close_open(fd, None)
            self._on_conn_gone(fd, failed=False)
            return
        if self._winding_down():
            self.left[slot] = 0
            self._close_open(fd, None)
            self._on_conn_gone(fd, failed=False)
            return
        if self.idle > 0:
            self.seq += 1
            heapq.heappush(self.timers, (time.monotonic() + self.idle, self.seq, fd))
        else:
            self._send(fd)

    def _expire_requests(self, now: float) -> None:
        limit = now - self.timeout
        late = [fd for fd, t in self.sent_at.items() if t < limit]
        for fd in late:
            self._conn_broken(fd, "ETIMEDOUT")

    def _open_phase(self) -> None:
        cfg = self.cfg
        my_slots = self._my_count(cfg.connections)
        per_slot = cfg.slot_requests()
        while time.monotonic() < self.t0:
            time.sleep(min(0.01, max(0.0, self.t0 - time.monotonic())))
        for s in range(my_slots):
            self.left[s] = per_slot
        self.slots_active = my_slots
        for s in range(my_slots):
            self._new_conn(s)
        last_pub = last_req_check = 0.0
        while self.slots_active > 0:
            now = time.monotonic()
            if now >= self.deadline:
                self.stopped = "deadline"
                break
            if self._stop_requested():
                self.stopped = "interrupted"
                break
            while self.timers and self.timers[0][0] <= now:
                _, _, fd = heapq.heappop(self.timers)
                if fd in self.open:
                    self._send(fd)
            self._expire_connects(now)
            if now - last_req_check > 0.1:
                self._expire_requests(now)
                last_req_check = now
            wait = 0.1
            if self.timers:
                wait = min(wait, self.timers[0][0] - now)
            exp = self._next_connect_expiry()
            if exp is not None:
                wait = min(wait, exp - now)
            self._poll(wait)
            if now - last_pub > 0.05:
                self._publish()
                last_pub = now
        if self.stopped:
            self._cancel_inflight()
        self.open_done_at = time.monotonic()

    def _hold_phase(self) -> None:
        self.open_at_hold = len(self.open)


def _response_complete(buf: bytes):
    """(end offset of the first complete HTTP response or None, server asked to close)."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None, False
    head = buf[:i].lower()
    length = 0
    j = head.find(b"content-length:")
    if j >= 0:
        end = head.find(b"\r\n", j)
        try:
            length = int(head[j + 15:end if end >= 0 else None].strip())
        except ValueError:
            length = 0
    total = i + 4 + length
    if len(buf) < total:
        return None, False
    return total, b"connection: close" in head


def _worker_main(cfg: ClientConfig, w: int, nw: int, counters, t0: float, deadline: float, conn) -> None:
    _sys.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cls = _ChurnWorker if cfg.churn else _Worker
        result = cls(cfg, w, nw, counters, t0, deadline).run()
        conn.send(result)
    except BaseException as e:  # reported to the parent, which turns it into one line
        try:
            conn.send({"error": f"{type(e).__name__}: {e}"})
        except Exception:
            pass
    finally:
        conn.close()
        os._exit(0)


# -- thread-per-connection mode (seed 000's threaded client) ------------------------------------
def _run_threads(cfg: ClientConfig, counters, t0: float, deadline: float) -> dict:
    lock = threading.Lock()
    state = {"next": 0}
    held: list = []
    failed: Counter = Counter()
    connect_ms = array("d")
    delayed = [0]

    def one() -> None:
        while True:
            with lock:
                i = state["next"]
                if i >= cfg.connections or time.monotonic() >= deadline or counters[len(counters) - 1]:
                    return
                state["next"] = i + 1
                counters[ATTEMPTED] += 1
            dst, src = target_of(i, cfg.targets, cfg.source_ips)
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as e:
                with lock:
                    failed[e.errno] += 1
                    counters[FAILED] += 1
                continue
            try:
                s.settimeout(cfg.timeout)
                if src is not None:
                    s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    s.bind((src, 0))
                t = time.monotonic()
                s.connect(dst)
                ms = (time.monotonic() - t) * 1000.0
            except OSError as e:
                s.close()
                code = e.errno if e.errno else errno.ETIMEDOUT
                with lock:
                    failed[code] += 1
                    counters[FAILED] += 1
                continue
            with lock:
                held.append(s)
                connect_ms.append(ms)
                counters[ESTABLISHED] += 1
                counters[OPEN_NOW] = len(held)
                counters[PEAK] = max(counters[PEAK], len(held))
                if cfg.delay_threshold_ms is not None and ms > cfg.delay_threshold_ms:
                    delayed[0] += 1
                    counters[DELAYED] += 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(min(cfg.threads, max(1, cfg.connections)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    stopped = None
    if any(th.is_alive() for th in threads):
        stopped = "deadline"
    open_done = time.monotonic()
    peak = len(held)
    end = min(time.monotonic() + cfg.hold, deadline)
    while time.monotonic() < end and not counters[len(counters) - 1]:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    if counters[len(counters) - 1]:
        stopped = "interrupted"
    for s in held:
        s.close()
    counters[DONE] = 1
    return {
        "attempted": counters[ATTEMPTED], "established": len(connect_ms), "failed": dict(failed),
        "delayed": delayed[0], "connect_ms": connect_ms.tobytes(), "peak": peak, "open_at_hold": peak,
        "dropped": {}, "requests": 0, "requests_failed": {}, "burst_marks": [], "stopped": stopped,
        "open_done_at": open_done,
    }


# -- orchestration ------------------------------------------------------------------------------
def prepare(cfg: ClientConfig) -> int:
    """Validate, check limits, raise RLIMIT_NOFILE. Returns the number of workers."""
    cfg.validate()
    nw = cfg.n_workers()
    n_open = cfg.connections
    per_worker = math.ceil(n_open / nw) if n_open else 0
    if cfg.threads:
        per_worker = cfg.connections
    try:
        raise_nofile(per_worker + FD_SLACK)
    except ResourceLimit:
        # RLIMIT_NOFILE is per process: spread the connections over more workers instead,
        # unless the user pinned the layout (--workers, --single, --threads)
        if cfg.workers or cfg.single or cfg.threads:
            raise
        room = max_fds_per_process() - FD_SLACK
        if room < 256:
            raise
        nw = math.ceil(n_open / room)
        if nw > MAX_WORKERS:
            raise ResourceLimit(
                f"{n_open} connections need {nw} worker processes at {room} open files each "
                f"(RLIMIT_NOFILE hard limit {max_fds_per_process()}); at most {MAX_WORKERS}: raise 'nofile' "
                f"in /etc/security/limits.conf or run with CAP_SYS_RESOURCE") from None
        raise_nofile(math.ceil(n_open / nw) + FD_SLACK)
    check_file_max(n_open + nw * FD_SLACK)
    if not cfg.churn:
        check_port_capacity(max_per_tuple(cfg.connections, len(cfg.targets), len(cfg.source_ips)),
                            len(cfg.source_ips))
    return nw


def run_client(cfg: ClientConfig, on_progress: Optional[Callable[[dict], None]] = None,
               progress_interval: float = 0.1) -> dict:
    """Run the load and return the summary dict of the ``load client --json`` contract (docs/contracts.md)."""
    nw = prepare(cfg)
    ctx = multiprocessing.get_context("fork")
    counters = ctx.Array("q", nw * NSLOTS + 1, lock=False)
    stop_slot = len(counters) - 1
    started = time.monotonic()
    # a common start a moment ahead, so bursts line up across workers
    t0 = started + (0.05 if nw > 1 else 0.0)
    deadline = started + cfg.effective_max_time()
    results: List[dict] = []
    interrupted = False
    peak_sampled = 0

    def sample() -> dict:
        snap = _snapshot(counters, nw)
        nonlocal peak_sampled
        peak_sampled = max(peak_sampled, snap["open"])
        snap["elapsed_s"] = time.monotonic() - started
        return snap

    if cfg.threads:
        box: dict = {}

        def target():
            box["r"] = _run_threads(cfg, counters, t0, deadline)

        th = threading.Thread(target=target, daemon=True)
        th.start()
        try:
            while th.is_alive():
                th.join(progress_interval)
                s = sample()
                if on_progress:
                    on_progress(s)
        except KeyboardInterrupt:
            interrupted = True
            counters[stop_slot] = 1
            th.join(cfg.timeout + 5)
        if "r" not in box:
            raise ClientError("the threaded client did not finish")
        results.append(box["r"])
    else:
        procs = []
        pipes = []
        for w in range(nw):
            r, s = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker_main, args=(cfg, w, nw, counters, t0, deadline, s),
                            name=f"netdiag-load-client-{w}", daemon=True)
            p.start()
            s.close()
            procs.append(p)
            pipes.append(r)
        pending = dict(enumerate(pipes))
        got: Dict[int, dict] = {}
        hard_end = deadline + cfg.timeout + 30.0
        try:
            while pending:
                now = time.monotonic()
                if now > hard_end:
                    break
                ready = multiprocessing.connection.wait(list(pending.values()), timeout=progress_interval)
                for r in ready:
                    w = next(k for k, v in pending.items() if v is r)
                    try:
                        got[w] = r.recv()
                    except (EOFError, OSError):
                        got[w] = {"error": "worker exited without a result"}
                    del pending[w]
                s = sample()
                if on_progress:
                    on_progress(s)
        except KeyboardInterrupt:
            interrupted = True
            counters[stop_slot] = 1
            end = time.monotonic() + cfg.timeout + 10.0
            while pending and time.monotonic() < end:
                ready = multiprocessing.connection.wait(list(pending.values()), timeout=0.2)
                for r in ready:
                    w = next(k for k, v in pending.items() if v is r)
                    try:
                        got[w] = r.recv()
                    except (EOFError, OSError):
                        got[w] = {"error": "worker exited without a result"}
                    del pending[w]
        finally:
            counters[stop_slot] = 1
            for p in procs:
                p.join(5.0)
                if p.is_alive():
                    p.kill()
                    p.join(2.0)
        errors = [g["error"] for g in got.values() if "error" in g]
        if pending:
            errors.append(f"{len(pending)} worker(s) gave no result in time")
        if errors:
            raise ClientError("load client failed: " + "; ".join(errors))
        results = [got[w] for w in sorted(got)]
    ended = time.monotonic()
    summary = summarize(cfg, results, started, ended, nw, peak_sampled)
    if interrupted:
        summary["stopped"] = "interrupted"
    return summary


def _snapshot(counters, nw: int) -> dict:
    tot = {"attempted": 0, "established": 0, "failed": 0, "delayed": 0, "open": 0, "requests": 0,
           "done": 0}
    for w in range(nw):
        b = w * NSLOTS
        tot["attempted"] += counters[b + ATTEMPTED]
        tot["established"] += counters[b + ESTABLISHED]
        tot["failed"] += counters[b + FAILED]
        tot["delayed"] += counters[b + DELAYED]
        tot["open"] += counters[b + OPEN_NOW]
        tot["requests"] += counters[b + REQUESTS]
        tot["done"] += counters[b + DONE]
    return tot


def summarize(cfg: ClientConfig, results: List[dict], started: float, ended: float, nw: int,
              peak_sampled: int = 0) -> dict:
    """Merge worker results into the summary object (pure apart from its inputs)."""
    ms = array("d")
    for r in results:
        ms.frombytes(r["connect_ms"])
    failed = stats.merge_counts(*({stats.errno_name(k): v for k, v in r["failed"].items()} for r in results))
    dropped = stats.merge_counts(*(r["dropped"] for r in results))
    attempted = sum(r["attempted"] for r in results)
    established = sum(r["established"] for r in results)
    done_times = [r["open_done_at"] for r in results if r.get("open_done_at")]
    open_s = (max(done_times) - started) if done_times else None
    peak = max(peak_sampled, sum(r["open_at_hold"] for r in results),
               max((r["peak"] for r in results), default=0))
    out = {
        "type": "summary",
        "mode": cfg.mode() if not cfg.single else "single",
        "targets": sorted({f"{ip}:{port}" for ip, port in cfg.targets}),
        "source_ips": len(cfg.source_ips),
        "workers": nw,
        "attempted": attempted,
        "established": established,
        "failed": sum(failed.values()),
        "failed_by_errno": failed,
        "delayed": stats.count_delayed(ms, cfg.delay_threshold_ms),
        "delay_threshold_ms": cfg.delay_threshold_ms,
        "connect_ms": stats.latency_summary(ms),
        "peak_concurrent": peak,
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        "duration_s": round(ended - started, 3),
        "open_s": round(open_s, 3) if open_s is not None else None,
        "connects_per_s": stats.rate(attempted, open_s) if open_s else 0.0,
        "hold_s": cfg.hold,
        "stopped": next((r["stopped"] for r in results if r.get("stopped")), None),
    }
    if cfg.churn:
        rf = stats.merge_counts(*(r["requests_failed"] for r in results))
        out["requests"] = sum(r["requests"] for r in results)
        out["requests_failed"] = sum(rf.values())
        out["requests_failed_by_reason"] = rf
        out["requests_per_conn"] = cfg.requests_per_conn
        out["requests_per_s"] = stats.rate(out["requests"], ended - started)
        out["connects_per_s"] = stats.rate(attempted, ended - started)
    if cfg.burst:
        by_burst: Dict[int, list] = {}
        for r in results:
            for no, first, last in r["burst_marks"]:
                b = by_burst.setdefault(no, [first, last])
                b[0] = min(b[0], first)
                b[1] = max(b[1], last)
        spreads = [stats.spread_ms(a, b) for a, b in by_burst.values()]
        out["bursts"] = len(by_burst)
        out["burst_size"] = cfg.burst
        out["burst_window_ms"] = cfg.burst_window_ms
        out["burst_start_spread_ms"] = max(spreads) if spreads else None
    return out
