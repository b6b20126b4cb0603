"""The cgroup_skb DNS capture on the real kernel: what it attaches goes away with the process
that holds it, however that process ends, and it never drops or changes a packet."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from netdiag.errors import FeatureMissing
from netdiag.sources.dns.cgcapture import RingCapture, decode, netns_cookie

pytestmark = [pytest.mark.kernel]


def our_links() -> list[dict]:
    """bpf_links of netdiag's DNS programs, from bpftool (the kernel's own list)."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    ids = {p["id"] for p in progs if p.get("name", "").startswith("nd_dns_")}
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    return [lk for lk in links if lk.get("prog_id") in ids]


@pytest.fixture
def capture(doctor):
    try:
        c = RingCapture()
    except FeatureMissing as e:
        pytest.skip(f"DNS capture on cgroup_skb unavailable here: {e}")
    yield c
    c.close()


def test_sees_a_query_and_lets_it_through(capture):
    assert len(our_links()) == 2                               # egress and ingress
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.bind(("127.0.0.1", 0))
    cli.sendto(b"\x12\x34" + b"\x00" * 10, ("127.0.0.1", 53))   # a query (nobody listens on 53)
    cli.sendto(b"not dns", ("127.0.0.1", port))                  # not port 53: not captured, delivered
    srv.settimeout(5)
    assert srv.recvfrom(100)[0] == b"not dns"
    recs = [decode(r) for r in capture.records()]
    mine = [r for r in recs if r[3][9] == 17 and r[3][20 + 2:20 + 4] == b"\x00\x35"
            and r[3][20:22] == cli.getsockname()[1].to_bytes(2, "big")]
    assert len(mine) == 1
    ts, cookie, direction, pkt = mine[0]
    assert cookie == netns_cookie() and direction == 1 and pkt[28:] == b"\x12\x34" + b"\x00" * 10
    assert abs(ts / 1e9 - time.monotonic()) < 60
    assert capture.lost() == 0
    srv.close()
    cli.close()


def test_closing_and_killing_detach(doctor):
    try:
        RingCapture().close()
    except FeatureMissing as e:
        pytest.skip(f"DNS capture on cgroup_skb unavailable here: {e}")
    assert our_links() == []                                   # close() detached
    code = ("import sys, time; from netdiag.sources.dns.cgcapture import RingCapture; c = RingCapture();"
            "print('up', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        assert len(our_links()) == 2
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    deadline = time.monotonic() + 10
    while our_links() and time.monotonic() < deadline:          # the kernel frees them once the fds are gone
        time.sleep(0.1)
    assert our_links() == []
