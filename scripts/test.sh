#!/usr/bin/env bash
# The test suite: unit tests, the parser's property tests, the dataflow-vs-reference model
# check (1, 2 and 3 workers), the replay CLI determinism test, the Kafka integration tests
# (private tansu brokers, Python confluent-kafka interop) and the recovery tests (private
# PostgreSQL and Redis, SIGKILL x10, PostgreSQL restart, Redis outage). The services are
# installed first by scripts/setup.sh (idempotent: it skips what is already there, so on a
# fresh machine this one command sets everything up); each test starts its own on free
# loopback ports and stops it by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# The scripts' own checks (PID files are checked before a kill; the compose entrypoint
# refuses missing secrets), then the Rust tests.
scripts/pidfile-test.sh
scripts/compose-entrypoint-test.sh
cargo test --workspace "$@"
