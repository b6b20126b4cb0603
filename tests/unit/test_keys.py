"""Endpoint keys: structured from the collector to the sinks, the contract's text when written,
and parsed back from text only by netdiag/offline/keys.py."""
from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path

import pytest

from netdiag.analysis import aggregate as agg
from netdiag.analysis.keys import Endpoint, endpoint
from netdiag.offline.keys import parse_endpoint, with_keys

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("family,addr,port,text", [
    (4, "198.18.0.1", 8080, "198.18.0.1:8080"),
    (6, "fd00::1", 443, "[fd00::1]:443"),
    (6, "::", 80, "[::]:80"),
    (6, "::ffff:198.18.0.1", 8080, "[::ffff:198.18.0.1]:8080"),
])
def test_an_endpoint_is_the_contracts_text(family, addr, port, text):
    e = endpoint(addr, port)
    assert isinstance(e, Endpoint) and (e.addr, e.port) == (addr, port)
    assert agg.DstKey(7, family, addr, port).endpoint == e          # a destination row's dst
    assert e == text and hash(e) == hash(text) and str(e) == text and type(str(e)) is str
    assert json.dumps({"dst": e, e: 1}) == json.dumps({"dst": text, text: 1})
    assert f"{e:<30}|" == f"{text:<30}|"
    assert parse_endpoint(text) == e and (parse_endpoint(text).addr, parse_endpoint(text).port) == (addr, port)


def test_endpoints_are_immutable_values():
    e = endpoint("198.18.0.1", 80)
    assert endpoint("198.18.0.1", 80) is e
    with pytest.raises(AttributeError):
        e.port = 81
    assert copy.deepcopy(e) is e
    back = pickle.loads(pickle.dumps(e))
    assert isinstance(back, Endpoint) and (back.addr, back.port) == ("198.18.0.1", 80)
    assert endpoint("0.0.0.0", 1).wildcard and endpoint("::", 1).wildcard and not e.wildcard


@pytest.mark.parametrize("text", ["198.18.0.1", "198.18.0.1:", "198.18.0.1:x", "fd00::1:80", "", ":"])
def test_parse_refuses_what_is_not_addr_port(text):
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_with_keys_gives_a_record_read_back_the_keys_of_a_live_one():
    rec = {"destinations": [{"dst": "198.18.0.1:80"}, {"dst": "[fd00::1]:443"}],
           "listeners": [{"listen": "0.0.0.0:80"}], "processes": [{"listens": ["[::]:9090"]}, {"pid": 1}],
           "nat": [{"dst": "198.18.0.1:80"}]}
    text = json.dumps(rec)
    assert with_keys(rec) is rec
    assert json.dumps(rec) == text
    (a, b), (ls,), (p, _) = rec["destinations"], rec["listeners"], rec["processes"]
    assert (a["dst"].addr, a["dst"].port, b["dst"].addr) == ("198.18.0.1", 80, "fd00::1")
    assert ls["listen"].wildcard and p["listens"][0].port == 9090
    assert type(rec["nat"][0]["dst"]) is str                  # the NAT table's text stays text
    assert with_keys(rec) == json.loads(text)


def test_analysis_and_pipeline_never_parse_endpoint_text():
    parse = re.compile(r"""(rpartition|rsplit|split|partition)\(\s*["']:["']|split_dst|strip\(["']\[\]""")
    for layer in ("analysis", "pipeline"):
        for py in (ROOT / "netdiag" / layer).glob("*.py"):
            for n, line in enumerate(py.read_text().splitlines(), 1):
                assert not parse.search(line), f"{py.relative_to(ROOT)}:{n}: {line.strip()}"
