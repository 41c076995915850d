# shellcheck shell=bash disable=SC2034  # $work and $bin are for the sourcing script
# Sourced by scripts/loadtest.sh and scripts/drainbench.sh (from the checkout's root).
#
# bench_env NAME: a private work directory /tmp/vtpga-NAME.XXXXXX in $work, where
# scripts/kafka.sh, pg.sh and redis.sh keep their state, and the binary to run in $bin:
# $VTPGA_BIN when set (A/B comparisons), else this checkout's release build.
# bench_cleanup: stops whichever of the three services runs there (by PID, checked) and
# removes the directory.
bench_env() {
    work="$(mktemp -d "/tmp/vtpga-$1.XXXXXX")"
    chmod 755 "$work" # PostgreSQL runs as its own user (scripts/pg.sh)
    export VTPGA_KAFKA_DIR="$work/kafka" VTPGA_PG_DIR="$work/pg" VTPGA_REDIS_DIR="$work/redis"
    if [ -n "${VTPGA_BIN:-}" ]; then
        bin="$VTPGA_BIN"
    else
        cargo build --release --quiet
        bin=target/release/vtpga
    fi
}

bench_cleanup() {
    scripts/kafka.sh stop >/dev/null 2>&1 || true
    [ -d "$VTPGA_PG_DIR" ] && { scripts/pg.sh stop >/dev/null 2>&1 || true; }
    [ -d "$VTPGA_REDIS_DIR" ] && { scripts/redis.sh stop >/dev/null 2>&1 || true; }
    rm -rf "$work"
}
