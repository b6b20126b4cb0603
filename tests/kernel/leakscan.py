"""What a kernel test may leave behind, compared before and after it (tests/kernel/conftest.py).

A snapshot reads, in well under a second:

* network namespaces (``/run/netns``, what ``ip netns list`` shows) and mounts of this process;
* the firewall (``nft list ruleset``, which shows iptables-nft's tables too; ``iptables-save``
  and ``ip6tables-save`` where iptables is the legacy back end; packet and byte counters left
  out);
* the node-wide sysctls netdiag's labs may touch (each only with ``--allow-host-sysctl``);
* BPF programs and links (the kernel's id lists through bpf(); a program's type and name from
  its info), objects pinned under /sys/fs/bpf, kprobes and uprobes made through tracefs;
* processes of the test's process group (a child that outlived its parent keeps the group) and
  the test process's descendants;
* temporary files: the labs' ``/tmp/netdiag-lab-*`` directories and ``/run/netdiag/labs`` state
  files, half-written program images (``.image-*``) and ready files (``.*.tmp``) in the
  program cache.

Left out on purpose: the program images themselves (the session's cache persists across tests by
design), zombies of the test process itself (``subprocess`` reaps them), and objects of other
runs on a shared machine. On a shared machine, node-wide objects (namespaces, rules, sysctls, BPF
programs) can be another run's: when a process outside this test's process group runs netdiag or
kernel tests, differences in those are reported as warnings, not failures (``ND_LEAK_SCAN=strict``
fails them anyway; ``ND_LEAK_SCAN=off`` turns the scan off).
"""
from __future__ import annotations

import glob
import os
import re
import struct
import subprocess
import time
from dataclasses import dataclass, field

SYSCTLS = (
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_loose",
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv4/ip_local_port_range",
    "/proc/sys/net/ipv4/tcp_syncookies",
    "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    "/proc/sys/net/core/somaxconn",
    "/proc/sys/kernel/perf_event_paranoid",
    "/proc/sys/kernel/unprivileged_bpf_disabled",
    "/proc/sys/net/core/bpf_jit_enable",
)
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TMP_GLOBS = ("/tmp/netdiag-lab-*", "/run/netdiag/labs/*")
COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")
FOREIGN = re.compile(r"-m\0netdiag|netdiag\.kernel\.loader|bin/netdiag\0|tests/kernel|scripts/flood|"
                     r"peers\.py|^ip\0netns\0")
# BPF objects are freed a little after their last fd closes (much later under emulation: the VM
# lanes set ND_LEAK_SETTLE_S)
SETTLE_S = float(os.environ.get("ND_LEAK_SETTLE_S", "1.0"))

BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID = 11, 13
BPF_LINK_GET_FD_BY_ID, BPF_LINK_GET_NEXT_ID = 30, 31
PROG_TYPES = {2: "kprobe", 5: "tracepoint", 7: "perf_event", 8: "cgroup_skb", 17: "raw_tracepoint",
              26: "tracing", 1: "socket_filter"}


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _ids(next_cmd: int) -> list[int]:
    from netdiag.kernel import bpfsys
    out, start = [], 0
    for _ in range(100000):
        attr = bpfsys._attr(12, [(0, "I", start)])
        try:
            bpfsys.bpf(next_cmd, attr)
        except OSError:
            break
        start = struct.unpack_from("<I", attr, 4)[0]
        out.append(start)
    return out


def _prog(pid_: int) -> str:
    """'type name' of BPF program ``pid_`` ('' when it went away meanwhile)."""
    from netdiag.kernel import bpfsys
    try:
        fd = bpfsys.bpf(BPF_PROG_GET_FD_BY_ID, bpfsys._attr(12, [(0, "I", pid_)]))
    except OSError:
        return ""
    try:
        info = bpfsys.obj_info(fd, 80)
    except OSError:
        return f"{pid_}"
    finally:
        os.close(fd)
    ptype = struct.unpack_from("<I", info, 0)[0]
    name = info[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return f"{PROG_TYPES.get(ptype, ptype)} {name}"


def bpf_programs() -> dict[int, str]:
    return {i: _prog(i) for i in _ids(BPF_PROG_GET_NEXT_ID)}


def bpf_links() -> set[int]:
    return set(_ids(BPF_LINK_GET_NEXT_ID))


def _stat(pid: str) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) of a process."""
    s = _read(f"/proc/{pid}/stat")
    if s is None:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return int(rest[1]), int(rest[2]), rest[0]


def processes() -> tuple[dict[int, str], list[str]]:
    """This test's processes (its process group and its descendants: pid -> what) and the
    netdiag runs outside that group."""
    me, pgid = os.getpid(), os.getpgid(0)
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me:
            st = _stat(d)
            if st is not None:
                table[int(d)] = st
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _g, _s) in table.items():
        kids.setdefault(ppid, []).append(pid)
    desc, todo = set(), [me]
    while todo:
        for k in kids.get(todo.pop(), ()):
            if k not in desc:
                desc.add(k)
                todo.append(k)
    ours, foreign = {}, []
    for pid, (ppid, g, state) in table.items():
        cmd = _read_cmdline(pid)
        if pid in desc or g == pgid:
            if state == "Z" and ppid == me:
                continue                       # subprocess reaps these
            if pid in _ancestors(table, me):
                continue
            ours[pid] = f"{cmd.replace(chr(0), ' ')[:120]} ({'zombie' if state == 'Z' else 'running'})"
        elif FOREIGN.search(cmd):
            foreign.append(f"{pid} {cmd.replace(chr(0), ' ')[:80]}")
    return ours, foreign


_ANC: dict = {}


def _ancestors(table: dict, me: int) -> set[int]:
    if me not in _ANC:
        anc, p = set(), os.getppid()
        for _ in range(64):
            if p <= 1:
                break
            anc.add(p)
            st = _stat(str(p))
            p = st[0] if st else 0
        _ANC[me] = anc
    return _ANC[me]


def _read_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _tracefs_probes() -> set[str]:
    out = set()
    for root in TRACEFS:
        for f in ("kprobe_events", "uprobe_events"):
            text = _read(os.path.join(root, f))
            if text:
                out |= {f"{f}: {line}" for line in text.splitlines()}
        if os.path.isdir(root):
            break
    return out


def _pinned() -> set[str]:
    out = set()
    for dirpath, dirs, files in os.walk("/sys/fs/bpf"):
        out |= {os.path.join(dirpath, n) for n in files + dirs}
        if dirpath.count("/") > 6:
            dirs.clear()
    return out


def _temp_files() -> set[str]:
    found = set()
    for g in TMP_GLOBS:
        found |= set(glob.glob(g))
    cache = os.environ.get("NETDIAG_CACHE_DIR")
    if cache:
        found |= set(glob.glob(os.path.join(cache, ".image-*"))) | set(glob.glob(os.path.join(cache, ".*.tmp")))
    return found


_FIREWALL: list = []


def _firewall_commands() -> list[tuple[str, tuple]]:
    """What reads the rules: `nft list ruleset`, which also shows iptables-nft's tables; the
    iptables-save pair only where iptables is the legacy back end (one process a snapshot instead
    of three: it counts in the emulated VM lane)."""
    if not _FIREWALL:
        version = _run("iptables", "--version")
        cmds = [("nft", ("nft", "list", "ruleset"))]
        if version and "nf_tables" not in version:
            cmds += [("iptables", ("iptables-save",)), ("ip6tables", ("ip6tables-save",))]
        _FIREWALL.extend(cmds)
    return _FIREWALL


def _mounts() -> set[str]:
    text = _read("/proc/self/mountinfo") or ""
    return {" ".join(line.split()[3:5]) for line in text.splitlines()}


@dataclass
class Snapshot:
    netns: set = field(default_factory=set)
    firewall: dict = field(default_factory=dict)
    sysctls: dict = field(default_factory=dict)
    progs: dict = field(default_factory=dict)
    links: set = field(default_factory=set)
    pinned: set = field(default_factory=set)
    probes: set = field(default_factory=set)
    procs: dict = field(default_factory=dict)
    foreign: list = field(default_factory=list)
    temp: set = field(default_factory=set)
    mounts: set = field(default_factory=set)

    @classmethod
    def take(cls) -> "Snapshot":
        s = cls()
        try:
            s.netns = set(os.listdir("/run/netns"))
        except FileNotFoundError:
            pass
        for name, cmd in _firewall_commands():
            text = _run(*cmd)
            s.firewall[name] = {COUNTERS.sub("", ln).strip() for ln in text.splitlines()
                                if ln.strip() and not ln.startswith("#")}
        s.sysctls = {p: _read(p) for p in SYSCTLS}
        s.progs = bpf_programs()
        s.links = bpf_links()
        s.pinned = _pinned()
        s.probes = _tracefs_probes()
        s.procs, s.foreign = processes()
        s.temp = _temp_files()
        s.mounts = _mounts()
        return s


def diff(before: Snapshot, after: Snapshot) -> tuple[list[str], list[str]]:
    """(leaks of this test's own: its processes; leaks of node-wide objects, which another run on
    the machine may have made: all the rest): one line each."""
    own, node = [], []
    for pid in sorted(set(after.procs) - set(before.procs)):
        own.append(f"process {pid}: {after.procs[pid]}")
    for p in sorted(after.temp - before.temp):
        node.append(f"temporary file {p}")
    for m in sorted(after.mounts - before.mounts):
        node.append(f"mount {m}")
    for ns in sorted(after.netns - before.netns):
        node.append(f"network namespace {ns}")
    for name, rules in after.firewall.items():
        for line in sorted(rules - before.firewall.get(name, set())):
            node.append(f"{name} rule added: {line}")
        for line in sorted(before.firewall.get(name, set()) - rules):
            node.append(f"{name} rule removed: {line}")
    for path, value in after.sysctls.items():
        if value != before.sysctls.get(path):
            node.append(f"sysctl {path}: {before.sysctls.get(path)!r} -> {value!r}")
    for i in sorted(set(after.progs) - set(before.progs)):
        if after.progs[i]:
            node.append(f"BPF program {i} ({after.progs[i]})")
    for i in sorted(after.links - before.links):
        node.append(f"BPF link {i}")
    for p in sorted(after.pinned - before.pinned):
        node.append(f"pinned BPF object {p}")
    for p in sorted(after.probes - before.probes):
        node.append(f"tracefs probe {p}")
    return own, node


def bpf_holders() -> dict[tuple[str, int], int]:
    """("prog"|"link", id) -> a pid holding it, from every process's fdinfo (a program attached
    through a perf event is held by that event, which names no program: not found here)."""
    out: dict = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{d}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            text = _read(f"/proc/{d}/fdinfo/{fd}")
            if not text or "_id:" not in text:
                continue
            for line in text.splitlines():
                k, _, v = line.partition(":")
                if k in ("prog_id", "link_id") and v.strip().isdigit():
                    out[(k[:4], int(v))] = int(d)
    return out


def _foreign_bpf(node: list[str], after: Snapshot) -> list[str]:
    """Drop from ``node`` the BPF programs and links a process outside this test's group holds."""
    if not any(n.startswith("BPF ") for n in node):
        return node
    holders = bpf_holders()
    ours = set(after.procs) | {os.getpid()}
    keep = []
    for n in node:
        m = re.match(r"BPF (program|link) (\d+)", n)
        if m:
            pid = holders.get(("prog" if m.group(1) == "program" else "link", int(m.group(2))))
            if pid is not None and pid not in ours:
                continue
        keep.append(n)
    return keep


def scan(before: Snapshot, settle_s: float = SETTLE_S) -> tuple[list[str], list[str], list[str]]:
    """Snapshot again and compare; while anything differs, look again for up to ``settle_s`` (a
    BPF object goes a moment after its last fd, a child a moment after its kill).
    Returns (own leaks, node-wide leaks, netdiag runs of others seen)."""
    deadline = time.monotonic() + settle_s
    while True:
        after = Snapshot.take()
        own, node = diff(before, after)
        node = _foreign_bpf(node, after)
        if not (own or node) or time.monotonic() >= deadline:
            return own, node, sorted(set(before.foreign) | set(after.foreign))
        time.sleep(0.1)


def mode() -> str:
    return os.environ.get("ND_LEAK_SCAN", "on").lower()

