#!/usr/bin/env bash
# Brings VT.PGA up on AWS with the AWS CLI: a security group, an RDS PostgreSQL, and four
# EC2 instances by role, each configured by environment variables in its cloud-init user
# data (scripts/ec2/user-data/):
#
#   broker     Apache Kafka, KRaft single node; creates the topics (CreateTime)
#   pipeline   Redis + `vtpga seed` + `vtpga run --source kafka` (PostgreSQL, Redis)
#   generator  `vtpga produce` at --rate messages per second
#   dashboard  `vtpga web` on --web-port (the only service meant for a browser)
#
# The security group admits traffic between its own members (self-referencing) and, on
# SSH and the dashboard port only, from the operator's IP (--my-ip, else detected with
# checkip.amazonaws.com); never from 0.0.0.0/0. Everything is tagged
# vtpga:deployment=NAME; scripts/ec2/down.sh --name NAME removes it all.
#
#   scripts/ec2/up.sh --dry-run                      # prints every AWS call, calls none
#   scripts/ec2/up.sh [--name vtpga] [--region us-east-1] [--my-ip 198.51.100.7]
#                     [--key-name KEYPAIR] [--rate 1000] [--workers 2] [--partitions 4]
#
# The `vtpga` binary is this checkout's target/release/vtpga (cargo build --release on
# Debian 12, like the AMI), uploaded to a private S3 bucket of the deployment and fetched
# by the instances through a presigned URL (no IAM role); or --binary-url URL
# [--binary-sha256 HEX]. Instances run Debian 12 (the AMI of SSM parameter
# /aws/service/debian/release/12/latest/amd64, or --ami). Needs the AWS CLI and
# credentials (not with --dry-run), and a default VPC in the region.
# Local state (IDs, the generated database password): .local/ec2/NAME.env (mode 600).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
    -h | --help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage ;;
    esac
done
valid_name
need_aws

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

log "security group $NAME (members + $my_ip)"
sg_id="$(DRY=sg-0dryrun0000000000 aws ec2 create-security-group --group-name "$NAME" \
    --description "VT.PGA $NAME: between its instances, and from the operator" \
    --vpc-id "$vpc_id" --tag-specifications "$(tags_spec security-group network)" \
    --query GroupId --output text)"
remember SECURITY_GROUP "$sg_id"
# Every protocol and port, but only from instances of this same group.
aws ec2 authorize-security-group-ingress --group-id "$sg_id" \
    --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$sg_id,Description=members}]" >/dev/null
for port in 22 "$web_port"; do
    aws ec2 authorize-security-group-ingress --group-id "$sg_id" \
        --ip-permissions "IpProtocol=tcp,FromPort=$port,ToPort=$port,IpRanges=[{CidrIp=$my_ip,Description=operator}]" >/dev/null
done

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

# --- PostgreSQL (RDS) -----------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    db_password="GENERATED-PASSWORD"
else
    db_password="$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')"
fi
remember DB_PASSWORD "$db_password"
db_id="$NAME-pg"
log "RDS PostgreSQL $pg_version $db_id ($db_class), reachable from the group only"
# PostgreSQL 15 on RDS accepts connections without TLS by default (rds.force_ssl=0), as
# the pipeline's client makes them; from 16 on RDS forces TLS.
aws rds create-db-instance --db-instance-identifier "$db_id" \
    --engine postgres --engine-version "$pg_version" --db-instance-class "$db_class" \
    --allocated-storage 20 --storage-type gp3 --db-name vtpga \
    --master-username vtpga --master-user-password "$db_password" \
    --vpc-security-group-ids "$sg_id" --no-publicly-accessible \
    --backup-retention-period 0 --no-multi-az \
    --tags "Key=$TAG_KEY,Value=$NAME" "Key=vtpga:role,Value=postgres" >/dev/null
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

# Launches one instance of ROLE with user data FILE; prints `INSTANCE_ID PRIVATE_IP`.
launch() { # ROLE TYPE USER_DATA_FILE DISK_GB DRY_IP
    local role=$1 type=$2 user_data=$3 disk=$4
    local -a key=()
    if [ -n "$key_name" ]; then
        key=(--key-name "$key_name")
    fi
    DRY="i-0dryrun$role $5" aws ec2 run-instances --image-id "$ami" --instance-type "$type" \
        --count 1 --security-group-ids "$sg_id" "${key[@]}" \
        --user-data "file://$user_data" \
        --metadata-options HttpTokens=required,HttpEndpoint=enabled \
        --block-device-mappings "DeviceName=/dev/xvda,Ebs={VolumeSize=$disk,VolumeType=gp3,DeleteOnTermination=true}" \
        --tag-specifications "$(tags_spec instance "$role")" "$(tags_spec volume "$role")" \
        --query 'Instances[0].[InstanceId,PrivateIpAddress]' --output text
}

common_env=(
    "RUST_LOG=info"
    "VTPGA_KAFKA_TOPIC=transacoes"
    "VTPGA_KAFKA_DECISIONS_TOPIC=transacoes-decisoes"
    "VTPGA_KAFKA_DLQ_TOPIC=transacoes-dlq"
    "VTPGA_USERS=$users"
    "VTPGA_EXTRA_REGIONS=100"
    "VTPGA_SEED=42"
    "VTPGA_BINARY_URL=$binary_url"
    "VTPGA_BINARY_SHA256=$binary_sha256"
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
postgres_url="postgres://vtpga:$db_password@$db_host:5432/vtpga"

log "pipeline instance ($type_pipeline, $workers workers, Redis)"
file="$(render pipeline "${common_env[@]}" "VTPGA_KAFKA_BROKERS=$brokers" \
    "VTPGA_POSTGRES=$postgres_url" "VTPGA_WORKERS=$workers" "VTPGA_KAFKA_START=earliest")"
read -r pipeline_id pipeline_ip < <(launch pipeline "$type_pipeline" "$file" 20 10.0.0.11)
remember PIPELINE "$pipeline_id"

log "generator instance ($type_generator, $rate tx/s)"
file="$(render generator "${common_env[@]}" "VTPGA_KAFKA_BROKERS=$brokers" \
    "VTPGA_PRODUCER_RATE=$rate" "VTPGA_PRODUCER_SEED=1")"
read -r generator_id _ < <(launch generator "$type_generator" "$file" 10 10.0.0.12)
remember GENERATOR "$generator_id"

log "dashboard instance ($type_dashboard)"
file="$(render dashboard "${common_env[@]}" "VTPGA_REDIS_URL=redis://$pipeline_ip:6379/" \
    "VTPGA_POSTGRES=$postgres_url" "VTPGA_WEB_PORT=$web_port")"
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
echo "Dashboard: http://$dashboard_ip:$web_port/   (open to $my_ip only)"
if [ -n "$key_name" ]; then
    echo "Logs: ssh admin@$dashboard_ip sudo journalctl -u vtpga-web -f   (other hosts: same group; see $state)"
fi
echo "Tear down: scripts/ec2/down.sh --name $NAME --region $REGION"
