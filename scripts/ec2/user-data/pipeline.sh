#!/bin/bash
# Role `pipeline`: Redis (the dashboard's cache, reachable by the dashboard instance),
# the PostgreSQL schema and reference data (`vtpga seed`, idempotent), and the pipeline
# `vtpga run --source kafka` with VTPGA_WORKERS workers, PostgreSQL and Redis.
#
# Reads: VTPGA_KAFKA_BROKERS, VTPGA_POSTGRES, VTPGA_WORKERS, VTPGA_KAFKA_START,
# VTPGA_KAFKA_TOPIC, VTPGA_KAFKA_CONTROL_TOPIC, VTPGA_KAFKA_DECISIONS_TOPIC,
# VTPGA_KAFKA_DLQ_TOPIC, VTPGA_MAX_CLOCK_SKEW_MS, REDIS_PASSWORD, VTPGA_USERS,
# VTPGA_EXTRA_REGIONS, VTPGA_SEED, RUST_LOG. (Appended to common.sh by up.sh.)
# Passwords reach vtpga through its environment (systemd's root-only EnvironmentFile, or
# this script's environment for `vtpga seed`), never its command line.

install_packages redis-server
# Reachable on this instance's private address (its security group admits only the
# dashboard's) and on loopback, with a password and protected mode on; a cache without
# persistence: the pipeline rebuilds it when it reconnects. The password is in this
# root:redis 0640 file, not on redis-server's command line.
ip="$(imds local-ipv4)"
install -m 0640 -o root -g redis /dev/null /etc/redis/redis.conf.d-vtpga
cat >/etc/redis/redis.conf.d-vtpga <<CONF
bind 127.0.0.1 ${ip}
protected-mode yes
requirepass "${REDIS_PASSWORD:?}"
save ""
appendonly no
CONF
grep -q '^include /etc/redis/redis.conf.d-vtpga' /etc/redis/redis.conf ||
    echo 'include /etc/redis/redis.conf.d-vtpga' >>/etc/redis/redis.conf
systemctl restart redis-server
wait_tcp 127.0.0.1 6379 60

install_vtpga
export VTPGA_SOURCE=kafka VTPGA_REDIS_URL="redis://:${REDIS_PASSWORD}@127.0.0.1:6379/"
write_env vtpga-pipeline RUST_LOG VTPGA_SOURCE VTPGA_KAFKA_BROKERS VTPGA_POSTGRES VTPGA_POSTGRES_CA VTPGA_REDIS_URL \
    VTPGA_WORKERS VTPGA_KAFKA_START VTPGA_KAFKA_TOPIC VTPGA_KAFKA_CONTROL_TOPIC \
    VTPGA_KAFKA_DECISIONS_TOPIC VTPGA_KAFKA_DLQ_TOPIC VTPGA_MAX_CLOCK_SKEW_MS

# PostgreSQL (RDS) may still be starting: seed until it answers (at most 30 minutes).
# VTPGA_POSTGRES is exported: runuser passes the environment on, and `ps` shows no URL.
seeded=0
for attempt in $(seq 1 180); do
    if runuser -u vtpga -- /usr/local/bin/vtpga seed \
        --users "${VTPGA_USERS:-10000}" --extra-regions "${VTPGA_EXTRA_REGIONS:-100}" \
        --seed "${VTPGA_SEED:-42}"; then
        seeded=1
        break
    fi
    log "seed attempt $attempt failed; retrying in 10 s"
    sleep 10
done
if [ "$seeded" = 0 ]; then
    log "PostgreSQL never accepted vtpga seed (RDS requires TLS: see docs/running.md); not starting the pipeline"
    exit 1
fi
wait_tcp "${VTPGA_KAFKA_BROKERS%%:*}" "${VTPGA_KAFKA_BROKERS##*:}"
service vtpga-pipeline vtpga "VT.PGA pipeline (vtpga run --source kafka)" /usr/local/bin/vtpga run
