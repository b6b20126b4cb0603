"""cgroup_skb DNS capture: the parts that need no kernel (where to attach, ring sizes, records)."""
from __future__ import annotations

import struct

import pytest

from netdiag.errors import FeatureMissing
from netdiag.kernel.dnsprog import ring_bytes
from netdiag.sources.dns.cgcapture import REC_HDR, cgroup2_root, decode

HYBRID = ("35 25 0:30 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
          "36 25 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_cgroup2_root_hybrid_and_unified(tmp_path):
    init = write(tmp_path, "cg1", "0::/init.scope\n")
    assert cgroup2_root(write(tmp_path, "mi1", HYBRID), init) == "/sys/fs/cgroup/unified"
    assert cgroup2_root(write(tmp_path, "mi2", UNIFIED), init) == "/sys/fs/cgroup"


def test_cgroup2_root_refuses_what_would_not_cover_the_node(tmp_path):
    init = write(tmp_path, "cg1", "0::/\n")
    with pytest.raises(FeatureMissing, match="no cgroup v2"):
        cgroup2_root(write(tmp_path, "mi", HYBRID.splitlines()[0] + "\n"), init)
    # a container's cgroup namespace: the node's init is above its root
    outside = write(tmp_path, "cg2", "0::/../../../init.scope\n")
    with pytest.raises(FeatureMissing, match="cgroup namespace"):
        cgroup2_root(write(tmp_path, "mi2", UNIFIED), outside)
    # ... unless the node's hierarchy is mounted too (a hostPath of the node's /sys/fs/cgroup)
    host = UNIFIED + "41 30 0:26 /../../.. /host/sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw\n"
    assert cgroup2_root(write(tmp_path, "mi4", host), outside) == "/host/sys/fs/cgroup"
    # a cgroup2 mount of a subtree (not "/" of the hierarchy) is not the root
    sub = UNIFIED.replace(" / /sys/fs/cgroup ", " /kubepods /sys/fs/cgroup ")
    with pytest.raises(FeatureMissing):
        cgroup2_root(write(tmp_path, "mi3", sub), init)


def test_ring_bytes_power_of_two_within_bounds():
    for n in (1, 2, 3, 4, 8, 16, 64, 256, 1024):
        b = ring_bytes(n)
        assert b & (b - 1) == 0 and (256 << 10) <= b <= (4 << 20)
    assert ring_bytes(2) == 4 << 20 and ring_bytes(64) == 256 << 10


def test_decode_takes_the_packet_length_not_the_record_room():
    pkt = bytes(range(40))
    rec = REC_HDR.pack(123, 7, len(pkt), 2) + pkt + b"\0" * 472        # a small record's room
    assert decode(rec) == (123, 7, 2, pkt)
    big = REC_HDR.pack(1, 1, 5000, 1) + b"x" * 2048                      # cut at the room
    assert len(decode(big)[3]) == 2048
    assert decode(b"short") is None
    assert struct.calcsize("<QQIB3x") == REC_HDR.size == 24
