"""Many namespaces, each like a small pod: a listener, connections held to it and a light churn,
all driven by this one process (for benchmarks and tests at node scale).

Each member namespace (``Topology.add_ns``) gets 198.18.0.1/32 on its loopback, a listener on
198.18.0.1:``port`` and ``held`` connections to it, accepted and kept open. Sockets are created
inside the namespace by one worker thread that ``setns()``s there (``NetnsExecutor``) and keep
their namespace afterwards, so no process lives in the members: they are found by name, as a
CNI plugin's ``/run/netns/cni-*`` are. ``churn(rate)`` runs a thread that opens, accepts and
closes ``rate`` connections per second in total, round robin over the members (bounded: it
stops with ``stop()`` or ``close()``). ``overflow(member, n)`` fills a backlog-1 listener with
``n`` connects so the namespace's ListenOverflows counter moves.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from netdiag.labs.topology import Topology, _ip, ns_exec
from netdiag.sources.namespaces import NetnsExecutor

ADDR = "198.18.0.1"
LINGER0 = struct.pack("ii", 1, 0)


@dataclass
class Member:
    name: str
    inode: int
    port: int
    listener: socket.socket
    held: list = field(default_factory=list)         # (client, accepted) pairs
    extra: list = field(default_factory=list)        # sockets of overflow() and the like

    def close(self) -> None:
        for c, a in self.held:
            c.close()
            a.close()
        self.held.clear()
        for s in self.extra:
            s.close()
        self.extra.clear()
        self.listener.close()


class Fleet:
    def __init__(self, topo: Topology, held: int = 50, port: int = 8080):
        self.topo, self.n_held, self.port = topo, held, port
        self.members: dict[str, Member] = {}
        self._exec = NetnsExecutor("fleet")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._churner: threading.Thread | None = None
        self.churned = 0
        self.churn_errors = 0

    def _sock(self, name: str) -> socket.socket:
        return self._exec.call(f"/run/netns/{name}", socket.socket, socket.AF_INET, socket.SOCK_STREAM)

    def add(self, role: str, held: int | None = None) -> Member:
        name = self.topo.add_ns(role)
        ns_exec(name, "ip", "addr", "add", f"{ADDR}/32", "dev", "lo")
        lst = self._sock(name)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((ADDR, self.port))
        lst.listen(128)
        m = Member(name, self.topo.inode(name), self.port, lst)
        try:
            for _ in range(self.n_held if held is None else held):
                c = self._sock(name)
                c.connect((ADDR, self.port))
                a, _ = lst.accept()
                m.held.append((c, a))
        except BaseException:
            m.close()
            raise
        with self._lock:
            self.members[name] = m
        return m

    def remove(self, m: Member) -> None:
        """Close the member's sockets and delete its namespace."""
        with self._lock:
            self.members.pop(m.name, None)
        m.close()
        _ip("netns", "del", m.name)
        self.topo.namespaces.remove(m.name)

    def overflow(self, m: Member, n: int, port: int | None = None) -> socket.socket:
        """A listener with backlog 1 that never accepts, and ``n`` non-blocking connects to it
        (held in ``m.extra``); the listener is returned."""
        port = port or self.port + 1
        lst = self._sock(m.name)
        lst.bind((ADDR, port))
        lst.listen(1)
        m.extra.append(lst)
        for _ in range(n):
            c = self._sock(m.name)
            c.setblocking(False)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            try:
                c.connect((ADDR, port))
            except BlockingIOError:
                pass
            m.extra.append(c)
        return lst

    def churn(self, rate: float) -> None:
        """``rate`` connects per second in total, round robin over the members."""
        self._stop.clear()
        self._churner = threading.Thread(target=self._churn, args=(rate,), name="fleet-churn", daemon=True)
        self._churner.start()

    def _churn(self, rate: float) -> None:
        period, i = 1.0 / rate, 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                ms = list(self.members.values())
            if ms:
                m = ms[i % len(ms)]
                i += 1
                try:
                    c = self._sock(m.name)
                    c.settimeout(1.0)
                    c.connect((ADDR, m.port))
                    m.listener.settimeout(1.0)
                    a, _ = m.listener.accept()
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                    a.close()
                    c.close()
                    self.churned += 1
                except OSError:
                    self.churn_errors += 1          # the member was removed meanwhile
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._churner is not None:
            self._churner.join(timeout=5)
            self._churner = None

    def close(self) -> None:
        self.stop()
        with self._lock:
            ms, self.members = list(self.members.values()), {}
        for m in ms:
            m.close()
        self._exec.close()
