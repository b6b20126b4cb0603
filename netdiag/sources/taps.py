"""Per-namespace listener sources that stay open: an inet_diag socket and the netstat file of
every network namespace, created once inside it and read from the caller's thread afterwards.

``refresh()`` keeps the set current with a ``NamespaceWatcher`` (cheap polls, a /proc walk only
on evidence or every few seconds); a namespace that appears is entered once, by the one worker
thread of a ``NetnsExecutor``, to open its two handles; one that goes away has them closed (an
open handle would keep a deleted namespace alive). Reading a namespace is then one netlink dump
and one ``pread``, with no thread started and no ``setns()``.
"""
from __future__ import annotations

from dataclasses import dataclass

from netdiag.sources import inetdiag
from netdiag.sources.namespaces import Namespace, NamespaceWatcher, NetnsError, NetnsExecutor


@dataclass
class Tap:
    ns: Namespace
    diag: inetdiag.DiagSocket
    netstat: inetdiag.NetstatFile

    def close(self) -> None:
        self.diag.close()
        self.netstat.close()


NETSTAT_COUNTERS = ("ListenOverflows", "ListenDrops")     # what an interval reports of each namespace


def _open() -> tuple[inetdiag.DiagSocket, inetdiag.NetstatFile]:
    """Runs inside the namespace."""
    diag = inetdiag.DiagSocket()
    try:
        return diag, inetdiag.NetstatFile(wanted=NETSTAT_COUNTERS)
    except BaseException:
        diag.close()
        raise


class NamespaceTaps:
    """inode -> Tap for every namespace (``only``: these inodes)."""

    def __init__(self, only: set[int] | None = None, watcher: NamespaceWatcher | None = None):
        self.watcher = watcher or NamespaceWatcher(only=only)
        self.taps: dict[int, Tap] = {}
        self.errors: dict[int, str] = {}      # namespaces whose handles could not be opened
        self.opened = 0                       # handles opened since start (each a setns round trip)
        self._exec: NetnsExecutor | None = None
        self._walks_seen = -1

    def refresh(self, hint=()) -> None:
        """Pick up namespaces that appeared (``hint``: inodes seen elsewhere, say in BPF rows)
        and close the handles of those that went away."""
        added, removed = self.watcher.poll(hint)
        for ns in removed:
            tap = self.taps.pop(ns.inode, None)
            self.errors.pop(ns.inode, None)
            if tap is not None:
                tap.close()
        if self.watcher.walks != self._walks_seen:     # after a walk, retry the ones that failed
            self._walks_seen = self.watcher.walks
            added = added + [ns for i, ns in self.watcher.current.items()
                             if i in self.errors and ns not in added]
        for ns in added:
            self._attach(ns)

    def _attach(self, ns: Namespace) -> None:
        if self._exec is None:
            self._exec = NetnsExecutor("netns-taps")
        try:
            diag, netstat = self._exec.call(ns, _open)
        except (OSError, NetnsError) as e:            # it went away meanwhile, or cannot be entered
            self.errors[ns.inode] = str(e)
            return
        self.errors.pop(ns.inode, None)
        old = self.taps.pop(ns.inode, None)
        if old is not None:
            old.close()
        self.taps[ns.inode] = Tap(ns, diag, netstat)
        self.opened += 1

    def drop(self, inode: int) -> None:
        """Close one namespace's handles (a read failed: it is being torn down); the watcher
        opens them again if it is still there at its next walk."""
        tap = self.taps.pop(inode, None)
        if tap is not None:
            tap.close()
            self.errors[inode] = "read failed"

    def close(self) -> None:
        for tap in self.taps.values():
            tap.close()
        self.taps.clear()
        if self._exec is not None:
            self._exec.close()
            self._exec = None
