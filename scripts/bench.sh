#!/usr/bin/env bash
# make bench: kernel micro-benchmarks, then the engine benchmark on a synthesized
# H-Tiny-shaped model (8 layers, attention at layer 5, vocab 100352) in BF16,
# Q8_0, Q4_K_M and MXFP4_MOE, at 1 and 2 threads. Ratios are measured in the same run. Where llama.cpp's
# CPU libraries are at hand (or npm can fetch them), scripts/llamacpp-bench.sh runs
# the same GGUF files through llama.cpp and through ours, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/switchyard}
CACHE=${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}
MODEL=${BENCH_MODEL:-$CACHE/h-tiny-8L-bf16}
mkdir -p "$CACHE"
if [ ! -f "$MODEL/model.safetensors" ] && [ -z "${BENCH_MODEL:-}" ]; then
  "$BIN" synth --preset h-tiny --layers 8 --dtype bf16 --seed 1 --out "$MODEL"
fi
echo "== kernels"
go test -run '^$' -bench . -benchtime 2x ./model/kernels/ | grep -v '^goos\|^goarch\|^pkg\|^cpu' || true
echo "== constrained decoding: JSON-schema token masks on a 100K vocabulary (cold/warm per state; decode loop ratio with/without mask)"
go test -run '^$' -bench 'Mask100K|DecodeLoop' -benchtime 200x ./model/grammar/ | grep -v '^goos\|^goarch\|^pkg\|^cpu' || true
echo "== paged attention: a 1024-row prefill chunk at the end of 2K/8K/32K contexts (H-Tiny heads)"
go test -run '^$' -bench PagedAttention -benchtime 2x ./model/hybrid/ | grep -v '^goos\|^goarch\|^pkg\|^cpu' || true
echo "== routed experts of one decode call (H-Tiny shapes, bf16, cold), back to back and with 2 ms idle gaps (an expert node between layers) at the kernels' default spin wait and at the nodes' 5 ms"
go test -run '^$' -bench 'ComputeExperts' -benchtime 100x ./model/hybrid/ | grep -v '^goos\|^goarch\|^pkg\|^cpu' || true
echo "== trunk: a layer call's remote experts (fake nodes in processes of their own, answering 3 ms after they receive) against the trunk's own work meanwhile: overlapped near max(compute, call) means they overlap"
go test -run '^$' -bench 'DispatchOverlap' -benchtime 100x ./trunk-node/ | grep -v '^goos\|^goarch\|^pkg\|^cpu' || true
echo "== trunk: another session's Acquire and Release while a replicator copies an idle 55 MiB state over and over (the copy is made outside the store's lock: p50/p99 in µs)"
go test -run '^$' -bench 'AcquireDuringReplicaCopy' -benchtime 500x ./trunk-node/ | grep -v '^goos\|^goarch\|^pkg\|^cpu' || true
echo "== engine, BF16 safetensors"
"$BIN" bench --model "$MODEL"
Q8="$CACHE/h-tiny-8L-q8_0.gguf"
if [ -z "${BENCH_MODEL:-}" ]; then
  [ -f "$Q8" ] || "$BIN" convert --model "$MODEL" --type q8_0 --out "$Q8"
  echo "== engine, Q8_0 GGUF"
  "$BIN" bench --model "$Q8"
  Q4M="$CACHE/h-tiny-8L-q4_k_m.gguf"
  [ -f "$Q4M" ] || "$BIN" convert --model "$MODEL" --type q4_k_m --out "$Q4M"
  echo "== engine, Q4_K_M GGUF (llama.cpp's mix)"
  "$BIN" bench --model "$Q4M"
  MX="$CACHE/h-tiny-8L-mxfp4_moe.gguf"
  [ -f "$MX" ] || "$BIN" convert --model "$MODEL" --type mxfp4_moe --out "$MX"
  echo "== engine, MXFP4_MOE GGUF (llama.cpp's mix: routed experts MXFP4, the rest Q8_0)"
  "$BIN" bench --model "$MX"
  echo "== one-session decode of the Q4_K_M file: idle threads helping with the routed experts' last products against not (alternated in one process), and where a step's time goes (stages, each product's share of the read probe)"
  "$BIN" bench --model "$Q4M" --batches 1 --prompt 4 --steps 32 --reps 5 --ab helping --breakdown
  echo "== two threads, the Q4_K_M file: lanes of consecutive blocks against blocks in turn, the shared expert beside the routed ones against split, row-wise work split against on one thread (each pair alternated in one process; decode of 1 and 8 sessions, prefill 512), and where a prefill's time goes"
  "$BIN" bench --model "$Q4M" --threads 2 --batches 1,8 --prompt 512 --steps 16 --reps 7 --ab lanes
  "$BIN" bench --model "$Q4M" --threads 2 --batches 1,8 --prompt 512 --steps 16 --reps 7 --ab shared
  "$BIN" bench --model "$Q4M" --threads 2 --batches 1 --prompt 512 --steps 16 --reps 7 --ab rows --breakdown
  echo "== one-session decode of the Q4_K_M file: each routed expert's gate and up as one product of two runs against two products (alternated in one process)"
  "$BIN" bench --model "$Q4M" --threads 1,2 --batches 1 --prompt 16 --steps 32 --reps 9 --ab pairs
fi
if [ -z "${BENCH_MODEL:-}" ]; then
  echo "== engine, weights read through the file's map (--mmap) against the runs above (copied into memory, the default): BF16 and Q8_0, one-session decode and prefill 512"
  "$BIN" bench --model "$MODEL" --batches 1 --mmap
  "$BIN" bench --model "$Q8" --batches 1 --mmap
fi
echo "== llama.cpp side by side: the same GGUF files, prefill 512 and decode at 1 and 2 threads, batched decode of 8, 32, 128 sessions at 2 (skipped without llama.cpp's CPU libraries)"
if [ -z "${BENCH_MODEL:-}" ]; then
  BIN="$BIN" bash scripts/llamacpp-bench.sh
  echo "== llama.cpp side by side on the other quantized types (files made by llama.cpp's quantizer where ours does not write the type; the i-quant mixes take it minutes each, once): prefill 128, decode at 1 and 2 threads"
  BIN="$BIN" TYPES="q4_0 q5_0 q4_1 q5_1 q3_k_m q2_k iq4_xs mxfp4_moe iq2_xxs iq3_xxs" PROMPT=128 BATCHES=8 LOG="$CACHE/llamacpp-bench-types.log" bash scripts/llamacpp-bench.sh
elif [[ "$BENCH_MODEL" == *.gguf ]]; then
  BIN="$BIN" bash scripts/llamacpp-bench.sh "$BENCH_MODEL"
fi
echo "== cluster: 1 trunk + 2 expert nodes on loopback vs in-process (BF16)"
"$BIN" bench-cluster --model "$MODEL" --sessions 1,8,32 --tokens 16 --prompt 16 --reps 3
echo "== placement: Zipf-skewed and shifting loads, ours vs round-robin"
"$BIN" placement simulate --rounds 5
echo "== noisy neighbour: short sessions' inter-token latency beside a 2048-token prompt (tiny model)"
bash scripts/noisy-neighbour.sh
echo "== prefix cache: 1000 requests sharing a 2048-token system prompt, cache off vs on (tiny model)"
bash scripts/prefix-cache-bench.sh
echo "== sessions: offload/restore vs re-prefill at 1K/8K/32K, replication bytes, lag and cost at 32 sessions (tiny model; BENCH_MODEL=... for another)"
SWITCHYARD_BENCH=1 go test -count=1 -run TestSessionsBench ./trunk-node/ | grep '^|'
