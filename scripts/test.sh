#!/usr/bin/env bash
# Every test tier: lint (ruff, the layers contract, declared dependencies), unit (no root, no
# sockets), integration (no root; loopback sockets and the load generator), kernel (root, real BPF),
# vm (Debian 6.1 and 5.10 guests, kprobes). Fails loudly; fails if a tier that can run here was skipped.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="$here/.venv/bin/python"
out="$here/results"
mkdir -p "$out"
status=0

tier() {   # tier NAME PATH...
    local name="$1"; shift
    echo "== $name tier" >&2
    "$py" -m pytest "$@" -q -rs -p no:cacheprovider --junitxml="$out/$name.xml"
    local rc=$?
    if [ "$rc" -ne 0 ]; then echo "== $name tier FAILED (pytest exit $rc)" >&2; status=1; fi
}

skips() {  # skips FILE -> number of skipped tests, and their reasons on stderr
    "$py" - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
reasons = [s.get("message", "") for s in root.iter("skipped")]
for r in reasons: print("   skipped:", r, file=sys.stderr)
print(len(reasons))
PY
}

echo "== lint tier" >&2
if ! bash "$here/scripts/lint.sh"; then
    echo "== lint tier FAILED (scripts/lint.sh)" >&2
    status=1
fi
tier unit tests/unit
tier integration tests/integration
tier kernel tests/kernel
bpf_works="$("$py" -m netdiag doctor --json 2>/dev/null | "$py" -c 'import json,sys; print(json.load(sys.stdin).get("bpf_works"))' 2>/dev/null || echo False)"
n="$(skips "$out/kernel.xml")"
if [ "$bpf_works" = "True" ] && grep -q -E 'kernel tier needs root|BPF does not work' "$out/kernel.xml"; then
    echo "== kernel tier was skipped although 'netdiag doctor' says BPF works here: failing" >&2
    status=1
fi
if [ "${ND_SKIP_VM:-0}" = "1" ]; then
    echo "== vm tier skipped: ND_SKIP_VM=1" >&2
else
    # guest kernels: 6.1 and 5.10 (bullseye) by default; ND_VM_KERNELS narrows it (`make test-vm
    # KERNEL=…` runs one). The lanes boot side by side: each emulated guest is mostly one busy
    # thread, so two of them share this machine's two cores instead of queueing for them.
    pids=(); names=()
    for k in ${ND_VM_KERNELS:-6.1 5.10}; do
        case "$k" in 6.1) lane=tests/vm/test_vm_lane.py ;; 5.10) lane=tests/vm/test_vm_lane_510.py ;;
                     *) echo "== unknown guest kernel '$k' in ND_VM_KERNELS" >&2; status=1; continue ;; esac
        echo "== vm tier: guest $k ($lane), log in results/vm-tier-$k.log" >&2
        "$py" -m pytest "$lane" -q -rs -p no:cacheprovider --junitxml="$out/vm-$k.xml" \
            > "$out/vm-tier-$k.log" 2>&1 &
        pids+=($!); names+=("$k")
    done
    for i in "${!pids[@]}"; do
        k="${names[$i]}"
        wait "${pids[$i]}"; rc=$?
        echo "== vm tier, guest $k:" >&2; cat "$out/vm-tier-$k.log" >&2
        if [ "$rc" -ne 0 ]; then echo "== vm tier, guest $k FAILED (pytest exit $rc)" >&2; status=1; fi
        if [ -f "$out/vm-$k.xml" ]; then
            n="$(skips "$out/vm-$k.xml")"
            if [ "$n" -gt 0 ]; then echo "== vm tier, guest $k skipped $n tests: failing (set ND_SKIP_VM=1 to run without it)" >&2; status=1; fi
        else
            echo "== vm tier, guest $k wrote no results" >&2; status=1
        fi
    done
fi
[ "$status" -eq 0 ] && echo "== all tiers passed" >&2 || echo "== FAILED" >&2
exit "$status"
