#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine into one directory that fits one call of
# the device tool (64 MiB with the working tree), so the whole check runs on one machine start:
#   gpu_check.xz, gpu_minilm.xz   the examples of steps 1 and 3 (`--features cuda`), stripped;
#   qtier.xz                      the `--features cuda` qtier of step 4, stripped;
#   minilm/                       the all-MiniLM-L6-v2 copy of scripts/gpu/pruned_copy.py.
# About 49 MiB (xz takes the 31 MiB qtier to ~8). Then, on the GPU machine,
# `QTIER_GPU_PACK=DIR bash scripts/gpu-check.sh` (its header has the whole device call).
#
# Usage: scripts/gpu/pack.sh [--force] [DIR]   (DIR defaults to .gpu-pack, which git ignores)
# The model comes from QTIER_GPU_MINILM_SOURCE, else the cache `qtier test-model` fills; the copy
# needs numpy and tokenizers in QTIER_PYTHON (default python3). An existing DIR is replaced only
# with --force; the pack is built beside it and renamed into place.
set -euo pipefail
cd "$(dirname "$0")/../.."

force=0
dest=".gpu-pack"
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -*) echo "error: unknown flag $arg (usage: scripts/gpu/pack.sh [--force] [DIR])" >&2; exit 2 ;;
    *) dest="$arg" ;;
  esac
done
if [ -e "$dest" ] && [ "$force" -ne 1 ]; then
  echo "error: $dest exists; pass --force to replace it" >&2
  exit 1
fi

python="${QTIER_PYTHON:-python3}"
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release -p qtier-kernels --features cuda --example gpu_check
cargo build --release -p qtier-models --features cuda --example gpu_minilm
cargo build --release --features cuda --bin qtier
model="${QTIER_GPU_MINILM_SOURCE:-$("$target_dir/release/qtier" test-model)}"

partial="$(mktemp -d "$(dirname "$dest")/.gpu-pack-partial-XXXXXX")"
trap 'rm -rf "$partial"' EXIT
for binary in examples/gpu_check examples/gpu_minilm qtier; do
  name="$(basename "$binary")"
  strip -o "$partial/$name" "$target_dir/release/$binary"
  xz -9 -T0 "$partial/$name"
done
"$python" scripts/gpu/pruned_copy.py "$model" "$partial/minilm"

rm -rf "$dest"
mv "$partial" "$dest"
trap - EXIT
du -ab -d1 "$dest" | sort -k2 | awk '{printf "%8.1f MiB  %s\n", $1 / 1048576, $2}'
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -n1 | cut -f1)"
total=$(($(du -sb "$dest" | cut -f1) + tree_bytes))
echo "pack and working tree together: $((total / 1048576)) MiB of the device tool's 64 MiB"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "error: over the device tool's carry limit" >&2
  exit 1
fi
