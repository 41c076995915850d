#!/usr/bin/env bash
# A multi-process timely cluster of `vtpga run`: N processes of W worker threads each, on
# this machine or on the hosts of a host list (over SSH). Every process gets the same
# --processes and cluster addresses and its own --process; partition p is consumed by
# global worker p mod (N x W) only, so the decisions are the same as one process's.
#
#   scripts/cluster.sh start N W [--hosts FILE] [--base-port P] [-- VTPGA RUN ARGS...]
#   scripts/cluster.sh wait [--timeout SECONDS]   # all exited 0? (non-zero at the first failure)
#   scripts/cluster.sh stop                       # SIGINT, then SIGTERM, then SIGKILL, by PID
#   scripts/cluster.sh status
#
# Example (a broker from scripts/kafka.sh on 19092, topics with 4 partitions):
#   VTPGA_KAFKA_BROKERS=127.0.0.1:19092 scripts/cluster.sh start 2 2 -- --source kafka
#
# Local processes listen on 127.0.0.1:P .. P+N-1 (P: --base-port, else $VTPGA_BASE_PORT,
# else vtpga's default 24100; a --base-port among the run args works too). They inherit
# this environment (VTPGA_KAFKA_BROKERS, VTPGA_POSTGRES, RUST_LOG, ...).
#
# --hosts FILE: one host per line, `SSH_TARGET [ADDRESS]` (`#` comments allowed); process i
# runs on line i mod (lines). ADDRESS is where the other processes reach it (default: the
# SSH target without `user@`); process i listens on ADDRESS:P+i (P default 24100). Each
# host needs `vtpga` ($VTPGA_REMOTE_BIN, default `vtpga` on PATH), bash and passwordless
# SSH; the timely hostfile is copied to $VTPGA_REMOTE_DIR (default /tmp/vtpga-cluster),
# where the logs are too. Every VTPGA_* and RUST_LOG variable of this shell is passed on,
# through ssh's standard input (not on a command line: `ps` shows no password). Give
# secrets that way (VTPGA_POSTGRES, VTPGA_REDIS_URL), not as run arguments.
# The cluster ports have no authentication: only the cluster's hosts may reach them
# (docs/running.md, "Network boundary").
# SSH options: $VTPGA_SSH_OPTS (default `-o BatchMode=yes -o ConnectTimeout=10`).
#
# State: ${VTPGA_CLUSTER_DIR:-.local/cluster}: `processes` (index, host, pid, start time
# per line), the hostfile, and locally process-I.log (stdout and stderr), pid-I, exit-I.
# A remembered PID counts as ours (status, wait, stop signal it) only while it runs
# `vtpga run --process` and has the start time remembered (field 22 of /proc/PID/stat):
# a PID reused by another process after ours exited is reported and never signalled.
# The local binary is $VTPGA_BIN (default target/release/vtpga).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${VTPGA_CLUSTER_DIR:-$here/.local/cluster}"
bin="${VTPGA_BIN:-$here/target/release/vtpga}"
remote_bin="${VTPGA_REMOTE_BIN:-vtpga}"
remote_dir="${VTPGA_REMOTE_DIR:-/tmp/vtpga-cluster}"
read -r -a ssh_opts <<<"${VTPGA_SSH_OPTS:--o BatchMode=yes -o ConnectTimeout=10}"

usage() {
    sed -n '7,10p' "${BASH_SOURCE[0]}" | sed 's/^# */usage: /' >&2
    exit 2
}

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

# Starts one process detached from this shell (it outlives the script) in directory $1 as
# index $2, running the command that follows; prints its PID and start time (`-` if it is
# already gone). Writes pid-I, exit-I (its exit status, once it ends) and process-I.log
# there. Run locally by bash, remotely by `ssh HOST bash -s`.
# shellcheck disable=SC2016 # expanded by the shell that runs it
launcher='
set -eu
dir=$1 i=$2
shift 2
mkdir -p "$dir"
cd "$dir"
rm -f "pid-$i" "exit-$i"
nohup bash -c '\''
    i=$1; shift
    "$@" >"process-$i.log" 2>&1 </dev/null &
    echo $! >"pid-$i.tmp" && mv "pid-$i.tmp" "pid-$i"
    status=0
    wait $! || status=$?
    echo "$status" >"exit-$i.tmp" && mv "exit-$i.tmp" "exit-$i"
'\'' launcher "$i" "$@" >/dev/null 2>&1 </dev/null &
for _ in $(seq 1 100); do
    [ -s "pid-$i" ] && break
    sleep 0.05
done
pid=$(cat "pid-$i")
stat=$(cat "/proc/$pid/stat" 2>/dev/null) || stat=
start=$(printf "%s" "${stat##*) }" | cut -d" " -f20)
echo "$pid ${start:--}"
'

is_local() {
    [ "$1" = local ]
}

# `ssh HOST` running the quoted words that follow; stdin is passed on.
on_host() {
    local host=$1
    shift
    local cmd
    printf -v cmd '%q ' "$@"
    # shellcheck disable=SC2029 # quoted here on purpose, run there
    ssh "${ssh_opts[@]}" "$host" "$cmd"
}

# Does PID $2 on host $1 still run our vtpga process? (Guards against reused PIDs: the
# same command and, when remembered as $3, the same start time.)
alive() {
    local host=$1 pid=$2 start=${3:-} args stat
    [[ "$pid" =~ ^[1-9][0-9]*$ ]] || return 1
    if is_local "$host"; then
        args="$(ps -o args= -p "$pid" 2>/dev/null)" || return 1
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    else
        # One round trip: the start-time line, then the command line.
        local out
        # shellcheck disable=SC2016 # expanded by the remote sh
        out="$(on_host "$host" sh -c 'cat "/proc/$1/stat" && ps -o args= -p "$1"' sh "$pid" 2>/dev/null)" ||
            return 1
        stat="${out%%$'\n'*}"
        args="${out#*$'\n'}"
    fi
    case "$args" in
    *vtpga*run*--process*) ;;
    *) return 1 ;;
    esac
    # `-`: the process was gone when it was remembered, so no process at this PID is ours.
    if [ -n "$start" ]; then
        local -a f
        read -r -a f <<<"${stat##*) }"
        [ "${f[19]:-}" = "$start" ] || return 1
    fi
}

# The exit status recorded for process $2 on host $1, or nothing while it runs.
exit_status() {
    local host=$1 i=$2
    if is_local "$host"; then
        cat "$dir/exit-$i" 2>/dev/null || true
    else
        on_host "$host" cat "$remote_dir/exit-$i" 2>/dev/null || true
    fi
}

log_path() {
    local host=$1 i=$2
    if is_local "$host"; then
        echo "$dir/process-$i.log"
    else
        echo "$host:$remote_dir/process-$i.log"
    fi
}

log_tail() {
    local host=$1 i=$2 n=${3:-20}
    if is_local "$host"; then
        tail -n "$n" "$dir/process-$i.log" 2>/dev/null || true
    else
        on_host "$host" tail -n "$n" "$remote_dir/process-$i.log" 2>/dev/null || true
    fi
}

# Each remembered process as `index host pid` lines.
remembered() {
    grep -v '^#' "$dir/processes"
}

need_state() {
    [ -s "$dir/processes" ] || die "no cluster started from $dir"
}

# The exit status of process $2 on host $1 (PID $3, start time $4): its recorded status, nothing while
# it runs, or `unknown` if it is gone without one (killed with its launcher). Its launcher
# records the status just after it exits: give it a moment.
settled_status() {
    local host=$1 i=$2 pid=$3 start=${4:-} code
    code="$(exit_status "$host" "$i")"
    if [ -n "$code" ] || alive "$host" "$pid" "$start"; then
        echo "$code"
        return
    fi
    for _ in $(seq 1 30); do
        sleep 0.1
        code="$(exit_status "$host" "$i")"
        if [ -n "$code" ]; then
            echo "$code"
            return
        fi
    done
    echo unknown
}

any_running() {
    local i host pid start
    [ -s "$dir/processes" ] || return 1
    while read -r i host pid start; do
        if alive "$host" "$pid" "$start"; then
            return 0
        fi
    done < <(grep -v '^#' "$dir/processes")
    return 1
}

start() {
    [ $# -ge 2 ] || usage
    local n=$1 w=$2 hosts_file="" base_port=""
    shift 2
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N (processes) must be a positive integer, not '$n'"
    [[ "$w" =~ ^[1-9][0-9]*$ ]] || die "W (workers) must be a positive integer, not '$w'"
    while [ $# -gt 0 ]; do
        case "$1" in
        --hosts) hosts_file=${2:?--hosts FILE}; shift 2 ;;
        --base-port) base_port=${2:?--base-port P}; shift 2 ;;
        --) shift; break ;;
        *) die "unknown option $1 (vtpga run arguments go after --)" ;;
        esac
    done
    local run_args=("$@")
    mkdir -p "$dir"
    if any_running; then
        die "a cluster from $dir is still running (scripts/cluster.sh status; stop)"
    fi
    rm -f "$dir"/pid-* "$dir"/exit-* "$dir"/process-*.log "$dir/hostfile" "$dir/processes"

    local -a targets=() addresses=()
    if [ -n "$hosts_file" ]; then
        [ -f "$hosts_file" ] || die "no host list $hosts_file"
        local target address
        while read -r target address _; do
            case "$target" in '' | '#'*) continue ;; esac
            targets+=("$target")
            addresses+=("${address:-${target#*@}}")
        done <"$hosts_file"
        [ ${#targets[@]} -gt 0 ] || die "$hosts_file lists no host"
        local port=${base_port:-${VTPGA_BASE_PORT:-24100}} i
        for ((i = 0; i < n; i++)); do
            echo "${addresses[i % ${#addresses[@]}]}:$((port + i))"
        done >"$dir/hostfile"
    else
        [ -x "$bin" ] || die "no vtpga binary at $bin (cargo build --release, or set VTPGA_BIN)"
        if [ -n "$base_port" ]; then
            export VTPGA_BASE_PORT=$base_port
        fi
    fi

    # Variables passed on to remote processes (local ones inherit the environment), as
    # `export` lines ahead of the launcher on ssh's standard input: never as arguments,
    # where `ps` on either host would show a password in VTPGA_POSTGRES or VTPGA_REDIS_URL.
    local env_script="" name
    while read -r name; do
        case "$name" in
        VTPGA_CLUSTER_DIR | VTPGA_BIN | VTPGA_REMOTE_* | VTPGA_SSH_OPTS | VTPGA_PROCESS | VTPGA_PROCESSES | VTPGA_HOSTFILE) ;;
        *) env_script+="$(printf 'export %s=%q' "$name" "${!name}")"$'\n' ;;
        esac
    done < <(compgen -e | grep -E '^(VTPGA_|RUST_LOG$)' || true)

    echo "# index host pid start (scripts/cluster.sh start $n $w)" >"$dir/processes"
    local i host pid start started
    for ((i = 0; i < n; i++)); do
        local cluster_args=(--workers "$w" --processes "$n" --process "$i")
        if [ -n "$hosts_file" ]; then
            host=${targets[i % ${#targets[@]}]}
            on_host "$host" mkdir -p "$remote_dir"
            on_host "$host" sh -c "cat > $(printf '%q' "$remote_dir/hostfile")" <"$dir/hostfile"
            local cmd
            printf -v cmd '%q ' bash -s -- "$remote_dir" "$i" \
                "$remote_bin" run "${cluster_args[@]}" --hostfile "$remote_dir/hostfile" "${run_args[@]}"
            # shellcheck disable=SC2029 # quoted here on purpose, run there
            started="$(ssh "${ssh_opts[@]}" "$host" "$cmd" <<<"$env_script$launcher")"
        else
            host=local
            started="$(bash -c "$launcher" launcher "$dir" "$i" \
                "$bin" run "${cluster_args[@]}" "${run_args[@]}")"
        fi
        read -r pid start <<<"$started"
        [[ "$pid" =~ ^[0-9]+$ ]] || die "process $i on $host did not start (got '$started')"
        echo "$i $host $pid ${start:--}" >>"$dir/processes"
        echo "process $i: $host pid $pid, log $(log_path "$host" "$i")"
    done

    # A process that fails at once (bad flag, unreachable service) fails the start.
    sleep "${VTPGA_CLUSTER_START_CHECK:-1}"
    local failed=0 code
    while read -r i host pid start; do
        code="$(settled_status "$host" "$i" "$pid" "$start")"
        if [ -n "$code" ] && [ "$code" != 0 ]; then
            echo "process $i on $host exited with status $code:" >&2
            log_tail "$host" "$i" >&2
            failed=1
        fi
    done < <(remembered)
    if [ "$failed" = 1 ]; then
        stop >&2
        return 1
    fi
    echo "cluster of $n process(es) x $w worker(s) started; state in $dir"
}

# Waits for every process to exit. Returns 0 if all exited with status 0; returns 1 as
# soon as one has failed (the others cannot finish without it: run `stop`), 124 on timeout.
wait_all() {
    local timeout=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --timeout) timeout=${2:?--timeout SECONDS}; shift 2 ;;
        *) die "unknown option $1" ;;
        esac
    done
    need_state
    local started=$SECONDS i host pid start code running
    while true; do
        running=0
        while read -r i host pid start; do
            code="$(settled_status "$host" "$i" "$pid" "$start")"
            if [ -z "$code" ]; then
                running=$((running + 1))
                continue
            fi
            if [ "$code" != 0 ]; then
                echo "process $i on $host failed (exit status $code); log $(log_path "$host" "$i"):" >&2
                log_tail "$host" "$i" >&2
                return 1
            fi
        done < <(remembered)
        if [ "$running" = 0 ]; then
            echo "all processes exited with status 0"
            return 0
        fi
        if [ -n "$timeout" ] && [ $((SECONDS - started)) -ge "$timeout" ]; then
            echo "timed out after ${timeout}s: $running process(es) still running" >&2
            return 124
        fi
        sleep 0.5
    done
}

signal() {
    local host=$1 sig=$2 pid=$3
    if is_local "$host"; then
        kill "-$sig" "$pid" 2>/dev/null || true
    else
        on_host "$host" kill "-$sig" "$pid" 2>/dev/null || true
    fi
}

stop() {
    if [ ! -s "$dir/processes" ]; then
        echo "no cluster started from $dir"
        return 0
    fi
    local i host pid start sig left
    # Remembered PIDs that are no longer our processes (exited; maybe reused): never signalled.
    while read -r i host pid start; do
        if ! alive "$host" "$pid" "$start" && [ -z "$(exit_status "$host" "$i")" ]; then
            echo "process $i: $host pid $pid is not the vtpga this script started (it has exited; the PID may belong to another process now): not signalled" >&2
        fi
    done < <(remembered)
    # SIGINT first: vtpga stops its source, finishes what is in flight and flushes.
    for sig in INT TERM KILL; do
        left=0
        while read -r i host pid start; do
            if alive "$host" "$pid" "$start"; then
                signal "$host" "$sig" "$pid"
                left=1
            fi
        done < <(remembered)
        [ "$left" = 0 ] && break
        for _ in $(seq 1 "${VTPGA_CLUSTER_STOP_WAIT:-100}"); do
            any_running || break
            sleep 0.1
        done
    done
    if any_running; then
        die "some processes survived SIGKILL"
    fi
    echo "cluster stopped"
}

status() {
    need_state
    local i host pid start code state all_done=1
    while read -r i host pid start; do
        code="$(settled_status "$host" "$i" "$pid" "$start")"
        case "$code" in
        "") state="running"; all_done=0 ;;
        unknown) state="gone (no exit status recorded)" ;;
        *) state="exited with status $code" ;;
        esac
        echo "process $i: $host pid $pid: $state; log $(log_path "$host" "$i")"
        log_tail "$host" "$i" 1 | sed 's/^/    /'
    done < <(remembered)
    if [ "$all_done" = 1 ]; then
        return 1
    fi
}

case "${1:-}" in
start) shift; start "$@" ;;
wait) shift; wait_all "$@" ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
