"""Mode planning per signal: kprobe -> fentry -> tracepoint, forced modes fail clearly."""
import pytest

from netdiag.errors import EXIT_UNAVAILABLE, FeatureMissing
from netdiag.kernel import engine
from netdiag.kernel.features import Features


@pytest.fixture
def kernel_has(monkeypatch):
    """Describe a kernel's tracepoints and symbols for the planner (pure logic under test)."""
    def setup(tracepoints=True, symbols=True):
        monkeypatch.setattr(engine, "_tp_exists", lambda name: tracepoints)
        monkeypatch.setattr(engine, "kprobe_target", lambda f: symbols)
    return setup


def feats(kprobes=False, fentry=False, btf=True):
    return Features(kprobes=kprobes, fentry=fentry, ringbuf=True,
                    btf_offsets={"ND_OFF_SOCK_NET": 48} if btf else {})


def test_prefers_kprobe(kernel_has):
    kernel_has()
    assert engine.plan_modes(["connect", "accept"], "auto", feats(kprobes=True, fentry=True)) == \
        {"connect": "kprobe", "accept": "kprobe"}


def test_fentry_before_tracepoint(kernel_has):
    kernel_has()
    assert engine.plan_modes(["connect"], "auto", feats(fentry=True)) == {"connect": "fentry"}


def test_host_like_kernel_falls_back(kernel_has):
    kernel_has()
    assert engine.plan_modes(["connect", "accept"], "auto", feats()) == \
        {"connect": "tracepoint", "accept": "tracepoint"}


def test_kprobe_needs_the_symbol(kernel_has):
    kernel_has(symbols=False)
    assert engine.plan_modes(["accept"], "auto", feats(kprobes=True)) == {"accept": "tracepoint"}


def test_forced_impossible_mode_names_feature(kernel_has):
    kernel_has()
    with pytest.raises(FeatureMissing) as ei:
        engine.plan_modes(["connect"], "kprobe", feats())
    assert "kprobes" in str(ei.value) and ei.value.exit_code == EXIT_UNAVAILABLE


def test_accept_tracepoint_mode_needs_btf(kernel_has):
    kernel_has()
    with pytest.raises(FeatureMissing, match="BTF"):
        engine.plan_modes(["accept"], "auto", feats(btf=False))
    # connect still works without BTF (it loses only netns/errno-from-socket detail)
    assert engine.plan_modes(["connect"], "auto", feats(btf=False)) == {"connect": "tracepoint"}


def test_snat_is_kprobe_only_and_needs_conntrack_offsets(kernel_has):
    from netdiag.kernel.btf import CT_OFFSETS, CT_SIZES
    kernel_has()
    ct = {n: 8 for n in (*CT_OFFSETS, *CT_SIZES)}
    with_ct = Features(kprobes=True, fentry=True, ringbuf=True, btf_offsets={"ND_OFF_SOCK_NET": 48, **ct})
    assert engine.plan_modes(["snat"], "auto", with_ct) == {"snat": "kprobe"}
    ok, missing = engine.mode_available(engine.SIGNALS["snat"], "kprobe", feats(kprobes=True))
    assert not ok and "conntrack" in missing
    with pytest.raises(FeatureMissing):
        engine.plan_modes(["snat"], "auto", feats(fentry=True))


def test_snat_left_out_where_unavailable(kernel_has):
    kernel_has()
    eng = engine.ProbeEngine(["connect", "snat"], features=feats())
    assert eng.plan == {"connect": "tracepoint"} and "snat" in eng.unavailable
    eng = engine.ProbeEngine(["connect", "snat"], mode="tracepoint", features=feats(kprobes=True))
    assert "snat" not in eng.plan


def test_raw_tracepoints_follow_the_kernel_and_can_be_refused(kernel_has):
    base = dict(kprobes=False, fentry=False, ringbuf=True, btf_offsets={"ND_OFF_SOCK_NET": 48})
    with_raw = Features(**base, raw_tp=True)
    without = Features(**base, raw_tp=False)
    auto = engine.ProbeEngine(("connect",), features=with_raw, stream=False, aggregate=True)
    assert auto.raw_tp and "-DND_RAW_TP" in auto.cflags(strict=False)
    classic = engine.ProbeEngine(("connect",), features=with_raw, raw_tracepoints=False)
    assert not classic.raw_tp and "-DND_RAW_TP" not in classic.cflags(strict=False)
    assert not engine.ProbeEngine(("connect",), features=without).raw_tp
    with pytest.raises(FeatureMissing) as ei:
        engine.ProbeEngine(("connect",), features=without, raw_tracepoints=True)
    assert ei.value.exit_code == EXIT_UNAVAILABLE


def test_btf_tracepoints_where_the_kernel_allows_and_no_kprobe_shares_the_helpers(kernel_has):
    base = dict(kprobes=True, fentry=False, ringbuf=True, btf_offsets={"ND_OFF_SOCK_NET": 48}, raw_tp=True)
    with_btf, without = Features(**base, btf_tp=True), Features(**base, btf_tp=False)
    auto = engine.ProbeEngine(("connect", "accept"), mode="tracepoint", features=with_btf)
    assert auto.btf_tp and {"-DND_RAW_TP", "-DND_BTF_TP"} <= set(auto.cflags(strict=False))
    # kprobe connect/accept programs read sockets through untyped pointers: raw tracepoints then
    kp = engine.ProbeEngine(("connect", "accept"), mode="kprobe", features=with_btf)
    assert kp.raw_tp and not kp.btf_tp and "-DND_BTF_TP" not in kp.cflags(strict=False)
    assert not engine.ProbeEngine(("connect",), mode="tracepoint", features=without).btf_tp
    raw = engine.ProbeEngine(("connect",), mode="tracepoint", features=with_btf, btf_tracepoints=False)
    assert raw.raw_tp and not raw.btf_tp
    classic = engine.ProbeEngine(("connect",), mode="tracepoint", features=with_btf, raw_tracepoints=False)
    assert not classic.btf_tp
    for feats_, mode in ((without, "tracepoint"), (with_btf, "kprobe")):
        with pytest.raises(FeatureMissing):
            engine.ProbeEngine(("connect",), mode=mode, features=feats_, btf_tracepoints=True)


def test_ephemeral_range_flags_come_with_resets(kernel_has, monkeypatch):
    monkeypatch.setattr(engine, "ephemeral_range", lambda: (32768, 60999))
    f = Features(kprobes=False, fentry=False, ringbuf=True, btf_offsets={"ND_OFF_SOCK_NET": 48})
    monkeypatch.setattr(engine, "reset_format_flags", lambda strict: [])
    flags = engine.ProbeEngine(("connect", "resets"), features=f).cflags(strict=False)
    assert "-DND_EPHEMERAL_LO=32768" in flags and "-DND_EPHEMERAL_HI=60999" in flags
    assert not any("EPHEMERAL" in x for x in engine.ProbeEngine(("connect",), features=f).cflags(strict=False))


@pytest.mark.parametrize("mem_kib, want", [
    (2 * 1024 * 1024, 262_144),              # 2 GiB: the floor
    (8 * 1024 * 1024, 262_144),              # 8 GiB: one per 32 KiB is exactly 262,144
    (12 * 1024 * 1024, 524_288),             # rounded up to a power of two
    (24 * 1024 * 1024 - 4096, 1_048_576),    # a 24 GiB machine (MemTotal a little under)
    (256 * 1024 * 1024, 1_048_576),          # the ceiling
])
def test_max_socks_default_follows_the_node_memory(tmp_path, mem_kib, want):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {mem_kib} kB\nMemFree:        1024 kB\n")
    assert engine.node_max_socks(str(meminfo)) == want


def test_max_socks_default_without_meminfo_is_the_floor(tmp_path):
    assert engine.node_max_socks(str(tmp_path / "absent")) == engine.MAX_SOCKS


def test_max_socks_reaches_the_program(kernel_has):
    kernel_has()
    eng = engine.ProbeEngine(("connect",), features=feats(), stream=False, aggregate=True, max_socks=1_048_576)
    assert "-DND_MAX_SOCKS=1048576" in eng.cflags(strict=False)
    assert "-DND_MAX_SOCKS=262144" in engine.ProbeEngine(("connect",), features=feats(), stream=False,
                                                         aggregate=True).cflags(strict=False)
    with pytest.raises(ValueError):
        engine.ProbeEngine(("connect",), features=feats(), max_socks=0)
