#!/bin/bash
# Role `dashboard`: `vtpga web` on 0.0.0.0:VTPGA_WEB_PORT with a bearer token, reading the
# pipeline instance's Redis and PostgreSQL (RDS).
#
# Reads: VTPGA_REDIS_URL (with the Redis password), VTPGA_POSTGRES, VTPGA_WEB_PORT,
# VTPGA_WEB_TOKEN, RUST_LOG. (Appended to common.sh by up.sh.)

install_vtpga
# vtpga web reads the URLs and the token from its environment (the root:vtpga 0640 file
# systemd loads): not in the world-readable unit file, and not on its command line (ps).
write_env vtpga-web RUST_LOG VTPGA_REDIS_URL VTPGA_POSTGRES VTPGA_POSTGRES_CA VTPGA_WEB_TOKEN
[ -n "${VTPGA_WEB_TOKEN:-}" ] || { log "no VTPGA_WEB_TOKEN: the dashboard does not run without one"; exit 1; }
redis="${VTPGA_REDIS_URL#redis://}"
redis="${redis#*@}"
redis="${redis%%/*}"
wait_tcp "${redis%%:*}" "${redis##*:}"
service vtpga-web vtpga "VT.PGA dashboard (vtpga web)" \
    /usr/local/bin/vtpga web --listen "0.0.0.0:${VTPGA_WEB_PORT:-8080}"
