#!/usr/bin/env bash
# Load test of the pipeline through Kafka, all on this machine: a private tansu broker,
# `vtpga run --source kafka`, then `vtpga loadtest` at fixed producer rates, each for a
# bounded time. Prints the table of sustained throughput and decision latency.
#
#   scripts/loadtest.sh [RATES] [DURATION] [WORKERS]     # default 1000,10000,50000,max 10s 2
set -euo pipefail
cd "$(dirname "$0")/.."
rates="${1:-1000,10000,50000,max}"
duration="${2:-10s}"
workers="${3:-2}"
port="${VTPGA_LOADTEST_PORT:-19392}"
work="$(mktemp -d /tmp/vtpga-loadtest.XXXXXX)"
export VTPGA_KAFKA_DIR="$work/kafka"
export VTPGA_KAFKA_BROKERS="127.0.0.1:$port"

cargo build --release --quiet
bin=target/release/vtpga
pipeline_pid=""
cleanup() {
    if [ -n "$pipeline_pid" ] && kill -0 "$pipeline_pid" 2>/dev/null; then
        kill "$pipeline_pid" 2>/dev/null || true
        wait "$pipeline_pid" 2>/dev/null || true
    fi
    scripts/kafka.sh stop >/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

scripts/kafka.sh start "$port" 4 >/dev/null
"$bin" generate --out "$work/ref" --count 1 --users 10000 >/dev/null
RUST_LOG=warn "$bin" run --source kafka --start latest --workers "$workers" --idle-slack-ms "${VTPGA_LOADTEST_SLACK_MS:-5}" \
    --regions "$work/ref/regions.csv" --users-csv "$work/ref/users.csv" \
    >"$work/pipeline.out" 2>"$work/pipeline.err" &
pipeline_pid=$!
sleep 3
kill -0 "$pipeline_pid" || { cat "$work/pipeline.err"; exit 1; }
RUST_LOG=warn "$bin" loadtest --regions "$work/ref/regions.csv" --users "$work/ref/users.csv" \
    --rates "$rates" --duration "$duration" --linger-ms "${VTPGA_LOADTEST_LINGER_MS:-5}"
echo "pipeline status lines (last 5):"
tail -n 5 "$work/pipeline.err"
