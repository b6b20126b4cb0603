"""The socket-call DNS capture without a kernel: its records, how the observer reads them (TCP
byte streams reassembled across reads, unconnected reads kept only as answers to a query seen),
and where it refuses to run."""
from __future__ import annotations

import socket

import pytest

from netdiag.errors import FeatureMissing
from netdiag.kernel import dnsprog
from netdiag.sources.dns.cgcapture import REC_HDR, decode
from netdiag.sources.dns.observer import DnsObserver
from netdiag.sources.dns.sockcapture import DIR_RECV, DIR_SEND, PEER_GUESSED, SK_HDR, decode_sock

from .dnspkt import answer, query, tcp_framed
from .test_dns_observer import cap

NS = 2001
C, S = "198.18.5.2", "198.18.5.1"


def rec(direction, payload, proto=17, lport=40000, laddr=C, raddr=S, flags=0, family=socket.AF_INET,
        ts_ns=1, cookie=77, room=0, pid=4242):
    la, ra = socket.inet_pton(family, laddr), socket.inet_pton(family, raddr)
    sk = SK_HDR.pack(family, proto, lport, 53, flags, la.ljust(16, b"\0"), ra.ljust(16, b"\0"), pid)
    return REC_HDR.pack(ts_ns, cookie, len(payload), direction) + sk + payload + b"\xee" * room


def test_decode_takes_the_payload_length_after_the_socket_block():
    q = query("api.lab.test", 7)
    ts, cookie, direction, data = decode(rec(DIR_SEND, q, room=300))     # a fixed-size record's slack
    assert (ts, cookie, direction) == (1, 77, DIR_SEND)
    r = decode_sock(data)
    assert (r.proto, r.laddr, r.lport, r.raddr, r.rport, r.guessed, r.pid) == (17, C, 40000, S, 53, False, 4242)
    assert r.payload == q


def test_decode_ipv6_and_refusals():
    _, _, _, data = decode(rec(DIR_RECV, b"x" * 12, family=socket.AF_INET6, laddr="fd00::2", raddr="fd00::1",
                               flags=PEER_GUESSED))
    r = decode_sock(data)
    assert (r.laddr, r.raddr, r.guessed) == ("fd00::2", "fd00::1", True)
    assert decode_sock(b"short") is None
    bad = bytearray(rec(DIR_SEND, b"x" * 12))
    bad[REC_HDR.size] = 99                                       # not AF_INET / AF_INET6
    assert decode_sock(decode(bytes(bad))[3]) is None


@pytest.fixture
def obs():
    o = DnsObserver(threaded=False)
    o._caps = {NS: cap(NS, [])}
    return o


def feed(o, direction, payload, ts, **kw):
    _, _, d, data = decode(rec(direction, payload, **kw))
    o._handle_sock(o._caps[NS], d, data, ts)


def test_udp_lookup_counted_with_latency(obs):
    feed(obs, DIR_SEND, query("api.lab.test", 5), 10.0)
    feed(obs, DIR_RECV, answer("api.lab.test", ["198.18.7.1"], 5), 10.003)
    st = obs.snapshot()["netns_domains"][0]
    assert (st["domain"], st["queries"], st["answers"], st["packets"]) == ("api.lab.test", 1, 1, 2)
    assert st["latency_ms"]["p50"] == pytest.approx(3.0, abs=0.01)
    assert obs.lookup(NS, "198.18.7.1") == ["api.lab.test"]


def test_tcp_stream_reassembled_across_reads(obs):
    q = tcp_framed(query("alias.lab.test", 9))
    feed(obs, DIR_SEND, q, 1.0, proto=6)
    a = tcp_framed(answer("alias.lab.test", [("api.lab.test", "198.18.7.2")], 9, cnames=[("alias.lab.test", "api.lab.test")]))
    feed(obs, DIR_RECV, a[:2], 1.01, proto=6)                   # the length prefix alone
    feed(obs, DIR_RECV, a[2:20], 1.02, proto=6)                 # then the message in two pieces
    assert not any(st.answers for st in obs._stats.values())    # nothing whole yet
    feed(obs, DIR_RECV, a[20:], 1.03, proto=6)
    snap = obs.snapshot()
    st = snap["netns_domains"][0]
    assert (st["domain"], st["queries"], st["answers"], st["tcp"]) == ("alias.lab.test", 1, 1, 2)
    assert st["latency_ms"]["p50"] == pytest.approx(30.0, abs=0.01)
    assert st["chain"] == ["alias.lab.test", "api.lab.test"]
    assert snap["skipped"]["tcp_partial"] == 0 and not obs._streams


def test_two_messages_in_one_read_and_a_partial_one(obs):
    two = tcp_framed(answer("a.lab.test", ["198.18.7.3"], 1), answer("b.lab.test", ["198.18.7.4"], 2))
    feed(obs, DIR_RECV, two + b"\x00\x30\x01", 1.0, proto=6)    # and the start of a third
    names = {r["domain"]: r["answers"] for r in obs.snapshot()["netns_domains"]}
    assert names == {"a.lab.test": 1, "b.lab.test": 1}
    assert len(obs._streams) == 1                               # the third waits for its bytes


def test_unconnected_read_counts_only_as_the_answer_to_a_query_seen(obs):
    # a read on an unconnected UDP socket: its source is a guess (where its last query went)
    feed(obs, DIR_RECV, answer("x.lab.test", ["198.18.7.9"], 3), 1.0, flags=PEER_GUESSED)
    snap = obs.snapshot()
    assert snap["netns_domains"] == [] and snap["skipped"]["unmatched"] == 1
    assert obs.lookup(NS, "198.18.7.9") == []
    feed(obs, DIR_SEND, query("x.lab.test", 4), 2.0)
    feed(obs, DIR_RECV, answer("x.lab.test", ["198.18.7.9"], 4), 2.001, flags=PEER_GUESSED)
    st = obs.snapshot()["netns_domains"][0]
    assert (st["queries"], st["answers"]) == (1, 1)
    assert obs.lookup(NS, "198.18.7.9") == ["x.lab.test"]


def test_cflags_name_offsets_and_syscalls(monkeypatch):
    class FakeBtf:
        def offset(self, struct_name, path):
            return 100 + len(path)

        def member_size(self, struct_name, path):
            return {"sk_protocol": 2, "net_cookie": 8}[path]

        def find(self, kind, name):
            return 1

    monkeypatch.setattr(dnsprog.os.path, "isdir", lambda p: True)
    flags = dnsprog.sock_cflags("x86_64", FakeBtf())
    assert "-DND_DNS_SOCK" in flags and "-DND_NR_SENDMMSG=307" in flags
    assert f"-DND_OFF_REGS_NR={100 + len('orig_ax')}" in flags
    assert any(f.startswith("-DND_OFF_NET_COOKIE=") for f in flags)
    with pytest.raises(FeatureMissing, match="aarch64"):
        dnsprog.sock_cflags("aarch64", FakeBtf())
    monkeypatch.setattr(dnsprog.os.path, "isdir", lambda p: False)
    with pytest.raises(FeatureMissing, match="sock:sock_send_length"):
        dnsprog.sock_cflags("x86_64", FakeBtf())


def test_cflags_refuse_a_kernel_without_the_fields(monkeypatch):
    class OldBtf:
        def offset(self, struct_name, path):
            if struct_name == "pt_regs":
                raise KeyError("pt_regs.orig_ax")
            return 8

        def member_size(self, struct_name, path):
            return {"sk_protocol": 2, "net_cookie": 8}[path]

        def find(self, kind, name):
            return 1

    monkeypatch.setattr(dnsprog.os.path, "isdir", lambda p: True)
    with pytest.raises(FeatureMissing, match="pt_regs.orig_ax"):
        dnsprog.sock_cflags("x86_64", OldBtf())
