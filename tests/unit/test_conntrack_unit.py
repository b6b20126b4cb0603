"""Conntrack/SNAT logic without root: decoding, tuple -> row, deltas, fill, nft ranges, attribution."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from netdiag.sources.conntrack import ctmsg, natrules, snat, stats
from netdiag.sources.conntrack.ctmsg import CtRecord, Tuple

DATA = Path(__file__).resolve().parents[1] / "data" / "conntrack"


def _split(blob: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(blob):
        n = struct.unpack_from("=I", blob, off)[0]
        out.append(blob[off:off + n])
        off += (n + 3) & ~3
    return out


@pytest.fixture(scope="module")
def captured():
    return _split((DATA / "ctnetlink_events_lab.bin").read_bytes())


def rec(kind, sport, nat_port, ct_id, src="198.18.1.2", dst="198.19.1.2", dport=8080, nat_ip="198.19.1.1"):
    return CtRecord(kind, ct_id, Tuple(src, dst, 6, sport, dport), Tuple(dst, nat_ip, 6, dport, nat_port), 0, 0)


# --- decoding -------------------------------------------------------------------------------------

def test_fast_decoder_matches_pyroute2(captured):
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
    assert len(captured) == 16
    kinds = []
    for raw in captured:
        fast = ctmsg.decode_fast(raw)
        assert len(fast) == 1
        m = nfct_msg(raw)
        m.decode()
        ref = ctmsg.from_pyroute2(m, fast[0].kind)
        assert fast[0] == ref
        kinds.append(fast[0].kind)
    # captured from `conntrack -F` of 10 TIME_WAIT entries, then one connect refused by the server
    assert kinds.count("destroy") == 13 and kinds.count("new") == 3


def test_captured_events_are_snat_to_the_lab_range(captured):
    for r in ctmsg.decode_fast(b"".join(captured)):
        nat_ip, dst_ip, dst_port, proto, port = ctmsg.snat_of(r)
        assert (nat_ip, dst_ip, dst_port, proto) == ("198.19.1.1", "198.19.1.2", 8080, "tcp")
        assert 40000 <= port <= 40009


def test_snat_of_tuple_rules():
    assert ctmsg.snat_of(rec("new", 5555, 40001, 1)) == ("198.19.1.1", "198.19.1.2", 8080, "tcp", 40001)
    # reply comes back to the original source and port: not source-NATed
    plain = CtRecord("new", 2, Tuple("10.0.0.1", "10.0.0.2", 6, 5555, 80), Tuple("10.0.0.2", "10.0.0.1", 6, 80, 5555), 0, 0)
    assert ctmsg.snat_of(plain) is None
    # port kept, address changed: SNATed (MASQUERADE without --to-ports)
    ip_only = CtRecord("new", 3, Tuple("10.0.0.1", "1.2.3.4", 6, 5555, 443), Tuple("1.2.3.4", "192.0.2.1", 6, 443, 5555), 0, 0)
    assert ctmsg.snat_of(ip_only) == ("192.0.2.1", "1.2.3.4", 443, "tcp", 5555)
    # DNAT only (a ClusterIP to a pod): the reply comes from the pod, back to the client unchanged
    dnat = CtRecord("new", 4, Tuple("10.0.0.1", "10.96.0.10", 6, 5555, 53), Tuple("10.244.1.7", "10.0.0.1", 6, 53, 5555), 0, 0)
    assert ctmsg.snat_of(dnat) is None
    # DNAT + SNAT: the destination reported is the real peer (the pod), not the VIP
    both = CtRecord("new", 5, Tuple("10.0.0.1", "10.96.0.10", 6, 5555, 53), Tuple("10.244.1.7", "10.244.0.1", 6, 53, 61000), 0, 0)
    assert ctmsg.snat_of(both) == ("10.244.0.1", "10.244.1.7", 53, "tcp", 61000)


# --- table ---------------------------------------------------------------------------------------

def test_table_counts_allocations_releases_and_peak():
    t = snat.SnatTable()
    t.seed(7, [rec("entry", 1000, 40000, 1)])                 # existed before start: in use, not allocated
    for i in range(1, 10):
        t.apply(7, rec("new", 1000 + i, 40000 + i, 1 + i))
    t.apply(7, rec("new", 1001, 40001, 2))                     # duplicate (event raced the dump): ignored
    t.apply(7, rec("destroy", 1002, 40002, 3))
    t.apply(7, rec("destroy", 9999, 40099, 99))                # never seen: ignored
    rows = t.take_interval()
    key = (7, "198.19.1.1", "198.19.1.2", 8080, "tcp")
    assert list(rows) == [key]
    r = rows[key]
    assert (r.in_use, r.peak, r.allocations, r.releases) == (9, 10, 9, 1)
    rows = t.take_interval()                                  # counters restart, gauge stays
    assert (rows[key].in_use, rows[key].peak, rows[key].allocations, rows[key].releases) == (9, 9, 0, 0)


def test_rows_split_by_destination_port_and_namespace():
    t = snat.SnatTable()
    t.apply(1, rec("new", 1, 40000, 1, dport=8080))
    t.apply(1, rec("new", 2, 40000, 2, dport=8081))           # same NAT port, other destination: allowed
    t.apply(2, rec("new", 1, 40000, 1, dport=8080))           # same id in another namespace
    assert len(t.take_interval()) == 3


def test_idle_rows_disappear_after_being_reported():
    t = snat.SnatTable()
    t.apply(1, rec("new", 1, 40000, 1))
    t.apply(1, rec("destroy", 1, 40000, 1))
    first = t.take_interval()
    assert [(r.in_use, r.allocations, r.releases) for r in first.values()] == [(0, 1, 1)]
    assert t.take_interval() == {}


def test_reset_netns_forgets_entries():
    t = snat.SnatTable()
    t.apply(1, rec("new", 1, 40000, 1))
    t.reset_netns(1)
    t.apply(1, rec("destroy", 1, 40000, 1))
    assert t.take_interval() == {}


# --- stats ----------------------------------------------------------------------------------------

def test_cpu_sum_and_deltas():
    msgs = [{"attrs": [("CTA_STATS_INSERT_FAILED", 9), ("CTA_STATS_DROP", 9), ("CTA_STATS_CHAIN_TOOLONG", 1)]},
            {"attrs": [("CTA_STATS_INSERT_FAILED", 6), ("CTA_STATS_DROP", 6), ("CTA_STATS_EARLY_DROP", 2)]}]
    total = stats.sum_cpu_stats(stats.from_pyroute2_cpu(msgs))
    assert (total["insert_failed"], total["drop"], total["early_drop"], total["chaintoolong"]) == (15, 15, 2, 1)
    assert total["clash_resolve"] == 0
    assert stats.deltas(None, total)["insert_failed"] == 0
    later = dict(total, insert_failed=20)
    assert stats.deltas(total, later)["insert_failed"] == 5
    assert stats.deltas(later, dict(later, insert_failed=3))["insert_failed"] == 3   # counter reset


def test_fill_warning_at_80_percent():
    assert stats.fill(209715, 262144) == {"fill": 0.8, "fill_warning": False}
    assert stats.fill(209716, 262144)["fill_warning"] is True
    assert stats.fill(10, None) == {"fill": None, "fill_warning": False}


# --- rules ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab_rules():
    doc = json.loads((DATA / "nft_lab_ruleset.json").read_text())
    rules = natrules.parse_nft_ruleset(doc)
    xt = {}
    for t in json.loads((DATA / "nft_lab_xt_targets.json").read_text()):
        fam = natrules.NFPROTO[t["family"]]
        blob = bytes.fromhex(t["info"].replace(":", ""))
        xt[(fam, t["table"], t["chain"], t["handle"])] = natrules.decode_xt_nat(t["name"], t["rev"], blob, fam)
    return natrules.apply_xt(rules, xt)


def test_nft_ruleset_ranges(lab_rules):
    # captured from the lab: 3 iptables-nft rules (see iptables_lab_nat.txt) and 2 native nft rules
    got = [(r.table, r.handle, r.kind, r.proto, r.oifname, r.port_range, r.range_source, r.xt) for r in lab_rules]
    assert got == [
        ("nat", 2, "masquerade", "tcp", "ndxa2", 10, "rule", True),       # --to-ports 40000-40009
        ("nat", 3, "snat", "udp", "ndxa2", 100, "rule", True),            # --to-source 198.19.1.1:43000-43099
        ("nat", 4, "masquerade", "icmp", "ndxa2", 64512, "default", True),
        ("t2", 2, "masquerade", "tcp", "ndxa2", 20, "rule", False),       # masquerade to :41000-41019
        ("t2", 3, "snat", "udp", "ndxa2", 10, "rule", False),             # snat to 198.19.1.1:42000-42009
    ]
    assert (lab_rules[1].addr_min, lab_rules[1].addr_max) == ("198.19.1.1", "198.19.1.1")
    assert lab_rules[3].daddr == "198.19.1.0/24"


def test_xt_rule_without_netlink_info_is_unknown():
    rules = natrules.parse_nft_ruleset((DATA / "nft_lab_ruleset.json").read_text())
    xt = [r for r in rules if r.xt]
    assert xt and all(r.port_range is None and r.range_source == "unknown" for r in xt)


def test_native_rule_without_port_uses_kernel_default():
    doc = {"nftables": [{"rule": {"family": "ip", "table": "nat", "chain": "post", "handle": 5,
                                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
                                           {"masquerade": None}]}}]}
    (r,) = natrules.parse_nft_ruleset(doc)
    assert (r.kind, r.proto, r.port_min, r.port_max, r.port_range, r.range_source) == \
        ("masquerade", None, 1024, 65535, 64512, "default")


def test_match_rule_picks_the_rule_that_translated(lab_rules):
    addrs = {"ndxa2": {"198.19.1.1"}, "ndxb1": {"198.18.1.1"}}
    r = natrules.match_rule(lab_rules, "198.19.1.1", "198.19.1.2", "tcp", addrs)
    assert (r.table, r.handle) == ("nat", 2)
    r = natrules.match_rule(lab_rules, "198.19.1.1", "198.19.1.2", "udp", addrs)
    assert (r.table, r.handle) == ("nat", 3)
    assert natrules.match_rule(lab_rules, "198.18.1.1", "198.19.1.2", "tcp", addrs) is None   # wrong interface
    assert natrules.match_rule(lab_rules, "198.19.1.1", "198.19.1.2", "sctp", addrs) is None


def test_decode_xt_nat_revisions():
    compat = bytes.fromhex("01000000020000000000000000000000" "9c409c49" "00000000")
    assert natrules.decode_xt_nat("MASQUERADE", 0, compat)["port_min"] == 40000
    rng2 = struct.pack("=I16s16s", 3, bytes([192, 0, 2, 1]) + bytes(12), bytes([192, 0, 2, 4]) + bytes(12)) \
        + struct.pack("!HHH", 1000, 1999, 0) + bytes(2)
    d = natrules.decode_xt_nat("SNAT", 2, rng2)
    assert (d["addr_min"], d["addr_max"], d["port_min"], d["port_max"]) == ("192.0.2.1", "192.0.2.4", 1000, 1999)
    with pytest.raises(ValueError):
        natrules.decode_xt_nat("SNAT", 2, b"\0" * 8)


# --- attribution -----------------------------------------------------------------------------------

def _row(dst, peak, prange):
    return {"dst": dst, "peak_in_use": peak, "port_range": prange}


def test_failures_go_to_the_only_saturated_destination():
    rows = [_row("a", 10, 10), _row("b", 3, 10)]
    row, why = snat.attribute_failures(rows, 40, 40)
    assert row["dst"] == "a" and why == "only saturated destination"


def test_failures_stay_with_the_namespace_when_not_shown():
    assert snat.attribute_failures([_row("a", 10, 10), _row("b", 10, 10)], 5, 5)[0] is None
    assert snat.attribute_failures([_row("a", 3, 10)], 5, 5)[0] is None
    assert snat.attribute_failures([_row("a", 64, None)], 5, 5)[0] is None      # range unknown
    assert snat.attribute_failures([_row("a", 10, 10)], 0, 0) == (None, "none")


def test_utilization():
    assert snat.utilization(10, 10) == 1.0
    assert snat.utilization(3, None) is None


# --- namespaces ------------------------------------------------------------------------------------

def test_namespace_discovery_dedupes_and_diffs(tmp_path):
    from netdiag.sources import namespaces
    run, proc = tmp_path / "run", tmp_path / "proc"
    run.mkdir()
    (run / "nd-a").write_text("")
    for pid, target in ((10, run / "nd-a"), (11, None), (12, None)):
        d = proc / str(pid) / "ns"
        d.mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(f"p{pid}\n")
        if target is not None:
            (d / "net").symlink_to(target)          # same inode as the named namespace
    (proc / "11" / "ns" / "net").write_text("")
    (proc / "12" / "ns" / "net").symlink_to(proc / "11" / "ns" / "net")
    w = namespaces.NamespaceWatcher(proc=proc, run=run)
    added, removed = w.poll()
    assert removed == []
    labels = sorted(n.label for n in added)
    ino11 = (proc / "11" / "ns" / "net").stat().st_ino
    assert labels == sorted(["nd-a", f"netns:{ino11} (pid 11 p11)"])
    assert next(n for n in added if n.name == "nd-a").pid == 10
    (run / "nd-b").write_text("")
    (run / "nd-a").unlink()
    (proc / "10" / "ns" / "net").unlink()
    added, removed = w.poll()
    assert [n.name for n in added] == ["nd-b"] and [n.name for n in removed] == ["nd-a"]


def test_fixed_offset_path_agrees_with_the_attribute_walk(captured):
    for raw in captured:
        f = ctmsg.fast_fields(raw, len(raw))
        assert f is not None                      # every captured IPv4 TCP event takes the fast path
        (r,) = ctmsg.decode_fast(raw)
        assert f[4] == ctmsg.entry_key(r)
        assert ctmsg.is_snat_raw(f[2], f[3], f[4]) == (ctmsg.snat_of(r) is not None)
    bad = bytearray(captured[0])
    bad[20] = 56                                  # another layout (e.g. ICMP): falls back
    assert ctmsg.fast_fields(bytes(bad), len(bad)) is None
