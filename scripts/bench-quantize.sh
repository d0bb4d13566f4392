#!/usr/bin/env bash
# Throughput and peak memory of `qtier quantize` on a synthetic ~2 GB F16 Llama-like checkpoint,
# warm page cache. Prints input GB/s and peak RSS per run, and the median over runs.
#
# Usage: scripts/bench-quantize.sh [work-dir (default /tmp/qtier-bench-quantize)] [runs (default 3)]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/qtier-bench-quantize}
runs=${2:-3}
# Extra flags for qtier quantize, e.g. QUANTIZE_FLAGS=--sync to include flushing to disk.
QUANTIZE_FLAGS=${QUANTIZE_FLAGS:-}
cargo build --release --quiet --bin qtier --example make_synthetic_checkpoint -p qtier -p qtier-quantize
if [ ! -f "$work/input/model.safetensors.index.json" ]; then
  target/release/examples/make_synthetic_checkpoint "$work/input"
fi
cat "$work"/input/*.safetensors > /dev/null   # warm the page cache
for run in $(seq "$runs"); do
  sync   # start each run without write-back pending from the previous one
  /usr/bin/time -v "${CARGO_TARGET_DIR:-target}/release/qtier" quantize "$work/input" -o "$work/output" --force --json $QUANTIZE_FLAGS \
    > "$work/report-$run.json" 2> "$work/time-$run.txt"
done
python3 - "$work" "$runs" <<'PY'
import json, re, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
rates, rss = [], []
for run in range(1, runs + 1):
    report = json.load(open(f"{work}/report-{run}.json"))["totals"]
    time_text = open(f"{work}/time-{run}.txt").read()
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_text).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", time_text).group(1)
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
    gb = report["tensor_bytes_before"] / 1e9
    rates.append(gb / seconds)
    rss.append(rss_kib / 1024)
    print(f"run {run}: {gb:.3f} GB, wall {seconds:.2f} s = {gb / seconds:.2f} GB/s "
          f"(report: {report['seconds']:.2f} s before the final rename), peak RSS {rss_kib / 1024:.0f} MiB")
print(f"median over {runs} runs: {statistics.median(rates):.2f} GB/s (wall clock, process start to exit), "
      f"peak RSS {statistics.median(rss):.0f} MiB")
PY
