#!/usr/bin/env bash
# Installs what building and testing need, skipping what is already there (idempotent):
# - Debian packages (none is needed to build or run the embedded pipeline: librdkafka is
#   built by its own configure/make, which needs only a C compiler, make, perl and zlib):
#   PostgreSQL 15 and Redis (private test instances), python3-pip, chromium (the
#   dashboard's browser test, with chromium-driver), shellcheck and docker-compose (CI lints
#   the scripts and checks docker-compose.yml; no Docker engine is needed);
# - the Python client confluent-kafka (the third-party client of the interop test);
# - tansu, the Kafka-protocol broker of the tests (cargo install, about 15 minutes once);
# - rustfmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (this machine's Rust toolchain)" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! python3 -c "import confluent_kafka" >/dev/null 2>&1; then
    # A Debian-managed Python refuses plain pip installs (PEP 668); this is a test tool.
    python3 -m pip install -q "confluent-kafka>=2.6" ||
        python3 -m pip install -q --break-system-packages "confluent-kafka>=2.6"
fi

scripts/kafka.sh install
