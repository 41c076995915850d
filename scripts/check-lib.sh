# shellcheck shell=bash
# Sourced by the scripts' own tests (scripts/*-test.sh): named checks, counted failures.
#
#   check "what is checked" COMMAND...   # ok: / FAIL: line; a failure is counted
#   not COMMAND...                       # succeeds when COMMAND fails
#   checks_done "what"                   # exit 1 if any check failed, else say all passed
failures=0
ok() { echo "ok: $*"; }
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
check() { # DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
not() { ! "$@"; }
checks_done() {
    if [ "$failures" -gt 0 ]; then
        echo "$failures check(s) failed" >&2
        exit 1
    fi
    echo "all $1 checks passed"
}
