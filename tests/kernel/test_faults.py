"""Faults while `netdiag watch` runs or starts: namespaces made and removed at a high rate, netfilter
netlink absent, tracefs not mounted, the program-image cache unwritable, corrupt or tampered with,
the compile child killed, the disk filling while recording, metrics clients that break off or
crawl, and SIGINT / SIGTERM / SIGHUP at each phase of start-up and shutdown. Each case goes on, or
ends with one line and a documented exit code; the leak scan (conftest.py) runs after each.
docs/reliability.md, "Faults", lists what each case does and what netdiag did."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from netdiag.offline import format as fm
from tests.kernel.conftest import READY_TIMEOUT, ROOT, record_result

pytestmark = [pytest.mark.kernel, pytest.mark.heavy]
NETDIAG = [sys.executable, "-m", "netdiag"]
FAULTWRAP = ROOT / "tests" / "kernel" / "faultwrap.py"
CHURN_N = int(os.environ.get("ND_CHURN_N", "1000"))
CHURN_MAX_S = 60.0
OUTCOMES: dict = {}


def outcome(case: str, **kw) -> None:
    OUTCOMES[case] = kw
    record_result(f"fault_{case}", kw)
    p = ROOT / "results" / "faults.json"
    p.parent.mkdir(exist_ok=True)
    data = json.loads(p.read_text()) if p.exists() else {}
    data[case] = kw
    p.write_text(json.dumps(data, indent=2, sort_keys=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def errors_of(stderr: str) -> list[str]:
    """The lines of stderr that are not netdiag's progress notes."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("netdiag: attached",
                                                                                    "netdiag: recorded",
                                                                                    "netdiag: conntrack off"))]


def _default_signals() -> None:
    """In the child: SIGINT and SIGHUP as a terminal's foreground job gets them. A test run started
    in the background or under nohup passes them on ignored, and a program that starts with a
    signal ignored rightly keeps ignoring it until it sets its own handler."""
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def start(tmp: Path, *args, env=None, cmd=None) -> tuple[subprocess.Popen, Path]:
    ready = tmp / f"w{time.monotonic_ns()}.ready"
    p = subprocess.Popen([*(cmd or NETDIAG), "watch", "--json", "--ready-file", str(ready), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **(env or {})), preexec_fn=_default_signals)
    return p, ready


def wait_ready(p: subprocess.Popen, ready: Path) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.exists():
        if p.poll() is not None:
            raise AssertionError(f"watch exited {p.returncode}: {p.stderr.read()}")
        assert time.monotonic() < deadline, "watch did not attach in time"
        time.sleep(0.02)
    return json.loads(ready.read_text())


def finish(p: subprocess.Popen, sig=signal.SIGINT, timeout=60) -> tuple[int, list[dict], str]:
    if p.poll() is None:
        p.send_signal(sig)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, [json.loads(ln) for ln in out.splitlines() if ln.strip()], err


def run(*args, env=None, cmd=None, timeout=120) -> tuple[int, list[dict], str]:
    p = subprocess.run([*(cmd or NETDIAG), "watch", "--json", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, **(env or {})))
    lines = []
    for ln in p.stdout.splitlines():
        try:
            lines.append(json.loads(ln))
        except json.JSONDecodeError:
            lines.append({"type": "garbled", "line": ln[:80]})
    return p.returncode, lines, p.stderr


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def named_netns() -> int:
    return len(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else 0


def live_netns() -> int | None:
    """Network namespaces alive in the kernel, named or not, held by a process or only by a socket
    (the net_namespace slab's active objects), where the slab is not merged away."""
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines():
            if line.startswith("net_namespace "):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# -- namespaces made and removed at a high rate ------------------------------------------------------
def test_namespace_churn(doctor, tmp_path):
    """CHURN_N namespaces added and deleted (ip -batch, 25 at a time) while watch runs: it keeps
    its intervals, follows the namespaces, and holds no handle of a removed one afterwards."""
    p, ready = start(tmp_path, "--interval", "0.5")
    names = [f"nd-fz{i:04d}" for i in range(CHURN_N)]
    try:
        wait_ready(p, ready)
        time.sleep(1.0)
        fds0, ns0, live0 = fd_count(p.pid), named_netns(), live_netns()
        t0 = time.monotonic()
        made = 0
        for i in range(0, CHURN_N, 25):
            chunk = names[i:i + 25]
            batch = "".join(f"netns add {n}\n" for n in chunk)
            subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True, capture_output=True)
            time.sleep(0.05)
            batch = "".join(f"netns del {n}\n" for n in chunk)
            subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True, capture_output=True)
            made += len(chunk)
            if time.monotonic() - t0 > CHURN_MAX_S:
                break
        took = time.monotonic() - t0
        time.sleep(6.0)                  # the periodic namespace walk (5 s) has seen them all go
        fds1, ns1 = fd_count(p.pid), named_netns()
        live1 = live_netns()
        for _ in range(150):             # the kernel frees namespaces in batches after their last reference
                                         # (cleanup_net): after a churn of hundreds, up to 30 s
            if live1 is None or live0 is None or live1 <= live0 + max(0, ns1 - ns0) + 20:
                break
            time.sleep(0.2)
            live1 = live_netns()
        alive = p.poll() is None
    finally:
        rc, lines, err = finish(p)
        left = set(os.listdir("/run/netns")) & set(names) if os.path.isdir("/run/netns") else set()
        for n in left:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
    ivs = [r for r in lines if r["type"] == "interval"]
    assert alive and rc == 0, err
    assert not errors_of(err), err
    # other runs on the machine may add namespaces meanwhile: watch opens a few handles in each
    # (inet_diag, netstat, conntrack statistics and events); one kept per churned namespace would be
    # hundreds
    assert fds1 <= fds0 + 6 * max(0, ns1 - ns0) + 8, f"fds {fds0} -> {fds1} (named namespaces {ns0} -> {ns1})"
    if live0 is not None:
        assert live1 <= live0 + max(0, ns1 - ns0) + 20, f"namespaces alive {live0} -> {live1}: some kept by a handle"
    lens = [r["interval_s"] for r in ivs[1:]]
    # the intervals keep coming; while namespaces come and go by the hundred a second, the walk of
    # each new one (its sockets opened inside it) makes some late (docs/reliability.md)
    assert ivs and max(lens) < 10.0, lens
    outcome("netns_churn", namespaces=made, seconds=round(took, 1), per_minute=round(made / took * 60),
            intervals=len(ivs), max_interval_s=max(lens), fds_before=fds0, fds_after=fds1,
            named_netns_before=ns0, named_netns_after=ns1, live_netns_before=live0, live_netns_after=live1, exit=rc)


# -- netfilter netlink absent ----------------------------------------------------------------------------
def test_conntrack_netlink_absent(doctor, tmp_path):
    env = {"PYTHONPATH": str(ROOT)}
    rc, lines, err = run("--duration", "2", "--interval", "0.5", cmd=[sys.executable, str(FAULTWRAP), "no-nfnetlink"],
                         env=env)
    assert rc == 0, err
    assert not errors_of(err), err
    ivs = [r for r in lines if r["type"] == "interval"]
    assert ivs and all(r["modes"]["conntrack"] == "off" for r in ivs)
    assert "netdiag: conntrack off: ctnetlink unavailable" in err, err
    outcome("conntrack_absent", exit=rc, intervals=len(ivs), conntrack_mode=ivs[0]["modes"]["conntrack"])


# -- tracefs not mounted -----------------------------------------------------------------------------------
def test_tracefs_not_mounted(doctor, tmp_path):
    """In a private mount namespace with tracefs (and debugfs's tracing) unmounted."""
    script = ("for m in /sys/kernel/debug/tracing /sys/kernel/tracing; do "
              "while mountpoint -q $m; do umount -l $m || exit 9; done; done; "
              f"{sys.executable} -m netdiag watch --json --duration 2 --interval 0.5; rc=$?; "
              "mountpoint -q /sys/kernel/tracing && echo 'tracefs: mounted again' >&2; exit $rc")
    for cache in ("cached", "off"):
        env = dict(os.environ, **({"NETDIAG_CACHE": "off"} if cache == "off" else {}))
        p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                           capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
        assert p.returncode != 9, "cannot unmount tracefs in a private mount namespace"
        remounted = "tracefs: mounted again" in p.stderr
        errs = [ln for ln in errors_of(p.stderr) if ln != "tracefs: mounted again"]
        ivs = [ln for ln in p.stdout.splitlines() if '"type":"interval"' in ln]
        if p.returncode == 0:
            assert ivs and not errs, p.stderr
        else:
            assert p.returncode in (69, 70) and len(errs) == 1 and errs[0].startswith("netdiag: error:"), p.stderr
        outcome(f"tracefs_absent_{cache}", exit=p.returncode, intervals=len(ivs), message=errs[0] if errs else None,
                netdiag_mounted_tracefs=remounted)


# -- the program-image cache --------------------------------------------------------------------------------
def _program(tmp: Path, cache: Path, verbose=False) -> tuple[str, str]:
    p, ready = start(tmp, "--interval", "0.5", env={"NETDIAG_CACHE_DIR": str(cache)},
                     cmd=[*NETDIAG, "-v"] if verbose else None)
    info = wait_ready(p, ready)
    rc, _lines, err = finish(p)
    assert rc == 0, err
    return info["program"], err


def test_program_cache_unwritable_corrupt_tampered(doctor, tmp_path):
    cache = tmp_path / "cache"
    assert _program(tmp_path, cache)[0] == "compiled"
    images = list(cache.glob("*.json"))
    assert len(images) == 1
    img = images[0]
    assert _program(tmp_path, cache)[0] == "cached"
    seen = {}

    def trusted():
        st = img.stat()
        return st.st_uid == 0 and st.st_mode & 0o077 == 0

    img.write_text('{"format": 1, "maps": [{"type": 1')          # corrupt: cut short
    seen["corrupt"] = _program(tmp_path, cache)[0]
    assert seen["corrupt"] == "compiled" and trusted() and json.loads(img.read_text())["format"] == 1
    img.chmod(0o666)                                               # writable by others
    seen["mode_0666"] = _program(tmp_path, cache)[0]
    assert seen["mode_0666"] == "compiled" and trusted()
    os.chown(img, 65534, 65534)                                    # not root's
    seen["owner_nobody"] = _program(tmp_path, cache)[0]
    assert seen["owner_nobody"] == "compiled" and trusted()
    data = json.loads(img.read_text())                             # tampered: a program's bytecode changed
    data["programs"][0]["insns"] = "AAAA"
    img.write_text(json.dumps(data))
    img.chmod(0o600)
    seen["bytecode_tampered"] = _program(tmp_path, cache)[0]
    assert seen["bytecode_tampered"] == "compiled"
    assert _program(tmp_path, cache)[0] == "cached"
    cache.chmod(0o777)                                             # a directory others can write
    prog, err = _program(tmp_path, cache, verbose=True)
    seen["dir_0777"] = prog
    assert prog == "compiled" and "program cache off" in err, err
    cache.chmod(0o700)
    blocker = tmp_path / "file"
    blocker.write_text("")                                         # unwritable: a file where a directory goes
    prog, err = _program(tmp_path, blocker / "cache", verbose=True)
    seen["unwritable"] = prog
    assert prog == "compiled" and ("no program image written" in err or "program cache off" in err), err
    outcome("program_cache", **seen)


# -- the compile child killed ----------------------------------------------------------------------------------
def _loader_child(ppid: int) -> int | None:
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == ppid and b"netdiag.kernel.loader" in cmd:
            return int(d)
    return None


@pytest.mark.parametrize("after_s", [0.0, 0.3], ids=["at-once", "compiling"])
def test_compile_child_killed(doctor, tmp_path, after_s):
    """Killed as soon as it exists (the request still unread: the parent's socket is reset) and
    0.3 s later (inside BCC's compile)."""
    p, _ready = start(tmp_path, "--interval", "0.5", env={"NETDIAG_CACHE": "off"})
    deadline = time.monotonic() + 60
    child = None
    while child is None and time.monotonic() < deadline and p.poll() is None:
        child = _loader_child(p.pid)
        time.sleep(0.01)
    assert child is not None, "no compile child seen"
    time.sleep(after_s)
    os.kill(child, signal.SIGKILL)
    rc, lines, err = finish(p, sig=0)
    errs = errors_of(err)
    assert rc == 70 and len(errs) == 1 and errs[0].startswith("netdiag: error:"), err
    assert "killed by SIGKILL" in errs[0], err
    assert not [r for r in lines if r["type"] == "interval"]
    outcome(f"compile_child_killed_{'at_once' if after_s == 0 else 'compiling'}", exit=rc, message=errs[0])


# -- the disk fills up while recording ---------------------------------------------------------------------------
def test_disk_full_while_recording(doctor, tmp_path):
    """watch --record onto a 64 KiB tmpfs (in a private mount namespace): the header and the first
    flushes (10 s of 0.1 s intervals, ~20-50 KB) fit, a later one does not."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {mnt} || exit 9; "
              f"exec {sys.executable} -m netdiag watch --json --interval 0.1 --record {mnt}/r.ndrec "
              f"--duration 90")
    # what was recorded is read back from inside the same mount namespace, before it goes
    check = (f"; rc=$?; {sys.executable} -m netdiag report {mnt}/r.ndrec --json > {tmp_path}/rep.json; "
             f"echo $? > {tmp_path}/rep.rc; exit $rc")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script.replace("exec ", "") + check],
                       capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert p.returncode != 9, "cannot mount a tmpfs in a private mount namespace"
    errs = errors_of(p.stderr)
    assert p.returncode == 73, p.stderr
    assert len(errs) == 1 and "disk full" in errs[0], p.stderr
    assert (tmp_path / "rep.rc").read_text().strip() == "0"
    rep = json.loads((tmp_path / "rep.json").read_text())
    recorded = rep["inputs"][0]["intervals"]
    assert recorded > 0
    outcome("disk_full", exit=p.returncode, message=errs[0], intervals_kept=recorded)


# -- metrics clients that break off or crawl ------------------------------------------------------------------------
def test_metrics_clients_break_off_and_crawl(doctor, tmp_path):
    port = free_port()
    p, ready = start(tmp_path, "--interval", "0.5", "--metrics", f"127.0.0.1:{port}")
    try:
        wait_ready(p, ready)
        time.sleep(1.2)
        addr = ("127.0.0.1", port)
        idle = socket.create_connection(addr)                     # sends nothing
        t_idle = time.monotonic()
        for what in (b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"):
            s = socket.create_connection(addr)                    # breaks off mid-request / before reading
            s.sendall(what)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")   # RST on close
            s.close()
        slow = socket.create_connection(addr)                     # reads a byte every 0.1 s
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        fast = []
        for _ in range(20):
            got += slow.recv(1)
            time.sleep(0.1)
            if len(fast) < 3:
                t0 = time.monotonic()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    assert r.status == 200
                fast.append(time.monotonic() - t0)
        slow.close()
        idle.settimeout(15)
        assert idle.recv(1) == b""                                 # the server let it go
        idle_s = time.monotonic() - t_idle
        idle.close()
    finally:
        rc, lines, err = finish(p)
    ivs = [r for r in lines if r["type"] == "interval"]
    assert rc == 0 and not errors_of(err), err
    assert got.startswith(b"HTTP/1.")
    assert max(fast) < 1.0
    lens = [r["interval_s"] for r in ivs[1:]]
    # a scraper that crawls or breaks off costs the interval loop nothing: at most one interval in
    # ten late by more than 10 % (the shared machine's other jobs), none by more than half
    assert sum(x > 0.55 for x in lens) <= max(1, len(lens) // 10) and max(lens) <= 0.75, lens
    outcome("metrics_clients", exit=rc, scrape_s_beside_slow=round(max(fast), 3), idle_dropped_after_s=round(idle_s, 1),
            max_interval_s=max(lens))


# -- signals at each phase ------------------------------------------------------------------------------------------
PHASES = ("loading", "compiling", "mid-interval", "shutdown")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
def test_signals_at_each_phase(doctor, tmp_path, sig):
    """loading: 0.3 s after exec (Python loading netdiag); compiling: while the compile child runs
    (no program image); mid-interval: attached, half-way through an interval; shutdown: a second
    signal 20 ms after SIGINT."""
    seen = {}
    for phase in PHASES:
        rec = tmp_path / f"{phase}.ndrec"
        env = {"NETDIAG_CACHE": "off"} if phase == "compiling" else None
        p, ready = start(tmp_path, "--interval", "0.5", "--record", rec, env=env)
        if phase == "loading":
            time.sleep(0.05)
        elif phase == "compiling":
            deadline = time.monotonic() + 60
            while _loader_child(p.pid) is None and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.01)
            assert not ready.exists()
        else:
            wait_ready(p, ready)
            time.sleep(1.25)
        if phase == "shutdown":
            p.send_signal(signal.SIGINT)
            time.sleep(0.02)
        p.send_signal(sig)
        rc, lines, err = finish(p, sig=0)
        errs = errors_of(err)
        # Python itself still starting (site, runpy) or importing the package: its own
        # KeyboardInterrupt (exit 1 or the signal), before any netdiag code ran
        python_own = (phase == "loading" and sig == signal.SIGINT and rc in (1, -signal.SIGINT)
                      and "KeyboardInterrupt" in err and "/netdiag/" not in err)
        if python_own:
            errs = []
        else:
            assert "Traceback" not in err, err
        assert not errs, err
        summary = [r for r in lines if r["type"] == "summary"]
        if python_own:
            pass
        elif phase == "loading":
            # before netdiag's handlers: 130, or the signal's default action (Python still starting);
            # after them (a fast start from the program image): a clean stop
            assert rc in (0, 130, -sig), err
        elif phase == "compiling":
            assert rc in (0, 130), err
        else:
            assert rc == 0 and summary, err
            assert len(fm.records(fm.read(rec))) == len([r for r in lines if r["type"] == "interval"])
        if rec.exists() and rc == 0:
            fm.read(rec)                                            # a recording left is a valid one
        seen[phase] = rc
    outcome(f"signal_{signal.Signals(sig).name}", **seen)
