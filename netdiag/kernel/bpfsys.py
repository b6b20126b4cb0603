"""Every bpf() command netdiag issues, through one function (``bpf``) and one error convention.

A refused command raises ``BpfSyscallError`` (netdiag/errors.py: the command's name and the
kernel's errno; an OSError too); an architecture without a known syscall number raises
``FeatureMissing`` before anything is tried. Above this module nothing packs a ``union bpf_attr``
or calls ``syscall()``: map create / lookup / update / batch lookup, object info, program load,
raw tracepoint open, link create (cgroup), and the perf_event_open() that attaches a classic
tracepoint, plus the maps (``Map``) and ring buffers (``RingBuffer``) read by fd.

Why not the system's libbpf through ctypes: Debian ships libbpf.so.1 (with BCC), but binding it
would not remove the hand-written part. Its calls that do more than one bpf() command take
``*_opts`` structs (``bpf_prog_load_opts``, ``bpf_map_create_opts``, ``bpf_link_create_opts``)
whose layout is versioned by a leading size field and would have to be mirrored by hand in
ctypes exactly as ``union bpf_attr`` is here; its error convention changed between 0.x (-1 and
errno) and 1.x (-errno); its ring buffer reader calls back into Python once per record, where
``RingBuffer`` below drains a ring in one pass; and libbpf.so is not guaranteed where netdiag
runs (upstream BCC builds link their own copy into libbcc, and an image with only libbcc would
lose the program-image and map paths that need no BCC at all). The attr layouts used here are
the kernel's stable UAPI, and each command is a few lines.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import platform
import struct

from netdiag.errors import BpfSyscallError, FeatureMissing
from netdiag.kernel import btf as btfmod

# syscall numbers per architecture (platform.machine()), from the kernel's unistd tables:
# asm/unistd_64.h (x86_64), asm/unistd_32.h (i386), asm-generic/unistd.h (the others)
NR_BPF = {"x86_64": 321, "i386": 357, "i686": 357, "aarch64": 280, "riscv64": 280, "loongarch64": 280}
NR_PERF_EVENT_OPEN = {"x86_64": 298, "i386": 336, "i686": 336, "aarch64": 241, "riscv64": 241,
                      "loongarch64": 241}

# bpf() commands (include/uapi/linux/bpf.h enum bpf_cmd)
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM = 0, 1, 2
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_BATCH = 24
BPF_LINK_CREATE = 28
COMMANDS = {BPF_MAP_CREATE: "BPF_MAP_CREATE", BPF_MAP_LOOKUP_ELEM: "BPF_MAP_LOOKUP_ELEM",
            BPF_MAP_UPDATE_ELEM: "BPF_MAP_UPDATE_ELEM", BPF_PROG_LOAD: "BPF_PROG_LOAD",
            BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD", BPF_RAW_TRACEPOINT_OPEN: "BPF_RAW_TRACEPOINT_OPEN",
            BPF_MAP_LOOKUP_BATCH: "BPF_MAP_LOOKUP_BATCH", BPF_MAP_GET_NEXT_KEY: "BPF_MAP_GET_NEXT_KEY",
            BPF_LINK_CREATE: "BPF_LINK_CREATE"}

BPF_NOEXIST = 1
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PROG_ARRAY = 1, 2, 3
BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH = 5, 6, 10
BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS = 12, 13
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SOCKET_FILTER, BPF_PROG_TYPE_KPROBE = 1, 2
BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_CGROUP_SKB = 5, 8
BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_TRACING = 17, 26
BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS = 0, 1
BPF_TRACE_RAW_TP, BPF_TRACE_FENTRY = 23, 24
BPF_PSEUDO_MAP_FD = 1
PERF_TYPE_TRACEPOINT, PERF_SAMPLE_RAW, PERF_FLAG_FD_CLOEXEC = 2, 1 << 10, 8
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408
OBJ_NAME_LEN = 16                   # BPF_OBJ_NAME_LEN, the terminating NUL included

libc = ctypes.CDLL(None, use_errno=True)


def syscall_number(table: dict[str, int], what: str, machine: str | None = None) -> int:
    machine = machine or platform.machine()
    nr = table.get(machine)
    if nr is None:
        raise FeatureMissing(what, f"no {what}() syscall number known for {machine} "
                                   f"(known: {', '.join(sorted(table))})")
    return nr


_memlock_raised = False


def raise_memlock() -> None:
    """Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK (64 KiB by default,
    so even a ring buffer probe fails with EPERM): lift it, as BCC does when it loads, once per
    process. Later kernels charge the memory cgroup and ignore the limit."""
    global _memlock_raised
    if _memlock_raised:
        return
    _memlock_raised = True
    import resource
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass                                   # not privileged: the bpf() call says so itself


def bpf(cmd: int, attr) -> int:
    """bpf(cmd, attr, sizeof attr): the result (a new fd for most commands); BpfSyscallError."""
    raise_memlock()
    r = libc.syscall(syscall_number(NR_BPF, "bpf"), cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        raise BpfSyscallError(COMMANDS.get(cmd, f"bpf command {cmd}"), ctypes.get_errno())
    return r


def _refused(e: BpfSyscallError, what: str, detail: str | None = None) -> BpfSyscallError:
    return BpfSyscallError(e.command, e.errno, what, detail)


def close_fd(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def ncpus() -> int:
    """Possible CPUs: the number of values a per-CPU map holds per key."""
    with open("/sys/devices/system/cpu/possible") as f:
        hi = f.read().strip().split(",")[-1].split("-")[-1]
    return int(hi) + 1


def _attr(size: int, fields) -> ctypes.Array:
    """A zeroed attr of ``size`` bytes with (offset, struct format, value) written into it."""
    attr = (ctypes.c_uint8 * size)()
    for off, fmt, value in fields:
        struct.pack_into("<" + fmt, attr, off, value)
    return attr


def _set_name(attr, off: int, name: str) -> None:
    nm = name.encode()[:OBJ_NAME_LEN - 1]
    ctypes.memmove(ctypes.addressof(attr) + off, nm, len(nm))


# -- maps ---------------------------------------------------------------------------------------
def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               inner_fd: int = 0, name: str = "") -> int:
    attr = (ctypes.c_uint8 * 72)()
    struct.pack_into("<6I", attr, 0, map_type, key_size, value_size, max_entries, flags, inner_fd)
    if name:
        _set_name(attr, 28, name)
    try:
        return bpf(BPF_MAP_CREATE, attr)
    except BpfSyscallError as e:
        raise _refused(e, f"map {name or f'of type {map_type}'}") from None


def ringbuf_create(size: int, name: str = "") -> int:
    return map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, size, name=name)


def _elem_attr(fd: int, key, value, flags: int = 0) -> ctypes.Array:
    return _attr(32, [(0, "I", fd), (8, "Q", ctypes.addressof(key)), (16, "Q", ctypes.addressof(value)),
                      (24, "Q", flags)])


def map_lookup(fd: int, key, value) -> bool:
    """Fill ``value`` (a ctypes buffer) with the value at ``key``; False when there is none."""
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, _elem_attr(fd, key, value))
    except BpfSyscallError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_update(fd: int, key, value, flags: int = 0) -> bool:
    """Store ``value`` at ``key``; with BPF_NOEXIST, False when the key is already there."""
    try:
        bpf(BPF_MAP_UPDATE_ELEM, _elem_attr(fd, key, value, flags))
    except BpfSyscallError as e:
        if flags & BPF_NOEXIST and e.errno == errno.EEXIST:
            return False
        raise
    return True


def map_lookup_batch(fd: int, in_batch, out_batch, keys, values, count: int, first: bool) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH (kernel >= 5.6): (entries copied, whether the map is done)."""
    attr = _attr(56, [(0, "Q", 0 if first else ctypes.addressof(in_batch)), (8, "Q", ctypes.addressof(out_batch)),
                      (16, "Q", ctypes.addressof(keys)), (24, "Q", ctypes.addressof(values)),
                      (32, "I", count), (36, "I", fd)])
    done = False
    try:
        bpf(BPF_MAP_LOOKUP_BATCH, attr)
    except BpfSyscallError as e:
        if e.errno != errno.ENOENT:
            raise
        done = True
    return struct.unpack_from("<I", attr, 32)[0], done


def map_get_next_key(fd: int, key, next_key) -> bool:
    """BPF_MAP_GET_NEXT_KEY: the key after ``key`` (None: the first) into ``next_key``; False at the end."""
    attr = _attr(24, [(0, "I", fd), (8, "Q", ctypes.addressof(key) if key is not None else 0),
                      (16, "Q", ctypes.addressof(next_key))])
    try:
        bpf(BPF_MAP_GET_NEXT_KEY, attr)
    except BpfSyscallError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


# a kernel without BPF_MAP_LOOKUP_BATCH for a map type answers ENOTSUPP (524, kernel-internal) or EINVAL
BATCH_UNSUPPORTED = (524, errno.EINVAL, errno.EOPNOTSUPP)


def obj_info(fd: int, size: int = 88) -> bytes:
    """BPF_OBJ_GET_INFO_BY_FD: the leading ``size`` bytes of the object's info struct."""
    info = (ctypes.c_uint8 * size)()
    bpf(BPF_OBJ_GET_INFO_BY_FD, _attr(16, [(0, "I", fd), (4, "I", size), (8, "Q", ctypes.addressof(info))]))
    return bytes(info)


def map_info(fd: int) -> dict:
    """A map's shape, from struct bpf_map_info."""
    info = obj_info(fd)
    mtype, mid, ksz, vsz, entries, flags = struct.unpack_from("<6I", info, 0)
    return {"type": mtype, "id": mid, "key_size": ksz, "value_size": vsz, "max_entries": entries,
            "flags": flags, "name": info[24:40].split(b"\0", 1)[0].decode()}


# -- programs and attachments -------------------------------------------------------------------
def prog_load(prog_type: int, insns: bytes, name: str = "", expected_attach_type: int = 0,
              attach_btf_id: int = 0, log=None, log_level: int = 0) -> int:
    """BPF_PROG_LOAD of bytecode (license GPL); ``log`` a ctypes buffer for the verifier's log."""
    code = ctypes.create_string_buffer(bytes(insns), len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    fields = [(0, "I", prog_type), (4, "I", len(insns) // 8), (8, "Q", ctypes.addressof(code)),
              (16, "Q", ctypes.addressof(lic)), (68, "I", expected_attach_type), (108, "I", attach_btf_id)]
    if log is not None and log_level:
        fields += [(24, "I", log_level), (28, "I", len(log)), (32, "Q", ctypes.addressof(log))]
    attr = _attr(128, fields)
    if name:
        _set_name(attr, 48, name)
    return bpf(BPF_PROG_LOAD, attr)


def raw_tracepoint_open(prog_fd: int, name: str | None = None) -> int:
    """Attach a raw tracepoint program to ``name``, or a tracing program (tp_btf, fentry) to its
    BTF target (``name`` None): the link fd."""
    tp = ctypes.create_string_buffer(name.encode()) if name else None
    return bpf(BPF_RAW_TRACEPOINT_OPEN, _attr(16, [(0, "Q", ctypes.addressof(tp) if tp else 0), (8, "I", prog_fd)]))


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return bpf(BPF_LINK_CREATE, _attr(64, [(0, "I", prog_fd), (4, "I", target_fd), (8, "I", attach_type)]))


def link_cgroup(prog_fd: int, cgroup: str, attach_type: int) -> int:
    """A bpf_link of a cgroup program to the cgroup directory ``cgroup``: the link fd."""
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return link_create(prog_fd, cg, attach_type)
    except BpfSyscallError as e:
        raise _refused(e, f"cgroup link at {cgroup}") from None
    finally:
        os.close(cg)


def load_tp_btf(insns: bytes, event: str, name: str = "") -> tuple[int, int]:
    """Load bytecode (BCC's ``dump_func``: map fds already in it) as a tp_btf program on
    ``event`` (its ``btf_trace_<event>`` type in the kernel's BTF) and attach it: (program fd,
    link fd). When the kernel refuses the load, BpfSyscallError with the verifier's last words."""
    btf_id = btfmod.kernel_btf().find(btfmod.TYPEDEF, "btf_trace_" + event)
    try:
        fd = prog_load(BPF_PROG_TYPE_TRACING, insns, name, BPF_TRACE_RAW_TP, btf_id)
    except BpfSyscallError as e:             # again with the verifier's log, for the message
        log = ctypes.create_string_buffer(1 << 22)
        try:
            close_fd(prog_load(BPF_PROG_TYPE_TRACING, insns, name, BPF_TRACE_RAW_TP, btf_id, log, 1))
        except BpfSyscallError:
            pass
        text = log.value.decode(errors="replace").strip()
        tail = " / ".join(text.splitlines()[-3:])
        raise BpfSyscallError(e.command, e.errno, f"tp_btf {event}" + (f" ({tail})" if tail else ""),
                              detail=text or None) from None
    try:
        return fd, raw_tracepoint_open(fd)
    except BpfSyscallError as e:
        close_fd(fd)
        raise _refused(e, f"tp_btf {event} attach") from None


def _perf_bpf(attr, prog_fd: int, what: str) -> int:
    """perf_event_open(attr) on CPU 0 for every process, running program ``prog_fd``, enabled:
    the event's fd (closing it detaches)."""
    import fcntl
    fd = libc.syscall(syscall_number(NR_PERF_EVENT_OPEN, "perf_event_open"), ctypes.byref(attr), -1, 0, -1,
                      PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise BpfSyscallError("perf_event_open", ctypes.get_errno(), what)
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as e:
        os.close(fd)
        raise BpfSyscallError("PERF_EVENT_IOC_SET_BPF", e.errno or errno.EINVAL, what) from None
    return fd


def perf_tracepoint(prog_fd: int, tp_id: int, what: str = "") -> int:
    """A perf event on the tracepoint of id ``tp_id`` (tracefs events/<cat>/<name>/id), running
    program ``prog_fd``: the event's fd (closing it detaches)."""
    attr = _attr(128, [(0, "I", PERF_TYPE_TRACEPOINT), (4, "I", 128), (8, "Q", tp_id), (16, "Q", 1),
                       (24, "Q", PERF_SAMPLE_RAW), (48, "I", 1)])     # sample_period 1, wakeup_events 1
    return _perf_bpf(attr, prog_fd, f"perf event for {what or tp_id}")


KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"


@functools.lru_cache(maxsize=1)
def _kprobe_pmu() -> tuple[int, int]:
    """The kprobe PMU's perf type and its retprobe bit (format/retprobe reads ``config:<bit>``)."""
    try:
        ptype = int(open(f"{KPROBE_PMU}/type").read())
        bit = int(open(f"{KPROBE_PMU}/format/retprobe").read().strip().partition(":")[2] or 0)
    except (OSError, ValueError):
        raise BpfSyscallError("perf_event_open", errno.ENOENT, "kprobe PMU (sysfs event_source kprobe)") from None
    return ptype, bit


def perf_kprobe(prog_fd: int, func: str, retprobe: bool = False) -> int:
    """A kprobe (or kretprobe) on kernel function ``func`` through the kprobe PMU, running program
    ``prog_fd``: the event's fd (closing it removes the probe). Nothing is written to tracefs."""
    ptype, bit = _kprobe_pmu()
    name = ctypes.create_string_buffer(func.encode())
    attr = _attr(128, [(0, "I", ptype), (4, "I", 128), (8, "Q", (1 << bit) if retprobe else 0), (16, "Q", 1),
                       (48, "I", 1), (56, "Q", ctypes.addressof(name)), (64, "Q", 0)])
    return _perf_bpf(attr, prog_fd, f"{'kretprobe' if retprobe else 'kprobe'} {func}")


# -- maps by fd, ring buffers -------------------------------------------------------------------
class Map:
    """A BPF map by fd: raw-bytes lookups, batched dumps, inserts."""

    def __init__(self, fd: int, name: str = ""):
        self.fd = fd
        info = map_info(fd)
        self.name = name or info["name"]
        self.type, self.key_size, self.value_size = info["type"], info["key_size"], info["value_size"]
        self.max_entries = info["max_entries"]
        self.percpu = self.type in (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)
        self.ncpus = ncpus() if self.percpu else 1
        self.stride = ((self.value_size + 7) // 8) * 8 if self.percpu else self.value_size
        self.batch_ok = True

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        out = ctypes.create_string_buffer(self.stride * self.ncpus)
        if not map_lookup(self.fd, ctypes.create_string_buffer(key, len(key)), out):
            return None
        raw = out.raw
        if self.percpu:
            return self.split_percpu(raw)
        return raw

    def insert(self, key: bytes, value: bytes) -> bool:
        """BPF_NOEXIST insert: False when the key is already there."""
        return map_update(self.fd, ctypes.create_string_buffer(key, len(key)),
                          ctypes.create_string_buffer(value, len(value)), BPF_NOEXIST)

    def update(self, key: bytes, value: bytes) -> None:
        map_update(self.fd, ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value)))

    def items(self, batch: int = 4096, split: bool = True) -> list[tuple[bytes, bytes]]:
        """Every (key, value) pair, in batches of ``batch`` (BPF_MAP_LOOKUP_BATCH, kernel ≥ 5.6);
        for per-CPU maps the value is a list of per-CPU byte strings (with ``split=False``, all
        CPUs' values in one byte string: see ``split_percpu``)."""
        if not self.batch_ok:
            return self._items_by_key(split)
        out = []
        vsize = self.stride * self.ncpus          # per-CPU maps: one value per possible CPU
        keys = ctypes.create_string_buffer(self.key_size * batch)
        vals = ctypes.create_string_buffer(vsize * batch)
        in_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        out_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        first = True
        while True:
            try:
                count, done = map_lookup_batch(self.fd, in_batch, out_batch, keys, vals, batch, first)
            except BpfSyscallError as e:
                if not first or e.errno not in BATCH_UNSUPPORTED:
                    raise
                self.batch_ok = False           # this kernel has no batch lookup for this map type
                return self._items_by_key(split)
            kr, vr = keys.raw, vals.raw
            for i in range(count):
                v = vr[i * vsize:(i + 1) * vsize]
                if self.percpu and split:
                    v = self.split_percpu(v)
                out.append((kr[i * self.key_size:(i + 1) * self.key_size], v))
            if done:
                return out
            ctypes.memmove(in_batch, out_batch, len(out_batch))
            first = False

    def _items_by_key(self, split: bool) -> list[tuple[bytes, bytes]]:
        """Every pair, one key at a time (BPF_MAP_GET_NEXT_KEY, then a lookup): kernels before the
        batch lookup for this map type (array maps before 5.9, say)."""
        out = []
        cur, nxt = None, ctypes.create_string_buffer(self.key_size)
        val = ctypes.create_string_buffer(self.stride * self.ncpus)
        while map_get_next_key(self.fd, cur, nxt):
            key = nxt.raw
            if map_lookup(self.fd, ctypes.create_string_buffer(key, len(key)), val):
                v = val.raw
                out.append((key, self.split_percpu(v) if self.percpu and split else v))
            cur = ctypes.create_string_buffer(key, len(key))
        return out

    def split_percpu(self, raw: bytes) -> list[bytes]:
        return [raw[c * self.stride: c * self.stride + self.value_size] for c in range(self.ncpus)]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RingBuffer:
    """A BPF ring buffer map (BPF_MAP_TYPE_RINGBUF) read through mmap, without libbpf.

    The kernel maps one writable page with the consumer position, then, read-only, one page with
    the producer position followed by the data area twice over (a record that wraps reads as one
    slice). Each record: a u32 length whose top two bits are BUSY (not committed yet) and DISCARD,
    a u32 page offset, then the data, padded to 8 bytes. Both positions are read and written as
    whole aligned u64s, one load or store each, as libbpf does: the kernel reads the consumer
    position while producing (with byte copies, reservations were seen to fail while the ring
    had room). ``fileno()`` is pollable (readable
    when records wait)."""

    BUSY, DISCARD, HDR = 1 << 31, 1 << 30, 8

    def __init__(self, m: "Map"):
        self.map = m
        self.size = m.max_entries
        self._page = mmap.PAGESIZE
        self._maps: list[tuple[int, int]] = []
        cons = self._mmap(m.fd, self._page, mmap.PROT_READ | mmap.PROT_WRITE, 0)
        prod = self._mmap(m.fd, self._page + 2 * self.size, mmap.PROT_READ, self._page)
        self._cpos = ctypes.c_uint64.from_address(cons)
        self._ppos = ctypes.c_uint64.from_address(prod)
        self._data = memoryview((ctypes.c_char * (2 * self.size)).from_address(prod + self._page)).cast("B")
        self._mask = self.size - 1

    def _mmap(self, fd: int, length: int, prot: int, offset: int) -> int:
        mm = libc.mmap
        mm.restype = ctypes.c_void_p
        mm.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
        addr = mm(None, length, prot, mmap.MAP_SHARED, fd, offset)
        if addr in (None, ctypes.c_void_p(-1).value):
            e = ctypes.get_errno()
            self.close()
            raise OSError(e, f"mmap of ring buffer {self.map.name}: {os.strerror(e)}")
        self._maps.append((addr, length))
        return addr

    def fileno(self) -> int:
        return self.map.fd

    def producer(self) -> int:
        return self._ppos.value

    def consume(self, limit: int | None = None, upto: int | None = None) -> list[bytes]:
        """The committed records waiting, oldest first (at most ``limit``, none at or past the
        producer position ``upto`` if given); they are released."""
        cons = self._cpos.value
        prod = self._ppos.value if upto is None else upto
        data = self._data
        out: list[bytes] = []
        while cons < prod and (limit is None or len(out) < limit):
            off = cons & self._mask
            hdr = struct.unpack_from("<I", data, off)[0]
            if hdr & self.BUSY:
                break
            n = hdr & ~(self.BUSY | self.DISCARD)
            if not hdr & self.DISCARD:
                out.append(bytes(data[off + self.HDR:off + self.HDR + n]))
            cons += (n + self.HDR + 7) & ~7
        self._cpos.value = cons
        return out

    def close(self) -> None:
        if getattr(self, "_data", None) is not None:
            self._data.release()
            self._data = None
        munmap = libc.munmap
        munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        for addr, length in self._maps:
            munmap(addr, length)
        self._maps = []
