"""netdiag load: the generator's pure helpers (its runs on loopback are in tests/integration)."""
from __future__ import annotations

import pytest

from netdiag.errors import BadInput
from netdiag.load import stats
from netdiag.load.client import _response_complete, max_per_tuple, target_of
from netdiag.load.targets import is_safe_address, parse_ports, parse_source_ips


# -- pure helpers ---------------------------------------------------------------------------------
def test_percentile_nearest_rank():
    vals = sorted(float(v) for v in range(1, 101))
    assert stats.percentile(vals, 50) == 50.0
    assert stats.percentile(vals, 90) == 90.0
    assert stats.percentile(vals, 99) == 99.0
    assert stats.percentile(vals, 100) == 100.0
    assert stats.percentile([], 50) is None
    assert stats.percentile([7.0], 99) == 7.0


def test_latency_summary_and_delayed():
    ms = [1.0, 2.0, 3.0, 1000.0, 1001.0]
    s = stats.latency_summary(ms)
    assert s == {"p50": 3.0, "p90": 1001.0, "p99": 1001.0, "max": 1001.0}
    assert stats.latency_summary([]) == {"p50": None, "p90": None, "p99": None, "max": None}
    assert stats.count_delayed(ms, 500) == 2
    assert stats.count_delayed(ms, None) == 0


def test_errno_counting():
    import errno
    assert stats.errno_name(errno.ECONNREFUSED) == "ECONNREFUSED"
    assert stats.errno_name(99999) == "E99999"
    assert stats.count_errnos([errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ETIMEDOUT]) == \
        {"ETIMEDOUT": 2, "ECONNREFUSED": 1}
    assert stats.merge_counts({"A": 1}, {"A": 2, "B": 3}, {"C": 0}) == {"A": 3, "B": 3}
    assert stats.spread_ms(1.0, 1.0125) == 12.5


def test_parse_ports():
    assert parse_ports("8080") == [8080]
    assert parse_ports("8081,8080") == [8080, 8081]
    assert parse_ports("9000-9003,9001") == [9000, 9001, 9002, 9003]
    for bad in ("0", "65536", "x", "9-8", "", "1,,2"):
        with pytest.raises(BadInput):
            parse_ports(bad)


def test_parse_source_ips():
    assert parse_source_ips("127.0.0.2-127.0.0.5") == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    assert parse_source_ips("127.0.0.2-3") == ["127.0.0.2", "127.0.0.3"]
    assert parse_source_ips("127.0.1.0/30") == ["127.0.1.1", "127.0.1.2"]
    assert parse_source_ips("127.0.0.9,127.0.0.9,127.0.0.8") == ["127.0.0.9", "127.0.0.8"]
    assert parse_source_ips(None) == []
    with pytest.raises(BadInput):
        parse_source_ips("127.0.0.5-127.0.0.2")


def test_safe_addresses():
    assert is_safe_address("127.0.0.1") and is_safe_address("127.9.9.9")
    assert is_safe_address("198.18.0.1") and is_safe_address("198.19.255.254")
    assert not is_safe_address("198.20.0.1") and not is_safe_address("10.0.0.1")


def test_round_robin_plan():
    targets = [("127.0.0.1", 1), ("127.0.0.1", 2)]
    sources = ["127.0.0.2", "127.0.0.3"]
    assert [target_of(i, targets, sources) for i in range(4)] == [
        (("127.0.0.1", 1), "127.0.0.2"), (("127.0.0.1", 2), "127.0.0.2"),
        (("127.0.0.1", 1), "127.0.0.3"), (("127.0.0.1", 2), "127.0.0.3")]
    assert max_per_tuple(2001, 2, 4) == 251
    assert max_per_tuple(0, 1, 0) == 0


def test_http_response_parsing():
    r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
    assert _response_complete(r) == (len(r), False)
    assert _response_complete(r[:-1]) == (None, False)
    rc = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert _response_complete(rc) == (len(rc), True)
