#!/usr/bin/env bash
# PID files that are checked before a signal: sourced by scripts/redis.sh, kafka.sh and
# pg.sh (not meant to be run by itself). A PID read from a file may belong to another
# process by now (ours exited, the PID was reused): a script that signals it only if it
# is still the very process it started kills nothing else.
#
#   pid_remember FILE PID PROGRAM   # FILE holds PID; FILE.owner its start time and program
#   pid_ours FILE PROGRAM           # is the PID of FILE alive and still that process?
#   pid_stop FILE PROGRAM WHAT      # SIGTERM (then SIGKILL) if ours, else only says so;
#                                   # removes FILE and FILE.owner either way
#   service_main "$@"               # the `start [PORT]|stop|status` command line of a
#                                   # service script that defines start, stop and status
#
# "Still that process": /proc/PID/exe is PROGRAM (resolved when remembered, so a symlink
# such as Debian's redis-server -> redis-check-rdb compares right) and its start time
# (field 22 of /proc/PID/stat, clock ticks after boot) is the one remembered. A PID file
# without an owner file (written by an older script) is checked by program only.
# Linux only (/proc). Between the check and the signal there is still a window of a few
# microseconds in which the PID could be reused; closing it would need pidfd_send_signal.

# The start time of PID (clock ticks after boot), or a failure if there is no such process.
pid_start_time() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # Field 2 (comm) is in parentheses and may hold spaces: fields resume after the last ") ".
    rest="${stat##*) }"
    local -a f
    read -r -a f <<<"$rest"
    [ -n "${f[19]:-}" ] || return 1
    echo "${f[19]}"
}

# The executable PID runs (resolved path; " (deleted)" dropped after an upgrade), or a
# failure (no such process, or not ours to inspect).
pid_exe() {
    local exe
    exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
    echo "${exe% (deleted)}"
}

# The resolved path of PROGRAM (a name on PATH or a path).
pid_program_path() {
    readlink -f "$(command -v "$1" 2>/dev/null || echo "$1")"
}

pid_remember() { # FILE PID PROGRAM
    local file=$1 pid=$2 start
    start="$(pid_start_time "$pid")" || start=-
    echo "$pid" >"$file"
    echo "$start $(pid_program_path "$3")" >"$file.owner"
}

pid_ours() { # FILE PROGRAM
    local file=$1 pid start="" program="" now exe
    [ -f "$file" ] || return 1
    pid="$(head -n 1 "$file" 2>/dev/null)"
    [[ "$pid" =~ ^[1-9][0-9]*$ ]] || return 1
    if [ -f "$file.owner" ]; then
        read -r start program <"$file.owner" || return 1
    fi
    [ -n "$program" ] || program="$(pid_program_path "$2")"
    now="$(pid_start_time "$pid")" || return 1
    if [ -n "$start" ] && [ "$now" != "$start" ]; then
        return 1
    fi
    exe="$(pid_exe "$pid")" || return 1
    [ "$exe" = "$program" ]
}

pid_forget_stale() { # FILE WHAT
    local file=$1 what=$2 pid
    pid="$(head -n 1 "$file" 2>/dev/null || true)"
    echo "$file names pid ${pid:-?}, which is not the $what this script started (it has exited; the PID may belong to another process now): removed the stale PID file, killed nothing" >&2
    rm -f "$file" "$file.owner"
}

# Stops the process of FILE (ours: checked): SIGTERM, up to 5 s, then SIGKILL if it is
# still ours. Removes FILE. Returns 1 (and kills nothing) if FILE is stale.
pid_stop() { # FILE PROGRAM WHAT
    local file=$1 program=$2 what=$3 pid
    if ! pid_ours "$file" "$program"; then
        pid_forget_stale "$file" "$what"
        return 1
    fi
    pid="$(head -n 1 "$file")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        pid_ours "$file" "$program" || break
        sleep 0.1
    done
    if pid_ours "$file" "$program"; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file" "$file.owner"
}

# The command line of a service script (scripts/pg.sh, redis.sh): its own start, stop and
# status functions.
service_main() {
    case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start [PORT]|stop|status" >&2
        exit 2
        ;;
    esac
}
