#!/usr/bin/env bash
# Builds the `sluice` Docker image without pulling any base image: the binaries are
# built statically on the host (glibc, +crt-static), copied into a small build context
# and added to an image `FROM scratch` (the repo root's Dockerfile).
#
#   docker/build.sh                      # image sluice:dev
#   SLUICE_IMAGE=sluice:1.2 docker/build.sh
#   SLUICE_SKIP_CARGO=1 docker/build.sh  # reuse binaries already built
#   SLUICE_BIN_DIR=target/debug docker/build.sh   # dev image sluice:local, no cargo
#
# Dev-image mode (SLUICE_BIN_DIR): no cargo run; `sluice-server` and `sluice` are taken
# from that directory as they are, dynamically linked (e.g. the debug binaries the test
# suite builds anyway, instead of the ~8 minute static release build). Every shared
# library `ldd` lists and the dynamic loader are copied into the image at the paths
# `ldd` shows, so the same FROM scratch Dockerfile runs them. For tests and local use:
# the host's libraries end up in the image, owned by the image's uid like the rest of
# rootfs/.
#
# Environment:
#   SLUICE_IMAGE       image tag (default sluice:dev; sluice:local with SLUICE_BIN_DIR)
#   SLUICE_TARGET_DIR  cargo target directory of the static build (default
#                      target/static: a directory of its own, so the long release build
#                      neither holds the lock of target/ nor invalidates its artifacts)
#   SLUICE_SKIP_CARGO  set to 1 to skip cargo and use the binaries already there
#   SLUICE_BIN_DIR     dev-image mode, above (the previous image of the tag is removed
#                      once replaced, unless a container still uses it)
#   SLUICE_STRIP       set to 0 to keep the debug info (default: strip it)
#   CARGO_BUILD_JOBS   as for cargo
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
triple=x86_64-unknown-linux-gnu
target_dir=${SLUICE_TARGET_DIR:-$root/target/static}
if [[ -n "${SLUICE_BIN_DIR:-}" ]]; then
    dynamic=1
    bin_dir=$(cd "$SLUICE_BIN_DIR" && pwd)
    image=${SLUICE_IMAGE:-sluice:local}
else
    dynamic=0
    bin_dir=$target_dir/$triple/release
    image=${SLUICE_IMAGE:-sluice:dev}
fi

if [[ $dynamic == 0 && "${SLUICE_SKIP_CARGO:-0}" != 1 ]]; then
    # --target: RUSTFLAGS then apply to the binaries only, not to build scripts and
    # proc macros (which cannot be static-pie executables linked against glibc).
    (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
        cargo build --release --target "$triple" -p sluice-server -p sluice-cli)
fi

for bin in sluice-server sluice; do
    if [[ ! -x "$bin_dir/$bin" ]]; then
        echo "docker/build.sh: $bin_dir/$bin missing" >&2
        exit 1
    fi
    # FROM scratch has no dynamic loader: refuse a dynamically linked binary (unless
    # SLUICE_BIN_DIR, which copies the loader and the libraries in below).
    if [[ $dynamic == 0 ]] && command -v ldd >/dev/null && ldd "$bin_dir/$bin" 2>&1 | grep -q '=>'; then
        echo "docker/build.sh: $bin_dir/$bin is dynamically linked:" >&2
        ldd "$bin_dir/$bin" >&2
        exit 1
    fi
done

if ! command -v docker >/dev/null; then
    echo "docker/build.sh: docker not found; the static binaries are in $bin_dir" >&2
    exit 1
fi

context=$(mktemp -d "${TMPDIR:-/tmp}/sluice-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
cp "$root/Dockerfile" "$context/Dockerfile"
cp "$bin_dir/sluice-server" "$bin_dir/sluice" "$context/"
# Empty directories for the image (scratch has no shell to mkdir): the data and
# certificate mount points, owned by the unprivileged user so that named volumes
# mounted there start out writable by it.
mkdir -p "$context/rootfs/var/lib/sluice" "$context/rootfs/etc/sluice/certs" "$context/rootfs/tmp"
if [[ $dynamic == 1 ]]; then
    command -v ldd >/dev/null || { echo "docker/build.sh: SLUICE_BIN_DIR needs ldd" >&2; exit 1; }
    # Every absolute path in ldd's output: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6
    # (0x...)" and the loader "/lib64/ld-linux-x86-64.so.2 (0x...)" (not linux-vdso,
    # which the kernel provides). Copied at the same path (symlinks followed): without
    # an ld.so.cache the loader searches its default directories, which these are.
    # ldd exits 1 for a static binary (nothing to copy then).
    libs=$(for bin in sluice-server sluice; do ldd "$bin_dir/$bin" 2>/dev/null || true; done | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $2 == "=>" && $3 == "not" { print "missing:" $1 }
        NF == 2 && $1 ~ /^\// { print $1 }' | sort -u)
    if grep -q '^missing:' <<<"$libs"; then
        echo "docker/build.sh: libraries not found:" $(grep '^missing:' <<<"$libs") >&2
        exit 1
    fi
    for lib in $libs; do
        mkdir -p "$context/rootfs$(dirname "$lib")"
        cp -L "$lib" "$context/rootfs$lib"
    done
    echo "docker/build.sh: dynamic binaries from $bin_dir, with" $libs
fi
# The debug info the release profile keeps (debug = 1) is ~2/3 of each binary.
if command -v strip >/dev/null && [[ "${SLUICE_STRIP:-1}" == 1 ]]; then
    strip --strip-debug "$context/sluice-server" "$context/sluice"
fi
previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
docker build -t "$image" "$context"
# Dev images are rebuilt whenever the debug binaries change: drop the one replaced
# (it fails, harmlessly, while a container still uses it).
if [[ $dynamic == 1 && -n "$previous" ]] \
    && [[ "$(docker image inspect -f '{{.Id}}' "$image")" != "$previous" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
echo "docker/build.sh: built $image"
