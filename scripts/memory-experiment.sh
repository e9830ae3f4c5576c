#!/usr/bin/env bash
# The memory experiment: per-session state bytes (from the server) and the trunk's
# resident memory for the hybrid model vs its all-attention twin, holding M
# sessions at several context lengths. Both models have H-Tiny widths and the real
# 9:1 Mamba:attention ratio (10 layers, attention at layer 5); experts are reduced
# to 8 (state memory does not depend on them) so the files and prefill stay small.
#
#   bash scripts/memory-experiment.sh [contexts] [sessions]   e.g. "1024 8192" 2
#
# Writes docs/memory-experiment.md (table) and .cache/memexp/*.json (raw reports).
set -euo pipefail
cd "$(dirname "$0")/.."
CONTEXTS=${1:-"1024 8192"}
M=${2:-2}
BIN=bin/switchyard
OUT=.cache/memexp
CACHE=${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}
mkdir -p "$OUT"
go build -o "$BIN" ./cmd/switchyard
for kind in hybrid attention; do
  dir="$CACHE/memexp-$kind"
  if [ ! -f "$dir/model.safetensors" ]; then
    extra=""; [ "$kind" = attention ] && extra="--all-attention"
    "$BIN" synth --preset h-tiny --layers 10 --experts 8 --seed 1 $extra --out "$dir" >&2
  fi
done
rows=()
for L in $CONTEXTS; do
  for kind in hybrid attention; do
    dir="$CACHE/memexp-$kind"
    log="$OUT/trunk-$kind-$L.log"
    "$BIN" trunk --local-experts --model "$dir" --listen 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
      --max-context $((L + 64)) --recurrent-budget 68719476736 --kv-budget 68719476736 --max-step-tokens 1024 >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do grep -q ready "$log" && break; sleep 0.2; done
    addr=$(sed -n 's/.*ready on \(\S*\).*/\1/p' "$log")
    # The metrics address is the only other listening socket of the process.
    maddr=$(ss -ltnp 2>/dev/null | grep "pid=$pid," | awk '{print $4}' | grep -v "$addr" | head -1)
    "$BIN" loadtest --addr "$addr" --concurrency "$M" --requests "$M" --turns 1 --hold-sessions \
      --prompt-tokens "$L" --output-tokens 1 --timeout 2h --drain-timeout 2h --metrics "http://$maddr/metrics" \
      --json "$OUT/$kind-$L.json" --quiet >/dev/null
    sleep 1.5 # the trunk refreshes its memory gauges every second
    curl -s "http://$maddr/metrics" > "$OUT/$kind-$L.metrics"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rows+=("$kind $L")
  done
done
python3 - "$OUT" "$M" $CONTEXTS <<'PY'
import json, re, sys
out, M, ctxs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def gauge(text, name, label):
    m = re.search(r'^%s\{[^}]*kind="%s"[^}]*\} (\S+)' % (name, label), text, re.M)
    return float(m.group(1)) if m else 0.0
lines = ["| context | model | state / session (server) | recurrent | KV | trunk anon RSS | hybrid saving |", "|---|---|---|---|---|---|---|"]
for L in ctxs:
    per = {}
    for kind in ("hybrid", "attention"):
        rep = json.load(open(f"{out}/{kind}-{L}.json"))
        s = rep["sessions"]
        met = open(f"{out}/{kind}-{L}.metrics").read()
        per[kind] = (s["state_bytes"]["mean"], s["recurrent_bytes"]["mean"], s["kv_bytes"]["mean"], gauge(met, "switchyard_trunk_resident_bytes", "anon"))
    for kind in ("hybrid", "attention"):
        st, rec, kv, anon = per[kind]
        save = "" if kind == "attention" else "%.0f%%" % (100 * (1 - per["hybrid"][0] / per["attention"][0])) if per["attention"][0] else ""
        lines.append(f"| {L} | {kind} | {st/2**20:.1f} MiB | {rec/2**20:.1f} MiB | {kv/2**20:.1f} MiB | {anon/2**20:.0f} MiB ({M} sessions) | {save} |")
print("\n".join(lines))
PY
