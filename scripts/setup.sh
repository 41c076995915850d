#!/usr/bin/env bash
# Installs what building and testing need, skipping what is already there (idempotent).
# The core (issue: dataflow, replay, run, bench) needs only cargo with rustfmt and clippy.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (this machine's Rust toolchain)" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
