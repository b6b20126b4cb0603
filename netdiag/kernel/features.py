"""What the running kernel offers, found by trying (never by kernel version).

Each probe is cheap (a bpf() syscall with a two-instruction program, a file in tracefs), so
``doctor`` and the probe engine can call them at start-up without compiling anything.
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from netdiag.errors import BpfSyscallError, FeatureMissing
from netdiag.kernel import bpfsys, tracefs
from netdiag.kernel import btf as btfmod

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def _why(e: Exception) -> str:
    if isinstance(e, BpfSyscallError):
        return errno.errorcode.get(e.errno, str(e.errno))
    return str(e)


def bpf_syscall() -> tuple[bool, str]:
    try:
        bpfsys.close_fd(bpfsys.map_create(bpfsys.BPF_MAP_TYPE_ARRAY, 4, 8, 1))
    except (BpfSyscallError, FeatureMissing) as e:
        return False, f"bpf() failed: {_why(e)}"
    return True, "bpf() creates maps"


def ringbuf() -> tuple[bool, str]:
    try:
        bpfsys.close_fd(bpfsys.ringbuf_create(1 << 16))
    except (BpfSyscallError, FeatureMissing) as e:
        return False, f"ring buffer map refused ({_why(e)}): perf buffer is used"
    return True, "BPF ring buffer maps work"


NOOP = bytes((0xB7, 0, 0, 0, 0, 0, 0, 0,      # r0 = 0
              0x95, 0, 0, 0, 0, 0, 0, 0))     # exit


BPF_FUNC_GET_NETNS_COOKIE = 122
NETNS_COOKIE_SKB = bytes((0x85, 0, 0, 0)) + BPF_FUNC_GET_NETNS_COOKIE.to_bytes(4, "little") + bytes(
    (0xB7, 0, 0, 0, 1, 0, 0, 0,                  # r0 = 1 (the packet goes on)
     0x95, 0, 0, 0, 0, 0, 0, 0))                 # after r0 = bpf_get_netns_cookie(skb); exit


def cgroup_skb_netns_cookie() -> tuple[bool, str]:
    """Load (never attach) a cgroup_skb program that calls bpf_get_netns_cookie(skb): what the
    cgroup_skb DNS capture needs to tell one namespace's packets from another's."""
    try:
        bpfsys.close_fd(bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_CGROUP_SKB, NETNS_COOKIE_SKB))
    except (BpfSyscallError, FeatureMissing) as e:
        return False, f"bpf_get_netns_cookie() refused in cgroup_skb programs ({_why(e)})"
    return True, "cgroup_skb programs can read the namespace cookie"


def _load_and_attach(prog_type: int, what: str, attach_type: int = 0, btf_id: int = 0,
                     tp_name: str | None = None) -> tuple[bool, str]:
    """Load a do-nothing program (r0 = 0; exit) and attach it with BPF_RAW_TRACEPOINT_OPEN (by
    ``tp_name`` for a raw tracepoint, by the program's BTF target otherwise); detach at once."""
    try:
        fd = bpfsys.prog_load(prog_type, NOOP, expected_attach_type=attach_type, attach_btf_id=btf_id)
    except (BpfSyscallError, FeatureMissing) as e:
        return False, f"{what} program load refused ({_why(e)})"
    try:
        bpfsys.close_fd(bpfsys.raw_tracepoint_open(fd, tp_name))
    except BpfSyscallError as e:
        return False, f"{what} attach refused ({_why(e)})"
    finally:
        bpfsys.close_fd(fd)
    return True, ""


def fentry(func: str = "tcp_v4_connect") -> tuple[bool, str]:
    """Load and attach a do-nothing fentry program to ``func``: the only honest test."""
    try:
        btf_id = btfmod.kernel_btf().find(btfmod.FUNC, func)
    except (FeatureMissing, KeyError) as e:
        return False, f"no BTF for {func}: {e}"
    ok, note = _load_and_attach(bpfsys.BPF_PROG_TYPE_TRACING, "fentry", bpfsys.BPF_TRACE_FENTRY, btf_id)
    return ok, note or f"fentry on {func} loads and attaches"


def btf_tracepoint(event: str = "inet_sock_set_state") -> tuple[bool, str]:
    """Load a do-nothing BTF-typed tracepoint program (tp_btf) on ``event`` and attach it."""
    try:
        btf_id = btfmod.kernel_btf().find(btfmod.TYPEDEF, "btf_trace_" + event)
    except (FeatureMissing, KeyError) as e:
        return False, f"no BTF for tracepoint {event}: {e}"
    ok, note = _load_and_attach(bpfsys.BPF_PROG_TYPE_TRACING, "tp_btf", bpfsys.BPF_TRACE_RAW_TP, btf_id)
    return ok, note or f"tp_btf on {event} loads and attaches"


# r1 = 0; *(u64 *)(r10 - 8) = r1 (as an immediate store); r0 = 0; r2 = 1;
# r0 = cmpxchg((u64 *)(r10 - 8), r0, r2); r0 = 0; exit
CMPXCHG_PROG = bytes((0x7A, 0x0A, 0xF8, 0xFF, 0, 0, 0, 0,
                      0xB7, 0x00, 0, 0, 0, 0, 0, 0,
                      0xB7, 0x02, 0, 0, 1, 0, 0, 0,
                      0xDB, 0x2A, 0xF8, 0xFF, 0xF1, 0, 0, 0,
                      0xB7, 0x00, 0, 0, 0, 0, 0, 0,
                      0x95, 0, 0, 0, 0, 0, 0, 0))
_cmpxchg: tuple[bool, str] | None = None


def atomic_cmpxchg() -> tuple[bool, str]:
    """Does the verifier take BPF compare-and-exchange (5.12 on)? The slot tables claim their
    slots with it; without it they are left empty and every entry takes their LRU hash."""
    global _cmpxchg
    if _cmpxchg is None:
        try:
            bpfsys.close_fd(bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_SOCKET_FILTER, CMPXCHG_PROG, name="nd_cmpxchg"))
            _cmpxchg = (True, "BPF compare-and-exchange loads")
        except (BpfSyscallError, FeatureMissing) as e:
            _cmpxchg = (False, f"BPF compare-and-exchange refused ({_why(e)})")
    return _cmpxchg


def raw_tracepoint(event: str = "inet_sock_set_state") -> tuple[bool, str]:
    """Load a do-nothing raw tracepoint program and attach it to ``event``: BPF gets the
    tracepoint's arguments directly, without the record a classic tracepoint fills first."""
    ok, note = _load_and_attach(bpfsys.BPF_PROG_TYPE_RAW_TRACEPOINT, "raw tracepoint", tp_name=event)
    return ok, note or f"raw tracepoint on {event} loads and attaches"


@lru_cache(maxsize=1)
def _kallsyms() -> frozenset:
    names = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in ("t", "T"):
                    names.add(parts[2])
    except OSError:
        pass
    return frozenset(names)


def kprobes() -> tuple[bool, str]:
    root = None
    try:
        root = tracefs.tracefs_root()
    except FeatureMissing:
        pass
    if Path("/sys/bus/event_source/devices/kprobe").is_dir() or (root and (root / "kprobe_events").exists()):
        return True, "kprobe PMU / kprobe_events present"
    return False, "kernel built without CONFIG_KPROBES (no kprobe PMU, no kprobe_events)"


def kprobe_target(func: str) -> bool:
    return func in _kallsyms()


def capabilities() -> tuple[bool, str]:
    if os.geteuid() == 0:
        return True, "running as root"
    try:
        with open("/proc/self/status") as f:
            capeff = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    except (OSError, StopIteration):
        capeff = 0
    have = lambda c: bool(capeff >> c & 1)  # noqa: E731
    if have(CAP_SYS_ADMIN) or (have(CAP_BPF) and have(CAP_PERFMON)):
        return True, "CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN)"
    return False, "not root and lacking CAP_BPF+CAP_PERFMON"


def require_privileges() -> None:
    from netdiag.errors import NotPrivileged
    ok, _ = capabilities()
    if not ok:
        raise NotPrivileged("netdiag needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: "
                            "run it with sudo")


def btf() -> tuple[bool, str]:
    try:
        b = btfmod.kernel_btf()
        btfmod.probe_offsets(b)
        return True, f"{btfmod.VMLINUX_BTF} ({len(b.types)} types); socket/netns offsets resolved"
    except FeatureMissing as e:
        return False, str(e)
    except KeyError as e:
        return False, f"BTF lacks a member netdiag needs: {e}"


def _release_of(build: Path) -> str | None:
    """The kernel release a header tree was built for (UTS_RELEASE, as `uname -r` prints it)."""
    p = build / "include/generated/utsrelease.h"
    if p.is_file():
        m = re.search(r'UTS_RELEASE\s+"([^"]+)"', p.read_text())
        if m:
            return m.group(1)
    p = build / "include/config/kernel.release"
    return p.read_text().strip() if p.is_file() else None


def headers() -> tuple[str, str]:
    """("matching"|"stand-in"|"missing", detail)."""
    running = os.uname().release
    build = Path(f"/lib/modules/{running}/build")
    if not (build / "include").is_dir():
        return "missing", f"{build} absent"
    rel = _release_of(build.resolve())
    if rel == running:
        return "matching", f"{build} -> {build.resolve()}"
    return "stand-in", f"{build} -> {build.resolve()} ({rel or 'unknown version'}, not {running})"


def conntrack_netlink() -> tuple[bool, str]:
    try:
        from pyroute2 import NFCTSocket
        with NFCTSocket() as s:
            stats = s.stat()
        return True, f"ctnetlink answers ({len(stats)} CPUs of stats)"
    except Exception as e:  # pyroute2 raises NetlinkError, OSError, ...
        return False, f"ctnetlink unavailable: {e}"


def bcc_importable() -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401
        return True, f"bcc {getattr(bcc, '__version__', '?')} from {Path(bcc.__file__).parent}"
    except Exception as e:
        return False, f"cannot import bcc ({e})"


@dataclass
class Features:
    """The feature set the engine plans with (cheap to compute)."""
    kprobes: bool
    fentry: bool
    ringbuf: bool
    btf_offsets: dict = field(default_factory=dict)
    headers: str = "missing"
    notes: dict = field(default_factory=dict)
    raw_tp: bool = False        # raw tracepoints load and attach, and the sock offsets they need exist
    btf_tp: bool = False        # BTF-typed tracepoints (tp_btf) load and attach, on top of raw_tp

    @classmethod
    def probe(cls, want_fentry: bool = True) -> "Features":
        kp, kp_note = kprobes()
        fe, fe_note = fentry() if want_fentry else (False, "not tried")
        rb, rb_note = ringbuf()
        try:
            offsets = btfmod.probe_offsets(btfmod.kernel_btf())
        except (FeatureMissing, KeyError):
            offsets = {}
        if offsets:
            offsets.update(btfmod.probe_optional_offsets(btfmod.kernel_btf()))
        try:
            offsets.update(btfmod.probe_ct_offsets(btfmod.kernel_btf()) if offsets else {})
        except KeyError:
            pass                # no conntrack in BTF: the "snat" kprobe path is unavailable
        raw, raw_note = (False, "no BTF socket offsets")
        if offsets:
            try:
                offsets.update(btfmod.probe_rawtp_offsets(btfmod.kernel_btf()))
                raw, raw_note = raw_tracepoint()
            except KeyError as e:
                raw_note = f"BTF lacks a socket field raw tracepoints read: {e}"
        btf_tp, btf_note = btf_tracepoint() if raw else (False, "needs raw tracepoints")
        hdr, _ = headers()
        return cls(kp, fe, rb, offsets, hdr, {"kprobes": kp_note, "fentry": fe_note, "ringbuf": rb_note,
                                              "raw_tracepoint": raw_note, "btf_tracepoint": btf_note}, raw, btf_tp)
