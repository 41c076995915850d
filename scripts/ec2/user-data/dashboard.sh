#!/bin/bash
# Role `dashboard`: `vtpga web` on 0.0.0.0:VTPGA_WEB_PORT, reading the pipeline
# instance's Redis and PostgreSQL (RDS).
#
# Reads: VTPGA_REDIS_URL, VTPGA_POSTGRES, VTPGA_WEB_PORT, RUST_LOG.
# (Appended to common.sh by up.sh.)

install_vtpga
write_env vtpga-web RUST_LOG VTPGA_REDIS_URL VTPGA_POSTGRES
redis="${VTPGA_REDIS_URL#redis://}"
redis="${redis%%/*}"
wait_tcp "${redis%%:*}" "${redis##*:}"
# ${VTPGA_...} are expanded by systemd from the (root:vtpga 0640) environment file, so
# that the database password is not in the (world-readable) unit file.
# shellcheck disable=SC2016
service vtpga-web vtpga "VT.PGA dashboard (vtpga web)" \
    /usr/local/bin/vtpga web --listen "0.0.0.0:${VTPGA_WEB_PORT:-8080}" \
    --redis '${VTPGA_REDIS_URL}' --postgres '${VTPGA_POSTGRES}'
