"""Minimal reader of the kernel's BTF (``/sys/kernel/btf/vmlinux``).

netdiag never reads a kernel struct through headers that may not describe the running kernel.
Where a probe must follow a pointer (a socket's network namespace, a task's file table), the
member offsets come from here: the running kernel's own type information.

Only what netdiag needs is decoded: structs/unions with their members (anonymous members are
searched through), pointers, typedefs and qualifiers, and function prototypes (argument counts).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import FeatureMissing

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
# kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_QUALIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0      # bits, for a bitfield member of a kind_flag struct


@dataclass
class BtfType:
    kind: int
    name: str
    size_or_type: int
    members: tuple = ()   # Member for STRUCT/UNION; (name, type_id) for FUNC_PROTO params


class Btf:
    """Parsed BTF blob. ``offset("sock", "__sk_common.skc_net")`` gives a byte offset."""

    def __init__(self, data: bytes):
        if len(data) < 24:
            raise FeatureMissing("BTF", "BTF blob too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise FeatureMissing("BTF", "bad BTF magic (big-endian or corrupt blob)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        base = hdr_len
        self._strings = data[base + str_off: base + str_off + str_len]
        self.types: list[BtfType | None] = [None]  # id 0 is void
        self._by_name: dict[tuple[int, str], list[int]] = {}
        self._parse_types(data[base + type_off: base + type_off + type_len])

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _parse_types(self, buf: bytes) -> None:
        pos, n = 0, len(buf)
        while pos < n:
            name_off, info, size_or_type = struct.unpack_from("<III", buf, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = info >> 31
            members: tuple = ()
            if kind == INT:
                pos += 4
            elif kind == ARRAY:
                pos += 12
            elif kind in (STRUCT, UNION):
                ms = []
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", buf, pos)
                    pos += 12
                    bit_off = (m_off & 0xFFFFFF) if kflag else m_off
                    ms.append(Member(self._str(m_name), m_type, bit_off, (m_off >> 24) if kflag else 0))
                members = tuple(ms)
            elif kind == ENUM:
                pos += 8 * vlen
            elif kind == FUNC_PROTO:
                ps = []
                for _ in range(vlen):
                    p_name, p_type = struct.unpack_from("<II", buf, pos)
                    pos += 8
                    ps.append((self._str(p_name), p_type))
                members = tuple(ps)
            elif kind == VAR:
                pos += 4
            elif kind == DATASEC:
                pos += 12 * vlen
            elif kind == DECL_TAG:
                pos += 4
            elif kind == ENUM64:
                pos += 12 * vlen
            elif kind not in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
                raise FeatureMissing("BTF", f"unknown BTF kind {kind}")
            name = self._str(name_off)
            self.types.append(BtfType(kind, name, size_or_type, members))
            if name:
                self._by_name.setdefault((kind, name), []).append(len(self.types) - 1)

    # -- lookups --------------------------------------------------------------------------------
    def find(self, kind: int, name: str) -> int:
        ids = self._by_name.get((kind, name))
        if not ids:
            raise KeyError(f"no BTF {'struct' if kind == STRUCT else kind} named {name!r}")
        # prefer a complete definition (structs may also appear as FWD elsewhere)
        return ids[0]

    def resolve(self, type_id: int) -> int:
        """Strip typedefs and qualifiers."""
        while type_id and self.types[type_id].kind in _QUALIFIERS:
            type_id = self.types[type_id].size_or_type
        return type_id

    def _member(self, struct_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of member ``name``, searching anonymous members too."""
        t = self.types[self.resolve(struct_id)]
        for m in t.members:
            if m.name == name:
                if m.bitfield_size:
                    raise KeyError(f"{name} is a bitfield")
                return m.bit_offset, m.type_id
            if not m.name:
                inner = self.types[self.resolve(m.type_id)]
                if inner.kind in (STRUCT, UNION):
                    found = self._member(m.type_id, name)
                    if found:
                        return m.bit_offset + found[0], found[1]
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a dotted member path inside ``struct struct_name`` (no pointer hops)."""
        type_id = self.find(STRUCT, struct_name)
        total = 0
        for part in path.split("."):
            found = self._member(type_id, part)
            if found is None:
                raise KeyError(f"struct {struct_name}: no member {path!r} (at {part!r})")
            bit, type_id = found
            total += bit
        if total % 8:
            raise KeyError(f"struct {struct_name}.{path} is a bitfield")
        return total // 8

    def member_size(self, struct_name: str, path: str) -> int:
        """Byte size of the (integer, pointer, struct…) member at a dotted path."""
        type_id = self.find(STRUCT, struct_name)
        for part in path.split("."):
            found = self._member(type_id, part)
            if found is None:
                raise KeyError(f"struct {struct_name}: no member {path!r} (at {part!r})")
            type_id = found[1]
        t = self.types[self.resolve(type_id)]
        if t.kind == PTR:
            return 8
        if t.kind == ENUM:
            return t.size_or_type
        if t.kind in (INT, STRUCT, UNION):
            return t.size_or_type
        raise KeyError(f"struct {struct_name}.{path}: size of BTF kind {t.kind} unknown")

    def sizeof(self, struct_name: str) -> int:
        """Byte size of ``struct struct_name`` (for indexing arrays of it by offset)."""
        return self.types[self.find(STRUCT, struct_name)].size_or_type

    def func_nargs(self, func_name: str) -> int:
        fid = self.find(FUNC, func_name)
        proto = self.types[self.types[fid].size_or_type]
        return len(proto.members)

    def has_func(self, func_name: str) -> bool:
        return (FUNC, func_name) in self._by_name


@lru_cache(maxsize=1)
def kernel_btf() -> Btf:
    try:
        data = VMLINUX_BTF.read_bytes()
    except OSError as e:
        raise FeatureMissing("BTF", f"{VMLINUX_BTF} unreadable ({e.strerror}); kernel built without CONFIG_DEBUG_INFO_BTF") from e
    return Btf(data)


# The pointer walks netdiag's probes perform, as (struct, member path) pairs. Each becomes a
# -D<NAME>=<offset> compile flag, so the BPF C code never includes a kernel struct definition.
OFFSETS = {
    "ND_OFF_SOCK_NET": ("sock", "__sk_common.skc_net"),      # possible_net_t: first member is struct net *
    "ND_OFF_NET_INUM": ("net", "ns.inum"),
    "ND_OFF_SOCK_ERR": ("sock", "sk_err"),
    "ND_OFF_TASK_FILES": ("task_struct", "files"),
    "ND_OFF_FILES_FDT": ("files_struct", "fdt"),
    "ND_OFF_FDT_FD": ("fdtable", "fd"),
    "ND_OFF_FILE_PRIV": ("file", "private_data"),
    "ND_OFF_SOCKET_SK": ("socket", "sk"),
    "ND_OFF_SKB_DEV": ("sk_buff", "dev"),                      # in an anonymous union
    "ND_OFF_DEV_NET": ("net_device", "nd_net"),                # possible_net_t
}


# What raw tracepoints read from the socket a classic tracepoint would have copied into its
# record (bpf/nd_common.h nd_tuple_of_sk). A kernel lacking one keeps classic tracepoints.
RAWTP_OFFSETS = {
    "ND_OFF_SKC_DADDR": ("sock", "__sk_common.skc_daddr"),
    "ND_OFF_SKC_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "ND_OFF_SKC_DPORT": ("sock", "__sk_common.skc_dport"),          # network order
    "ND_OFF_SKC_NUM": ("sock", "__sk_common.skc_num"),              # host order
    "ND_OFF_SKC_FAMILY": ("sock", "__sk_common.skc_family"),
    "ND_OFF_SKC_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "ND_OFF_SKC_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "ND_OFF_SK_PROTOCOL": ("sock", "sk_protocol"),                  # u16 since 5.6 (a bitfield before)
    # the bound source port, network order: kept after CLOSE released skc_num (the classic
    # record's sport is this one)
    "ND_OFF_INET_SPORT": ("inet_sock", "inet_sport"),
    # tp_btf on tcp_send_reset: full socket or not, and the headers of the segment a
    # socket-less RST answers
    "ND_OFF_SKC_STATE": ("sock", "__sk_common.skc_state"),
    "ND_OFF_SKB_HEAD": ("sk_buff", "head"),
    "ND_OFF_SKB_DATA": ("sk_buff", "data"),
    "ND_OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "ND_OFF_SKB_PROTOCOL": ("sk_buff", "protocol"),
}

# Conntrack walks of the "snat" signal (bpf/snat.c). A separate group: a kernel without
# conntrack in its BTF loses the kprobe SNAT path (netlink remains), not the socket offsets.
CT_OFFSETS = {
    "ND_OFF_CT_TUPLEHASH": ("nf_conn", "tuplehash"),           # [IP_CT_DIR_MAX] nf_conntrack_tuple_hash
    "ND_OFF_CT_NET": ("nf_conn", "ct_net"),                    # possible_net_t
    "ND_OFF_CT_STATUS": ("nf_conn", "status"),                 # IPS_* bits (UAPI)
    "ND_OFF_CTH_TUPLE": ("nf_conntrack_tuple_hash", "tuple"),
    "ND_OFF_CTT_SRC_U3": ("nf_conntrack_tuple", "src.u3"),     # union nf_inet_addr (16 bytes)
    "ND_OFF_CTT_SRC_PORT": ("nf_conntrack_tuple", "src.u.all"),
    "ND_OFF_CTT_L3NUM": ("nf_conntrack_tuple", "src.l3num"),
    "ND_OFF_CTT_DST_U3": ("nf_conntrack_tuple", "dst.u3"),
    "ND_OFF_CTT_DST_PORT": ("nf_conntrack_tuple", "dst.u.all"),
    "ND_OFF_CTT_PROTONUM": ("nf_conntrack_tuple", "dst.protonum"),
    "ND_OFF_SKB_NFCT": ("sk_buff", "_nfct"),                   # struct nf_conntrack * | ctinfo (low 3 bits)
}
CT_SIZES = {"ND_SIZE_CT_TUPLE_HASH": "nf_conntrack_tuple_hash"}


def probe_offsets(btf: Btf) -> dict[str, int]:
    """Compute every offset in OFFSETS; raises KeyError naming the first one the kernel lacks."""
    return {name: btf.offset(s, path) for name, (s, path) in OFFSETS.items()}


# Offsets a probe uses when the kernel has them and does without otherwise.
# net_cookie: a u64 (atomic64_t before 5.12) on a cache line nothing writes after set-up,
# the key of the namespace-inode cache in bpf/nd_common.h.
OPTIONAL_OFFSETS = {
    "ND_OFF_NET_COOKIE": ("net", "net_cookie"),
}
OPTIONAL_SIZES = {"ND_OFF_NET_COOKIE": 8}


def probe_optional_offsets(btf: Btf) -> dict[str, int]:
    """The OPTIONAL_OFFSETS the kernel has, with the size each expects."""
    out = {}
    for name, (s, path) in OPTIONAL_OFFSETS.items():
        try:
            if name not in OPTIONAL_SIZES or btf.member_size(s, path) == OPTIONAL_SIZES[name]:
                out[name] = btf.offset(s, path)
        except KeyError:
            pass
    return out


def probe_rawtp_offsets(btf: Btf) -> dict[str, int]:
    """RAWTP_OFFSETS; raises KeyError naming the first one the kernel lacks."""
    out = {name: btf.offset(s, path) for name, (s, path) in RAWTP_OFFSETS.items()}
    if btf.member_size("sock", "sk_protocol") != 2:
        raise KeyError("sock.sk_protocol is not a u16")
    return out


def probe_ct_offsets(btf: Btf) -> dict[str, int]:
    """CT_OFFSETS and CT_SIZES; raises KeyError naming the first one the kernel lacks."""
    out = {name: btf.offset(s, path) for name, (s, path) in CT_OFFSETS.items()}
    out.update({name: btf.sizeof(s) for name, s in CT_SIZES.items()})
    return out
