#!/usr/bin/env bash
# One benchmark sitting for the single-node broker, everything back to back on this
# machine (it is noisy: compare only numbers from the same sitting):
#   1. the storage benchmark's raw append+sync (the disk's ceiling for a log),
#   2. sluice-bench against a fresh release broker: produce at full speed, produce at
#      the NATS anchor's window (256 in flight per producer), produce open loop at 50%
#      of full speed, consume from the hot log,
#   3. NATS JetStream (../shared/peers/nats-bench/run.sh) under the same load.
# usage: benches/sitting.sh [COUNT]      (default 1,000,000 messages per run)
# Writes JSON reports to target/sitting/ and prints one summary line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000000}
out=target/sitting
rm -rf "$out" && mkdir -p "$out"
cargo build -q --release -p sluice-server -p sluice-bench --bins
bench=target/release/sluice-bench

echo "== storage: raw append+sync, 1 MiB batches, one fdatasync each"
target/release/sluice-storage-bench --backend glommio --total-mib 512 --dir target | grep RESULT

data=$(mktemp -d)
target/release/sluice-server --data-dir "$data" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 50); do [ -f "$data/tls/ca.pem" ] && break; sleep 0.2; done
common=(--ca "$data/tls/ca.pem" --no-progress --size 1024 --producers 4 --partitions 8 --acks all --linger-ms 1)

run() { # label, then sluice-bench args
  local label=$1; shift
  "$bench" "${common[@]}" --json "$out/$label.json" "$@" >"$out/$label.txt" 2>&1 || true
  python3 - "$label" "$out/$label.json" <<'EOF'
import json, sys
label, path = sys.argv[1], sys.argv[2]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{label:14} failed: {e}"); sys.exit()
print(f"{label:14} {r['msgs_per_sec']:>10,.0f} msgs/s {r['mb_per_sec']:>8.1f} MB/s  "
      f"p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f}  p99.9 {r['p999_ms']:.2f} ms  errors {r['errors']}")
EOF
}

echo "== sluice (acks=all: fsync before ack)"
run full --in-flight 2048 produce --count "$count"
rate=$(python3 -c "import json; print(int(json.load(open('$out/full.json'))['msgs_per_sec'] / 2))")
run window256 --in-flight 256 produce --count "$count"
run half-open --in-flight 4096 --rate "$rate" produce --count "$count"
run consume consume

echo "== NATS JetStream R1 (acks before fsync)"
kill $server; wait $server 2>/dev/null || true
../shared/peers/nats-bench/run.sh 1 --size 1024 --producers 4 --inflight 256 --count "$count" --max-secs 20 | grep RESULT
