#!/usr/bin/env bash
# One-command, idempotent set-up for netdiag on a Debian-family machine, as root.
#  - installs the distribution packages (BCC, netfilter tools, iproute2, kmod, headers, qemu and busybox for the VM lane)
#  - mounts tracefs if absent
#  - links the distribution's default headers as the build dir when the running kernel has none
#  - creates .venv/ (system Python, so Debian's BCC imports) and installs netdiag with its test extras
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit "${2:-1}"; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and links kernel headers); run it as root, e.g. 'sudo $0'" 77
command -v apt-get >/dev/null || die "apt-get not found: netdiag's set-up supports Debian and Ubuntu" 69

# --- distribution packages -------------------------------------------------------------------
pkgs=(bpfcc-tools python3-bpfcc python3-venv python3-pip linux-headers-amd64 iptables nftables conntrack
      iproute2 kmod procps qemu-system-x86 linux-image-amd64 busybox-static wrk bpftool
      podman debootstrap chromium jq)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
kver="$(uname -r)"
# The running kernel's own headers, when the distribution has them.
if [ ! -e "/lib/modules/$kver/build" ] && apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    missing+=("linux-headers-$kver")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install failed: ${missing[*]}"
else
    say "distribution packages present"
fi

# --- tracefs -----------------------------------------------------------------------------------
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs none /sys/kernel/tracing 2>/dev/null && say "mounted tracefs" || say "warning: could not mount tracefs"
fi

# --- kernel headers (BCC needs some to compile) ------------------------------------------------
build="/lib/modules/$kver/build"
src="/lib/modules/$kver/source"
if [ ! -e "$build/include/linux/kconfig.h" ] && [ ! -e "$src/include/linux/kconfig.h" ]; then
    # Newest distribution headers: a stand-in for the running kernel. Debian splits them into an
    # arch part (build) and a common part (source); BCC needs both.
    standin="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$standin" ] || die "no kernel headers found under /usr/src (apt-get install linux-headers-amd64)"
    common="${standin%-amd64}-common"
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$standin" "$build"
    [ -d "$common" ] && ln -sfn "$common" "$src"
    say "linked stand-in headers $standin as $build (they do not describe $kver: netdiag reads no kernel struct through them)"
else
    say "headers present for $kver"
fi

# --- virtualenv --------------------------------------------------------------------------------
py=/usr/bin/python3
[ -x "$py" ] || die "/usr/bin/python3 missing (apt-get install python3)"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
    rm -rf .venv
    "$py" -m venv .venv || die "could not create .venv (apt-get install python3-venv)"
    say "created .venv"
fi
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Expose only Debian's BCC module (pure Python over libbcc.so) to the venv, not the whole dist-packages.
mkdir -p .venv/system-bcc
ln -sfn /usr/lib/python3/dist-packages/bcc .venv/system-bcc/bcc
printf '%s\n' "$here/.venv/system-bcc" > "$site/netdiag-system-bcc.pth"
.venv/bin/python -c 'import bcc' 2>/dev/null || die "the venv cannot import bcc (is python3-bpfcc installed?)"

stamp=".venv/.netdiag-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null || die "pip upgrade failed"
    .venv/bin/python -m pip install -q -e ".[test,vm]" || die "pip install of netdiag failed"
    touch "$stamp"
    say "installed netdiag into .venv"
fi
[ -x .venv/bin/netdiag ] || die ".venv/bin/netdiag missing after install"
say "ready: .venv/bin/netdiag"
