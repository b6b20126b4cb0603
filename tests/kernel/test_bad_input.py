"""Bad input refused before anything is made, as root: every lab with a parameter out of its range
(and the options that need another), `record` and `snapshot` with an unusable output, a bad name or
a bad namespace. Each command runs where it could have built something — as root, in a private
mount and network namespace (`unshare`) whose /run/netns is a fresh tmpfs, so what another test on
the node makes meanwhile cannot be mistaken for ours — and afterwards there is no new namespace,
no iptables or nft rule, no changed sysctl, no file in the output directory and no lab state file;
stderr is one line and the exit code the documented one."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# nothing here depends on the kernel's version: the host lane runs it, the emulated guests need not
# (`heavy` keeps it out of their `-m "not heavy"` run)
pytestmark = [pytest.mark.kernel, pytest.mark.heavy]

if os.geteuid() != 0:
    pytest.skip("needs root: the refusals are checked where a lab could build namespaces and rules "
                "(run the kernel tier as root)", allow_module_level=True)
for tool in ("unshare", "ip", "iptables-save", "nft"):
    if not shutil.which(tool):
        pytest.skip(f"{tool} missing (scripts/setup.sh installs it)", allow_module_level=True)

# The state a refused command must leave as it found it, printed by one shell function inside
# the private namespaces: namespaces, rules, the per-namespace sysctls labs set, the output
# directory, the labs' state directory.
SCRIPT = r"""
set -u
mkdir -p /run/netns && mount -t tmpfs netdiag-test /run/netns || exit 99
state() {
    echo "== netns"; ip netns list
    echo "== iptables"; iptables-save 2>/dev/null | grep -v '^#'
    echo "== nft"; nft list ruleset 2>/dev/null
    echo "== sysctl"; sysctl -n net.ipv4.ip_local_port_range net.ipv4.ip_forward 2>/dev/null
    echo "== out"; find "$OUT" | sort
    echo "== labs"; ls -a /run/netdiag/labs 2>/dev/null || true
}
state > "$STATE/before"
"$@" 2> "$STATE/stderr"
echo $? > "$STATE/rc"
state > "$STATE/after"
exit 0
"""

CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")

OUT = "{out}"
CASES = [
    # every lab, one parameter out of its range
    (["lab", "snat-cap", "--ports", "0"], 65),
    (["lab", "snat-cap", "--ports", "70000"], 65),
    (["lab", "remote-cap", "--ports", "0"], 65),
    (["lab", "port-exhaustion", "--ports", "99999"], 65),
    (["lab", "listen-overflow", "--backlog", "0"], 65),
    (["lab", "idle-timeout", "--timeout", "0"], 65),
    (["lab", "microburst", "--window-ms", "nan"], 65),
    (["lab", "churn", "--seconds", "-1"], 65),
    (["lab", "conntrack-full", "--max", "300"], 65),                           # needs --allow-host-sysctl
    (["lab", "conntrack-full", "--max", "5", "--allow-host-sysctl"], 65),
    (["lab", "fanout", "--requests-per-conn", "101"], 65),
    (["lab", "healthy", "--clients", "0"], 65),
    (["lab", "healthy", "--record", "/etc/passwd"], 73),
    (["lab", "healthy", "--record", "/etc/passwd/x.ndrec"], 73),
    # record, watch --record
    (["record", "--out", "/etc/passwd"], 73),
    (["record", "--out", OUT + "/r.ndrec", "--node", "../x"], 65),
    (["record", "--out", OUT + "/r.ndrec", "--netns", "../../proc/1/ns/net"], 65),
    (["record", "--out", OUT + "/r.ndrec", "--netns", "nd-no-such-namespace"], 65),
    (["record", "--out", OUT + "/r.ndrec", "--ring", "1m", "--trigger", "verdict:nope"], 65),
    (["record", "--out", OUT + "/r.ndrec", "--max-size", "1"], 2),
    (["record", "--out", OUT + "/sub/r.ndrec", "--ready-file", "/nonexistent-dir/ready"], 73),
    (["watch", "--record", OUT + "/w.ndrec", "--netns", "a;b"], 65),
    # snapshot
    (["snapshot", "--out", "/etc/passwd"], 73),
    (["snapshot", "--out", OUT + "/s.ndsnap", "--node", "n;reboot"], 65),
    (["snapshot", "--out", OUT + "/dir/s.ndsnap", "--node", "$(id)"], 65),
]


@pytest.mark.parametrize("args,code", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_refused_before_anything_is_made(tmp_path, args, code):
    out = tmp_path / "out"
    out.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    argv = [a.format(out=out) for a in args]
    ct_before = CT_MAX.read_text() if CT_MAX.exists() else None
    env = dict(os.environ, OUT=str(out), STATE=str(state), PYTHONPATH=str(ROOT))
    p = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "--",
                        "bash", "-c", SCRIPT, "bash", sys.executable, "-m", "netdiag", *argv],
                       capture_output=True, text=True, env=env, timeout=120, cwd=str(ROOT))
    assert p.returncode == 0, f"the namespaces for the check could not be set up: {p.stderr}"
    rc = int((state / "rc").read_text())
    err = (state / "stderr").read_text()
    assert rc == code, f"{argv}: exit {rc}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netdiag: error: ") and "Traceback" not in err, err
    assert "attached" not in err and "building" not in err
    before, after = (state / "before").read_text(), (state / "after").read_text()
    assert after == before, f"{argv} left something behind:\n--- before\n{before}\n--- after\n{after}"
    assert list(out.iterdir()) == []
    if ct_before is not None:
        assert CT_MAX.read_text() == ct_before
