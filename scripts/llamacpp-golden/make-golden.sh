#!/usr/bin/env bash
# make-golden.sh: regenerates the llama.cpp golden data of the quantized types
# (model/tensor/testdata/llamacpp/), the llama-quantize fixture with its
# llama.cpp logits (model/gguf/testdata/granite-tiny-q4_k_m.*), and llama.cpp's
# logits of the shared fixture with a BF16 KV cache
# (model/gguf/testdata/granite-tiny-kv-bf16*), and a Q4_K_M model with widths
# of multiples of 256 with llama.cpp's logits on it, quantized weights as they
# are (model/gguf/testdata/granite-h256-q4_k_m.*), and llama.cpp's logits of
# the fixture with BF16 weight matrices, evaluated as they are
# (model/gguf/testdata/granite-tiny-bf16.*), and the fixture quantized to Q8_0
# with llama.cpp's logits on that file as it is
# (model/gguf/testdata/granite-tiny-q8_0.*).
#
# It runs only where llama.cpp's shared libraries are present. It uses the
# prebuilt CPU build that node-llama-cpp publishes on npm
# (@node-llama-cpp/linux-x64@3.21.1: llama.cpp commit 5b4ebc5, libggml-base.so,
# libllama.so and the per-CPU ggml-cpu backends), so that nothing has to be
# built from llama.cpp's sources; LLAMA_LIB may point at any other llama.cpp
# build directory with the same libraries. Needs cc, npm, python3 and go.
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
cc -O1 -Wall -o "$WORK/quantize_imatrix" "$SRC/quantize_imatrix.c" -L"$LLAMA_LIB" -l:libllama.v0.4.0.so -l:libggml-base.so -Wl,-rpath,"$LLAMA_LIB"
cc -O1 -Wall -o "$WORK/logits" "$SRC/logits.c" -L"$LLAMA_LIB" -l:libllama.v0.4.0.so -l:libggml.v0.4.0.so -Wl,-rpath,"$LLAMA_LIB"

# 1. Golden blocks of every quantized type, and the lattice tables of the
#    i-quants of 1 to 3 bits read out of llama.cpp's decoding.
mkdir -p model/tensor/testdata/llamacpp
"$WORK/quant_golden" model/tensor/testdata/llamacpp
cc -O1 -Wall -o "$WORK/iq_grids" "$SRC/iq_grids.c" -L"$LLAMA_LIB" -l:libggml-base.so -Wl,-rpath,"$LLAMA_LIB" -lm
"$WORK/iq_grids" >model/tensor/iqgrids.go
gofmt -w model/tensor/iqgrids.go

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
# 3b. A Q8_0 K/V cache (ggml type 8) on the fixture with attention heads of 32
#    (num_attention_heads 2, num_key_value_heads 1: the same tensors, the head
#    counts divide the same widths differently; q8_0 blocks are 32 values, and
#    the fixture's heads are 16), F32 weights, every golden prompt and 16
#    greedy tokens: with flash attention (llama.cpp keeps a quantized V cache
#    only with it), and the F32 cache without it as the exact baseline.
#    hybrid.TestLlamaCppKVQ80 builds the same model from the fixture's hf
#    folder the same way.
rm -rf "$WORK/hd32" && cp -r "$FIXTURE/hf" "$WORK/hd32" && chmod -R u+w "$WORK/hd32"
python3 - "$WORK/hd32/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["num_attention_heads"], c["num_key_value_heads"] = 2, 1
json.dump(c, open(sys.argv[1], "w"))
PY
go build -o "$WORK/switchyard" ./cmd/switchyard
"$WORK/switchyard" convert --model "$WORK/hd32" --type f32 --out "$WORK/granite-tiny-hd32.gguf" >/dev/null 2>&1
for KV in q8_0 f32; do
  K=model/gguf/testdata/granite-tiny-hd32
  FLAG=
  if [ $KV = q8_0 ]; then K=$K-kv-q8_0-fa; FLAG=-fa; fi
  "$WORK/logits" -kv $KV $FLAG -greedy 16 "$WORK/granite-tiny-hd32.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts-all.txt" >"$WORK/logits-hd32-$KV.json" 2>"$WORK/logits-hd32-$KV.log"
  python3 - "$FIXTURE/golden.json" "$WORK/logits-hd32-$KV.json" "$K" $KV <<'PY'
import json, struct, sys
g = json.load(open(sys.argv[1])); ll = json.load(open(sys.argv[2])); k = sys.argv[3]; kv = sys.argv[4]
how = {"q8_0": "a Q8_0 K/V cache (type_k = type_v = GGML_TYPE_Q8_0, which needs flash attention): CPU haswell variant, 1 thread, flash attention on",
       "f32": "an F32 K/V cache: CPU haswell variant, 1 thread, flash attention off"}[kv]
buf = bytearray(); prompts = []
for p, r in zip(g["prompts"], ll):
    prompts.append({"name": p["name"], "token_ids": p["token_ids"], "offset": len(buf) // 4, "greedy_new_token_ids": r["greedy"]})
    for row in r["logits"]:
        buf += struct.pack("<%df" % len(row), *row)
open(k + ".logits.f32", "wb").write(buf)
idx = {
    "model": "granite-tiny-hd32 (made by the test: the shared fixture's hf folder with num_attention_heads 2 and num_key_value_heads 1, converted to an F32 GGUF)",
    "vocab_size": len(ll[0]["logits"][0]),
    "logits_file": k.rsplit("/", 1)[1] + ".logits.f32",
    "logits_layout": "float32 little-endian, [position][vocab] per prompt, starting at float index offset; logit of every token after every prompt position, divided by logits_scaling",
    "reference": "llama.cpp (ggml-org/llama.cpp 5b4ebc5, as built in node-llama-cpp 3.21.1's @node-llama-cpp/linux-x64 prebuilt) evaluating granite-tiny-hd32.gguf (F32 weights) with " + how + ", whole prompt in one llama_decode; greedy_new_token_ids: 16 tokens by argmax from the state after the prompt, each fed back with one llama_decode",
    "prompts": prompts,
}
open(k + ".json", "w").write(json.dumps(idx, indent=1) + "\n")
PY
done
# write_direct_ref PREFIX LOGITS_JSON WEIGHTS: PREFIX.logits.f32 and the index
# PREFIX.json from the output of `logits` on PREFIX.gguf for the first three
# golden prompts (haswell, 1 thread, F32 KV cache, no flash attention);
# WEIGHTS says what llama.cpp did with the file's weights.
write_direct_ref() {
  python3 - "$FIXTURE/golden.json" "$2" "$1" "$3" <<'PY'
import json, struct, sys
g = json.load(open(sys.argv[1])); ll = json.load(open(sys.argv[2])); q = sys.argv[3]; weights = sys.argv[4]
buf = bytearray(); prompts = []
for p, rows in zip(g["prompts"][:3], ll):
    prompts.append({"name": p["name"], "token_ids": p["token_ids"], "offset": len(buf) // 4})
    for row in rows:
        buf += struct.pack("<%df" % len(row), *row)
open(q + ".logits.f32", "wb").write(buf)
name = q.rsplit("/", 1)[1]
idx = {
    "model": name + ".gguf",
    "vocab_size": len(ll[0][0]),
    "logits_file": name + ".logits.f32",
    "logits_layout": "float32 little-endian, [position][vocab] per prompt, starting at float index offset; logit of every token after every prompt position, divided by logits_scaling",
    "reference": "llama.cpp (ggml-org/llama.cpp 5b4ebc5, as built in node-llama-cpp 3.21.1's @node-llama-cpp/linux-x64 prebuilt) evaluating " + name + ".gguf directly (" + weights + "): CPU haswell variant, 1 thread, F32 KV cache, flash attention off, whole prompt in one llama_decode",
    "prompts": prompts,
}
open(q + ".json", "w").write(json.dumps(idx, indent=1) + "\n")
PY
}

# 4. A model whose matrix widths are all multiples of 256, so that llama.cpp's
#    Q4_K_M keeps Q4_K and Q6_K (no fallbacks) and Switchyard's 8-bit
#    activations (kernels.SetQ8Activations) apply to every quantized matrix:
#    hidden 256, 4 layers (mamba, attention, mamba, mamba), 3 experts top-2
#    with intermediate 256, shared expert 256, mamba 8 heads x 64 with state
#    64, 4 attention heads x 64 (2 KV heads), vocab 512, random F32 weights
#    drawn the way model/synth draws them (its splitmix64 streams and
#    per-tensor scales, seed 1; computed in float64 here, so a value may differ
#    from synth's in the last bit). `switchyard synth` writes the
#    tokenizer files (its presets have no such widths); the Python below
#    rewrites config.json and model.safetensors; `switchyard convert --type
#    f32` makes the GGUF; llama_model_quantize makes it Q4_K_M (ftype 15).
#    llama.cpp then evaluates the Q4_K_M file directly, without dequantizing
#    (its CPU matmuls quantize the activations to Q8_K for these weight types,
#    as Switchyard's 8-bit activations do): the first three golden prompts,
#    haswell CPU backend, 1 thread, F32 KV cache, no flash attention.
G=model/gguf/testdata/granite-h256-q4_k_m
go build -o "$WORK/switchyard" ./cmd/switchyard
rm -rf "$WORK/h256"
"$WORK/switchyard" synth --preset tiny --layers 4 --vocab 512 --dtype f32 --seed 1 --out "$WORK/h256" >/dev/null 2>&1
python3 - "$WORK/h256" 1 <<'PY'
import json, math, struct, sys
d, seed = sys.argv[1], int(sys.argv[2])
M = (1 << 64) - 1
cfg = json.load(open(d + "/config.json"))
cfg.update({"hidden_size": 256, "intermediate_size": 256, "shared_intermediate_size": 256,
            "num_local_experts": 3, "num_experts_per_tok": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "mamba_n_heads": 8, "mamba_d_head": 64, "mamba_d_state": 64, "mamba_chunk_size": 64,
            "layer_types": ["mamba", "attention", "mamba", "mamba"], "num_hidden_layers": 4})
json.dump(cfg, open(d + "/config.json", "w"), indent=2)
H, V, E, I, S = cfg["hidden_size"], cfg["vocab_size"], cfg["num_local_experts"], cfg["intermediate_size"], cfg["shared_intermediate_size"]
din, nh, ds, ng = 2 * H, cfg["mamba_n_heads"], cfg["mamba_d_state"], cfg["mamba_n_groups"]
hd = H // cfg["num_attention_heads"]
qd, kvd, cd, ipd = H, cfg["num_key_value_heads"] * hd, din + 2 * ng * ds, 2 * din + 2 * ng * ds + nh
fan = lambda n: 1 / math.sqrt(n)
specs = []
add = lambda name, shape, std=0.0, mean=0.0, kind=0: specs.append((name, shape, std, mean, kind))
add("model.embed_tokens.weight", [V, H], 0.02)
fs = 3 * cfg["logits_scaling"] / (math.sqrt(H) * 0.02)
add("model.norm.weight", [H], fs * 0.05, fs)
for i, lt in enumerate(cfg["layer_types"]):
    p = "model.layers.%d." % i
    add(p + "input_layernorm.weight", [H], 0.05, 1)
    add(p + "post_attention_layernorm.weight", [H], 0.05, 1)
    if lt == "mamba":
        add(p + "mamba.in_proj.weight", [ipd, H], fan(H))
        add(p + "mamba.conv1d.weight", [cd, 1, 4], fan(4))
        add(p + "mamba.conv1d.bias", [cd], 0.1)
        add(p + "mamba.dt_bias", [nh], kind=2)
        add(p + "mamba.A_log", [nh], kind=1)
        add(p + "mamba.D", [nh], 0.1, 1)
        add(p + "mamba.norm.weight", [din], 0.05, 1)
        add(p + "mamba.out_proj.weight", [H, din], 2 * fan(din))
    else:
        add(p + "self_attn.q_proj.weight", [qd, H], 3 * fan(H))
        add(p + "self_attn.k_proj.weight", [kvd, H], 3 * fan(H))
        add(p + "self_attn.v_proj.weight", [kvd, H], fan(H))
        add(p + "self_attn.o_proj.weight", [H, qd], 2 * fan(qd))
    add(p + "block_sparse_moe.router.layer.weight", [E, H], 4 * fan(H))
    add(p + "block_sparse_moe.input_linear.weight", [E, 2 * I, H], fan(H))
    add(p + "block_sparse_moe.output_linear.weight", [E, H, I], 2 * fan(I))
    add(p + "shared_mlp.input_linear.weight", [2 * S, H], fan(H))
    add(p + "shared_mlp.output_linear.weight", [H, S], 2 * fan(S))

def splitmix64(x):
    x = (x + 0x9e3779b97f4a7c15) & M
    x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & M
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & M
    return x ^ (x >> 31)

def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]

def values(idx, n, std, mean, kind):
    base = splitmix64(((seed * 0x100000001b3) & M) ^ idx)
    r6 = f32(math.sqrt(6))
    out = []
    for i in range(n):
        r = splitmix64((base + i) & M)
        u = (r >> 40) / 16777216.0
        if kind == 1:
            out.append(math.log(1 + 15 * u))
        elif kind == 2:
            dt = math.exp(math.log(0.001) + u * (math.log(0.1) - math.log(0.001)))
            out.append(dt + math.log(-math.expm1(-dt)))
        else:
            out.append(mean + std * ((u + (r & 0xffffff) / 16777216.0 - 1) * r6))
    return out

hdr, off = {"__metadata__": {"format": "pt", "generator": "make-golden.sh gen256"}}, 0
for name, shape, *_ in specs:
    n = math.prod(shape)
    hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + 4 * n]}
    off += 4 * n
h = json.dumps(hdr, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(d + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for idx, (name, shape, std, mean, kind) in enumerate(specs):
        v = values(idx, math.prod(shape), std, mean, kind)
        f.write(struct.pack("<%df" % len(v), *v))
print("params", sum(math.prod(s[1]) for s in specs))
PY
"$WORK/switchyard" convert --model "$WORK/h256" --type f32 --out "$WORK/h256-f32.gguf" >/dev/null 2>&1
"$WORK/quantize_model" "$WORK/h256-f32.gguf" "$G.gguf" 15 >"$WORK/quantize-h256.log" 2>&1
if grep "converting to" "$WORK/quantize-h256.log" | grep -vqE "converting to q[46]_K "; then
  echo "$G.gguf: llama.cpp fell back from Q4_K/Q6_K" >&2; exit 1
fi
"$WORK/logits" "$G.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts.txt" >"$WORK/logits-h256.json" 2>"$WORK/logits-h256.log"
write_direct_ref "$G" "$WORK/logits-h256.json" "Q4_K and Q6_K weights, not dequantized: its CPU matmuls quantize the activations to Q8_K; its default CPU_REPACK buffer type repacks the Q4_K matrices to q4_K_8x8"

# 4b. The same h256 model quantized by llama_model_quantize to Q3_K_M (ftype
#    12: Q3_K for most matrices, Q4_K/Q5_K for attn_v, ffn_down and
#    attn_output, Q6_K for the LM head), to Q2_K (ftype 10: Q2_K, with
#    Q3_K/Q4_K where llama.cpp's mix puts them) and to IQ4_XS (ftype 30: IQ4_XS,
#    with Q5_K/Q6_K where llama.cpp's mix puts them), each evaluated directly by
#    llama.cpp as step 4 does (its CPU matmuls quantize the activations to
#    Q8_K for these weights, as Switchyard's integer kernels do). Then to
#    Q4_1 (ftype 3) and Q5_1 (9), with the pure parameter (llama.cpp's mixes
#    put the LM head in Q6_K): for these llama.cpp quantizes the activations
#    to q8_1 (8 bits per 32 values, with the block's sum), as Switchyard's
#    integer kernels for them do (the Q8_0 family's activations). Then to
#    Q5_K_M (ftype 17: Q5_K, with Q6_K where llama.cpp's mix puts it) and
#    Q6_K (18: every matrix Q6_K), evaluated the same way.
for LB in "12 q3_k_m" "10 q2_k" "30 iq4_xs" "3 q4_1 pure" "9 q5_1 pure" "17 q5_k_m" "18 q6_k"; do
  set -- $LB
  L=model/gguf/testdata/granite-h256-$2
  "$WORK/quantize_model" "$WORK/h256-f32.gguf" "$L.gguf" "$1" ${3:-} >"$WORK/quantize-h256-$2.log" 2>&1
  if grep "converting to" "$WORK/quantize-h256-$2.log" | grep -vqE "converting to (q[2-6]_K|iq4_xs|q[45]_1) "; then
    echo "$L.gguf: llama.cpp fell back to another type" >&2; exit 1
  fi
  act=Q8_K
  case $2 in q[45]_1) act="q8_1, 8 bits per 32 values" ;; esac
  "$WORK/logits" "$L.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts.txt" >"$WORK/logits-h256-$2.json" 2>"$WORK/logits-h256-$2.log"
  write_direct_ref "$L" "$WORK/logits-h256-$2.json" "$(grep -o "converting to [a-zA-Z0-9_]*" "$WORK/quantize-h256-$2.log" | sort | uniq -c | awk '{printf "%s%d %s", (NR>1?", ":""), $1, toupper($4)}') matrices, not dequantized: its CPU matmuls quantize the activations to $act"
done

# 4c. The h256 model in llama.cpp's i-quant mixes of 1 to 3 bits, made by
#    llama_model_quantize with an importance matrix of all ones (which these
#    types require; quantize_imatrix.c): IQ2_XXS (ftype 19: IQ2_XXS, with
#    Q2_K and Q5_K where the mix puts them), IQ2_S (28: IQ2_XS and IQ3_S),
#    IQ3_XXS (23: IQ3_XXS, IQ2_S and IQ3_S), IQ1_S (24: IQ1_S and IQ2_XXS)
#    and IQ1_M (31: IQ1_M and IQ2_XXS); together every i-quant type. Each is
#    evaluated directly by llama.cpp as step 4 does (its CPU matmuls quantize
#    the activations to Q8_K for these weights).
for LB in "19 iq2_xxs" "28 iq2_s" "23 iq3_xxs" "24 iq1_s" "31 iq1_m"; do
  set -- $LB
  L=model/gguf/testdata/granite-h256-$2
  "$WORK/quantize_imatrix" "$WORK/h256-f32.gguf" "$L.gguf" "$1" >"$WORK/quantize-h256-$2.log" 2>&1
  "$WORK/logits" "$L.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts.txt" >"$WORK/logits-h256-$2.json" 2>"$WORK/logits-h256-$2.log"
  write_direct_ref "$L" "$WORK/logits-h256-$2.json" "$(grep -o "converting to [a-zA-Z0-9_]*" "$WORK/quantize-h256-$2.log" | sort | uniq -c | awk '{printf "%s%d %s", (NR>1?", ":""), $1, toupper($4)}') matrices, quantized with an importance matrix of all ones, not dequantized: its CPU matmuls quantize the activations to Q8_K"
done

# 5. The shared fixture with BF16 weight matrices: `switchyard convert --type
#    bf16` of its BF16 safetensors (the values of model.gguf's F32 weights;
#    53 matrices BF16; the router, conv weights, norms and SSM vectors F32, as
#    llama.cpp keeps them: llama_model_quantize with ftype 32 on model.gguf
#    writes the same tensors but for the last bit of some ssm_a values). The
#    GGUF is not committed: it converts deterministically in milliseconds, and
#    the test converts it again and checks its tensor data against the sha256
#    recorded here. llama.cpp evaluates it directly: for BF16 weights its CPU
#    matmuls round the activations to bf16 (vec_dot_type BF16, nearest even)
#    and sum the products in float32, as Switchyard's bf16 activations
#    (kernels.SetBF16Activations) do. The first three golden prompts, haswell
#    CPU backend, 1 thread, F32 KV cache, no flash attention.
B=model/gguf/testdata/granite-tiny-bf16
"$WORK/switchyard" convert --model "$FIXTURE/hf" --type bf16 --out "$WORK/granite-tiny-bf16.gguf" >/dev/null 2>&1
"$WORK/logits" "$WORK/granite-tiny-bf16.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts.txt" >"$WORK/logits-bf16.json" 2>"$WORK/logits-bf16.log"
if ! grep -qE "type +bf16: +53 tensors" "$WORK/logits-bf16.log"; then
  echo "granite-tiny-bf16.gguf: llama.cpp does not see 53 BF16 tensors" >&2; exit 1
fi
python3 - "$FIXTURE/golden.json" "$WORK/logits-bf16.json" "$B" "$WORK/granite-tiny-bf16.gguf" <<'PY'
import hashlib, json, struct, sys
g = json.load(open(sys.argv[1])); ll = json.load(open(sys.argv[2])); b = sys.argv[3]
raw = open(sys.argv[4], "rb").read()

def data_offset(raw):
    # Past the header, the metadata and the tensor infos, the tensor data
    # start at the next multiple of general.alignment (32 when absent).
    pos, align = 0, 32
    def r(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize("<" + fmt)
        return v
    def value(t):
        nonlocal pos
        if t == 8:
            n, = r("Q"); pos += n
            return None
        if t == 9:
            et, n = r("IQ")
            return [value(et) for _ in range(n)]
        return r({0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}[t])[0]
    _, _, nt, nkv = r("4sIQQ")
    for _ in range(nkv):
        n, = r("Q"); key = raw[pos:pos + n].decode(); pos += n
        t, = r("I"); v = value(t)
        if key == "general.alignment":
            align = v
    for _ in range(nt):
        n, = r("Q"); pos += n
        nd, = r("I"); r("%dQ" % nd); r("IQ")
    return (pos + align - 1) // align * align

buf = bytearray(); prompts = []
for p, rows in zip(g["prompts"][:3], ll):
    prompts.append({"name": p["name"], "token_ids": p["token_ids"], "offset": len(buf) // 4})
    for row in rows:
        buf += struct.pack("<%df" % len(row), *row)
open(b + ".logits.f32", "wb").write(buf)
name = b.rsplit("/", 1)[1]
idx = {
    "model": name + ".gguf",
    "made_by": "switchyard convert --type bf16 of the shared fixture granite-hybrid-tiny/hf (BF16 safetensors); not committed: the test converts it into a temporary folder and checks tensor_data_sha256 (the bytes from the start of the tensor data to the end of the file)",
    "gguf_sha256": hashlib.sha256(raw).hexdigest(),
    "tensor_data_sha256": hashlib.sha256(raw[data_offset(raw):]).hexdigest(),
    "vocab_size": len(ll[0][0]),
    "logits_file": name + ".logits.f32",
    "logits_layout": "float32 little-endian, [position][vocab] per prompt, starting at float index offset; logit of every token after every prompt position, divided by logits_scaling",
    "reference": "llama.cpp (ggml-org/llama.cpp 5b4ebc5, as built in node-llama-cpp 3.21.1's @node-llama-cpp/linux-x64 prebuilt) evaluating " + name + ".gguf directly (53 BF16 matrices, not widened beforehand: for BF16 weights its CPU matmuls round the activations to bf16, nearest even, and sum the exact products in float32; the haswell variant, without AVX-512 BF16, widens both bf16 operands to float32 to multiply them): CPU haswell variant, 1 thread, F32 KV cache, flash attention off, whole prompt in one llama_decode",
    "prompts": prompts,
}
open(b + ".json", "w").write(json.dumps(idx, indent=1) + "\n")
PY

# 6. The shared fixture quantized to Q8_0 by llama_model_quantize (ftype 7,
#    default parameters, 1 thread): every matrix of the tiny model has 32, 64
#    or 128 columns, multiples of 32, so all 53 are Q8_0 (checked below); the
#    router, norms, conv weights and SSM vectors stay F32. llama.cpp
#    evaluates the Q8_0 file directly: for Q8_0 weights its CPU matmuls
#    quantize the activations to q8_0 (8 bits per 32 values, one f16 scale),
#    one token or many, as Switchyard's 8-bit activations do for Q8_0
#    products of 8 or more input rows; it keeps the Q8_0 matrices in its plain
#    CPU buffer (not CPU_REPACK). The first three golden prompts, haswell CPU
#    backend, 1 thread, F32 KV cache, no flash attention.
E=model/gguf/testdata/granite-tiny-q8_0
"$WORK/quantize_model" "$FIXTURE/model.gguf" "$E.gguf" 7 >"$WORK/quantize-q8_0.log" 2>&1
if [ "$(grep -c "converting to" "$WORK/quantize-q8_0.log")" != 53 ] ||
  [ "$(grep -c "converting to q8_0 " "$WORK/quantize-q8_0.log")" != 53 ]; then
  echo "$E.gguf: llama.cpp did not make all 53 matrices (and only them) Q8_0" >&2; exit 1
fi
"$WORK/logits" "$E.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts.txt" >"$WORK/logits-q8_0.json" 2>"$WORK/logits-q8_0.log"
write_direct_ref "$E" "$WORK/logits-q8_0.json" "53 Q8_0 matrices, not dequantized: its CPU matmuls quantize the activations to q8_0, 8 bits per 32 values"

# 6b. The shared fixture quantized likewise to Q4_0 (ftype 2), Q5_0 (8) and
#    IQ4_NL (25): llama.cpp's CPU matmuls take q8_0 activations for those
#    weights too, as Switchyard's Q8_0 integer path does (their blocks are
#    Q8_0 blocks once their codes are written as int8). llama.cpp's mixes
#    keep a few matrices in other types (Q8_0 for Q4_0 and Q5_0, which take
#    the same activations; for IQ4_NL also two Q5_1, which take q8_1
#    activations, so IQ4_NL is made with the pure parameter: every matrix
#    IQ4_NL); the index says which.
for LB in "2 q4_0" "8 q5_0" "25 iq4_nl pure"; do
  set -- $LB
  L=model/gguf/testdata/granite-tiny-$2
  "$WORK/quantize_model" "$FIXTURE/model.gguf" "$L.gguf" "$1" ${3:-} >"$WORK/quantize-$2.log" 2>&1
  if [ "$(grep -c "converting to" "$WORK/quantize-$2.log")" != 53 ]; then
    echo "$L.gguf: llama.cpp did not quantize the 53 matrices" >&2; exit 1
  fi
  "$WORK/logits" "$L.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts.txt" >"$WORK/logits-$2.json" 2>"$WORK/logits-$2.log"
  write_direct_ref "$L" "$WORK/logits-$2.json" "$(grep -o "converting to [a-zA-Z0-9_]*" "$WORK/quantize-$2.log" | sort | uniq -c | awk '{printf "%s%d %s", (NR>1?", ":""), $1, toupper($4)}') matrices, not dequantized: its CPU matmuls quantize the activations to q8_0, 8 bits per 32 values"
done

# 6c. The shared fixture quantized to MXFP4_MOE (ftype 38): the routed
#    experts' matrices MXFP4 (an E8M0 scale and E2M1 codes per 32 values),
#    the other matrices Q8_0, as llama.cpp's MXFP4_MOE files hold them (the
#    Granite MXFP4 files published). llama.cpp's CPU matmuls take q8_0
#    activations for both, as Switchyard's Q8_0 integer path does.
X=model/gguf/testdata/granite-tiny-mxfp4_moe
"$WORK/quantize_model" "$FIXTURE/model.gguf" "$X.gguf" 38 >"$WORK/quantize-mxfp4_moe.log" 2>&1
if ! grep -q "converting to mxfp4 " "$WORK/quantize-mxfp4_moe.log" ||
  grep "converting to" "$WORK/quantize-mxfp4_moe.log" | grep -vqE "converting to (mxfp4|q8_0) "; then
  echo "$X.gguf: llama.cpp did not make MXFP4 and Q8_0 matrices (only)" >&2; exit 1
fi
"$WORK/logits" "$X.gguf" "$LLAMA_LIB/libggml-cpu-haswell.so" <"$WORK/prompts.txt" >"$WORK/logits-mxfp4_moe.json" 2>"$WORK/logits-mxfp4_moe.log"
write_direct_ref "$X" "$WORK/logits-mxfp4_moe.json" "$(grep -o "converting to [a-zA-Z0-9_]*" "$WORK/quantize-mxfp4_moe.log" | sort | uniq -c | awk '{printf "%s%d %s", (NR>1?", ":""), $1, toupper($4)}') matrices, not dequantized: its CPU matmuls quantize the activations to q8_0, 8 bits per 32 values"

echo "wrote model/tensor/testdata/llamacpp, $Q.{gguf,json,logits.f32} model/gguf/testdata/granite-tiny-kv-bf16{,-fa}.{json,logits.f32}, model/gguf/testdata/granite-tiny-hd32{,-kv-q8_0-fa}.{json,logits.f32}, $G.{gguf,json,logits.f32}, model/gguf/testdata/granite-h256-{q3_k_m,q2_k,iq4_xs,q4_1,q5_1,q5_k_m,q6_k}.{gguf,json,logits.f32}, $B.{json,logits.f32}, $E.{gguf,json,logits.f32} and model/gguf/testdata/granite-tiny-{q4_0,q5_0,iq4_nl,mxfp4_moe}.{gguf,json,logits.f32} (work files in $WORK)"
