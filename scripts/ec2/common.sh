#!/usr/bin/env bash
# Shared by scripts/ec2/up.sh and down.sh (sourced): options, the `aws` wrapper of
# --dry-run, tags, names. Not meant to be run by itself.
#
# Every AWS call goes through `aws()`. With --dry-run it prints the call (on the
# script's standard output, also from inside $(...)) and answers with a placeholder
# instead of calling AWS: no credentials and no aws CLI are needed.

# shellcheck disable=SC2034 # variables used by the scripts that source this file

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

DRY_RUN=0
NAME="${VTPGA_EC2_NAME:-vtpga}"
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
STATE_DIR="${VTPGA_EC2_DIR:-$repo/.local/ec2}"
TAG_KEY="vtpga:deployment"

# The script's real standard output, for the dry-run printout from inside $(...).
exec 3>&1

log() {
    echo "==> $*" >&2
}

die() {
    echo "error: $*" >&2
    exit 1
}

# A word as a shell would need it typed: bare if safe, else in single quotes.
shell_word() {
    if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# `aws ARGS...`: the AWS CLI, with --region. With --dry-run it prints the call instead
# and answers with $DRY (the placeholder of the ID or address the call would return).
aws() {
    if [ "$DRY_RUN" = 1 ]; then
        local line="aws --region $REGION" word
        for word in "$@"; do
            line+=" $(shell_word "$word")"
        done
        echo "$line" >&3
        if [ -n "${DRY:-}" ]; then
            echo "$DRY"
        fi
        return 0
    fi
    command aws --region "$REGION" "$@"
}

need_aws() {
    if [ "$DRY_RUN" = 0 ] && ! command -v aws >/dev/null 2>&1; then
        die "the AWS CLI is not installed (https://aws.amazon.com/cli/), or use --dry-run"
    fi
}

# Tags of every resource of this deployment, in the two syntaxes the CLI uses.
tags_spec() { # RESOURCE_TYPE ROLE
    echo "ResourceType=$1,Tags=[{Key=$TAG_KEY,Value=$NAME},{Key=vtpga:role,Value=$2},{Key=Name,Value=$NAME-$2}]"
}

valid_name() {
    [[ "$NAME" =~ ^[a-z][a-z0-9-]{0,30}$ ]] ||
        die "--name must be lower-case letters, digits and dashes (at most 31), starting with a letter"
}

# Ingress from a CIDR: refuses the whole Internet.
check_cidr() {
    case "$1" in
    0.0.0.0/0 | ::/0 | "") die "refusing to open the security group to '$1'" ;;
    esac
    [[ "$1" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/(3[0-2]|[12][0-9]|[89])$ ]] ||
        [ "$DRY_RUN" = 1 ] ||
        die "not an IPv4 CIDR of at least /8: '$1'"
}
