"""Minimal reader of the kernel's BTF (``/sys/kernel/btf/vmlinux``).

netdiag never reads a kernel struct through headers that may not describe the running kernel.
Where a probe must follow a pointer (a socket's network namespace, a task's file table), the
member offsets come from here: the running kernel's own type information.

Only what netdiag needs is decoded: structs/unions with their members (anonymous members are
searched through), pointers, typedefs and qualifiers, and function prototypes (argument counts).
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from netdiag.errors import FeatureMissing

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


class _Types:
    """``btf.types[id]``: the type, decoded on first access; ``len()`` counts void too."""

    def __init__(self, btf: "Btf"):
        self._btf = btf

    def __len__(self) -> int:
        return len(self._btf._pos)

    def __getitem__(self, type_id: int) -> BtfType | None:
        if not 0 <= type_id < len(self._btf._pos):
            raise IndexError(f"BTF type id {type_id} out of range")
        return self._btf._decode(type_id) if type_id else None


class Btf:
    """Parsed BTF blob. ``offset("sock", "__sk_common.skc_net")`` gives a byte offset.

    The kernel's blob holds ~125k types. One pass records, per type id, where its record starts
    and a (name, kind) key, in two flat arrays (~1.5 MB); a type is decoded when it is looked at.
    Decoding all of them into objects up front took ~75 MB, in the short-lived process that then
    also runs the compiler."""

    def __init__(self, data: bytes):
        if len(data) < 24:
            raise FeatureMissing("BTF", "BTF blob too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise FeatureMissing("BTF", "bad BTF magic (big-endian or corrupt blob)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        base = hdr_len
        # offsets into the one blob: slicing out the string and type sections would double it
        self._data = data
        self._str_lo, self._str_hi = base + str_off, base + str_off + str_len
        self._type_lo, self._type_hi = base + type_off, base + type_off + type_len
        if self._str_hi > len(data) or self._type_hi > len(data):
            raise FeatureMissing("BTF", "BTF sections run past the blob (corrupt blob)")
        self._pos = array("I", [0])    # id 0 is void
        self._keys = array("Q", [0])   # name offset << 5 | kind
        self._cache: dict[int, BtfType] = {}
        self._index()
        self.types = _Types(self)

    def _str(self, off: int) -> str:
        start = self._str_lo + off
        end = self._data.index(b"\0", start, self._str_hi)
        return self._data[start:end].decode()

    def _index(self) -> None:
        buf, pos, n = self._data, self._type_lo, self._type_hi
        unpack = struct.unpack_from
        add_pos, add_key = self._pos.append, self._keys.append
        while pos < n:
            if pos + 12 > n:
                break
            name_off, info, _ = unpack("<III", buf, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            add_pos(pos)                      # absolute, in the blob
            add_key(name_off << 5 | kind)
            pos += 12
            if kind in (INT, VAR, DECL_TAG):
                pos += 4
            elif kind == ARRAY:
                pos += 12
            elif kind in (STRUCT, UNION, DATASEC, ENUM64):
                pos += 12 * vlen
            elif kind in (ENUM, FUNC_PROTO):
                pos += 8 * vlen
            elif kind not in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
                raise FeatureMissing("BTF", f"unknown BTF kind {kind}")
        if pos != n:
            raise FeatureMissing("BTF", "BTF type section ends inside a type (corrupt blob)")

    def _decode(self, type_id: int) -> BtfType:
        t = self._cache.get(type_id)
        if t is not None:
            return t
        buf, pos = self._data, self._pos[type_id]
        name_off, info, size_or_type = struct.unpack_from("<III", buf, pos)
        pos += 12
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = info >> 31
        members: tuple = ()
        if kind in (STRUCT, UNION):
            ms = []
            for m_name, m_type, m_off in struct.iter_unpack("<III", buf[pos:pos + 12 * vlen]):
                bit_off = (m_off & 0xFFFFFF) if kflag else m_off
                ms.append(Member(self._str(m_name), m_type, bit_off, (m_off >> 24) if kflag else 0))
            members = tuple(ms)
        elif kind == FUNC_PROTO:
            members = tuple((self._str(p_name), p_type)
                            for p_name, p_type in struct.iter_unpack("<II", buf[pos:pos + 8 * vlen]))
        t = BtfType(kind, self._str(name_off), size_or_type, members)
        self._cache[type_id] = t
        return t

    def _ids(self, kind: int, name: str) -> int | None:
        """Lowest type id of this kind and name, or None."""
        if not name:
            return None
        needle, best = b"\0" + name.encode() + b"\0", None
        lo, hi = self._str_lo, self._str_hi
        at = self._data.find(needle, lo, hi)
        while at >= 0:
            try:
                i = self._keys.index((at + 1 - lo) << 5 | kind)
            except ValueError:
                pass
            else:
                best = i if best is None else min(best, i)
            at = self._data.find(needle, at + 1, hi)
        return best

    # -- lookups --------------------------------------------------------------------------------
    def find(self, kind: int, name: str) -> int:
        # the kind is part of the key: a struct's forward declarations (FWD) are not found here
        type_id = self._ids(kind, name)
        if type_id is None:
            raise KeyError(f"no BTF {'struct' if kind == STRUCT else kind} named {name!r}")
        return type_id

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
        return self._ids(FUNC, func_name) is not None


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
