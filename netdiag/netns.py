"""Network namespaces: names (``ip netns``) and inodes, both ways."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import BadInput

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

    def __init__(self):
        self._names = named_namespaces()
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
            self._names = named_namespaces()
        return self._names.get(inode)


def all_namespaces() -> dict[int, str]:
    """inode -> a path that enters it, for every network namespace on the node: /run/netns
    entries first (they have names), then /proc/<pid>/ns/net of every process."""
    out: dict[int, str] = {}
    try:
        out[os.stat("/proc/1/ns/net").st_ino] = "/proc/1/ns/net"
    except OSError:
        pass
    for inode, name in named_namespaces().items():
        out[inode] = str(NETNS_RUN / name)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        path = f"/proc/{pid}/ns/net"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        out.setdefault(ino, path)
    return out


_CLONE_NEWNET = 0x40000000


def run_in(path: str, fn, *args):
    """Run fn(*args) in a fresh thread that has entered the network namespace at ``path``;
    the caller's own namespace is untouched. Returns fn's result, re-raises its exception."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    box: dict = {}

    def target():
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["result"] = fn(*args)
        except BaseException as e:   # handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns:{path}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")
