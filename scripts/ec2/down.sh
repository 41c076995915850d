#!/usr/bin/env bash
# Tears down what scripts/ec2/up.sh created, found by its tag vtpga:deployment=NAME:
# the instances, the RDS instance and its parameter group, the security groups and the
# binary's S3 bucket. Safe to run again; --dry-run prints every AWS call, calls none.
# The database's automated backups are deleted with it, and no final snapshot is taken,
# unless --keep-backups: then a final snapshot NAME-pg-final-DATE is taken and the
# automated backups are kept until their retention ends (delete them in the RDS console).
#
#   scripts/ec2/down.sh [--dry-run] [--name vtpga] [--region us-east-1] [--keep-backups]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

keep_backups=0

while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --name) NAME=${2:?}; shift 2 ;;
    --region) REGION=${2:?}; shift 2 ;;
    --keep-backups) keep_backups=1; shift ;;
    -h | --help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
    if [ "$keep_backups" = 1 ]; then
        aws rds delete-db-instance --db-instance-identifier "$db" \
            --final-db-snapshot-identifier "$db-final-$(date -u +%Y%m%d-%H%M%S)" \
            --no-delete-automated-backups >/dev/null || true
    else
        aws rds delete-db-instance --db-instance-identifier "$db" \
            --skip-final-snapshot --delete-automated-backups >/dev/null || true
    fi
done

if [ ${#instances[@]} -gt 0 ]; then
    log "waiting for the instances to terminate"
    aws ec2 wait instance-terminated --instance-ids "${instances[@]}"
fi
for db in "${dbs[@]}"; do
    log "waiting for RDS $db to be deleted (several minutes)"
    aws rds wait db-instance-deleted --db-instance-identifier "$db"
done

# The database's parameter group, once no database uses it (checked by its tag).
params="$NAME-pg-params"
params_arn="$(DRY="arn:aws:rds:$REGION:123456789012:pg:$params" aws rds describe-db-parameter-groups \
    --db-parameter-group-name "$params" --query 'DBParameterGroups[0].DBParameterGroupArn' \
    --output text 2>/dev/null || true)"
if [ -n "$params_arn" ] && [ "$params_arn" != None ]; then
    tag="$(DRY="$NAME" aws rds list-tags-for-resource --resource-name "$params_arn" \
        --query "TagList[?Key=='$TAG_KEY'].Value | [0]" --output text 2>/dev/null || true)"
    if [ "$tag" = "$NAME" ]; then
        log "RDS parameter group $params"
        aws rds delete-db-parameter-group --db-parameter-group-name "$params" || true
    fi
fi

log "security groups tagged $TAG_KEY=$NAME"
mapfile -t groups < <(words "$(DRY="sg-0dryrunbroker sg-0dryrunpipeline sg-0dryrungenerator sg-0dryrundashboard sg-0dryrundb" \
    aws ec2 describe-security-groups \
    --filters "Name=tag:$TAG_KEY,Values=$NAME" --query 'SecurityGroups[].GroupId' --output text)")
# The groups refer to each other (a port admitted from another group), and a group that
# another's rule names cannot be deleted; network interfaces of deleted instances and
# databases are also released a little later. So: rounds, each deleting what it can.
for attempt in 1 2 3 4 5 6 7 8 9 10 11 12; do
    left=()
    for sg in "${groups[@]}"; do
        aws ec2 delete-security-group --group-id "$sg" 2>/dev/null || left+=("$sg")
    done
    groups=("${left[@]}")
    [ ${#groups[@]} = 0 ] && break
    [ "$attempt" = 12 ] && die "could not delete security group(s) ${groups[*]}"
    sleep 15
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
