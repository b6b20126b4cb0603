"""Network namespaces: names (``ip netns``) and inodes, both ways."""
from __future__ import annotations

import os
import time
from pathlib import Path

from netdiag.errors import BadInput

NETNS_RUN = Path("/run/netns")


def named_namespaces() -> dict[int, str]:
    """inode -> name for every namespace in /run/netns."""
    out = {}
    try:
        entries = list(NETNS_RUN.iterdir())
    except OSError:
        return out
    for p in entries:
        try:
            out[os.stat(p).st_ino] = p.name
        except OSError:
            continue
    return out


def current_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def resolve(spec: str) -> int:
    """``--netns NAME|INODE`` -> inode."""
    if spec.isdigit():
        return int(spec)
    try:
        return os.stat(NETNS_RUN / spec).st_ino
    except OSError as e:
        raise BadInput(f"no network namespace named {spec!r} in {NETNS_RUN} (see `ip netns list`)") from e


class NetnsNames:
    """Cached inode -> label lookup; refreshes on a miss (namespaces come and go)."""

    REFRESH_S = 0.5      # a miss re-lists /run/netns at most this often

    def __init__(self):
        self._stamp = _stamp()
        self._names = named_namespaces()
        self._listed = time.monotonic()
        self._host = None
        try:
            self._host = os.stat("/proc/1/ns/net").st_ino
        except OSError:
            pass

    def label(self, inode: int) -> str | None:
        if not inode:
            return None
        if inode == self._host:
            return "host"
        if inode not in self._names:
            now = time.monotonic()
            if now - self._listed < self.REFRESH_S:
                return None                 # listed a moment ago: not a named namespace
            self._listed = now
            stamp = _stamp()
            if stamp != self._stamp or stamp is None:   # re-list only when /run/netns changed
                self._stamp, self._names = stamp, named_namespaces()
        return self._names.get(inode)


def _stamp() -> tuple | None:
    try:
        st = os.stat(NETNS_RUN)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_nlink

