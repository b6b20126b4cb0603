"""The BTF reader on a hand-built blob (and on the running kernel's, where readable)."""
import struct

import pytest

from netdiag.kernel import btf as B


def build_btf():
    strings = b"\0int\0outer\0a\0b\0inner_t\0c\0fn\0"
    off = {s: strings.index(s.encode() + b"\0") for s in ("int", "outer", "a", "b", "inner_t", "c", "fn")}
    types = b""
    # 1: int (4 bytes)
    types += struct.pack("<III", off["int"], B.INT << 24, 4) + struct.pack("<I", 32)
    # 2: struct inner_t { int c; } (anonymous member target)
    types += struct.pack("<III", off["inner_t"], (B.STRUCT << 24) | 1, 4)
    types += struct.pack("<III", off["c"], 1, 0)
    # 3: ptr -> 4 (outer)
    types += struct.pack("<III", 0, B.PTR << 24, 4)
    # 4: struct outer { int a; <anon> inner_t at 64 bits; int b at 128 bits }
    types += struct.pack("<III", off["outer"], (B.STRUCT << 24) | 3, 24)
    types += struct.pack("<III", off["a"], 1, 0)
    types += struct.pack("<III", 0, 2, 64)
    types += struct.pack("<III", off["b"], 1, 128)
    # 5: func proto (int a, int b); 6: func fn
    types += struct.pack("<III", 0, (B.FUNC_PROTO << 24) | 2, 1) + struct.pack("<IIII", off["a"], 1, off["b"], 1)
    types += struct.pack("<III", off["fn"], B.FUNC << 24, 5)
    hdr = struct.pack("<HBBIIIII", B.BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_offsets_and_anonymous_members():
    b = B.Btf(build_btf())
    assert b.offset("outer", "a") == 0
    assert b.offset("outer", "c") == 8          # found through the anonymous member
    assert b.offset("outer", "b") == 16
    assert b.func_nargs("fn") == 2


def test_missing_member_names_path():
    b = B.Btf(build_btf())
    with pytest.raises(KeyError, match="nope"):
        b.offset("outer", "nope")


def test_bad_magic():
    blob = bytearray(build_btf())
    blob[0] = 0
    with pytest.raises(B.FeatureMissing):
        B.Btf(bytes(blob))


@pytest.fixture
def kernel_btf():
    try:
        return B.kernel_btf()
    except B.FeatureMissing as e:
        pytest.skip(f"no kernel BTF: {e}")


def test_running_kernel_offsets_resolve(kernel_btf):
    offs = B.probe_offsets(kernel_btf)
    assert set(offs) == set(B.OFFSETS)
    assert all(0 <= v < 8192 for v in offs.values())


def test_sizeof_struct():
    b = B.Btf(build_btf())
    assert b.sizeof("outer") == 24
    assert b.sizeof("inner_t") == 4
    with pytest.raises(KeyError):
        b.sizeof("nope")


def test_running_kernel_conntrack_offsets():
    try:
        kb = B.kernel_btf()
        offs = B.probe_ct_offsets(kb)
    except B.FeatureMissing as e:
        pytest.skip(f"no kernel BTF: {e}")
    except KeyError as e:
        pytest.skip(f"no conntrack in this kernel's BTF: {e}")
    assert set(offs) == set(B.CT_OFFSETS) | set(B.CT_SIZES)
    # the reply tuple lies inside struct nf_conn, after the original one
    assert offs["ND_SIZE_CT_TUPLE_HASH"] > offs["ND_OFF_CTT_PROTONUM"]


def build_btf_bitfield():
    """struct bf { int x:8 at bit 8; int y at 32 } in a kind_flag struct."""
    strings = b"\0int\0bf\0x\0y\0"
    off = {s: strings.index(s.encode() + b"\0") for s in ("int", "bf", "x", "y")}
    types = struct.pack("<III", off["int"], B.INT << 24, 4) + struct.pack("<I", 32)
    types += struct.pack("<III", off["bf"], (1 << 31) | (B.STRUCT << 24) | 2, 8)
    types += struct.pack("<III", off["x"], 1, (8 << 24) | 8)
    types += struct.pack("<III", off["y"], 1, 32)
    hdr = struct.pack("<HBBIIIII", B.BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_byte_aligned_bitfield_is_refused_and_sizes_known():
    b = B.Btf(build_btf_bitfield())
    with pytest.raises(KeyError, match="bitfield"):
        b.offset("bf", "x")             # starts on a byte, still not a plain u8/u16 to read
    assert b.offset("bf", "y") == 4 and b.member_size("bf", "y") == 4


def test_running_kernel_raw_tracepoint_offsets(kernel_btf):
    offs = B.probe_rawtp_offsets(kernel_btf)
    assert set(offs) == set(B.RAWTP_OFFSETS)
    # struct sock_common starts struct sock: the addresses, ports and family sit in its first bytes
    assert offs["ND_OFF_SKC_RCV_SADDR"] == offs["ND_OFF_SKC_DADDR"] + 4
    assert kernel_btf.member_size("sock", "__sk_common.skc_v6_daddr") == 16


def test_types_decode_on_access_and_count_void():
    b = B.Btf(build_btf())
    assert len(b.types) == 7
    assert b.types[0] is None
    outer = b.types[b.find(B.STRUCT, "outer")]
    assert [m.name for m in outer.members] == ["a", "", "b"]
    assert b.types[b.find(B.STRUCT, "outer")] is outer      # decoded once
    with pytest.raises(IndexError):
        b.types[7]


def test_kind_is_part_of_the_name_lookup():
    b = B.Btf(build_btf())
    assert b.has_func("fn") and not b.has_func("outer")
    with pytest.raises(KeyError):
        b.find(B.FUNC, "int")


def test_blob_ending_inside_a_type_is_refused():
    blob = build_btf()
    hdr, rest = blob[:24], blob[24:]
    type_len = struct.unpack_from("<I", hdr, 12)[0]
    # claim the type section ends 4 bytes early: the last record's payload runs past it
    cut = struct.pack("<HBBIIIII", B.BTF_MAGIC, 1, 0, 24, 0, type_len - 4, type_len, len(rest) - type_len)
    with pytest.raises(B.FeatureMissing, match="corrupt"):
        B.Btf(cut + rest)


def test_a_name_stored_twice_is_found_at_either_copy():
    # kernel blobs deduplicate strings; others need not: the type names the second copy
    strings = b"\0x\0sock\0sock\0"
    second = strings.rindex(b"sock")
    types = struct.pack("<III", second, (B.STRUCT << 24), 8)
    hdr = struct.pack("<HBBIIIII", B.BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    assert B.Btf(hdr + types + strings).sizeof("sock") == 8
