#!/usr/bin/env bash
# The VM lane: boot one of Debian's kernels (kprobes, matching headers) under qemu with software
# emulation (virtme-ng), sharing this machine's root filesystem read-only, and run netdiag's
# kernel tier inside it. The guest writes everything to RESULTS_DIR; tests/vm asserts on it.
#   scripts/vm/run.sh RESULTS_DIR [KERNEL]      KERNEL: 6.1 (default) or 5.10
# ND_VM_TESTS (default tests/kernel) narrows the run to some of the tier's files or tests;
# ND_VM_ENV adds environment assignments for the guest's run (the lanes' hook modes); ND_VM_MARK
# replaces the marker expression (default: not heavy; empty: every test named).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
results="${1:?usage: scripts/vm/run.sh RESULTS_DIR}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
rm -f "$results"/*

want="${2:-6.1}"
case "$want" in 6.1|5.10) ;; *) echo "vm lane: KERNEL must be 6.1 or 5.10, not '$want'" >&2; exit 64 ;; esac
kernel="$(ls /boot/vmlinuz-"$want".*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
[ -n "$kernel" ] || { echo "vm lane: no /boot/vmlinuz-$want.*-amd64 (run scripts/setup.sh, which installs it)" >&2; exit 69; }
kver="${kernel#/boot/vmlinuz-}"
[ -e "/lib/modules/$kver/build/include" ] || [ -e "/lib/modules/$kver/source/include" ] || \
    { echo "vm lane: no headers for $kver (apt-get install linux-headers-$kver)" >&2; exit 69; }
command -v qemu-system-x86_64 >/dev/null || { echo "vm lane: qemu-system-x86_64 missing (apt-get install qemu-system-x86)" >&2; exit 69; }
vng="$here/.venv/bin/vng"
export PATH="$here/.venv/bin:$PATH"
[ -x "$vng" ] || { echo "vm lane: $vng missing (run scripts/setup.sh)" >&2; exit 69; }

# Inside the guest: the same kernel tier, results to the shared rw folder. The hook modes only
# this kernel has (kprobe, the default, and fentry); tracepoint mode and the classic tracepoints
# are the host lane's and the 5.10 lane's (ND_VM_ENV may name more). The leak scan after each
# test is the host lane's (docs/reliability.md, "Leaks": what it found in the guests).
guest_cmd="cd '$here' && export PYTHONDONTWRITEBYTECODE=1 ND_RESULTS_DIR='$results' ND_READY_TIMEOUT=600 ND_TRACE_MODES=auto,fentry ND_CLASSIC_MODES= ND_WATCH_FLAVOURS=auto ND_LAB_TIMEOUT=900 ND_LEAK_SCAN=off ${ND_VM_ENV:-} \
 && uname -r > '$results/uname' \
 && '$here/.venv/bin/python' -m pytest ${ND_VM_TESTS:-tests/kernel} -m '${ND_VM_MARK-not heavy}' -p no:cacheprovider -q -rs \
    --junitxml='$results/junit.xml' > '$results/pytest.out' 2>&1; echo \$? > '$results/rc'"

# The command goes to the guest as a script in the shared folder, not on the kernel's command
# line (2048 bytes on x86: a long test list would be cut off and the guest would not start).
printf '%s\n' "$guest_cmd" > "$results/guest.sh"
echo "vm lane: booting $kernel under qemu (TCG); this takes a few minutes" >&2
timeout "${ND_VM_TIMEOUT:-3200}" "$vng" --disable-kvm --rwdir "$results" --run "$kernel" \
    --memory 3G --cpus 2 -- "bash '$results/guest.sh'" > "$results/vng.log" 2>&1 || echo "vm lane: vng exited $?" >&2
[ -f "$results/rc" ] || { echo "vm lane: the guest wrote no result (see $results/vng.log)" >&2; tail -20 "$results/vng.log" >&2; exit 70; }
echo "vm lane: guest pytest exit $(cat "$results/rc") (kernel $(cat "$results/uname"))" >&2
