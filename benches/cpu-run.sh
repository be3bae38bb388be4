#!/usr/bin/env bash
# One produce run on a fresh broker, with what it cost: the A/B tool behind the
# "old and new alternated" figures in benches/README.md.
#
#   benches/cpu-run.sh LABEL [sluice-bench args...]
#   SERVER=path/to/sluice-server BENCH=path/to/sluice-bench SERVER_ARGS="--shards 1" \
#     benches/cpu-run.sh new --in-flight 4096 --batch-bytes 1048576 produce --count 1000000
#
# Starts SERVER (default target/release/sluice-server) on a fresh data directory under
# target/ after a `sync`, runs BENCH (default target/release/sluice-bench) with 1 KiB
# messages, 4 producers, 8 partitions, acks=all (ACKS overrides) and the given arguments, stops the
# broker and prints one line: msgs/s, MB/s, p50/p99, errors, the broker's CPU (utime +
# stime from /proc), the load generator's (/usr/bin/time), the broker's page faults,
# its produce requests (sluice_produce_requests_total), and how idle the machine was
# over the samples (every 100 ms, /proc/stat) in which it was at least two thirds busy.
# Alternate builds run after run and compare CPU per record: this machine's speed
# drifts by the minute. The JSON report lands in target/cpu-run/LABEL.json.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:?usage: benches/cpu-run.sh LABEL [sluice-bench args...]}
shift
server_bin=${SERVER:-target/release/sluice-server}
bench_bin=${BENCH:-target/release/sluice-bench}
out=target/cpu-run
mkdir -p "$out"
sync
data=$(mktemp -d -p "$PWD/target")
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
"$server_bin" --data-dir "$data" ${SERVER_ARGS:-} >"$out/$label.server.log" 2>&1 &
server=$!
sampler=
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -f "$data/tls/ca.pem" ] && break; sleep 0.1; done
sleep 0.5
stat_of() { awk '{print $14 + $15, $10}' "/proc/$server/stat"; }
read -r cpu0 faults0 < <(stat_of)
# At most 60 s of samples, stopped as soon as the run ends.
(for _ in $(seq 600); do head -1 /proc/stat; sleep 0.1; done) >"$out/$label.stat" &
sampler=$!
/usr/bin/time -f "%U %S" -o "$out/$label.time" "$bench_bin" --ca "$data/tls/ca.pem" \
  --no-progress --size 1024 --producers 4 --partitions 8 --acks "${ACKS:-all}" \
  --json "$out/$label.json" "$@" >"$out/$label.txt" 2>&1 || true
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=
read -r cpu1 faults1 < <(stat_of)
# The dev broker's admin address (ADMIN overrides, with --admin-listen in SERVER_ARGS).
# The broker's metrics at the end of the run stay beside the report (LABEL.metrics).
curl -s "http://${ADMIN:-127.0.0.1:7879}/metrics" >"$out/$label.metrics" || true
reqs=$(awk '/^sluice_produce_requests_total/ {s += $2} END {print s + 0}' "$out/$label.metrics")
python3 - "$out" "$label" "$cpu0" "$cpu1" "$((faults1 - faults0))" "$reqs" <<'PY'
import json, sys
out, label, cpu0, cpu1, faults, reqs = sys.argv[1:7]
hz = 100  # USER_HZ
report = json.load(open(f"{out}/{label}.json"))
user, system = map(float, open(f"{out}/{label}.time").read().split()[:2])
rows = [list(map(int, l.split()[1:8])) for l in open(f"{out}/{label}.stat") if l.startswith("cpu ")]
idle = busy = 0
for a, b in zip(rows, rows[1:]):
    d = [y - x for x, y in zip(a, b)]
    i, bz = d[3] + d[4], d[0] + d[1] + d[2] + d[5] + d[6]
    if bz * 3 >= 2 * (i + bz):
        idle, busy = idle + i, busy + bz
print(f"{label}: {report['msgs_per_sec']:.0f} msgs/s {report['mb_per_sec']:.1f} MB/s "
      f"p50 {report['p50_ms']:.2f} p99 {report['p99_ms']:.2f} ms errors {report['errors']} "
      f"broker_cpu {(int(cpu1) - int(cpu0)) / hz:.2f} s load_generator_cpu {user + system:.2f} s "
      f"faults {faults} produce_requests {reqs} "
      f"idle_when_loaded {100 * idle / max(1, idle + busy):.1f}%")
PY
