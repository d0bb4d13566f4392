#!/usr/bin/env bash
# False-alarm rate of the regression gate: for each pair, the same build is compared with itself,
# once as two plain consecutive runs (`qtier bench model` then `qtier compare`) and once
# interleaved (scripts/bench-ab.sh: alternating short runs pooled per side). Any exit status 3 is a
# false alarm. Each pair also checks that an injected 20% slowdown is caught by the interleaved gate.
#
# With QTIER_FP_NOISE=N, N busy-looping processes run beside the benchmarks for the whole script:
# a reproducible noisy neighbour (on a 2-core machine, N=1 takes about half of one core's time
# from the 2-thread benchmark, in bursts as the scheduler moves it).
#
# Usage: scripts/bench-compare-false-positives.sh [pairs (default 10)] [seq (default 32)]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-10}
seq=${2:-32}
work=$(mktemp -d)
noise_pids=()
trap 'kill "${noise_pids[@]}" 2> /dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq "${QTIER_FP_NOISE:-0}"); do
  (while :; do :; done) &
  noise_pids+=($!)
done
cargo build --release --quiet --bin qtier
qtier="${CARGO_TARGET_DIR:-$PWD/target}/release/qtier"
model=$($qtier test-model)
$qtier quantize "$model" -o "$work/int8" --json > /dev/null
export AWS_EC2_METADATA_DISABLED=true
bench() { $qtier --threads 2 bench model "$work/int8" --batch 1 --seq "$seq" --min-seconds 2 --json > "$1"; }
plain_alarms=0; ab_alarms=0; caught=0
for pair in $(seq "$pairs"); do
  bench "$work/a.json"; bench "$work/b.json"
  plain=0; $qtier compare "$work/a.json" "$work/b.json" > "$work/plain.txt" || plain=$?
  [ "$plain" -eq 3 ] && plain_alarms=$((plain_alarms + 1))
  ab=0; QTIER_AB_WORK=$work/ab scripts/bench-ab.sh "$qtier" "$qtier" "$work/int8" > "$work/ab.txt" 2>&1 || ab=$?
  [ "$ab" -eq 3 ] && ab_alarms=$((ab_alarms + 1))
  slow=0; QTIER_AB_WORK=$work/slow QTIER_AB_NEW_ENV="QTIER_BENCH_INJECT_SLOWDOWN=0.2" \
    scripts/bench-ab.sh "$qtier" "$qtier" "$work/int8" > /dev/null 2>&1 || slow=$?
  [ "$slow" -eq 3 ] && caught=$((caught + 1))
  echo "pair $pair: plain -> exit $plain ($(head -1 "$work/plain.txt" | cut -c15-60)); interleaved -> exit $ab ($(head -1 "$work/ab.txt" | cut -c15-60)); +20% interleaved -> exit $slow"
done
echo "noise: ${QTIER_FP_NOISE:-0} busy process(es); false alarms: plain consecutive runs $plain_alarms of $pairs, interleaved $ab_alarms of $pairs; injected 20% regressions caught (interleaved): $caught of $pairs"
