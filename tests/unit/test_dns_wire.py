"""The port-53 cBPF filter, IP/UDP/TCP decoding and DNS message parsing, on crafted packets."""

import pytest

from netdiag.sources.dns import filter as bpf
from netdiag.sources.dns.wire import TCP, UDP, ParseCache, decode_ip, parse, tcp_messages

from .dnspkt import answer, ipv4, ipv6, query, tcp, tcp_framed, udp

PROG = bpf.dns_filter()


def run(pkt, proto=bpf.ETH_P_IP):
    return bpf.interpret(PROG, pkt, proto)


@pytest.mark.parametrize("sport,dport,l4,ok", [
    (40000, 53, "udp", True), (53, 40000, "udp", True), (40000, 53, "tcp", True), (53, 40000, "tcp", True),
    (40000, 80, "udp", False), (40000, 80, "tcp", False), (5353, 40000, "udp", False),
])
def test_filter_ipv4(sport, dport, l4, ok):
    seg = udp(sport, dport, b"x" * 20) if l4 == "udp" else tcp(sport, dport, b"")
    pkt = ipv4("198.18.5.2", "198.18.5.1", 17 if l4 == "udp" else 6, seg)
    assert (run(pkt) > 0) is ok
    if ok:
        assert run(pkt) == len(pkt)


def test_filter_ipv4_options_shift_the_ports():
    seg = udp(40000, 53, b"y" * 12)
    hdr = bytearray(ipv4("198.18.5.2", "198.18.5.1", 17, b""))
    hdr[0] = 0x46                                  # ihl 6: 4 bytes of options
    pkt = bytes(hdr) + b"\x01\x01\x01\x00" + seg
    assert run(pkt) > 0
    hdr[0] = 0x45
    assert run(bytes(hdr) + b"\x01\x01\x01\x00" + seg) == 0   # read at the wrong offset: no port 53


def test_filter_refuses_later_fragments_icmp_and_other_protocols():
    seg = udp(40000, 53, b"z")
    assert run(ipv4("198.18.5.2", "198.18.5.1", 17, seg, frag=0x0010)) == 0
    assert run(ipv4("198.18.5.2", "198.18.5.1", 17, seg, frag=0x2000)) > 0      # MF set, offset 0: first fragment
    assert run(ipv4("198.18.5.2", "198.18.5.1", 1, seg)) == 0
    assert run(ipv4("198.18.5.2", "198.18.5.1", 17, seg), proto=0x0806) == 0    # ARP


def test_filter_ipv6():
    assert run(ipv6("fd00::2", "fd00::1", 17, udp(40000, 53, b"q")), bpf.ETH_P_IPV6) > 0
    assert run(ipv6("fd00::1", "fd00::2", 6, tcp(53, 40000, b"")), bpf.ETH_P_IPV6) > 0
    assert run(ipv6("fd00::2", "fd00::1", 17, udp(40000, 443, b"q")), bpf.ETH_P_IPV6) == 0


def test_filter_bytes_are_what_is_attached():
    raw = bpf.packed(PROG)
    assert len(raw) == 8 * len(PROG)
    assert PROG[-2] == (bpf.RET_K, 0, 0, bpf.SNAPLEN) and PROG[-1] == (bpf.RET_K, 0, 0, 0)


def test_decode_udp_and_tcp():
    msg = query("api.lab.test")
    p = decode_ip(ipv4("198.18.5.2", "198.18.5.1", 17, udp(40001, 53, msg)))
    assert (p.proto, p.src, p.sport, p.dst, p.dport, p.payload) == (UDP, "198.18.5.2", 40001, "198.18.5.1", 53, msg)
    p = decode_ip(ipv6("fd00::1", "fd00::2", 6, tcp(53, 40002, tcp_framed(msg))))
    assert (p.proto, p.src, p.dport) == (TCP, "fd00::1", 40002)
    assert tcp_messages(p.payload) == ([msg], 0)
    assert decode_ip(b"") is None and decode_ip(b"\x45" + b"\0" * 10) is None


def test_tcp_messages_several_and_partial():
    a, b = query("a.lab.test", 1), query("b.lab.test", 2)
    assert tcp_messages(tcp_framed(a, b)) == ([a, b], 0)
    framed = tcp_framed(a, b)
    msgs, rest = tcp_messages(framed[:-5])           # the second message continues in the next segment
    assert msgs == [a] and rest == len(b) + 2 - 5
    assert tcp_messages(b"") == ([], 0)


def test_parse_answer_with_cname_chain():
    msg = answer("alias.lab.test", [("api.lab.test", "198.18.7.1"), ("api.lab.test", "198.18.7.2")],
                 cnames=[("alias.lab.test", "api.lab.test")], ttl=42)
    m = parse(msg)
    assert m.qr and m.rcode == "NOERROR" and m.qname == "alias.lab.test" and m.qtype == "A"
    assert m.addrs == [("api.lab.test", "198.18.7.1", 42), ("api.lab.test", "198.18.7.2", 42)]
    assert m.chain("api.lab.test") == ["alias.lab.test", "api.lab.test"]
    m2 = parse(answer("v6.lab.test", ["fd00::7"], qtype="AAAA"))
    assert m2.addrs == [("v6.lab.test", "fd00::7", 30)] and m2.chain("v6.lab.test") == ["v6.lab.test"]


def test_parse_nxdomain_and_garbage():
    m = parse(answer("gone.lab.test", rcode="NXDOMAIN"))
    assert m.rcode == "NXDOMAIN" and m.addrs == []
    assert parse(b"\x00\x01garbage") is None


def test_parse_cache_ignores_the_id():
    pc = ParseCache(size=2)
    m1 = pc.get(answer("api.lab.test", ["198.18.7.1"], qid=1))
    m2 = pc.get(answer("api.lab.test", ["198.18.7.1"], qid=2))
    assert m1 is m2 and (pc.hits, pc.misses) == (1, 1)
    pc.get(query("x.lab.test"))
    pc.get(query("y.lab.test"))
    assert len(pc._d) == 2
