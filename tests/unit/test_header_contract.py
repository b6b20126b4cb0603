"""The Python mirrors of what the BPF programs share with userspace, checked against the headers.

A small parser reads bpf/*.h (``#define NAME value``, ``enum {...}``, ``struct name {...}`` with
fixed-width integer types, byte arrays and nested structs), lays the structs out as C does
(natural alignment), and every ``struct.Struct`` mirror is compared offset by offset and size by
size, every constant by value. No compiler, no kernel.
"""
import re
import struct
from pathlib import Path

import pytest

from netdiag.analysis import aggregate, decode
from netdiag.kernel import engine
from netdiag.sources.conntrack import kprobe
from netdiag.sources.dns import cgcapture, sockcapture

BPF = Path(__file__).resolve().parents[2] / "bpf"
HEADERS = ("nd_events.h", "nd_dns.h", "nd_common.h")

# (size, signed); char and the u8 family are bytes
INTS = {}
for _bits in (8, 16, 32, 64):
    for _p in ("u", "__u"):
        INTS[f"{_p}{_bits}"] = (_bits // 8, False)
    for _p in ("s", "__s"):
        INTS[f"{_p}{_bits}"] = (_bits // 8, True)
INTS.update({"char": (1, True), "unsigned char": (1, False), "short": (2, True), "unsigned short": (2, False),
             "int": (4, True), "unsigned int": (4, False), "unsigned": (4, False)})


# -- the parser --------------------------------------------------------------------------------
def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def c_int(expr: str, defines: dict):
    """An integer constant expression of literals, defines, ( ) ~ << >> | & + - *; None if not one."""
    expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr.strip())
    if not expr:
        return None

    def name(m):
        v = defines.get(m.group(0))
        if v is None:
            raise KeyError(m.group(0))
        return str(v)
    try:
        expr = re.sub(r"\b[A-Za-z_]\w*\b", name, expr)
    except KeyError:
        return None
    if not re.fullmatch(r"[\s0-9a-fA-Fx()~<>|&+\-*]+", expr):
        return None
    try:
        return int(eval(expr, {"__builtins__": {}}))   # digits and operators only, checked above
    except Exception:
        return None


class Header:
    """Defines (the first definition of each name), enum constants and struct layouts."""

    def __init__(self, text: str):
        self.defines: dict[str, int] = {}
        self.structs: dict[str, list] = {}
        text = strip_comments(text.replace("\\\n", " "))
        for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+([^\n]+)$", text, re.M):
            v = c_int(m.group(2), self.defines)
            if v is not None:
                self.defines.setdefault(m.group(1), v)
        for m in re.finditer(r"\benum\s*\w*\s*\{(.*?)\}", text, re.S):
            nxt = 0
            for item in (x.strip() for x in m.group(1).split(",")):
                if not item:
                    continue
                n, _, v = item.partition("=")
                nxt = c_int(v, self.defines) if v.strip() else nxt
                self.defines.setdefault(n.strip(), nxt)
                nxt += 1
        for m in re.finditer(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*;", text, re.S):
            if "#" in m.group(2):
                continue        # a layout that depends on the build is not one userspace mirrors
            fields = []
            for decl in (d.strip() for d in m.group(2).split(";")):
                if not decl:
                    continue
                f = re.fullmatch(r"((?:struct\s+)?[\w ]+?)\s+(\w+)\s*(?:\[([^\]]+)\])?", decl)
                assert f, f"struct {m.group(1)}: cannot read {decl!r}"
                count = c_int(f.group(3), self.defines) if f.group(3) else None
                fields.append((f.group(2), " ".join(f.group(1).split()), count))
            self.structs[m.group(1)] = fields

    def align(self, ctype: str) -> int:
        if ctype.startswith("struct "):
            return max(self.align(t) for _, t, _ in self.structs[ctype[7:]])
        return INTS[ctype][0]

    def sizeof(self, ctype: str) -> int:
        if ctype.startswith("struct "):
            return self.layout(ctype[7:])[1]
        return INTS[ctype][0]

    def layout(self, name: str):
        """([(dotted field name, offset, size, kind)], sizeof): kind "s" for byte arrays, "u"/"i"
        for unsigned/signed integers; nested structs and arrays of wider types flattened."""
        leaves, off = [], 0
        for fname, ctype, count in self.structs[name]:
            a = self.align(ctype)
            off = (off + a - 1) // a * a
            size = self.sizeof(ctype)
            if count is not None and not ctype.startswith("struct ") and size == 1:
                leaves.append((fname, off, count, "s"))
                off += count
                continue
            for i in range(count if count is not None else 1):
                label = fname if count is None else f"{fname}[{i}]"
                if ctype.startswith("struct "):
                    inner, _ = self.layout(ctype[7:])
                    leaves += [(f"{label}.{n}", off + o, s, k) for n, o, s, k in inner]
                else:
                    leaves.append((label, off, size, "i" if INTS[ctype][1] else "u"))
                off += size
        a = self.align("struct " + name)
        return leaves, (off + a - 1) // a * a


def read_headers(overrides: dict | None = None) -> Header:
    texts = [(overrides or {}).get(n) or (BPF / n).read_text() for n in HEADERS]
    return Header("\n".join(texts))


# -- struct.Struct formats -----------------------------------------------------------------------
def format_items(fmt: str):
    """[(offset, size, kind)] of a little-endian, unaligned struct format; kind "x" for padding."""
    assert fmt[0] in "<=", f"{fmt}: a mirror must fix byte order and pack (no native alignment)"
    out, off = [], 0
    for count, code in re.findall(r"(\d*)([xcbBhHiIlLqQs?])", fmt[1:]):
        n = int(count) if count else 1
        if code in "xs":
            out.append((off, n, code))
            off += n
            continue
        size = struct.calcsize("<" + code)
        for _ in range(n):
            out.append((off, size, "i" if code in "bhilq" else "u"))
            off += size
    assert off == struct.calcsize(fmt)
    return out


def mismatches(h: Header, cname: str, st: struct.Struct, names=None) -> list[str]:
    """What differs between struct ``cname`` of the headers and the mirror ``st`` (with the
    mirror's field names, dotted for nested structs, where it has them)."""
    leaves, size = h.layout(cname)
    errs = []
    if st.size != size:
        errs.append(f"size: header {size}, mirror {st.size}")
    if sum(s for _, _, s, _ in leaves) != size:
        errs.append(f"struct {cname} has implicit padding (declare it)")
    items = format_items(st.format)
    by_off = {(o, s): k for o, s, k in items}
    pad_bytes = {o + i for o, s, k in items if k == "x" for i in range(s)}
    for n, o, s, k in leaves:
        is_pad = n.split(".")[-1].startswith("pad")
        got = by_off.get((o, s))
        if is_pad:
            if got is None and not all(o + i in pad_bytes for i in range(s)):
                errs.append(f"{n}: padding at {o}+{s} not skipped by the mirror")
            continue
        if got is None:
            errs.append(f"{n}: header {k} at offset {o}, size {s}; the mirror has nothing there")
        elif got not in (k, "s") or (got == "s" and k != "s" and s > 1) or (k == "s" and got != "s"):
            errs.append(f"{n}: header kind {k}, mirror {got} (offset {o})")
    starts = {(o, s) for _, o, s, _ in leaves}
    for o, s, k in items:
        if k != "x" and (o, s) not in starts:
            errs.append(f"mirror field at offset {o}, size {s} matches no header field")
    if names is not None:
        hnames = [n for n, _, _, _ in leaves]
        if list(names) != hnames:
            errs.append(f"field names: header {hnames}, mirror {list(names)}")
    return errs


def flat_names(fields, structs) -> list[str]:
    """Dotted leaf names of a decode.AGG_STRUCTS entry (byte arrays one field)."""
    out = []
    for n, t in fields:
        if t.startswith("struct "):
            out += [f"{n}.{x}" for x in flat_names(structs[t[7:]], structs)]
        else:
            out.append(n)
    return out


AGG_MIRRORS = {"nd_dst_key": decode.DST_KEY, "nd_dst_val": decode.DST_VAL, "nd_code_key": decode.CODE_KEY,
               "nd_sock_key": decode.SOCK_KEY, "nd_drop_key": decode.DROP_KEY, "nd_dst_slot": decode.DST_SLOT,
               "nd_code_slot": decode.CODE_SLOT, "nd_proc_key": decode.PROC_KEY, "nd_proc_val": decode.PROC_VAL,
               "nd_proc_dst_key": decode.PROC_DST_KEY, "nd_proc_dst_val": decode.PROC_DST_VAL}


def mirrors():
    """(C struct, struct.Struct mirror, the mirror's field names or None)."""
    yield "nd_event", decode.EVENT, [n for n, _, _ in decode.EVENT_FIELDS]
    for cname, st in AGG_MIRRORS.items():
        yield cname, st, flat_names(decode.AGG_STRUCTS[cname], decode.AGG_STRUCTS)
    yield "nd_snat_key", kprobe.SNAT_KEY, None
    yield "nd_snat_val", kprobe.SNAT_VAL, None
    yield "nd_dns_hdr", cgcapture.REC_HDR, None
    yield "nd_dns_sk", sockcapture.SK_HDR, None


def constants():
    """(header name, the Python mirror's value, where)."""
    yield "ND_EV_CONNECT", decode.EV_CONNECT, "analysis/decode.py EV_CONNECT"
    yield "ND_EV_ACCEPT", decode.EV_ACCEPT, "analysis/decode.py EV_ACCEPT"
    yield "AF_INET", decode.AF_INET, "analysis/decode.py AF_INET"
    yield "AF_INET6", decode.AF_INET6, "analysis/decode.py AF_INET6"
    yield "AF_INET6", kprobe.AF_INET6, "sources/conntrack/kprobe.py AF_INET6"
    yield "ND_DST_SLOT_HELD", decode.DST_SLOT_HELD, "analysis/decode.py DST_SLOT_HELD"
    yield "ND_DIR_OUT", aggregate.DIR_OUT, "analysis/aggregate.py DIR_OUT"
    yield "ND_DIR_IN", aggregate.DIR_IN, "analysis/aggregate.py DIR_IN"
    yield "ND_CODE_CONNECT_ERRNO", aggregate.CODE_CONNECT_ERRNO, "analysis/aggregate.py CODE_CONNECT_ERRNO"
    yield "ND_CODE_RST_OUT_REASON", aggregate.CODE_RST_OUT_REASON, "analysis/aggregate.py CODE_RST_OUT_REASON"
    yield "ND_NAT_RANGE_PROTO_SPECIFIED", kprobe.NF_NAT_RANGE_PROTO_SPECIFIED, "kprobe.py NF_NAT_RANGE_PROTO_SPECIFIED"
    yield "ND_DNS_EGRESS", cgcapture.DIR_EGRESS, "sources/dns/cgcapture.py DIR_EGRESS"
    yield "ND_DNS_INGRESS", cgcapture.DIR_INGRESS, "sources/dns/cgcapture.py DIR_INGRESS"
    yield "ND_DNS_SEND", sockcapture.DIR_SEND, "sources/dns/sockcapture.py DIR_SEND"
    yield "ND_DNS_RECV", sockcapture.DIR_RECV, "sources/dns/sockcapture.py DIR_RECV"
    yield "ND_DNS_PEER_GUESSED", sockcapture.PEER_GUESSED, "sources/dns/sockcapture.py PEER_GUESSED"
    # nd_stats indexes: engine.STAT_NAMES is in ND_STAT_* order
    for i, macro in enumerate(STAT_MACROS):
        yield macro, i, f"kernel/engine.py STAT_NAMES[{i}] ({engine.STAT_NAMES[i]})"
    yield "ND_STAT_MAX", len(engine.STAT_NAMES), "kernel/engine.py len(STAT_NAMES)"
    collector = Path(__file__).resolve().parents[2] / "netdiag" / "pipeline" / "collector.py"
    m = re.search(r"^STAT_DST_NEW, STAT_LOST = (\d+), (\d+)", collector.read_text(), re.M)
    if m:
        yield "ND_STAT_DST_NEW", int(m.group(1)), "pipeline/collector.py STAT_DST_NEW"
        yield "ND_STAT_LOST", int(m.group(2)), "pipeline/collector.py STAT_LOST"
    m = re.search(r"^STAT_PROC_NEW, STAT_PROC_DST_NEW = (\d+), (\d+)", collector.read_text(), re.M)
    assert m, "pipeline/collector.py STAT_PROC_NEW, STAT_PROC_DST_NEW"
    yield "ND_STAT_PROC_NEW", int(m.group(1)), "pipeline/collector.py STAT_PROC_NEW"
    yield "ND_STAT_PROC_DST_NEW", int(m.group(2)), "pipeline/collector.py STAT_PROC_DST_NEW"


STAT_MACROS = ("ND_STAT_CONNECT_ATTEMPT", "ND_STAT_CONNECT_OK", "ND_STAT_CONNECT_FAIL", "ND_STAT_ACCEPT",
               "ND_STAT_LOST", "ND_STAT_ACCEPT_UNTRACKED", "ND_STAT_DST_NEW", "ND_STAT_RST_OUT", "ND_STAT_RST_IN",
               "ND_STAT_PROC_NEW", "ND_STAT_PROC_DST_NEW")


def contract_errors(h: Header) -> list[str]:
    errs = []
    for cname, st, names in mirrors():
        if cname not in h.structs:
            errs.append(f"struct {cname}: not declared in {', '.join(HEADERS)}")
            continue
        errs += [f"struct {cname}: {e}" for e in mismatches(h, cname, st, names)]
    for macro, value, where in constants():
        if h.defines.get(macro) != value:
            errs.append(f"{macro}: header {h.defines.get(macro)}, {where} {value}")
    if "nd_dst_val" in h.structs:
        head = [n for n, _, _, _ in h.layout("nd_dst_val")[0]][:len(aggregate.COUNTERS)]
        if head != list(aggregate.COUNTERS):
            errs.append(f"nd_dst_val counters: header {head}, analysis/aggregate.py COUNTERS {aggregate.COUNTERS}")
    if "nd_dns_rec" in h.structs:
        data_off = next(o for n, o, _, _ in h.layout("nd_dns_rec")[0] if n == "data")
        if data_off != cgcapture.REC_HDR.size:
            errs.append(f"nd_dns_rec.data at {data_off}, REC_HDR is {cgcapture.REC_HDR.size} bytes")
    return errs


# -- the tests -----------------------------------------------------------------------------------
def test_every_mirror_and_constant_matches_the_headers():
    assert contract_errors(read_headers()) == []


@pytest.mark.parametrize("cname,st,names", list(mirrors()), ids=[c for c, _, _ in mirrors()])
def test_mirror(cname, st, names):
    assert mismatches(read_headers(), cname, st, names) == []


def test_shared_declarations_live_in_headers_not_in_programs():
    """A struct or constant a mirror checks is declared in a header only, never again in a .c."""
    shared = {c for c, _, _ in mirrors()} | {m for m, _, _ in constants()} - {"AF_INET", "AF_INET6"}
    for src in sorted(BPF.glob("*.c")):
        text = strip_comments(src.read_text())
        for name in shared:
            assert not re.search(rf"(struct\s+{name}\s*\{{|#\s*define\s+{name}\b)", text), f"{name} in {src.name}"


def test_the_programs_include_the_headers():
    assert '#include "nd_dns.h"' in (BPF / "dns.c").read_text()
    assert '#include "nd_events.h"' in (BPF / "nd_common.h").read_text()


def test_parser_layout():
    h = Header("#define N (1 << 2)\nenum { A, B = 5, C };\n"
               "struct in { __u8 a; __u32 b; };\nstruct out { __u16 x; struct in i; __s64 y; u8 z[N]; };")
    assert h.defines == {"N": 4, "A": 0, "B": 5, "C": 6}
    leaves, size = h.layout("out")
    assert leaves == [("x", 0, 2, "u"), ("i.a", 4, 1, "u"), ("i.b", 8, 4, "u"), ("y", 16, 8, "i"), ("z", 24, 4, "s")]
    assert size == 32


def _mutated(name: str, old: str, new: str) -> Header:
    text = (BPF / name).read_text()
    assert old in text
    return read_headers({name: text.replace(old, new, 1)})


@pytest.mark.parametrize("name,old,new", [
    ("nd_events.h", "    u16 dport;          /* remote port", "    u32 dport;          /* remote port"),
    ("nd_events.h", "    u8 addr[16];\n};", "    u8 addr[20];\n};"),
    ("nd_events.h", "    u32 pad;\n};", "    u32 pad;\n    u64 more;\n};"),
    ("nd_events.h", "    s64 active;", "    u64 active;"),
    ("nd_events.h", "    u64 failed;\n    u64 resets_in;", "    u64 resets_in;\n    u64 failed;"),
    ("nd_events.h", "#define ND_EV_ACCEPT  2", "#define ND_EV_ACCEPT  3"),
    ("nd_events.h", "#define ND_STAT_LOST            4", "#define ND_STAT_LOST            5"),
    ("nd_events.h", "#define ND_DIR_IN  2", "#define ND_DIR_IN  4"),
    ("nd_events.h", "#define ND_DST_SLOT_HELD 2", "#define ND_DST_SLOT_HELD 3"),
    ("nd_events.h", "    u8 proto;\n    u8 pad[7];", "    u8 proto;\n    u8 pad[3];"),
    ("nd_events.h", "    u16 range_lo;", "    u32 range_lo;"),
    ("nd_events.h", "    u64 accepts;        /* connections it took", "    u32 accepts;        /* connections it took"),
    ("nd_events.h", "#define ND_STAT_PROC_NEW        9", "#define ND_STAT_PROC_NEW        10"),
    ("nd_dns.h", "    u8 dir;", "    u16 dir;"),
    ("nd_dns.h", "#define ND_DNS_PEER_GUESSED 1", "#define ND_DNS_PEER_GUESSED 2"),
    ("nd_dns.h", "    u32 tgid;           /* the process", "    u64 tgid;           /* the process"),
    ("nd_events.h", "    u16 port;           /* remote port, host order */\n    u32 pad2;",
     "    u32 port;           /* remote port, host order */\n    u32 pad2;"),
    ("nd_dns.h", "    u8 flags;           /* ND_DNS_PEER_GUESSED */\n    u8 pad;",
     "    u8 pad;\n    u8 flags;           /* ND_DNS_PEER_GUESSED */"),
])
def test_a_changed_header_fails_the_contract(name, old, new):
    assert contract_errors(_mutated(name, old, new)) != []
