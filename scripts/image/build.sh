#!/usr/bin/env bash
# Builds netdiag's container image from docs/k8s/Dockerfile with podman, on a machine that
# reaches no image registry:
#  1. the Dockerfile's base (FROM debian:<suite>[-slim]) is made with debootstrap (variant
#     minbase, from a Debian mirror over http) and imported with `podman import` under the name
#     the FROM line resolves to (debian:bookworm-slim -> docker.io/library/debian:bookworm-slim);
#     skipped when podman already has that image. Like Debian's slim images, dpkg is told to
#     leave out documentation, manual pages and translations.
#  2. `podman build --isolation chroot`: the RUN steps run in a chroot (buildah's chroot
#     isolation). The OCI runtimes cannot start a container on this machine (crun refuses its
#     hybrid cgroup v1/v2 layout, runc cannot set rlimits), chroot isolation needs neither a
#     runtime nor cgroups, and it shares the host's network, so no --network or
#     --cgroup-manager option is needed; storage is podman's default (overlay on ext4).
#     Layers are cached: a rebuild after a change of netdiag's sources redoes only the pip
#     install and the copy of the venv.
#  3. pip in the build reaches the package index only through this machine's CA bundle
#     (a TLS-intercepting proxy may sit in between): the bundle is a read-only build volume
#     (-v ...:ro, never copied into a layer) and PIP_CERT a build argument of the build stage.
#
# Prints one JSON line on stdout: {"image", "id", "size_bytes", "base", "base_built", "seconds"}.
# The build's output goes to $ND_IMAGE_LOG (default results/image-build.log).
#
# Environment: ND_IMAGE (default localhost/netdiag:dev), ND_DEBIAN_MIRROR (default
# http://deb.debian.org/debian, the mirror of this machine's apt sources), ND_IMAGE_LOG.
# Errors: one line, exit 77 not root, 69 podman or debootstrap missing, 65 a FROM line this
# script cannot make, 75 debootstrap failed (mirror unreachable?), 73 podman import failed,
# 70 podman build failed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
IMAGE="${ND_IMAGE:-localhost/netdiag:dev}"
MIRROR="${ND_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKERFILE=docs/k8s/Dockerfile
IGNOREFILE=docs/k8s/Dockerfile.dockerignore
CA=/etc/ssl/certs/ca-certificates.crt
LOG="${ND_IMAGE_LOG:-$repo/results/image-build.log}"

die() { printf 'image/build: error: %s\n' "$1" >&2; exit "$2"; }
say() { printf 'image/build: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, podman's storage)" 77
command -v podman >/dev/null || die "podman not found (apt-get install podman; scripts/setup.sh installs it)" 69
mkdir -p "$(dirname "$LOG")"
: > "$LOG"
start=$(date +%s)

# --- the base image ---------------------------------------------------------------------------
from="$(awk 'toupper($1) == "FROM" { print $2; exit }' "$DOCKERFILE")"
case "$from" in
    debian:*) tag="${from#debian:}" ;;
    docker.io/library/debian:*) tag="${from#docker.io/library/debian:}" ;;
    *) die "$DOCKERFILE starts FROM $from: only debian:<suite>[-slim] bases can be made here" 65 ;;
esac
suite="${tag%-slim}"
base="docker.io/library/debian:$tag"
base_built=false
if ! podman image exists "$base"; then
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap; scripts/setup.sh installs it)" 69
    say "making $base with debootstrap ($suite, minbase, $MIRROR)"
    work="$(mktemp -d /var/tmp/netdiag-base.XXXXXX)"
    # debootstrap unmounts what it mounts in the tree, even when it fails; if anything is left,
    # it is unmounted first, and rm never crosses into another file system
    remove_work() {
        local m
        for m in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r || true); do
            umount -l "$(printf '%b' "$m")" || true
        done
        rm -rf --one-file-system "$work"
    }
    trap remove_work EXIT
    rootfs="$work/rootfs"
    debootstrap --variant=minbase "$suite" "$rootfs" "$MIRROR" >>"$LOG" 2>&1 \
        || die "debootstrap $suite from $MIRROR failed (see $LOG)" 75
    # What Debian's slim images leave out, for this layer and every package installed later.
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$rootfs/usr/share/man" "$rootfs/usr/share/info" "$rootfs/usr/share/groff" \
        "$rootfs/usr/share/lintian" -mindepth 1 -delete 2>/dev/null || true
    find "$rootfs/usr/share/locale" -mindepth 1 ! -name locale.alias -delete 2>/dev/null || true
    # the suite, its updates and its security fixes, as in Debian's images
    rm -f "$rootfs/etc/apt/sources.list"
    cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/run/*
    find "$rootfs/dev" -mindepth 1 -delete       # the runtime provides /dev
    tar --numeric-owner --xattrs -C "$rootfs" -c . \
        | podman import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $suite $MIRROR" - "$base" >>"$LOG" 2>&1 \
        || die "podman import of the $suite base as $base failed (see $LOG)" 73
    remove_work; trap - EXIT
    base_built=true
else
    say "base $base present"
fi

# --- the image -----------------------------------------------------------------------------
case "${IMAGE##*/}" in *:*) ;; *) IMAGE="$IMAGE:latest" ;; esac
# The build stage is tagged too, so that its cached layers are kept with the image and the
# layers a rebuild replaces can be removed with the image they belonged to.
STAGE="${IMAGE%:*}-build-stage:${IMAGE##*:}"
old="$(podman image inspect --format '{{.Id}}' "$IMAGE" "$STAGE" 2>/dev/null || true)"
args=(--isolation chroot --pull=never --layers -f "$DOCKERFILE" --ignorefile "$IGNOREFILE")
if [ -s "$CA" ]; then
    args+=(-v "$CA:/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt)
fi
say "building $IMAGE from $DOCKERFILE (podman build --isolation chroot; log: $LOG)"
for step in "--target build -t $STAGE" "-t $IMAGE"; do
    # shellcheck disable=SC2086
    podman build "${args[@]}" $step . >>"$LOG" 2>&1 \
        || die "podman build of $IMAGE failed: $(grep -E '^(Error|E:|ERROR)' "$LOG" | tail -n 1) (see $LOG)" 70
done
id="$(podman image inspect --format '{{.Id}}' "$IMAGE")"
size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
# what this build replaced (and the untagged layers under it), unless something still uses it
now="$(podman image inspect --format '{{.Id}}' "$IMAGE" "$STAGE")"
for o in $old; do
    grep -qx "$o" <<<"$now" || podman rmi "$o" >/dev/null 2>&1 || true
done
say "built $IMAGE (${id:0:12}, $((size / 1000000)) MB)"
printf '{"image": "%s", "id": "%s", "size_bytes": %s, "base": "%s", "base_built": %s, "seconds": %s}\n' \
    "$IMAGE" "$id" "$size" "$base" "$base_built" "$(( $(date +%s) - start ))"
