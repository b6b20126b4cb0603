"""BPF map access through the bpf() syscall alone (ctypes), for processes that hold map file
descriptors but do not load libbcc (see netdiag/kernel/loader.py)."""
from __future__ import annotations

import ctypes
import errno
import os

from netdiag.kernel.features import _NR_BPF, _libc

BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM = 1, 2
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_NOEXIST = 1
BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH = 5, 6, 10


class _Info(ctypes.Structure):      # struct bpf_map_info (leading part; the kernel fills what fits)
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16), ("rest", ctypes.c_uint8 * 64)]


def _sys(cmd: int, attr) -> int:
    r = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _ncpus() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        hi = f.read().strip().split(",")[-1].split("-")[-1]
    return int(hi) + 1


class Map:
    """A BPF map by fd: raw-bytes lookups, batched dumps, inserts."""

    def __init__(self, fd: int, name: str = ""):
        self.fd = fd
        info = _Info()
        attr = (ctypes.c_uint8 * 16)()
        ctypes.c_uint32.from_buffer(attr, 0).value = fd
        ctypes.c_uint32.from_buffer(attr, 4).value = ctypes.sizeof(info)
        ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(info)
        _sys(BPF_OBJ_GET_INFO_BY_FD, attr)
        self.name = name or info.name.decode()
        self.type, self.key_size, self.value_size = info.type, info.key_size, info.value_size
        self.max_entries = info.max_entries
        self.percpu = self.type in (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)
        self.ncpus = _ncpus() if self.percpu else 1
        self.stride = ((self.value_size + 7) // 8) * 8 if self.percpu else self.value_size

    def _elem_attr(self, key: bytes, value, flags: int = 0):
        attr = (ctypes.c_uint8 * 32)()
        kbuf = ctypes.create_string_buffer(key, len(key))
        ctypes.c_uint32.from_buffer(attr, 0).value = self.fd
        ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(kbuf)
        ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(value)
        ctypes.c_uint64.from_buffer(attr, 24).value = flags
        return attr, kbuf

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        out = ctypes.create_string_buffer(self.stride * self.ncpus)
        attr, _k = self._elem_attr(key, out)
        try:
            _sys(BPF_MAP_LOOKUP_ELEM, attr)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        raw = out.raw
        if self.percpu:
            return [raw[i * self.stride: i * self.stride + self.value_size] for i in range(self.ncpus)]
        return raw

    def insert(self, key: bytes, value: bytes) -> bool:
        """BPF_NOEXIST insert: False when the key is already there."""
        vbuf = ctypes.create_string_buffer(value, len(value))
        attr, _k = self._elem_attr(key, vbuf, BPF_NOEXIST)
        try:
            _sys(BPF_MAP_UPDATE_ELEM, attr)
        except OSError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        return True

    def update(self, key: bytes, value: bytes) -> None:
        vbuf = ctypes.create_string_buffer(value, len(value))
        attr, _k = self._elem_attr(key, vbuf, 0)
        _sys(BPF_MAP_UPDATE_ELEM, attr)

    def items(self, batch: int = 4096, split: bool = True) -> list[tuple[bytes, bytes]]:
        """Every (key, value) pair, in batches of ``batch`` (BPF_MAP_LOOKUP_BATCH, kernel ≥ 5.6);
        for per-CPU maps the value is a list of per-CPU byte strings (with ``split=False``, all
        CPUs' values in one byte string: see ``split_percpu``)."""
        out = []
        vsize = self.stride * self.ncpus          # per-CPU maps: one value per possible CPU
        keys = ctypes.create_string_buffer(self.key_size * batch)
        vals = ctypes.create_string_buffer(vsize * batch)
        in_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        out_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        first = True
        while True:
            attr = (ctypes.c_uint8 * 56)()
            ctypes.c_uint64.from_buffer(attr, 0).value = 0 if first else ctypes.addressof(in_batch)
            ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(out_batch)
            ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(keys)
            ctypes.c_uint64.from_buffer(attr, 24).value = ctypes.addressof(vals)
            ctypes.c_uint32.from_buffer(attr, 32).value = batch
            ctypes.c_uint32.from_buffer(attr, 36).value = self.fd
            done = False
            try:
                _sys(BPF_MAP_LOOKUP_BATCH, attr)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                done = True
            count = ctypes.c_uint32.from_buffer(attr, 32).value
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
        import mmap
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
        import mmap
        mm = _libc.mmap
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
        import struct
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
        munmap = _libc.munmap
        munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        for addr, length in self._maps:
            munmap(addr, length)
        self._maps = []
