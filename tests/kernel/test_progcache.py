"""Program images (netdiag/kernel/progcache.py): a second `watch` start loads the first one's bytecode
without compiling, counts the same, and a bad image costs a compile, never a failed start."""
from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from .conftest import Watch

# host lane only (heavy): nothing in it differs by kernel that the guests would add, and the
# emulated guests have the time of make test for the hook paths only they have
pytestmark = [pytest.mark.kernel, pytest.mark.heavy]
HOST_NS = os.stat("/proc/self/ns/net").st_ino


@pytest.fixture
def cache(tmp_path, monkeypatch, doctor):
    d = tmp_path / "cache"
    monkeypatch.setenv("NETDIAG_CACHE_DIR", str(d))
    return d


def connects(n: int) -> str:
    """n connects to a loopback listener, accepted and closed; its address."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    addr = "127.0.0.1:%d" % srv.getsockname()[1]
    try:
        for _ in range(n):
            c = socket.create_connection(srv.getsockname())
            a, _ = srv.accept()
            c.close()
            a.close()
    finally:
        srv.close()
    return addr


def counted(tmp, n: int) -> tuple[str, int]:
    """Start watch, make n connects, stop: (program source, connects counted to that listener)."""
    run = tmp / f"run{len(list(tmp.glob('run*')))}"      # a ready file of its own
    run.mkdir()
    w = Watch(run, "--tracepoints", "auto")
    try:
        dst = connects(n)
        w.until(lambda: w.total(HOST_NS, dst, "out", "connects") >= n, timeout=15)
    finally:
        w.stop()
    last["modes"] = w.info["modes"]
    return w.info["program"], w.total(HOST_NS, dst, "out", "connects")


last: dict = {}


def skip_unless_imaged() -> None:
    """Plans with kprobe or fentry programs (kernels that have them) compile on every start."""
    modes = last["modes"]
    hooked = {modes.get("connect"), modes.get("accept")} & {"kprobe", "fentry"}
    if hooked:
        pytest.skip(f"this kernel's plan has {'/'.join(sorted(hooked))} programs: compiled on every start, no image")


def only_image(d):
    files = [p for p in d.iterdir() if p.suffix == ".json"]
    assert len(files) == 1, files
    return files[0]


def test_second_start_loads_the_image_and_counts_the_same(cache, tmp_path, doctor):
    assert counted(tmp_path, 7) == ("compiled", 7)
    skip_unless_imaged()
    image = only_image(cache)
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert counted(tmp_path, 9) == ("cached", 9)


def test_an_image_the_kernel_refuses_is_replaced_by_a_compile(cache, tmp_path, doctor):
    assert counted(tmp_path, 3)[0] == "compiled"
    skip_unless_imaged()
    image = only_image(cache)
    data = json.loads(image.read_text())
    # `exit` with r0 never set: every program the verifier sees is refused
    for p in data["programs"]:
        p["insns"], p["relocs"] = base64.b64encode(bytes([0x95, 0, 0, 0, 0, 0, 0, 0])).decode(), []
    image.write_text(json.dumps(data))
    assert counted(tmp_path, 4) == ("compiled", 4)
    assert counted(tmp_path, 5) == ("cached", 5)      # the compile wrote a good image again


@pytest.mark.parametrize("damage", ["garbage", "group-writable"])
def test_a_damaged_or_foreign_image_is_not_loaded(cache, tmp_path, doctor, damage):
    assert counted(tmp_path, 2)[0] == "compiled"
    skip_unless_imaged()
    image = only_image(cache)
    if damage == "garbage":
        image.write_text("{not json")
    else:
        image.chmod(0o666)
    assert counted(tmp_path, 3) == ("compiled", 3)
    assert stat.S_IMODE(only_image(cache).stat().st_mode) == 0o600
    assert counted(tmp_path, 2) == ("cached", 2)


def test_cache_off_always_compiles(tmp_path, monkeypatch, doctor):
    d = tmp_path / "cache"
    monkeypatch.setenv("NETDIAG_CACHE_DIR", str(d))
    monkeypatch.setenv("NETDIAG_CACHE", "off")
    assert counted(tmp_path, 2) == ("compiled", 2)
    assert not d.exists()


def test_verbose_says_why_an_image_was_not_loaded(cache, tmp_path, doctor):
    counted(tmp_path, 1)
    skip_unless_imaged()
    image = only_image(cache)
    data = json.loads(image.read_text())
    data["maps"][0]["type"] = 4242                    # no such map type: BPF_MAP_CREATE refuses it
    image.write_text(json.dumps(data))
    p = subprocess.run([sys.executable, "-m", "netdiag", "-v", "watch", "--json", "--duration", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "program=compiled" in p.stderr
    assert "program image not loaded" in p.stderr and "EINVAL" in p.stderr, p.stderr


# -- the DNS capture (netdiag/sources/dns): its map of per-CPU rings is made again and filled ---------
@pytest.mark.parametrize("kind", ["socket", "cgroup"])
def test_dns_capture_loads_from_its_image_sees_a_query_and_detaches(cache, doctor, kind):
    from netdiag.errors import FeatureMissing
    from netdiag.sources.dns.cgcapture import RingCapture

    from .test_dns_capture import our_links
    try:
        first = RingCapture(kind)
    except FeatureMissing as e:
        pytest.skip(f"DNS capture {kind} unavailable here: {e}")
    assert first.det.program == "compiled"
    nrings = len(first.rings)
    first.close()
    assert our_links() == []
    image = only_image(cache)
    assert stat.S_IMODE(image.stat().st_mode) == 0o600

    def query_seen(cap, qid: bytes) -> bool:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(qid + b"\x01\x00\x00\x01" + b"\x00" * 6 + b"\x01a\x00\x00\x01\x00\x01", ("127.0.0.1", 53))
        finally:
            s.close()
        return any(qid + b"\x01\x00\x00\x01" in rec for rec in cap.records())

    cap = RingCapture(kind)
    try:
        assert cap.det.program == "cached", cap.det.cache_note
        assert len(cap.rings) == nrings and len(our_links()) == 2
        assert query_seen(cap, b"\xbe\xef")           # the rings were filled into the map of maps
        assert cap.lost() == 0
    finally:
        cap.close()
    assert our_links() == []

    data = json.loads(image.read_text())              # refused by the verifier: compiled again
    for p in data["programs"]:
        p["insns"], p["relocs"] = base64.b64encode(bytes([0x95, 0, 0, 0, 0, 0, 0, 0])).decode(), []
    image.write_text(json.dumps(data))
    cap = RingCapture(kind)
    try:
        assert cap.det.program == "compiled" and "program image not loaded" in cap.det.cache_note
        assert query_seen(cap, b"\xca\xfe")
    finally:
        cap.close()
    cap = RingCapture(kind)
    assert cap.det.program == "cached"
    cap.close()
    assert our_links() == []


def test_per_domain_start_says_where_the_dns_programs_came_from(cache, tmp_path, doctor):
    seen = []
    for i in range(2):
        run = tmp_path / f"pd{i}"
        run.mkdir()
        w = Watch(run, "--per-domain", "--duration", "1")
        try:
            w.until(lambda: w.intervals(), timeout=15)
        finally:
            w.stop()
        dns_mode = w.intervals()[0]["modes"]["dns"]
        if dns_mode == "packet":
            assert "dns_program" not in w.info
            pytest.skip("DNS capture on packet sockets here: no programs of its own")
        seen.append(w.info["dns_program"])
    assert seen == ["compiled", "cached"]
