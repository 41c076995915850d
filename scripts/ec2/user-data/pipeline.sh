#!/bin/bash
# Role `pipeline`: Redis (the dashboard's cache, reachable by the dashboard instance),
# the PostgreSQL schema and reference data (`vtpga seed`, idempotent), and the pipeline
# `vtpga run --source kafka` with VTPGA_WORKERS workers, PostgreSQL and Redis.
#
# Reads: VTPGA_KAFKA_BROKERS, VTPGA_POSTGRES, VTPGA_WORKERS, VTPGA_KAFKA_START,
# VTPGA_KAFKA_TOPIC, VTPGA_KAFKA_DECISIONS_TOPIC, VTPGA_KAFKA_DLQ_TOPIC, VTPGA_USERS,
# VTPGA_EXTRA_REGIONS, VTPGA_SEED, RUST_LOG. (Appended to common.sh by up.sh.)

install_packages redis-server
# Reachable from the other instances (the security group admits only them and the
# operator); a cache without persistence: the pipeline rebuilds it when it reconnects.
cat >/etc/redis/redis.conf.d-vtpga <<'CONF'
bind 0.0.0.0
protected-mode no
save ""
appendonly no
CONF
grep -q '^include /etc/redis/redis.conf.d-vtpga' /etc/redis/redis.conf ||
    echo 'include /etc/redis/redis.conf.d-vtpga' >>/etc/redis/redis.conf
systemctl restart redis-server
wait_tcp 127.0.0.1 6379 60

install_vtpga
export VTPGA_SOURCE=kafka VTPGA_REDIS_URL="redis://127.0.0.1:6379/"
write_env vtpga-pipeline RUST_LOG VTPGA_SOURCE VTPGA_KAFKA_BROKERS VTPGA_POSTGRES VTPGA_REDIS_URL \
    VTPGA_WORKERS VTPGA_KAFKA_START VTPGA_KAFKA_TOPIC VTPGA_KAFKA_DECISIONS_TOPIC VTPGA_KAFKA_DLQ_TOPIC

# PostgreSQL (RDS) may still be starting: seed until it answers (at most 30 minutes).
for attempt in $(seq 1 180); do
    if runuser -u vtpga -- /usr/local/bin/vtpga seed --postgres "$VTPGA_POSTGRES" \
        --users "${VTPGA_USERS:-10000}" --extra-regions "${VTPGA_EXTRA_REGIONS:-100}" \
        --seed "${VTPGA_SEED:-42}"; then
        break
    fi
    log "seed attempt $attempt failed; retrying in 10 s"
    sleep 10
done
wait_tcp "${VTPGA_KAFKA_BROKERS%%:*}" "${VTPGA_KAFKA_BROKERS##*:}"
service vtpga-pipeline vtpga "VT.PGA pipeline (vtpga run --source kafka)" /usr/local/bin/vtpga run
