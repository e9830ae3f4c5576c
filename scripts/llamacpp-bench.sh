#!/usr/bin/env bash
# llamacpp-bench.sh: Switchyard against llama.cpp on the same GGUF files, same
# thread counts, same tests, run alternately, with the ratio ours/llama.cpp:
# prefill of a 512-token prompt, decode at batch 1, and batched decode of 8,
# 32 and 128 sessions (each session given a 4-token prompt, then one token per
# session per step; tokens/s = sessions x steps / time). Median of REPS
# repetitions after a warm-up, on both sides.
#
# llama.cpp is the prebuilt CPU build of node-llama-cpp on npm
# (@node-llama-cpp/linux-x64@3.21.1, llama.cpp commit 5b4ebc5), driven by our
# own C program (scripts/llamacpp-bench/bench.c) through its shared libraries,
# with the best AVX-512 CPU backend without AMX that loads here (zen4, else
# icelake, else skylakex), llama.cpp's default K/V type (f16) and flash
# attention setting (auto: on, on the CPU). Ours runs with its defaults (bf16
# KV cache). LLAMA_LIB may point at another llama.cpp build folder with the
# same libraries. Needs cc, and npm when the libraries are not there yet;
# without them it says so and stops (exit 0).
#
#   bash scripts/llamacpp-bench.sh [GGUF...]
#
# Without arguments the GGUFs are the synthesized H-Tiny 8-layer model
# (as make bench makes it) converted by `switchyard convert` to BF16, Q8_0 and
# llama.cpp's Q4_K_M mix, in $SWITCHYARD_CACHE (default ~/.cache/switchyard);
# missing ones are made.
# Environment: THREADS (default "1 2"), CONTEXTS (default none: context
# lengths C at which one session's decode is measured too, after a prompt of C
# tokens, on both sides; test decode_1_at_C, at every thread count), BATCHES (default 8,32,128),
# BATCHED_THREADS (the thread counts the batched sizes run at, default the
# last of THREADS: batched decode of this model reads nearly every expert per
# step, so it is the long part), PROMPT (512), STEPS (decode steps per
# measurement, 8), REPS (3), ROUNDS (times the whole alternation is repeated,
# default 1; with more, the table gives each side's median and the median of
# the rounds' ratios: on a shared machine one engine's block of minutes can
# meet a slow spell), TYPES (default
# "bf16 q8_0 q4_k_m"; also any type `switchyard convert` writes, and q3_k_m,
# q2_k, iq4_xs, iq4_nl and the i-quant mixes iq1_s, iq1_m, iq2_xxs, iq2_xs,
# iq2_s, iq2_m, iq3_xxs, iq3_s and iq3_m, which llama.cpp's
# llama_model_quantize makes from the BF16 file), BIN (our binary, default bin/switchyard), LLAMA_BACKEND
# (a libggml-cpu-*.so to use instead of the automatic choice), LOAD (how both
# sides hold the weights: copy, the default, reads them into each engine's
# own memory, ours by default and llama.cpp with load_mode none, as its
# --no-mmap; mmap reads them through the file's map on both, ours with
# --mmap and llama.cpp with load_mode mmap, its default), LOG (both
# sides' whole output, default $SWITCHYARD_CACHE/llamacpp-bench.log).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/switchyard}
CACHE=${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}
THREADS=${THREADS:-"1 2"}
BATCHED_THREADS=${BATCHED_THREADS:-${THREADS##* }}
BATCHES=${BATCHES:-8,32,128}
PROMPT=${PROMPT:-512}
STEPS=${STEPS:-8}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-1}
CONTEXTS=${CONTEXTS:-}
TYPES=${TYPES:-"bf16 q8_0 q4_k_m"}
NLC=@node-llama-cpp/linux-x64@3.21.1
LOG=${LOG:-$CACHE/llamacpp-bench.log}

if ! command -v cc >/dev/null; then
  echo "llamacpp-bench: no C compiler (cc): skipping the llama.cpp comparison"
  exit 0
fi
if [ -z "${LLAMA_LIB:-}" ]; then
  for d in /tmp/nlc/package/bins/linux-x64 "$CACHE/llamacpp/package/bins/linux-x64"; do
    if [ -f "$d/libllama.v0.4.0.so" ]; then LLAMA_LIB=$d; break; fi
  done
fi
if [ -z "${LLAMA_LIB:-}" ]; then
  if ! command -v npm >/dev/null; then
    echo "llamacpp-bench: llama.cpp's libraries are not here and npm is missing: skipping the llama.cpp comparison"
    exit 0
  fi
  mkdir -p "$CACHE/llamacpp"
  if ! (cd "$CACHE/llamacpp" && npm pack --silent "$NLC" >/dev/null && tar xzf node-llama-cpp-linux-x64-3.21.1.tgz); then
    echo "llamacpp-bench: could not fetch $NLC with npm: skipping the llama.cpp comparison"
    exit 0
  fi
  LLAMA_LIB=$CACHE/llamacpp/package/bins/linux-x64
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cc -O2 -Wall -o "$WORK/llamacpp-bench" scripts/llamacpp-bench/bench.c -L"$LLAMA_LIB" \
  -l:libllama.v0.4.0.so -l:libggml.v0.4.0.so -Wl,-rpath,"$LLAMA_LIB"
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/switchyard

MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  SRC=$CACHE/h-tiny-8L-bf16
  if [ ! -f "$SRC/model.safetensors" ]; then
    "$BIN" synth --preset h-tiny --layers 8 --dtype bf16 --seed 1 --out "$SRC"
  fi
  for t in $TYPES; do
    f=$CACHE/h-tiny-8L-$t.gguf
    if [ ! -f "$f" ]; then
      # Types `switchyard convert` does not write are made by llama.cpp's
      # own llama_model_quantize (scripts/llamacpp-golden/quantize_model.c)
      # from the BF16 GGUF.
      # The i-quants of 1 to 3 bits need an importance matrix: one of all
      # ones (quantize_imatrix.c; the speed does not depend on it).
      ftype=$(case $t in q3_k_m) echo 12 ;; q2_k) echo 10 ;; iq4_xs) echo 30 ;; iq4_nl) echo 25 ;;
        iq2_xxs) echo 19 ;; iq2_xs) echo 20 ;; iq3_xxs) echo 23 ;; iq1_s) echo 24 ;; iq3_s) echo 26 ;;
        iq3_m) echo 27 ;; iq2_s) echo 28 ;; iq2_m) echo 29 ;; iq1_m) echo 31 ;; esac)
      if [ -n "$ftype" ]; then
        bf=$CACHE/h-tiny-8L-bf16.gguf
        [ -f "$bf" ] || "$BIN" convert --model "$SRC" --type bf16 --out "$bf"
        tool=quantize_model
        case $t in iq[123]_*) tool=quantize_imatrix ;; esac
        cc -O1 -o "$WORK/$tool" scripts/llamacpp-golden/$tool.c -L"$LLAMA_LIB" -l:libllama.v0.4.0.so -l:libggml-base.so -Wl,-rpath,"$LLAMA_LIB"
        "$WORK/$tool" "$bf" "$f" "$ftype" >"$WORK/quantize-$t.log" 2>&1 || { tail -5 "$WORK/quantize-$t.log"; exit 1; }
      else
        "$BIN" convert --model "$SRC" --type "$t" --out "$f"
      fi
    fi
    MODELS+=("$f")
  done
fi

LLAMA_ARGS=(-p "$PROMPT" -n "$STEPS" -r "$REPS")
[ -n "${LLAMA_BACKEND:-}" ] && LLAMA_ARGS+=(-backend "$LLAMA_BACKEND")
OURS_ARGS=(--prompt "$PROMPT" --steps "$STEPS" --reps "$REPS" --lines)
case "${LOAD:-copy}" in
  copy) LLAMA_ARGS+=(-load none) ;;
  mmap) OURS_ARGS+=(--mmap); LLAMA_ARGS+=(-load mmap) ;;
  *) echo "llamacpp-bench: LOAD is copy or mmap, not ${LOAD}" >&2; exit 2 ;;
esac
batches() { # threads: the decode batch sizes measured at that thread count
  case " $BATCHED_THREADS " in *" $1 "*) echo "1,$BATCHES" ;; *) echo 1 ;; esac
}
RES=$WORK/results
mkdir -p "$(dirname "$LOG")"
: >"$RES"
: >"$LOG"
llama() { # model threads
  "$WORK/llamacpp-bench" -t "$2" -b "$(batches "$2")" "${LLAMA_ARGS[@]}" "$1" 2>"$WORK/llama.log" | tee -a "$LOG" |
    sed -n "s|^result |result model=$(basename "$1") |p" >>"$RES" || { tail -20 "$WORK/llama.log"; exit 1; }
}
ours() { # model threads
  "$BIN" bench --model "$1" --threads "$2" --batches "$(batches "$2")" "${OURS_ARGS[@]}" | tee -a "$LOG" |
    sed -n "s|^result |result model=$(basename "$1") |p" >>"$RES"
}
# One session's decode after a prompt of C tokens (no prefill test).
llama_at() { # model threads C
  "$WORK/llamacpp-bench" -t "$2" -b 1 -prompt "$3" "${LLAMA_ARGS[@]}" -p 0 "$1" 2>"$WORK/llama.log" | tee -a "$LOG" |
    sed -n "s|^result |result model=$(basename "$1") |p" >>"$RES" || { tail -20 "$WORK/llama.log"; exit 1; }
}
ours_at() { # model threads C
  "$BIN" bench --model "$1" --threads "$2" --batches 1 --context "$3" "${OURS_ARGS[@]}" --prompt 0 | tee -a "$LOG" |
    sed -n "s|^result |result model=$(basename "$1") |p" >>"$RES"
}
i=0
for round in $(seq "$ROUNDS"); do
  for m in "${MODELS[@]}"; do
    for th in $THREADS; do
      echo "== round $round, $(basename "$m"), $th thread(s) ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
      # Alternate which side goes first, so slow drifts do not favour either.
      if [ $((i % 2)) -eq 0 ]; then llama "$m" "$th"; ours "$m" "$th"; else ours "$m" "$th"; llama "$m" "$th"; fi
      for c in $CONTEXTS; do
        if [ $((i % 2)) -eq 0 ]; then llama_at "$m" "$th" "$c"; ours_at "$m" "$th" "$c"; else ours_at "$m" "$th" "$c"; llama_at "$m" "$th" "$c"; fi
      done
      i=$((i + 1))
    done
  done
done
grep -m1 '^# llama.cpp backend' "$LOG" | sed 's/, model [^,]*,/,/'
grep -m1 '^# CPU' "$LOG" || true
echo
echo "tokens/s, median of $REPS after a warm-up ($ROUNDS round(s)); ours = switchyard bench, llama.cpp = scripts/llamacpp-bench/bench.c (whole output: $LOG)"
python3 - "$RES" <<'PY'
import collections, re, statistics, sys
r = collections.OrderedDict()
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split()[1:])
    key = (f["model"], int(f["threads"]), f["test"])
    r.setdefault(key, {}).setdefault(f["engine"], []).append(float(f["tokens_per_s"]))
models = list(dict.fromkeys(k[0] for k in r))  # in the order they ran
def order(k):
    m = re.match(r"(prefill|decode)_(\d+)(?:_at_(\d+))?", k[2])
    return (models.index(k[0]), k[1], m.group(1) != "prefill", int(m.group(3) or 0), int(m.group(2)))
print("| model | threads | test | switchyard | llama.cpp | ours / llama.cpp |")
print("|---|---|---|---|---|---|")
for k in sorted(r, key=order):
    v = r[k]
    os_, ls = v.get("switchyard", []), v.get("llama.cpp", [])
    o = statistics.median(os_) if os_ else None
    l = statistics.median(ls) if ls else None
    # the rounds' ratios (the i-th measurement of each side ran next to each other)
    ratios = [a / b for a, b in zip(os_, ls)]
    ratio = "%.2f" % statistics.median(ratios) if ratios else ""
    if len(ratios) > 1:
        ratio += " (" + ", ".join("%.2f" % x for x in ratios) + ")"
    fmt = lambda x: "%.2f" % x if x is not None else "-"
    print(f"| {k[0]} | {k[1]} | {k[2]} | {fmt(o)} | {fmt(l)} | {ratio} |")
PY
