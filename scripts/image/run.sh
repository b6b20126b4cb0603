#!/usr/bin/env bash
# Runs netdiag from its container image (scripts/image/build.sh) on this machine the way
# docs/k8s/daemonset.yaml runs it on a node:
#
#   scripts/image/run.sh [netdiag args...]            the DaemonSet: ENTRYPOINT (netdiag) + args
#   scripts/image/run.sh --debug-pod --command CMD... `kubectl debug node/... --profile=sysadmin -- CMD...`
#
# chroot stands in for the container runtime: this machine's runtimes cannot start a container
# (crun refuses its hybrid cgroup v1/v2 layout, runc cannot set rlimits here), and the pods in
# question share the node's PID and network namespaces anyway, which a chroot keeps. What a
# runtime would add is done by hand: a writable container layer (`podman create` + `podman
# mount`), a mount namespace of its own (unshare --propagation slave: the node's mounts reach in,
# nothing reaches out), the runtime's mounts of a privileged container (/proc, /sys, /dev,
# /etc/resolv.conf, /etc/hosts) and the pod's volumes:
#   DaemonSet (default): /var/log/pods, /var/log/containers, /run/netns (HostToContainer),
#     /sys/fs/cgroup, /lib/modules, /usr/src (read-only); /sys/kernel/tracing; the CRI socket when
#     the node has one; the program-cache emptyDir at /var/cache/netdiag; /sys/fs/bpf when mounted
#   --debug-pod: the node's root file system at /host, nothing else
# The image's Env, WorkingDir and Entrypoint are used as the runtime would; NETDIAG_*, BCC_* and
# TERM pass through from this environment (as a pod spec's env would set them).
#
# Environment:
#   ND_IMAGE          the image (default localhost/netdiag:dev)
#   ND_IMAGE_CACHE    a directory of this machine for the program-cache emptyDir (default: a new
#                     one, removed afterwards: every run is a first start)
#   ND_IMAGE_SHARE    a directory of this machine also mounted at the same path in the container
#                     (not a pod volume: where a test puts --ready-file)
#   ND_IMAGE_RUSAGE   a JSON file of this machine: the container process's pid and start time
#                     (epoch seconds) while it runs; then the resource use of its process tree
#                     (peak RSS of its largest process in kB, CPU and wall seconds, exit status)
#
# Everything mounted is unmounted when netdiag ends, by whatever means (trap), and the
# container layer is removed. Errors: one line, exit 77 not root, 69 podman/unshare/chroot
# missing, 66 image not built, 71 a mount failed or stayed behind, 64 bad usage; otherwise
# netdiag's own exit status (SIGINT/SIGTERM are passed on to it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
self="$here/$(basename "${BASH_SOURCE[0]}")"
IMAGE="${ND_IMAGE:-localhost/netdiag:dev}"

die() { printf 'image/run: error: %s\n' "$1" >&2; exit "$2"; }

# run_forwarding CMD...: runs CMD in the background, passes SIGINT/SIGTERM/SIGHUP on to it as
# SIGTERM (a background job of a script has SIGINT ignored; SIGTERM is what a pod gets on
# deletion), waits for it and returns its exit status.
run_forwarding() {
    "$@" &
    local pid=$! rc=0
    trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM HUP
    while :; do
        rc=0
        wait "$pid" || rc=$?
        kill -0 "$pid" 2>/dev/null || break        # wait returned for a trapped signal: wait again
    done
    trap - INT TERM HUP
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# Inside the container's mount namespace: mount, run, unmount.
inner() {
    local root="$1" pod="$2" cache="$3" share="$4"; shift 4
    mounted=()

    unmount_all() {
        local i t
        for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
            t="${mounted[$i]}"
            umount -R "$t" 2>/dev/null || umount -R -l "$t" 2>/dev/null || true
        done
        mounted=()
    }
    trap unmount_all EXIT

    # target PATH [file]: sets T to PATH inside the container, created (in the container layer)
    # when absent; refuses a path that an absolute symlink in the image would lead out of it.
    target() {
        T="$root$1"
        if [ "${2:-dir}" = file ]; then
            mkdir -p "$(dirname "$T")"; [ -e "$T" ] || : > "$T"
        else
            mkdir -p "$T"
        fi
        T="$(realpath -e "$T")"
        case "$T/" in "$root"/*) ;; *) die "mount point $1 leads outside the container ($T)" 71 ;; esac
    }
    mnt() {     # mnt PATH-IN-CONTAINER dir|file MOUNT-ARGS...: mounts at the path, sets T
        local p="$1" kind="$2"; shift 2
        target "$p" "$kind"
        mount "$@" "$T" || die "mount $* $p failed" 71
        mounted+=("$T")
    }
    ro() {      # every mount at and below $1 read-only (a recursive bind's submounts too)
        local m
        while IFS= read -r m; do
            mount -o remount,bind,ro "$(printf '%b' "$m")" || die "remount read-only of $m failed" 71
        done < <(findmnt -R -n -r -o TARGET "$1")
    }
    hostpath() {    # hostpath SRC [ro]: the node's SRC at the same path, recursively
        local kind=dir
        [ -d "$1" ] || kind=file
        mnt "$1" "$kind" --rbind "$1"
        if [ "${2:-}" = ro ]; then ro "$T"; fi
    }

    # the container runtime's part (privileged: all devices, sysfs read-write)
    if [ "$pod" = debug ]; then                      # first: its copy of the node's tree holds none of ours
        mnt /host dir --rbind /
    fi
    mnt /proc dir -t proc proc                       # the node's PID namespace (hostPID)
    mnt /sys dir -t sysfs sysfs                      # the node's network namespace's devices
    hostpath /dev
    for f in /etc/resolv.conf /etc/hosts; do
        if [ -f "$f" ]; then hostpath "$f" ro; fi
    done
    if [ "$pod" = daemonset ]; then
        # docs/k8s/daemonset.yaml's volumeMounts
        for d in /var/log/pods /var/log/containers; do
            if [ -d "$d" ]; then hostpath "$d" ro; fi
        done
        mkdir -p /run/netns                          # hostPath type DirectoryOrCreate
        hostpath /run/netns ro                       # slave of the node's: namespaces added later appear
        hostpath /sys/fs/cgroup ro
        hostpath /sys/kernel/tracing
        hostpath /lib/modules ro
        hostpath /usr/src ro
        for s in /run/containerd/containerd.sock /run/crio/crio.sock; do
            if [ -S "$s" ]; then hostpath "$s" ro; fi
        done
        mnt /var/cache/netdiag dir --bind "$cache"   # the program-cache emptyDir
        if mountpoint -q /sys/fs/bpf; then hostpath /sys/fs/bpf; fi
    fi
    if [ -n "$share" ]; then hostpath "$share"; fi

    # the image's config, as the runtime applies it
    local env=(HOME=/root) line workdir entry=()
    while IFS= read -r line; do [ -n "$line" ] && env+=("$line"); done \
        < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE")
    while IFS= read -r line; do env+=("$line"); done \
        < <(env | grep -E '^(NETDIAG_|BCC_|TERM=)' || true)
    workdir="$(podman image inspect --format '{{.Config.WorkingDir}}' "$IMAGE")"
    if [ "$command" != 1 ]; then
        while IFS= read -r line; do [ -n "$line" ] && entry+=("$line"); done \
            < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$IMAGE")
    fi

    # A host python3 waits for the container's process tree so that its resource use can be
    # read (getrusage of the children); it passes signals on and returns netdiag's status.
    local rc=0
    run_forwarding python3 -c '
import json, os, resource, signal, subprocess, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0, started = time.monotonic(), time.time()
p = subprocess.Popen(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
def write(**kw):
    if out:
        with open(out + ".tmp", "w") as f:
            json.dump(dict(pid=p.pid, started_at=started, **kw), f)
        os.replace(out + ".tmp", out)
def forward(sig, _frame):
    try:
        p.send_signal(sig)
    except ProcessLookupError:
        pass
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, forward)
write()
rc = p.wait()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
write(maxrss_kb=ru.ru_maxrss, utime_s=round(ru.ru_utime, 3), stime_s=round(ru.ru_stime, 3),
      wall_s=round(time.monotonic() - t0, 3), returncode=rc)
sys.exit(rc if rc >= 0 else 128 - rc)
' "${ND_IMAGE_RUSAGE:-}" chroot "$root" /usr/bin/env -i -C "${workdir:-/}" "${env[@]}" "${entry[@]}" "$@" \
        || rc=$?
    unmount_all
    local left; left="$(findmnt -R -n -r -o TARGET "$root" | tail -n +2)"
    [ -z "$left" ] || die "still mounted after unmounting: $(echo $left)" 71
    return "$rc"
}

if [ "${1:-}" = "--inner" ]; then
    shift
    command="$1"; shift
    inner "$@"
    exit $?
fi

# ---------------------------------------------------------------------------------------------
pod=daemonset command=0
while [ $# -gt 0 ]; do
    case "$1" in
        --debug-pod) pod=debug; shift ;;
        --command) command=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ "$command" = 0 ] || [ $# -gt 0 ] || die "--command needs a command" 64

[ "$(id -u)" -eq 0 ] || die "must run as root (mounts, chroot, BPF)" 77
for tool in podman unshare chroot findmnt python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install podman; scripts/setup.sh installs it)" 69
done
podman image exists "$IMAGE" || die "image $IMAGE not built: run scripts/image/build.sh" 66

name="netdiag-run-$$"
cache="${ND_IMAGE_CACHE:-}" own_cache=0
share="${ND_IMAGE_SHARE:-}"
[ -z "$share" ] || [ -d "$share" ] || die "ND_IMAGE_SHARE=$share is not a directory" 64
root=""

cleanup() {
    local rc=$?
    if [ -n "$root" ]; then
        podman umount "$name" >/dev/null 2>&1 || true
    fi
    podman rm -f "$name" >/dev/null 2>&1 || true
    [ "$own_cache" = 1 ] && rm -rf "$cache"
    if [ -n "$root" ] && grep -qF " $root" /proc/self/mountinfo; then
        printf 'image/run: error: %s is still mounted\n' "$root" >&2
        rc=71
    fi
    exit "$rc"
}
trap cleanup EXIT

if [ -z "$cache" ]; then
    cache="$(mktemp -d /var/tmp/netdiag-program-cache.XXXXXX)"; own_cache=1
fi
mkdir -p "$cache"
podman create --name "$name" --pull=never "$IMAGE" >/dev/null || die "podman create $IMAGE failed" 71
root="$(podman mount "$name")" || die "podman mount $name failed" 71

export IMAGE
rc=0
run_forwarding unshare --mount --propagation slave -- bash "$self" --inner "$command" \
    "$root" "$pod" "$cache" "$share" "$@" || rc=$?
exit "$rc"
