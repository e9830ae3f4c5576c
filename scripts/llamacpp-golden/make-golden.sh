#!/usr/bin/env bash
# make-golden.sh: regenerates the llama.cpp golden data of the quantized types
# (model/tensor/testdata/llamacpp/), the llama-quantize fixture with its
# llama.cpp logits (model/gguf/testdata/granite-tiny-q4_k_m.*), and llama.cpp's
# logits of the shared fixture with a BF16 KV cache
# (model/gguf/testdata/granite-tiny-kv-bf16*).
#
# It runs only where llama.cpp's shared libraries are present. It uses the
# prebuilt CPU build that node-llama-cpp publishes on npm
# (@node-llama-cpp/linux-x64@3.21.1: llama.cpp commit 5b4ebc5, libggml-base.so,
# libllama.so and the per-CPU ggml-cpu backends), so that nothing has to be
# built from llama.cpp's sources; LLAMA_LIB may point at any other llama.cpp
# build directory with the same libraries. Needs cc, npm and python3.
#
#   bash scripts/llamacpp-golden/make-golden.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${WORK:-$(mktemp -d)}
FIXTURE=${FIXTURE:-$ROOT/../shared/fixtures/granite-hybrid-tiny}
if [ -z "${LLAMA_LIB:-}" ]; then
  (cd "$WORK" && npm pack --silent @node-llama-cpp/linux-x64@3.21.1 >/dev/null && tar xzf node-llama-cpp-linux-x64-3.21.1.tgz)
  LLAMA_LIB=$WORK/package/bins/linux-x64
fi
SRC=$ROOT/scripts/llamacpp-golden
cc -O1 -Wall -o "$WORK/quant_golden" "$SRC/quant_golden.c" -L"$LLAMA_LIB" -l:libggml-base.so -Wl,-rpath,"$LLAMA_LIB" -lm
cc -O1 -Wall -o "$WORK/quantize_model" "$SRC/quantize_model.c" -L"$LLAMA_LIB" -l:libllama.v0.4.0.so -Wl,-rpath,"$LLAMA_LIB"
cc -O1 -Wall -o "$WORK/logits" "$SRC/logits.c" -L"$LLAMA_LIB" -l:libllama.v0.4.0.so -l:libggml.v0.4.0.so -Wl,-rpath,"$LLAMA_LIB"

# 1. Golden blocks of every quantized type.
mkdir -p model/tensor/testdata/llamacpp
"$WORK/quant_golden" model/tensor/testdata/llamacpp

# 2. The fixture quantized to Q4_K_M by llama_model_quantize (ftype 15), then
#    dequantized back to F32 by llama.cpp (ftype 0, allow_requantize), and
#    llama.cpp's logits for the first three golden prompts on the dequantized
#    weights (haswell CPU backend, 1 thread, F32 KV cache, no flash attention).
Q=model/gguf/testdata/granite-tiny-q4_k_m
"$WORK/quantize_model" "$FIXTURE/model.gguf" "$Q.gguf" 15 >"$WORK/quantize.log" 2>&1
"$WORK/quantize_model" "$Q.gguf" "$WORK/deq.gguf" 0 >"$WORK/dequantize.log" 2>&1
python3 - "$FIXTURE/golden.json" >"$WORK/prompts.txt" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
for p in g["prompts"][:3]:
    print(" ".join(map(str, p["token_ids"])))
PY
"$WORK/logits" "$WORK/deq.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts.txt" >"$WORK/logits.json" 2>"$WORK/logits.log"
python3 - "$FIXTURE/golden.json" "$WORK/logits.json" "$Q" <<'PY'
import json, struct, sys
g = json.load(open(sys.argv[1])); ll = json.load(open(sys.argv[2])); q = sys.argv[3]
buf = bytearray(); prompts = []
for p, rows in zip(g["prompts"][:3], ll):
    prompts.append({"name": p["name"], "token_ids": p["token_ids"], "offset": len(buf) // 4})
    for row in rows:
        buf += struct.pack("<%df" % len(row), *row)
open(q + ".logits.f32", "wb").write(buf)
idx = json.load(open(q + ".json"))
idx["prompts"] = prompts
open(q + ".json", "w").write(json.dumps(idx, indent=1) + "\n")
PY

# 3. llama.cpp's logits for the fixture itself (F32 weights) with a BF16 K/V
#    cache (ggml type 30), every prompt of golden.json, and 16 greedy tokens per
#    prompt (each fed back with its own llama_decode): the references of the
#    engine's default bf16 KV cache. Haswell backend, 1 thread, whole prompt in
#    one llama_decode; flash attention off (as golden.json: with -kv f32 the same
#    run gives its logits exactly) and on (llama.cpp's CPU default; its
#    attention then keeps the softmax in float32 as ours does).
python3 - "$FIXTURE/golden.json" >"$WORK/prompts-all.txt" <<'PY'
import json, sys
for p in json.load(open(sys.argv[1]))["prompts"]:
    print(" ".join(map(str, p["token_ids"])))
PY
for FA in off on; do
  K=model/gguf/testdata/granite-tiny-kv-bf16
  FLAG=
  if [ $FA = on ]; then K=$K-fa; FLAG=-fa; fi
  "$WORK/logits" -kv bf16 $FLAG -greedy 16 "$FIXTURE/model.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts-all.txt" >"$WORK/logits-kv-bf16-fa-$FA.json" 2>"$WORK/logits-kv-bf16-fa-$FA.log"
  python3 - "$FIXTURE/golden.json" "$WORK/logits-kv-bf16-fa-$FA.json" "$K" $FA <<'PY'
import json, struct, sys
g = json.load(open(sys.argv[1])); ll = json.load(open(sys.argv[2])); k = sys.argv[3]; fa = sys.argv[4]
buf = bytearray(); prompts = []
for p, r in zip(g["prompts"], ll):
    prompts.append({"name": p["name"], "token_ids": p["token_ids"], "offset": len(buf) // 4,
                    "greedy_new_token_ids": r["greedy"]})
    for row in r["logits"]:
        buf += struct.pack("<%df" % len(row), *row)
open(k + ".logits.f32", "wb").write(buf)
idx = {
    "model": "granite-hybrid-tiny/model.gguf (the shared fixture)",
    "vocab_size": g["vocab_size"],
    "logits_file": k.rsplit("/", 1)[1] + ".logits.f32",
    "logits_layout": "float32 little-endian, [position][vocab] per prompt, starting at float index offset; logit of every token after every prompt position, divided by logits_scaling",
    "reference": "llama.cpp (ggml-org/llama.cpp 5b4ebc5, as built in node-llama-cpp 3.21.1's @node-llama-cpp/linux-x64 prebuilt) evaluating the shared fixture granite-hybrid-tiny/model.gguf (F32 weights) with a BF16 K/V cache (type_k = type_v = GGML_TYPE_BF16): CPU haswell variant, 1 thread, flash attention %s, whole prompt in one llama_decode; greedy_new_token_ids: 16 tokens by argmax from the state after the prompt, each fed back with one llama_decode" % fa,
    "kv_type": "bf16",
    "flash_attn": fa == "on",
    "prompts": prompts,
}
open(k + ".json", "w").write(json.dumps(idx, indent=1) + "\n")
PY
done
echo "wrote model/tensor/testdata/llamacpp, $Q.{gguf,json,logits.f32} and model/gguf/testdata/granite-tiny-kv-bf16{,-fa}.{json,logits.f32} (work files in $WORK)"
