#!/usr/bin/env bash
# The GPU check of the CUDA int8 kernels, for a machine with an NVIDIA GPU (it cannot run in CI):
#   1. kernels/examples/gpu_check.rs: GEMM correctness vs the CPU reference on the 7 reference
#      shapes and odd shapes (i32 accumulators equal on every path, activation quantization
#      bit-identical, fused outputs within OUTPUT_TOLERANCE), then the fused int8 Linear timed
#      with achieved TOPS;
#   2. scripts/gpu/torch_int8_peer.py: PyTorch on the same shapes (torch._int_mm with the
#      quantize / dequantize ops around it, and fp16 torch.matmul), side by side.
# Takes about a minute (under 5 minutes with the timeouts below); results go to stdout and, when
# $OUT is set, to $OUT/gpu-check/{qtier,torch}.jsonl.
#
# Needs: the NVIDIA driver; libnvrtc (12.x or 13.x) found from QTIER_NVRTC_LIB_DIR, the
# scripts/test.sh venv, a pip-installed nvidia-cuda-nvrtc wheel (PyTorch's CUDA wheels bring
# one), or the linker cache; and either a copied release build of the example
# (target/release/examples/gpu_check, built with
# `cargo build --release -p qtier-kernels --features cuda --example gpu_check`, or named by
# QTIER_GPU_CHECK_BIN) or cargo to build it. Extra arguments (e.g. --quick) go to both checks.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${QTIER_PYTHON:-python3}"

find_nvrtc_dir() {
  if [ -n "${QTIER_NVRTC_LIB_DIR:-}" ]; then echo "$QTIER_NVRTC_LIB_DIR"; return; fi
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/qtier/nvrtc-venv" lib
  lib="$(find "$venv" -name 'libnvrtc.so.1[23]' -print -quit 2>/dev/null)"
  if [ -z "$lib" ]; then
    # Any site-packages of this python: nvidia/cu13/lib (13.x wheels), nvidia/cuda_nvrtc/lib (12.x).
    lib="$("$PYTHON" - <<'PY' 2>/dev/null
import glob, site, sys
dirs = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for d in dirs:
    for pattern in ("nvidia/cu13/lib/libnvrtc.so.13", "nvidia/cuda_nvrtc/lib/libnvrtc.so.1[23]"):
        hits = glob.glob(f"{d}/{pattern}")
        if hits:
            print(hits[0]); sys.exit(0)
PY
)"
  fi
  if [ -z "$lib" ]; then
    lib="$(ldconfig -p 2>/dev/null | awk '/libnvrtc\.so\.1[23] /{print $NF; exit}')"
  fi
  if [ -z "$lib" ]; then
    lib="$(ls /usr/local/cuda/lib64/libnvrtc.so.1[23] 2>/dev/null | head -n1)"
  fi
  [ -n "$lib" ] && dirname "$lib"
}

nvrtc_dir="$(find_nvrtc_dir)"
if [ -z "$nvrtc_dir" ]; then
  echo "error: libnvrtc.so.13 (or .12) not found: pip install nvidia-cuda-nvrtc==13.0.88, or set QTIER_NVRTC_LIB_DIR" >&2
  exit 1
fi
export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "libnvrtc from $nvrtc_dir" >&2

bin="${QTIER_GPU_CHECK_BIN:-target/release/examples/gpu_check}"
if [ ! -x "$bin" ]; then
  echo "building $bin" >&2
  cargo build --release -p qtier-kernels --features cuda --example gpu_check >&2 || exit 1
fi

results=""
if [ -n "${OUT:-}" ]; then
  results="$OUT/gpu-check"
  mkdir -p "$results"
  : >"$results/torch.jsonl"
  # Kernel cubins compiled by NVRTC are cached beside the results (fresh machine: no cache).
  export QTIER_CUDA_CACHE="${QTIER_CUDA_CACHE:-$results/cuda-kernels}"
fi

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>/dev/null >&2 || true

status=0
timeout 200 "$bin" ${results:+--out "$results/qtier.jsonl"} "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "error: gpu_check exited with status $status" >&2
fi
timeout 90 "$PYTHON" scripts/gpu/torch_int8_peer.py ${results:+--out "$results/torch.jsonl"} "$@" || {
  echo "warning: the PyTorch peer failed (status $?); the qtier results stand alone" >&2
}
exit "$status"
