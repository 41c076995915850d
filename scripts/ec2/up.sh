#!/usr/bin/env bash
# Brings VT.PGA up on AWS with the AWS CLI: a security group per role, an RDS PostgreSQL
# (encrypted, backed up, TLS required), and four EC2 instances by role, each configured by
# environment variables in its cloud-init user data (scripts/ec2/user-data/):
#
#   broker     Apache Kafka, KRaft single node; creates the topics (CreateTime, clock guard)
#   pipeline   Redis (password) + `vtpga seed` + `vtpga run --source kafka` (PostgreSQL, Redis)
#   generator  `vtpga produce` at --rate messages per second (a new seed at each start)
#   dashboard  `vtpga web` on --web-port with a bearer token (the only service for a browser)
#
# Security groups (none admits 0.0.0.0/0): each service port admits only the groups of the
# roles that use it — Kafka 9092 from pipeline and generator, Redis 6379 from dashboard,
# PostgreSQL 5432 from pipeline and dashboard, the timely cluster ports (no authentication:
# docs/running.md) from the pipeline group itself — and SSH and the dashboard port admit
# the operator's IP (--my-ip, else detected with checkip.amazonaws.com). Everything is
# tagged vtpga:deployment=NAME; scripts/ec2/down.sh --name NAME removes it all.
#
#   scripts/ec2/up.sh --dry-run                      # prints every AWS call, calls none
#   scripts/ec2/up.sh [--name vtpga] [--region us-east-1] [--my-ip 198.51.100.7]
#                     [--key-name KEYPAIR] [--rate 1000] [--workers 2] [--partitions 4]
#                     [--allow-db-plaintext]
#
# RDS has storage encryption, automated backups (VTPGA_EC2_DB_BACKUP_DAYS, default 7) and
# a parameter group with rds.force_ssl=1; the URL the instances get asks for TLS
# (sslmode=require), verified against the RDS CA bundle the instances fetch
# (VTPGA_POSTGRES_CA). --allow-db-plaintext (rds.force_ssl=0, no sslmode) is for tests
# only. Passwords and the token never appear on a
# command line (RDS's through --cli-input-json from a mode-600 file; on the instances they
# are in environment files, root:vtpga 0640, that systemd loads, and in the user data).
#
# The `vtpga` binary is this checkout's target/release/vtpga (cargo build --release on
# Debian 12, like the AMI), uploaded to a private S3 bucket of the deployment and fetched
# by the instances through a presigned URL (no IAM role); or --binary-url URL
# [--binary-sha256 HEX]. Instances run Debian 12 (the AMI of SSM parameter
# /aws/service/debian/release/12/latest/amd64, or --ami). Needs the AWS CLI and
# credentials (not with --dry-run), and a default VPC in the region.
# Local state (IDs, the generated database and Redis passwords, the dashboard token):
# .local/ec2/NAME.env (mode 600).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    sed -n '2,38p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

my_ip=""
key_name=""
ami=""
binary="$repo/target/release/vtpga"
binary_url=""
binary_sha256=""
rate="${VTPGA_EC2_RATE:-1000}"
workers="${VTPGA_EC2_WORKERS:-2}"
partitions="${VTPGA_EC2_PARTITIONS:-4}"
users="${VTPGA_EC2_USERS:-10000}"
web_port="${VTPGA_EC2_WEB_PORT:-8080}"
kafka_version="${VTPGA_EC2_KAFKA_VERSION:-3.9.1}"
pg_version="${VTPGA_EC2_PG_VERSION:-15}"
db_class="${VTPGA_EC2_DB_CLASS:-db.t3.micro}"
type_broker="${VTPGA_EC2_TYPE_BROKER:-t3.medium}"
type_pipeline="${VTPGA_EC2_TYPE_PIPELINE:-c6i.xlarge}"
type_generator="${VTPGA_EC2_TYPE_GENERATOR:-t3.small}"
type_dashboard="${VTPGA_EC2_TYPE_DASHBOARD:-t3.small}"
db_backup_days="${VTPGA_EC2_DB_BACKUP_DAYS:-7}"
# The timely cluster's ports (vtpga's --base-port 24100 and up, one per process).
cluster_ports="${VTPGA_EC2_CLUSTER_PORTS:-24100-24163}"
max_clock_skew_ms="${VTPGA_EC2_MAX_CLOCK_SKEW_MS:-60000}"
db_plaintext=0

while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --name) NAME=${2:?}; shift 2 ;;
    --region) REGION=${2:?}; shift 2 ;;
    --my-ip) my_ip=${2:?}; shift 2 ;;
    --key-name) key_name=${2:?}; shift 2 ;;
    --ami) ami=${2:?}; shift 2 ;;
    --binary) binary=${2:?}; shift 2 ;;
    --binary-url) binary_url=${2:?}; shift 2 ;;
    --binary-sha256) binary_sha256=${2:?}; shift 2 ;;
    --rate) rate=${2:?}; shift 2 ;;
    --workers) workers=${2:?}; shift 2 ;;
    --partitions) partitions=${2:?}; shift 2 ;;
    --users) users=${2:?}; shift 2 ;;
    --web-port) web_port=${2:?}; shift 2 ;;
    --allow-db-plaintext) db_plaintext=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage ;;
    esac
done
valid_name
need_aws
if ! [[ "$db_backup_days" =~ ^[0-9]+$ ]] || [ "$db_backup_days" -lt 1 ] || [ "$db_backup_days" -gt 35 ]; then
    die "VTPGA_EC2_DB_BACKUP_DAYS must be 1..35 (RDS automated backups), not '$db_backup_days'"
fi
[[ "$cluster_ports" =~ ^([0-9]+)-([0-9]+)$ ]] || die "VTPGA_EC2_CLUSTER_PORTS must be FROM-TO"

# The operator's address: the only one outside the group let in.
if [ -z "$my_ip" ]; then
    if [ "$DRY_RUN" = 1 ]; then
        my_ip="203.0.113.10" # a documentation address (RFC 5737): dry runs make no request
    else
        my_ip="$(curl -fsS --max-time 10 https://checkip.amazonaws.com | tr -d '[:space:]')" ||
            die "could not detect your IP address: give --my-ip"
    fi
fi
case "$my_ip" in */*) ;; *) my_ip="$my_ip/32" ;; esac
check_cidr "$my_ip"

if [ "$DRY_RUN" = 1 ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "# dry run: the AWS calls of scripts/ec2/up.sh --name $NAME (region $REGION)"
else
    work="$STATE_DIR/$NAME"
    mkdir -p "$work"
    chmod 700 "$STATE_DIR" "$work"
fi
state="$work.env"
[ "$DRY_RUN" = 1 ] && state="$work/state.env"

remember() { # KEY VALUE
    if [ "$DRY_RUN" = 0 ]; then
        printf '%s=%q\n' "$1" "$2" >>"$state"
        chmod 600 "$state"
    fi
}

# --- network --------------------------------------------------------------------------
log "default VPC"
vpc_id="$(DRY=vpc-0dryrun0000000000 aws ec2 describe-vpcs --filters Name=isDefault,Values=true \
    --query 'Vpcs[0].VpcId' --output text)"
if [ -z "$vpc_id" ] || [ "$vpc_id" = None ]; then
    die "no default VPC in $REGION"
fi

# One group per role; a rule admits a port from the groups of the roles that use it.
new_group() { # ROLE DESCRIPTION
    DRY="sg-0dryrun$1" aws ec2 create-security-group --group-name "$NAME-$1" \
        --description "VT.PGA $NAME $1: $2" --vpc-id "$vpc_id" \
        --tag-specifications "$(tags_spec security-group "$1")" --query GroupId --output text
}
allow_group() { # GROUP FROM-TO SOURCE_GROUP DESCRIPTION
    aws ec2 authorize-security-group-ingress --group-id "$1" \
        --ip-permissions "IpProtocol=tcp,FromPort=${2%-*},ToPort=${2#*-},UserIdGroupPairs=[{GroupId=$3,Description=$4}]" >/dev/null
}
allow_operator() { # GROUP PORT
    aws ec2 authorize-security-group-ingress --group-id "$1" \
        --ip-permissions "IpProtocol=tcp,FromPort=$2,ToPort=$2,IpRanges=[{CidrIp=$my_ip,Description=operator}]" >/dev/null
}

log "security groups $NAME-{broker,pipeline,generator,dashboard,db} (by role; operator $my_ip)"
sg_broker="$(new_group broker "Kafka from pipeline and generator")"
remember SG_BROKER "$sg_broker"
sg_pipeline="$(new_group pipeline "Redis from dashboard, timely cluster ports between pipelines")"
remember SG_PIPELINE "$sg_pipeline"
sg_generator="$(new_group generator "SSH from the operator only")"
remember SG_GENERATOR "$sg_generator"
sg_dashboard="$(new_group dashboard "the dashboard from the operator")"
remember SG_DASHBOARD "$sg_dashboard"
sg_db="$(new_group db "PostgreSQL from pipeline and dashboard")"
remember SG_DB "$sg_db"
# Kafka (PLAINTEXT, no authentication): its clients only. The KRaft controller port 9093
# is used by the broker itself and admitted from nowhere.
allow_group "$sg_broker" 9092-9092 "$sg_pipeline" pipeline
allow_group "$sg_broker" 9092-9092 "$sg_generator" generator
# Redis (requirepass): the dashboard reads the pipeline's cache.
allow_group "$sg_pipeline" 6379-6379 "$sg_dashboard" dashboard
# Timely's cluster connections have no authentication: only other pipeline instances.
allow_group "$sg_pipeline" "$cluster_ports" "$sg_pipeline" timely-cluster
allow_group "$sg_db" 5432-5432 "$sg_pipeline" pipeline
allow_group "$sg_db" 5432-5432 "$sg_dashboard" dashboard
for sg in "$sg_broker" "$sg_pipeline" "$sg_generator" "$sg_dashboard"; do
    allow_operator "$sg" 22
done
allow_operator "$sg_dashboard" "$web_port"

# --- the vtpga binary -----------------------------------------------------------------
if [ -z "$binary_url" ]; then
    if [ -f "$binary" ]; then
        binary_sha256="$(sha256sum "$binary" | cut -d' ' -f1)"
    elif [ "$DRY_RUN" = 1 ]; then
        binary_sha256="<sha256 of $binary>"
    else
        die "no $binary: run cargo build --release (or give --binary-url)"
    fi
    account="$(DRY=123456789012 aws sts get-caller-identity --query Account --output text)"
    bucket="$NAME-vtpga-$account-$REGION"
    log "private bucket s3://$bucket for the binary"
    if [ "$REGION" = us-east-1 ]; then
        aws s3api create-bucket --bucket "$bucket" >/dev/null
    else
        aws s3api create-bucket --bucket "$bucket" \
            --create-bucket-configuration "LocationConstraint=$REGION" >/dev/null
    fi
    aws s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
        BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
    aws s3api put-bucket-tagging --bucket "$bucket" \
        --tagging "TagSet=[{Key=$TAG_KEY,Value=$NAME}]"
    aws s3 cp --only-show-errors "$binary" "s3://$bucket/vtpga" >/dev/null
    # Presigned for 24 h: the instances download it once, at first boot.
    binary_url="$(DRY="https://$bucket.s3.amazonaws.com/vtpga?X-Amz-Signature=dry-run" \
        aws s3 presign "s3://$bucket/vtpga" --expires-in 86400)"
    remember BUCKET "$bucket"
fi

if [ -z "$ami" ]; then
    ami="$(DRY=ami-0dryrun0000000000 aws ssm get-parameter \
        --name /aws/service/debian/release/12/latest/amd64 --query Parameter.Value --output text)"
fi

# --- secrets --------------------------------------------------------------------------
# Hex: safe in URLs and configuration files without quoting.
secret() { # PLACEHOLDER
    if [ "$DRY_RUN" = 1 ]; then
        echo "$1"
    else
        od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
    fi
}
db_password="$(secret GENERATED-DB-PASSWORD)"
remember DB_PASSWORD "$db_password"
redis_password="$(secret GENERATED-REDIS-PASSWORD)"
remember REDIS_PASSWORD "$redis_password"
web_token="$(secret GENERATED-WEB-TOKEN)"
remember WEB_TOKEN "$web_token"

# --- PostgreSQL (RDS) -----------------------------------------------------------------
db_id="$NAME-pg"
db_params="$NAME-pg-params"
if [ "$db_plaintext" = 1 ]; then
    force_ssl=0 sslmode=""
    log "WARNING: --allow-db-plaintext: RDS accepts connections without TLS (rds.force_ssl=0)"
else
    force_ssl=1 sslmode="?sslmode=require"
    log "RDS refuses connections without TLS; vtpga verifies it with the RDS CA bundle (VTPGA_POSTGRES_CA)"
fi
log "RDS parameter group $db_params (postgres$pg_version, rds.force_ssl=$force_ssl)"
aws rds create-db-parameter-group --db-parameter-group-name "$db_params" \
    --db-parameter-group-family "postgres$pg_version" \
    --description "VT.PGA $NAME: rds.force_ssl=$force_ssl" \
    --tags "Key=$TAG_KEY,Value=$NAME" "Key=vtpga:role,Value=postgres" >/dev/null
remember DB_PARAMETER_GROUP "$db_params"
aws rds modify-db-parameter-group --db-parameter-group-name "$db_params" \
    --parameters "ParameterName=rds.force_ssl,ParameterValue=$force_ssl,ApplyMethod=immediate" >/dev/null
log "RDS PostgreSQL $pg_version $db_id ($db_class): encrypted, $db_backup_days days of backups, from $NAME-db only"
# The master password goes in a mode-600 JSON file, not on the aws command line (ps).
db_input="$work/rds-create.json"
(umask 077 && printf '{"MasterUserPassword": "%s"}\n' "$db_password" >"$db_input")
aws rds create-db-instance --db-instance-identifier "$db_id" \
    --engine postgres --engine-version "$pg_version" --db-instance-class "$db_class" \
    --allocated-storage 20 --storage-type gp3 --storage-encrypted --db-name vtpga \
    --master-username vtpga --cli-input-json "file://$db_input" \
    --db-parameter-group-name "$db_params" \
    --vpc-security-group-ids "$sg_db" --no-publicly-accessible \
    --backup-retention-period "$db_backup_days" --copy-tags-to-snapshot --no-multi-az \
    --tags "Key=$TAG_KEY,Value=$NAME" "Key=vtpga:role,Value=postgres" >/dev/null
rm -f "$db_input"
remember DB_INSTANCE "$db_id"

# --- instances ------------------------------------------------------------------------
# The user data of ROLE: `export VAR=value` for each VAR=value argument, then
# user-data/common.sh and user-data/ROLE.sh.
render() { # ROLE VAR=value...
    local role=$1 kv
    shift
    {
        echo "#!/bin/bash"
        echo "# VT.PGA $NAME: $role (rendered by scripts/ec2/up.sh)"
        for kv in "$@"; do
            printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
        done
        sed 1d "$here/user-data/common.sh"
        sed 1d "$here/user-data/$role.sh"
    } >"$work/user-data-$role.sh"
    chmod 600 "$work/user-data-$role.sh"
    if [ "$DRY_RUN" = 1 ]; then
        echo "# user data of $role: $here/user-data/{common,$role}.sh with" >&3
        for kv in "$@"; do
            echo "#   $kv" >&3
        done
    fi
    echo "$work/user-data-$role.sh"
}

# Launches one instance of ROLE (in security group $NAME-ROLE) with user data FILE; prints
# `INSTANCE_ID PRIVATE_IP`.
launch() { # ROLE TYPE USER_DATA_FILE DISK_GB DRY_IP
    local role=$1 type=$2 user_data=$3 disk=$4 sg_var="sg_$1"
    local -a key=()
    if [ -n "$key_name" ]; then
        key=(--key-name "$key_name")
    fi
    DRY="i-0dryrun$role $5" aws ec2 run-instances --image-id "$ami" --instance-type "$type" \
        --count 1 --security-group-ids "${!sg_var}" "${key[@]}" \
        --user-data "file://$user_data" \
        --metadata-options HttpTokens=required,HttpEndpoint=enabled \
        --block-device-mappings "DeviceName=/dev/xvda,Ebs={VolumeSize=$disk,VolumeType=gp3,DeleteOnTermination=true}" \
        --tag-specifications "$(tags_spec instance "$role")" "$(tags_spec volume "$role")" \
        --query 'Instances[0].[InstanceId,PrivateIpAddress]' --output text
}

common_env=(
    "RUST_LOG=info"
    "VTPGA_KAFKA_TOPIC=transacoes"
    "VTPGA_KAFKA_CONTROL_TOPIC=transacoes-controle"
    "VTPGA_KAFKA_DECISIONS_TOPIC=transacoes-decisoes"
    "VTPGA_KAFKA_DLQ_TOPIC=transacoes-dlq"
    "VTPGA_USERS=$users"
    "VTPGA_EXTRA_REGIONS=100"
    "VTPGA_SEED=42"
    "VTPGA_BINARY_URL=$binary_url"
    "VTPGA_BINARY_SHA256=$binary_sha256"
    "VTPGA_MAX_CLOCK_SKEW_MS=$max_clock_skew_ms"
)

log "broker instance ($type_broker)"
file="$(render broker "${common_env[@]}" "KAFKA_VERSION=$kafka_version" "KAFKA_SCALA_VERSION=2.13" \
    "KAFKA_PARTITIONS=$partitions" "KAFKA_HEAP_OPTS=-Xmx2g -Xms2g" "KAFKA_RETENTION_MS=604800000")"
read -r broker_id broker_ip < <(launch broker "$type_broker" "$file" 30 10.0.0.10)
remember BROKER "$broker_id"
brokers="$broker_ip:9092"

log "waiting for RDS $db_id to be available (about 5-10 minutes)"
aws rds wait db-instance-available --db-instance-identifier "$db_id"
db_host="$(DRY="$db_id.dryrun.$REGION.rds.amazonaws.com" aws rds describe-db-instances \
    --db-instance-identifier "$db_id" --query 'DBInstances[0].Endpoint.Address' --output text)"
postgres_url="postgres://vtpga:$db_password@$db_host:5432/vtpga$sslmode"

log "pipeline instance ($type_pipeline, $workers workers, Redis)"
file="$(render pipeline "${common_env[@]}" "VTPGA_KAFKA_BROKERS=$brokers" \
    "VTPGA_POSTGRES=$postgres_url" "VTPGA_WORKERS=$workers" "VTPGA_KAFKA_START=earliest" \
    "REDIS_PASSWORD=$redis_password")"
read -r pipeline_id pipeline_ip < <(launch pipeline "$type_pipeline" "$file" 20 10.0.0.11)
remember PIPELINE "$pipeline_id"

log "generator instance ($type_generator, $rate tx/s)"
# No VTPGA_PRODUCER_SEED: a new seed at each start, so a restart sends new ids.
file="$(render generator "${common_env[@]}" "VTPGA_KAFKA_BROKERS=$brokers" \
    "VTPGA_PRODUCER_RATE=$rate")"
read -r generator_id _ < <(launch generator "$type_generator" "$file" 10 10.0.0.12)
remember GENERATOR "$generator_id"

log "dashboard instance ($type_dashboard)"
file="$(render dashboard "${common_env[@]}" "VTPGA_REDIS_URL=redis://:$redis_password@$pipeline_ip:6379/" \
    "VTPGA_POSTGRES=$postgres_url" "VTPGA_WEB_PORT=$web_port" "VTPGA_WEB_TOKEN=$web_token")"
read -r dashboard_id _ < <(launch dashboard "$type_dashboard" "$file" 10 10.0.0.13)
remember DASHBOARD "$dashboard_id"

log "waiting for the instances to run"
aws ec2 wait instance-running --instance-ids "$broker_id" "$pipeline_id" "$generator_id" "$dashboard_id"
dashboard_ip="$(DRY=198.51.100.20 aws ec2 describe-instances --instance-ids "$dashboard_id" \
    --query 'Reservations[0].Instances[0].PublicIpAddress' --output text)"
if [ -z "$dashboard_ip" ] || [ "$dashboard_ip" = None ]; then
    die "the dashboard instance has no public IP (does the default subnet assign them?)"
fi
remember DASHBOARD_URL "http://$dashboard_ip:$web_port/"

echo
echo "VT.PGA $NAME is starting (cloud-init installs and starts each service in a few minutes)."
echo "Dashboard: http://$dashboard_ip:$web_port/   (open to $my_ip only; token: WEB_TOKEN in $state)"
if [ -n "$key_name" ]; then
    echo "Logs: ssh admin@$dashboard_ip sudo journalctl -u vtpga-web -f   (other hosts: same group; see $state)"
fi
echo "Tear down: scripts/ec2/down.sh --name $NAME --region $REGION"
