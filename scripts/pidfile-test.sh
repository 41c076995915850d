#!/usr/bin/env bash
# Tests that scripts/redis.sh, kafka.sh, pg.sh and cluster.sh `stop` signal only the
# process they started: a PID file naming another live process (ours exited, its PID was
# reused) is reported and removed, and that process survives. No services are needed
# (redis-server, if installed, also checks that a real stop still works).
#
#   scripts/pidfile-test.sh          # prints `ok: ...` per check; exit status 1 on a failure
#
# Runs in a temporary directory; starts only `sleep` decoys and (if present) one
# redis-server, and stops them by their own PIDs at the end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=pidfile.sh
. "$here/scripts/pidfile.sh"

tmp="$(mktemp -d)"
decoys=()
cleanup() {
    local pid
    for pid in "${decoys[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ -f "$tmp/redis/redis.pid" ]; then
        VTPGA_REDIS_DIR="$tmp/redis" "$here/scripts/redis.sh" stop >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck source-path=SCRIPTDIR source=check-lib.sh
. "$here/scripts/check-lib.sh"

# A process that runs (a zombie does not count: it has exited).
running() {
    local state
    state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# A long sleep started under ARGV0 (default sleep) that is not any script's process;
# sets $decoy. A pause first, so that two decoys never share a start time (10 ms ticks).
new_decoy() {
    sleep 0.05
    if [ -n "${1:-}" ]; then
        bash -c 'exec -a "$0" sleep 600' "$1" &
    else
        sleep 600 &
    fi
    decoy=$!
    disown "$decoy"
    decoys+=("$decoy")
    sleep 0.05
}

# --- the library ------------------------------------------------------------------------
new_decoy
first=$decoy
pid_remember "$tmp/lib.pid" "$first" sleep
check "pid_ours: the remembered process" pid_ours "$tmp/lib.pid" sleep
new_decoy
echo "$decoy" >"$tmp/lib.pid" # same program, other start time: a reused PID
check "pid_ours: same program, other start time is not ours" not pid_ours "$tmp/lib.pid" sleep
pid_remember "$tmp/lib.pid" "$decoy" tail # same start time, other program
check "pid_ours: other program is not ours" not pid_ours "$tmp/lib.pid" tail
rm -f "$tmp/lib.pid.owner" # an older script's PID file: checked by program only
echo "$decoy" >"$tmp/lib.pid"
check "pid_ours: PID file without owner, right program" pid_ours "$tmp/lib.pid" sleep
check "pid_ours: PID file without owner, wrong program" not pid_ours "$tmp/lib.pid" redis-server
echo "garbage" >"$tmp/lib.pid"
check "pid_ours: garbage is not ours" not pid_ours "$tmp/lib.pid" sleep
pid_remember "$tmp/lib.pid" "$first" sleep
pid_stop "$tmp/lib.pid" sleep sleep
check "pid_stop: stops the remembered process" not running "$first"
check "pid_stop: removes the PID file" test ! -e "$tmp/lib.pid"

# --- redis.sh, kafka.sh, pg.sh stop with a recycled PID ---------------------------------
new_decoy
mkdir -p "$tmp/redis" "$tmp/kafka" "$tmp/pg/data"
echo "$decoy" >"$tmp/redis/redis.pid"
out="$(VTPGA_REDIS_DIR="$tmp/redis" "$here/scripts/redis.sh" stop 2>&1)" || true
check "redis.sh stop: a recycled PID survives" running "$decoy"
check "redis.sh stop: says so" grep -q "killed nothing" <<<"$out"
check "redis.sh stop: removes the stale PID file" test ! -e "$tmp/redis/redis.pid"

echo "$decoy" >"$tmp/kafka/tansu.pid"
# Even with an owner file of the right start time: the program is not tansu.
echo "$(pid_start_time "$decoy") $(pid_program_path tansu)" >"$tmp/kafka/tansu.pid.owner"
out="$(VTPGA_KAFKA_DIR="$tmp/kafka" "$here/scripts/kafka.sh" stop 2>&1)" || true
check "kafka.sh stop: a recycled PID survives" running "$decoy"
check "kafka.sh stop: says so" grep -q "killed nothing" <<<"$out"
check "kafka.sh stop: removes the stale PID file" test ! -e "$tmp/kafka/tansu.pid"

printf '%s\n%s\n' "$decoy" "$tmp/pg/data" >"$tmp/pg/data/postmaster.pid"
out="$(VTPGA_PG_DIR="$tmp/pg" "$here/scripts/pg.sh" stop 2>&1)" || true
check "pg.sh stop: a recycled PID survives" running "$decoy"
check "pg.sh stop: says so" grep -q "killed nothing" <<<"$out"
check "pg.sh stop: removes the stale postmaster.pid" test ! -e "$tmp/pg/data/postmaster.pid"

# --- cluster.sh stop --------------------------------------------------------------------
# A decoy whose command line looks like a cluster process: only the start time tells.
new_decoy "vtpga run --process 0"
mkdir -p "$tmp/cluster"
{
    echo "# index host pid start"
    echo "0 local $decoy 1"
} >"$tmp/cluster/processes"
out="$(VTPGA_CLUSTER_DIR="$tmp/cluster" VTPGA_CLUSTER_STOP_WAIT=5 "$here/scripts/cluster.sh" stop 2>&1)" || true
check "cluster.sh stop: a recycled PID (other start time) survives" running "$decoy"
check "cluster.sh stop: says so" grep -q "not signalled" <<<"$out"
{
    echo "# index host pid start"
    echo "0 local $decoy $(pid_start_time "$decoy")"
} >"$tmp/cluster/processes"
VTPGA_CLUSTER_DIR="$tmp/cluster" VTPGA_CLUSTER_STOP_WAIT=5 "$here/scripts/cluster.sh" stop >/dev/null 2>&1
check "cluster.sh stop: its own process (same start time) is stopped" not running "$decoy"

# --- a real redis-server still stops ----------------------------------------------------
if command -v redis-server >/dev/null 2>&1; then
    port=$((20000 + RANDOM % 20000))
    if VTPGA_REDIS_DIR="$tmp/redis" "$here/scripts/redis.sh" start "$port" >/dev/null 2>&1; then
        pid="$(cat "$tmp/redis/redis.pid")"
        check "redis.sh status: running" env VTPGA_REDIS_DIR="$tmp/redis" "$here/scripts/redis.sh" status
        out="$(VTPGA_REDIS_DIR="$tmp/redis" "$here/scripts/redis.sh" stop 2>&1)" || true
        check "redis.sh stop: stops its own server" not running "$pid"
        check "redis.sh stop: says so" grep -q "redis stopped" <<<"$out"
    else
        fail "redis.sh start on port $port"
    fi
else
    echo "skip: redis-server not installed (a real stop not checked)"
fi

checks_done "PID-file"
