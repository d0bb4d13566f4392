#!/usr/bin/env bash
# The GPU check of the CUDA int8 kernels, for a machine with an NVIDIA GPU (it cannot run in CI):
#   1. kernels/examples/gpu_check.rs: GEMM correctness vs the CPU reference on the 7 reference
#      shapes and odd shapes (i32 accumulators equal and fused outputs within OUTPUT_TOLERANCE
#      on every GEMM kernel the GPU runs, forced: on an sm_90 GPU also T4's mma.m8n8k16 kernel;
#      activation quantization bit-identical; the outlier decomposition's lists, quantized rows
#      and outputs), then the fused int8 Linear timed with achieved TOPS, and the GEMM forced
#      onto each kernel ("sweep" lines, to tune the kernel choice);
#   2. scripts/gpu/torch_int8_peer.py: PyTorch on the same shapes (torch._int_mm with the
#      quantize / dequantize ops around it, and fp16 torch.matmul), side by side;
#   3. models/examples/gpu_minilm.rs: all-MiniLM-L6-v2's whole forward on the GPU (fp32 checkpoint
#      and int8 artifact, with and without the outlier decomposition) against the CPU on the 20
#      development sentences: min / mean cosine, pass/fail against 0.995 (issue 9), and the
#      batch-1 x 128-token forward timed.
#   4. with a qtier binary built with `--features cuda` (QTIER_GPU_QTIER_BIN): `qtier bench model
#      --device cuda` of MiniLM int8 and float, the reports `qtier recommend` calibrates GPU
#      efficiency on (profiles/data/gpus.toml must list the GPU) to project g4dn's T4 and g5's A10G.
# Takes about three minutes on a GPU (the timeouts below add up to 10, one device call's limit);
# results go to stdout and, when $OUT is set, to $OUT/gpu-check/{qtier,torch,minilm}.jsonl and
# $OUT/gpu-check/bench-minilm-{int8,float}-gpu.json.
#
# Prebuilt binaries (copy them to the GPU machine, e.g. carried with the working tree):
#   cargo build --release -p qtier-kernels --features cuda --example gpu_check
#   cargo build --release -p qtier-models --features cuda --example gpu_minilm
# (target/release/examples/{gpu_check,gpu_minilm}: `strip` them before carrying, gpu_minilm is
# ~70 MiB with line tables and ~7 MiB stripped; QTIER_GPU_CHECK_BIN and QTIER_GPU_MINILM_BIN
# name others). Step 3 needs the model: QTIER_GPU_MINILM_MODEL=DIR, else
# ${QTIER_CACHE:-~/.cache/qtier}/models/all-MiniLM-L6-v2 (`qtier test-model` fetches it), else
# the step is skipped with a warning. The fp32 checkpoint (87 MiB) is over the device tool's
# 64 MiB carry limit: carry the copy `scripts/gpu/pruned_copy.py SRC DST` makes (39 MiB: the
# word-embedding rows no checked text uses zeroed, model.safetensors gzipped, which this script
# unzips into a temporary directory); every figure of steps 3 and 4 is the full checkpoint's, in
# F32 (an F16 copy was not: its CPU int8 minimum cosine to fp32 is 0.994985, under the 0.995
# bar, against 0.996949). The example quantizes the int8 artifact itself unless
# QTIER_GPU_MINILM_ARTIFACT=DIR names one.
# Step 4 needs a qtier built with `cargo build --release --features cuda --bin qtier` (31 MiB
# stripped), named by QTIER_GPU_QTIER_BIN. QTIER_GPU_BENCH_FLAGS replaces its workload (default
# `--batch 1,8 --seq 128 --min-seconds 5 --max-seconds 15`); scripts/test.sh rehearses step 4 in
# CI on the libcuda shim (kernels/cuda/emulator/libcuda.cpp) with a short one.
#
# For the device tool, all of it in one call: `scripts/gpu/pack.sh` builds the three binaries,
# strips and xz-compresses them and makes the model copy, into .gpu-pack/ (about 49 MiB, ignored
# by git); then run, carrying [".gpu-pack"] with a timeout of 600 s,
#   set -o pipefail; QTIER_GPU_PACK=.gpu-pack bash scripts/gpu-check.sh 2>&1 | tee $OUT/gpu-check.log
# QTIER_GPU_PACK=DIR unpacks DIR/{gpu_check,gpu_minilm,qtier}.xz into a temporary directory and
# makes them and DIR/minilm the defaults of the variables above.
#
# Needs: the NVIDIA driver; libnvrtc (12.x or 13.x) found from QTIER_NVRTC_LIB_DIR, the
# scripts/test.sh venv, a pip-installed nvidia-cuda-nvrtc wheel (PyTorch's CUDA wheels bring
# one), or the linker cache; and either a copied release build of the example
# (target/release/examples/gpu_check, built with
# `cargo build --release -p qtier-kernels --features cuda --example gpu_check`, or named by
# QTIER_GPU_CHECK_BIN) or cargo to build it. Extra arguments (e.g. --quick) go to both checks.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
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

steps="${QTIER_GPU_STEPS:-1234}"
step() { case "$steps" in *"$1"*) return 0 ;; *) return 1 ;; esac; }
# Each step's time limit in seconds, times QTIER_GPU_TIMEOUT_SCALE (an integer, default 1; the
# limits are sized for a GPU: rehearsing steps 1 and 3 on the libcuda shim needs about 5).
limit() { echo $(($1 * ${QTIER_GPU_TIMEOUT_SCALE:-1})); }

# Temporary directories (the unpacked binaries, the model unzipped, the NVRTC cubin cache,
# step 4's artifact) go when the script ends.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# xz -d, or Python's lzma where the machine has no xz.
unxz_to() {
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$1" >"$2"
  else
    "$PYTHON" - "$1" "$2" <<'PY'
import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  fi
}

if [ -n "${QTIER_GPU_PACK:-}" ]; then
  [ -d "$QTIER_GPU_PACK" ] || { echo "error: QTIER_GPU_PACK=$QTIER_GPU_PACK is not a directory" >&2; exit 1; }
  for name in gpu_check gpu_minilm qtier; do
    packed="$QTIER_GPU_PACK/$name.xz"
    [ -f "$packed" ] || continue
    unxz_to "$packed" "$scratch/$name" || { echo "error: cannot unpack $packed" >&2; exit 1; }
    chmod +x "$scratch/$name"
  done
  [ -x "$scratch/gpu_check" ] && : "${QTIER_GPU_CHECK_BIN:=$scratch/gpu_check}"
  [ -x "$scratch/gpu_minilm" ] && : "${QTIER_GPU_MINILM_BIN:=$scratch/gpu_minilm}"
  [ -x "$scratch/qtier" ] && : "${QTIER_GPU_QTIER_BIN:=$scratch/qtier}"
  [ -d "$QTIER_GPU_PACK/minilm" ] && : "${QTIER_GPU_MINILM_MODEL:=$QTIER_GPU_PACK/minilm}"
  echo "unpacked $QTIER_GPU_PACK: $(cd "$scratch" && ls | tr '\n' ' ')" >&2
fi

bin="${QTIER_GPU_CHECK_BIN:-target/release/examples/gpu_check}"
if step 1 && [ ! -x "$bin" ]; then
  echo "building $bin" >&2
  cargo build --release -p qtier-kernels --features cuda --example gpu_check >&2 || exit 1
fi

results=""
if [ -n "${OUT:-}" ]; then
  results="$OUT/gpu-check"
  mkdir -p "$results"
  : >"$results/torch.jsonl"
fi
# The steps share one NVRTC cubin cache (a fresh machine has none); not under $OUT, whose files
# the device tool returns only up to 8.
export QTIER_CUDA_CACHE="${QTIER_CUDA_CACHE:-$scratch/cuda-kernels}"

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>/dev/null >&2 || true

status=0
if step 1; then
  timeout "$(limit 180)" "$bin" ${results:+--out "$results/qtier.jsonl"} "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "error: gpu_check exited with status $status" >&2
  fi
fi
if step 2; then
  timeout "$(limit 60)" "$PYTHON" scripts/gpu/torch_int8_peer.py ${results:+--out "$results/torch.jsonl"} "$@" || {
    echo "warning: the PyTorch peer failed (status $?); the qtier results stand alone" >&2
  }
fi

minilm_bin="${QTIER_GPU_MINILM_BIN:-target/release/examples/gpu_minilm}"
minilm_model="${QTIER_GPU_MINILM_MODEL:-${QTIER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qtier}/models/all-MiniLM-L6-v2}"
# A copy from scripts/gpu/pruned_copy.py: unzip it next to its other files, outside the carried tree.
if [ -f "$minilm_model/model.safetensors.gz" ] && [ ! -f "$minilm_model/model.safetensors" ]; then
  unpacked="$scratch/minilm"
  mkdir -p "$unpacked"
  cp -r "$minilm_model/." "$unpacked/"
  rm "$unpacked/model.safetensors.gz"
  gzip -dc "$minilm_model/model.safetensors.gz" >"$unpacked/model.safetensors" || {
    echo "error: cannot unzip $minilm_model/model.safetensors.gz" >&2
    exit 1
  }
  echo "unzipped $minilm_model/model.safetensors.gz into $unpacked" >&2
  minilm_model="$unpacked"
fi
if [ ! -f "$minilm_model/config.json" ]; then
  echo "warning: no model at $minilm_model: the MiniLM GPU steps are skipped (set QTIER_GPU_MINILM_MODEL)" >&2
elif step 3; then
  if [ ! -x "$minilm_bin" ]; then
    echo "building $minilm_bin" >&2
    cargo build --release -p qtier-models --features cuda --example gpu_minilm >&2 || exit 1
  fi
  minilm_status=0
  timeout "$(limit 150)" "$minilm_bin" --model "$minilm_model" \
    ${QTIER_GPU_MINILM_ARTIFACT:+--artifact "$QTIER_GPU_MINILM_ARTIFACT"} \
    ${results:+--out "$results/minilm.jsonl"} "$@" || minilm_status=$?
  if [ "$minilm_status" -ne 0 ]; then
    echo "error: gpu_minilm exited with status $minilm_status" >&2
    status=$minilm_status
  fi
fi

qtier_bin="${QTIER_GPU_QTIER_BIN:-}"
if step 4 && [ -f "$minilm_model/config.json" ]; then
  if [ -z "$qtier_bin" ] || [ ! -x "$qtier_bin" ]; then
    echo "warning: step 4 skipped: set QTIER_GPU_QTIER_BIN to a qtier built with --features cuda" >&2
  else
    work="$scratch/step4"
    mkdir -p "$work"
    bench_dir="${results:-$work}"
    if timeout "$(limit 60)" "$qtier_bin" quantize "$minilm_model" --output "$work/minilm-int8" --json >"$work/quantize.json"; then
      # QTIER_GPU_BENCH_FLAGS replaces the workload (e.g. a short one to rehearse this step on the
      # libcuda shim, where a 128-token forward takes seconds).
      read -r -a bench_flags <<<"${QTIER_GPU_BENCH_FLAGS:---batch 1,8 --seq 128 --min-seconds 5 --max-seconds 15}"
      for variant in int8 float; do
        dir="$minilm_model"
        [ "$variant" = int8 ] && dir="$work/minilm-int8"
        bench_status=0
        timeout "$(limit 75)" "$qtier_bin" bench model "$dir" --device cuda "${bench_flags[@]}" \
          --json >"$bench_dir/bench-minilm-$variant-gpu.json" || bench_status=$?
        if [ "$bench_status" -ne 0 ]; then
          reason="exit status $bench_status"
          [ "$bench_status" -eq 124 ] && reason="timed out after $(limit 75) s"
          echo "error: qtier bench model --device cuda ($variant) failed: $reason" >&2
          status=1
        fi
      done
    else
      echo "error: qtier quantize failed:" >&2
      cat "$work/quantize.json" >&2
      status=1
    fi
  fi
fi
exit "$status"
