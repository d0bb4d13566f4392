#!/usr/bin/env bash
# Dynamic batching in `qtier serve`: throughput (requests/s) of the int8 all-MiniLM-L6-v2 artifact
# with 1 closed-loop client against 8, one text per request, measured side by side in alternating
# rounds (1, 8, 1, 8, ...) on one server, so drift of a shared machine hits both sides alike.
# Prints each round with the mean batch size the server ran (from /metrics), the median of each
# side and their ratio. The clients (`qtier bench server --concurrency N`) share the machine with
# the server.
#
#   scripts/bench-serve-batching.sh            # 3 rounds of 10 s per side
#   ROUNDS=5 SECONDS_PER_RUN=5 scripts/bench-serve-batching.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}

cargo build --release --quiet --bin qtier
QTIER="${CARGO_TARGET_DIR:-target}/release/qtier"
MODEL=$("$QTIER" test-model)
WORK=$(mktemp -d)
SERVER=""
cleanup() {
  if [[ -n "$SERVER" ]]; then
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$QTIER" quantize "$MODEL" -o "$WORK/minilm-int8" --json >/dev/null
"$QTIER" serve "$WORK/minilm-int8" --host 127.0.0.1 --port 0 2>"$WORK/serve.log" &
SERVER=$!

# GET PATH from the server with bash's /dev/tcp (no HTTP client needed); prints the response.
http_get() {
  local fd
  exec {fd}<>"/dev/tcp/127.0.0.1/$PORT"
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$1" >&"$fd"
  cat <&"$fd"
  exec {fd}>&-
}

PORT=""
for _ in $(seq 600); do
  PORT=$(sed -n 's|^listening on http://127.0.0.1:||p' "$WORK/serve.log")
  [[ -n "$PORT" ]] && break
  sleep 0.1
done
[[ -n "$PORT" ]] || { cat "$WORK/serve.log" >&2; echo "the server did not start" >&2; exit 1; }
until http_get /readyz 2>/dev/null | head -1 | grep -q ' 200 '; do
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
  sleep 0.2
done
URL="http://127.0.0.1:$PORT"

# qtier_batch_size_{sum,count} from /metrics, as "SUM COUNT".
batch_totals() {
  http_get /metrics | awk '/^qtier_batch_size_sum /{s=$2} /^qtier_batch_size_count /{c=$2} END{print s, c}'
}

# One closed-loop run with N clients; prints "QPS MEAN_BATCH".
run() {
  local before after
  before=$(batch_totals)
  "$QTIER" bench server "$URL" --concurrency "$1" --duration "$SECONDS_PER_RUN" --json >"$WORK/run.json"
  after=$(batch_totals)
  python3 - "$WORK/run.json" "$before" "$after" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
(s0, c0), (s1, c1) = (map(float, a.split()) for a in sys.argv[2:4])
assert not report["errors"], report["errors"]
print(f'{report["achieved_qps"]:.1f} {(s1 - s0) / max(c1 - c0, 1):.2f}')
EOF
}

echo "int8 all-MiniLM-L6-v2, one text per request, $SECONDS_PER_RUN s per run, $ROUNDS rounds, $(nproc) cores"
ONE=()
EIGHT=()
for round in $(seq "$ROUNDS"); do
  read -r qps batch < <(run 1)
  ONE+=("$qps")
  echo "round $round: 1 client:  $qps requests/s (mean batch $batch)"
  read -r qps batch < <(run 8)
  EIGHT+=("$qps")
  echo "round $round: 8 clients: $qps requests/s (mean batch $batch)"
done
python3 - "${ONE[*]}" "${EIGHT[*]}" <<'EOF'
import statistics, sys
one, eight = (statistics.median(map(float, side.split())) for side in sys.argv[1:3])
print(f"median: 1 client {one:.1f} requests/s, 8 clients {eight:.1f} requests/s, ratio {eight / one:.2f}x")
EOF
