import re
from pathlib import Path

import pytest

from netdiag.analysis.decode import EVENT, EVENT_FIELDS, decode_event, errno_name

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "nd_events.h"


def header_fields():
    body = re.search(r"struct nd_event \{(.*?)\};", HEADER.read_text(), re.S).group(1)
    out = []
    for m in re.finditer(r"^\s*(u64|u32|s32|u16|u8|char)\s+(\w+)(\[(\d+)\])?;", body, re.M):
        ctype = m.group(1) + (f"[{m.group(4)}]" if m.group(3) else "")
        out.append((m.group(2), ctype))
    return out


def test_mirror_matches_header_field_by_field():
    assert header_fields() == [(n, t) for n, t, _ in EVENT_FIELDS]


def test_mirror_size_has_no_implicit_padding():
    sizes = {"u64": 8, "u32": 4, "s32": 4, "u16": 2}
    expected = sum(sizes.get(t, 0) or int(t.split("[")[1][:-1]) for _, t, _ in EVENT_FIELDS)
    assert EVENT.size == expected == 88


def pack(**kw):
    base = dict(ts_ns=5, latency_ns=1_500_000, netns=4026531840, pid=42, tid=43, err=0, kind=1, family=2,
                sport=50000, dport=8080, saddr=bytes([198, 18, 0, 2]) + bytes(12),
                daddr=bytes([198, 18, 0, 1]) + bytes(12), comm=b"curl\0".ljust(16, b"\0"))
    base.update(kw)
    return EVENT.pack(*(base[n] for n, _, _ in EVENT_FIELDS))


def test_decode_connect_ok():
    ev = decode_event(pack())
    assert ev["type"] == "connect" and ev["result"] == "ok" and ev["errno"] is None
    assert ev["src"] == "198.18.0.2:50000" and ev["dst"] == "198.18.0.1:8080"
    assert ev["latency_ms"] == 1.5 and ev["comm"] == "curl" and ev["family"] == 4


def test_decode_connect_error_names_errno():
    ev = decode_event(pack(err=99))
    assert ev["result"] == "error" and ev["errno"] == 99 and ev["errno_name"] == "EADDRNOTAVAIL"


def test_decode_accept_ipv6():
    a6 = bytes(15) + b"\x01"
    ev = decode_event(pack(kind=2, family=10, saddr=a6, daddr=a6, sport=8080, dport=40000))
    assert ev["type"] == "accept" and ev["listen"] == "[::1]:8080" and ev["peer"] == "[::1]:40000"
    assert ev["family"] == 6


def test_errno_name_unknown_and_zero():
    assert errno_name(0) is None
    assert errno_name(111) == "ECONNREFUSED"
    assert errno_name(4095) == "E4095"


AGG = Path(__file__).resolve().parents[2] / "bpf" / "nd_events.h"


def c_struct_fields(text, name):
    body = re.search(rf"struct {name} \{{(.*?)\}};", text, re.S).group(1)
    out = []
    for m in re.finditer(r"^\s*(struct \w+|u64|s64|u32|s32|u16|u8|char)\s+(\w+)(\[(\d+)\])?;", body, re.M):
        out.append((m.group(2), m.group(1) + (f"[{m.group(4)}]" if m.group(3) else "")))
    return tuple(out)


@pytest.mark.parametrize("name", sorted(__import__("netdiag.analysis.decode", fromlist=["x"]).AGG_STRUCTS))
def test_agg_mirrors_match_c(name):
    from netdiag.analysis.decode import AGG_STRUCTS
    assert c_struct_fields(AGG.read_text(), name) == AGG_STRUCTS[name]


def test_agg_sizes():
    from netdiag.analysis.decode import CODE_KEY, CODE_SLOT, DROP_KEY, DST_KEY, DST_SLOT, DST_VAL, SOCK_KEY
    assert (DST_KEY.size, DST_VAL.size, CODE_KEY.size, SOCK_KEY.size, DROP_KEY.size, DST_SLOT.size,
            CODE_SLOT.size) == (24, 96, 32, 48, 8, 128, 48)
