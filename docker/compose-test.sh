#!/usr/bin/env bash
# End-to-end test of the compose cluster (docker/docker-compose.yml): build the image,
# start the three nodes, wait for each /ready, create an RF=3 topic, produce and consume
# a few records with the `sluice` CLI from the host, check `cluster status`, then
# `down -v`. Every step is bounded; the whole run takes about a minute once the image is
# built.
#
#   docker/compose-test.sh
#
# Prints "skipped: no docker" and exits 0 when docker or its daemon is not available.
# Environment:
#   SLUICE_SKIP_BUILD=1   use the existing image instead of running docker/build.sh
#   SLUICE_IMAGE          image tag (default sluice:dev)
#   SLUICE_CLI            the host `sluice` binary (default: the static one build.sh makes)
#   SLUICE_TARGET_DIR     as for build.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

if ! command -v docker >/dev/null 2>&1 || ! timeout 20 docker info >/dev/null 2>&1; then
    echo "skipped: no docker"
    exit 0
fi
if timeout 20 docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    echo "skipped: no docker compose"
    exit 0
fi

export SLUICE_IMAGE=${SLUICE_IMAGE:-sluice:dev}
target_dir=${SLUICE_TARGET_DIR:-$root/target/static}
cli=${SLUICE_CLI:-$target_dir/x86_64-unknown-linux-gnu/release/sluice}
project=sluice-compose-test-$$
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compose-test.XXXXXX")

step() { echo "compose-test: $*"; }
fail() {
    echo "compose-test: FAILED: $*" >&2
    exit 1
}

if [[ "${SLUICE_SKIP_BUILD:-0}" != 1 ]]; then
    step "building the image ($SLUICE_IMAGE)"
    timeout 3600 "$here/build.sh"
fi
[[ -x "$cli" ]] || fail "no sluice CLI at $cli (set SLUICE_CLI)"

# Relative paths in the compose file (configs, the seccomp profile) are resolved from
# the current directory by docker-compose v1: run it from docker/.
cd "$here"
dc() { timeout 180 "${compose[@]}" -p "$project" -f docker-compose.yml "$@"; }

cleanup() {
    local rc=$?
    if [[ $rc != 0 ]]; then
        echo "compose-test: logs of the failed run:" >&2
        dc logs --no-color --tail 40 >&2 || true
    fi
    step "down -v"
    dc down -v >/dev/null 2>&1 || echo "compose-test: warning: down -v failed" >&2
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT

# 200 from http://127.0.0.1:PORT/ready, without needing curl.
ready() {
    local port=$1
    if command -v curl >/dev/null 2>&1; then
        [[ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" == 200 ]]
    else
        timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && \
            printf 'GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 && \
            head -1 <&3 | grep -q ' 200 '" 2>/dev/null
    fi
}

# Runs "$@" until it succeeds, for at most $1 seconds.
retry() {
    local secs=$1
    shift
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

step "up -d (project $project)"
dc up -d

step "waiting for /ready on 127.0.0.1:7081..7083"
for port in 7081 7082 7083; do
    retry 60 ready "$port" || fail "node on admin port $port not ready within 60 s"
done

certs_container=$(dc ps -q certs)
[[ -n "$certs_container" ]] || fail "no certs container"
timeout 30 docker cp "$certs_container:/etc/sluice/certs/ca.pem" "$work/ca.pem"

sluice() { timeout 60 "$cli" --ca "$work/ca.pem" "$@"; }

# Nodes register with the controller one after another; until all three have, an RF=3
# topic is refused (InvalidConfig), so retry.
step "creating topic demo (3 partitions, RF 3)"
retry 90 sluice --server 127.0.0.1:7001 topic create demo --partitions 3 \
    --replication-factor 3 2>"$work/create.err" \
    || fail "topic create: $(cat "$work/create.err")"

step "producing 5 records through node 1"
printf 'r-1\nr-2\nr-3\nr-4\nr-5\n' | sluice --server 127.0.0.1:7001 produce demo --acks all \
    >"$work/acks" || fail "produce"
[[ $(wc -l <"$work/acks") == 5 ]] || fail "expected 5 acks, got: $(cat "$work/acks")"

step "consuming them through node 2"
sluice --server 127.0.0.1:7002 consume demo --from earliest --count 5 --output json \
    >"$work/records" || fail "consume"
got=$(grep -o '"value":"[^"]*"' "$work/records" | sort | tr '\n' ' ')
want='"value":"r-1" "value":"r-2" "value":"r-3" "value":"r-4" "value":"r-5" '
[[ "$got" == "$want" ]] || fail "consumed [$got], expected [$want]"

step "cluster status through node 3"
all_alive() {
    sluice --server 127.0.0.1:7003 cluster status --output json >"$work/status" 2>/dev/null || true
    [[ $(grep -o '"alive":true' "$work/status" | wc -l) == 3 ]]
}
retry 30 all_alive || fail "cluster status: not every node alive: $(cat "$work/status")"
sluice --server 127.0.0.1:7003 cluster status

step "ok"
