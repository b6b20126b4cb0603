"""Which processes hold a socket: socket inode -> tgids, from /proc/<pid>/fd (the links read
``socket:[inode]``). Used to attribute a listener's connections to the processes that listen
where no accept hook runs. Scans are bounded: only for inodes not placed yet, and a miss is
not scanned for again before ``retry_s``."""
from __future__ import annotations

import os
import time


def _comm(proc: str, pid: str) -> str:
    try:
        with open(f"{proc}/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def scan(inodes: set[int], proc: str = "/proc") -> dict[int, list[tuple[int, str]]]:
    """{inode: [(tgid, comm), ...] sorted by tgid} for the socket inodes in ``inodes`` that some
    process holds (a socket shared by a server's workers lists each of them)."""
    want = {f"socket:[{i}]": i for i in inodes}
    out: dict[int, list] = {}
    if not want:
        return out
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue            # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = want.get(target)
            if inode is not None:
                out.setdefault(inode, []).append((int(pid), _comm(proc, pid)))
                break           # one listener per process is enough to place it
    for v in out.values():
        v.sort()
    return out


class SocketOwners:
    """A cache over ``scan``: ``owners(inodes)`` scans /proc only for inodes it has not placed,
    and for a miss again only after ``retry_s``."""

    def __init__(self, proc: str = "/proc", retry_s: float = 5.0, max_entries: int = 65536):
        self.proc = proc
        self.retry_s = retry_s
        self.max_entries = max_entries
        self._known: dict[int, list] = {}
        self._missed: dict[int, float] = {}

    def owners(self, inodes: set[int]) -> dict[int, list[tuple[int, str]]]:
        now = time.monotonic()
        todo = {i for i in inodes if i not in self._known and now - self._missed.get(i, -1e9) >= self.retry_s}
        if todo:
            found = scan(todo, self.proc)
            if len(self._known) + len(found) > self.max_entries:
                self._known.clear()
            self._known.update(found)
            for i in todo - set(found):
                self._missed[i] = now
            if len(self._missed) > self.max_entries:
                self._missed.clear()
        return {i: self._known[i] for i in inodes if i in self._known}
