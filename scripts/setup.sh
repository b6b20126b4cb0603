#!/usr/bin/env bash
# One-command, idempotent set-up for netdiag on a Debian-family machine, as root.
#  - installs the distribution packages (BCC, netfilter tools, iproute2, kmod, headers, qemu, busybox and e2fsprogs for the VM lane)
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
      iproute2 kmod procps qemu-system-x86 linux-image-amd64 busybox-static e2fsprogs wrk bpftool
      podman debootstrap prometheus prometheus-node-exporter nginx-light chromium jq)
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
    # Debian's prometheus and prometheus-node-exporter start services on every address (:9090,
    # :9100) when installed: a policy-rc.d keeps any service from starting during the install
    # (netdiag's tests and benchmarks run their own on 127.0.0.1).
    policy_made=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_made=1
    fi
    rc=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    [ "$policy_made" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || die "apt-get install failed: ${missing[*]}"
else
    say "distribution packages present"
fi
# ... nor at boot, nor left running from an earlier install.
for svc in prometheus prometheus-node-exporter; do
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$svc" ]; then
        "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null && update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
done

# --- the older kernel class for the VM lane: Debian bullseye's 5.10, its suite pinned low -------
# (nothing else is ever taken from it; only the kernel image and its headers, by exact name)
if ! ls /boot/vmlinuz-5.10.*-amd64 >/dev/null 2>&1; then
    mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)"
    [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
    printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: %s\n' "$mirror" \
        /usr/share/keyrings/debian-archive-keyring.gpg > /etc/apt/sources.list.d/netdiag-bullseye.sources
    printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' > /etc/apt/preferences.d/netdiag-bullseye
    apt-get update -qq || die "apt-get update (with bullseye) failed"
    abi="$(apt-cache search --names-only '^linux-image-5\.10\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1)"
    abi="${abi#linux-image-}"
    [ -n "$abi" ] || die "no Debian 5.10 kernel found in bullseye"
    say "installing Debian's $abi kernel and headers (the 5.10 VM lane)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "linux-image-$abi" \
        "linux-headers-$abi" >/dev/null || die "apt-get install of linux-image-$abi failed"
fi

# nginx is for `netdiag lab fanout`, which starts its own in a lab namespace: the package's
# service must not run (or listen) on the host
if command -v systemctl >/dev/null && systemctl is-enabled nginx >/dev/null 2>&1; then
    systemctl disable --now nginx >/dev/null 2>&1 && say "nginx service disabled and stopped (the fanout lab runs its own)"
elif [ -x /etc/init.d/nginx ]; then
    if /etc/init.d/nginx status >/dev/null 2>&1; then
        /etc/init.d/nginx stop >/dev/null 2>&1 || true
        say "nginx service stopped (the fanout lab runs its own)"
    fi
    if command -v update-rc.d >/dev/null && ls /etc/rc[2-5].d/S*nginx >/dev/null 2>&1; then
        update-rc.d nginx disable >/dev/null 2>&1 || true
        say "nginx service disabled at boot"
    fi
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
    .venv/bin/python -m pip install -q -e ".[test,vm,report]" || die "pip install of netdiag failed"
    touch "$stamp"
    say "installed netdiag into .venv"
fi
[ -x .venv/bin/netdiag ] || die ".venv/bin/netdiag missing after install"
say "ready: .venv/bin/netdiag"
