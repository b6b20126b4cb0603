"""VM lane, host side: boot Debian's 6.1 kernel (kprobes, fentry) under qemu, run there the kernel
tests whose hook paths only a guest has (LANE), and assert on the result files the guest wrote."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("ND_VM_RESULTS", ROOT / "results" / "vm"))
# the counts the host lane asserts, per scenario
EXPECTED = {"connect_accept": {"connects_ok": 23, "connects": 23, "accepts": 23},
            "refused": {"failed": 7, "errnos": ["ECONNREFUSED"], "pids": 1}}

# what runs in the guest: the tests of the paths only this guest has (trace in auto = kprobe and
# in fentry mode; watch, SNAT through the conntrack kprobes, per-process rows through kprobes; map
# batching; doctor's table). The verdict labs through kprobes run in the 5.10 guest; what does not
# depend on the hook (conntrack netlink, the DNS captures 6.1 does not have, error paths, the
# nginx fan-out lab) runs on the host lane.
LANE = ["tests/kernel/test_trace.py",
        "tests/kernel/test_watch.py",
        "tests/kernel/test_watch_snat.py",
        "tests/kernel/test_per_process.py",
        "tests/kernel/test_bpfsys.py",
        "tests/kernel/test_doctor_docs.py"]

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def lane():
    if os.geteuid() != 0:
        pytest.skip("VM lane needs root (qemu, namespaces and BPF inside the guest)")
    if not shutil.which("qemu-system-x86_64") or not list(Path("/boot").glob("vmlinuz-6.1.*-amd64")):
        pytest.skip("VM lane needs qemu-system-x86 and linux-image-amd64 (run scripts/setup.sh)")
    if not (ROOT / ".venv" / "bin" / "vng").exists():
        pytest.skip("VM lane needs virtme-ng in .venv (run scripts/setup.sh)")
    env = dict(os.environ, ND_VM_TESTS=" ".join(LANE))
    p = subprocess.run(["bash", str(ROOT / "scripts" / "vm" / "run.sh"), str(RESULTS), "6.1"],
                       capture_output=True, text=True, timeout=3300, env=env)
    assert p.returncode == 0, p.stderr
    out = (RESULTS / "pytest.out").read_text()
    return {
        "rc": int((RESULTS / "rc").read_text()),
        "uname": (RESULTS / "uname").read_text().strip(),
        "doctor": json.loads((RESULTS / "doctor.json").read_text()),
        "results": json.loads((RESULTS / "results.json").read_text()),
        "pytest": out,
    }


def test_guest_runs_debian_61(lane):
    assert lane["uname"].startswith("6.1.")


def test_guest_kernel_tier_passed(lane):
    assert lane["rc"] == 0, lane["pytest"][-3000:]
    suite = ET.parse(RESULTS / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    assert int(suite.get("tests")) - int(suite.get("skipped")) >= 8    # 4 scenarios x 2 modes at least


def test_doctor_reports_kprobe_and_matching_headers(lane):
    modes = lane["doctor"]["modes"]
    assert (modes["connect"], modes["accept"]) == ("kprobe", "kprobe")
    assert {modes[s] for s in ("resets", "retrans", "drops")} == {"tracepoint"}   # tracepoint-only signals
    assert lane["doctor"]["headers"] == "matching"


@pytest.mark.parametrize("mode", ["auto", "fentry"])
def test_counts_identical_to_host_lane(lane, mode):
    res = lane["results"]
    for scenario, expected in EXPECTED.items():
        got = res[f"{mode}/{scenario}"]
        assert {k: got[k] for k in expected} == expected, (mode, scenario, got)
    pr = res[f"{mode}/port_range"]
    assert pr["ok"] == pr["client_ok"] and pr["ok"] + pr["failed"] == 5 and pr["errnos"] == ["EADDRNOTAVAIL"]
    assert res[f"{mode}/summary"]["lost_events"] == 0


@pytest.mark.parametrize("prefix,flavour", [("watch", "raw")])
def test_watch_counts_through_kprobes(lane, prefix, flavour):
    """watch with kprobes for connect/accept and the shared tracepoints raw (auto) or classic."""
    res = lane["results"]
    modes = res[f"{prefix}/23"]["modes"]
    assert (modes["connect"], modes["accept"], modes["tracepoints"]) == ("kprobe", "kprobe", flavour)
    assert {k: res[f"{prefix}/23"][k] for k in ("connects", "established", "accepts")} == \
        {"connects": 23, "established": 23, "accepts": 23}
    assert res[f"{prefix}/refused"]["failed"] == 7 and res[f"{prefix}/refused"]["errnos"] == {"ECONNREFUSED": 7}
    assert res[f"{prefix}/refused"]["resets_in"] == 7
    assert res[f"{prefix}/linger0"] == {"resets_out": 5, "resets_in": 5}
    assert res[f"{prefix}/overflow"]["overflows"] > 0 and res[f"{prefix}/overflow"]["syn_retrans"] > 0


@pytest.mark.parametrize("name", ["per_process_listener", "per_process_accept"])
def test_per_process_rows_through_kprobes(lane, name):
    """watch --per-process with connect and accept on kprobes: every process row exact, and the
    accepts the accepting process's (kretprobe on inet_csk_accept) with or without --accepts."""
    res = lane["results"][name]
    assert (res["modes"]["connect"], res["modes"]["accept"]) == ("kprobe", "kprobe")
    row = {"established": 0, "failed": 1, "resets_in": 1, "resets_out": 0}
    assert res["clients"] == {"3": {**row, "connects": 4, "established": 3},
                              "7": {**row, "connects": 8, "established": 7}}
    assert res["server_inbound"] == 10 and res["inbound_via"] == "accept"


def test_auto_mode_used_kprobes(lane):
    assert lane["results"]["auto/connect_accept"]["modes"] == {"connect": "kprobe", "accept": "kprobe"}
    assert lane["results"]["fentry/connect_accept"]["modes"] == {"connect": "fentry", "accept": "fentry"}


def test_shared_tracepoints_btf_where_no_kprobe_shares_them(lane):
    """6.1 loads the tp_btf programs: fentry mode runs them (the counts above are theirs); kprobe
    mode keeps raw tracepoints. (Tracepoint mode and the classic tracepoints run in the host lane
    and the 5.10 lane.)"""
    got = {m: lane["results"][f"{m}/connect_accept"].get("tracepoints") for m in ("auto", "fentry")}
    assert got == {"auto": "raw", "fentry": "btf"}


def test_watch_snat_through_kprobes(lane):
    """The SNAT lab under `watch` with nf_nat_setup_info/__nf_conntrack_confirm hooked: the same
    numbers the host's ctnetlink path gives (tests/kernel/test_watch_snat.py)."""
    got = lane["results"]["watch/snat"]
    assert got["modes"]["snat"] == "kprobe" and got["snat_modes"] == ["kprobe"], got
    assert {k: got[k] for k in ("ports_in_use", "port_range", "established", "failed")} == \
        {"ports_in_use": 10, "port_range": 10, "established": 10, "failed": 20}, got
    assert got["insert_failed"] > 0, got
