#!/usr/bin/env bash
# make bench: the prefix cache on a shared-system-prompt workload. PC_REQUESTS
# stateless requests (default 1000), each a PC_PREFIX-token system prompt
# shared by all (default 2048) and its own PC_USER-token user turn (default
# 100), PC_OUTPUT tokens out (default 16), PC_CONCURRENCY at a time (default
# 4), against one trunk with in-process experts, with the prefix cache off and
# then on (PC_CACHE_BYTES, default 256 MiB). Prints TTFT p50/p99, the prompt
# tokens the trunk prefilled, throughput and the checkpoints' memory, and the
# ratios. The model defaults to the tiny synthesized one (PC_MODEL overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BIN:-bin/switchyard}
M=${PC_MODEL:-${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}/tiny-seed1}
REQUESTS=${PC_REQUESTS:-1000}
PREFIX=${PC_PREFIX:-2048}
USER_TOKENS=${PC_USER:-100}
OUTPUT=${PC_OUTPUT:-16}
CONC=${PC_CONCURRENCY:-4}
CACHE_BYTES=${PC_CACHE_BYTES:-268435456}
PORT=${PC_PORT:-7095}
MPORT=${PC_METRICS_PORT:-7096}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
if ! { "$B" loadtest -h 2>&1 || true; } | grep -q -- '-shared-prefix'; then
  echo "prefix-cache-bench: $B loadtest has no --shared-prefix flag (internal/cli/loadtest.go must register loadtest.Config.SharedPrefix)" >&2
  exit 1
fi
[ -f "$M/model.safetensors" ] || [ -f "$M" ] || "$B" synth --preset tiny --seed 1 --out "$M" > /dev/null
run() { # cache-bytes name
  local bytes=$1 name=$2
  "$B" trunk --local-experts --model "$M" --listen 127.0.0.1:$PORT --metrics-addr 127.0.0.1:$MPORT \
    --max-context $((PREFIX + USER_TOKENS + OUTPUT + 64)) --prefix-cache-bytes "$bytes" --log-level error > "$OUT/trunk-$name.out" 2>&1 &
  local tp=$!
  for _ in $(seq 150); do grep -q "ready on" "$OUT/trunk-$name.out" && break; sleep 0.2; done
  local t0=$SECONDS
  "$B" loadtest --addr 127.0.0.1:$PORT --concurrency "$CONC" --requests "$REQUESTS" --prompt-tokens "$USER_TOKENS" \
    --shared-prefix "$PREFIX" --output-tokens "$OUTPUT" --metrics "http://127.0.0.1:$MPORT/metrics" --quiet \
    --json "$OUT/$name.json" > "$OUT/$name.txt"
  echo "  cache $name: $((SECONDS - t0)) s"
  kill "$tp"; wait "$tp" 2>/dev/null || true
}
echo "== prefix cache: $REQUESTS requests, $PREFIX shared + $USER_TOKENS own prompt tokens, $OUTPUT out, concurrency $CONC, model $M"
run 0 off
run "$CACHE_BYTES" on
python3 - "$OUT/off.json" "$OUT/on.json" <<'PY'
import json, sys
def load(p):
    r = json.load(open(p))
    series = {}
    for s in (r.get("metrics") or {}).get("series") or []:
        series[(s["name"], s.get("labels", ""))] = s
    def after(name, label=""):
        for (n, l), s in series.items():
            if n == name and label in l:
                return s["after"]
        return 0.0
    def delta(name):
        return sum(s["delta"] for (n, _), s in series.items() if n == name)
    return r, after, delta
off, off_after, off_delta = load(sys.argv[1])
on, on_after, on_delta = load(sys.argv[2])
MiB = 1 << 20
def line(name, r, after, delta):
    t, tp = r["ttft"], r["throughput"]
    print("  %-4s TTFT p50 %8.1f ms  p99 %8.1f ms  prefilled %9d of %9d prompt tokens  %6.2f req/s  completed %d failed %d"
          % (name, t["p50_ms"], t["p99_ms"], tp["prefill_tokens"], tp["prompt_tokens"], tp["requests_per_sec"],
             r["counts"]["completed"], r["counts"]["failed"]))
line("off", off, off_after, off_delta)
line("on", on, on_after, on_delta)
look, hits = on_delta("switchyard_prefix_cache_lookups_total"), on_delta("switchyard_prefix_cache_hits_total")
rec, kv = on_after("switchyard_prefix_cache_bytes", 'kind="recurrent"'), on_after("switchyard_prefix_cache_bytes", 'kind="kv"')
print("  on:  hit rate %.3f (%d of %d lookups), %d tokens saved, %d checkpoints (%d evicted), holding %.2f MiB (recurrent %.2f, kv %.2f)"
      % (hits / look if look else 0, hits, look, on_delta("switchyard_prefix_cache_saved_tokens_total"),
         on_after("switchyard_prefix_cache_entries"), on_delta("switchyard_prefix_cache_evictions_total"), (rec + kv) / MiB, rec / MiB, kv / MiB))
print("  trunk resident memory after the run: off %.1f MiB, on %.1f MiB (anon)"
      % (off_after("switchyard_trunk_resident_bytes", 'kind="anon"') / MiB, on_after("switchyard_trunk_resident_bytes", 'kind="anon"') / MiB))
ratio = lambda a, b: a / b if b else float("inf")
print("  ratios off/on: TTFT p50 %.2fx  TTFT p99 %.2fx  prefilled tokens %.2fx;  throughput on/off %.2fx"
      % (ratio(off["ttft"]["p50_ms"], on["ttft"]["p50_ms"]), ratio(off["ttft"]["p99_ms"], on["ttft"]["p99_ms"]),
         ratio(off["throughput"]["prefill_tokens"], on["throughput"]["prefill_tokens"]),
         ratio(on["throughput"]["requests_per_sec"], off["throughput"]["requests_per_sec"])))
PY
