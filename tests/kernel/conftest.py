"""Kernel tier: real BPF on the running kernel, real namespaces. Skips (with its reason) only
when this machine cannot load BPF at all; scripts/test.sh fails the run if it skips anyway
while `netdiag doctor` says BPF works."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "tests" / "peers.py"
RESULTS_DIR = os.environ.get("ND_RESULTS_DIR")
READY_TIMEOUT = float(os.environ.get("ND_READY_TIMEOUT", "300"))   # BCC compiles for ~75 s under TCG


def doctor_report() -> dict:
    p = subprocess.run([sys.executable, "-m", "netdiag", "doctor", "--json"], capture_output=True, text=True)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"bpf_works": False, "error": p.stderr.strip()}


@pytest.fixture(scope="session", autouse=True)
def program_cache(tmp_path_factory):
    """Program images (netdiag/kernel/progcache.py) go to a directory of this run, which starts empty:
    the first start of each configuration compiles, a repeated one loads the image."""
    d = tmp_path_factory.mktemp("program-cache")
    old = os.environ.get("NETDIAG_CACHE_DIR")
    os.environ["NETDIAG_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("NETDIAG_CACHE_DIR", None)
    else:
        os.environ["NETDIAG_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def doctor():
    if os.geteuid() != 0:
        pytest.skip("kernel tier needs root (run `make test` as root)")
    rep = doctor_report()
    if not rep.get("bpf_works"):
        pytest.skip(f"BPF does not work here per `netdiag doctor`: {rep.get('error') or rep.get('checks')}")
    if RESULTS_DIR:
        Path(RESULTS_DIR, "doctor.json").write_text(json.dumps(rep, indent=2))
    return rep


def record_result(name: str, values: dict) -> None:
    """Results the VM lane's host side asserts on."""
    if not RESULTS_DIR:
        return
    path = Path(RESULTS_DIR, "results.json")
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = values
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


NETDIAG = (sys.executable, "-m", "netdiag")     # the checkout's editable install


class Tracer:
    """`netdiag trace --json` in the background; events collected by a reader thread.
    ``netdiag`` is the command to run (an installed form's entry point, say)."""

    def __init__(self, tmp: Path, *args: str, netdiag=NETDIAG, **popen):
        self.ready = tmp / "trace.ready"
        self.proc = subprocess.Popen([*netdiag, "trace", "--json", "--ready-file", str(self.ready), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip():
                with self.lock:
                    self.events.append(json.loads(line))

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"trace exited {self.proc.returncode}: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("trace did not attach in time")
            time.sleep(0.05)
        return json.loads(self.ready.read_text())

    def wait_for(self, pred, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = [e for e in self.events if pred(e)]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.02)

    def stop(self) -> dict:
        self.proc.send_signal(2)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        with self.lock:
            summaries = [e for e in self.events if e.get("type") == "summary"]
        return summaries[-1] if summaries else {}


class Watch:
    """`netdiag watch --json --interval 0.5` in the background, started and attached; its
    records collected by a reader thread."""

    def __init__(self, tmp: Path, *args, netdiag=NETDIAG, **popen):
        self.ready = tmp / "watch.ready"
        self.proc = subprocess.Popen([*netdiag, "watch", "--json", "--interval", "0.5",
                                      "--ready-file", str(self.ready), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        self.records: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited {self.proc.returncode}: {self.proc.stderr.read()}")
            assert time.monotonic() < deadline, "watch did not attach in time"
            time.sleep(0.05)
        self.info = json.loads(self.ready.read_text())

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.records.append(json.loads(line))

    def intervals(self):
        with self.lock:
            return [r for r in self.records if r["type"] == "interval"]

    def rows(self, netns, dst, direction):
        return [r for rec in self.intervals() for r in rec["destinations"]
                if r["netns"] == netns and r["dst"] == dst and r["direction"] == direction]

    def total(self, netns, dst, direction, field):
        return sum(r[field] for r in self.rows(netns, dst, direction))

    def until(self, pred, timeout=30.0):
        """Poll the records for a condition (bounded); returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v or time.monotonic() > deadline:
                return v
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            self.proc.wait(timeout=60)
        with self.lock:
            return self.records


class Peer:
    """A peer script (tests/peers.py unless told) inside a namespace; its JSON lines are read on
    demand; closing stdin ends it."""

    script = PEERS

    def __init__(self, ns: str, *args):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(self.script), *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def line(self) -> dict:
        out = self.proc.stdout.readline()
        if not out:
            raise AssertionError(f"peer exited: {self.proc.stderr.read()}")
        return json.loads(out)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def snat_lab(**kw):
    """A netdiag.labs.natlab.SnatLab with a 10-port MASQUERADE range (40000-40009), for a module
    fixture: yields it, removes it, and checks nothing of it is left. Skips where it cannot be
    built."""
    from netdiag.labs.natlab import SnatLab
    from netdiag.labs.topology import TopologyError, leftovers
    try:
        lab = SnatLab(40000, 40009, **kw)
    except TopologyError as e:
        pytest.skip(f"cannot build the SNAT lab here: {e}")
    try:
        yield lab
    finally:
        tag = lab.tag
        lab.close()
        assert not [n for n in leftovers() if tag in n], "lab namespaces left behind"



# -- leak scan ---------------------------------------------------------------------------------------
def _leak_check(what: str, before) -> None:
    from tests.kernel import leakscan
    own, node, foreign = leakscan.scan(before)
    if not (own or node):
        return
    if node and foreign and leakscan.mode() != "strict":
        import warnings
        warnings.warn(f"{what}: node-wide objects differ while other netdiag runs are active "
                      f"({'; '.join(foreign[:3])}), not counted as leaks: {'; '.join(node)}")
        node = []
    if own or node:
        pytest.fail(f"{what} left behind: " + "; ".join(own + node), pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def leak_scan_module(request):
    """Module fixtures (labs, peers) leave nothing behind either."""
    from tests.kernel import leakscan
    if leakscan.mode() == "off" or os.geteuid() != 0:
        yield
        return
    before = leakscan.Snapshot.take()
    yield
    _leak_check(f"module {request.module.__name__}", before)


@pytest.fixture(autouse=True)
def leak_scan(request):
    """After every kernel test: nothing it made is left (tests/kernel/leakscan.py says what is
    compared and what is left out on purpose)."""
    from tests.kernel import leakscan
    if leakscan.mode() == "off" or os.geteuid() != 0:
        yield
        return
    before = leakscan.Snapshot.take()
    yield
    _leak_check(request.node.nodeid, before)
