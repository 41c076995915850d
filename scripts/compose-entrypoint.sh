#!/usr/bin/env bash
# Entrypoint of the `vtpga` services of docker-compose.yml (mounted read-only at
# /opt/vtpga/compose-entrypoint.sh): puts the secrets compose mounts under /run/secrets
# into vtpga's environment — never on a command line, where `ps` on the Docker host would
# show them — then runs `vtpga ARGS...`.
#
#   VTPGA_NEEDS="postgres redis web_token"   # what this service needs; it refuses to start
#                                            # when one of them is missing or empty
#
#   postgres   secret postgres_password -> VTPGA_POSTGRES=postgres://USER:PASSWORD@HOST/DB
#              (POSTGRES_USER, POSTGRES_HOST (default postgres:5432), POSTGRES_DB)
#   redis      secret redis_password    -> VTPGA_REDIS_URL=redis://:PASSWORD@REDIS_HOST/
#              (REDIS_HOST, default redis:6379)
#   web_token  secret web_token         -> VTPGA_WEB_TOKEN
#
# Passwords are percent-encoded in the URLs. `scripts/compose-secrets.sh` writes the three
# secret files. $VTPGA_SECRETS (default /run/secrets) is where they are read.
#
# `vtpga produce` without a --seed gets --seed=PRODUCER_SEED, or when that is empty a
# seed derived from the clock at start (nanoseconds since the epoch): a restarted
# producer sends new transaction ids instead of repeating its earlier ones (which the
# pipeline would decide `duplicate`). A fixed PRODUCER_SEED repeats them on every start.
set -euo pipefail

secrets="${VTPGA_SECRETS:-/run/secrets}"

refuse() {
    echo "compose-entrypoint: $*; not starting (see docs/running.md, Docker Compose)" >&2
    exit 78 # EX_CONFIG
}

# The content of secret $1 (one line; a trailing newline is dropped), or a refusal.
secret() {
    local file="$secrets/$1" value
    # Compose (v1, and v2 on some hosts) mounts a missing secret file as an empty directory.
    [ -f "$file" ] || refuse "secret $1 is missing ($file is not a file: run scripts/compose-secrets.sh)"
    [ -r "$file" ] || refuse "secret $1 is not readable by uid $(id -u) (give the file mode 0644)"
    value="$(head -n 1 "$file" | tr -d '\r')"
    [ -n "$value" ] || refuse "secret $1 is empty ($file)"
    printf '%s' "$value"
}

# Percent-encodes $1 for the user-information part of a URL (bytes, not characters).
urlencode() {
    local LC_ALL=C s=$1 out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case "$c" in
        [A-Za-z0-9._~-]) out+=$c ;;
        *) printf -v c '%%%02X' "'$c"; out+=$c ;;
        esac
    done
    printf '%s' "$out"
}

for need in ${VTPGA_NEEDS:-}; do
    case "$need" in
    postgres)
        password="$(secret postgres_password)"
        VTPGA_POSTGRES="postgres://$(urlencode "${POSTGRES_USER:-vtpga}"):$(urlencode "$password")@${POSTGRES_HOST:-postgres:5432}/$(urlencode "${POSTGRES_DB:-vtpga}")"
        export VTPGA_POSTGRES
        ;;
    redis)
        password="$(secret redis_password)"
        VTPGA_REDIS_URL="redis://:$(urlencode "$password")@${REDIS_HOST:-redis:6379}/"
        export VTPGA_REDIS_URL
        ;;
    web_token)
        VTPGA_WEB_TOKEN="$(secret web_token)"
        export VTPGA_WEB_TOKEN
        ;;
    *) refuse "unknown need '$need' in VTPGA_NEEDS" ;;
    esac
done
unset password

args=("$@")
if [ "${args[0]:-}" = produce ]; then
    seeded=0
    for arg in "${args[@]}"; do
        case "$arg" in --seed | --seed=*) seeded=1 ;; esac
    done
    if [ "$seeded" = 0 ]; then
        seed="${PRODUCER_SEED:-}"
        if [ -z "$seed" ]; then
            seed="$(date +%s%N)"
            echo "compose-entrypoint: producer seed $seed (from the clock: new ids after each restart; PRODUCER_SEED fixes it)" >&2
        else
            echo "compose-entrypoint: producer seed $seed (PRODUCER_SEED: a restart repeats the same ids, decided duplicate)" >&2
        fi
        [[ "$seed" =~ ^[0-9]+$ ]] || refuse "PRODUCER_SEED must be a non-negative integer, not '$seed'"
        args+=("--seed=$seed")
    fi
fi

exec "${VTPGA_BINARY:-vtpga}" "${args[@]}"
