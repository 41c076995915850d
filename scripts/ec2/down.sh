#!/usr/bin/env bash
# Tears down what scripts/ec2/up.sh created, found by its tag vtpga:deployment=NAME:
# the instances, the RDS instance (no final snapshot), the security group and the
# binary's S3 bucket. Safe to run again; --dry-run prints every AWS call, calls none.
#
#   scripts/ec2/down.sh [--dry-run] [--name vtpga] [--region us-east-1]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --name) NAME=${2:?}; shift 2 ;;
    --region) REGION=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1" ;;
    esac
done
valid_name
need_aws
[ "$DRY_RUN" = 1 ] && echo "# dry run: the AWS calls of scripts/ec2/down.sh --name $NAME (region $REGION)"

# `--output text` lists are tab-separated, and "None" when empty.
words() {
    local w
    for w in $1; do
        [ "$w" = None ] || echo "$w"
    done
}

log "instances tagged $TAG_KEY=$NAME"
mapfile -t instances < <(words "$(DRY="i-0dryrunbroker i-0dryrunpipeline i-0dryrungenerator i-0dryrundashboard" \
    aws ec2 describe-instances \
    --filters "Name=tag:$TAG_KEY,Values=$NAME" \
    "Name=instance-state-name,Values=pending,running,stopping,stopped,shutting-down" \
    --query 'Reservations[].Instances[].InstanceId' --output text)")
if [ ${#instances[@]} -gt 0 ]; then
    aws ec2 terminate-instances --instance-ids "${instances[@]}" >/dev/null
fi

log "RDS instances tagged $TAG_KEY=$NAME"
mapfile -t dbs < <(words "$(DRY="$NAME-pg" aws rds describe-db-instances \
    --query "DBInstances[?TagList[?Key=='$TAG_KEY' && Value=='$NAME']].DBInstanceIdentifier" \
    --output text)")
for db in "${dbs[@]}"; do
    aws rds delete-db-instance --db-instance-identifier "$db" \
        --skip-final-snapshot --delete-automated-backups >/dev/null || true
done

if [ ${#instances[@]} -gt 0 ]; then
    log "waiting for the instances to terminate"
    aws ec2 wait instance-terminated --instance-ids "${instances[@]}"
fi
for db in "${dbs[@]}"; do
    log "waiting for RDS $db to be deleted (several minutes)"
    aws rds wait db-instance-deleted --db-instance-identifier "$db"
done

log "security groups tagged $TAG_KEY=$NAME"
mapfile -t groups < <(words "$(DRY=sg-0dryrun0000000000 aws ec2 describe-security-groups \
    --filters "Name=tag:$TAG_KEY,Values=$NAME" --query 'SecurityGroups[].GroupId' --output text)")
for sg in "${groups[@]}"; do
    # Network interfaces of deleted instances and databases are released a little later.
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if aws ec2 delete-security-group --group-id "$sg"; then
            break
        fi
        [ "$attempt" = 10 ] && die "could not delete security group $sg"
        sleep 15
    done
done

log "S3 buckets of $NAME tagged $TAG_KEY=$NAME"
mapfile -t buckets < <(words "$(DRY="$NAME-vtpga-123456789012-$REGION" aws s3api list-buckets \
    --query "Buckets[?starts_with(Name, '$NAME-vtpga-')].Name" --output text)")
for bucket in "${buckets[@]}"; do
    tag="$(DRY="$NAME" aws s3api get-bucket-tagging --bucket "$bucket" \
        --query "TagSet[?Key=='$TAG_KEY'].Value | [0]" --output text 2>/dev/null || true)"
    if [ "$tag" = "$NAME" ]; then
        aws s3 rb --force "s3://$bucket" >/dev/null
    fi
done

if [ "$DRY_RUN" = 0 ]; then
    rm -rf "${STATE_DIR:?}/$NAME" "$STATE_DIR/$NAME.env"
fi
echo "VT.PGA $NAME: torn down"
