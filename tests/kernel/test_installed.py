"""netdiag as users install it: the wheel and the sdist, each built from this checkout and
installed into a fresh virtualenv outside it (Debian's BCC the only system package it sees, as
scripts/setup.sh does), then `doctor`, `trace` and `watch` with exact counts and one lab with its
exact verdict, all run from that virtualenv with a working directory outside the checkout.

The program-image cache of each form starts empty, so the first `trace` and `watch` compile the
C sources the installed package holds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netdiag.labs.topology import Topology

from .conftest import Peer, Tracer, Watch, record_result

# host lane only (heavy): the emulated VM lane has no network for installs and no time for it
pytestmark = [pytest.mark.kernel, pytest.mark.heavy]
ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PY = "/usr/bin/python3"
BCC = Path("/usr/lib/python3/dist-packages/bcc")
SRV, CLI = "198.18.6.1", "198.18.6.2"
FORMS = ("wheel", "sdist")


def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def dists(doctor, tmp_path_factory) -> dict[str, Path]:
    """The wheel and the sdist, built from a copy of the checkout's tracked files (so nothing
    of the editable install or of earlier builds leaks in)."""
    if not Path(SYSTEM_PY).exists() or not BCC.is_dir():
        pytest.skip(f"{SYSTEM_PY} or Debian's BCC ({BCC}) missing: run scripts/setup.sh")
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    files = _run("git", "-C", ROOT, "ls-files", "-z").stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = tmp / "out"
    _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, src)
    wheel = next(out.glob("netdiag-*.whl"))
    sdist = next(out.glob("netdiag-*.tar.gz"))
    names = _run(sys.executable, "-m", "zipfile", "-l", wheel).stdout
    for name in ("netdiag/bpf/__init__.py", "netdiag/bpf/nd_common.h", "netdiag/bpf/agg.c", "netdiag/bpf/dns.c"):
        assert name in names, f"{name} missing from the wheel"
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module", params=FORMS)
def installed(request, dists, tmp_path_factory):
    """A fresh virtualenv with one form installed; its `netdiag` and a working directory and
    program cache of its own."""
    form = request.param
    tmp = tmp_path_factory.mktemp(f"installed-{form}")
    venv = tmp / "venv"
    _run(SYSTEM_PY, "-m", "venv", venv)
    py = venv / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    only_bcc = venv / "system-bcc"
    only_bcc.mkdir()
    (only_bcc / "bcc").symlink_to(BCC)
    (site / "netdiag-system-bcc.pth").write_text(f"{only_bcc}\n")
    _run(py, "-m", "pip", "install", "-q", dists[form], cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NETDIAG_CACHE_DIR")}
    env["NETDIAG_CACHE_DIR"] = str(tmp / "program-cache")
    where = _run(py, "-c", "import netdiag, netdiag.kernel.bpfsrc as b; print(netdiag.__file__); print(b.source_dir())",
                 cwd=work, env=env).stdout.split()
    for p in where:                       # imported from the virtualenv, not from the checkout
        assert Path(p).is_relative_to(site), (form, where)
    return {"form": form, "netdiag": (str(venv / "bin" / "netdiag"),), "cwd": str(work), "env": env,
            "tmp": tmp}


@pytest.fixture(scope="module")
def topo(doctor):
    with Topology() as t:
        t.srv = t.add_ns("isrv")
        t.cli = t.add_ns("icli")
        t.link(t.srv, f"{SRV}/24", t.cli, f"{CLI}/24")
        yield t


def _popen(inst) -> dict:
    return {"netdiag": inst["netdiag"], "cwd": inst["cwd"], "env": inst["env"]}


def test_doctor(installed):
    p = _run(*installed["netdiag"], "doctor", "--json", cwd=installed["cwd"], env=installed["env"])
    rep = json.loads(p.stdout)
    assert rep["bpf_works"] is True
    assert {c["name"] for c in rep["checks"]} >= {"bpf() syscall", "BTF tracepoints"}


def test_trace_23_connects(installed, topo):
    tr = Tracer(installed["tmp"], "--mode", "auto", **_popen(installed))
    server = client = None
    try:
        tr.wait_ready()
        server = Peer(topo.srv, "serve", SRV, 8081, 23)
        server.line()
        client = Peer(topo.cli, "connect", SRV, 8081, 23)
        assert client.line()["ok"] == 23
        assert server.line() == {"accepted": 23}
        dst, cli = f"{SRV}:8081", topo.inode(topo.cli)
        got = tr.wait_for(lambda e: e["type"] == "connect" and e["netns"] == cli and e["dst"] == dst, 23)
    finally:
        for peer in (client, server):
            if peer:
                peer.close()
        summary = tr.stop()
    assert len(got) == 23 and all(e["result"] == "ok" for e in got)
    assert summary["lost_events"] == 0


def test_watch_23_connects(installed, topo):
    w = Watch(installed["tmp"], **_popen(installed))
    server = client = None
    cli, srv, dst = topo.inode(topo.cli), topo.inode(topo.srv), f"{SRV}:8082"
    try:
        assert w.info["program"] == "compiled"
        server = Peer(topo.srv, "serve", SRV, 8082, 23)
        server.line()
        client = Peer(topo.cli, "connect", SRV, 8082, 23)
        assert client.line()["ok"] == 23
        assert server.line() == {"accepted": 23}
        assert w.until(lambda: any(r["active"] == 23 for r in w.rows(cli, dst, "out")))
        w.until(lambda: w.total(srv, dst, "in", "established") >= 23)
    finally:
        for peer in (client, server):
            if peer:
                peer.close()
        w.stop()
    record_result(f"installed-{installed['form']}/watch", {"connects": w.total(cli, dst, "out", "connects")})
    assert w.total(cli, dst, "out", "connects") == 23
    assert w.total(cli, dst, "out", "established") == 23
    assert w.total(cli, dst, "out", "failed") == 0
    assert w.total(srv, dst, "in", "established") == 23


def test_lab_snat_cap_11(installed):
    p = subprocess.run([*installed["netdiag"], "lab", "snat-cap", "--ports", "11", "--json"],
                       capture_output=True, text=True, timeout=300, cwd=installed["cwd"], env=installed["env"])
    assert p.returncode == 0, p.stderr[-2000:]
    res = [json.loads(line) for line in p.stdout.splitlines() if line.strip()][-1]
    assert res["type"] == "lab" and res["error"] is None
    kinds = [v["kind"] for v in res["verdicts"]]
    assert kinds == ["snat_port_exhaustion"], res["verdicts"]
    assert res["verdicts"][0]["cap"] == 11
