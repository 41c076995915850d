#!/usr/bin/env bash
# The secrets of docker-compose.yml: the PostgreSQL password, the Redis password and the
# dashboard's bearer token, one file each, random (24 bytes, hex), written once and never
# overwritten. `docker compose up` refuses to start without them (docs/running.md).
#
#   scripts/compose-secrets.sh          # writes the missing ones; prints the directory
#   scripts/compose-secrets.sh token    # prints the dashboard token (for the sign-in)
#
# Directory: $VTPGA_SECRETS_DIR (give an absolute path; compose reads the same variable),
# default .local/compose in the checkout (ignored by git and outside the Docker build
# context). The directory is mode 0700 (only you on this host); the files are 0644
# because the containers read them as their own users (postgres, redis, vtpga) through
# read-only bind mounts, which keep the host file's mode and owner.
#
# To use your own values instead, write them (one line each) to postgres_password,
# redis_password and web_token there. PostgreSQL takes its password when its data volume
# is created: after changing postgres_password, `docker compose down -v` (drops the data)
# or ALTER USER inside the database.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${VTPGA_SECRETS_DIR:-$here/.local/compose}"

generate() {
    od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
}

write_missing() {
    mkdir -p "$dir"
    chmod 700 "$dir"
    local name
    for name in postgres_password redis_password web_token; do
        if [ -d "$dir/$name" ]; then
            # A compose run before this script: Docker created an empty directory in its place.
            echo "$dir/$name is a directory (Docker makes one for a missing secret file): remove it (sudo rmdir) and run again" >&2
            exit 1
        fi
        if [ ! -s "$dir/$name" ]; then
            (umask 022 && generate >"$dir/$name.tmp" && mv "$dir/$name.tmp" "$dir/$name")
            echo "wrote $dir/$name" >&2
        fi
        chmod 644 "$dir/$name"
    done
    echo "secrets in $dir (the dashboard token: scripts/compose-secrets.sh token)"
}

case "${1:-}" in
"") write_missing ;;
token) cat "$dir/web_token"; echo ;;
*)
    sed -n '6,7p' "${BASH_SOURCE[0]}" | sed 's/^# */usage: /' >&2
    exit 2
    ;;
esac
