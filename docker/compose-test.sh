#!/usr/bin/env bash
# End-to-end test of the compose cluster (docker/docker-compose.yml): build the image,
# start the three nodes, wait for each /ready, create an RF=3 topic, produce 5 records
# (acks=all) and consume them through another node with the `sluice` CLI from the host,
# check `cluster status`; then SIGKILL node 3 (`docker kill`), wait for the survivors to
# elect leaders, produce 5 more through node 1, consume all 10 through node 2, start
# node 3 again and wait until every node is alive; finally `down -v`. Every step is
# bounded; with a dev image it takes about 20 s (the test suite runs it so:
# crates/server/tests/compose.rs).
#
#   docker/compose-test.sh                          # static image (~8 min release build)
#   SLUICE_BIN_DIR=target/debug docker/compose-test.sh   # dev image, no extra build
#
# Prints "skipped: no docker" and exits 0 when docker or its daemon is not available.
# Before starting it removes what an earlier run of this script left behind (projects
# named sluice-compose-test-PID whose PID is gone): such a leftover would hold the host
# ports 127.0.0.1:7001-7003/udp, 7081-7083/tcp and the subnet 172.28.0.0/24.
# Environment:
#   SLUICE_BIN_DIR        dev-image mode (docker/build.sh): the image from the
#                         dynamically linked binaries in this directory, and the CLI
#                         from there too
#   SLUICE_SKIP_BUILD=1   use the existing image instead of running docker/build.sh
#   SLUICE_IMAGE          image tag (default sluice:dev; sluice:local with SLUICE_BIN_DIR)
#   SLUICE_CLI            the host `sluice` binary (default: SLUICE_BIN_DIR/sluice, else
#                         the static one build.sh makes)
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

if [[ -n "${SLUICE_BIN_DIR:-}" ]]; then
    SLUICE_BIN_DIR=$(cd "$SLUICE_BIN_DIR" && pwd)
    export SLUICE_BIN_DIR
    export SLUICE_IMAGE=${SLUICE_IMAGE:-sluice:local}
    cli=${SLUICE_CLI:-$SLUICE_BIN_DIR/sluice}
else
    export SLUICE_IMAGE=${SLUICE_IMAGE:-sluice:dev}
    target_dir=${SLUICE_TARGET_DIR:-$root/target/static}
    cli=${SLUICE_CLI:-$target_dir/x86_64-unknown-linux-gnu/release/sluice}
fi
prefix=sluice-compose-test-
project=$prefix$$
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compose-test.XXXXXX")
trap 'rm -rf "$work"' EXIT # until `cleanup` below
started=$SECONDS

step() { echo "compose-test: [$((SECONDS - started))s] $*"; }
fail() {
    echo "compose-test: FAILED after $((SECONDS - started))s: $*" >&2
    exit 1
}

if [[ "${SLUICE_SKIP_BUILD:-0}" != 1 ]]; then
    step "building the image ($SLUICE_IMAGE)"
    timeout 3600 "$here/build.sh" >"$work/build.log" 2>&1 \
        || fail "docker/build.sh: $(tail -20 "$work/build.log")"
fi
[[ -x "$cli" ]] || fail "no sluice CLI at $cli (set SLUICE_CLI)"

# Relative paths in the compose file (configs, the seccomp profile) are resolved from
# the current directory by docker-compose v1: run it from docker/.
cd "$here"
dc_project() {
    local p=$1
    shift
    timeout 180 "${compose[@]}" -p "$p" -f docker-compose.yml "$@"
}
dc() { dc_project "$project" "$@"; }

# Leftovers of earlier runs (killed before their cleanup, e.g. by a test timeout):
# every compose project named $prefix<pid>, from its containers, networks or volumes.
leftovers() {
    local label='{{.Label "com.docker.compose.project"}}'
    {
        docker ps -a --filter label=com.docker.compose.project --format "$label"
        docker network ls --filter label=com.docker.compose.project --format "$label"
        docker volume ls --filter label=com.docker.compose.project --format "$label"
    } 2>/dev/null | grep -E "^$prefix[0-9]+\$" | sort -u || true
}
for old in $(leftovers); do
    pid=${old#"$prefix"}
    if [[ $pid != "$$" ]] && grep -qs compose-test "/proc/$pid/cmdline"; then
        fail "another compose test (pid $pid, project $old) is running"
    fi
    step "removing the leftover project $old"
    dc_project "$old" down -v -t 1 >/dev/null 2>&1 || echo "compose-test: warning: down $old failed" >&2
done
# Anything else on the host ports (e.g. a cluster started by hand from docker/) would
# make `up` fail half-way: say so up front.
for port in 7001/udp 7002/udp 7003/udp 7081/tcp 7082/tcp 7083/tcp; do
    holder=$(docker ps --filter "publish=$port" --format '{{.Names}}' 2>/dev/null || true)
    [[ -z "$holder" ]] || fail "host port $port is published by container(s) $holder; stop them"
done

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $rc != 0 ]]; then
        echo "compose-test: logs of the failed run:" >&2
        dc logs --no-color --tail 40 >&2 || true
    fi
    step "down -v"
    # -t 5: the test does not need the 10 s drain of a graceful stop.
    dc down -v -t 5 >/dev/null 2>&1 || echo "compose-test: warning: down -v failed" >&2
    rm -rf "$work"
    step "done (exit $rc)"
    exit $rc
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

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

step "up -d (project $project, image $SLUICE_IMAGE)"
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

# The values consumed from every partition, sorted, one line; $1: the node's port.
consumed() {
    local port=$1 count=$2
    sluice --server "127.0.0.1:$port" consume demo --from earliest --count "$count" \
        --output json >"$work/records" 2>"$work/consume.err" || return 1
    grep -o '"value":"[^"]*"' "$work/records" | sort | tr '\n' ' '
}
# $1 values r-1..r-$1, as `consumed` prints them.
expected() { for i in $(seq 1 "$1"); do echo "\"value\":\"r-$i\""; done | sort | tr '\n' ' '; }

step "consuming them through node 2"
got=$(consumed 7002 5) || fail "consume: $(cat "$work/consume.err")"
[[ "$got" == "$(expected 5)" ]] || fail "consumed [$got], expected [$(expected 5)]"

# `cluster status --output json` through node $1 into $work/status.
status() { sluice --server "127.0.0.1:$1" cluster status --output json >"$work/status" 2>/dev/null; }
all_alive() {
    status "$1" || return 1
    [[ $(grep -o '"alive":true' "$work/status" | wc -l) == 3 ]]
}
step "cluster status through node 3"
retry 30 all_alive 7003 || fail "cluster status: not every node alive: $(cat "$work/status")"
sluice --server 127.0.0.1:7003 cluster status

# Node loss: SIGKILL node 3, whatever it leads (the controller, partitions).
node3=$(dc ps -q node-3)
[[ -n "$node3" ]] || fail "no node-3 container"
step "docker kill node-3 (SIGKILL)"
timeout 30 docker kill "$node3" >/dev/null
stopped() { [[ "$(timeout 10 docker inspect -f '{{.State.Running}}' "$node3")" == false ]]; }
retry 10 stopped || fail "node-3 still running after docker kill"

# Node $1's view once the survivors took over: node 3 dead, a controller and a leader
# for every partition on nodes 1 or 2, nothing leaderless on the answering node.
survivors_lead() {
    status "$1" || return 1
    grep -q '"node_id":3,[^}]*"alive":false' "$work/status" \
        && grep -q '"controller":[12],' "$work/status" \
        && grep -q '"leaderless":0,' "$work/status" \
        && grep -q '"topics":\[' "$work/status" \
        && ! grep -qE '"leader":(null|3),' "$work/status"
}
step "waiting for nodes 1 and 2 to lead every partition"
for port in 7001 7002; do
    retry 60 survivors_lead "$port" \
        || fail "no failover seen by 127.0.0.1:$port within 60 s: $(cat "$work/status")"
done

# One record per produce, so a failure is about that record only. A DEFINITE failure
# (nothing appended: e.g. a stale leader) is retried; an INDETERMINATE one would make
# an exact count meaningless and fails the test.
produce_one() {
    printf '%s\n' "$1" | sluice --server 127.0.0.1:7001 produce demo --acks all \
        --timeout-ms 10000 >>"$work/acks2" 2>"$work/produce.err" && return 0
    if grep -q INDETERMINATE "$work/produce.err"; then
        fail "produce $1 with node 3 down: $(cat "$work/produce.err")"
    fi
    return 1
}
step "producing 5 more records through node 1 with node 3 down"
: >"$work/acks2"
for i in 6 7 8 9 10; do
    retry 30 produce_one "r-$i" || fail "produce r-$i with node 3 down: $(cat "$work/produce.err")"
done
[[ $(wc -l <"$work/acks2") == 5 ]] || fail "expected 5 acks, got: $(cat "$work/acks2")"

step "consuming all 10 through node 2"
consumed_all() { got=$(consumed 7002 10) && [[ "$got" == "$(expected 10)" ]]; }
retry 30 consumed_all \
    || fail "consumed [${got:-}] ($(cat "$work/consume.err")), expected [$(expected 10)]"

step "starting node-3 again"
timeout 30 docker start "$node3" >/dev/null
retry 60 ready 7083 || fail "node-3 not ready within 60 s of its restart"
retry 60 all_alive 7003 || fail "not every node alive after node-3's restart: $(cat "$work/status")"
retry 30 all_alive 7001 || fail "node 1 does not see every node alive: $(cat "$work/status")"
sluice --server 127.0.0.1:7003 cluster status

step "ok"
