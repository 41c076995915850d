#!/bin/bash
# Role `generator`: `vtpga produce` at VTPGA_PRODUCER_RATE messages per second into the
# transactions topic, with the regions and users `vtpga seed` puts in PostgreSQL (the
# same seed generates the same data, so no database access is needed here).
#
# Reads: VTPGA_KAFKA_BROKERS, VTPGA_KAFKA_TOPIC, VTPGA_PRODUCER_RATE,
# VTPGA_PRODUCER_SEED, VTPGA_USERS, VTPGA_EXTRA_REGIONS, VTPGA_SEED, RUST_LOG.
# (Appended to common.sh by up.sh.)
#
# The producer's seed: VTPGA_PRODUCER_SEED if set, else the clock at each start (in
# nanoseconds, logged): systemd restarts it after a failure, and a fixed seed would send
# the same transaction ids again, which the pipeline decides `duplicate`.

install_vtpga
runuser -u vtpga -- /usr/local/bin/vtpga generate --out /var/lib/vtpga/ref --count 1 \
    --users "${VTPGA_USERS:-10000}" --extra-regions "${VTPGA_EXTRA_REGIONS:-100}" \
    --seed "${VTPGA_SEED:-42}"
export VTPGA_REGIONS=/var/lib/vtpga/ref/regions.csv VTPGA_USERS_CSV=/var/lib/vtpga/ref/users.csv
write_env vtpga-producer RUST_LOG VTPGA_KAFKA_BROKERS VTPGA_KAFKA_TOPIC VTPGA_REGIONS VTPGA_USERS_CSV \
    VTPGA_PRODUCER_SEED
cat >/usr/local/bin/vtpga-produce <<'WRAPPER'
#!/bin/bash
# `vtpga produce ARGS` with --seed VTPGA_PRODUCER_SEED, or a new seed from the clock at
# each start (written by the VT.PGA generator user data).
set -eu
seed="${VTPGA_PRODUCER_SEED:-}"
if [ -z "$seed" ]; then
    seed="$(date +%s%N)"
fi
echo "vtpga-produce: seed $seed" >&2
exec /usr/local/bin/vtpga produce --seed "$seed" "$@"
WRAPPER
chmod 0755 /usr/local/bin/vtpga-produce
wait_tcp "${VTPGA_KAFKA_BROKERS%%:*}" "${VTPGA_KAFKA_BROKERS##*:}"
service vtpga-producer vtpga "VT.PGA transaction generator (vtpga produce)" \
    /usr/local/bin/vtpga-produce --quiet --rate "${VTPGA_PRODUCER_RATE:-1000}"
