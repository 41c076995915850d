#!/usr/bin/env bash
# Load test of the pipeline through Kafka, all on this machine: a private tansu broker,
# `vtpga run --source kafka`, then `vtpga loadtest` at fixed producer rates, each for a
# bounded time. Prints the table of sustained throughput and decision latency.
#
#   scripts/loadtest.sh [RATES] [DURATION] [WORKERS]     # default 1000,10000,50000,max 10s 2
#
# VTPGA_LOADTEST_SINKS=1 also starts a private PostgreSQL and Redis (scripts/pg.sh,
# scripts/redis.sh, in the same temporary directory) and runs the pipeline with both: the
# latency is then that of a decision committed to PostgreSQL and produced to the topic.
# VTPGA_BIN=path runs that binary instead of building this checkout's (A/B comparisons).
set -euo pipefail
cd "$(dirname "$0")/.."
rates="${1:-1000,10000,50000,max}"
duration="${2:-10s}"
workers="${3:-2}"
port="${VTPGA_LOADTEST_PORT:-19392}"
# shellcheck source-path=SCRIPTDIR source=bench-env.sh
. scripts/bench-env.sh
bench_env loadtest
export VTPGA_KAFKA_BROKERS="127.0.0.1:$port"
sinks="${VTPGA_LOADTEST_SINKS:-0}"

pipeline_pid=""
cleanup() {
    if [ -n "$pipeline_pid" ] && kill -0 "$pipeline_pid" 2>/dev/null; then
        kill "$pipeline_pid" 2>/dev/null || true
        wait "$pipeline_pid" 2>/dev/null || true
    fi
    bench_cleanup
}
trap cleanup EXIT

scripts/kafka.sh start "$port" 4 >/dev/null
"$bin" generate --out "$work/ref" --count 1 --users 10000 >/dev/null
reference=(--regions "$work/ref/regions.csv" --users-csv "$work/ref/users.csv")
if [ "$sinks" = 1 ]; then
    eval "$(scripts/pg.sh start "${VTPGA_LOADTEST_PG_PORT:-19432}" | tail -1)"
    eval "$(scripts/redis.sh start "${VTPGA_LOADTEST_REDIS_PORT:-19379}")"
    "$bin" seed --postgres "$VTPGA_POSTGRES" --regions-csv "$work/ref/regions.csv" \
        --users-csv "$work/ref/users.csv" >/dev/null
    # Reference data comes from PostgreSQL.
    reference=(--postgres "$VTPGA_POSTGRES" --redis "$VTPGA_REDIS_URL")
fi
RUST_LOG=warn "$bin" run --source kafka --start latest --workers "$workers" --idle-slack-ms "${VTPGA_LOADTEST_SLACK_MS:-5}" \
    "${reference[@]}" >"$work/pipeline.out" 2>"$work/pipeline.err" &
pipeline_pid=$!
sleep 3
kill -0 "$pipeline_pid" || { cat "$work/pipeline.err"; exit 1; }
RUST_LOG=warn "$bin" loadtest --regions "$work/ref/regions.csv" --users "$work/ref/users.csv" \
    --rates "$rates" --duration "$duration" --linger-ms "${VTPGA_LOADTEST_LINGER_MS:-5}"
echo "pipeline status lines (last 5):"
tail -n 5 "$work/pipeline.err"
