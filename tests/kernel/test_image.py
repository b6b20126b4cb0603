"""netdiag's container image (docs/k8s/Dockerfile), built with podman (scripts/image/build.sh:
a debootstrap base, `podman build --isolation chroot`) and run the way docs/k8s/daemonset.yaml
and the debug pod of docs/kubernetes.md run it (scripts/image/run.sh).

chroot stands in for the container runtime: this machine's runtimes cannot start a container
(crun refuses the hybrid cgroup layout, runc cannot set rlimits). Both pods share the node's PID
and network namespaces, which a chroot keeps; run.sh gives the image's root file system the
runtime's mounts of a privileged container and the pod's volumes, in a mount namespace of its
own, and unmounts all of it afterwards.

The DaemonSet's arguments are read from daemonset.yaml and the debug pod's command from
kubernetes.md; the test adds only `--interval 0.5 --ready-file F`. Each first start has an
empty program cache (the DaemonSet's emptyDir, the debug pod's NETDIAG_CACHE_DIR), so netdiag
compiles inside the image against the node's headers. Image size, time to attached and peak
RSS go to results/image.json."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from netdiag.labs.topology import Topology

from .conftest import READY_TIMEOUT, Peer

pytestmark = [pytest.mark.kernel, pytest.mark.heavy]     # heavy: not under the VM lane's emulation
ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "image" / "build.sh"
RUN = ROOT / "scripts" / "image" / "run.sh"
DAEMONSET = ROOT / "docs" / "k8s" / "daemonset.yaml"
K8S_DOC = ROOT / "docs" / "kubernetes.md"
RESULTS = ROOT / "results" / "image.json"
SRV, CLI = "198.18.12.1", "198.18.12.2"
N = 23


def record(name: str, values: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[name] = values
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def daemonset_args() -> list[str]:
    """The container's `args:` in docs/k8s/daemonset.yaml."""
    m = re.search(r"^\s*args:\s*(\[.*\])\s*$", DAEMONSET.read_text(), re.M)
    assert m, f"no args: [...] line in {DAEMONSET}"
    return json.loads(m.group(1))


def debug_pod_command() -> list[str]:
    """The command after `--` of the `kubectl debug node/...` block in docs/kubernetes.md."""
    blocks = re.findall(r"```\n(kubectl debug node/.*?)```", K8S_DOC.read_text(), re.S)
    assert blocks, f"no kubectl debug block in {K8S_DOC}"
    words = shlex.split(blocks[0].replace("\\\n", " "))
    return words[words.index("--") + 1:]


def image_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETDIAG_", "BCC_", "ND_IMAGE"))}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def image(doctor):
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=1200)
    if p.returncode == 69:
        print(f"\ntest_image: skipped: {p.stderr.strip()}")
        pytest.skip(f"podman cannot build here: {p.stderr.strip()}")
    assert p.returncode == 0, f"build.sh exited {p.returncode}: {p.stderr.strip()}"
    info = json.loads(p.stdout.strip().splitlines()[-1])
    info["build_wall_s"] = round(time.monotonic() - t0, 1)
    info["size_mb"] = round(info["size_bytes"] / 1e6, 1)
    record("image", info)
    print(f"\ntest_image: {info['image']} {info['size_mb']} MB, built in {info['build_wall_s']} s "
          f"(base made: {info['base_built']})")
    return info


@pytest.fixture(scope="module")
def topo(doctor):
    with Topology() as t:
        t.srv = t.add_ns("isrv")
        t.cli = t.add_ns("icli")
        t.link(t.srv, f"{SRV}/24", t.cli, f"{CLI}/24")
        yield t


def no_leftovers():
    """Nothing of run.sh stays: no container, nothing mounted in a container layer."""
    p = subprocess.run(["podman", "ps", "-a", "--filter", "name=netdiag-run-", "--format", "{{.Names}}"],
                       capture_output=True, text=True)
    assert p.stdout.strip() == "", f"containers left: {p.stdout}"
    left = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if "/var/lib/containers/storage/overlay/" in line.split()[4]]
    assert not left, f"a container root file system is still mounted: {left}"


class ImageWatch:
    """run.sh [--debug-pod] [--command] ... in the background: the watch's NDJSON, its ready file,
    and the resource use run.sh's waiter records."""

    def __init__(self, tmp: Path, argv: list[str], ready: Path, env: dict):
        self.tmp, self.ready = tmp, ready
        self.rusage = tmp / "rusage.json"
        self.stderr = open(tmp / "stderr", "w+")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(["bash", str(RUN), *argv], stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=dict(env, ND_IMAGE_RUSAGE=str(self.rusage)))
        self.records: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"run.sh exited {self.proc.returncode}: {self.err()}")
            assert time.monotonic() < deadline, f"watch in the image did not attach in time: {self.err()}"
            time.sleep(0.02)
        self.to_ready_s = time.monotonic() - self.t0
        self.info = json.loads(ready.read_text())
        start = json.loads(self.rusage.read_text())
        self.pid = start["pid"]
        # netdiag's own start: the waiter's start of chroot to the ready file's write
        self.attached_s = ready.stat().st_mtime - start["started_at"]

    def err(self) -> str:
        self.stderr.flush()
        return (self.tmp / "stderr").read_text()[-3000:]

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{"):
                with self.lock:
                    self.records.append(json.loads(line))

    def rows(self, netns, dst, direction):
        with self.lock:
            recs = [r for r in self.records if r.get("type") == "interval"]
        return [r for rec in recs for r in rec["destinations"]
                if r["netns"] == netns and r["dst"] == dst and r["direction"] == direction]

    def seen(self) -> dict:
        """(netns, dst, direction) -> connects, for a failure's message."""
        out: dict = {}
        with self.lock:
            for rec in self.records:
                for r in rec.get("destinations", []):
                    k = f"{r['netns']} {r['dst']} {r['direction']}"
                    out[k] = out.get(k, 0) + r.get("connects", 0)
            out["records"] = len(self.records)
        return out

    def total(self, netns, dst, direction, field):
        return sum(r[field] for r in self.rows(netns, dst, direction))

    def until(self, pred, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not (v := pred()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return v

    def rss_kb(self) -> int:
        """The running netdiag process's resident set now (kB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> dict:
        """SIGTERM, as a pod's deletion sends it; returns the waiter's resource use."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.stderr.close()
        assert self.proc.returncode == 0, f"run.sh exited {self.proc.returncode}: {(self.tmp / 'stderr').read_text()[-3000:]}"
        return json.loads(self.rusage.read_text())

    def cost(self, ru: dict, steady_kb: int) -> dict:
        return {"program": self.info.get("program"), "dns_program": self.info.get("dns_program"),
                "start_to_attached_s": round(self.attached_s, 2), "run_sh_to_attached_s": round(self.to_ready_s, 2),
                "peak_rss_mb": round(ru["maxrss_kb"] / 1024, 1), "steady_rss_mb": round(steady_kb / 1024, 1),
                "cpu_s": round(ru["utime_s"] + ru["stime_s"], 2)}


def count_23(w: ImageWatch, topo, port: int) -> dict:
    """23 connections from the client namespace to the server's port, held, then closed: the
    image's watch must count exactly 23 connects and 23 established for that destination."""
    cli, srv, dst = topo.inode(topo.cli), topo.inode(topo.srv), f"{SRV}:{port}"
    server = Peer(topo.srv, "serve", SRV, port, N)
    client = None
    try:
        server.line()
        client = Peer(topo.cli, "connect", SRV, port, N)
        assert client.line()["ok"] == N
        assert server.line() == {"accepted": N}
        assert w.until(lambda: any(r["active"] == N for r in w.rows(cli, dst, "out"))), \
            f"active never reached {N} for {cli} {dst}: {w.seen()} {w.err()}"
        w.until(lambda: w.total(cli, dst, "out", "established") >= N)
        w.until(lambda: w.total(srv, dst, "in", "established") >= N)
        client.close()
        client = None
        w.until(lambda: any(r["active"] == 0 for r in w.rows(cli, dst, "out")))
    finally:
        server.close()
        if client:
            client.close()
    got = {"connects": w.total(cli, dst, "out", "connects"), "established": w.total(cli, dst, "out", "established"),
           "failed": w.total(cli, dst, "out", "failed"), "accepted": w.total(srv, dst, "in", "established")}
    assert got == {"connects": N, "established": N, "failed": 0, "accepted": N}, got
    return got


def test_doctor_from_image(image):
    p = subprocess.run(["bash", str(RUN), "doctor", "--json"], capture_output=True, text=True, timeout=120,
                       env=image_env())
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["bpf_works"] is True, rep
    checks = {c["name"]: c for c in rep["checks"]}
    assert {"privileges", "bcc", "bpf() syscall", "BTF", "tracefs", "kernel headers"} <= set(checks), list(checks)
    # Debian's BCC inside the image, the node's headers through the /lib/modules and /usr/src mounts
    assert "/usr/lib/python3/dist-packages/bcc" in checks["bcc"]["detail"], checks["bcc"]
    assert checks["kernel headers"]["status"] in ("yes", "stand-in"), checks["kernel headers"]
    record("doctor", {"bpf_works": rep["bpf_works"], "checks": len(rep["checks"]),
                      "headers": checks["kernel headers"]["detail"]})
    no_leftovers()


@pytest.fixture(scope="module")
def daemonset_cache(tmp_path_factory):
    """The program-cache emptyDir: new for the pod, kept across its container's restarts."""
    return tmp_path_factory.mktemp("emptydir")


def test_daemonset_first_start_counts_23(image, topo, daemonset_cache, tmp_path):
    ready = tmp_path / "watch.ready"
    args = [*daemonset_args(), "--interval", "0.5", "--ready-file", str(ready)]
    w = ImageWatch(tmp_path, args, ready, image_env(ND_IMAGE_CACHE=str(daemonset_cache),
                                                     ND_IMAGE_SHARE=str(tmp_path)))
    try:
        # an empty cache: the programs are compiled in the image, against the node's headers
        assert w.info["program"] == "compiled", w.info
        got = count_23(w, topo, 8080)
        steady = w.rss_kb()
    finally:
        ru = w.stop()
    cost = w.cost(ru, steady)
    record("daemonset_first_start", dict(cost, args=args, counts=got))
    print(f"\ntest_image: DaemonSet first start: {cost}")
    assert list(Path(daemonset_cache).rglob("*")), "the first start left no program image in the emptyDir"
    no_leftovers()


def test_daemonset_restart_loads_programs(image, topo, daemonset_cache, tmp_path):
    """A restarted container (same emptyDir) loads the programs the first start compiled."""
    ready = tmp_path / "watch.ready"
    args = [*daemonset_args(), "--interval", "0.5", "--ready-file", str(ready)]
    w = ImageWatch(tmp_path, args, ready, image_env(ND_IMAGE_CACHE=str(daemonset_cache),
                                                     ND_IMAGE_SHARE=str(tmp_path)))
    try:
        assert w.info["program"] == "cached", w.info
        if w.info.get("dns_program"):
            assert w.info["dns_program"] == "cached", w.info
        got = count_23(w, topo, 8081)
        steady = w.rss_kb()
    finally:
        ru = w.stop()
    cost = w.cost(ru, steady)
    record("daemonset_restart", dict(cost, counts=got))
    print(f"\ntest_image: DaemonSet restart: {cost}")
    no_leftovers()


def test_debug_pod_command_counts_23(image, topo, tmp_path):
    """docs/kubernetes.md's `kubectl debug node/...` command: the node's root at /host and
    nothing else mounted; the program cache on the node (a fresh directory here)."""
    cmd = debug_pod_command()
    assert cmd[:2] == ["sh", "-c"] and "netdiag watch" in cmd[2], cmd
    cache = tmp_path / "cache"
    script = cmd[2].replace("/host/var/cache/netdiag/programs", f"/host{cache}")
    assert script != cmd[2], "the debug pod's command no longer sets NETDIAG_CACHE_DIR under /host"
    ready = tmp_path / "watch.ready"
    script += f" --json --interval 0.5 --ready-file /host{ready}"
    w = ImageWatch(tmp_path, ["--debug-pod", "--command", "sh", "-c", script], ready, image_env())
    try:
        assert w.info["program"] == "compiled", w.info
        got = count_23(w, topo, 8082)
        steady = w.rss_kb()
    finally:
        ru = w.stop()
    cost = w.cost(ru, steady)
    record("debug_pod_first_start", dict(cost, command=cmd, counts=got))
    print(f"\ntest_image: debug pod first start: {cost}")
    no_leftovers()
