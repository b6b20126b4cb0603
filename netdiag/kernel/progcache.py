"""Compiled programs kept on disk, loaded again without the compiler.

The first `netdiag watch` on a kernel compiles its programs with BCC in a short-lived child
(netdiag/kernel/loader.py): about a second of clang and a ~160 MB peak. The child then writes a
*program image*: each program's bytecode as it was loaded, where each instruction names a map,
the maps' shapes, and how each program was attached. A later start with the same request, on
the same kernel (release, build and BTF, the same modules loaded) and the same netdiag and BCC, makes the maps, loads
the bytecode and attaches it with plain bpf()/perf_event_open() calls from the watch process
itself: no child, no libbcc. The kernel verifies the programs again, as on every load.

An image is only written where every program is one this module can attach again: classic
tracepoints, raw tracepoints, tp_btf, kprobes and kretprobes (made again through the kernel's
kprobe PMU, as BCC makes them) and cgroup_skb (linked to a cgroup). Plans with fentry programs
compile each time. A map of maps is reproduced when the caller says what fills
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
import hashlib
import importlib.util
import json
import os
import stat
import struct
import tempfile
from pathlib import Path

from netdiag.errors import BpfSyscallError
from netdiag.kernel import bpfsys
from netdiag.kernel import btf as btfmod
from netdiag.kernel.bpfsrc import digest as bpf_digest
from netdiag.kernel.bpfsys import (
    BPF_PROG_TYPE_CGROUP_SKB,
    BPF_PROG_TYPE_KPROBE,
    BPF_PROG_TYPE_RAW_TRACEPOINT,
    BPF_PROG_TYPE_TRACEPOINT,
    BPF_PSEUDO_MAP_FD,
)
from netdiag.kernel.dnsprog import CGROUP_ATTACH, link_cgroup

FORMAT = 1
DEFAULT_DIR = Path("/var/cache/netdiag/programs")
LD_IMM64 = 0x18
KPROBE_KINDS = ("kprobe", "kretprobe")

# program arrays and maps of maps: their contents are fds, which an image carries only as the
# maps of the image a map of maps holds (``fills``)
_MAPS_OF_MAPS = {bpfsys.BPF_MAP_TYPE_ARRAY_OF_MAPS, bpfsys.BPF_MAP_TYPE_HASH_OF_MAPS}
_MAPS_WITH_CONTENT = {bpfsys.BPF_MAP_TYPE_PROG_ARRAY} | _MAPS_OF_MAPS


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


def _plan_context() -> str:
    """What the planner reads that can change while the kernel runs: the loaded modules. A
    module brings kprobe targets (nf_nat_setup_info) and BTF (the conntrack structs); an image
    planned before it was loaded must not be taken after."""
    parts = []
    for d in ("/sys/module", "/sys/kernel/btf"):
        try:
            parts.append(d + ":" + ",".join(sorted(os.listdir(d))))
        except OSError:
            parts.append(d + ": none")
    return "\n".join(parts)


def key(request: dict) -> str:
    h = hashlib.sha256(json.dumps(request, sort_keys=True).encode())
    h.update(_code_digest().encode())
    h.update(_kernel_digest().encode())
    h.update(_plan_context().encode())
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


def dir_usable(d: Path) -> bool:
    """The cache directory is absent (it will be made 0700) or one ``_trusted`` accepts: an image
    written into a directory others can write could be swapped before it is read."""
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and stat.S_ISDIR(st.st_mode)


# -- writing (the loader child, after BCC compiled and attached) ---------------------------------
def _map_info(fd: int) -> dict:
    try:
        info = bpfsys.map_info(fd)
    except BpfSyscallError as e:
        raise Unsupported(f"map info: {e}") from None
    del info["id"]
    return info


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
    * ``loaded``: programs loaded from BCC's bytecode and attached outside BCC, or attached by
      BCC where only the caller knows the target, as (function, kind, target): ``("fn", "tp_btf",
      event)``, ``("fn", "cgroup_skb", "egress"|"ingress")``, ``("fn", "kprobe"|"kretprobe",
      kernel function)``;
    * ``fills``: {map of maps: {"inner": template map name, "entries": {key: map name}}}, names
      from ``named_fds``, the map of maps being BCC's table of that name.

    Raises Unsupported for fentry, kprobes the caller did not name, and anything else not
    reproduced."""
    for attr in ("uprobe_fds", "kfunc_entry_fds", "kfunc_exit_fds", "lsm_fds"):
        if getattr(b, attr, None):
            raise Unsupported(attr.replace("_fds", "") + " programs")
    kprobes = sum(len(evs) for evs in (getattr(b, "kprobe_fds", None) or {}).values())
    if kprobes != sum(1 for _n, kind, _t in loaded if kind in KPROBE_KINDS):
        raise Unsupported("kprobes attached without a named target")
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
        elif kind in KPROBE_KINDS:
            progs.append(_prog(b, name, kind, target, BPF_PROG_TYPE_KPROBE, map_slot))
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


def _create_maps(specs: list[dict], fds: list[int]) -> None:
    """Every map of the image, appended to ``fds`` in the image's order (closed by the caller on
    failure): a map of maps after the maps it holds, then filled with them."""
    made: dict[int, int] = {}
    for slot in sorted(range(len(specs)), key=lambda i: "inner" in specs[i]):
        m = specs[slot]
        made[slot] = bpfsys.map_create(m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"],
                                       made[m["inner"]] if "inner" in m else 0, m["name"])
        fds.append(made[slot])
    fds[:] = [made[i] for i in range(len(specs))]
    for slot, m in enumerate(specs):
        for key, entry in m.get("fill", ()):
            bpfsys.map_update(made[slot], ctypes.c_uint32(key), ctypes.c_uint32(made[entry]))


def _load_prog(p: dict, insns: bytes, prog_type: int, expected_attach: int = 0) -> int:
    try:
        return bpfsys.prog_load(prog_type, insns, p["name"], expected_attach)
    except BpfSyscallError as e:
        raise BpfSyscallError(e.command, e.errno, f"program {p['name']}") from None


def _attach_tracepoint(prog_fd: int, target: str) -> int:
    from netdiag.kernel.tracefs import tracefs_root
    cat, _, event = target.partition(":")
    tp_id = int((tracefs_root() / "events" / cat / event / "id").read_text())
    return bpfsys.perf_tracepoint(prog_fd, tp_id, target)


def load(image: dict) -> tuple[dict, dict[str, int], list[int]]:
    """Make the maps, load and attach the programs: (header, {map name: fd}, attachment fds).
    On any failure, whatever was made is closed (detached) and the OSError raised."""
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
                prog, link = bpfsys.load_tp_btf(bytes(insns), p["target"], name=p["name"][:15])
                attach += [link, prog]
                continue
            if p["kind"] == "cgroup_skb":       # linked to the cgroup named in the image's header
                prog = _load_prog(p, bytes(insns), BPF_PROG_TYPE_CGROUP_SKB, CGROUP_ATTACH[p["target"]])
                progs.append(prog)
                attach.append(link_cgroup(prog, image["header"]["cgroup"], p["target"]))
                continue
            prog = _load_prog(p, bytes(insns), p["type"])
            progs.append(prog)
            if p["kind"] == "tracepoint":
                attach.append(_attach_tracepoint(prog, p["target"]))
            elif p["kind"] == "raw_tracepoint":
                attach.append(bpfsys.raw_tracepoint_open(prog, p["target"]))
            elif p["kind"] in KPROBE_KINDS:
                attach.append(bpfsys.perf_kprobe(prog, p["target"], retprobe=p["kind"] == "kretprobe"))
            else:
                raise OSError(errno.EINVAL, f"program {p['name']}: unknown attachment {p['kind']!r}")
        named = {n: map_fds[slot] for n, slot in image["named"].items()}
    except (OSError, KeyError, IndexError, TypeError, ValueError, struct.error) as e:
        for fd in attach + progs + map_fds:
            bpfsys.close_fd(fd)
        if isinstance(e, OSError):
            raise
        raise OSError(errno.EINVAL, f"program image malformed ({type(e).__name__}: {e})") from e
    # the attachments hold the programs, the programs the maps they use: keep only what the
    # caller reads (named maps) and the attachments
    keep = set(named.values())
    for fd in progs:
        bpfsys.close_fd(fd)
    for fd in map_fds:
        if fd not in keep:
            bpfsys.close_fd(fd)
    return image["header"], named, attach
