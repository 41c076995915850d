#!/bin/bash
# Cloud-init user data, shared part: scripts/ec2/up.sh renders each instance's user data
# as `export VAR=value` lines (its whole configuration), then this file, then the role's
# file (broker.sh, pipeline.sh, generator.sh, dashboard.sh). Runs once, as root, on
# Debian 12; its output is in /var/log/cloud-init-output.log.
#
# Reads: VTPGA_BINARY_URL and VTPGA_BINARY_SHA256 (where to get `vtpga`; roles other
# than the broker), and the role's own variables.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() {
    echo "[vtpga user-data] $*"
}

# A value of the instance metadata service (IMDSv2), e.g. `local-ipv4`.
imds() {
    local token
    token="$(curl -fsS -X PUT http://169.254.169.254/latest/api/token \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')"
    curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

install_packages() {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The `vtpga` binary (built on Debian 12 by the operator), checked against its SHA-256.
install_vtpga() {
    install_packages ca-certificates curl
    curl -fsSL --retry 5 -o /usr/local/bin/vtpga.download "${VTPGA_BINARY_URL:?}"
    if [ -n "${VTPGA_BINARY_SHA256:-}" ]; then
        echo "$VTPGA_BINARY_SHA256  /usr/local/bin/vtpga.download" | sha256sum -c -
    fi
    install -m 0755 /usr/local/bin/vtpga.download /usr/local/bin/vtpga
    rm -f /usr/local/bin/vtpga.download
    id vtpga >/dev/null 2>&1 || useradd --system --home-dir /var/lib/vtpga --create-home --shell /usr/sbin/nologin vtpga
    mkdir -p /etc/vtpga
    # The RDS CA bundle: vtpga verifies the database's certificate against it
    # (VTPGA_POSTGRES_CA; the URL says sslmode=require).
    curl -fsSL --retry 5 -o /etc/vtpga/rds-ca.pem \
        https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
    chmod 0644 /etc/vtpga/rds-ca.pem
    export VTPGA_POSTGRES_CA=/etc/vtpga/rds-ca.pem
    log "installed $(/usr/local/bin/vtpga --version)"
}

# Writes the named variables of this environment to /etc/vtpga/NAME.env (systemd's
# EnvironmentFile syntax).
write_env() {
    local name=$1 var value
    shift
    mkdir -p /etc/vtpga
    : >"/etc/vtpga/$name.env"
    chmod 0640 "/etc/vtpga/$name.env"
    for var in "$@"; do
        value="${!var:-}"
        value="${value//\\/\\\\}"
        value="${value//\"/\\\"}"
        echo "$var=\"$value\"" >>"/etc/vtpga/$name.env"
    done
    chgrp vtpga "/etc/vtpga/$name.env" 2>/dev/null || true
}

# A systemd service UNIT running COMMAND... as USER with /etc/vtpga/UNIT.env; started now
# and at every boot, restarted when it fails. SIGINT stops vtpga cleanly.
service() {
    local unit=$1 user=$2 description=$3
    shift 3
    cat >"/etc/systemd/system/$unit.service" <<UNIT
[Unit]
Description=$description
Wants=network-online.target
After=network-online.target

[Service]
User=$user
EnvironmentFile=-/etc/vtpga/$unit.env
ExecStart=$*
KillSignal=SIGINT
TimeoutStopSec=60
Restart=on-failure
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable --now "$unit.service"
    log "service $unit started"
}

# Waits until HOST:PORT accepts TCP connections (TRIES seconds, default 900).
wait_tcp() {
    local host=$1 port=$2 tries=${3:-900}
    for _ in $(seq 1 "$tries"); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            return 0
        fi
        sleep 1
    done
    log "$host:$port did not open"
    return 1
}
