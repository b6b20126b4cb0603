"""Bad input to every command, each run as `python -m netdiag ...` (unprivileged when the tests run
as root, so an input that slipped past validation stops at the privilege check, exit 77, instead of
building anything): the documented exit code, exactly one line on stderr, no traceback.

65 bad input (a value the command understands but cannot use), 2 bad option (click's usage
errors), 73 an output that cannot be created. docs/reliability.md counts these cases; the kernel
tier (tests/kernel/test_bad_input.py) checks, as root, that the refusals leave nothing behind."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.unprivileged import run_netdiag

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden" / "healthy.ndjson"


@pytest.fixture(scope="module")
def scratch():
    """A directory every user may read and write (the commands run as nobody), holding a valid
    NDJSON input, an empty file and a garbage file."""
    d = Path(tempfile.mkdtemp(prefix="nd-bad-input-"))
    os.chmod(d, 0o1777)
    shutil.copy(GOLDEN, d / "good.ndjson")
    (d / "empty.ndjson").write_bytes(b"")
    (d / "garbage.ndrec").write_bytes(b"\x00\xff" * 100)
    for f in d.iterdir():
        os.chmod(f, 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(args, cwd="/"):
    return run_netdiag(args, cwd=cwd, drop=("NETDIAG_METRICS", "NETDIAG_NODE"), timeout=60)


NEW = "{d}/new.ndrec"            # a file that can be created (in the scratch directory)
GOOD = "{d}/good.ndjson"

# (args, exit code, a word the one line must hold)
CASES = [
    # top level
    (["--bogus"], 2, "--bogus"),
    (["nosuchcommand"], 2, "nosuchcommand"),
    (["doctor", "--bogus"], 2, "--bogus"),
    # watch
    (["watch", "--interval", "0"], 2, "--interval"),
    (["watch", "--interval", "-1"], 2, "--interval"),
    (["watch", "--interval", "nan"], 2, "--interval"),
    (["watch", "--duration", "0"], 2, "--duration"),
    (["watch", "--duration", "-3"], 2, "--duration"),
    (["watch", "--duration", "inf"], 2, "--duration"),
    (["watch", "--netns", "../../proc/1/ns/net"], 65, "--netns"),
    (["watch", "--netns", "a;rm -rf /"], 65, "--netns"),
    (["watch", "--netns", "$(id)"], 65, "--netns"),
    (["watch", "--netns", "nd-does-not-exist"], 65, "nd-does-not-exist"),
    (["watch", "--netns", "0"], 65, "--netns"),
    (["watch", "--node", "a/b"], 65, "--node"),
    (["watch", "--node", "n`id`"], 65, "--node"),
    (["watch", "--node", ""], 65, "--node"),
    (["watch", "--port", "0"], 2, "--port"),
    (["watch", "--port", "70000"], 2, "--port"),
    (["watch", "--dst", "10.0.0.0/33"], 2, "--dst"),
    (["watch", "--socket-slots", "3000"], 2, "--socket-slots"),
    (["watch", "--max-dsts", "1"], 2, "--max-dsts"),
    (["watch", "--top", "0"], 2, "--top"),
    (["watch", "--mode", "bogus"], 2, "--mode"),
    (["watch", "--record", "/"], 2, "--record"),
    (["watch", "--record", "/etc/passwd"], 73, "exists"),
    (["watch", "--record", "/etc/passwd/x.ndrec"], 73, "not a directory"),
    (["watch", "--ready-file", "/nonexistent-dir/ready"], 73, "--ready-file"),
    (["watch", "--host-root", "/nonexistent-dir"], 65, "--host-root"),
    (["watch", "--metrics", "70000"], 2, "--metrics"),
    (["watch", "--metrics", "localhost:9464"], 2, "--metrics"),
    (["watch", "--metrics", "9464", "--metrics-ttl", "0"], 2, "--metrics-ttl"),
    (["watch", "--dns-share", "nan"], 2, "--dns-share"),
    # record
    (["record"], 2, "--out"),
    (["record", "--out", "/"], 2, "--out"),
    (["record", "--out", "/etc/passwd"], 73, "exists"),
    (["record", "--out", "/etc/passwd/x.ndrec"], 73, "not a directory"),
    (["record", "--out", NEW, "--max-size", "1"], 2, "--max-size"),
    (["record", "--out", NEW, "--max-size", "lots"], 2, "--max-size"),
    (["record", "--out", NEW, "--max-age", "0"], 2, "--max-age"),
    (["record", "--out", NEW, "--keep", "3"], 2, "--keep"),
    (["record", "--out", NEW, "--trigger", "verdict"], 2, "--trigger"),
    (["record", "--out", NEW, "--ring", "10m", "--trigger", "verdict:nope"], 65, "nope"),
    (["record", "--out", NEW, "--node", "../x"], 65, "--node"),
    (["record", "--out", NEW, "--flush", "0"], 2, "--flush"),
    (["record", "--out", NEW, "--interval", "-5"], 2, "--interval"),
    (["record", "--out", NEW, "--netns", "x/y"], 65, "--netns"),
    # trace
    (["trace", "bogus"], 2, "bogus"),
    (["trace", "--pid", "0"], 2, "--pid"),
    (["trace", "--pid", "99999999"], 2, "--pid"),
    (["trace", "--duration", "-1"], 2, "--duration"),
    (["trace", "--netns", "a b"], 65, "--netns"),
    (["trace", "--ready-file", "/"], 2, "--ready-file"),
    (["trace", "--ready-file", "/nonexistent-dir/ready"], 73, "--ready-file"),
    # conntrack
    (["conntrack", "--interval", "0"], 2, "--interval"),
    (["conntrack", "--duration", "nan"], 2, "--duration"),
    (["conntrack", "--netns", "x|y"], 65, "--netns"),
    # snapshot
    (["snapshot"], 2, "--out"),
    (["snapshot", "--out", "/"], 2, "--out"),
    (["snapshot", "--out", "/etc/passwd"], 73, "exists"),
    (["snapshot", "--out", "/etc/passwd/x.ndsnap"], 73, "not a directory"),
    (["snapshot", "--out", NEW, "--node", "n;reboot"], 65, "--node"),
    # report
    (["report"], 2, "FILES"),
    (["report", "/nonexistent.ndrec"], 65, "no such file"),
    (["report", "{d}/empty.ndjson"], 65, "no intervals"),
    (["report", "{d}/garbage.ndrec"], 65, "garbage.ndrec"),
    (["report", "/etc/ssl"], 65, "no recordings"),
    (["report", GOOD, "--since", "yesterday"], 2, "--since"),
    (["report", GOOD, "--since", "2", "--until", "1"], 2, "--since"),
    (["report", GOOD, "--dst", "nonsense"], 2, "--dst"),
    (["report", GOOD, "--threshold", "nope=1"], 2, "--threshold"),
    (["report", GOOD, "--threshold", "confirm_intervals=x"], 2, "--threshold"),
    (["report", GOOD, "--recorded-verdicts", "--threshold", "confirm_intervals=1"], 2, "--recorded-verdicts"),
    (["report", GOOD, "--html", "/nonexistent-dir/r.html"], 73, "--html"),
    (["report", GOOD, "--html", "/"], 2, "--html"),
    (["report", GOOD, "--png", "/etc/passwd"], 2, "--png"),
    (["report", GOOD, "--node", "nosuch"], 65, "nosuch"),
    (["report", GOOD, "--top", "0"], 2, "--top"),
    # load
    (["load", "server"], 2, "--port"),
    (["load", "server", "--port", "0"], 65, "port"),
    (["load", "server", "--port", "80;id"], 65, "port"),
    (["load", "server", "--port", "18080", "--bind", "x;y"], 65, "--bind"),
    (["load", "server", "--port", "18080", "--bind", "::1"], 65, "--bind"),
    (["load", "server", "--port", "18080", "--duration", "nan"], 2, "--duration"),
    (["load", "server", "--port", "18080", "--workers", "0"], 65, "--workers"),
    (["load", "server", "--port", "18080", "--backlog", "-1"], 65, "--backlog"),
    (["load", "server", "--port", "18080", "--stats-interval", "0"], 65, "--stats-interval"),
    (["load", "server", "--port", "18080", "--bind", "198.18.255.254"], 65, "not on this host"),
    (["load", "client"], 65, "target"),
    (["load", "client", "10.1.2.3:80"], 65, "10.1.2.3"),
    (["load", "client", "127.0.0.1:0"], 65, "port"),
    (["load", "client", "127.0.0.1:80", "--connections", "-1"], 65, "--connections"),
    (["load", "client", "127.0.0.1:80", "--timeout", "nan"], 2, "--timeout"),
    (["load", "client", "127.0.0.1:80", "--rate", "0"], 65, "--rate"),
    (["load", "client", "127.0.0.1:80", "--threads", "2", "--single"], 65, "--threads"),
    # labs
    (["lab", "nosuch"], 2, "nosuch"),
    (["lab", "snat-cap", "--ports", "0"], 65, "--ports"),
    (["lab", "snat-cap", "--ports", "70000"], 65, "--ports"),
    (["lab", "snat-cap", "--ports", "x"], 2, "--ports"),
    (["lab", "remote-cap", "--ports", "-3"], 65, "--ports"),
    (["lab", "port-exhaustion", "--ports", "0"], 65, "--ports"),
    (["lab", "listen-overflow", "--backlog", "0"], 65, "--backlog"),
    (["lab", "idle-timeout", "--timeout", "0"], 65, "--timeout"),
    (["lab", "idle-timeout", "--timeout", "1000"], 65, "--timeout"),
    (["lab", "microburst", "--window-ms", "nan"], 65, "--window-ms"),
    (["lab", "microburst", "--bursts", "0"], 65, "--bursts"),
    (["lab", "churn", "--seconds", "inf"], 65, "--seconds"),
    (["lab", "churn", "--requests-per-conn", "0"], 65, "--requests-per-conn"),
    (["lab", "conntrack-full", "--max", "300"], 65, "--allow-host-sysctl"),
    (["lab", "conntrack-full", "--max", "5", "--allow-host-sysctl"], 65, "--max"),
    (["lab", "fanout", "--requests-per-conn", "101"], 65, "--requests-per-conn"),
    (["lab", "fanout", "--upstream-keepalive", "-1"], 65, "--upstream-keepalive"),
    (["lab", "healthy", "--clients", "0"], 65, "--clients"),
    (["lab", "healthy", "--record", "/etc/passwd"], 73, "--record"),
    (["lab", "healthy", "--record", "/"], 2, "--record"),
]


def _ids():
    return [" ".join(a)[:60] for a, _, _ in CASES]


@pytest.mark.parametrize("args,code,needle", CASES, ids=_ids())
def test_bad_input_is_one_line_and_its_exit_code(scratch, args, code, needle):
    argv = [a.format(d=scratch) for a in args]
    p = run(argv)
    assert p.returncode == code, f"{argv}: exit {p.returncode}, stderr: {p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"{argv}: stderr is not one line: {p.stderr}"
    assert "Traceback" not in p.stderr
    assert lines[0].startswith("netdiag: error: "), lines[0]
    assert needle in lines[0], f"{argv}: {needle!r} not in {lines[0]!r}"
    # nothing was created next to the input
    assert not (scratch / "new.ndrec").exists()


def test_load_server_on_a_port_in_use():
    """bind() refused because the port is taken: the address asked for is the problem (65), as
    for `watch --metrics`; the listener that holds it is untouched."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for workers in ("1", "3"):
            p = run(["load", "server", "--port", str(port), "--workers", workers, "--duration", "5"])
            assert p.returncode == 65, p.stderr
            assert p.stderr.strip() == f"netdiag: error: cannot listen on 127.0.0.1:{port}: the port is in use"
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):    # still ours, still listening
            s.accept()


def test_cases_cover_every_command():
    from netdiag.cli import cli
    covered = {a[0] for a, _, _ in CASES}
    assert set(cli.list_commands(None)) <= covered
    from netdiag.labs.scenarios import SCENARIOS
    labs = {a[1] for a, _, _ in CASES if a[0] == "lab"}
    assert set(SCENARIOS) <= labs, set(SCENARIOS) - labs


def test_case_count():
    """docs/reliability.md states how many bad inputs are tried: keep it true."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    assert f"{len(CASES)} bad inputs" in text
