#!/usr/bin/env bash
# Side-by-side kernel comparison on this machine: `qtier bench kernels` (with candle's f32 and
# Q8_0 matmuls in the same process) interleaved with ONNX Runtime's int8 Linear
# (../shared/peers/ort_linear.py), A B A B, then one table of medians over the rounds.
#
# Setup once (outside the repository):
#   python3 -m venv /tmp/qtier-peers-venv && /tmp/qtier-peers-venv/bin/pip install onnxruntime==1.32.0 onnx numpy
# Usage: scripts/compare-kernels-ort.sh [rounds (default 2)] [threads (default 2)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
threads=${2:-2}
python=${QTIER_PEERS_PYTHON:-/tmp/qtier-peers-venv/bin/python}
peer_script=${QTIER_ORT_SCRIPT:-../shared/peers/ort_linear.py}
work=$(mktemp -d)
# The peer script leaves its ONNX models (~370 MB a run) in a temporary directory it never
# removes: give it one inside ours, and remove ours however this script ends.
trap 'rm -rf "$work"' EXIT
mkdir "$work/peer-tmp"
cargo build --release --quiet --bin qtier
for round in $(seq "$rounds"); do
  "${CARGO_TARGET_DIR:-target}"/release/qtier --threads "$threads" bench kernels --json > "$work/qtier-$round.json"
  TMPDIR="$work/peer-tmp" "$python" "$peer_script" --threads "$threads" --json "$work/ort-$round.json" > /dev/null
  rm -rf "$work/peer-tmp"/ort-peer-*
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
q = [json.load(open(f"{work}/qtier-{r}.json")) for r in range(1, rounds + 1)]
o = [json.load(open(f"{work}/ort-{r}.json")) for r in range(1, rounds + 1)]
med = statistics.median
print(f"kernel {q[0]['kernel']}, {q[0]['threads']} threads, hot weights, medians over {rounds} interleaved rounds; "
      f"int8 peak {med(r['limits']['int8_gops'] for r in q):.0f} GOP/s; ORT empty-run overhead "
      f"{med(r['overhead_us'] for r in o):.1f} us (subtracted)")
print("| shape | qtier µs | ORT int8/tensor µs | ORT int8/channel µs | candle f32 µs | candle Q8_0 µs | % of limit | qtier vs ORT | vs candle f32 | vs Q8_0 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for i, row in enumerate(q[0]["rows"]):
    qt = med(r["rows"][i]["median_us"] for r in q)
    pct = med(r["rows"][i]["percent_of_limit"] for r in q)
    f32 = med(r["rows"][i]["peers"]["candle_f32_median_us"] for r in q)
    q8 = med(r["rows"][i]["peers"]["candle_q8_0_median_us"] for r in q)
    ort_rows = [next(x for x in r["rows"] if x["shape"] == row["shape"]) for r in o]
    overhead = med(r["overhead_us"] for r in o)
    ort_t = med(x["int8_per_tensor"]["median_us"] for x in ort_rows) - overhead
    ort_c = med(x["int8_per_channel"]["median_us"] for x in ort_rows) - overhead
    print(f"| {row['shape']} | {qt:.1f} | {ort_t:.1f} | {ort_c:.1f} | {f32:.1f} | {q8:.1f} | {pct:.0f}% ({row['bound']}) | "
          f"{ort_t / qt:.2f}x | {f32 / qt:.1f}x | {q8 / qt:.2f}x |")
PY
