"""Network namespaces and cgroups -> Kubernetes pods and containers (or ip-netns names).

On a Kubernetes node every pod has its own network namespace, held by the pod's sandbox
("pause") process, and every container's processes live in a cgroup whose path carries the
pod UID and the container ID, with either cgroup driver:

    systemd:   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/
               cri-containerd-<container id>.scope          (crio-<id>.scope, docker-<id>.scope)
    cgroupfs:  /kubepods/burstable/pod<uid>/<container id>

The kubelet writes each pod's logs under ``/var/log/pods/<namespace>_<pod>_<uid>/<container>/``
and links ``/var/log/containers/<pod>_<namespace>_<container>-<container id>.log``: together they
name the pod (namespace/name) of a UID and the container of an ID, with no API credentials.
Where ``crictl`` and a CRI socket are present (containerd, CRI-O), ``crictl pods``/``crictl ps``
fill in what the logs do not (sandbox IDs, pods without logs yet); any failure there is ignored.

Everything is read under ``root`` (default ``/``), so tests pass a fake tree. Off Kubernetes a
namespace is named by ``ip netns`` (``source: netns``), the init namespace is ``host``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

POD_RE = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
CID_RE = re.compile(r"(?:^|/)(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-f]{64})(?:\.scope)?$")
CRI_SOCKETS = ("run/containerd/containerd.sock", "run/crio/crio.sock", "var/run/containerd/containerd.sock",
               "var/run/crio/crio.sock", "run/k3s/containerd/containerd.sock")


def parse_cgroup_path(path: str) -> tuple[str | None, str | None]:
    """A cgroup path -> (pod uid, container id); None where the path has none."""
    m = POD_RE.search(path)
    uid = m.group(1).replace("_", "-") if m else None
    c = CID_RE.search(path.rstrip("/"))
    return uid, (c.group(1) if c else None)


def parse_pod_log_dir(name: str) -> tuple[str, str, str] | None:
    """'<namespace>_<pod>_<uid>' -> (namespace, pod, uid). Namespaces and pod names cannot
    contain '_' (DNS-1123), so the split is unambiguous."""
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def parse_container_log(name: str) -> tuple[str, str, str, str] | None:
    """'<pod>_<namespace>_<container>-<id>.log' -> (namespace, pod, container, id)."""
    if not name.endswith(".log"):
        return None
    parts = name[:-4].split("_")
    if len(parts) != 3:
        return None
    pod, ns, rest = parts
    container, _, cid = rest.rpartition("-")
    if not container or not re.fullmatch(r"[0-9a-f]{64}", cid):
        return None
    return ns, pod, container, cid


def _proc_cgroup(text: str) -> str | None:
    """/proc/<pid>/cgroup -> the path that names a pod (cgroup v2 '0::', else any v1 line)."""
    best = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            return parts[2]
        if "kubepods" in parts[2] and best is None:
            best = parts[2]
    return best


class PodMap:
    """``for_netns(inode)`` / ``for_cgroup(path_or_id)`` -> a dict naming the pod:

    ``{"pod": "default/web-0", "namespace": "default", "name": "web-0", "uid": "...",
    "containers": ["web"], "source": "kubernetes"}`` on a Kubernetes node,
    ``{"pod": "nd-ab12-cli", "name": "nd-ab12-cli", "source": "netns"}`` for a named
    namespace, ``{"pod": "host", "source": "host"}`` for the init namespace.
    Tables are re-read at most every ``refresh_s`` seconds (on a miss sooner).
    """

    def __init__(self, root: str | Path = "/", crictl: str | None = "auto", refresh_s: float = 10.0,
                 proc: str | Path | None = None):
        self.root = Path(root)
        # a debug pod sees the node's files under /host but its processes in /proc (hostPID)
        self.proc = Path(proc) if proc is not None else self.root / "proc"
        self.crictl = shutil.which("crictl") if crictl == "auto" else crictl
        self.refresh_s = refresh_s
        self._t = None
        self.pods: dict[str, dict] = {}           # uid -> {namespace, name, uid, containers{name}}
        self.containers: dict[str, tuple] = {}    # container id -> (uid | None, namespace, pod, container)
        self.netns_pids: dict[int, list[int]] = {}
        self.netns_names: dict[int, str] = {}
        self.host_inode = None
        self.cri_note = None
        self._memo: dict[int, dict] = {}

    @property
    def kubernetes(self) -> bool:
        return bool(self.pods or self.containers)

    # -- tables ---------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Re-read the tables when older than refresh_s (forced: older than one second)."""
        now = time.monotonic()
        if self._t is not None and now - self._t < (1.0 if force else self.refresh_s):
            return
        self._t = now
        self._memo = {}
        self.pods, self.containers = {}, {}
        self._read_pod_logs()
        self._read_container_logs()
        self._read_cri()
        self._read_proc()
        self._read_named()

    def _read_pod_logs(self) -> None:
        base = self.root / "var" / "log" / "pods"
        try:
            dirs = list(base.iterdir())
        except OSError:
            return
        for d in dirs:
            p = parse_pod_log_dir(d.name)
            if p is None:
                continue
            ns, name, uid = p
            try:
                cnames = sorted(c.name for c in d.iterdir() if c.is_dir())
            except OSError:
                cnames = []
            self.pods[uid] = {"namespace": ns, "name": name, "uid": uid, "containers": cnames}

    def _read_container_logs(self) -> None:
        base = self.root / "var" / "log" / "containers"
        try:
            names = os.listdir(base)
        except OSError:
            return
        by_name = {(p["namespace"], p["name"]): uid for uid, p in self.pods.items()}
        for n in names:
            c = parse_container_log(n)
            if c is None:
                continue
            ns, pod, container, cid = c
            self.containers[cid] = (by_name.get((ns, pod)), ns, pod, container)

    def _read_cri(self) -> None:
        if not self.crictl:
            return
        sock = next((self.root / s for s in CRI_SOCKETS if (self.root / s).exists()), None)
        if sock is None:
            return
        ep = f"unix://{sock}"
        for what in ("pods", "ps"):
            try:
                p = subprocess.run([self.crictl, "--runtime-endpoint", ep, "--timeout", "3s", what, "-o", "json"]
                                   + (["-a"] if what == "ps" else []),
                                   capture_output=True, text=True, timeout=5)
                data = json.loads(p.stdout) if p.returncode == 0 else None
            except (OSError, subprocess.SubprocessError, ValueError) as e:
                self.cri_note = f"crictl {what}: {e}"
                return
            if data is None:
                self.cri_note = f"crictl {what}: {p.stderr.strip()[:200]}"
                return
            for item in data.get("items", []) or data.get("containers", []):
                if what == "pods":
                    md = item.get("metadata", {})
                    uid = md.get("uid")
                    if uid:
                        self.pods.setdefault(uid, {"namespace": md.get("namespace"), "name": md.get("name"),
                                                   "uid": uid, "containers": []})
                        self.containers.setdefault(item.get("id", ""), (uid, md.get("namespace"),
                                                                        md.get("name"), None))
                else:
                    lb = item.get("labels", {})
                    uid = lb.get("io.kubernetes.pod.uid")
                    cname = lb.get("io.kubernetes.container.name") or item.get("metadata", {}).get("name")
                    self.containers[item.get("id", "")] = (uid, lb.get("io.kubernetes.pod.namespace"),
                                                           lb.get("io.kubernetes.pod.name"), cname)
                    pod = self.pods.get(uid)
                    if pod is not None and cname and cname not in pod["containers"]:
                        pod["containers"].append(cname)

    def _read_proc(self) -> None:
        self.netns_pids = {}
        try:
            self.host_inode = os.stat(self.proc / "1" / "ns" / "net").st_ino
        except OSError:
            self.host_inode = None
        try:
            pids = sorted(int(d) for d in os.listdir(self.proc) if d.isdigit())
        except OSError:
            return
        for pid in pids:
            try:
                ino = os.stat(self.proc / str(pid) / "ns" / "net").st_ino
            except OSError:
                continue
            self.netns_pids.setdefault(ino, []).append(pid)

    def _read_named(self) -> None:
        self.netns_names = {}
        base = self.root / "run" / "netns"
        try:
            entries = list(base.iterdir())
        except OSError:
            return
        for p in entries:
            try:
                self.netns_names[os.stat(p).st_ino] = p.name
            except OSError:
                continue

    # -- lookups --------------------------------------------------------------------------------
    def for_cgroup(self, cg: str | int) -> dict | None:
        """A cgroup path (as in /proc/<pid>/cgroup) or a cgroup id (the inode of its directory in
        the cgroup2 mount) -> pod dict, or None when it belongs to no pod."""
        self.refresh()
        if isinstance(cg, int):
            path = self._cgroup_path_of_id(cg)
            if path is None:
                return None
            cg = path
        uid, cid = parse_cgroup_path(cg)
        if uid is None and cid is not None and cid in self.containers:
            uid = self.containers[cid][0]
        if uid is None:
            return None
        return self._pod(uid, {cid} if cid else set())

    def _cgroup_path_of_id(self, cgid: int) -> str | None:
        base = self.root / "sys" / "fs" / "cgroup"
        stack = [base]
        seen = 0
        while stack and seen < 200_000:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            seen += 1
                            if e.inode() == cgid:
                                return "/" + str(Path(e.path).relative_to(base))
                            if "kubepods" in e.path or d == base:
                                stack.append(Path(e.path))
            except OSError:
                continue
        return None

    def _pod(self, uid: str, cids: set) -> dict:
        p = self.pods.get(uid)
        names = sorted({self.containers[c][3] for c in cids if c in self.containers and self.containers[c][3]})
        if p is None:
            first = next((self.containers[c] for c in cids if c in self.containers), None)
            ns, name = (first[1], first[2]) if first else (None, None)
            p = {"namespace": ns, "name": name or uid, "uid": uid, "containers": []}
        pod = f"{p['namespace']}/{p['name']}" if p.get("namespace") else p["name"]
        return {"pod": pod, "namespace": p.get("namespace"), "name": p["name"], "uid": uid,
                "containers": names or list(p.get("containers", [])), "source": "kubernetes"}

    def for_netns(self, inode: int) -> dict:
        self.refresh()
        if inode not in self.netns_pids and inode not in self.netns_names and inode != self.host_inode:
            self.refresh(force=True)                       # a namespace newer than the tables
        got = self._memo.get(inode)
        if got is None:
            got = self._memo[inode] = self._for_netns(inode)
        return dict(got)

    def _for_netns(self, inode: int) -> dict:
        if inode == self.host_inode:
            return {"pod": "host", "name": "host", "source": "host"}
        uid, cids = None, set()
        for pid in self.netns_pids.get(inode, []):
            try:
                text = (self.proc / str(pid) / "cgroup").read_text()
            except OSError:
                continue
            path = _proc_cgroup(text)
            if not path:
                continue
            u, c = parse_cgroup_path(path)
            if u is None and c in self.containers:
                u = self.containers[c][0]
            if u is not None:
                uid = uid or u
                if c:
                    cids.add(c)
        if uid is not None:
            return self._pod(uid, cids)
        name = self.netns_names.get(inode)
        if name:
            return {"pod": name, "name": name, "source": "netns"}
        return {"pod": f"netns:{inode}", "name": None, "source": "netns"}

    def label(self, inode: int) -> str:
        return self.for_netns(inode)["pod"]
