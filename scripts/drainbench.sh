#!/usr/bin/env bash
# The durable path end to end: how fast a backlog on the transactions topic is decided and
# recorded. Starts a private tansu broker, PostgreSQL and Redis (loopback, non-default
# ports, a temporary directory; stopped by PID at the end), seeds the reference data,
# produces COUNT messages at full speed, then times
#   vtpga run --source kafka --start earliest --exit-at-eof --workers WORKERS
# once with PostgreSQL and Redis and once with the Kafka sink only (same backlog, a new
# source name so it starts from the beginning again). Prints both figures.
#
#   scripts/drainbench.sh [COUNT] [WORKERS]          # default 300000 2
#
# VTPGA_BIN=path runs that binary instead of building this checkout's (A/B comparisons).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-300000}"
workers="${2:-2}"
# shellcheck source-path=SCRIPTDIR source=bench-env.sh
. scripts/bench-env.sh
bench_env drainbench
trap bench_cleanup EXIT
export VTPGA_KAFKA_BROKERS="127.0.0.1:${VTPGA_DRAIN_KAFKA_PORT:-19492}"

scripts/kafka.sh start "${VTPGA_KAFKA_BROKERS##*:}" 4 >/dev/null
eval "$(scripts/pg.sh start "${VTPGA_DRAIN_PG_PORT:-19532}" | tail -1)"
eval "$(scripts/redis.sh start "${VTPGA_DRAIN_REDIS_PORT:-19579}")"
RUST_LOG=warn "$bin" seed --postgres "$VTPGA_POSTGRES" --users 10000 --csv "$work/ref" >/dev/null
RUST_LOG=warn env -u VTPGA_POSTGRES "$bin" produce --regions "$work/ref/regions.csv" --users "$work/ref/users.csv" \
    --rate max --count "$count" --quiet

seconds() {
    local start end
    start=$(date +%s.%N)
    RUST_LOG=warn "$@" >"$work/run.out" 2>"$work/run.err" || {
        cat "$work/run.err" >&2
        exit 1
    }
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

s=$(seconds "$bin" run --source kafka --start earliest --exit-at-eof --workers "$workers" \
    --no-web --postgres "$VTPGA_POSTGRES" --redis "$VTPGA_REDIS_URL")
grep -E "^(postgres|redis):" "$work/run.out" | sed 's/^/  /'
report() {
    awk -v label="$1" -v n="$count" -v s="$2" 'BEGIN { printf "%-26s %d messages in %.2f s = %.0f tx/s\n", label, n, s, n / s }'
}
report "kafka + postgres + redis:" "$s"
s=$(seconds env -u VTPGA_POSTGRES -u VTPGA_REDIS_URL "$bin" run --source kafka --start earliest \
    --exit-at-eof --workers "$workers" --no-web --regions "$work/ref/regions.csv" --users-csv "$work/ref/users.csv")
report "kafka only:" "$s"
