#!/usr/bin/env bash
# Interleaved A/B benchmark for CI regression gates: the old and the new qtier binary measure the
# same model in alternating short runs (A B B A A B B A ...: a linear drift of the machine hits
# both sides alike), each side's runs are pooled with `qtier bench merge`, and `qtier compare`
# judges the pooled reports (exit status 3 on a significant regression).
#
# `qtier compare` then tests the run medians (one per run, exact Mann-Whitney): more, shorter runs
# spread a change of the machine's state over both sides and give the test more units.
#
# Usage: scripts/bench-ab.sh OLD_QTIER NEW_QTIER MODEL_DIR [rounds (default 8)] [extra bench flags...]
# Environment: QTIER_AB_SECONDS sets the minimum seconds of each run (default 0.25).
# Environment: QTIER_AB_NEW_ENV="VAR=value ..." is set for the new side only (e.g. the test-only
# QTIER_BENCH_INJECT_SLOWDOWN=0.2); QTIER_AB_WORK keeps the reports in that directory.
set -euo pipefail
old=$1; new=$2; model=$3; rounds=${4:-8}
seconds=${QTIER_AB_SECONDS:-0.25}
shift $(( $# < 4 ? $# : 4 ))
extra=("$@")
work=${QTIER_AB_WORK:-$(mktemp -d)}
mkdir -p "$work"
export AWS_EC2_METADATA_DISABLED=true
run() { # side binary round
  local side=$1 binary=$2 round=$3
  set -- "${extra[@]}"
  if [ "$side" = new ]; then
    env ${QTIER_AB_NEW_ENV:-} "$binary" --threads 2 bench model "$model" --batch 1 --seq 32 --tail 90 \
      --min-seconds "$seconds" --json "$@" > "$work/$side-$round.json" 2> /dev/null
  else
    "$binary" --threads 2 bench model "$model" --batch 1 --seq 32 --tail 90 \
      --min-seconds "$seconds" --json "$@" > "$work/$side-$round.json" 2> /dev/null
  fi
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    run old "$old" "$round"; run new "$new" "$round"
  else
    run new "$new" "$round"; run old "$old" "$round"
  fi
done
"$new" bench merge "$work"/old-*.json > "$work/old.json"
"$new" bench merge "$work"/new-*.json > "$work/new.json"
exec "$new" compare "$work/old.json" "$work/new.json"
