"""The socket-call DNS capture (``--dns-capture socket``) on the real kernel: each way a client
can send a lookup and read its answer is seen once, in the client's namespace, by the
``sock_send_length`` / ``sock_recv_length`` tracepoints; what is not DNS is not."""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from netdiag.errors import FeatureMissing
from netdiag.labs.topology import Topology, ns_exec
from netdiag.sources.dns.observer import DnsObserver

from .test_per_domain import DNSPEER, DnsPeer

pytestmark = [pytest.mark.kernel]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["compiled", "cached"])
def observer(doctor, request, tmp_path, monkeypatch):
    """The capture compiled (leaving a program image), or loaded from that image."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NETDIAG_CACHE_DIR", str(cache))
    try:
        obs = DnsObserver(capture="socket", threaded=False).start()
    except FeatureMissing as e:
        pytest.skip(f"DNS capture on the socket calls unavailable here: {e}")
    assert obs.program == "compiled" and obs.cache_note is None
    images = list(cache.glob("*.json"))
    assert len(images) == 1 and stat.S_IMODE(images[0].stat().st_mode) == 0o600
    if request.param == "cached":
        obs.close()
        obs = DnsObserver(capture="socket", threaded=False).start()
        assert obs.program == "cached", obs.cache_note
    try:
        assert obs.mode == "socket"
        yield obs
    finally:
        obs.close()


def test_every_call_form_once_and_nothing_else(observer):
    with Topology() as t:
        srv, cli = t.add_ns("ssrv"), t.add_ns("scli")
        t.link(srv, "198.18.11.1/24", cli, "198.18.11.2/24")
        server = DnsPeer(srv, "serve")
        try:
            assert server.line() == {"ready": True}
            observer.poll()
            observer.snapshot()                      # whatever came before: not ours
            p = ns_exec(cli, sys.executable, str(DNSPEER), "forms", "198.18.11.1", timeout=30)
            got = json.loads(p.stdout)
            observer.poll()
            snap = observer.snapshot()
        finally:
            server.close()
        cli_ino, srv_ino = t.inode(cli), t.inode(srv)
    assert got == {"sendmmsg": 2, "recvmsg": [["198.18.7.1"], ["198.18.7.1", "198.18.7.2"]],
                   "peek_then_read": ["NXDOMAIN", "NXDOMAIN"], "tcp_writev_read": ["198.18.7.1", "198.18.7.2"]}
    mine = {r["domain"]: r for r in snap["netns_domains"] if r["netns"] == cli_ino}
    assert set(mine) == {"api.lab.test", "other.lab.test", "gone.lab.test", "alias.lab.test"}
    for name, r in mine.items():
        assert (r["queries"], r["answers"]) == (1, 1), name      # the peeked answer once, not twice
        assert r["latency_ms"]["p50"] is not None, name          # each answer matched to its query
    assert mine["gone.lab.test"]["nxdomain"] == 1
    assert mine["alias.lab.test"]["tcp"] == 2                    # query and answer, the answer read in two pieces
    assert mine["alias.lab.test"]["chain"] == ["alias.lab.test", "api.lab.test"]
    assert mine["api.lab.test"]["tcp"] == 0
    # the server's side of each lookup is not a lookup of its own
    assert not [r for r in snap["netns_domains"] if r["netns"] == srv_ino]
    assert observer.lookup(cli_ino, "198.18.7.2") == ["api.lab.test"]    # the alias's answer names its target
    assert snap["lost"] == 0 and snap["skipped"]["malformed"] == 0
