"""50,000 connections held on loopback by `netdiag load server`/`client`, with `watch --json`
attached the whole time: the summed `active` of their destinations is exactly 50,000 while they
are held and 0 once they are closed.

Two watches run side by side: one with the defaults, and one whose socket table has two slots and
whose LRU hash of sockets holds 65,536 (--max-socks), while every client worker runs on one CPU.
Nearly every socket then takes the hash, all of them inserted from that CPU: a hash whose LRU
lists were per CPU would give that CPU 65,536 / CPUs entries and evict held sockets' entries,
and `active` would not return to 0."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from .conftest import NETDIAG, Watch

pytestmark = [pytest.mark.kernel, pytest.mark.heavy]

N = 50_000
WORKERS = 3                     # about 17,000 open files each, under a 20,000 RLIMIT_NOFILE
SOURCES = "127.3.0.1-127.3.0.4"  # 4 sources × 4 ports: 3,125 connections per (source, destination)


def free_ports(n: int) -> list[int]:
    """n ports on 127.0.0.1 nothing listens on now (the kernel picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def summed(watch: Watch, netns: int, dsts: set) -> list[int]:
    """Per interval record, the summed `active` of the outbound rows towards dsts."""
    return [sum(r["active"] for r in rec["destinations"]
                if r["direction"] == "out" and r["netns"] == netns and r["dst"] in dsts)
            for rec in watch.intervals()]


def totals(watch: Watch, netns: int, dsts: set, field: str) -> int:
    return sum(r[field] for rec in watch.intervals() for r in rec["destinations"]
               if r["direction"] == "out" and r["netns"] == netns and r["dst"] in dsts)


@pytest.fixture
def server(tmp_path):
    ports = free_ports(4)
    ready = tmp_path / "server.ready"
    proc = subprocess.Popen([*NETDIAG, "load", "server", "--port", ",".join(map(str, ports)),
                             "--workers", str(WORKERS), "--json", "--duration", "600",
                             "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):            # at most 60 s
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), f"load server did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield ports
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_50000_held_active_exact_then_0(doctor, server, tmp_path):
    ports = server
    netns = os.stat("/proc/self/ns/net").st_ino
    dsts = {f"127.0.0.1:{p}" for p in ports}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # --max-dsts: room for the destinations other traffic on the node makes meanwhile (tests of
    # 50,000 destinations), so these rows are not pushed out; --dst: only these rows in the records
    common = ("--max-dsts", "262144", "--dst", "127.0.0.1/32")
    watches = {"default": Watch(tmp_path / "a", *common),
               "spill": Watch(tmp_path / "b", *common, "--socket-slots", "2", "--max-socks", "65536")}
    client = None
    try:
        # every client worker on one CPU (the affinity is inherited by the workers it forks)
        cpu = min(os.sched_getaffinity(0))
        client = subprocess.Popen([*NETDIAG, "load", "client", "127.0.0.1", "--port", ",".join(map(str, ports)),
                                   "-n", str(N), "--hold", "120", "--source-ips", SOURCES,
                                   "--workers", str(WORKERS), "--timeout", "30", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        for name, w in watches.items():
            w.until(lambda w=w: N in summed(w, netns, dsts) or client.poll() is not None, timeout=90)
            assert N in summed(w, netns, dsts), \
                f"{name}: active never reached {N} (largest {max(summed(w, netns, dsts), default=0)})"
        client.send_signal(signal.SIGINT)       # closes every held connection and reports
        out, err = client.communicate(timeout=300)   # closing 50,000 on one shared CPU
        summary = json.loads(out)
        assert summary["established"] == N and summary["failed"] == 0, summary
        assert summary["peak_concurrent"] == N
        for name, w in watches.items():
            w.until(lambda w=w: summed(w, netns, dsts)[-1:] == [0], timeout=60)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate()
        records = {name: w.stop() for name, w in watches.items()}
    for name, w in watches.items():
        series = summed(w, netns, dsts)
        assert max(series) == N, f"{name}: largest summed active {max(series)}, held {N}"
        assert series[-1] == 0, f"{name}: active {series[-1]} after every connection closed"
    for name, w in watches.items():
        errnos = [r["failed_by_errno"] for rec in w.intervals() for r in rec["destinations"]
                  if r["direction"] == "out" and r["dst"] in dsts and r["failed"]]
        assert totals(w, netns, dsts, "failed") == 0, (name, errnos)
        assert totals(w, netns, dsts, "connects") == N, name
        assert totals(w, netns, dsts, "established") == N, name
        # No row of theirs was evicted: an evicted row loses what it counted, and connects,
        # established and active are exact above. (`evictions` is node-wide: other traffic on a
        # shared node, a sweep of 50,000 ports say, can push its own rows out meanwhile.) No
        # socket entry was either: the socket hash never reached its bound.
        ivs = w.intervals()
        assert max(rec["socket_map_entries"] for rec in ivs) < ivs[-1]["socket_map_max"], name
        assert any(rec["type"] == "summary" for rec in records[name]), name
    # the spill watch kept (nearly) every socket in its hash, inserted from one CPU
    spill = watches["spill"].intervals()
    assert spill[-1]["socket_map_max"] == 65_536
    assert max(rec["socket_map_entries"] for rec in spill) >= N - 2

