#!/usr/bin/env bash
# One benchmark sitting for the three-node cluster, back to back on this machine, in
# ROUNDS rounds (noisy box: compare only numbers of one sitting). Each round runs, with
# acks=all, 1 KiB messages, 4 producers, 8 partitions, 256 records in flight per
# producer (the NATS anchor's window):
#   single — one release broker (RF=1), fresh data directory;
#   rf3    — `sluice cluster up --nodes 3` (RF=3 topics, every node on this machine),
#            fresh directory, the load generator bootstrapping from node 1;
#   nats3  — a three-node NATS JetStream cluster, R3 (../shared/peers/nats-bench/run.sh 3).
# usage: benches/cluster-sitting.sh [COUNT] [ROUNDS]   (defaults 300,000 messages, 2 rounds)
# JSON reports go to target/cluster-sitting/; one summary line per run is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-300000}
rounds=${2:-2}
# The SDK's default linger (5 ms), as in sitting.sh; LINGER_MS=1 is what the sittings
# before 2026-12-04's fourth used.
linger=${LINGER_MS:-5}
out=target/cluster-sitting
rm -rf "$out" && mkdir -p "$out"
cargo build -q --release -p sluice-server -p sluice-cli -p sluice-bench --bins
bench=target/release/sluice-bench
pid= dir=
stop() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$dir" ]; then rm -rf "$dir"; fi
  pid= dir=
}
trap stop EXIT
. benches/summary.sh
run() { # label, server, ca
  "$bench" --server "$2" --ca "$3" --no-progress --size 1024 --producers 4 --partitions 8 \
    --acks all --linger-ms "$linger" --in-flight 256 --json "$out/$1.json" produce --count "$count" \
    >"$out/$1.txt" 2>&1 || true
  summary "$1" "$out/$1.json"
}
for r in $(seq "$rounds"); do
  echo "round $r"
  stop; sync
  dir=$(mktemp -d -p "$PWD/target")
  target/release/sluice-server --data-dir "$dir/data" >"$out/single-$r.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -f "$dir/data/tls/ca.pem" ] && break; sleep 0.1; done
  sleep 0.5
  run "single-$r" 127.0.0.1:7878 "$dir/data/tls/ca.pem"
  stop; sync
  dir=$(mktemp -d -p "$PWD/target")
  target/release/sluice cluster up --nodes 3 --dir "$dir" --base-port 17000 >"$out/rf3-$r.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do grep -q "17001" "$out/rf3-$r.log" 2>/dev/null && break; sleep 0.1; done
  sleep 2
  run "rf3-$r" 127.0.0.1:17001 "$dir/certs/ca.pem"
  stop
  ../shared/peers/nats-bench/run.sh 3 --size 1024 --producers 4 --inflight 256 --count "$count" --max-secs 20 \
    >"$out/nats3-$r.txt" 2>&1 || true
  grep RESULT "$out/nats3-$r.txt" | sed 's/^/  nats3    /' || echo "  nats3    failed (see $out/nats3-$r.txt)"
done
