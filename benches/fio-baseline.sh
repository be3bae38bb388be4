#!/usr/bin/env bash
# The disk's own ceiling for what sluice-storage-bench measures: sequential 1 MiB
# writes with an fdatasync after each, measured by fio on the same file system.
#
#   bash benches/fio-baseline.sh [DIR]
#
# DIR defaults to target/fio-bench under the repository (the same disk as the
# benchmarks' data directories). SIZE (default 512M) sets the bytes per run.
# Two runs, one `RESULT fio ...` line each:
#   seqsync          --ioengine=sync --direct=0: buffered write(2) + fdatasync(2) per
#                    1 MiB; the baseline for `sluice-storage-bench --backend std` and,
#                    by convention, THE "sequential 1 MiB writes with fdatasync after
#                    each" number.
#   seqsync_direct   --ioengine=io_uring --direct=1: O_DIRECT writes through io_uring,
#                    fdatasync per 1 MiB; the baseline for `--backend glommio`.
# MB = 10^6 bytes, MiB = 2^20 bytes. The test file is removed at the end.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/target/fio-bench}"
size="${SIZE:-512M}"

need=()
command -v fio >/dev/null 2>&1 || need+=(fio)
command -v jq >/dev/null 2>&1 || need+=(jq)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "fio-baseline: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
        exit 2
    fi
    echo "fio-baseline: installing ${need[*]}" >&2
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p "$dir"
file="$dir/fio-seqsync.dat"
cleanup() { rm -f "$file"; rmdir "$dir" 2>/dev/null || true; }
trap cleanup EXIT

echo "fio-baseline: $(fio --version), dir=$dir size=$size"
df -h "$dir" | tail -n 1 | awk '{print "fio-baseline: file system " $1 " (" $2 " total, " $4 " free)"}'

# run NAME IOENGINE DIRECT: one fio job, then its RESULT line.
run() {
    local name="$1" engine="$2" direct="$3"
    local json
    rm -f "$file"
    json="$(fio --name="$name" --filename="$file" --rw=write --bs=1M --size="$size" \
        --fdatasync=1 --ioengine="$engine" --direct="$direct" --output-format=json)"
    jq -r --arg name "$name" --arg engine "$engine" --arg direct "$direct" --arg size "$size" '
        .jobs[0] as $j
        | ($j.write.bw_bytes) as $bw
        | ($j.sync.lat_ns.percentile // {}) as $p
        | "RESULT fio job=\($name) ioengine=\($engine) direct=\($direct) bs=1M size=\($size)"
          + " fdatasync=1"
          + " write_MBps=\($bw / 1e6 * 10 | round / 10)"
          + " write_MiBps=\($bw / 1048576 * 10 | round / 10)"
          + " p50_sync_ms=\(($p["50.000000"] // 0) / 1e6 * 1000 | round / 1000)"
          + " p99_sync_ms=\(($p["99.000000"] // 0) / 1e6 * 1000 | round / 1000)"
          + " syncs=\($j.sync.lat_ns.N // 0)"
    ' <<<"$json"
    rm -f "$file"
}

run seqsync sync 0
run seqsync_direct io_uring 1
