"""Failure paths on the real kernel: impossible forced modes, verifier rejections."""
from __future__ import annotations

import subprocess
import sys

import pytest

from netdiag.errors import EXIT_UNAVAILABLE, BpfLoadError
from netdiag.kernel.engine import ProbeEngine

pytestmark = pytest.mark.kernel


def test_forced_impossible_mode_exits_69(doctor):
    missing = [m for m, ok in doctor["available_modes"]["connect"].items() if not ok]
    if not missing:
        pytest.skip("every hook mode works on this kernel: no impossible mode to force")
    p = subprocess.run([sys.executable, "-m", "netdiag", "trace", "--mode", missing[0], "--duration", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == EXIT_UNAVAILABLE, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--mode {missing[0]}" in lines[0] and "not available" in lines[0]


class RejectedEngine(ProbeEngine):
    """The real program plus one the verifier must refuse (a hash map value used without a NULL check)."""

    def source(self):
        return super().source() + """
TRACEPOINT_PROBE(sock, inet_sk_error_report)
{
    u64 k = 0;
    struct nd_conn *c = nd_conns.lookup(&k);
    return c->pid;
}
"""


def test_verifier_rejection_carries_the_log(doctor):
    eng = RejectedEngine(("connect",))
    with pytest.raises(BpfLoadError) as ei:
        eng.start(lambda raw: None)
    assert "-v" in str(ei.value)
    assert ei.value.detail and "invalid mem access" in ei.value.detail
    assert eng.bpf is None   # nothing left attached


def test_refused_tp_btf_falls_back_to_raw_and_says_why(doctor, monkeypatch):
    """auto: when the kernel refuses the compiled tp_btf programs, the engine recompiles with raw
    tracepoints, runs, and keeps the reason (watch and trace print it)."""
    if not any(c["name"] == "BTF tracepoints" and c["status"] == "yes" for c in doctor["checks"]):
        pytest.skip("no tp_btf on this kernel: nothing to fall back from")
    from netdiag.kernel import bpfsys

    def refuse(insns, event, name=""):
        raise OSError(13, f"tp_btf {event} refused (EACCES): made up by the test")

    monkeypatch.setattr(bpfsys, "load_tp_btf", refuse)
    eng = ProbeEngine(("connect", "accept"), mode="tracepoint", stream=False, aggregate=True)
    assert eng.btf_tp
    eng.start()
    try:
        assert not eng.btf_tp and eng.raw_tp and not eng.btf_fds
        assert "made up by the test" in eng.btf_refused
    finally:
        eng.close()
    with pytest.raises(BpfLoadError, match="made up by the test"):    # asked for btf: no fallback
        ProbeEngine(("connect", "accept"), mode="tracepoint", btf_tracepoints=True).start()
