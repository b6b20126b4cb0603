"""Per-domain and per-pod attribution on the real kernel: a dnslib DNS server in a server
namespace, clients in two (then three) client namespaces resolving and connecting, `Watcher`
and `DnsObserver` in this process doing what `watch --per-domain [--per-pod]` does per interval."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from netdiag.analysis.domains import annotate, rollup_domains, rollup_pods
from netdiag.labs.topology import Topology
from netdiag.sources.dns.observer import DnsObserver
from netdiag.sources.pods import PodMap

from .conftest import Peer, record_result

pytestmark = [pytest.mark.kernel, pytest.mark.heavy]   # DNS capture has no kprobe path: host lane
ROOT = Path(__file__).resolve().parents[2]
DNSPEER = ROOT / "tests" / "dnspeer.py"
SCHEMA = json.loads((ROOT / "docs" / "schema" / "watch-interval.schema.json").read_text())
API = ["198.18.7.1", "198.18.7.2"]


class DnsPeer(Peer):
    """dnspeer.py inside a namespace; ask() sends it one JSON command."""

    script = DNSPEER

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.line()


@pytest.fixture
def lab(doctor):
    with Topology() as t:
        t.srv = t.add_ns("dsrv")
        t.cli1 = t.add_ns("dcli1")
        t.cli2 = t.add_ns("dcli2")
        t.link(t.srv, "198.18.5.1/24", t.cli1, "198.18.5.2/24")
        t.link(t.srv, "198.18.6.1/24", t.cli2, "198.18.6.2/24")
        from netdiag.labs.topology import ns_exec
        for ip in API:
            ns_exec(t.srv, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
        ns_exec(t.cli1, "ip", "route", "add", "198.18.7.0/24", "via", "198.18.5.1")
        ns_exec(t.cli2, "ip", "route", "add", "198.18.7.0/24", "via", "198.18.6.1")
        server = DnsPeer(t.srv, "serve")
        peers = []
        try:
            assert server.line() == {"ready": True}
            t.c1 = DnsPeer(t.cli1, "client", "198.18.5.1")
            t.c2 = DnsPeer(t.cli2, "client", "198.18.6.1")
            peers += [t.c1, t.c2]
            t.peers = peers
            yield t
        finally:
            for p in peers:
                p.close()
            server.close()


# every capture path, with the same exact numbers: the socket calls' tracepoints and cgroup_skb
# programs (where the kernel allows them) and the packet-socket fallback
MODES = {"socket": "socket", "cgroup": "cgroup_skb", "packet": "packet"}


@pytest.fixture(params=list(MODES))
def observed(lab, request):
    from netdiag.errors import FeatureMissing
    from netdiag.pipeline.collector import Watcher
    if request.param != "packet":
        try:
            DnsObserver(capture=request.param).start().close()
        except FeatureMissing as e:
            pytest.skip(f"DNS capture on {MODES[request.param]} unavailable here: {e}")
    w = Watcher(conntrack=False)
    w.start()
    obs = DnsObserver(capture=request.param).start()
    assert obs.mode == MODES[request.param]
    if request.param != "packet":          # the probing start above left a program image
        assert obs.program == "cached", obs.cache_note
    try:
        obs.poll()
        assert {lab.inode(lab.cli1), lab.inode(lab.cli2), lab.inode(lab.srv)} <= set(obs.covered)
        yield w, obs
    finally:
        obs.close()
        w.close()


def interval(lab, w, obs, pods=None) -> dict:
    """One `watch --per-domain` interval, keeping only this lab's namespaces."""
    obs.poll()
    rec = w.sample()
    annotate(rec, obs, pods=pods or PodMap())
    mine = {lab.inode(n) for n in lab.namespaces}
    rec["destinations"] = [r for r in rec["destinations"] if r["netns"] in mine]
    for k in ("netns", "netns_domains"):
        rec["dns"][k] = [r for r in rec["dns"][k] if r["netns"] in mine]
    rec["dns"]["domains"] = [d for d in rec["dns"]["domains"] if d["domain"].endswith(".lab.test")]
    return rec


def test_per_domain_per_pod_and_late_namespace(lab, observed):
    w, obs = observed
    interval(lab, w, obs)                                 # whatever happened before: not ours
    c1, c2 = lab.c1, lab.c2
    # phase 1: cli1 resolves api over UDP, cli2 resolves alias over TCP; both connect to both addresses
    r = c1.ask(resolve="api.lab.test")
    assert sorted(r["addrs"]) == API
    r = c2.ask(resolve="alias.lab.test", tcp=True)
    assert sorted(r["addrs"]) == API and r["cnames"] == ["api.lab.test"]
    assert c1.ask(resolve="gone.lab.test")["rcode"] == "NXDOMAIN"
    assert c1.ask(connect=API[0], port=8080, n=3)["ok"] == 3
    assert c1.ask(connect=API[1], port=8080, n=2)["ok"] == 2
    assert c2.ask(connect=API[0], port=8080, n=5)["ok"] == 5
    assert c2.ask(connect=API[1], port=8080, n=4)["ok"] == 4
    rec1 = interval(lab, w, obs)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(rec1, SCHEMA)

    doms = {d["name"]: d for d in rollup_domains(rec1)}
    api = doms["api.lab.test"]
    assert api["connects"] == 14 and api["established"] == 14 and api["ips"] == 2
    record_result(f"per-domain/{obs.mode}", {"connects": api["connects"], "established": api["established"],
                                             "ips": api["ips"]})
    assert api["addrs"] == API and api["ports"] == [8080]
    assert api["chain"] == ["alias.lab.test", "api.lab.test"]                  # cli2's lookup went through the alias
    assert "alias.lab.test" not in doms
    assert api["dns"]["queries"] == 2 and api["dns"]["answers"] == 2          # api (cli1, UDP) + alias (cli2, TCP)
    assert api["dns"]["tcp"] >= 2                                              # the TCP query and its answer
    assert api["dns"]["latency_ms"]["p50"] is not None
    assert doms["gone.lab.test"]["dns"]["nxdomain"] == 1 and doms["gone.lab.test"]["connects"] == 0
    rows = [d for d in rec1["destinations"] if d["direction"] == "out" and d["dst"].endswith(":8080")]
    assert rows and all(d["domain"] == "api.lab.test" for d in rows)
    assert all(d["domain_chain"] == ["alias.lab.test", "api.lab.test"] for d in rows
               if d["netns"] == lab.inode(lab.cli2))

    # --per-pod (off Kubernetes: the ip-netns names), and both
    pods = {p["pod"]: p for p in rollup_pods(rec1)}
    assert pods[lab.cli1]["connects"] == 5
    assert pods[lab.cli2]["connects"] == 10                # 9 to api + the TCP connection of its DNS lookup
    assert pods[lab.cli1]["dns"]["nxdomain"] == 1 and pods[lab.cli2]["dns"]["tcp"] >= 2
    both = {(d["pod"], d["name"]): d for d in rollup_domains(rec1, per_pod=True)}
    assert both[(lab.cli1, "api.lab.test")]["connects"] == 5
    assert both[(lab.cli2, "api.lab.test")]["connects"] == 9
    assert both[(lab.cli2, "api.lab.test")]["dns"]["queries"] == 1             # the alias lookup, folded in
    assert both[(lab.cli1, "gone.lab.test")]["dns"]["nxdomain"] == 1

    # phase 2: cli1 resolves other (same address as api's first) and connects there
    assert c1.ask(resolve="other.lab.test")["addrs"] == [API[0]]
    assert c1.ask(connect=API[0], port=8080, n=7)["ok"] == 7
    assert c2.ask(connect=API[0], port=8080, n=1)["ok"] == 1                   # cli2 never resolved other
    rec2 = interval(lab, w, obs)
    doms2 = {d["name"]: d for d in rollup_domains(rec2)}
    assert doms2["other.lab.test"]["connects"] == 7 and doms2["other.lab.test"]["ips"] == 1
    assert doms2["api.lab.test"]["connects"] == 1
    assert doms2["api.lab.test"]["netns_names"] == [lab.cli2]

    # a namespace created after start is covered
    lab.cli3 = lab.add_ns("dcli3")
    lab.link(lab.srv, "198.18.8.1/24", lab.cli3, "198.18.8.2/24")
    from netdiag.labs.topology import ns_exec
    ns_exec(lab.cli3, "ip", "route", "add", "198.18.7.0/24", "via", "198.18.8.1")
    if obs.mode == "packet":
        obs.poll()                  # a packet socket is opened in it by the next rescan
        assert lab.inode(lab.cli3) in obs.covered
    # cgroup_skb: no rescan first; its first packet, from a cookie not known yet, makes one
    c3 = DnsPeer(lab.cli3, "client", "198.18.8.1")
    lab.peers.append(c3)
    assert sorted(c3.ask(resolve="api.lab.test")["addrs"]) == API
    assert c3.ask(connect=API[1], port=8080, n=3)["ok"] == 3
    rec3 = interval(lab, w, obs)
    assert lab.inode(lab.cli3) in obs.covered
    both3 = {(d["pod"], d["name"]): d for d in rollup_domains(rec3, per_pod=True)}
    assert both3[(lab.cli3, "api.lab.test")]["connects"] == 3
    assert both3[(lab.cli3, "api.lab.test")]["dns"]["answers"] == 1
    for rec in (rec1, rec2, rec3):
        assert rec["dns"]["lost"] == 0


CAP = 5
CAP_PORT = 9090


def test_connection_cap_verdict_names_its_domain(lab, tmp_path):
    """`watch --per-domain --per-pod`'s pipeline: a name answered by the lab's DNS server, a
    server namespace that drops SYNs beyond CAP concurrent connections to it (connlimit), and
    the remote_connection_cap verdict names that domain and the client's pod."""
    import subprocess
    import threading
    import time

    from netdiag.analysis.diagnose import Diagnoser
    from netdiag.labs.procs import netdiag_argv
    from netdiag.labs.topology import ns_exec
    from netdiag.pipeline.collector import Watcher
    from netdiag.pipeline.dnswatch import Enricher
    from netdiag.pipeline.run import Pipeline

    ns_exec(lab.srv, "iptables", "-A", "INPUT", "-p", "tcp", "--syn", "--dport", str(CAP_PORT), "-m", "connlimit",
            "--connlimit-above", str(CAP), "--connlimit-mask", "0", "-j", "DROP")
    ready = tmp_path / "server.ready"
    server = subprocess.Popen(["ip", "netns", "exec", lab.srv, *netdiag_argv(
        "load", "server", "--bind", API[0], "--port", CAP_PORT, "--json", "--duration", 120, "--ready-file", ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = None
    cli = lab.inode(lab.cli1)
    records = []

    class Keep:
        def open(self, info):
            pass

        def interval(self, rec):
            records.append(rec)

        def close(self, summary):
            pass

    pipe = Pipeline(Watcher(netns=cli, conntrack=False), Diagnoser(),
                    Enricher(per_domain=True, per_pod=True, netns=cli), sinks=[Keep()])
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() else ""
            time.sleep(0.05)
        pipe.start()
        pipe.step()                                          # whatever happened before: not ours
        assert sorted(lab.c1.ask(resolve="api.lab.test")["addrs"]) == API
        client = subprocess.Popen(["ip", "netns", "exec", lab.cli1, *netdiag_argv(
            "load", "client", f"{API[0]}:{CAP_PORT}", "-n", CAP + 10, "--timeout", 3, "--hold", 5, "--json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = threading.Event()
        tail = {}

        def over(now):
            if client.poll() is not None and "until" not in tail:
                tail["until"] = now + 1.0
            return "until" in tail and now >= tail["until"]
        pipe.run(0.5, stop, deadline=time.monotonic() + 40, until=over)
    finally:
        pipe.close()
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
    caps = [v for rec in records for v in rec["verdicts"] if v["kind"] == "remote_connection_cap"]
    assert caps, [[v["kind"] for v in rec["verdicts"]] for rec in records]
    v = caps[-1]
    assert v["dst"] == f"{API[0]}:{CAP_PORT}" and v["cap"] == CAP and v["netns"] == cli
    assert v["domain"] == "api.lab.test"
    assert v["pods"] == [lab.cli1]
    jsonschema = pytest.importorskip("jsonschema")
    for rec in records:
        jsonschema.validate(rec, SCHEMA)


# Two names, one address: api.lab.test and other.lab.test both answer 198.18.7.1.
SHARED = API[0]


@pytest.fixture(params=list(MODES))
def by_resolver(lab, request):
    """`watch --per-domain`'s collector (connects per process and destination) and one capture."""
    from netdiag.errors import FeatureMissing
    from netdiag.pipeline.collector import Watcher
    if request.param != "packet":
        try:
            DnsObserver(capture=request.param).start().close()
        except FeatureMissing as e:
            pytest.skip(f"DNS capture on {MODES[request.param]} unavailable here: {e}")
    w = Watcher(conntrack=False, proc_dsts=True)
    w.start()
    obs = DnsObserver(capture=request.param).start()
    try:
        obs.poll()
        yield w, obs, request.param
    finally:
        obs.close()
        w.close()


def test_names_sharing_an_address_count_for_who_resolved_them(lab, by_resolver):
    w, obs, mode = by_resolver
    interval(lab, w, obs)                                  # whatever happened before: not ours
    # two processes of one namespace: A resolves api, then B resolves other (the later lookup)
    a = lab.c1
    b = DnsPeer(lab.cli1, "client", "198.18.5.1")
    lab.peers.append(b)
    assert SHARED in a.ask(resolve="api.lab.test")["addrs"]
    assert b.ask(resolve="other.lab.test")["addrs"] == [SHARED]
    assert a.ask(connect=SHARED, port=8080, n=3)["ok"] == 3
    assert b.ask(connect=SHARED, port=8080, n=5)["ok"] == 5
    # two pods: cli2 resolves other (after cli1's lookups) and connects
    assert lab.c2.ask(resolve="other.lab.test")["addrs"] == [SHARED]
    assert lab.c2.ask(connect=SHARED, port=8080, n=4)["ok"] == 4
    rec = interval(lab, w, obs)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(rec, SCHEMA)
    cli1 = lab.inode(lab.cli1)
    (row1,) = [r for r in rec["destinations"] if r["netns"] == cli1 and r["dst"] == f"{SHARED}:8080"]
    assert row1["connects"] == 8
    assert sorted((p["connects"], p["established"]) for p in row1["by_process"]) == [(3, 3), (5, 5)]
    both = {(d["pod"], d["name"]): d for d in rollup_domains(rec, per_pod=True)}
    assert both[(lab.cli2, "other.lab.test")]["connects"] == 4       # pods: each its own lookups
    assert (lab.cli2, "api.lab.test") not in both or both[(lab.cli2, "api.lab.test")]["connects"] == 0
    doms = {d["name"]: d for d in rollup_domains(rec)}
    if mode == "socket":
        # the socket capture knows which process read each answer: 3 for api, 5 + 4 for other
        assert row1["domain_by"] == "process"
        assert {s["domain"]: s["connects"] for s in row1["domain_split"]} == {"api.lab.test": 3,
                                                                              "other.lab.test": 5}
        assert both[(lab.cli1, "api.lab.test")]["connects"] == 3
        assert both[(lab.cli1, "other.lab.test")]["connects"] == 5
        assert doms["api.lab.test"]["connects"] == 3 and doms["other.lab.test"]["connects"] == 9
    else:
        # packets say nothing of the process: the namespace's most recent lookup names them all
        assert row1["domain"] == "other.lab.test" and row1["domain_by"] == "pod" and "domain_split" not in row1
        assert doms["other.lab.test"]["connects"] == 12
    assert rec["dns"]["lost"] == 0
