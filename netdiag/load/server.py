"""The load server: accepts and holds, echoes, or answers minimal HTTP/1.1.

Worker processes share the listeners and each run one epoll loop over non-blocking sockets.
Counters live in shared memory; the caller (the ``load server`` command) reads them for its
periodic stats and final summary.

``max_conns`` is exact: the listener's accept queue is shrunk (``listen()`` again with a smaller
backlog) as the held count nears the cap, so the kernel itself never queues more than the room
left, and at the cap a drop-all socket filter makes further SYNs go unanswered: clients time out,
as behind a connection cap that is beyond their node (seed 000).
"""
from __future__ import annotations

import errno
import ipaddress
import multiprocessing
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from netdiag.errors import BIND_REFUSALS, BadInput, NetdiagError
from netdiag.load import _sys
from netdiag.load.limits import FD_SLACK, raise_nofile

MODES = ("hold", "echo", "http")

# counter slots per worker
HELD, ACCEPTED, CLOSED, REQUESTS, PEAK_HELD, READY, RESETS, ACCEPT_ERRORS = range(8)
NSLOTS = 8

RESP_BODY = b"ok\n"
RESP_KEEP = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(RESP_BODY)) + RESP_BODY
RESP_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
              % len(RESP_BODY)) + RESP_BODY
MAX_HEADER = 16384
ACCEPT_BATCH = 256


class ServerError(NetdiagError):
    """The server could not start (bind failed, workers died)."""


@dataclass
class ServerConfig:
    ports: List[int]
    bind: str = "127.0.0.1"
    max_conns: Optional[int] = None
    backlog: int = 4096
    accept_delay_ms: float = 0.0
    mode: str = "hold"
    workers: int = 1
    max_requests: Optional[int] = None      # http: close a connection after K requests (nginx keepalive_requests)
    idle_timeout: Optional[float] = None    # close connections idle this many seconds (nginx keepalive_timeout)
    expected_conns: int = 0                  # sizes RLIMIT_NOFILE (0: as high as the hard limit allows)

    def validate(self) -> None:
        if not self.ports:
            raise BadInput("no port to listen on")
        try:
            ipaddress.IPv4Address(self.bind)
        except ValueError:
            raise BadInput(f"--bind {self.bind!r}: not an IPv4 address (e.g. 127.0.0.1)") from None
        if self.mode not in MODES:
            raise BadInput(f"unknown mode {self.mode!r} (one of {', '.join(MODES)})")
        if self.max_conns is not None and self.max_conns < 1:
            raise BadInput(f"--max-conns must be at least 1, not {self.max_conns}")
        if self.backlog < 0:
            raise BadInput(f"--backlog must be 0 or more, not {self.backlog}")
        if self.accept_delay_ms < 0:
            raise BadInput(f"--accept-delay-ms must be 0 or more, not {self.accept_delay_ms}")
        if self.workers < 1 or self.workers > 512:
            raise BadInput(f"--workers must be 1-512, not {self.workers}")
        if self.max_conns is not None and self.workers != 1:
            raise BadInput("--max-conns needs a single worker (--workers 1) to keep the cap exact")
        if self.max_requests is not None and self.max_requests < 1:
            raise BadInput(f"--max-requests must be at least 1, not {self.max_requests}")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise BadInput(f"--idle-timeout must be above 0, not {self.idle_timeout}")


class Server:
    """Listeners plus worker processes. ``start()``, ``wait_ready()``, ``snapshot()``, ``stop()``."""

    def __init__(self, cfg: ServerConfig):
        cfg.validate()
        self.cfg = cfg
        self._ctx = multiprocessing.get_context("fork")
        self._counters = self._ctx.Array("q", cfg.workers * NSLOTS + 1, lock=False)
        self._procs: list = []
        self.listeners: List[socket.socket] = []
        self.started_at: Optional[float] = None

    # -- set-up ------------------------------------------------------------------------------
    def _listen(self) -> None:
        cfg = self.cfg
        first_backlog = cfg.backlog
        if cfg.max_conns is not None:
            first_backlog = min(cfg.backlog, cfg.max_conns - 1)
        for port in cfg.ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((cfg.bind, port))
                s.listen(first_backlog)
                s.setblocking(False)
            except OSError as e:
                s.close()
                self.close_listeners()
                why = BIND_REFUSALS.get(e.errno)
                if why:     # the address asked for is the problem, not the server: bad input
                    raise BadInput(f"cannot listen on {cfg.bind}:{port}: {why}") from None
                raise ServerError(f"cannot listen on {cfg.bind}:{port}: {e.strerror}") from None
            except OverflowError:
                s.close()
                self.close_listeners()
                raise BadInput(f"bad port {port}") from None
            self.listeners.append(s)

    def close_listeners(self) -> None:
        for s in self.listeners:
            s.close()
        self.listeners = []

    def start(self) -> None:
        cfg = self.cfg
        want = (cfg.expected_conns // cfg.workers if cfg.expected_conns else 0) + FD_SLACK + len(cfg.ports)
        if cfg.max_conns:
            want = max(want, cfg.max_conns + FD_SLACK + len(cfg.ports))
        if not cfg.expected_conns and not cfg.max_conns:
            # unknown load: as many as the hard limit allows
            import resource
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = max(soft, hard if hard != resource.RLIM_INFINITY else soft)
        raise_nofile(want)
        self._listen()
        self.started_at = time.monotonic()
        for w in range(cfg.workers):
            p = self._ctx.Process(target=_worker_main, args=(cfg, self.listeners, self._counters, w),
                                  name=f"netdiag-load-server-{w}", daemon=True)
            p.start()
            self._procs.append(p)

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._counters[w * NSLOTS + READY] for w in range(self.cfg.workers)):
                return
            if any(not p.is_alive() for p in self._procs):
                raise ServerError("a server worker exited during start-up")
            time.sleep(0.005)
        raise ServerError(f"server workers not ready after {timeout:.0f} s")

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self._procs]

    def alive(self) -> bool:
        return all(p.is_alive() for p in self._procs)

    def snapshot(self) -> Dict[str, int]:
        c = self._counters
        tot = {"held": 0, "accepted": 0, "closed": 0, "requests": 0, "peak_held": 0, "resets": 0,
               "accept_errors": 0}
        for w in range(self.cfg.workers):
            b = w * NSLOTS
            tot["held"] += c[b + HELD]
            tot["accepted"] += c[b + ACCEPTED]
            tot["closed"] += c[b + CLOSED]
            tot["requests"] += c[b + REQUESTS]
            tot["peak_held"] += c[b + PEAK_HELD]
            tot["resets"] += c[b + RESETS]
            tot["accept_errors"] += c[b + ACCEPT_ERRORS]
        if self.cfg.workers > 1:
            # per-worker peaks need not coincide; the sum is an upper bound
            tot["peak_held"] = max(tot["peak_held"], tot["held"])
        return tot

    def stop(self, timeout: float = 10.0) -> None:
        self._counters[len(self._counters) - 1] = 1
        deadline = time.monotonic() + timeout
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(2.0)
        self.close_listeners()


# -- worker ----------------------------------------------------------------------------------
def _worker_main(cfg: ServerConfig, listeners, counters, w: int) -> None:
    _sys.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _Loop(cfg, listeners, counters, w).run()
    except KeyboardInterrupt:
        pass
    os._exit(0)


class _Loop:
    def __init__(self, cfg: ServerConfig, listeners, counters, w: int):
        self.cfg = cfg
        self.listeners = listeners
        self.lfds = {s.fileno(): s for s in listeners}
        self.c = counters
        self.base = w * NSLOTS
        self.stop_slot = len(counters) - 1
        self.ep = select.epoll()
        self.held = 0
        self.peak = 0
        self.accepted = 0
        self.closed = 0
        self.requests = 0
        self.resets = 0
        self.accept_errors = 0
        self.bufs: Dict[int, bytes] = {}
        self.req_count: Dict[int, int] = {}
        self.last_active: Dict[int, float] = {}
        # max_conns gate state (single worker only)
        self.cap_now = min(cfg.backlog, cfg.max_conns - 1) + 1 if cfg.max_conns else None
        self.filtered = False
        self.listen_enabled = True
        self.next_accept_at = 0.0
        # a worker near its open-file limit stops taking connections, leaving them to the others
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fd_cap = (soft - FD_SLACK) if soft != resource.RLIM_INFINITY else 1 << 30
        self.full = False

    # accept-queue capacity: listen(b) lets b+1 connections wait; 0 means a drop-all filter
    def _set_cap(self, cap: int) -> None:
        cap = max(0, min(cap, self.cfg.backlog + 1))
        if cap == self.cap_now:
            return
        if cap == 0:
            for s in self.listeners:
                _sys.attach_drop_filter(s)
            self.filtered = True
        else:
            for s in self.listeners:
                s.listen(cap - 1)
            if self.filtered:
                for s in self.listeners:
                    _sys.detach_filter(s)
                self.filtered = False
        self.cap_now = cap

    def _listeners_events(self, on: bool) -> None:
        if on == self.listen_enabled:
            return
        for fd in self.lfds:
            if on:
                self.ep.register(fd, self.lflags)
            else:
                self.ep.unregister(fd)
        self.listen_enabled = on

    def _accept(self, lfd: int) -> None:
        cfg = self.cfg
        mx = cfg.max_conns
        delay = cfg.accept_delay_ms / 1000.0
        ep = self.ep
        flags = select.EPOLLIN | select.EPOLLRDHUP
        track = cfg.idle_timeout is not None
        n = 0
        while n < ACCEPT_BATCH:
            if self.held >= self.fd_cap:
                self.full = True
                self._listeners_events(False)
                break
            if mx is not None:
                room_after = mx - self.held - 1
                if room_after < 0 or (room_after == 0 and n > 0):
                    break
                self._set_cap(room_after)
            fd = _sys.accept4(lfd)
            if fd < 0:
                if mx is not None:
                    self._set_cap(mx - self.held)
                if -fd not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.accept_errors += 1
                    if -fd in (errno.EMFILE, errno.ENFILE):
                        # out of descriptors: stop accepting for a moment instead of spinning
                        self._listeners_events(False)
                        self.next_accept_at = time.monotonic() + 0.1
                break
            n += 1
            ep.register(fd, flags)
            self.held += 1
            self.accepted += 1
            if track:
                self.last_active[fd] = time.monotonic()
            if delay > 0:
                self._listeners_events(False)
                self.next_accept_at = time.monotonic() + delay
                break
        if self.held > self.peak:
            self.peak = self.held

    def _close(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass
        self.held -= 1
        self.closed += 1
        if self.bufs:
            self.bufs.pop(fd, None)
        if self.req_count:
            self.req_count.pop(fd, None)
        if self.last_active:
            self.last_active.pop(fd, None)
        if self.cfg.max_conns is not None:
            self._set_cap(self.cfg.max_conns - self.held)
        if self.full and self.held < self.fd_cap:
            self.full = False
            if not self.cfg.accept_delay_ms or time.monotonic() >= self.next_accept_at:
                self._listeners_events(True)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            self.resets += 1
            self._close(fd)
            return
        if not data:
            self._close(fd)
            return
        mode = self.cfg.mode
        if self.cfg.idle_timeout is not None:
            self.last_active[fd] = time.monotonic()
        if mode == "hold":
            return
        if mode == "echo":
            try:
                os.write(fd, data)
            except OSError:
                pass
            return
        self._http(fd, data)

    def _http(self, fd: int, data: bytes) -> None:
        buf = self.bufs.pop(fd, b"") + data if self.bufs else data
        out = []
        close = False
        max_req = self.cfg.max_requests
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                break
            head = buf[:i]
            buf = buf[i + 4:]
            self.requests += 1
            close = b"connection: close" in head.lower()
            if max_req is not None:
                k = self.req_count.get(fd, 0) + 1
                self.req_count[fd] = k
                if k >= max_req:
                    close = True
            if close:
                out.append(RESP_CLOSE)
                break
            out.append(RESP_KEEP)
        if out:
            try:
                os.write(fd, b"".join(out) if len(out) > 1 else out[0])
            except OSError:
                close = True
        if close:
            self._close(fd)
            return
        if buf:
            if len(buf) > MAX_HEADER:
                self._close(fd)
                return
            self.bufs[fd] = buf

    def _expire_idle(self, now: float) -> None:
        limit = now - self.cfg.idle_timeout
        for fd in [fd for fd, t in self.last_active.items() if t < limit]:
            self._close(fd)

    def _publish(self) -> None:
        c, b = self.c, self.base
        c[b + HELD] = self.held
        c[b + ACCEPTED] = self.accepted
        c[b + CLOSED] = self.closed
        c[b + REQUESTS] = self.requests
        c[b + PEAK_HELD] = self.peak
        c[b + RESETS] = self.resets
        c[b + ACCEPT_ERRORS] = self.accept_errors

    def run(self) -> None:
        cfg = self.cfg
        ep = self.ep
        self.lflags = select.EPOLLIN
        if cfg.workers > 1:
            # one worker woken per new connection, not all of them
            self.lflags |= getattr(select, "EPOLLEXCLUSIVE", 0)
        for fd in self.lfds:
            ep.register(fd, self.lflags)
        self.c[self.base + READY] = 1
        lfds = self.lfds
        next_idle_check = time.monotonic() + 1.0
        while not self.c[self.stop_slot]:
            timeout = 0.1
            if not self.listen_enabled:
                timeout = max(0.0, min(timeout, self.next_accept_at - time.monotonic()))
            events = ep.poll(timeout, 4096)
            for fd, ev in events:
                if fd in lfds:
                    self._accept(fd)
                else:
                    self._readable(fd)
            if not self.listen_enabled or cfg.idle_timeout is not None:
                now = time.monotonic()
                if not self.listen_enabled and not self.full and now >= self.next_accept_at:
                    self._listeners_events(True)
                if cfg.idle_timeout is not None and now >= next_idle_check:
                    self._expire_idle(now)
                    next_idle_check = now + min(1.0, cfg.idle_timeout / 4)
            self._publish()
        self._publish()
