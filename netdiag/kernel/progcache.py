"""Compiled programs kept on disk, loaded again without the compiler.

The first `netdiag watch` on a kernel compiles its programs with BCC in a short-lived child
(netdiag/kernel/loader.py): about a second of clang and a ~160 MB peak. The child then writes a
*program image*: each program's bytecode as it was loaded, where each instruction names a map,
the maps' shapes, and how each program was attached. A later start with the same request, on
the same kernel (release, build and BTF) and the same netdiag and BCC, makes the maps, loads
the bytecode and attaches it with plain bpf()/perf_event_open() calls from the watch process
itself: no child, no libbcc. The kernel verifies the programs again, as on every load.

An image is only written where every program is one this module can attach again: classic
tracepoints, raw tracepoints, tp_btf and cgroup_skb (linked to a cgroup). Plans with kprobes or
fentry programs compile each time. A map of maps is reproduced when the caller says what fills
it (``fills``: the DNS capture's per-CPU rings, each a map of the image); program arrays never.
An image that does not load (a changed kernel setting, a corrupt file) is removed and the
programs are compiled as before.

Where: ``$NETDIAG_CACHE_DIR``, else ``/var/cache/netdiag/programs``; ``NETDIAG_CACHE=off`` turns
it off. Images are written 0600 in a 0700 directory, and only read when the file and directory
belong to the user running netdiag and no one else can write them.
"""
from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import stat
import struct
import tempfile
from pathlib import Path

from netdiag.kernel import btf as btfmod
from netdiag.kernel.bpfsrc import digest as bpf_digest
from netdiag.kernel.features import BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN, BPF_MAP_CREATE, _bpf, _close, _libc

FORMAT = 1
DEFAULT_DIR = Path("/var/cache/netdiag/programs")

BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_CGROUP_SKB, BPF_PROG_TYPE_RAW_TRACEPOINT = 5, 8, 17
BPF_MAP_UPDATE_ELEM, BPF_OBJ_GET_INFO_BY_FD = 2, 15
BPF_PSEUDO_MAP_FD = 1
LD_IMM64 = 0x18
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(platform.machine(), 298)
PERF_TYPE_TRACEPOINT, PERF_SAMPLE_RAW, PERF_FLAG_FD_CLOEXEC = 2, 1 << 10, 8
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408


# program arrays and maps of maps: their contents are fds, which an image carries only as the
# maps of the image a map of maps holds (``fills``)
_MAPS_WITH_CONTENT = {3, 12, 13}
_MAPS_OF_MAPS = {12, 13}


class Unsupported(Exception):
    """The loaded programs include something an image cannot reproduce."""


# -- where, and under which key ------------------------------------------------------------------
def cache_dir() -> Path | None:
    if os.environ.get("NETDIAG_CACHE", "").lower() in ("off", "0", "no", "false"):
        return None
    d = os.environ.get("NETDIAG_CACHE_DIR")
    return Path(d) if d else DEFAULT_DIR


def _code_digest() -> str:
    """netdiag's own code (Python and BPF C) and BCC's version: a change in any makes a new key."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root.parent)).encode() + b"\0")
        h.update(p.read_bytes())
    h.update(bpf_digest().encode())         # the C sources actually compiled, in any install form
    spec = importlib.util.find_spec("bcc")        # located, not imported (no libbcc here)
    if spec and spec.origin:
        vfile = Path(spec.origin).with_name("version.py")
        h.update(vfile.read_bytes() if vfile.exists() else b"bcc: unknown version")
    return h.hexdigest()


def _kernel_digest() -> str:
    u = os.uname()
    h = hashlib.sha256(f"{u.release}\0{u.version}\0{u.machine}\0".encode())
    try:
        h.update(btfmod.VMLINUX_BTF.read_bytes())
    except OSError:
        h.update(b"no BTF")
    return h.hexdigest()


def key(request: dict) -> str:
    h = hashlib.sha256(json.dumps(request, sort_keys=True).encode())
    h.update(_code_digest().encode())
    h.update(_kernel_digest().encode())
    return h.hexdigest()[:32]


def path_for(request: dict) -> Path | None:
    d = cache_dir()
    return None if d is None else d / f"{key(request)}.json"


def _trusted(path: Path) -> bool:
    """Owned by us and writable by no one else: the file and the directory holding it."""
    me = os.geteuid()
    for p in (path.parent, path):
        st = os.lstat(p)
        if st.st_uid != me or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or stat.S_ISLNK(st.st_mode):
            return False
    return True


# -- writing (the loader child, after BCC compiled and attached) ---------------------------------
def _map_info(fd: int) -> dict:
    info = (ctypes.c_uint8 * 88)()
    attr = (ctypes.c_uint8 * 16)()
    ctypes.c_uint32.from_buffer(attr, 0).value = fd
    ctypes.c_uint32.from_buffer(attr, 4).value = len(info)
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(info)
    r, err = _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    if r < 0:
        raise Unsupported(f"map info: {os.strerror(err)}")
    mtype, _id, ksz, vsz, entries, flags = struct.unpack_from("<6I", info, 0)
    name = bytes(info[24:40]).split(b"\0", 1)[0].decode()
    return {"type": mtype, "key_size": ksz, "value_size": vsz, "max_entries": entries,
            "flags": flags, "name": name}


def _relocs(insns: bytes) -> list[tuple[int, int]]:
    """(instruction index, map fd) of every 64-bit immediate load; anything but a map fd there
    (a map value, a BTF id, a function) is not something an image reproduces."""
    out = []
    for i in range(0, len(insns) // 8):
        code, regs = insns[8 * i], insns[8 * i + 1]
        if code != LD_IMM64:
            continue
        src = regs >> 4
        if src != BPF_PSEUDO_MAP_FD:
            if src == 0:
                continue            # a plain 64-bit constant
            raise Unsupported(f"64-bit load of kind {src} at instruction {i}")
        out.append((i, struct.unpack_from("<i", insns, 8 * i + 4)[0]))
    return out


def build(b, header: dict, named_fds: dict[str, int], loaded: list[tuple[str, str, str]] = (),
          fills: dict | None = None) -> dict:
    """The image of what BCC object ``b`` loaded and attached, plus:

    * ``named_fds``: the maps the caller reads, by name (BCC's or made by hand);
    * ``loaded``: programs loaded from BCC's bytecode and attached outside BCC, as (function,
      kind, target): ``("fn", "tp_btf", event)``, ``("fn", "cgroup_skb", "egress"|"ingress")``;
    * ``fills``: {map of maps: {"inner": template map name, "entries": {key: map name}}}, names
      from ``named_fds``, the map of maps being BCC's table of that name.

    Raises Unsupported for kprobes, fentry and anything else not reproduced."""
    for attr in ("kprobe_fds", "uprobe_fds", "kfunc_entry_fds", "kfunc_exit_fds", "lsm_fds"):
        if getattr(b, attr, None):
            raise Unsupported(attr.replace("_fds", "") + " programs")
    progs, fd_index, maps = [], {}, []
    filled: set[int] = set()

    def map_slot(fd: int) -> int:
        if fd not in fd_index:
            info = _map_info(fd)
            if info["type"] in _MAPS_WITH_CONTENT and not (info["type"] in _MAPS_OF_MAPS and fd in filled):
                raise Unsupported(f"map {info['name']} of type {info['type']} (holds programs or maps)")
            fd_index[fd] = len(maps)
            maps.append(info)
        return fd_index[fd]

    named = {n: map_slot(fd) for n, fd in named_fds.items()}
    for outer, spec in (fills or {}).items():
        fd = b[outer].map_fd
        filled.add(fd)
        m = maps[map_slot(fd)]
        m["inner"] = named[spec["inner"]]
        m["fill"] = sorted((int(k), named[v]) for k, v in spec["entries"].items())
    from netdiag.sources.dns.cgcapture import CGROUP_ATTACH
    own = {name for name, _kind, _target in loaded}
    attached = 0
    for raw_name in b.funcs:
        name = raw_name.decode()
        if name in own:
            continue
        if name.startswith("tracepoint__"):
            kind, target, ptype = "tracepoint", name[len("tracepoint__"):].replace("__", ":"), BPF_PROG_TYPE_TRACEPOINT
            if target.encode() not in b.tracepoint_fds:
                raise Unsupported(f"{name} is loaded but not attached")
        elif name.startswith("raw_tracepoint__"):
            kind, target, ptype = "raw_tracepoint", name[len("raw_tracepoint__"):], BPF_PROG_TYPE_RAW_TRACEPOINT
            if target.encode() not in b.raw_tracepoint_fds:
                raise Unsupported(f"{name} is loaded but not attached")
        else:
            raise Unsupported(f"program {name}")
        attached += 1
        progs.append(_prog(b, name, kind, target, ptype, map_slot))
    if attached != len(b.tracepoint_fds) + len(b.raw_tracepoint_fds):
        raise Unsupported("attachments without a program of their own")
    for name, kind, target in loaded:
        if kind == "tp_btf":
            progs.append(_prog(b, name, kind, target, 0, map_slot))
        elif kind == "cgroup_skb" and target in CGROUP_ATTACH:
            progs.append(_prog(b, name, kind, target, BPF_PROG_TYPE_CGROUP_SKB, map_slot))
        else:
            raise Unsupported(f"program {name} attached as {kind} {target}")
    return {"format": FORMAT, "header": header, "maps": maps, "named": named, "programs": progs}


def _prog(b, name: str, kind: str, target: str, ptype: int, map_slot) -> dict:
    insns = b.dump_func(name.encode())
    relocs = [(i, map_slot(fd)) for i, fd in _relocs(insns)]
    return {"name": name, "kind": kind, "target": target, "type": ptype, "relocs": relocs,
            "insns": base64.b64encode(insns).decode()}


def write(path: Path, image: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".image-")   # 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(image, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- loading again (the watch process) -----------------------------------------------------------
def read(path: Path) -> dict | None:
    """The image at ``path``, or None: absent, not ours, or unreadable (then it is removed)."""
    try:
        if not _trusted(path):
            return None
        image = json.loads(path.read_text())
        if image.get("format") != FORMAT:
            raise ValueError("format")
        return image
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        discard(path)
        return None


def discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _oserror(err: int, what: str) -> OSError:
    return OSError(err, f"{what}: {errno.errorcode.get(err, err)}")


def _create_map(m: dict, inner_fd: int = 0) -> int:
    attr = (ctypes.c_uint8 * 72)()
    struct.pack_into("<6I", attr, 0, m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"],
                     inner_fd)
    return _named_call(BPF_MAP_CREATE, attr, 28, m["name"], "map")


def _fill(outer_fd: int, key: int, fd: int) -> None:
    k, v = ctypes.c_uint32(key), ctypes.c_uint32(fd)
    attr = (ctypes.c_uint8 * 32)()
    struct.pack_into("<IIQQ", attr, 0, outer_fd, 0, ctypes.addressof(k), ctypes.addressof(v))
    r, err = _bpf(BPF_MAP_UPDATE_ELEM, attr)
    if r < 0:
        raise _oserror(err, f"map of maps entry {key}")


def _create_maps(specs: list[dict], fds: list[int]) -> None:
    """Every map of the image, appended to ``fds`` in the image's order (closed by the caller on
    failure): a map of maps after the maps it holds, then filled with them."""
    made: dict[int, int] = {}
    for slot in sorted(range(len(specs)), key=lambda i: "inner" in specs[i]):
        m = specs[slot]
        made[slot] = _create_map(m, made[m["inner"]] if "inner" in m else 0)
        fds.append(made[slot])
    fds[:] = [made[i] for i in range(len(specs))]
    for slot, m in enumerate(specs):
        for key, entry in m.get("fill", ()):
            _fill(made[slot], key, made[entry])


def _named_call(cmd: int, attr, name_off: int, name: str, what: str) -> int:
    """bpf(cmd) with the object's name (15 bytes at most) at ``name_off`` of ``attr``."""
    nm = name.encode()[:15]
    ctypes.memmove(ctypes.addressof(attr) + name_off, nm, len(nm))
    fd, err = _bpf(cmd, attr)
    if fd < 0:
        raise _oserror(err, f"{what} {name}")
    return fd


def _load_prog(p: dict, insns: bytes, prog_type: int, expected_attach: int = 0) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_uint8 * 128)()
    struct.pack_into("<IIQQ", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic))
    struct.pack_into("<I", attr, 68, expected_attach)
    return _named_call(BPF_PROG_LOAD, attr, 48, p["name"], "program")


def _attach_tracepoint(prog_fd: int, target: str) -> int:
    from netdiag.kernel.tracefs import tracefs_root
    cat, _, event = target.partition(":")
    tp_id = int((tracefs_root() / "events" / cat / event / "id").read_text())
    attr = (ctypes.c_uint8 * 128)()
    struct.pack_into("<IIQQQ", attr, 0, PERF_TYPE_TRACEPOINT, len(attr), tp_id, 1, PERF_SAMPLE_RAW)
    struct.pack_into("<I", attr, 48, 1)                                  # wakeup_events
    fd = _libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise _oserror(ctypes.get_errno(), f"perf event for {target}")
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def _attach_raw(prog_fd: int, target: str) -> int:
    name = ctypes.create_string_buffer(target.encode())
    attr = (ctypes.c_uint8 * 16)()
    ctypes.c_uint64.from_buffer(attr, 0).value = ctypes.addressof(name)
    ctypes.c_uint32.from_buffer(attr, 8).value = prog_fd
    fd, err = _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    if fd < 0:
        raise _oserror(err, f"raw tracepoint {target}")
    return fd


def load(image: dict) -> tuple[dict, dict[str, int], list[int]]:
    """Make the maps, load and attach the programs: (header, {map name: fd}, attachment fds).
    On any failure, whatever was made is closed (detached) and the OSError raised."""
    from netdiag.kernel.features import load_tp_btf
    map_fds: list[int] = []
    attach: list[int] = []
    progs: list[int] = []
    try:
        _create_maps(image["maps"], map_fds)
        for p in image["programs"]:
            insns = bytearray(base64.b64decode(p["insns"]))
            for i, slot in p["relocs"]:
                struct.pack_into("<i", insns, 8 * i + 4, map_fds[slot])
            if p["kind"] == "tp_btf":
                prog, link = load_tp_btf(bytes(insns), p["target"], name=p["name"][:15])
                attach += [link, prog]
                continue
            if p["kind"] == "cgroup_skb":       # linked to the cgroup named in the image's header
                from netdiag.sources.dns.cgcapture import CGROUP_ATTACH, link_cgroup
                prog = _load_prog(p, bytes(insns), BPF_PROG_TYPE_CGROUP_SKB, CGROUP_ATTACH[p["target"]])
                progs.append(prog)
                attach.append(link_cgroup(prog, image["header"]["cgroup"], p["target"]))
                continue
            prog = _load_prog(p, bytes(insns), p["type"])
            progs.append(prog)
            if p["kind"] == "tracepoint":
                attach.append(_attach_tracepoint(prog, p["target"]))
            elif p["kind"] == "raw_tracepoint":
                attach.append(_attach_raw(prog, p["target"]))
            else:
                raise OSError(errno.EINVAL, f"program {p['name']}: unknown attachment {p['kind']!r}")
        named = {n: map_fds[slot] for n, slot in image["named"].items()}
    except (OSError, KeyError, IndexError, TypeError, ValueError, struct.error) as e:
        for fd in attach + progs + map_fds:
            _close(fd)
        if isinstance(e, OSError):
            raise
        raise OSError(errno.EINVAL, f"program image malformed ({type(e).__name__}: {e})") from e
    # the attachments hold the programs, the programs the maps they use: keep only what the
    # caller reads (named maps) and the attachments
    keep = set(named.values())
    for fd in progs:
        _close(fd)
    for fd in map_fds:
        if fd not in keep:
            _close(fd)
    return image["header"], named, attach
