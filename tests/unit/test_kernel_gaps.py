"""What the compile flags and the record's `unmeasured` say, from the tracepoint format files of
two kernels captured under tests/data/formats (5.10: Debian bullseye; 6.18: this project's host)."""
from __future__ import annotations

from pathlib import Path

import pytest

from netdiag.errors import FeatureMissing
from netdiag.kernel import engine

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"


@pytest.fixture
def kernel(monkeypatch):
    def use(version):
        def read_format(category, event, root=None):
            p = FORMATS / version / f"{category}_{event}.format"
            if not p.exists():
                raise FeatureMissing(f"tracepoint {category}:{event}", "absent")
            return p.read_text()
        monkeypatch.setattr(engine.tracefs, "read_format", read_format)
    return use


def test_510_tcp_tracepoints_have_no_family_and_no_reasons(kernel):
    kernel("5.10")
    assert engine.tcp_format_flags() == ["-DND_TCP_TP_NO_FAMILY"]
    assert engine.drop_format_flags() == []
    assert engine.reset_format_flags() == []
    gaps = engine.signal_gaps()
    assert set(gaps) == {"drops_by_reason", "resets_out_by_reason"}
    assert "5.17" in gaps["drops_by_reason"] and "6.10" in gaps["resets_out_by_reason"]


def test_618_has_everything(kernel):
    kernel("6.18")
    assert engine.tcp_format_flags() == []
    assert engine.drop_format_flags() == ["-DND_DROP_HAS_REASON"]
    assert "-DND_RST_HAS_REASON" in engine.reset_format_flags()
    assert engine.signal_gaps() == {}


def test_510_v4_mapped_family_layout(kernel):
    """ND_TP_FAMILY reads saddr_v6 as three u32 words: it must sit 4-aligned in the record."""
    kernel("5.10")
    from netdiag.kernel import tracefs
    fields = tracefs.parse_fields(tracefs.read_format("tcp", "tcp_retransmit_skb"))
    assert "family" not in fields
    text = tracefs.read_format("tcp", "tcp_retransmit_skb")
    line = next(ln for ln in text.splitlines() if "saddr_v6" in ln)
    offset = int(line.split("offset:")[1].split(";")[0])
    assert offset % 4 == 0
