"""`watch --metrics` scraped by a real Prometheus (Debian's `prometheus`, started on 127.0.0.1 with
its own config and data directory, stopped at the end).

Two `watch --metrics` instances with different `--node` names stand in for two nodes, each
watching its own namespace (`--netns`):

* node-a: a namespace whose outbound connections are source-NATed (MASQUERADE) to a range of
  RANGE ports, like a node behind a small SNAT allocation; its load generator opens more
  connections than there are ports and holds them;
* node-b: a namespace without NAT that opens a known number of connections.

Prometheus's HTTP API must then say: SNAT ports in use on node-a equal the range exactly; the
per-node sums of connects equal what each load generator reports; the snat_port_exhaustion
verdict series is there with its cap while it stands and gone after its TTL. And bad metrics
input exits at once with one line and a distinct code, before anything is attached.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from netdiag.labs.natlab import load_modules
from netdiag.labs.topology import Topology, ns_exec
from tests.kernel.conftest import NETDIAG, READY_TIMEOUT

# host lane only (heavy): Prometheus and two watches take too long under emulation
pytestmark = [pytest.mark.kernel, pytest.mark.heavy]

RANGE = 10                 # node-a's MASQUERADE --to-ports range: the cap
A_CONNECTS = 24            # more than RANGE: the rest find no free port
B_CONNECTS = 37
TTL = 4.0
SERVER_PORT = 8080


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_file(path: Path, proc: subprocess.Popen, what: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"{what} not ready in {timeout} s"
        time.sleep(0.05)


class Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping the given targets every 0.5 s."""

    def __init__(self, tmp: Path, targets: dict):
        exe = shutil.which("prometheus")
        assert exe, "prometheus not installed (scripts/setup.sh installs Debian's prometheus)"
        self.port = free_port()
        jobs = "\n".join(
            f"  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']"
            for name, port in targets.items())
        cfg = tmp / "prometheus.yml"
        cfg.write_text(f"global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n{jobs}\n")
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}",
                                      "--storage.tsdb.retention.time=1h"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert self.proc.poll() is None, f"prometheus exited: {(tmp / 'prometheus.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "prometheus not ready in 60 s"
            time.sleep(0.2)

    def query(self, q: str) -> list:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, q: str):
        """The single value of an instant query, or None when it has no result."""
        res = self.query(q)
        assert len(res) <= 1, res
        return float(res[0]["value"][1]) if res else None

    def targets_up(self) -> dict:
        return {r["metric"]["job"]: float(r["value"][1]) for r in self.query("up")}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def until(pred, timeout: float, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def fleet_queries() -> list[str]:
    """The PromQL lines of the fleet-view section of docs/kubernetes.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    section = text.split("### The fleet view in PromQL", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```\n(.*?)^```", section, re.S | re.M)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip()]


def start_watch(tmp: Path, name: str, netns: str, port: int) -> subprocess.Popen:
    d = tmp / name
    d.mkdir()
    ready = d / "ready"
    p = subprocess.Popen([*NETDIAG, "watch", "--quiet", "--netns", netns, "--interval", "0.5",
                          "--metrics", f"127.0.0.1:{port}", "--node", name, "--metrics-ttl", str(TTL),
                          "--ready-file", str(ready)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_file(ready, p, f"watch --node {name}")
    return p


def load_client(ns: str, target: str, n: int, *extra) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *NETDIAG, "load", "client", target, "-n", str(n),
                             "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def nodes(doctor):
    """Two 'nodes': namespaces a (SNAT to RANGE ports on its way out) and b (no NAT), each with a
    server namespace behind it."""
    load_modules()
    topo = Topology()
    servers = []
    try:
        a, a_srv = topo.add_ns("a"), topo.add_ns("as")
        b, b_srv = topo.add_ns("b"), topo.add_ns("bs")
        a_if, _ = topo.link(a, "198.18.61.1/24", a_srv, "198.18.61.2/24")
        topo.link(b, "198.18.62.1/24", b_srv, "198.18.62.2/24")
        for s in ("time_wait", "close", "close_wait", "fin_wait", "last_ack"):
            ns_exec(a, "sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_timeout_{s}=1")
        ns_exec(a, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", a_if, "-p", "tcp", "-j", "MASQUERADE",
                "--to-ports", f"40000-{40000 + RANGE - 1}")
        for ns, ip in ((a_srv, "198.18.61.2"), (b_srv, "198.18.62.2")):
            servers.append(subprocess.Popen(["ip", "netns", "exec", ns, *NETDIAG, "load", "server", "--bind", ip,
                                             "--port", str(SERVER_PORT), "--duration", "300"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield {"a": a, "b": b, "a_target": f"198.18.61.2:{SERVER_PORT}", "b_target": f"198.18.62.2:{SERVER_PORT}"}
    finally:
        for s in servers:
            s.terminate()
            s.wait(timeout=20)
        topo.close()


def test_two_nodes_scraped_by_prometheus(nodes, tmp_path):
    pa, pb = free_port(), free_port()
    watches = [start_watch(tmp_path, "node-a", nodes["a"], pa)]
    prom = None
    try:
        watches.append(start_watch(tmp_path, "node-b", nodes["b"], pb))
        prom = Prometheus(tmp_path, {"node-a": pa, "node-b": pb})
        assert until(lambda: prom.targets_up() == {"node-a": 1.0, "node-b": 1.0}, 30), prom.query("up")

        la = load_client(nodes["a"], nodes["a_target"], A_CONNECTS, "--timeout", "3", "--hold", "8")
        lb = load_client(nodes["b"], nodes["b_target"], B_CONNECTS, "--timeout", "3", "--hold", "1")
        outs = {}
        for name, p in (("a", la), ("b", lb)):
            out, err = p.communicate(timeout=120)
            outs[name] = json.loads(out.strip().splitlines()[-1])
        assert outs["b"]["established"] == B_CONNECTS
        assert outs["a"]["established"] == RANGE, outs["a"]      # the others found no free NAT port
        assert outs["a"]["attempted"] == A_CONNECTS

        # the verdict series: present, with the cap as its value, while the verdict stands
        q = 'netdiag_verdict{node="node-a",kind="snat_port_exhaustion"}'
        res = until(lambda: prom.query(q), 30)
        assert res, "no snat_port_exhaustion verdict series on node-a"
        (v,) = res
        assert float(v["value"][1]) == RANGE
        assert v["metric"]["dst"] == nodes["a_target"] and v["metric"]["number"] == "cap"
        assert v["metric"]["place"] == nodes["a"]
        assert prom.query('netdiag_verdict{node="node-b"}') == []
        # the fleet view's PromQL of docs/kubernetes.md: every query runs; "which nodes hit a cap"
        queries = fleet_queries()
        assert len(queries) >= 10
        for fq in queries:
            prom.query(fq)                                   # asserts status "success"
        caps = prom.query("max by (node, kind, dst, number) (netdiag_verdict)")
        assert [(c["metric"]["node"], c["metric"]["kind"], float(c["value"][1])) for c in caps] == [
            ("node-a", "snat_port_exhaustion", RANGE)]
        assert {r["metric"]["node"] for r in
                prom.query('sum by (node) (netdiag_active_connections{direction="out"})')} == {"node-a", "node-b"}

        # SNAT ports in use equal the range exactly (the largest Prometheus stored), and the range
        assert prom.value(f'max_over_time(netdiag_snat_ports_in_use{{node="node-a",dst="{nodes["a_target"]}"}}[5m])') \
            == RANGE
        assert prom.value(f'netdiag_snat_port_range{{node="node-a",dst="{nodes["a_target"]}"}}') == RANGE
        assert prom.query('netdiag_snat_ports_in_use{node="node-b"}') == []

        # per-node sums of connects equal what each load generator reports (after a final scrape)
        def connects():
            res = prom.query('sum by (node) (netdiag_connects_total{direction="out"})')
            return {r["metric"]["node"]: float(r["value"][1]) for r in res}
        want = {"node-a": outs["a"]["attempted"], "node-b": outs["b"]["attempted"]}
        got = until(lambda: connects() == want and connects(), 15)
        assert got == want, (connects(), want)
        est = {r["metric"]["node"]: float(r["value"][1]) for r in
               prom.query('sum by (node) (netdiag_established_total{direction="out"})')}
        assert est == {"node-a": RANGE, "node-b": B_CONNECTS}
        failed_a = prom.value('sum(netdiag_connect_failures_total{node="node-a"})')
        assert failed_a == A_CONNECTS - RANGE
        assert prom.value('sum(netdiag_snat_insert_failures_total{node="node-a"})') > 0
        info = prom.query('netdiag_build_info{node="node-b"}')
        assert len(info) == 1 and info[0]["metric"]["metrics_by"] == "node"

        # gone after its TTL: once the verdict no longer stands (10 s after its evidence), TTL s later
        assert until(lambda: not prom.query(q), 60), prom.query(q)
        # and the endpoint itself no longer has it
        with urllib.request.urlopen(f"http://127.0.0.1:{pa}/metrics", timeout=5) as r:
            assert b"snat_port_exhaustion" not in r.read()
    finally:
        if prom is not None:
            prom.stop()
        for w in watches:
            w.send_signal(signal.SIGINT)
        for w in watches:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
    for w in watches:
        assert w.returncode == 0, w.stderr.read()


# -- bad input: one line, a distinct code, nothing attached ------------------------------------------
def run_watch(tmp_path, *args):
    ready = tmp_path / "ready"
    p = subprocess.run([*NETDIAG, "watch", "--ready-file", str(ready), "--duration", "30", *args],
                       capture_output=True, text=True, timeout=120)
    return p, ready.exists()


def test_metrics_port_in_use(doctor, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        p, attached = run_watch(tmp_path, "--metrics", str(port))
    finally:
        s.close()
    assert p.returncode == 65, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "port is in use" in lines[0] and str(port) in lines[0], p.stderr
    assert not attached and "attached" not in p.stderr


def test_metrics_address_not_on_this_host(doctor, tmp_path):
    p, attached = run_watch(tmp_path, "--metrics", "198.51.100.7:9464")
    assert p.returncode == 65, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "not on this host" in lines[0], p.stderr
    assert not attached and "attached" not in p.stderr


@pytest.mark.parametrize("args,needle", [
    (("--metrics", "9464", "--metrics-max-series", "0"), "--metrics-max-series"),
    (("--metrics", "9464", "--metrics-by", "namespace"), "--metrics-by"),
    (("--metrics", "localhost:9464"), "--metrics"),
])
def test_metrics_bad_options(doctor, tmp_path, args, needle):
    p, attached = run_watch(tmp_path, *args)
    assert p.returncode == 2, p.stderr
    err = [line for line in p.stderr.strip().splitlines() if line.startswith("netdiag: error: ")]
    assert len(err) == 1 and needle in err[0], p.stderr
    assert not attached and "attached" not in p.stderr


def test_nothing_listens_on_public_addresses_by_default(doctor, tmp_path):
    """`--metrics PORT` listens on 127.0.0.1 only."""
    port = free_port()
    ready = tmp_path / "ready"
    p = subprocess.Popen([*NETDIAG, "watch", "--quiet", "--metrics", str(port), "--ready-file", str(ready),
                          "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_file(ready, p, "watch")
        ss = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in ss.strip().splitlines()] == [f"127.0.0.1:{port}"], ss
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200 and b"netdiag_build_info" in r.read()
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
    assert p.returncode == 0
    assert p.stdout.read() == "" and p.stderr.read() == ""         # --quiet prints nothing



# -- the bound with real churn ---------------------------------------------------------------------
CHURN = """
import socket, sys
ip, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for port in range(lo, hi):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((ip, port))
    except OSError:
        pass
    s.close()
"""


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scrape_families(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_fifty_thousand_destinations_stay_within_the_bound(doctor, tmp_path):
    """50,000 distinct destinations (refused connects from a lab namespace), --metrics-by dst,
    --metrics-max-series 200: every family of the endpoint stays at 200 series or fewer, what did
    not fit is counted as folded, and the endpoint adds a bounded amount of memory: a plain watch
    of the same namespace runs alongside, and the two processes' RSS differ by little however
    many destinations went by (the collector's own state follows --max-dsts in both)."""
    topo = Topology()
    procs = []
    try:
        cli, peer = topo.add_ns("mc"), topo.add_ns("mp")
        topo.link(cli, "198.18.63.1/24", peer, "198.18.63.2/24")
        port = free_port()
        common = ["watch", "--quiet", "--netns", cli, "--interval", "0.5"]
        for name, extra in (("metrics", ["--metrics", str(port), "--metrics-by", "dst", "--metrics-max-series",
                                         "200"]), ("plain", [])):
            ready = tmp_path / f"{name}.ready"
            procs.append(subprocess.Popen([*NETDIAG, *common, *extra, "--ready-file", str(ready)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            wait_file(ready, procs[-1], f"watch ({name})")
        m, plain = procs
        diffs = []
        for lo, hi in ((1, 10_001), (10_001, 30_001), (30_001, 50_001)):
            subprocess.run(["ip", "netns", "exec", cli, sys.executable, "-c", CHURN, "198.18.63.2", str(lo),
                            str(hi)], check=True, timeout=300)
            # two whole intervals after the connects: every row of the kernel map has been read
            n0 = scrape_families(port)["netdiag_intervals"][0].value
            assert until(lambda: scrape_families(port)["netdiag_intervals"][0].value >= n0 + 2, 120)
            fams = scrape_families(port)
            diffs.append((rss_kb(m.pid) - rss_kb(plain.pid)) / 1024)
            counts = {s.labels["family"]: s.value for s in fams["netdiag_metrics_series"]}
            assert max(counts.values()) <= 200, counts
            per_family = {name: len({tuple(sorted(s.labels.items())) for s in samples})
                          for name, samples in fams.items() if name.startswith("netdiag_") and
                          name not in ("netdiag_metrics_series", "netdiag_metrics_folded",
                                       "netdiag_connect_duration_seconds")}
            assert max(per_family.values()) <= 200, per_family
        connects = {s.labels["dst"]: s.value for s in fams["netdiag_connects"] if s.name == "netdiag_connects_total"}
        assert len(connects) == 200 and connects["other"] > 0
        folded = {s.labels["family"]: s.value for s in fams["netdiag_metrics_folded"]
                  if s.name == "netdiag_metrics_folded_total"}
        # every destination row the sink saw got a series (at most 199 new ones an interval, in room
        # or in place of a less troubled one) or was folded; rows the kernel's LRU map evicted
        # before a read were never seen
        intervals = fams["netdiag_intervals"][0].value
        evictions = fams["netdiag_map_evictions"][0].value
        assert folded["netdiag_connects"] + 199 * intervals + evictions >= 50_000
        assert folded["netdiag_connects"] > 0
        # 23 families of at most 200 series: a few MB; allow for the allocator's noise between
        # processes (one sample of the two processes' RSS can catch a transient peak: the median
        # of the samples is what the series cost)
        assert sorted(diffs)[len(diffs) // 2] < 30, diffs
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=60)
        topo.close()
    for p in procs:
        assert p.returncode == 0, p.stderr.read()
