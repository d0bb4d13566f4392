#!/usr/bin/env bash
# False-positive rate of `qtier compare`: pairs of `qtier bench model` runs of the same build on
# the same model, each pair compared as baseline and candidate; any exit status 3 is a false
# alarm. Also checks that an injected 20% slowdown is caught in each pair.
#
# Usage: scripts/bench-compare-false-positives.sh [pairs (default 10)] [seq (default 32)]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-10}
seq=${2:-32}
work=$(mktemp -d)
cargo build --release --quiet --bin qtier
qtier=target/release/qtier
model=$($qtier test-model)
$qtier quantize "$model" -o "$work/int8" --json > /dev/null
export AWS_EC2_METADATA_DISABLED=true
bench() { $qtier --threads 2 bench model "$work/int8" --batch 1 --seq "$seq" --min-seconds 2 --json > "$1"; }
false_alarms=0
caught=0
for pair in $(seq "$pairs"); do
  bench "$work/a.json"
  bench "$work/b.json"
  QTIER_BENCH_INJECT_SLOWDOWN=0.2 bench "$work/slow.json" 2> /dev/null
  status=0; $qtier compare "$work/a.json" "$work/b.json" > "$work/ab.txt" || status=$?
  [ "$status" -eq 3 ] && false_alarms=$((false_alarms + 1))
  slow_status=0; $qtier compare "$work/b.json" "$work/slow.json" > /dev/null || slow_status=$?
  [ "$slow_status" -eq 3 ] && caught=$((caught + 1))
  echo "pair $pair: same build -> exit $status ($(cut -c1-120 "$work/ab.txt")); +20% -> exit $slow_status"
done
echo "false alarms: $false_alarms of $pairs pairs of the same build; injected 20% regressions caught: $caught of $pairs"
