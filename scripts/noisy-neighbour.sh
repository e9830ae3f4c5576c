#!/usr/bin/env bash
# make bench: the inter-token latency of short sessions beside a long-prompt
# neighbour, with the prefill cap off (--decode-prefill-tokens 0: up to
# --max-step-tokens per step, the old behaviour) and at its default (128), and
# without the neighbour. One trunk with in-process experts on loopback.
set -u
cd "$(dirname "$0")/.."
B=${BIN:-bin/switchyard}
M=${NN_MODEL:-${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}/tiny-seed1}
PORT=${NN_PORT:-7090}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
run() { # cap neighbour
  local cap=$1 nb=$2
  $B trunk --local-experts --model "$M" --listen 127.0.0.1:$PORT --decode-prefill-tokens "$cap" --log-level error > "$OUT/trunk.out" 2>&1 &
  local tp=$!
  for _ in $(seq 150); do grep -q "ready on" "$OUT/trunk.out" && break; sleep 0.2; done
  local np=""
  if [ "$nb" = yes ]; then
    $B loadtest --addr 127.0.0.1:$PORT --concurrency 1 --prompt-tokens 2048 --output-tokens 1 --duration 40s > /dev/null 2>&1 &
    np=$!
    sleep 2
  fi
  $B loadtest --addr 127.0.0.1:$PORT --concurrency 4 --prompt-tokens 16 --output-tokens 32 --duration 20s --warmup 3s --json "$OUT/r.json" > /dev/null 2>&1
  [ -n "$np" ] && kill "$np" 2>/dev/null
  kill "$tp"; wait "$tp" 2>/dev/null
  python3 - "$OUT/r.json" "$cap" "$nb" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); i, t = r["itl"], r["ttft"]
print("  decode-prefill-tokens=%-4s neighbour=%-3s  ITL p50 %6.1f ms  p99 %6.1f ms  TTFT p50 %6.0f ms  completed %d"
      % (sys.argv[2], sys.argv[3], i["p50_ms"], i["p99_ms"], t["p50_ms"], r["counts"]["completed"]))
PY
}
[ -f "$M/model.safetensors" ] || "$B" synth --preset tiny --seed 1 --out "$M" > /dev/null
run 128 no
run 0 yes
run 128 yes
