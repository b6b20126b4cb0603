"""VM lane on the older kernel class: Debian's 5.10 (bullseye) under qemu, the kernel tier's
core inside it (trace and watch exact counts through kprobes and once in tracepoint mode, the
snat-cap, remote-cap, port-exhaustion and listen-overflow labs, per-domain), and what 5.10
cannot tell reported as missing, never as zeros."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .test_vm_lane import EXPECTED

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("ND_VM510_RESULTS", ROOT / "results" / "vm-5.10"))
CORE = ["tests/kernel/test_trace.py",
        "tests/kernel/test_watch.py::test_23_connects_active_then_closed",
        "tests/kernel/test_watch.py::test_7_refused",
        "tests/kernel/test_watch.py::test_5_linger0_resets",
        "tests/kernel/test_watch.py::test_listen_overflow_and_syn_retrans",
        "tests/kernel/test_watch.py::test_records_validate_against_schema",
        "tests/kernel/test_watch.py::test_unmeasured_fields_are_null_never_zero",
        "tests/kernel/test_labs.py::test_snat_cap_13",
        "tests/kernel/test_labs.py::test_remote_cap_13_from_client_side_alone",
        "tests/kernel/test_labs.py::test_port_exhaustion_6",
        "tests/kernel/test_labs.py::test_listen_overflow_backlog_4",
        "tests/kernel/test_per_domain.py::test_per_domain_per_pod_and_late_namespace",
        "tests/kernel/test_doctor_docs.py"]
# kprobes (auto) and once in tracepoint mode (the classic tracepoints: the host lane's); watch
# from a compile and again from the program image it left (kprobes made through the kprobe PMU)
GUEST_ENV = "ND_TRACE_MODES=auto,tracepoint ND_CLASSIC_MODES= ND_WATCH_FLAVOURS=auto,auto/cached"

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def lane():
    if os.geteuid() != 0:
        pytest.skip("VM lane needs root (qemu, namespaces and BPF inside the guest)")
    if not shutil.which("qemu-system-x86_64") or not list(Path("/boot").glob("vmlinuz-5.10.*-amd64")):
        pytest.skip("the 5.10 VM lane needs qemu-system-x86 and Debian's 5.10 kernel (run scripts/setup.sh)")
    env = dict(os.environ, ND_VM_TESTS=" ".join(CORE), ND_VM_ENV=GUEST_ENV, ND_VM_MARK="")
    p = subprocess.run(["bash", str(ROOT / "scripts" / "vm" / "run.sh"), str(RESULTS), "5.10"],
                       capture_output=True, text=True, timeout=3300, env=env)
    assert p.returncode == 0, p.stderr
    return {
        "rc": int((RESULTS / "rc").read_text()),
        "uname": (RESULTS / "uname").read_text().strip(),
        "doctor": json.loads((RESULTS / "doctor.json").read_text()),
        "results": json.loads((RESULTS / "results.json").read_text()),
        "pytest": (RESULTS / "pytest.out").read_text(),
    }


def test_guest_runs_debian_510(lane):
    assert lane["uname"].startswith("5.10.")


def test_guest_core_passed(lane):
    assert lane["rc"] == 0, lane["pytest"][-3000:]
    suite = ET.parse(RESULTS / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    # the skips expected: the socket-call DNS capture needs sock:sock_send_length (6.3); the
    # cgroup_skb capture's egress program is refused by 5.10's verifier (EINVAL; open, see
    # docs/kernels.md), so per-domain there runs on the packet capture
    skipped = {c.get("name") for c in suite.iter("testcase") if c.find("skipped") is not None}
    assert skipped <= {"test_per_domain_per_pod_and_late_namespace[socket]",
                       "test_per_domain_per_pod_and_late_namespace[cgroup]"}, (skipped, lane["pytest"][-3000:])


def test_doctor_kprobes_and_what_is_missing(lane):
    d = lane["doctor"]
    assert (d["modes"]["connect"], d["modes"]["accept"]) == ("kprobe", "kprobe")
    assert d["headers"] == "matching"
    assert set(d["unmeasured"]) == {"drops_by_reason", "resets_out_by_reason"}
    rows = {c["name"]: c for c in d["checks"]}
    assert rows["drop reasons"]["status"] == "no" and "instead" in rows["drop reasons"]["fix"]
    assert rows["reset reasons"]["status"] == "no"
    # DNS for --per-domain: no socket-call tracepoints (6.3), no namespace cookie in cgroup_skb
    assert rows["DNS capture: socket calls"]["status"] == "no" and "6.3" in rows["DNS capture: socket calls"]["fix"]
    assert rows["DNS capture: cgroup_skb"]["status"] == "no"
    assert "packet sockets" in rows["DNS capture: cgroup_skb"]["fix"]


@pytest.mark.parametrize("mode", ["auto", "tracepoint"])
def test_trace_counts_identical_to_other_lanes(lane, mode):
    res = lane["results"]
    for scenario, expected in EXPECTED.items():
        got = res[f"{mode}/{scenario}"]
        assert {k: got[k] for k in expected} == expected, (mode, scenario, got)
    assert res[f"{mode}/summary"]["lost_events"] == 0
    if mode == "auto":
        assert res["auto/connect_accept"]["modes"] == {"connect": "kprobe", "accept": "kprobe"}


# "watch": compiled; "watch+cached": loaded from the program image (the guest's fixture asserts
# the start said program=cached), kprobes made again through the kprobe PMU
@pytest.mark.parametrize("w", ["watch", "watch+cached"])
def test_watch_counts_through_kprobes(lane, w):
    res = lane["results"]
    assert res[f"{w}/23"]["modes"]["connect"] == "kprobe" and res[f"{w}/23"]["modes"]["accept"] == "kprobe"
    assert {k: res[f"{w}/23"][k] for k in ("connects", "established", "accepts")} == \
        {"connects": 23, "established": 23, "accepts": 23}
    assert res[f"{w}/refused"]["failed"] == 7 and res[f"{w}/refused"]["errnos"] == {"ECONNREFUSED": 7}
    assert res[f"{w}/linger0"] == {"resets_out": 5, "resets_in": 5}
    assert res[f"{w}/overflow"]["overflows"] > 0 and res[f"{w}/overflow"]["syn_retrans"] > 0
    assert res[f"{w}/unmeasured"]["fields"] == ["drops_by_reason", "resets_out_by_reason"]


def test_labs_same_numbers_as_newer_kernels(lane):
    res = lane["results"]
    assert (res["lab/snat-cap"]["kind"], res["lab/snat-cap"]["cap"]) == ("snat_port_exhaustion", 13)
    assert (res["lab/remote-cap"]["kind"], res["lab/remote-cap"]["cap"]) == ("remote_connection_cap", 13)
    assert (res["lab/port-exhaustion"]["kind"], res["lab/port-exhaustion"]["cap"]) == ("local_port_exhaustion", 6)
    assert res["lab/port-exhaustion"]["EADDRNOTAVAIL"] == 5
    assert (res["lab/listen-overflow"]["kind"], res["lab/listen-overflow"]["backlog"]) == ("listen_overflow", 4)
    assert "snat_port_exhaustion" not in res["lab/remote-cap"]["kinds"]
    assert res["lab/snat-cap"]["modes"]["connect"] == "kprobe"      # the labs ran through kprobes


def test_per_domain_with_the_capture_5_10_allows(lane):
    got = {k: v for k, v in lane["results"].items() if k.startswith("per-domain/")}
    assert got, "no DNS capture path ran"
    assert "per-domain/socket" not in got          # the socket-call tracepoints came in 6.3
    for v in got.values():
        assert v == {"connects": 14, "established": 14, "ips": 2}
