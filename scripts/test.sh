#!/usr/bin/env bash
# The test suite: unit tests, the parser's property tests, the dataflow-vs-reference
# model check (1, 2 and 3 workers), and the replay CLI determinism test (1, 2, 4 workers
# and 2 processes on localhost).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace "$@"
