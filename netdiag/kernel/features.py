"""What the running kernel offers, found by trying (never by kernel version).

Each probe is cheap (a bpf() syscall with a two-instruction program, a file in tracefs), so
``doctor`` and the probe engine can call them at start-up without compiling anything.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from netdiag.kernel import btf as btfmod
from netdiag.kernel import tracefs
from netdiag.errors import FeatureMissing

_libc = ctypes.CDLL(None, use_errno=True)
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)

BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 0, 5, 17
BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_RINGBUF = 2, 27
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_TRACE_FENTRY = 24
BPF_TRACE_RAW_TP = 23
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def _bpf(cmd: int, attr: ctypes.Array) -> tuple[int, int]:
    fd = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd, (ctypes.get_errno() if fd < 0 else 0)


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _map_create(map_type: int, key: int, value: int, entries: int) -> tuple[int, int]:
    attr = (ctypes.c_uint8 * 128)()
    ctypes.memmove(attr, (ctypes.c_uint32 * 4)(map_type, key, value, entries), 16)
    return _bpf(BPF_MAP_CREATE, attr)


def bpf_syscall() -> tuple[bool, str]:
    fd, err = _map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    _close(fd)
    if fd >= 0:
        return True, "bpf() creates maps"
    return False, f"bpf() failed: {errno.errorcode.get(err, err)}"


def ringbuf() -> tuple[bool, str]:
    fd, err = _map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, 1 << 16)
    _close(fd)
    if fd >= 0:
        return True, "BPF ring buffer maps work"
    return False, f"ring buffer map refused ({errno.errorcode.get(err, err)}): perf buffer is used"


def _load_and_attach(prog_type: int, what: str, attach_type: int = 0, btf_id: int = 0,
                     tp_name: str | None = None) -> tuple[bool, str]:
    """Load a do-nothing program (r0 = 0; exit) and attach it with BPF_RAW_TRACEPOINT_OPEN (by
    ``tp_name`` for a raw tracepoint, by the program's BTF target otherwise); detach at once."""
    insns = (ctypes.c_uint8 * 16)(0xB7, 0, 0, 0, 0, 0, 0, 0,   # r0 = 0
                                  0x95, 0, 0, 0, 0, 0, 0, 0)   # exit
    lic = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_uint8 * 128)()
    for off, ctype, value in ((0, ctypes.c_uint32, prog_type), (4, ctypes.c_uint32, 2),
                              (8, ctypes.c_uint64, ctypes.addressof(insns)),
                              (16, ctypes.c_uint64, ctypes.addressof(lic)),
                              (68, ctypes.c_uint32, attach_type), (108, ctypes.c_uint32, btf_id)):
        ctype.from_buffer(attr, off).value = value
    fd, err = _bpf(BPF_PROG_LOAD, attr)
    if fd < 0:
        return False, f"{what} program load refused ({errno.errorcode.get(err, err)})"
    try:
        name = ctypes.create_string_buffer(tp_name.encode()) if tp_name else None
        attr2 = (ctypes.c_uint8 * 16)()
        if name is not None:
            ctypes.c_uint64.from_buffer(attr2, 0).value = ctypes.addressof(name)
        ctypes.c_uint32.from_buffer(attr2, 8).value = fd
        link, err = _bpf(BPF_RAW_TRACEPOINT_OPEN, attr2)
        _close(link)
        if link < 0:
            return False, f"{what} attach refused ({errno.errorcode.get(err, err)})"
        return True, ""
    finally:
        _close(fd)


def fentry(func: str = "tcp_v4_connect") -> tuple[bool, str]:
    """Load and attach a do-nothing fentry program to ``func``: the only honest test."""
    try:
        b = btfmod.kernel_btf()
        from netdiag.kernel.btf import FUNC
        btf_id = b.find(FUNC, func)
    except (FeatureMissing, KeyError) as e:
        return False, f"no BTF for {func}: {e}"
    ok, note = _load_and_attach(BPF_PROG_TYPE_TRACING, "fentry", BPF_TRACE_FENTRY, btf_id)
    return ok, note or f"fentry on {func} loads and attaches"


def btf_tracepoint(event: str = "inet_sock_set_state") -> tuple[bool, str]:
    """Load a do-nothing BTF-typed tracepoint program (tp_btf) on ``event`` and attach it."""
    try:
        from netdiag.kernel.btf import TYPEDEF
        btf_id = btfmod.kernel_btf().find(TYPEDEF, "btf_trace_" + event)
    except (FeatureMissing, KeyError) as e:
        return False, f"no BTF for tracepoint {event}: {e}"
    ok, note = _load_and_attach(BPF_PROG_TYPE_TRACING, "tp_btf", BPF_TRACE_RAW_TP, btf_id)
    return ok, note or f"tp_btf on {event} loads and attaches"


def load_tp_btf(insns: bytes, event: str, name: str = "") -> tuple[int, int]:
    """Load compiled bytecode (BCC's ``dump_func``: map fds already in it) as a tp_btf program
    on ``event`` and attach it; returns (program fd, link fd). OSError with the verifier's last
    words when the kernel refuses."""
    from netdiag.kernel.btf import TYPEDEF
    tid = btfmod.kernel_btf().find(TYPEDEF, "btf_trace_" + event)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 22)

    def load(log_level: int) -> tuple[int, int]:
        attr = (ctypes.c_uint8 * 128)()
        fields = [(0, ctypes.c_uint32, BPF_PROG_TYPE_TRACING), (4, ctypes.c_uint32, len(insns) // 8),
                  (8, ctypes.c_uint64, ctypes.addressof(code)), (16, ctypes.c_uint64, ctypes.addressof(lic)),
                  (68, ctypes.c_uint32, BPF_TRACE_RAW_TP), (108, ctypes.c_uint32, tid)]
        if log_level:
            fields += [(24, ctypes.c_uint32, log_level), (28, ctypes.c_uint32, len(log)),
                       (32, ctypes.c_uint64, ctypes.addressof(log))]
        for off, ctype, value in fields:
            ctype.from_buffer(attr, off).value = value
        if name:
            ctypes.memmove(ctypes.addressof(attr) + 48, name.encode()[:15], min(len(name), 15))
        return _bpf(BPF_PROG_LOAD, attr)

    fd, err = load(0)
    if fd < 0:                         # again with the verifier's log, for the message
        fd2, _ = load(1)
        _close(fd2)
        tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(err, f"tp_btf {event} refused ({errno.errorcode.get(err, err)}): {' / '.join(tail)}")
    attr2 = (ctypes.c_uint8 * 16)()
    ctypes.c_uint32.from_buffer(attr2, 8).value = fd
    link, err = _bpf(BPF_RAW_TRACEPOINT_OPEN, attr2)
    if link < 0:
        _close(fd)
        raise OSError(err, f"tp_btf {event} attach refused ({errno.errorcode.get(err, err)})")
    return fd, link


def raw_tracepoint(event: str = "inet_sock_set_state") -> tuple[bool, str]:
    """Load a do-nothing raw tracepoint program and attach it to ``event``: BPF gets the
    tracepoint's arguments directly, without the record a classic tracepoint fills first."""
    ok, note = _load_and_attach(BPF_PROG_TYPE_RAW_TRACEPOINT, "raw tracepoint", tp_name=event)
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
            capeff = next(int(l.split()[1], 16) for l in f if l.startswith("CapEff:"))
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
