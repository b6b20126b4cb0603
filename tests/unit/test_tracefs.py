from pathlib import Path

import pytest

from netdiag.errors import BadInput
from netdiag.kernel.tracefs import enum_value, parse_fields, parse_symbolic

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"


def fmt(kernel, name):
    return (FORMATS / kernel / f"{name}.format").read_text()


def test_tcp_states_from_captured_format():
    tables = parse_symbolic(fmt("6.18", "sock_inet_sock_set_state"))
    states = tables["newstate"]
    assert states[1] == "TCP_ESTABLISHED" and states[2] == "TCP_SYN_SENT" and states[7] == "TCP_CLOSE"
    assert enum_value(states, "TCP_SYN_RECV") == 3
    assert tables["family"] == {2: "AF_INET", 10: "AF_INET6"}


def test_drop_reasons_are_read_not_hardcoded():
    reasons = parse_symbolic(fmt("6.18", "skb_kfree_skb"))["reason"]
    assert enum_value(reasons, "NETFILTER_DROP") == 12          # 6.18's value
    assert "TCP_LISTEN_OVERFLOW" in reasons.values() or "NO_SOCKET" in reasons.values()


def test_rst_reasons_parse():
    reasons = parse_symbolic(fmt("6.18", "tcp_tcp_send_reset"))["reason"]
    assert "NOT_SPECIFIED" in reasons.values()


def test_fields_offsets():
    fields = parse_fields(fmt("6.18", "sock_inet_sock_set_state"))
    assert fields["skaddr"][1] == 8
    assert "saddr_v6" in fields and fields["saddr_v6"][1] == 16


def test_format_without_print_fmt_is_bad_input():
    with pytest.raises(BadInput):
        parse_symbolic("name: x\nformat:\n")


def test_missing_enum_name():
    with pytest.raises(KeyError):
        enum_value({1: "A"}, "B")
