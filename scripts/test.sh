#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the integration
# tests (which start the real `inlet` binary on random ports with temp
# dirs). Load and soak runs are not here: see scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
# Unit tests and the one integration binary (tests/it), built once.
cargo test --all-targets --locked
