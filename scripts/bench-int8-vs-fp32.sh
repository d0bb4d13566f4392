#!/usr/bin/env bash
# End-to-end latency of all-MiniLM-L6-v2, fp32 vs qtier int8, measured side by side on this
# machine: fp32 and int8 runs alternate (A B A B) per batch size, and the table gives the median of
# the per-run medians and their ratio, plus each run's peak RSS.
#
# Usage: scripts/bench-int8-vs-fp32.sh [rounds (default 2)] [seconds per run (default 5)] [batches (default 1,32)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
seconds=${2:-5}
batches=${3:-1,32}
work=$(mktemp -d)
cargo build --release --quiet --bin qtier
qtier="${CARGO_TARGET_DIR:-target}/release/qtier"
fp32=$($qtier test-model)
$qtier quantize "$fp32" -o "$work/int8" --json > /dev/null
export AWS_EC2_METADATA_DISABLED=true
for round in $(seq "$rounds"); do
  for batch in ${batches//,/ }; do
    for variant in fp32 int8; do
      dir=$fp32; [ "$variant" = int8 ] && dir=$work/int8
      /usr/bin/time -f "%M" -o "$work/rss-$variant-$batch-$round.txt" \
        $qtier --threads 2 bench model "$dir" --batch "$batch" --seq 128 --tail 50 --min-seconds "$seconds" --json \
        > "$work/$variant-$batch-$round.json" 2> /dev/null
    done
  done
done
python3 - "$work" "$rounds" "$batches" <<'PY'
import json, statistics, sys
work, rounds, batches = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
print("| batch x seq | fp32 p50 ms | int8 p50 ms | int8 speedup | fp32 peak RSS MiB | int8 peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|")
for batch in batches:
    row = {}
    for variant in ("fp32", "int8"):
        medians = [json.load(open(f"{work}/{variant}-{batch}-{r}.json"))["workloads"][0]["stats"]["p50"] / 1e6
                   for r in range(1, rounds + 1)]
        rss = [int(open(f"{work}/rss-{variant}-{batch}-{r}.txt").read().split()[-1]) / 1024 for r in range(1, rounds + 1)]
        row[variant] = (statistics.median(medians), max(rss))
    print(f"| {batch} x 128 | {row['fp32'][0]:.2f} | {row['int8'][0]:.2f} | {row['fp32'][0] / row['int8'][0]:.2f}x | "
          f"{row['fp32'][1]:.0f} | {row['int8'][1]:.0f} |")
PY
