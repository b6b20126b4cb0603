"""The kprobe SNAT path's rows (netdiag/sources/conntrack/kprobe.py) from raw nd_snat map entries."""
import socket

from netdiag.sources.conntrack import kprobe as K


def _entry(netns, nat, dst, port, in_use, allocs=0, rels=0, failed=0, setups=0, rng=None, proto=6):
    key = K.SNAT_KEY.pack(netns, socket.AF_INET, port, proto,
                          socket.inet_aton(nat).ljust(16, b"\0") if nat else b"\0" * 16,
                          socket.inet_aton(dst).ljust(16, b"\0"))
    flags, lo, hi = (K.NF_NAT_RANGE_PROTO_SPECIFIED, *rng) if rng else (0, 0, 0)
    return key, K.SNAT_VAL.pack(in_use, allocs, rels, failed, setups, flags, lo, hi)


def test_rows_from_two_reads():
    prev = K.decode([_entry(7, "198.19.1.1", "198.19.1.2", 8080, 4, allocs=4, setups=4, rng=(40000, 40009))])
    cur = K.decode([_entry(7, "198.19.1.1", "198.19.1.2", 8080, 10, allocs=10, failed=5, setups=15,
                           rng=(40000, 40009)),
                    _entry(7, None, "198.19.1.9", 80, 0, failed=2)])        # not source-NATed: left out
    (row,) = K.rows(cur, prev, [])
    assert row["dst"] == "198.19.1.2:8080" and row["nat_ip"] == "198.19.1.1" and row["proto"] == "tcp"
    assert (row["ports_in_use"], row["port_range"], row["utilization"]) == (10, 10, 1.0)
    assert (row["allocations"], row["insert_failed"], row["failed_allocations"]) == (6, 5, 5)
    assert row["range_source"] == "nf_nat_range2" and row["peak_in_use"] == 10


def test_range_falls_back_to_the_rule_and_released_rows_show_once():
    nl = [{"netns": 7, "nat_ip": "198.19.1.1", "dst": "198.19.1.2:8080", "proto": "tcp", "port_range": 28232,
           "range_source": "ip_local_port_range", "drop": 1, "rule": "ip nat POSTROUTING #3"}]
    prev = K.decode([_entry(7, "198.19.1.1", "198.19.1.2", 8080, 2, allocs=2)])
    cur = K.decode([_entry(7, "198.19.1.1", "198.19.1.2", 8080, 0, allocs=2, rels=2)])
    (row,) = K.rows(cur, prev, nl)
    assert (row["ports_in_use"], row["releases"], row["port_range"]) == (0, 2, 28232)
    assert row["range_source"] == "ip_local_port_range" and row["rule"] == "ip nat POSTROUTING #3"
    assert K.rows(cur, cur, nl) == []       # nothing in use, nothing happened: gone


def test_merge_replaces_netlink_rows_and_sets_modes():
    snap = {"modes": {"conntrack": "netlink", "snat": "netlink"}, "snat": [{"x": 1}], "netns": [{"netns": 7}]}
    out = K.merge_into_snapshot(snap, [{"y": 2}])
    assert out["snat"] == [{"y": 2}] and out["netns"] == [{"netns": 7}]
    assert out["modes"] == {"conntrack": "kprobe", "snat": "kprobe"}
