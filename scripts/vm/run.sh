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

# What the guest reads most (Python's and the venv's modules, netdiag's, bcc's LLVM, the
# kernel's headers) goes to it as read-only ext4 images on virtio-blk disks, mounted over the
# same paths inside the guest: under emulation, a module import or a header read over the 9p root
# costs a round trip per stat() and per read, about 4x slower for Python's imports (measured:
# import pyroute2 12 s over 9p, 2.8 s from an image). The images are snapshots taken here, at
# the lane's start. A path whose image cannot be made or mounted is read over 9p, as before.
find /var/tmp -maxdepth 1 -name 'netdiag-vm-img.*' -mmin +300 -exec rm -rf {} + 2>/dev/null || true  # a killed run's
imgdir="$(mktemp -d /var/tmp/netdiag-vm-img.XXXXXX)"
trap 'rm -rf "$imgdir"' EXIT
trap 'exit 130' INT TERM HUP
"$here/.venv/bin/python" -m compileall -q "$here/netdiag" "$here/tests" >/dev/null 2>&1 || true
disks=() mounts=""
pack() {   # pack LABEL PATH [FILE...]: an image of the folder PATH, or of the FILEs (bound one by one)
    local label="$1" path; path="$(readlink -f "$2")"; shift 2
    local src="$path" img="$imgdir/$label.img"
    if [ "$#" -gt 0 ]; then src="$imgdir/$label.d"; mkdir -p "$src"; cp -L "$@" "$src"/ || return 0; fi
    [ -d "$src" ] || return 0
    local kb files
    kb="$(du -sk "$src" | cut -f1)"; files="$(find "$src" | wc -l)"
    mkfs.ext4 -q -F -L "$label" -O ^has_journal -N $((files + files / 4 + 1024)) -m 0 -d "$src" \
        "$img" "$((kb + kb / 4 + 65536))k" >/dev/null 2>&1 || { echo "vm lane: no image of $path; the guest reads it over 9p" >&2; return 0; }
    rm -rf "$imgdir/$label.d"
    disks+=(--disk "$img")
    if [ "$#" -gt 0 ]; then
        mounts+="mkdir -p /run/$label && mount -o ro -L $label /run/$label"
        for f in "$@"; do mounts+=" && mount --bind /run/$label/$(basename "$f") $f"; done
        mounts+=" || echo 'image $label not mounted' >> '$results/images.log'; "
    else
        mounts+="mount -o ro -L $label '$path' || echo 'image $label ($path) not mounted' >> '$results/images.log'; "
    fi
}
pack nd-venv "$here/.venv"
pack nd-pkg "$here/netdiag"
pack nd-tests "$here/tests"
pack nd-bpf "$here/bpf"
pack nd-stdlib "/usr/lib/python$("$here/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pack nd-dist /usr/lib/python3/dist-packages
pack nd-hdr "$(readlink -f "/lib/modules/$kver/build")"
[ "$(readlink -f "/lib/modules/$kver/source")" = "$(readlink -f "/lib/modules/$kver/build")" ] || \
    pack nd-hdrc "$(readlink -f "/lib/modules/$kver/source")"
libs=()
for f in $(ldd /usr/lib/x86_64-linux-gnu/libbcc.so.0 2>/dev/null | awk '$3 ~ /^\// {print $3}'); do
    [ "$(stat -Lc %s "$f")" -gt 4000000 ] && libs+=("$f")
done
[ "${#libs[@]}" -eq 0 ] || pack nd-libs /usr/lib "${libs[@]}"

# Inside the guest: the same kernel tier, results to the shared rw folder. The hook modes only
# this kernel has (kprobe, the default, and fentry); tracepoint mode and the classic tracepoints
# are the host lane's and the 5.10 lane's (ND_VM_ENV may name more). The leak scan after each
# test is the host lane's (docs/reliability.md, "Leaks": what it found in the guests).
guest_cmd="modprobe ext4 2>/dev/null; $mounts
cd '$here' && export PYTHONDONTWRITEBYTECODE=1 ND_RESULTS_DIR='$results' ND_READY_TIMEOUT=600 ND_TRACE_MODES=auto,fentry ND_CLASSIC_MODES= ND_WATCH_FLAVOURS=auto ND_LAB_TIMEOUT=900 ND_LEAK_SCAN=off ${ND_VM_ENV:-} \
 && uname -r > '$results/uname' \
 && '$here/.venv/bin/python' -m pytest ${ND_VM_TESTS:-tests/kernel} -m '${ND_VM_MARK-not heavy}' -p no:cacheprovider -q -rs \
    --junitxml='$results/junit.xml' > '$results/pytest.out' 2>&1; echo \$? > '$results/rc'"

# The command goes to the guest as a script in the shared folder, not on the kernel's command
# line (2048 bytes on x86: a long test list would be cut off and the guest would not start).
printf '%s\n' "$guest_cmd" > "$results/guest.sh"
echo "vm lane: booting $kernel under qemu (TCG); this takes a few minutes" >&2
timeout "${ND_VM_TIMEOUT:-3200}" "$vng" --disable-kvm --rwdir "$results" "${disks[@]}" --run "$kernel" \
    --memory 3G --cpus 2 -- "bash '$results/guest.sh'" > "$results/vng.log" 2>&1 || echo "vm lane: vng exited $?" >&2
[ -f "$results/rc" ] || { echo "vm lane: the guest wrote no result (see $results/vng.log)" >&2; tail -20 "$results/vng.log" >&2; exit 70; }
echo "vm lane: guest pytest exit $(cat "$results/rc") (kernel $(cat "$results/uname"))" >&2
[ ! -s "$results/images.log" ] || { echo "vm lane: read over 9p instead (slower):" >&2; cat "$results/images.log" >&2; }
