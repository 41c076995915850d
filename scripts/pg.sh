#!/usr/bin/env bash
# A private PostgreSQL 15 instance for development and tests: its own data directory,
# loopback only, a non-default port, stopped through its own PID file.
#
#   scripts/pg.sh start [PORT]    # default 15432; prints the connection URL
#   scripts/pg.sh stop
#   scripts/pg.sh status
#
# State lives in $VTPGA_PG_DIR (default: .local/pg in the checkout). As root, the server
# runs as the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${VTPGA_PG_DIR:-$here/.local/pg}"
bin="${VTPGA_PG_BIN:-/usr/lib/postgresql/15/bin}"

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local port="${1:-15432}"
    if [ ! -x "$bin/initdb" ]; then
        echo "PostgreSQL 15 is not installed ($bin/initdb): run scripts/setup.sh" >&2
        exit 1
    fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -U vtpga --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
    fi
    if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        echo "PostgreSQL already running ($(cat "$dir/port"))"
    else
        as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
            "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
        echo "$port" >"$dir/port"
    fi
    port="$(cat "$dir/port")"
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U vtpga -d postgres -qtAc \
        "SELECT 1 FROM pg_database WHERE datname = 'vtpga'" | grep -q 1 ||
        as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U vtpga vtpga
    echo "export VTPGA_POSTGRES=postgres://vtpga@127.0.0.1:$port/vtpga"
}

stop() {
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
        echo "PostgreSQL stopped"
    else
        echo "no PostgreSQL running from $dir"
    fi
}

status() {
    as_owner "$bin/pg_ctl" -D "$dir/data" status
}

case "${1:-}" in
start) shift; start "$@" ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start [PORT]|stop|status" >&2
    exit 2
    ;;
esac
