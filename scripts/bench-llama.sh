#!/usr/bin/env bash
# Decoder latency of a synthetic Llama (random weights, real shapes), float vs qtier int8, on this
# machine: synth -> quantize -> `bench model` of the float checkpoint and the int8 artifact,
# alternating per round (A B A B), 2 threads, batch 1. Prints per variant the weights read per
# token, TTFT (prompt of --prompt-len tokens), TPOT, TPOT's memory-bandwidth bound and the
# percentage of it reached, and the int8-vs-float TPOT speedup (median of per-round medians).
#
# Usage: scripts/bench-llama.sh [preset (default 1b)] [prompt tokens (512)] [generated tokens (128)]
#                               [max seconds per run (60)] [rounds (1)]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-1b}
prompt=${2:-512}
gen=${3:-128}
seconds=${4:-60}
rounds=${5:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --bin qtier
# A copy, so rebuilding the workspace while this runs cannot swap the binary between runs.
cp "${CARGO_TARGET_DIR:-target}/release/qtier" "$work/qtier"
qtier=$work/qtier
export AWS_EC2_METADATA_DISABLED=true
$qtier synth --arch llama --preset "$preset" -o "$work/float"
$qtier quantize "$work/float" -o "$work/int8" --json > /dev/null
for round in $(seq "$rounds"); do
  for variant in float int8; do
    $qtier --threads 2 bench model "$work/$variant" --prompt-len "$prompt" --gen-len "$gen" \
      --min-seconds 1 --max-seconds "$seconds" --json > "$work/$variant-$round.json" 2> /dev/null
  done
done
python3 - "$work" "$rounds" "$preset" <<'PY'
import json, statistics, sys
work, rounds, preset = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tpot = {}
for variant in ("float", "int8"):
    reports = [json.load(open(f"{work}/{variant}-{r}.json")) for r in range(1, rounds + 1)]
    for r in reports:
        d = r["decoder"]
        w = {x["decoder_metric"]: x for x in r["workloads"]}
        print(f"{preset} {variant:5}: weights {d['weight_dtype']}, {d['weight_bytes_per_token'] / 1e9:.3f} GB/token; "
              f"TTFT (prompt {d['prompt_len']}) p50 {w['ttft']['stats']['p50'] / 1e6:.1f} ms over {w['ttft']['stats']['count']} runs; "
              f"TPOT p50 {w['tpot']['stats']['p50'] / 1e6:.2f} ms, p99 {w['tpot']['stats']['p99'] / 1e6:.2f} ms "
              f"({w['tpot']['stats']['count']} tokens); bound {d['tpot_bound_ms']:.2f} ms at {d['read_gb_per_s']:.1f} GB/s "
              f"-> {d['tpot_percent_of_bound']:.0f}% of bound")
    tpot[variant] = statistics.median(r["decoder"]["tpot_p50_ms"] for r in reports)
print(f"int8 TPOT speedup over float: {tpot['float'] / tpot['int8']:.2f}x "
      f"(median TPOT {tpot['float']:.2f} ms float, {tpot['int8']:.2f} ms int8; {rounds} round(s), 2 threads, batch 1)")
PY
