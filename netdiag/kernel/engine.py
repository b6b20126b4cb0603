"""The probe engine: plans a hook per signal, compiles bpf/*.c into one BCC module, attaches,
streams events, reads counters and detaches.

Per signal the engine tries, in order, kprobe/kretprobe, fentry/fexit, then the tracepoint
fallback (docs/architecture.md), and records which one it got. Kernel structs are never read through
headers: pointer walks use offsets from the running kernel's BTF (netdiag/kernel/btf.py), addresses come
from tracepoint fields or UAPI sockaddr structs, enum values from tracefs format files.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from netdiag.errors import BccMissing, BpfLoadError, FeatureMissing
from netdiag.kernel import tracefs
from netdiag.kernel.bpfsrc import source_dir
from netdiag.kernel.features import Features, atomic_cmpxchg, kprobe_target, require_privileges

MODES = ("kprobe", "fentry", "tracepoint")
# indices of nd_stats (bpf/nd_events.h ND_STAT_*)
STAT_NAMES = ("connect_attempts", "connects_ok", "connects_failed", "accepts", "lost_events",
              "accepts_untracked", "dst_keys_inserted", "resets_out", "resets_in", "proc_keys_inserted",
              "proc_dst_keys_inserted")
MODE_MACRO = {"kprobe": "ND_MODE_KPROBE", "fentry": "ND_MODE_FENTRY", "tracepoint": "ND_MODE_TRACEPOINT"}
TCP_STATES = ("TCP_ESTABLISHED", "TCP_SYN_SENT", "TCP_SYN_RECV", "TCP_CLOSE", "TCP_TIME_WAIT", "TCP_NEW_SYN_RECV")


@dataclass(frozen=True)
class SignalSpec:
    name: str
    source: str              # bpf/<source>
    kfuncs: tuple            # kernel functions the kprobe/fentry modes hook
    kprobes: tuple           # (kernel function, BPF function, is_return)
    tracepoints: tuple       # what the tracepoint mode needs besides the common ones
    common: tuple            # tracepoints every mode needs
    btf_needed: bool         # the tracepoint mode walks pointers through BTF offsets
    modes: tuple = MODES     # the modes this signal has at all
    btf_group: str = ""      # BTF offsets the kprobe/fentry modes need beyond the socket ones


SIGNALS = {
    "connect": SignalSpec(
        "connect", "connect.c",
        kfuncs=("tcp_v4_connect", "tcp_v6_connect"),
        kprobes=(("tcp_v4_connect", "nd_kp_tcp_connect", False),
                 ("tcp_v6_connect", "nd_kp_tcp_connect", False),
                 ("tcp_v4_connect", "nd_kretp_tcp_connect", True),
                 ("tcp_v6_connect", "nd_kretp_tcp_connect", True)),
        tracepoints=("syscalls:sys_exit_connect",),
        common=("sock:inet_sock_set_state",),
        btf_needed=False,
    ),
    "accept": SignalSpec(
        "accept", "accept.c",
        kfuncs=("inet_csk_accept",),
        kprobes=(("inet_csk_accept", "nd_kretp_inet_csk_accept", True),),
        tracepoints=("syscalls:sys_exit_accept4", "syscalls:sys_exit_accept"),
        common=("sock:inet_sock_set_state",),
        btf_needed=True,
    ),
    # tracepoint-only signals (the same hook on every kernel)
    "resets": SignalSpec("resets", "resets.c", (), (), ("tcp:tcp_send_reset", "tcp:tcp_receive_reset"), (),
                         btf_needed=False, modes=("tracepoint",)),
    "retrans": SignalSpec("retrans", "retrans.c", (), (),
                          ("tcp:tcp_retransmit_skb", "tcp:tcp_retransmit_synack"), (),
                          btf_needed=False, modes=("tracepoint",)),
    "drops": SignalSpec("drops", "drops.c", (), (), ("skb:kfree_skb",), (), btf_needed=False,
                        modes=("tracepoint",)),
    # kprobe-only: without kprobes, SNAT and conntrack come from ctnetlink (netdiag/sources/conntrack/)
    "snat": SignalSpec(
        "snat", "snat.c",
        kfuncs=("nf_nat_setup_info", "__nf_conntrack_confirm", "nf_ct_delete", "nf_conntrack_free"),
        kprobes=(("nf_nat_setup_info", "nd_kp_nat_setup", False),
                 ("nf_nat_setup_info", "nd_kretp_nat_setup", True),
                 ("__nf_conntrack_confirm", "nd_kp_ct_confirm", False),
                 ("__nf_conntrack_confirm", "nd_kretp_ct_confirm", True),
                 ("nf_ct_delete", "nd_kp_ct_release", False),
                 ("nf_conntrack_free", "nd_kp_ct_release", False)),
        tracepoints=(), common=(), btf_needed=True, modes=("kprobe",), btf_group="conntrack",
    ),
}
# pasted after nd_common.h (and agg.c when aggregating) in this order, then state.c (shared)
SOURCE_ORDER = ("connect", "accept", "resets", "retrans", "drops", "snat")
AGGREGATE_ONLY = ("resets", "retrans", "drops", "snat")     # these only count, they never stream
# signals a caller may ask for that are left out (not an error) where the kernel cannot hook them
OPTIONAL = ("snat",)


# watch: outbound sockets from connect() to CLOSE sit in a direct-mapped table of this many slots
# (bpf/nd_common.h); one whose slot is taken goes to an LRU hash of max_socks entries (ND_MAX_SOCKS)
SOCKET_SLOTS = 65536
MAX_SOCKS = 262144
# `watch --max-socks` by default: one entry per this many bytes of the node's memory, rounded up to
# a power of two, within these bounds (see node_max_socks)
MAX_SOCKS_PER_BYTES = 32 * 1024
MAX_SOCKS_BOUNDS = (MAX_SOCKS, 1 << 20)
# kernel memory of one entry of that hash: 8-byte key, 64-byte struct nd_conn, the hash element's
# header and LRU node (the memlock the kernel reports for the map / max_entries, measured on 6.18)
SOCK_ENTRY_BYTES = 136
# watch: the first destinations each CPU counts have their rows in a direct-mapped per-CPU table of
# this many slots (bpf/agg.c nd_dst); the others in the LRU hash bounded by --max-dsts
DST_SLOTS = 1024
# watch --per-process: processes (tgid, netns) counted in the kernel's bounded LRU hash (nd_procs)
MAX_PROCS = 4096

# --tracepoints NAME -> the engine's (raw_tracepoints, btf_tracepoints)
TRACEPOINT_FLAVOURS = {"auto": (None, None), "btf": (True, True), "raw": (True, False), "classic": (False, False)}


def flavour_kwargs(name: str) -> dict:
    raw, btf = TRACEPOINT_FLAVOURS[name]
    return {"raw_tracepoints": raw, "btf_tracepoints": btf}


def flavour_of(engine) -> str:
    """What the shared tracepoints attached as: btf, raw or classic."""
    return "btf" if getattr(engine, "btf_tp", False) else "raw" if engine.raw_tp else "classic"


def node_max_socks(meminfo: str = "/proc/meminfo") -> int:
    """The default bound of watch's hash of outbound sockets (--max-socks): one entry per 32 KiB of
    the node's memory (MemTotal), rounded up to a power of two, at least 262,144 and at most
    1,048,576. A held TCP connection costs the kernel about 5 KB of slab on each end (10 KB for a
    loopback pair, docs/performance.md), so the bound follows the connections a node can hold; each entry costs SOCK_ENTRY_BYTES of kernel memory whether
    used or not (the map is preallocated): at most about 143 MB."""
    lo, hi = MAX_SOCKS_BOUNDS
    try:
        with open(meminfo) as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return lo
    want = max(1, kib * 1024 // MAX_SOCKS_PER_BYTES)
    return min(hi, max(lo, 1 << (want - 1).bit_length()))


def ephemeral_range() -> tuple[int, int] | None:
    """net.ipv4.ip_local_port_range of netdiag's namespace (namespaces keep the default unless
    changed): socket-less RSTs from these ports are counted per address, not per port."""
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    return (lo, hi) if 0 < lo <= hi < 65536 else None


def bpf_dir() -> Path:
    """bpf/ sources: the package ``netdiag.bpf`` wherever netdiag is installed."""
    return source_dir()


def _tp_exists(name: str) -> bool:
    cat, ev = name.split(":")
    return tracefs.tracepoint_exists(cat, ev)


def mode_available(spec: SignalSpec, mode: str, feats: Features) -> tuple[bool, str]:
    """Can ``spec`` run in ``mode`` here? (yes/no, the missing feature when no)."""
    if mode not in spec.modes:
        return False, f"{mode} variant (netdiag hooks {spec.name} with {'/'.join(spec.modes)} only)"
    missing_tp = [tp for tp in spec.common if not _tp_exists(tp)]
    if missing_tp:
        return False, f"tracepoint {missing_tp[0]}"
    if spec.btf_group == "conntrack" and mode in ("kprobe", "fentry"):
        from netdiag.kernel.btf import CT_OFFSETS, CT_SIZES
        absent = [n for n in (*CT_OFFSETS, *CT_SIZES) if n not in feats.btf_offsets]
        if absent:
            return False, f"BTF offsets of the conntrack structs ({absent[0]})"
    if mode == "kprobe":
        if not feats.kprobes:
            return False, "kprobes (CONFIG_KPROBES)"
        absent = [f for f in spec.kfuncs if not kprobe_target(f)]
        return (False, f"kernel function {absent[0]}") if absent else (True, "")
    if mode == "fentry":
        return (True, "") if feats.fentry else (False, "fentry/fexit (BPF trampolines)")
    missing_tp = [tp for tp in spec.tracepoints if not _tp_exists(tp)]
    if missing_tp:
        return False, f"tracepoint {missing_tp[0]}"
    if spec.btf_needed and not feats.btf_offsets:
        return False, "BTF (/sys/kernel/btf/vmlinux) for socket offsets"
    return True, ""


def plan_modes(signals: Iterable[str], requested: str, feats: Features) -> dict[str, str]:
    """Pick a mode per signal. ``requested`` is auto or a mode every signal must use."""
    plan = {}
    for name in signals:
        spec = SIGNALS[name]
        if requested != "auto" and requested in spec.modes:
            ok, missing = mode_available(spec, requested, feats)
            if not ok:
                raise FeatureMissing(missing, f"--mode {requested} is impossible for {name} on this kernel: "
                                              f"{missing} is not available (netdiag doctor shows what is)")
            plan[name] = requested
            continue
        reasons = []
        for mode in MODES:
            ok, missing = mode_available(spec, mode, feats)
            if ok:
                plan[name] = mode
                break
            reasons.append(f"{mode}: no {missing}")
        else:
            raise FeatureMissing(reasons[-1], f"no way to trace {name} on this kernel ({'; '.join(reasons)})")
    return plan


def reset_format_flags(strict: bool = True) -> list[str]:
    """tcp:tcp_send_reset's layout on the running kernel -> -D flags for resets.c."""
    try:
        text = tracefs.read_format("tcp", "tcp_send_reset")
    except (FeatureMissing, PermissionError):
        if strict:
            raise
        return ["-DND_RST_SOCKADDR", "-DND_RST_HAS_REASON"]
    fields = tracefs.parse_fields(text)
    flags = []
    if "sport" not in fields:
        flags.append("-DND_RST_SOCKADDR")
    if "reason" in fields:
        flags.append("-DND_RST_HAS_REASON")
    return flags


def _fields(category: str, event: str) -> set[str] | None:
    try:
        return set(tracefs.parse_fields(tracefs.read_format(category, event)))
    except (FeatureMissing, PermissionError, OSError):
        return None


def tcp_format_flags(strict: bool = True) -> list[str]:
    """The tcp:* tracepoints' layout on the running kernel -> -D flags. Before 5.13 or so they
    carry no ``family``: the address family then comes from ``saddr_v6``, which those kernels
    fill with a v4-mapped address for IPv4 sockets."""
    fields = _fields("tcp", "tcp_retransmit_skb")
    if fields is None:
        if strict:
            tracefs.read_format("tcp", "tcp_retransmit_skb")      # raises the typed error
        return []
    return [] if "family" in fields else ["-DND_TCP_TP_NO_FAMILY"]


def drop_format_flags(strict: bool = True) -> list[str]:
    """skb:kfree_skb's layout -> -D flags: the drop ``reason`` exists from 5.17 on; before, drops
    are counted without one (netdiag reports the reasons as unknown, not as zeros)."""
    fields = _fields("skb", "kfree_skb")
    if fields is None:
        return [] if strict is False else ["-DND_DROP_HAS_REASON"]
    return ["-DND_DROP_HAS_REASON"] if "reason" in fields else []


def signal_gaps() -> dict[str, str]:
    """What this kernel's tracepoints cannot tell, by record field -> why (empty: nothing)."""
    gaps = {}
    kfree = _fields("skb", "kfree_skb")
    if kfree is not None and "reason" not in kfree:
        gaps["drops_by_reason"] = ("skb:kfree_skb has no drop reason before kernel 5.17: drops are counted per "
                                   "namespace without one; listen overflows come from the namespace's "
                                   "ListenOverflows counter")
    rst = _fields("tcp", "tcp_send_reset")
    if rst is not None and "reason" not in rst:
        gaps["resets_out_by_reason"] = ("tcp:tcp_send_reset has no reset reason before kernel 6.10: resets sent "
                                        "from a socket are counted without one; a reset sent with no socket "
                                        "(NO_SOCKET: a connect to a closed port) is not traced at all, the "
                                        "namespace's Tcp OutRsts counter (nstat) counts it")
    return gaps


@contextlib.contextmanager
def _captured_stderr():
    """Capture fd 2 (where libbcc writes verifier logs) into a buffer the caller can read."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


# tp_btf programs (-DND_BTF_TP) and their tracepoints; BCC compiles them, the engine loads them
BTF_PROGRAMS = (("nd_btf_inet_sock_set_state", "inet_sock_set_state"),
                ("nd_btf_tcp_receive_reset", "tcp_receive_reset"),
                ("nd_btf_tcp_send_reset", "tcp_send_reset"))


class ProbeEngine:
    """Load, attach, read and detach netdiag's BPF programs.

    >>> eng = ProbeEngine(mode="auto")          # doctest: +SKIP
    >>> eng.start(on_event=print); eng.poll(100); eng.close()
    """

    def __init__(self, signals: Iterable[str] = ("connect", "accept"), mode: str = "auto",
                 pid: int | None = None, netns: int | None = None, features: Features | None = None,
                 stream: bool = True, aggregate: bool = False, max_dsts: int = 16384,
                 syscall_tracepoints: bool = True, raw_tracepoints: bool | None = None,
                 btf_tracepoints: bool | None = None, socket_slots: int = SOCKET_SLOTS,
                 dst_slots: int = DST_SLOTS, per_process: bool = False, max_procs: int = MAX_PROCS,
                 proc_dsts: bool = False, max_socks: int = MAX_SOCKS):
        if mode != "auto" and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.signals = tuple(signals)
        self.requested_mode = mode
        self.pid = pid
        self.netns = netns
        self.features = features or Features.probe(want_fentry=mode in ("auto", "fentry"))
        self.syscall_tracepoints = syscall_tracepoints
        if socket_slots < 2 or socket_slots & (socket_slots - 1):
            raise ValueError(f"socket_slots must be a power of two >= 2, not {socket_slots}")
        self.socket_slots = socket_slots
        if dst_slots < 1 or dst_slots & (dst_slots - 1):
            raise ValueError(f"dst_slots must be a power of two >= 1, not {dst_slots}")
        self.dst_slots = dst_slots
        if max_socks < 1:
            raise ValueError(f"max_socks must be at least 1, not {max_socks}")
        self.max_socks = max_socks
        plan = plan_modes([s for s in self.signals if s not in OPTIONAL], mode, self.features)
        self.unavailable = {}
        for s in self.signals:
            if s not in OPTIONAL:
                continue
            if mode != "auto" and mode not in SIGNALS[s].modes:
                self.unavailable[s] = f"no {mode} variant"
                continue
            try:
                plan.update(plan_modes([s], mode, self.features))
            except FeatureMissing as e:
                self.unavailable[s] = str(e)
        if not syscall_tracepoints and plan.get("accept") == "tracepoint":
            # the tracepoint accept path needs syscalls:sys_exit_accept*; without it, handshakes
            # completed on listeners are still counted by the state tracepoint
            plan.pop("accept")
        self.plan = plan
        # The tracepoints every mode shares (state, resets, drops) attach as raw tracepoints where
        # the kernel allows it (cheaper per event); classic ones otherwise or when asked.
        if raw_tracepoints and not self.features.raw_tp:
            raise FeatureMissing("raw tracepoints", self.features.notes.get("raw_tracepoint", "unavailable"))
        self.raw_tp = self.features.raw_tp if raw_tracepoints is None else bool(raw_tracepoints)
        # The state and RST-received tracepoints go BTF-typed (tp_btf: socket fields are plain
        # loads) where the kernel allows it and no kprobe program shares their helpers (a kprobe's
        # socket pointer is untyped).
        kprobed = "kprobe" in (self.plan.get("connect"), self.plan.get("accept"))
        if btf_tracepoints:
            if not self.raw_tp or not self.features.btf_tp:
                raise FeatureMissing("BTF tracepoints", self.features.notes.get("btf_tracepoint", "unavailable"))
            if kprobed:
                raise FeatureMissing("BTF tracepoints", "not with kprobe connect/accept programs")
        self.btf_tp = bool(self.raw_tp and self.features.btf_tp and not kprobed and btf_tracepoints is not False)
        self._btf_auto = btf_tracepoints is None
        self.btf_fds: list[int] = []        # tp_btf links (and programs), ours to close
        self.btf_loaded: list[tuple[str, str]] = []   # (function, tracepoint) of those programs
        self.kp_attached: list[tuple[str, str, str]] = []   # (function, kprobe|kretprobe, kernel function)
        self.btf_refused: str | None = None  # why auto fell back from tp_btf to raw tracepoints
        self.bpf = None
        self.buffer = "ringbuf" if self.features.ringbuf else "perf"
        self._perf_lost = 0
        self.stream = stream
        self.aggregate = aggregate or any(s in AGGREGATE_ONLY for s in self.signals)
        self.max_dsts = max_dsts
        # per-process counters (watch --per-process): compiled in only when asked
        self.per_process = bool(per_process and self.aggregate)
        self.max_procs = max_procs
        # connects per (process, destination): per-domain attribution by who resolved
        self.proc_dsts = bool(proc_dsts and self.aggregate)

    @classmethod
    def for_dump(cls, signals, mode="auto", pid=None, netns=None) -> "ProbeEngine":
        """An engine good for ``dump()`` only; works without root (plans tracepoints if it cannot probe)."""
        try:
            return cls(signals, mode=mode, pid=pid, netns=netns)
        except FeatureMissing:
            eng = cls.__new__(cls)
            eng.signals, eng.requested_mode, eng.pid, eng.netns = tuple(signals), mode, pid, netns
            eng.features = Features.probe(want_fentry=False)
            eng.plan = {s: (mode if mode != "auto" else "tracepoint") for s in eng.signals}
            eng.bpf, eng.buffer, eng._perf_lost, eng.unavailable = None, "ringbuf", 0, {}
            eng.stream, eng.aggregate, eng.max_dsts, eng.raw_tp = True, False, 16384, False
            eng.socket_slots, eng.dst_slots, eng.max_socks = SOCKET_SLOTS, DST_SLOTS, MAX_SOCKS
            eng.btf_tp, eng._btf_auto, eng.btf_fds, eng.btf_refused = False, False, [], None
            eng.btf_loaded = []
            eng.kp_attached = []
            eng.per_process, eng.max_procs, eng.proc_dsts = False, MAX_PROCS, False
            return eng

    # -- the program ----------------------------------------------------------------------------
    def cflags(self, strict: bool = True) -> list[str]:
        flags = [f"-I{bpf_dir()}"]
        try:
            states = tracefs.tcp_states()
            for name in TCP_STATES:
                flags.append(f"-DND_{name}={tracefs.enum_value(states, name)}")
        except (FeatureMissing, KeyError, PermissionError):
            if strict:
                raise
            flags += [f"-DND_{name}=/*read-from-tracefs-at-run-time*/" for name in TCP_STATES]
        for sig, mode in self.plan.items():
            flags.append(f"-DND_{sig.upper()}_MODE={MODE_MACRO[mode]}")
        for name, off in sorted(self.features.btf_offsets.items()):
            flags.append(f"-D{name}={off}")
        if self.plan.get("accept") == "fentry":
            from netdiag.kernel.btf import kernel_btf
            flags.append(f"-DND_ACCEPT_NARGS={kernel_btf().func_nargs('inet_csk_accept')}")
        if getattr(self, "raw_tp", False):
            flags.append("-DND_RAW_TP")
        if getattr(self, "btf_tp", False):
            flags.append("-DND_BTF_TP")
        if self.buffer == "ringbuf":
            flags.append("-DND_RINGBUF")
        if self.stream:
            flags.append("-DND_STREAM")
        if not getattr(self, "syscall_tracepoints", True):
            flags.append("-DND_NO_SYSCALL_TP")
        if self.aggregate:
            flags += ["-DND_AGGREGATE", f"-DND_MAX_DSTS={int(self.max_dsts)}",
                      f"-DND_CONN_SLOT_BITS={self.socket_slots.bit_length() - 1}",
                      f"-DND_MAX_SOCKS={int(self.max_socks)}",
                      f"-DND_DST_SLOT_BITS={self.dst_slots.bit_length() - 1}"]
            if getattr(self, "per_process", False):
                flags += ["-DND_PER_PROCESS", f"-DND_MAX_PROCS={int(self.max_procs)}"]
            if getattr(self, "proc_dsts", False):
                flags.append("-DND_PROC_DSTS")
        if strict and not atomic_cmpxchg()[0]:
            flags.append("-DND_NO_CMPXCHG")         # before 5.12: the slot tables stay empty
        if self.plan.keys() & {"resets", "retrans"}:
            flags += tcp_format_flags(strict)
        if "drops" in self.plan:
            flags += drop_format_flags(strict)
        if "resets" in self.plan:
            flags += reset_format_flags(strict)
            lo_hi = ephemeral_range()
            if lo_hi:
                flags += [f"-DND_EPHEMERAL_LO={lo_hi[0]}", f"-DND_EPHEMERAL_HI={lo_hi[1]}"]
        if self.pid is not None:
            flags.append(f"-DND_FILTER_PID={int(self.pid)}")
        if self.netns is not None:
            flags.append(f"-DND_FILTER_NETNS={int(self.netns)}")
        return flags

    def source(self) -> str:
        d = bpf_dir()
        # Everything that touches a map is pasted into the main text, with no #line markers:
        # BCC rewrites map calls (nd_stats.lookup, ...) only in what clang sees as the main file.
        names = ["nd_common.h"] + (["agg.c"] if self.aggregate else []) + \
            [SIGNALS[s].source for s in SOURCE_ORDER if s in self.plan] + ["state.c"]
        parts = [f"/* ---- {name} ---- */\n" + (d / name).read_text() for name in names]
        return "\n".join(parts)

    def dump(self) -> str:
        """The final C program as BCC compiles it: flags as #defines, then the sources."""
        lines = ["/* netdiag BPF program; modes: " +
                 ", ".join(f"{s}={m}" for s, m in self.plan.items()) + " */"]
        for f in self.cflags(strict=False):
            if f.startswith("-D"):
                name, _, val = f[2:].partition("=")
                lines.append(f"#define {name} {val}".rstrip())
        d = bpf_dir()
        lines.append("/* ---- nd_events.h (included) ---- */\n" + (d / "nd_events.h").read_text())
        lines.append(self.source())
        return "\n".join(lines)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, on_event: Callable[[bytes], None] | None = None) -> None:
        require_privileges()
        try:
            from bcc import BPF
        except Exception as e:  # ImportError, or libbcc missing underneath
            raise BccMissing(f"cannot import bcc ({e}); run scripts/setup.sh as root "
                             "(installs python3-bpfcc and a venv that sees it)") from e
        tracefs.tracefs_root()
        with _captured_stderr() as log:
            try:
                self._compile_and_attach(BPF)
            except OSError as e:
                if not (self.btf_tp and self._btf_auto):
                    err = e
                else:            # the kernel refused the tp_btf programs: raw tracepoints instead
                    self.close()
                    self.btf_tp, self.btf_refused = False, str(e)
                    try:
                        self._compile_and_attach(BPF)
                    except Exception as e2:
                        err = e2
                    else:
                        err = None
            except Exception as e:
                err = e
            else:
                err = None
        if err is not None:
            self.close()
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise BpfLoadError(f"BPF load/attach failed: {first} (run with -v for the verifier log)",
                               detail=log["text"].strip() or None) from err
        if self.stream:
            self._open_buffer(on_event)

    def _compile_and_attach(self, BPF) -> None:
        text = self.source()
        self.bpf = BPF(text=text.encode(), cflags=self.cflags())
        if self.btf_tp:
            from netdiag.kernel.bpfsys import load_tp_btf
            for fn, event in BTF_PROGRAMS:
                if fn in text:
                    prog, link = load_tp_btf(self.bpf.dump_func(fn.encode()), event, name=fn[:15])
                    self.btf_fds += [link, prog]
                    self.btf_loaded.append((fn, event))
        self._attach()

    def _attach(self) -> None:
        for sig, mode in self.plan.items():
            if mode != "kprobe":
                continue    # tracepoint and fentry programs attach themselves on load
            for func, fn_name, is_ret in SIGNALS[sig].kprobes:
                if is_ret:
                    self.bpf.attach_kretprobe(event=func, fn_name=fn_name)
                else:
                    self.bpf.attach_kprobe(event=func, fn_name=fn_name)
                self.kp_attached.append((fn_name, "kretprobe" if is_ret else "kprobe", func))

    def _open_buffer(self, on_event: Callable[[bytes], None]) -> None:
        def cb(_ctx, data, size):
            on_event(ctypes.string_at(data, size))

        def lost(count):
            self._perf_lost += count

        table = self.bpf["nd_events"]
        if self.buffer == "ringbuf":
            table.open_ring_buffer(cb)
        else:
            table.open_perf_buffer(cb, page_cnt=256, lost_cb=lost)

    def poll(self, timeout_ms: int = 100) -> None:
        if not self.stream:
            time.sleep(timeout_ms / 1000)
        elif self.buffer == "ringbuf":
            self.bpf.ring_buffer_poll(timeout_ms)
        else:
            self.bpf.perf_buffer_poll(timeout_ms)

    def drain(self) -> None:
        if not self.stream:
            return
        if self.buffer == "ringbuf":
            self.bpf.ring_buffer_consume()
        else:
            self.bpf.perf_buffer_poll(0)

    def stats(self) -> dict[str, int]:
        names = STAT_NAMES
        table = self.bpf["nd_stats"]
        out = {n: int(table.sum(ctypes.c_int(i)).value) for i, n in enumerate(names)}
        out["lost_events"] += self._perf_lost
        return out

    def close(self) -> None:
        for fd in getattr(self, "btf_fds", []):
            try:
                os.close(fd)
            except OSError:
                pass
        self.btf_fds = []
        self.btf_loaded = []
        self.kp_attached = []
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

