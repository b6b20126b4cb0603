"""`netdiag snapshot`: the node's connection state now, in one file of the recording layout
(docs/commands/snapshot.md): sockets per namespace and state, listeners, TCP MIB and netstat
counters, conntrack fill and per-CPU statistics, sysctls, NAT rules, and doctor's table."""
from __future__ import annotations

import os
import socket
import time

from netdiag.errors import OutputError
from netdiag.offline import format as fm
from netdiag.offline.context import SYSCTLS, node_context
from netdiag.offline.writer import make_private_dirs

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
ALL_STATES = 0xFFF


def _proc_pairs(path: str, groups=None) -> list[tuple]:
    """(group, counter, value) from /proc/net/snmp or /proc/net/netstat style files."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for head, vals in zip(lines[::2], lines[1::2]):
        group = head.split(":")[0]
        if groups and group not in groups:
            continue
        for n, v in zip(head.split()[1:], vals.split()[1:]):
            try:
                out.append((group, n, int(v)))
            except ValueError:
                pass
    return out


def _conntrack_stats() -> dict:
    """Per-CPU conntrack statistics summed, the count and max, of the calling thread's namespace."""
    out: dict = {}
    try:
        with open("/proc/thread-self/net/stat/nf_conntrack") as f:
            rows = f.read().split("\n")
    except OSError:
        rows = []
    if rows:
        names = rows[0].split()
        cpus = 0
        for line in rows[1:]:
            if not line.strip():
                continue
            cpus += 1
            for n, v in zip(names, line.split()):
                if n != "entries":
                    out[n] = out.get(n, 0) + int(v, 16)
        out["cpus"] = cpus
    for key, path in (("count", "nf_conntrack_count"), ("max", "nf_conntrack_max")):
        try:
            with open(f"/proc/sys/net/netfilter/{path}") as f:
                out[key] = int(f.read())
        except (OSError, ValueError):
            out[key] = None
    return out


def _in_namespace() -> dict:
    """Everything read inside one namespace (runs in a thread that entered it)."""
    from netdiag.sources.inetdiag import dump
    try:
        socks = dump(ALL_STATES)
        err = None
    except Exception as e:           # pyroute2 NetlinkError / OSError: the rest still reads
        socks, err = [], f"inet_diag: {e}"
    sysctl = {}
    for name in SYSCTLS:
        try:
            with open(os.path.join("/proc/sys", name)) as f:
                sysctl[name.replace("/", ".")] = " ".join(f.read().split())
        except OSError:
            sysctl[name.replace("/", ".")] = None
    return {"socks": socks, "error": err,
            "mib": _proc_pairs("/proc/thread-self/net/snmp", {"Tcp"}) + _proc_pairs("/proc/thread-self/net/netstat"),
            "conntrack": _conntrack_stats(), "sysctls": sysctl}


def take(node: str | None = None, nat: bool = True, with_doctor: bool = True) -> tuple[dict, dict]:
    """(meta, tables) of a snapshot of every network namespace now."""
    import pyarrow as pa

    from netdiag.sources.namespaces import discover, run_in
    spaces = discover()
    sockets, listeners, mib, ct, sysctl, errors, rules = [], [], [], [], [], [], {}
    for ns in sorted(spaces.values(), key=lambda n: n.inode):
        label = ns.label if not ns.is_host else "host"
        try:
            got = run_in(ns, _in_namespace)
        except OSError as e:          # the namespace went away while we read
            errors.append({"netns": ns.inode, "netns_name": label, "error": str(e)})
            continue
        if got["error"]:
            errors.append({"netns": ns.inode, "netns_name": label, "error": got["error"]})
        counts: dict = {}
        for s in got["socks"]:
            counts[s.state] = counts.get(s.state, 0) + 1
            if s.state == 10:
                addr = f"[{s.laddr}]:{s.lport}" if s.family == 6 else f"{s.laddr}:{s.lport}"
                listeners.append({"netns": ns.inode, "netns_name": label, "listen": addr, "queue": s.rqueue,
                                  "backlog": s.wqueue})
        for st, n in sorted(counts.items()):
            sockets.append({"netns": ns.inode, "netns_name": label, "state": TCP_STATES.get(st, str(st)), "count": n})
        for group, name, v in got["mib"]:
            mib.append({"netns": ns.inode, "netns_name": label, "group": group, "counter": name, "value": v})
        c = got["conntrack"]
        ct.append({"netns": ns.inode, "netns_name": label, **{k: c.get(k) for k in (
            "count", "max", "cpus", "found", "invalid", "insert", "insert_failed", "drop", "early_drop", "icmp_error",
            "clashres", "search_restart")}})
        for k, v in got["sysctls"].items():
            sysctl.append({"netns": ns.inode, "netns_name": label, "name": k, "value": v})
        if nat:
            from netdiag.sources.conntrack.natrules import read_namespace_rules
            r = read_namespace_rules(ns)
            rules[label] = {"rules": [x.as_dict() for x in r.rules], "error": r.error}
    doctor = []
    if with_doctor:
        from netdiag.kernel.doctor import run_checks
        rep = run_checks()
        doctor = [{"name": c["name"], "status": c["status"], "detail": c.get("detail", ""), "fix": c.get("fix", "")}
                  for c in rep.get("checks", [])]
    ctx = node_context(node)
    ctx["nat"] = {"per_namespace": rules}
    meta = {"kind": "snapshot", "context": ctx,
            "snapshot": {"node": ctx["node"], "ts": time.time(), "hostname": socket.gethostname(),
                         "kernel": ctx["kernel"], "sysctls": ctx["sysctls"], "namespaces": len(spaces),
                         "errors": errors}}

    def tab(rows, cols):
        return pa.table({c: [r.get(c) for r in rows] for c in cols})
    tables = {
        "sockets": tab(sockets, ["netns", "netns_name", "state", "count"]),
        "listeners": tab(listeners, ["netns", "netns_name", "listen", "queue", "backlog"]),
        "netstat": tab(mib, ["netns", "netns_name", "group", "counter", "value"]),
        "conntrack": tab(ct, ["netns", "netns_name", "count", "max", "cpus", "found", "invalid", "insert",
                              "insert_failed", "drop", "early_drop", "icmp_error", "clashres", "search_restart"]),
        "sysctls": tab(sysctl, ["netns", "netns_name", "name", "value"]),
        "doctor": tab(doctor, ["name", "status", "detail", "fix"]),
    }
    return meta, tables


def write(path, meta: dict, tables: dict) -> int:
    """Write the snapshot file (0600, new directories 0700); returns its size."""
    from pathlib import Path
    path = Path(path)
    make_private_dirs(path.parent)
    data = fm.header(meta) + b"".join(fm.segment(k, t) for k, t in tables.items()) + fm.commit()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise OutputError(f"{path}: exists (remove it or choose another --out)") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot create ({e.strerror})") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise OutputError(f"{path}: write failed ({e.strerror})") from None
    os.close(fd)
    return len(data)
