#!/usr/bin/env bash
# A local Kafka-protocol broker for development and tests: tansu (Apache-2.0, crates.io)
# with in-memory storage, on loopback, no Docker.
#
#   scripts/kafka.sh install                      # cargo install tansu (skipped if present)
#   scripts/kafka.sh start [PORT] [PARTITIONS]    # default 19092, 4; creates the topics
#                                                 # (transactions, control, decisions, dead letters)
#   scripts/kafka.sh stop                         # stops the broker this script started (by PID, checked)
#   scripts/kafka.sh status
#
# State (PID file, log) lives in $VTPGA_KAFKA_DIR (default: .local/kafka in the checkout).
# `stop` signals the PID only while it is still the tansu this script started (same
# program, same start time: scripts/pidfile.sh); a stale PID file is removed, nothing killed.
# Memory storage: everything is gone when the broker stops.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${VTPGA_KAFKA_DIR:-$here/.local/kafka}"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"
# shellcheck source-path=SCRIPTDIR source=pidfile.sh
. "$here/scripts/pidfile.sh"

tansu_bin() {
    command -v tansu 2>/dev/null || true
}

install() {
    if [ -n "$(tansu_bin)" ]; then
        return 0
    fi
    echo "installing tansu (Kafka-protocol broker; about 15 minutes on 2 cores)..." >&2
    cargo install tansu --version 0.6.0 --features dynostore --locked
}

wait_port() {
    local port=$1
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "broker did not open 127.0.0.1:$port (log: $dir/tansu.log)" >&2
    return 1
}

start() {
    local port="${1:-19092}" partitions="${2:-4}"
    install
    mkdir -p "$dir"
    if pid_ours "$dir/tansu.pid" tansu; then
        echo "broker already running (pid $(cat "$dir/tansu.pid"), port $(cat "$dir/port"))"
        return 0
    fi
    local url="tcp://127.0.0.1:$port"
    (cd "$dir" && exec tansu broker \
        --listener-url "$url" \
        --advertised-listener-url "$url" \
        --storage-engine memory://tansu/ \
        >"$dir/tansu.log" 2>&1) &
    pid_remember "$dir/tansu.pid" $! tansu
    echo "$port" >"$dir/port"
    wait_port "$port"
    # Input topics (transactions, control) carry the SPEC §4 clock guard setting
    # message.timestamp.after.max.ms = VTPGA_MAX_CLOCK_SKEW_MS (default 60000). tansu 0.6.0
    # accepts topic configs (`--config KEY=VALUE`) and stores them, but its broker does not
    # enforce this one (no timestamp check in its source): with tansu only the pipeline's
    # own guard (`vtpga run --max-clock-skew-ms`) applies. Should a tansu refuse the
    # setting, the topic is created without it.
    local skew="${VTPGA_MAX_CLOCK_SKEW_MS:-60000}" topic
    for topic in "${VTPGA_KAFKA_TOPIC:-transacoes}" "${VTPGA_KAFKA_CONTROL_TOPIC:-transacoes-controle}"; do
        tansu topic create "$topic" --partitions "$partitions" --broker "$url" \
            --config "message.timestamp.after.max.ms=$skew" >/dev/null 2>&1 ||
            tansu topic create "$topic" --partitions "$partitions" --broker "$url" >/dev/null 2>&1 ||
            echo "topic $topic: not created (it may exist already)" >&2
    done
    for topic in "${VTPGA_KAFKA_DECISIONS_TOPIC:-transacoes-decisoes}" \
        "${VTPGA_KAFKA_DLQ_TOPIC:-transacoes-dlq}"; do
        tansu topic create "$topic" --partitions "$partitions" --broker "$url" >/dev/null 2>&1 ||
            echo "topic $topic: not created (it may exist already)" >&2
    done
    echo "broker on 127.0.0.1:$port (pid $(cat "$dir/tansu.pid")); export VTPGA_KAFKA_BROKERS=127.0.0.1:$port"
}

stop() {
    if [ -f "$dir/tansu.pid" ]; then
        if pid_stop "$dir/tansu.pid" tansu broker; then
            echo "broker stopped"
        fi
    else
        echo "no broker started from $dir"
    fi
}

status() {
    if pid_ours "$dir/tansu.pid" tansu; then
        echo "running: pid $(cat "$dir/tansu.pid"), 127.0.0.1:$(cat "$dir/port")"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
install) install ;;
start) shift; start "$@" ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 install|start [PORT] [PARTITIONS]|stop|status" >&2
    exit 2
    ;;
esac
