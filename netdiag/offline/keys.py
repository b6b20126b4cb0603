"""Endpoint keys of records read back from files (recordings, `watch --json` NDJSON).

A live record carries ``Endpoint`` keys from the collector on (netdiag/analysis/keys.py); a file
holds their text, ``addr:port`` (``[addr]:port`` for IPv6). ``parse_endpoint`` is the one place
that text becomes a key again, and ``with_keys`` gives a record read back the keys a live one has,
so the diagnosis replays it without reading text.
"""
from __future__ import annotations

from netdiag.analysis.keys import Endpoint, endpoint


def parse_endpoint(text: str) -> Endpoint:
    """``addr:port`` or ``[addr]:port`` -> Endpoint. ValueError when the text is neither."""
    if isinstance(text, Endpoint):
        return text
    addr, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not addr:port")
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    elif ":" in addr:
        raise ValueError(f"{text!r}: an IPv6 endpoint is [addr]:port")
    return endpoint(addr, int(port))


def with_keys(record: dict) -> dict:
    """The record with its endpoints as keys, in place (a row's ``dst``, a listener's ``listen``,
    a process's ``listens``); returns it. A record whose keys are Endpoints already is left as it
    is. The NAT table's ``dst`` stays text, as in a live record (the conntrack source's)."""
    for row in record.get("destinations") or ():
        row["dst"] = parse_endpoint(row["dst"])
    for ls in record.get("listeners") or ():
        ls["listen"] = parse_endpoint(ls["listen"])
    for p in record.get("processes") or ():
        if p.get("listens"):
            p["listens"] = [parse_endpoint(x) for x in p["listens"]]
    return record
