#!/usr/bin/env bash
# A local Redis for development and tests: redis-server (installed by scripts/setup.sh)
# on loopback, no persistence, no Docker.
#
#   scripts/redis.sh start [PORT]   # default 16379; prints the VTPGA_REDIS_URL to export
#   scripts/redis.sh stop           # stops the server this script started (by PID, checked)
#   scripts/redis.sh status
#
# Ready means `redis-cli ping` answers, from the process this script started.
# State (PID file, log) lives in $VTPGA_REDIS_DIR (default: .local/redis in the checkout).
# `stop` signals the PID only while it is still the redis-server this script started (same
# program, same start time: scripts/pidfile.sh); a stale PID file is removed, nothing killed.
# No RDB, no AOF: everything is gone when the server stops (the pipeline rebuilds the
# cache when it reconnects).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${VTPGA_REDIS_DIR:-$here/.local/redis}"
# shellcheck source-path=SCRIPTDIR source=pidfile.sh
. "$here/scripts/pidfile.sh"

need() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        echo "redis-server/redis-cli not found: run scripts/setup.sh (apt-get install redis-server)" >&2
        exit 1
    fi
}

running() {
    pid_ours "$dir/redis.pid" redis-server
}

start() {
    local port="${1:-16379}"
    need
    mkdir -p "$dir"
    if running; then
        echo "redis already running (pid $(cat "$dir/redis.pid"), port $(cat "$dir/port"))" >&2
        echo "export VTPGA_REDIS_URL=redis://127.0.0.1:$(cat "$dir/port")/"
        return 0
    fi
    (cd "$dir" && exec redis-server --port "$port" --bind 127.0.0.1 \
        --save '' --appendonly no --daemonize no --dir "$dir" \
        >"$dir/redis.log" 2>&1) &
    pid_remember "$dir/redis.pid" $! redis-server
    echo "$port" >"$dir/port"
    for _ in $(seq 1 100); do
        # Answered by the server this script started, not another one on the same port.
        if [ "$(redis-cli -h 127.0.0.1 -p "$port" info server 2>/dev/null |
            tr -d '\r' | sed -n 's/^process_id://p')" = "$(cat "$dir/redis.pid")" ]; then
            echo "redis on 127.0.0.1:$port (pid $(cat "$dir/redis.pid"))" >&2
            echo "export VTPGA_REDIS_URL=redis://127.0.0.1:$port/"
            return 0
        fi
        # (Alive at all: until its exec, the PID still runs the starting subshell.)
        if ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "redis did not answer on 127.0.0.1:$port (log: $dir/redis.log)" >&2
    tail -n 20 "$dir/redis.log" >&2 || true
    stop >/dev/null
    return 1
}

stop() {
    if [ -f "$dir/redis.pid" ]; then
        if pid_stop "$dir/redis.pid" redis-server redis-server; then
            echo "redis stopped"
        fi
    else
        echo "no redis started from $dir"
    fi
}

status() {
    if running; then
        echo "running: pid $(cat "$dir/redis.pid"), 127.0.0.1:$(cat "$dir/port")"
    else
        echo "not running"
        return 1
    fi
}

service_main "$@"
