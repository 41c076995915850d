#!/usr/bin/env bash
# Tests scripts/compose-entrypoint.sh (the vtpga services' entrypoint in
# docker-compose.yml) without Docker: a service refuses to start without the secrets it
# needs; secrets reach vtpga through its environment, percent-encoded in URLs, and never
# as arguments; the producer gets a new --seed at each start unless PRODUCER_SEED is set.
# Also scripts/compose-secrets.sh: writes the three files once, directory 0700, files 0644.
#
#   scripts/compose-entrypoint-test.sh   # prints `ok: ...` per check; exit status 1 on a failure
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
entry="$here/scripts/compose-entrypoint.sh"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# shellcheck source-path=SCRIPTDIR source=check-lib.sh
. "$here/scripts/check-lib.sh"

# A stand-in for vtpga: prints its arguments and the variables the entrypoint sets.
cat >"$tmp/fake-vtpga" <<'FAKE'
#!/usr/bin/env bash
printf 'arg=%s\n' "$@"
printf 'VTPGA_POSTGRES=%s\nVTPGA_REDIS_URL=%s\nVTPGA_WEB_TOKEN=%s\n' \
    "${VTPGA_POSTGRES:-}" "${VTPGA_REDIS_URL:-}" "${VTPGA_WEB_TOKEN:-}"
FAKE
chmod +x "$tmp/fake-vtpga"

run() { # SECRETS_DIR NEEDS ARGS... (output in $out, status in $status)
    local secrets=$1 needs=$2
    shift 2
    status=0
    out="$(env -u PRODUCER_SEED VTPGA_SECRETS="$secrets" VTPGA_NEEDS="$needs" \
        VTPGA_BINARY="$tmp/fake-vtpga" bash "$entry" "$@" 2>&1)" || status=$?
}

# --- compose-secrets.sh ---------------------------------------------------------------
secrets="$tmp/secrets"
VTPGA_SECRETS_DIR="$secrets" "$here/scripts/compose-secrets.sh" >/dev/null 2>&1
check "compose-secrets.sh: three secrets" test -s "$secrets/postgres_password" -a -s "$secrets/redis_password" -a -s "$secrets/web_token"
check "compose-secrets.sh: directory 0700" test "$(stat -c %a "$secrets")" = 700
check "compose-secrets.sh: files 0644 (read by the containers' users)" test "$(stat -c %a "$secrets/web_token")" = 644
token="$(cat "$secrets/web_token")"
VTPGA_SECRETS_DIR="$secrets" "$here/scripts/compose-secrets.sh" >/dev/null 2>&1
check "compose-secrets.sh: never overwrites" test "$(cat "$secrets/web_token")" = "$token"
check "compose-secrets.sh token: prints it" test "$(VTPGA_SECRETS_DIR="$secrets" "$here/scripts/compose-secrets.sh" token)" = "$token"

# --- refusals -------------------------------------------------------------------------
run "$tmp/none" "postgres" seed
check "no postgres secret: refuses (status 78)" test "$status" = 78
check "no postgres secret: says which" grep -q "secret postgres_password is missing" <<<"$out"
check "no postgres secret: vtpga not run" not grep -q "^arg=" <<<"$out"
mkdir -p "$tmp/dir-instead/web_token" # what Docker mounts for a missing secret file
cp "$secrets/postgres_password" "$secrets/redis_password" "$tmp/dir-instead/"
run "$tmp/dir-instead" "postgres redis web_token" web
check "token mounted as a directory: refuses" test "$status" = 78
mkdir -p "$tmp/empty"
: >"$tmp/empty/web_token"
run "$tmp/empty" "web_token" web
check "empty token: refuses" test "$status" = 78
run "$secrets" "postgres sql" web
check "unknown need: refuses" test "$status" = 78

# --- secrets into the environment -----------------------------------------------------
mkdir -p "$tmp/odd"
printf 'p@ss:w/rd%%é\n' >"$tmp/odd/postgres_password"
printf 'r"e d\n' >"$tmp/odd/redis_password"
printf 'tok en\n' >"$tmp/odd/web_token"
run "$tmp/odd" "postgres redis web_token" web --listen=0.0.0.0:8080
check "all secrets: runs vtpga" test "$status" = 0
check "postgres URL, password percent-encoded" grep -qxF 'VTPGA_POSTGRES=postgres://vtpga:p%40ss%3Aw%2Frd%25%C3%A9@postgres:5432/vtpga' <<<"$out"
check "redis URL, password percent-encoded" grep -qxF 'VTPGA_REDIS_URL=redis://:r%22e%20d@redis:6379/' <<<"$out"
check "token as is" grep -qxF 'VTPGA_WEB_TOKEN=tok en' <<<"$out"
args_only="$(grep "^arg=" <<<"$out" || true)"
check "no secret among the arguments" not grep -q -e 'p@ss' -e 'tok en' -e 'r"e' <<<"$args_only"
check "arguments passed on" grep -qxF 'arg=--listen=0.0.0.0:8080' <<<"$out"

# --- the producer's seed --------------------------------------------------------------
run "$secrets" "" produce --rate=10
first="$(sed -n 's/^arg=--seed=//p' <<<"$out")"
run "$secrets" "" produce --rate=10
second="$(sed -n 's/^arg=--seed=//p' <<<"$out")"
check "producer: a seed is added ($first)" test -n "$first"
check "producer: another seed after a restart ($second)" test -n "$second" -a "$first" != "$second"
out="$(PRODUCER_SEED=7 VTPGA_BINARY="$tmp/fake-vtpga" bash "$entry" produce 2>&1)"
check "producer: PRODUCER_SEED fixes it" grep -qxF 'arg=--seed=7' <<<"$out"
out="$(PRODUCER_SEED=7 VTPGA_BINARY="$tmp/fake-vtpga" bash "$entry" produce --seed=3 2>&1)"
check "producer: an explicit --seed wins" test "$(grep -c '^arg=--seed' <<<"$out")" = 1
run "$secrets" "" seed --seed=42
check "other commands: no seed added" test "$(grep -c '^arg=--seed' <<<"$out")" = 1

checks_done "compose entrypoint"
