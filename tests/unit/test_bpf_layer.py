"""The bpf() layer: one syscall path, typed errors, per-architecture numbers; no root needed."""
import ast
import ctypes
import errno
from pathlib import Path

import pytest

from netdiag.errors import EXIT_SOFTWARE, EXIT_UNAVAILABLE, BpfSyscallError, FeatureMissing, NetdiagError
from netdiag.kernel import bpfsys

ROOT = Path(__file__).resolve().parents[2] / "netdiag"


def test_syscall_numbers_per_architecture():
    assert bpfsys.syscall_number(bpfsys.NR_BPF, "bpf", "x86_64") == 321
    assert bpfsys.syscall_number(bpfsys.NR_BPF, "bpf", "aarch64") == 280
    assert bpfsys.syscall_number(bpfsys.NR_PERF_EVENT_OPEN, "perf_event_open", "aarch64") == 241
    with pytest.raises(FeatureMissing) as ei:
        bpfsys.syscall_number(bpfsys.NR_BPF, "bpf", "sparc64")
    assert ei.value.exit_code == EXIT_UNAVAILABLE and "sparc64" in str(ei.value) and "\n" not in str(ei.value)


def test_an_unknown_architecture_never_calls_the_syscall(monkeypatch):
    calls = []
    monkeypatch.setattr(bpfsys.platform, "machine", lambda: "mips64")
    monkeypatch.setattr(bpfsys, "libc", type("L", (), {"syscall": lambda *a: calls.append(a) or 3})())
    with pytest.raises(FeatureMissing):
        bpfsys.bpf(bpfsys.BPF_MAP_CREATE, (ctypes.c_uint8 * 8)())
    assert calls == []


class FakeLibc:
    def __init__(self, result, err=0):
        self.result, self.err, self.calls = result, err, []

    def syscall(self, nr, cmd, attr, size):
        self.calls.append((nr, cmd, size))
        ctypes.set_errno(self.err)
        return self.result


def test_a_refusal_is_typed_with_the_command_and_errno(monkeypatch):
    monkeypatch.setattr(bpfsys.platform, "machine", lambda: "x86_64")
    fake = FakeLibc(-1, errno.EPERM)
    monkeypatch.setattr(bpfsys, "libc", fake)
    with pytest.raises(BpfSyscallError) as ei:
        bpfsys.map_create(bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, name="nd_dns_ring1")
    e = ei.value
    assert isinstance(e, NetdiagError) and isinstance(e, OSError)
    assert e.command == "BPF_MAP_CREATE" and e.errno == errno.EPERM and e.exit_code == EXIT_SOFTWARE
    assert "nd_dns_ring1" in str(e) and "EPERM" in str(e)
    assert fake.calls == [(321, bpfsys.BPF_MAP_CREATE, 72)]


def test_lookup_of_a_missing_key_is_none_not_an_error(monkeypatch):
    monkeypatch.setattr(bpfsys.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(bpfsys, "libc", FakeLibc(-1, errno.ENOENT))
    assert bpfsys.map_lookup(3, ctypes.c_uint32(0), ctypes.create_string_buffer(8)) is False
    monkeypatch.setattr(bpfsys, "libc", FakeLibc(-1, errno.EEXIST))
    assert bpfsys.map_update(3, ctypes.c_uint32(0), ctypes.c_uint32(0), bpfsys.BPF_NOEXIST) is False
    with pytest.raises(BpfSyscallError):
        bpfsys.map_update(3, ctypes.c_uint32(0), ctypes.c_uint32(0))


def _imports(path: Path):
    """(module imported, names) of every from-import in a file, function-level ones too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_no_private_name_crosses_a_module_in_the_kernel_and_dns_layers():
    files = sorted((ROOT / "kernel").glob("*.py")) + sorted((ROOT / "sources" / "dns").glob("*.py"))
    files += [ROOT / "analysis" / "decode.py", ROOT / "errors.py"]
    bad = [(p.name, mod, n) for p in files for mod, names in _imports(p)
           if mod.startswith("netdiag") for n in names if n.startswith("_")]
    assert bad == []


def test_no_bpf_syscall_outside_bpfsys():
    for p in ROOT.rglob("*.py"):
        if p.name != "bpfsys.py":
            text = p.read_text()
            assert "NR_BPF" not in text and ".syscall(" not in text, p


def test_the_kernel_layer_imports_nothing_above_it_and_has_no_cycle():
    graph = {}
    for p in sorted((ROOT / "kernel").glob("*.py")):
        mods = {m for m, _ in _imports(p)}
        mods |= {f"{m}.{n}" for m, names in _imports(p) for n in names}
        assert not {m for m in mods if m.startswith("netdiag.") and
                    not m.startswith(("netdiag.kernel", "netdiag.errors"))}, p
        graph[p.stem] = {m.split(".")[2] for m in mods if m.startswith("netdiag.kernel.")} - {p.stem}

    def reach(a, seen):
        for b in graph.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen
    assert [m for m in graph if m in reach(m, set())] == []
