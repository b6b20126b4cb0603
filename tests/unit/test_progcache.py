"""Program images without the kernel: keys, the relocation scan, which files are trusted."""
import json
import struct

import pytest

from netdiag.kernel import progcache as pc


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def test_relocs_name_each_map_load_and_skip_constants():
    prog = (insn(0xB7, 0, imm=1)                      # r0 = 1
            + insn(pc.LD_IMM64, 1, pc.BPF_PSEUDO_MAP_FD, imm=17) + insn(0)
            + insn(pc.LD_IMM64, 2, 0, imm=5) + insn(0, imm=9)          # a 64-bit constant
            + insn(pc.LD_IMM64, 3, pc.BPF_PSEUDO_MAP_FD, imm=23) + insn(0)
            + insn(0x95))
    assert pc._relocs(prog) == [(1, 17), (5, 23)]


def test_map_value_loads_are_not_reproduced():
    with pytest.raises(pc.Unsupported, match="kind 2"):
        pc._relocs(insn(pc.LD_IMM64, 1, 2, imm=4) + insn(0) + insn(0x95))


def test_where_and_whether(monkeypatch, tmp_path):
    monkeypatch.delenv("NETDIAG_CACHE", raising=False)
    monkeypatch.delenv("NETDIAG_CACHE_DIR", raising=False)
    assert pc.cache_dir() == pc.DEFAULT_DIR
    monkeypatch.setenv("NETDIAG_CACHE_DIR", str(tmp_path))
    a = pc.path_for({"engine": {"signals": ["connect"]}, "maps": ["x"]})
    b = pc.path_for({"engine": {"signals": ["connect", "accept"]}, "maps": ["x"]})
    assert a.parent == tmp_path and a != b
    assert a == pc.path_for({"maps": ["x"], "engine": {"signals": ["connect"]}})   # key order is not the key
    monkeypatch.setenv("NETDIAG_CACHE", "off")
    assert pc.path_for({"maps": []}) is None


def good_image():
    return {"format": pc.FORMAT, "header": {"plan": {}}, "maps": [], "named": {}, "programs": []}


def test_written_private_and_read_back(tmp_path):
    path = tmp_path / "c" / "k.json"
    pc.write(path, good_image())
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert pc.read(path) == good_image()


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": 999}), "[]"])
def test_unreadable_images_are_removed(tmp_path, text):
    path = tmp_path / "k.json"
    tmp_path.chmod(0o700)
    path.write_text(text)
    path.chmod(0o600)
    assert pc.read(path) is None
    assert not path.exists()


def test_images_others_could_write_are_not_read(tmp_path):
    path = tmp_path / "c" / "k.json"
    pc.write(path, good_image())
    path.chmod(0o620)
    assert pc.read(path) is None
    path.chmod(0o600)
    path.parent.chmod(0o777)
    assert pc.read(path) is None
    assert path.exists()                      # not ours to judge: left alone


def test_absent_image(tmp_path):
    assert pc.read(tmp_path / "none.json") is None


def test_a_module_loaded_since_is_another_key(monkeypatch, tmp_path):
    """nf_nat loaded after an image was written (its kprobe targets, its BTF): the plan may
    differ, so the image of before is not taken."""
    monkeypatch.setenv("NETDIAG_CACHE_DIR", str(tmp_path))
    req = {"engine": {"signals": ["connect", "snat"]}, "maps": ["x"]}
    real = pc.os.listdir
    before = pc.path_for(req)
    assert before == pc.path_for(req)
    monkeypatch.setattr(pc.os, "listdir", lambda d: real(d) + (["nf_nat"] if d == "/sys/module" else []))
    assert pc.path_for(req) != before
