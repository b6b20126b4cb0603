"""The lab scenarios: each builds its namespaces, runs the load through them, and names the
verdict it must produce. ``run(ctx)`` runs in a thread beside the watcher and returns when the
workload is over; everything it starts is ended and removed by the runner."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from netdiag.errors import EXIT_CONFIG, BadInput, NetdiagError
from netdiag.labs.natlab import SnatLab
from netdiag.labs.procs import LabProc, netdiag_argv, peer_argv
from netdiag.labs.topology import Topology, ns_exec

SERVER_PORT = 8080
CT_MAX_LO, CT_MAX_HI = 100, 1_000_000     # conntrack-full --max (0: the table's current size)
SERVER_READY_S = 90        # how long a lab waits for its load server to start


@dataclass
class Param:
    name: str
    type: type
    default: object
    help: str
    lo: float | None = None         # the smallest value the scenario can run with
    hi: float | None = None         # the largest
    lo_open: bool = False           # lo itself excluded (a float above 0)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value) -> None:
        """BadInput (one line, exit 65) unless ``value`` is in [lo, hi]."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.type is int:
            ok = float(value).is_integer()
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value <= self.hi
        if not ok:
            lo = "" if self.lo is None else (f"above {_num(self.lo)}" if self.lo_open else f"{_num(self.lo)}")
            rng = f"{lo} to {_num(self.hi)}" if self.hi is not None and not self.lo_open else (
                f"{lo}, at most {_num(self.hi)}" if self.hi is not None else f"at least {lo}")
            raise BadInput(f"{self.option} must be {rng}, not {value}")


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass
class Scenario:
    name: str
    verdict: str | None
    seed: str
    summary: str
    params: list = field(default_factory=list)
    interval: float = 0.5          # watch interval inside the lab
    tail_s: float = 2.0            # keep watching this long after the workload ends
    max_s: float = 90.0            # hard bound on the whole lab
    watch_client_only: bool = False
    per_process: bool = False      # watch --per-process (and, with accepts, --accepts) inside the lab
    accepts: bool = False

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def validate(self, params: dict, allow_host_sysctl: bool = False) -> dict:
        """The parameters to run with (defaults filled in), or BadInput before anything is built."""
        known = {p.name: p for p in self.params}
        for k in params:
            if k not in known:
                raise BadInput(f"lab {self.name}: unknown option --{k.replace('_', '-')}")
        full = {**self.defaults(), **{k: v for k, v in params.items() if v is not None}}
        for name, p in known.items():
            p.check(full[name])
        if self.name == "conntrack-full" and 0 < full["max"] < CT_MAX_LO:
            raise BadInput(f"--max must be 0 (the table's current size) or {CT_MAX_LO} to {CT_MAX_HI}, "
                           f"not {full['max']}")
        if self.name == "conntrack-full" and full.get("max") and not allow_host_sysctl:
            raise BadInput("--max changes the node-wide net.netfilter.nf_conntrack_max: add --allow-host-sysctl "
                           "(it is restored on exit)")
        return full


class Ctx:
    """What a running scenario shares with the runner."""

    def __init__(self, runner, params: dict, tmpdir: str):
        self.runner = runner
        self.p = params
        self.tmp = tmpdir
        self.stop = runner.stop_event
        self.load: dict = {}        # summaries of the load processes, by name
        self.notes: list = []

    def proc(self, ns, argv, name) -> LabProc:
        p = LabProc(ns, argv, name)
        self.runner.procs.append(p)
        return p

    def server(self, ns, bind, *extra, name="server") -> LabProc:
        ready = os.path.join(self.tmp, f"{name}.ready")
        p = self.proc(ns, netdiag_argv("load", "server", "--bind", bind, "--port", SERVER_PORT, "--json",
                                       "--duration", 600, "--ready-file", ready, *extra), name)
        self.wait_ready(p, ready)
        return p

    def wait_ready(self, p: LabProc, ready: str) -> None:
        """Until the load server wrote its ready file. A busy node (or an emulated one) starts
        Python slowly: the bound is generous, and the error says which way it ended."""
        deadline = time.monotonic() + SERVER_READY_S
        while not os.path.exists(ready):
            if not p.running():
                raise RuntimeError(f"load server failed: {' '.join(p.err[-3:]) or 'exited'}")
            if self.stop.is_set():
                raise RuntimeError("load server did not get ready: stopped")
            if time.monotonic() > deadline:
                raise RuntimeError(f"load server did not get ready: no ready file after {SERVER_READY_S} s")
            time.sleep(0.05)

    def client(self, ns, argv, name="client", timeout=120.0) -> dict:
        p = self.proc(ns, argv, name)
        p.wait(timeout, self.stop)
        s = p.last("summary") or {}
        if not s and not self.stop.is_set() and p.proc.returncode not in (0, None):
            self.notes.append(f"{name} exited {p.proc.returncode}: {' '.join(p.err[-2:])}")
        self.load[name] = s
        return s

    def sleep(self, s: float) -> None:
        self.stop.wait(s)


# -- topologies ----------------------------------------------------------------------------------
def pair(tag: str, net: int = 20):
    """client 198.18.<net>.2 -- veth -- 198.18.<net>.1 server (two namespaces)."""
    t = Topology(tag)
    try:
        t.client, t.server = t.add_ns("cli"), t.add_ns("srv")
        t.client_ip, t.server_ip = f"198.18.{net}.2", f"198.18.{net}.1"
        t.link(t.client, f"{t.client_ip}/24", t.server, f"{t.server_ip}/24")
    except Exception:
        t.close()
        raise
    return t


class _NatTopo:
    def __init__(self, lab: SnatLab):
        self.lab = lab
        self.client, self.nat, self.server = lab.client, lab.nat, lab.server
        self.client_ip, self.server_ip = lab.client_ip, lab.server_ip
        self.namespaces = lab.topo.namespaces

    def close(self):
        self.lab.close()


def nat3(tag: str, ports: int, port_lo: int = 40000, net: int = 1) -> _NatTopo:
    return _NatTopo(SnatLab(port_lo, port_lo + ports - 1, net=net, tag=tag))


# -- scenarios -------------------------------------------------------------------------------------
def build_snat(ctx, tag):
    return nat3(tag, ctx.p["ports"])


def run_cap(ctx, topo):
    n = ctx.p["ports"]
    ctx.server(topo.server, topo.server_ip)
    attempts = n + max(10, n)
    ctx.client(topo.client, netdiag_argv("load", "client", f"{topo.server_ip}:{SERVER_PORT}", "-n", attempts,
                                        "--timeout", 2, "--hold", 2.5, "--json"))


def build_ports(ctx, tag):
    t = pair(tag)
    n = ctx.p["ports"]
    lo = 40000
    ns_exec(t.client, "sysctl", "-qw", f"net.ipv4.ip_local_port_range={lo} {lo + n - 1}")
    return t


def run_ports(ctx, topo):
    n = ctx.p["ports"]
    ctx.server(topo.server, topo.server_ip)
    p = ctx.proc(topo.client, peer_argv("ports", topo.server_ip, SERVER_PORT, n + 5, 3.0), "client")
    p.wait(40, ctx.stop)
    ctx.load["client"] = p.last("summary") or {}


def build_pair(ctx, tag):
    return pair(tag)


def run_overflow(ctx, topo):
    b = ctx.p["backlog"]
    ctx.server(topo.server, topo.server_ip, "--backlog", b, "--accept-delay-ms", 100)
    ctx.client(topo.client, netdiag_argv("load", "client", f"{topo.server_ip}:{SERVER_PORT}", "-n", 40,
                                        "--rate", 20, "--timeout", 4, "--hold", 1, "--json"))


def build_idle(ctx, tag):
    t = nat3(tag, 1000)
    timeout = ctx.p["timeout"]
    # the NAT forgets established flows after `timeout` s and answers what it no longer knows with RST
    ns_exec(t.nat, "sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_timeout_established={timeout}")
    ns_exec(t.nat, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0")
    ns_exec(t.nat, "iptables", "-I", "FORWARD", "-p", "tcp", "-m", "conntrack", "--ctstate", "INVALID",
            "-j", "REJECT", "--reject-with", "tcp-reset")
    return t


def run_idle(ctx, topo):
    timeout = ctx.p["timeout"]
    step = max(0.25, round(timeout / 10, 2))
    count = int(math.ceil(2 * timeout / step)) + 1
    ctx.server(topo.server, topo.server_ip)
    p = ctx.proc(topo.client, peer_argv("ladder", topo.server_ip, SERVER_PORT, count, step), "client")
    p.wait(2 * timeout + count * 0.1 + 60, ctx.stop)     # a busy node starts Python slowly
    ctx.load["client"] = p.last("summary") or {}


def run_burst(ctx, topo):
    p = ctx.p
    ctx.server(topo.server, topo.server_ip, "--backlog", p["backlog"], "--accept-delay-ms", 1)
    ctx.client(topo.client, netdiag_argv("load", "client", f"{topo.server_ip}:{SERVER_PORT}",
                                        "-n", p["burst"] * p["bursts"], "--burst", p["burst"],
                                        "--burst-window-ms", p["window_ms"], "--burst-interval-ms", 1500,
                                        "--timeout", 8, "--hold", 1, "--json"))


def run_churn(ctx, topo):
    k = ctx.p["requests_per_conn"]
    ctx.server(topo.server, topo.server_ip, "--mode", "http")
    ctx.client(topo.client, netdiag_argv("load", "client", f"{topo.server_ip}:{SERVER_PORT}", "-n", 4,
                                        "--requests-per-conn", k, "--requests", 1_000_000, "--duration",
                                        ctx.p["seconds"], "--timeout", 2, "--json"))


def run_healthy(ctx, topo):
    ctx.server(topo.server, topo.server_ip, "--mode", "http")
    ctx.client(topo.client, netdiag_argv("load", "client", f"{topo.server_ip}:{SERVER_PORT}",
                                        "-n", ctx.p["clients"], "--requests-per-conn", 1000, "--requests", 60, "--idle-ms", 50,
                                        "--timeout", 2, "--json"))


PROXY_PORT = 8080
BACKEND_PORTS = (8080, 8081)
NGINX_CONF = """# generated by netdiag lab fanout
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # the client side as the gateway saw it
    keepalive_timeout 75s;
    keepalive_requests 100;
    upstream backends {{
{servers}{keepalive}    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backends;
{pooled}        }}
    }}
}}
"""


def nginx_conf(d: str, listen: str, backends: list, keepalive: int) -> str:
    """The proxy's configuration: upstream keep-alive (a pool of `keepalive` idle connections,
    HTTP/1.1 without `Connection: close`) only when keepalive > 0."""
    servers = "".join(f"        server {b};\n" for b in backends)
    pool = f"        keepalive {keepalive};\n" if keepalive > 0 else ""
    pooled = ("            proxy_http_version 1.1;\n"
              "            proxy_set_header Connection \"\";\n") if keepalive > 0 else ""
    return NGINX_CONF.format(d=d, servers=servers, keepalive=pool, listen=listen, pooled=pooled)


def nginx_binary() -> str:
    import shutil
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise NginxMissing("nginx not found: the fanout lab runs Debian's nginx (apt-get install nginx-light; "
                       "scripts/setup.sh installs it)")


class NginxMissing(NetdiagError):
    exit_code = EXIT_CONFIG


def build_fanout(ctx, tag):
    """client 198.18.40.2 -- 198.18.40.1 proxy 198.18.41.1 -- 198.18.41.2 backend."""
    nginx_binary()
    t = Topology(tag)
    try:
        t.client, t.proxy, t.server = t.add_ns("cli"), t.add_ns("proxy"), t.add_ns("srv")
        t.client_ip, t.proxy_ip = "198.18.40.2", "198.18.40.1"
        t.proxy_up_ip, t.server_ip = "198.18.41.1", "198.18.41.2"
        t.link(t.client, f"{t.client_ip}/24", t.proxy, f"{t.proxy_ip}/24")
        t.link(t.proxy, f"{t.proxy_up_ip}/24", t.server, f"{t.server_ip}/24")
    except Exception:
        t.close()
        raise
    return t


def start_nginx(ctx, ns, conf_text: str) -> LabProc:
    d = os.path.join(ctx.tmp, "nginx")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    nginx = nginx_binary()
    test = ns_exec(ns, nginx, "-t", "-q", "-p", d, "-c", conf, "-e", os.path.join(d, "error.log"), check=False)
    if test.returncode != 0:
        raise RuntimeError(f"nginx refused the lab's configuration: {test.stderr.strip()[-300:]}")
    p = ctx.proc(ns, [nginx, "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")], "nginx")
    pid = os.path.join(d, "nginx.pid")
    deadline = time.monotonic() + SERVER_READY_S
    while not os.path.exists(pid):
        if not p.running():
            raise RuntimeError(f"nginx exited: {' '.join(p.err[-3:])}")
        if time.monotonic() > deadline or ctx.stop.is_set():
            raise RuntimeError("nginx did not start")
        time.sleep(0.05)
    return p


def run_fanout(ctx, topo):
    p = ctx.p
    ports = ",".join(str(x) for x in BACKEND_PORTS)
    ready = os.path.join(ctx.tmp, "server.ready")
    srv = ctx.proc(topo.server, netdiag_argv("load", "server", "--bind", topo.server_ip, "--port", ports,
                                             "--mode", "http", "--json", "--duration", 600,
                                             "--ready-file", ready), "server")
    ctx.wait_ready(srv, ready)
    backends = [f"{topo.server_ip}:{x}" for x in BACKEND_PORTS]
    start_nginx(ctx, topo.proxy, nginx_conf(os.path.join(ctx.tmp, "nginx"), f"{topo.proxy_ip}:{PROXY_PORT}",
                                            backends, p["upstream_keepalive"]))
    k = p["requests_per_conn"]
    ctx.client(topo.client, netdiag_argv("load", "client", f"{topo.proxy_ip}:{PROXY_PORT}", "-n", p["clients"],
                                        "--requests-per-conn", k, "--requests", k, "--timeout", 5, "--json"))


def build_ct_full(ctx, tag):
    return nat3(tag, 60000, port_lo=2000)


def run_ct_full(ctx, topo):
    """Hold connections through the NAT until its conntrack table is full: the table's maximum
    is the node-wide net.netfilter.nf_conntrack_max (read-only inside a netns)."""
    mx = ctx.runner.conntrack_max()
    target = mx + max(50, mx // 20)
    ports = max(1, math.ceil(target / 25000))
    workers = max(1, math.ceil(target / 18000))
    ready = os.path.join(ctx.tmp, "server.ready")
    srv = ctx.proc(topo.server, netdiag_argv("load", "server", "--bind", topo.server_ip, "--port",
                                             f"{SERVER_PORT}-{SERVER_PORT + ports - 1}", "--workers", workers,
                                             "--json", "--duration", 600, "--ready-file", ready), "server")
    ctx.wait_ready(srv, ready)
    ctx.client(topo.client, netdiag_argv("load", "client", f"{topo.server_ip}:{SERVER_PORT}-{SERVER_PORT + ports - 1}",
                                        "-n", target, "--timeout", 2, "--hold", 3, "--json"),
               timeout=target / 500 + 60)


SCENARIOS = {s.name: s for s in [
    Scenario("snat-cap", "snat_port_exhaustion", "000 (AKS outbound cap), 001 (60k through a load balancer)",
             "client -> local NAT (MASQUERADE to N ports) -> server; more connections than ports",
             [Param("ports", int, 10, "size of the NAT's MASQUERADE port range (the cap)", 1, 25536)]),
    Scenario("remote-cap", "remote_connection_cap", "000 (AKS outbound cap seen from the pod)",
             "the snat-cap topology, but netdiag watches only the client namespace: the cap is beyond it",
             [Param("ports", int, 10, "size of the (unwatched) NAT's port range (the cap)", 1, 25536)],
             watch_client_only=True),
    Scenario("port-exhaustion", "local_port_exhaustion", "004 (ephemeral ports and the 5-tuple limit)",
             "the client's ip_local_port_range holds N ports; it opens N+5 connections to one server",
             [Param("ports", int, 8, "ports in the client's ip_local_port_range", 1, 25536)]),
    Scenario("listen-overflow", "listen_overflow", "003 (listen backlog and ListenOverflows)",
             "a server with a small accept queue accepting 10/s; clients connect at 20/s",
             [Param("backlog", int, 8, "the server's listen() backlog", 1, 4096)]),
    Scenario("idle-timeout", "idle_timeout_reset", "003 (NAT/NLB 350 s idle timeout), 002 (keep-alive)",
             "client -> NAT that forgets established flows after S s and answers them with RST -> server; "
             "connections opened one by one, then all send after idling",
             [Param("timeout", int, 5, "the NAT's established-flow timeout in seconds", 1, 30)], interval=0.5),
    Scenario("microburst", "connection_burst", "003 (microbursts, backlog sizing)",
             "bursts of N connects within W ms every 1.5 s against a listener with a small backlog",
             [Param("burst", int, 200, "connects per burst", 1, 5000),
              Param("window_ms", float, 20.0, "burst window (ms)", 0, 1000, lo_open=True),
              Param("backlog", int, 16, "the server's listen() backlog", 1, 4096),
              Param("bursts", int, 4, "number of bursts", 1, 20)],
             interval=0.1),
    Scenario("churn", "connection_churn", "002 (API gateway -> NLB -> nginx connection spikes)",
             "4 HTTP clients doing K requests per connection, then a new connection",
             [Param("requests_per_conn", int, 1, "HTTP requests per connection", 1, 10000),
              Param("seconds", float, 5.0, "how long the clients run", 0, 60, lo_open=True)]),
    Scenario("conntrack-full", "conntrack_table_full", "004 (conntrack_max for 1M connections), 003 (sizing)",
             "connections held through the NAT until its conntrack table is full",
             [Param("max", int, 0, "with --allow-host-sysctl: set net.netfilter.nf_conntrack_max to this "
                                   "for the run (restored on exit); 0 = fill the table at its current size",
                   0, CT_MAX_HI)],
             max_s=900.0),
    Scenario("fanout", "connection_fanout", "002 (API gateway -> nginx connection spikes)",
             "N keep-alive HTTP clients doing K requests each on one connection through a real nginx reverse "
             "proxy (client side keepalive_timeout 75s, keepalive_requests 100) to two backends; the upstream "
             "side without keep-alive: K backend connections per client connection",
             [Param("requests_per_conn", int, 10, "HTTP requests each client makes on its one connection "
                                                  "(at most 100, nginx's keepalive_requests)", 1, 100),
              Param("clients", int, 10, "client connections (one per client)", 1, 1000),
              Param("upstream_keepalive", int, 0, "nginx upstream keep-alive pool size (keepalive N, "
                                                  "HTTP/1.1); 0: none, a new connection per request", 0, 1000)],
             per_process=True, accepts=True),
    Scenario("healthy", None, "-",
             "20 keep-alive HTTP clients, plenty of ports, backlog and conntrack room: no verdict",
             [Param("clients", int, 20, "keep-alive clients", 1, 1000)]),
]}

BUILD = {"snat-cap": build_snat, "remote-cap": build_snat, "port-exhaustion": build_ports,
         "listen-overflow": build_pair, "idle-timeout": build_idle, "microburst": build_pair,
         "churn": build_pair, "conntrack-full": build_ct_full, "healthy": build_pair, "fanout": build_fanout}
RUN = {"snat-cap": run_cap, "remote-cap": run_cap, "port-exhaustion": run_ports, "listen-overflow": run_overflow,
       "idle-timeout": run_idle, "microburst": run_burst, "churn": run_churn, "conntrack-full": run_ct_full,
       "healthy": run_healthy, "fanout": run_fanout}
