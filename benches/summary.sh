# Shared by sitting.sh and cluster-sitting.sh: summary LABEL JSON prints one line from
# a sluice-bench --json report.
summary() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
label, path = sys.argv[1], sys.argv[2]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"  {label:14} failed: {e}"); sys.exit()
ms = lambda k: "-" if r.get(k) is None else f"{r[k]:.2f}"
print(f"  {label:14} {r['msgs_per_sec']:>10,.0f} msgs/s {r['mb_per_sec']:>8.1f} MB/s  "
      f"p50 {ms('p50_ms')}  p99 {ms('p99_ms')}  p99.9 {ms('p999_ms')} ms  errors {r['errors']}")
EOF
}
