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
# `stop` signals nothing unless the PID in the data directory's postmaster.pid is alive and
# is the postmaster of this data directory ($bin/postgres, started with `-D DATA`); else
# it says so and removes the stale postmaster.pid (pg_ctl itself would signal whatever
# process has that PID now).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${VTPGA_PG_DIR:-$here/.local/pg}"
bin="${VTPGA_PG_BIN:-/usr/lib/postgresql/15/bin}"
# shellcheck source-path=SCRIPTDIR source=pidfile.sh
. "$here/scripts/pidfile.sh"

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

# Is the PID of postmaster.pid the postmaster of this data directory? (Not a recycled PID.)
postmaster_ours() {
    local pidfile="$dir/data/postmaster.pid" pid exe data
    pid="$(head -n 1 "$pidfile" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[1-9][0-9]*$ ]] || return 1
    exe="$(pid_exe "$pid")" || return 1
    [ "$exe" = "$(pid_program_path "$bin/postgres")" ] || return 1
    # pg_ctl starts it as `postgres -D DATA ...`; postmaster.pid's line 2 is DATA too.
    data="$(sed -n 2p "$pidfile")"
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$data" || return 1
    [ "$(cd "$data" 2>/dev/null && pwd -P)" = "$(cd "$dir/data" && pwd -P)" ]
}

stop() {
    if [ -f "$dir/data/postmaster.pid" ]; then
        if ! postmaster_ours; then
            pid_forget_stale "$dir/data/postmaster.pid" "PostgreSQL of $dir/data"
            return 0
        fi
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
        echo "PostgreSQL stopped"
    else
        echo "no PostgreSQL running from $dir"
    fi
}

status() {
    as_owner "$bin/pg_ctl" -D "$dir/data" status
}

service_main "$@"
