#!/usr/bin/env bash
# One benchmark sitting for the single-node broker, everything back to back on this
# machine, in ROUNDS rounds (the box is noisy: compare only numbers from one sitting,
# and read the spread across rounds). Each round runs:
#   1. the storage benchmark's raw append+sync (1 MiB batches, one fdatasync each: the
#      disk's ceiling for an appending log), O_DIRECT (the engine's default data-file
#      mode, the figure issue 3's 60% is read against) and buffered,
#   2. sluice-bench, acks=all, 1 KiB messages, 4 producers, 8 partitions, the SDK's
#      default linger (5 ms; LINGER_MS overrides), each produce
#      run on a fresh release broker and data directory after a `sync` (so one run's
#      dirty pages do not slow the next one's fsyncs):
#        full      — full speed (4096 records in flight per producer, 1 MiB batches),
#        window256 — the NATS anchor's window (256 in flight per producer),
#        half      — open loop at 50% of this round's full speed,
#        consume   — reading the half run's topic back from the hot log,
#   3. NATS JetStream R1 (../shared/peers/nats-bench/run.sh) under the same load,
#   4. the round's ratios against issue 3's targets (benches/ratios.py).
# usage: benches/sitting.sh [COUNT] [ROUNDS]   (defaults 1,000,000 messages, 3 rounds)
#        SERVER_ARGS="--shards 4" benches/sitting.sh ...   (broker flags for every run)
# JSON reports go to target/sitting/; one summary line per run is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000000}
rounds=${2:-3}
# The SDK's default linger (5 ms). LINGER_MS=1 is what the sittings before 2026-12-04's
# fourth used: more, smaller requests at the 256 window (benches/README.md).
linger=${LINGER_MS:-5}
# Full speed sends 1 MiB batches (FULL_BATCH_BYTES overrides) from a 4096-record window
# (FULL_WINDOW overrides; 2048 before 2026-12-04's seventh sitting): four batches per
# producer, one filling while three are in flight, so the disk's fsyncs and the two
# cores' work overlap (at 2048 the machine idled 4-12% of the loaded samples, at 4096
# 2-5%). The other runs keep the SDK's default 256 KiB, which the 256-record window
# fills once (a 1 MiB batch would only ever leave on its linger).
full_batch=${FULL_BATCH_BYTES:-1048576}
full_window=${FULL_WINDOW:-4096}
# Broker flags for every produce run (SERVER_ARGS, e.g. "--shards 4"; default none: the
# broker's defaults).
server_args=${SERVER_ARGS:-}
out=target/sitting
rm -rf "$out" && mkdir -p "$out"
cargo build -q --release -p sluice-server -p sluice-bench --bins
bench=target/release/sluice-bench
server=
data=
stop() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ -n "$data" ]; then rm -rf "$data"; fi
  server= data=
}
trap stop EXIT
start() {
  stop
  sync
  data=$(mktemp -d -p "$PWD/target")
  # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
  target/release/sluice-server --data-dir "$data" $server_args >"$out/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do [ -f "$data/tls/ca.pem" ] && break; sleep 0.1; done
  sleep 0.5
}
. benches/summary.sh
run() { # label, then sluice-bench args
  local label=$1; shift
  "$bench" --ca "$data/tls/ca.pem" --no-progress --size 1024 --producers 4 --partitions 8 \
    --acks all --linger-ms "$linger" --json "$out/$label.json" "$@" >"$out/$label.txt" 2>&1 || true
  summary "$label" "$out/$label.json"
}

for r in $(seq "$rounds"); do
  echo "== round $r"
  sync
  target/release/sluice-storage-bench --backend glommio --total-mib 512 --dir target \
    | grep RESULT | tee "$out/storage-$r.txt" | sed 's/^/  storage /'
  # The same through O_DIRECT: on a virtual machine whose fresh pages are slow to back,
  # the page cache can halve the buffered figure (benches/README.md, 2026-12-04).
  sync
  target/release/sluice-storage-bench --backend glommio-direct --total-mib 512 --dir target \
    | grep RESULT | tee "$out/storage-direct-$r.txt" | sed 's/^/  storage /'
  start; run "full-$r" --in-flight "$full_window" --batch-bytes "$full_batch" produce --count "$count"
  rate=$(python3 -c "import json; print(int(json.load(open('$out/full-$r.json'))['msgs_per_sec'] / 2))")
  start; run "window256-$r" --in-flight 256 produce --count "$count"
  start; run "half-$r" --in-flight 4096 --rate "$rate" produce --count "$count"
  run "consume-$r" consume
  stop; sync
  ../shared/peers/nats-bench/run.sh 1 --size 1024 --producers 4 --inflight 256 --count "$count" --max-secs 20 \
    | grep RESULT | tee "$out/nats-$r.txt" | sed 's/^/  nats /'
  python3 benches/ratios.py "$out" "$r"
done
