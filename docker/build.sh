#!/usr/bin/env bash
# Builds the `sluice` Docker image without pulling any base image: the binaries are
# built statically on the host (glibc, +crt-static), copied into a small build context
# and added to an image `FROM scratch` (the repo root's Dockerfile).
#
#   docker/build.sh                      # image sluice:dev
#   SLUICE_IMAGE=sluice:1.2 docker/build.sh
#   SLUICE_SKIP_CARGO=1 docker/build.sh  # reuse binaries already built
#
# Environment:
#   SLUICE_IMAGE       image tag (default sluice:dev)
#   SLUICE_TARGET_DIR  cargo target directory of the static build (default
#                      target/static: a directory of its own, so the long release build
#                      neither holds the lock of target/ nor invalidates its artifacts)
#   SLUICE_SKIP_CARGO  set to 1 to skip cargo and use the binaries already there
#   CARGO_BUILD_JOBS   as for cargo
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
image=${SLUICE_IMAGE:-sluice:dev}
triple=x86_64-unknown-linux-gnu
target_dir=${SLUICE_TARGET_DIR:-$root/target/static}
bin_dir=$target_dir/$triple/release

if [[ "${SLUICE_SKIP_CARGO:-0}" != 1 ]]; then
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
    # FROM scratch has no dynamic loader: refuse a dynamically linked binary.
    if command -v ldd >/dev/null && ldd "$bin_dir/$bin" 2>&1 | grep -q '=>'; then
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
# The debug info the release profile keeps (debug = 1) is ~2/3 of each binary.
if command -v strip >/dev/null && [[ "${SLUICE_STRIP:-1}" == 1 ]]; then
    strip --strip-debug "$context/sluice-server" "$context/sluice"
fi
docker build -t "$image" "$context"
echo "docker/build.sh: built $image"
