"""Every network namespace on the node, and a way to act inside one.

Discovery walks ``/run/netns/*`` (``ip netns`` names) and every ``/proc/<pid>/ns/net``, keyed by
inode (the same namespace seen through many pids counts once). A namespace without an ip-netns
name is labelled ``netns:<inode>`` plus one pid and comm living in it, which is how a pod's
namespace shows up on a Kubernetes node. ``NamespaceWatcher.poll()`` returns what appeared and
what went away since the previous call.

``run_in(ns, fn)`` runs ``fn`` in a short-lived thread that has ``setns(2)``-ed into ``ns``: a
network namespace is a per-thread attribute, so the rest of the process stays where it is, and
sockets created there keep their namespace after the thread ends. pyroute2 0.9.7 offers
``netns=`` on its sockets too, but it forks a child per socket and, by default (``O_CREAT``),
*creates* a missing namespace; a thread is cheaper and never creates anything.
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from netdiag.errors import NetdiagError

NETNS_RUN = Path("/run/netns")
PROC = Path("/proc")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(NetdiagError):
    pass


@dataclass(frozen=True)
class Namespace:
    inode: int
    path: str                 # something setns() can open: /run/netns/NAME or /proc/PID/ns/net
    name: str | None = None   # ip-netns name
    pid: int | None = None    # one process living in it (None for a name-only namespace)
    comm: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.pid is not None:
            return f"netns:{self.inode} (pid {self.pid} {self.comm or '?'})"
        return f"netns:{self.inode}"

    @property
    def is_host(self) -> bool:
        return self.inode == host_inode()


def host_inode() -> int | None:
    """The init namespace (pid 1's); our own when pid 1 is not readable (a sandbox)."""
    for path in ("/proc/1/ns/net", "/proc/self/ns/net"):
        try:
            return os.stat(path).st_ino
        except OSError:
            continue
    return None


def _comm(pid: int, proc: Path = PROC) -> str | None:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return None


def discover(proc: Path = PROC, run: Path = NETNS_RUN) -> dict[int, Namespace]:
    """inode -> Namespace for every namespace reachable by name or through a process.

    watch runs this every interval: plain os calls on strings, one stat per process."""
    found: dict[int, Namespace] = {}
    run_s, proc_s = str(run), str(proc)
    try:
        named = sorted(os.listdir(run_s))
    except OSError:
        named = []
    for name in named:
        path = f"{run_s}/{name}"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        found.setdefault(ino, Namespace(ino, path, name=name))
    try:
        pids = sorted(int(d) for d in os.listdir(proc_s) if d.isdigit())
    except OSError:
        pids = []
    host = host_inode()
    for pid in pids:
        path = f"{proc_s}/{pid}/ns/net"
        try:
            ino = os.stat(path).st_ino
        except OSError:          # the process exited, or is a kernel thread we may not read
            continue
        ns = found.get(ino)
        if ns is None:
            found[ino] = Namespace(ino, path, name="host" if ino == host else None,
                                   pid=pid, comm=_comm(pid, proc))
        elif ns.pid is None:
            found[ino] = Namespace(ino, ns.path, ns.name, pid, _comm(pid, proc))
    return found


def resolve(spec: str, known: dict[int, Namespace] | None = None) -> Namespace:
    """``--netns NAME|INODE`` -> Namespace (``host`` names the init namespace)."""
    known = discover() if known is None else known
    if spec.isdigit():
        ns = known.get(int(spec))
    else:
        ns = next((n for n in known.values() if n.name == spec), None)
    if ns is None:
        from netdiag.errors import BadInput
        raise BadInput(f"no network namespace {spec!r} (see `ip netns list` or `lsns -t net`)")
    return ns


class NamespaceWatcher:
    """Keeps the set of namespaces current; ``poll()`` -> (added, removed).

    A poll costs one ``stat`` per known namespace (is it still there, still the same?) and one of
    ``/run/netns`` (re-listed only when its mtime moved). The walk of every ``/proc/<pid>/ns/net``
    (one ``stat`` per process) runs on the first poll, when a process-held namespace's process
    went away or a named one lost its name (it may live on in another process), when the caller
    names an inode it has not seen (``poll(hint=...)``: a namespace newer than the last walk, seen
    in a BPF row), at most once a second for those reasons, and every ``rescan_s`` seconds
    otherwise (a namespace only a process holds appears within that time). ``walks`` counts them.
    """

    RESCAN_S = 5.0
    MIN_WALK_S = 1.0

    def __init__(self, only: set[int] | None = None, proc: Path = PROC, run: Path = NETNS_RUN,
                 rescan_s: float = RESCAN_S):
        self.only = only
        self._proc, self._run = proc, run
        self.rescan_s = rescan_s
        self.current: dict[int, Namespace] = {}
        self.walks = 0
        self._walked: float | None = None
        self._run_stamp: tuple | None = None
        self._named: dict[int, Namespace] = {}
        self._unplaced: set[int] = set()           # hinted inodes the last walk did not find

    def _keep(self, found: dict[int, Namespace]) -> dict[int, Namespace]:
        if self.only is not None:
            found = {k: v for k, v in found.items() if k in self.only}
        return found

    def _scan(self) -> dict[int, Namespace]:
        self.walks += 1
        self._walked = time.monotonic()
        self._run_stamp = _stamp(self._run)
        found = discover(self._proc, self._run)
        self._named = {k: v for k, v in found.items() if v.name is not None and v.path.startswith(str(self._run))}
        return self._keep(found)

    def _relist_named(self) -> bool:
        """Re-read /run/netns if it changed; True when a name went away."""
        stamp = _stamp(self._run)
        if stamp == self._run_stamp:
            return False
        self._run_stamp = stamp
        named = {}
        for name in _listdir(self._run):
            path = f"{self._run}/{name}"
            try:
                ino = os.stat(path).st_ino
            except OSError:
                continue
            named.setdefault(ino, Namespace(ino, path, name=name))
        lost = bool(self._named.keys() - named.keys())
        self._named = named
        return lost

    def poll(self, hint=()) -> tuple[list[Namespace], list[Namespace]]:
        now = time.monotonic()
        if self._walked is None:
            return self._apply(self._scan())
        evidence = self._relist_named()
        new: dict[int, Namespace] = {}
        for ino, ns in self.current.items():
            if ns.path.startswith(str(self._run)):
                continue                                   # named: the listing above says
            if _inode_of(ns.path) == ino:
                new[ino] = ns
            else:
                evidence = True                            # its process exited or moved
        if not evidence and hint:
            unseen = {i for i in hint if i not in self.current and (self.only is None or i in self.only)}
            evidence = bool(unseen - self._unplaced)
        since = now - self._walked
        if since >= self.rescan_s or (evidence and since >= self.MIN_WALK_S):
            found = self._scan()
            self._unplaced = {i for i in hint if i not in found}
            return self._apply(found)
        for ino, ns in self._named.items():
            old = self.current.get(ino)
            new[ino] = ns if old is None or old.path != ns.path else old
        return self._apply(self._keep(new))

    def _apply(self, new: dict[int, Namespace]) -> tuple[list[Namespace], list[Namespace]]:
        added, removed = diff(self.current, new)
        self.current = new
        return added, removed


def _stamp(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_nlink


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _inode_of(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def diff(old: dict[int, Namespace], new: dict[int, Namespace]) -> tuple[list[Namespace], list[Namespace]]:
    added = [new[k] for k in sorted(new.keys() - old.keys())]
    removed = [old[k] for k in sorted(old.keys() - new.keys())]
    return added, removed


def _setns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetnsError(f"cannot open network namespace {path}: {e.strerror}") from e
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsExecutor:
    """One worker thread that runs calls inside any namespace, one call at a time.

    pyroute2 0.9.7 keeps its socket and event loop per thread, so every pyroute2 object the
    monitor uses is created *and* used in this thread: ``call(ns, NFCTSocket)`` creates a
    socket in ``ns``; ``call(None, sock.stat)`` uses it later (a socket keeps its namespace).
    """

    def __init__(self, name: str = "netns-exec"):
        import queue
        self._q: "queue.Queue" = queue.Queue()
        self._home = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self):
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._started.set()
        while True:
            item = self._q.get()
            if item is None:
                break
            path, fn, args, kwargs, box, done = item
            try:
                if path is not None:
                    _setns(path)
                try:
                    box["ret"] = fn(*args, **kwargs)
                finally:
                    if path is not None and _libc.setns(self._home, CLONE_NEWNET) != 0:
                        box["fatal"] = True
            except BaseException as e:
                box["err"] = e
            done.set()
            if box.get("fatal"):
                break
        os.close(self._home)

    def call(self, ns, fn, *args, timeout: float | None = 30.0, **kwargs):
        path = ns.path if isinstance(ns, Namespace) else ns
        if not self._thread.is_alive():
            raise NetnsError("namespace worker thread is not running")
        box: dict = {}
        done = threading.Event()
        self._q.put((path, fn, args, kwargs, box, done))
        if not done.wait(timeout):
            raise NetnsError(f"call in {path or 'the current namespace'} did not finish in {timeout} s")
        if "err" in box:
            raise box["err"]
        return box.get("ret")

    def close(self):
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout=10)


def run_in(ns: Namespace | str, fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` inside network namespace ``ns`` (a Namespace or a path)."""
    path = ns.path if isinstance(ns, Namespace) else ns
    box: dict = {}

    def target():
        try:
            _setns(path)
            box["ret"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            box["err"] = e

    t = threading.Thread(target=target, name="netns-enter", daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box.get("ret")


def socket_in(ns: Namespace | str, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket that lives in ``ns`` (usable from any thread afterwards)."""
    return run_in(ns, socket.socket, family, type_, proto)


def nsenter_argv(ns: Namespace | str, *cmd: str) -> list[str]:
    """argv running ``cmd`` in ``ns`` (util-linux nsenter accepts any namespace path)."""
    path = ns.path if isinstance(ns, Namespace) else ns
    return ["nsenter", f"--net={path}", "--", *cmd]
