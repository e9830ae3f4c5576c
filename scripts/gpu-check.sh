#!/usr/bin/env bash
# The GPU check: one command for a GPU machine with the NVIDIA driver, CUDA 13
# libraries, PyTorch and transformers, but no Go toolchain and no network.
#
#   make gpu-bundle                      # here: builds .gpu/bundle.tar.xz
#   scripts/gpu-check.sh OUT_DIR         # there, from the repository root
#
# It unpacks the bundle, runs the GPU tests (kernels against the CPU path, the
# expert node, the cluster's golden tokens and an expert crash under load with
# GPU experts), the Hugging Face reference, and the benchmarks, and writes
# OUT_DIR/gpu-report.md (commit it as docs/gpu-report.md) with every figure,
# plus OUT_DIR/gpu-check.log. DEVICE=fake runs the same flow on the emulated
# GPU (a dry run of the script on any machine; figures are meaningless).
# QUICK=1 shrinks the benchmarks. Budget: under ten minutes on an H200.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-check.sh OUT_DIR}
DEVICE=${DEVICE:-cuda:0}
QUICK=${QUICK:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu-check.log
REPORT=$OUT/gpu-report.md
WORK=$(mktemp -d)
: > "$LOG"
start_all=$(date +%s)

B=$WORK/bundle
python3 - "$ROOT/.gpu/bundle.tar.xz" "$WORK" <<'PY' || { echo "cannot unpack .gpu/bundle.tar.xz (run make gpu-bundle)"; exit 2; }
import sys, tarfile
tarfile.open(sys.argv[1]).extractall(sys.argv[2])
PY
chmod +x "$B"/*
# The test binaries find the fixture at ../../shared/fixtures from their package folder.
SH=$WORK/tree/shared/fixtures
mkdir -p "$SH" "$WORK/tree/repo/internal/gpu/cuda" "$WORK/tree/repo/internal/gpu/moe" "$WORK/tree/repo/expert-node" "$WORK/tree/repo/internal/cli/localcluster"
cp -r "$B/fixtures/granite-hybrid-tiny" "$SH/"
FX=$SH/granite-hybrid-tiny
SY=$B/switchyard

results=()
section() { printf '\n## %s\n\n' "$1" >> "$REPORT"; }
# run NAME TIMEOUT DIR CMD...: runs CMD in DIR, logs it, appends its output to
# the report in a code block and records PASS/FAIL.
run() {
  local name=$1 limit=$2 dir=$3; shift 3
  local t0=$(date +%s) rc
  # Stay inside the whole check's budget (BUDGET seconds, default 480).
  local left=$(( ${BUDGET:-480} - (t0 - start_all) ))
  if [ "$left" -lt 20 ]; then
    results+=("| $name | SKIPPED (check budget spent) | 0s |"); echo "--- $name: skipped, budget spent" | tee -a "$LOG"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name: $*" | tee -a "$LOG"
  ( cd "$dir" && timeout "$limit" "$@" ) > "$WORK/step.out" 2>&1
  rc=$?
  cat "$WORK/step.out" >> "$LOG"
  local secs=$(( $(date +%s) - t0 ))
  local verdict=PASS
  [ $rc -eq 0 ] || verdict="FAIL (exit $rc)"
  [ $rc -eq 124 ] && verdict="FAIL (timed out after ${limit}s)"
  results+=("| $name | $verdict | ${secs}s |")
  echo "--- $name: $verdict in ${secs}s" | tee -a "$LOG"
  section "$name"
  printf '`%s` (%s, %ss)\n\n```\n' "$*" "$verdict" "$secs" >> "$REPORT"
  if [ "$(wc -l < "$WORK/step.out")" -gt 150 ]; then
    head -60 "$WORK/step.out" >> "$REPORT"; echo "[... $(wc -l < "$WORK/step.out") lines; full output in gpu-check.log ...]" >> "$REPORT"; tail -60 "$WORK/step.out" >> "$REPORT"
  else
    cat "$WORK/step.out" >> "$REPORT"
  fi
  printf '```\n' >> "$REPORT"
  return 0
}

{
  echo "# GPU check report"
  echo
  echo "Written by \`scripts/gpu-check.sh\` (device \`$DEVICE\`) on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cat "$B/commit" 2>/dev/null)."
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
    nvidia-smi 2>/dev/null | grep -m1 "CUDA Version" | sed 's/^[| ]*//'
  else
    echo "nvidia-smi: not found"
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -2
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__)' 2>&1 | tail -1
  echo "CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo '```'
} > "$REPORT"

# Where the CUDA libraries are (the loader searches the usual folders itself;
# this records what the machine has, and points it at a pip cuBLAS if that is all).
{
  echo "ldconfig: $(ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libcublas(Lt)?\.so' | awk '{print $NF}' | tr '\n' ' ')"
  echo "files: $(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -maxdepth 8 -name 'libcublas.so.1[23]*' 2>/dev/null | head -5 | tr '\n' ' ')"
} | tee -a "$LOG"
if [ -z "${SWITCHYARD_CUDA_LIBS:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.1[23]' && [ ! -e /usr/local/cuda/lib64/libcublas.so.13 ]; then
  lib=$(find /opt /usr/local/lib -maxdepth 8 -name 'libcublas.so.1[23]' 2>/dev/null | head -1)
  [ -n "$lib" ] && export SWITCHYARD_CUDA_LIBS=$(dirname "$lib") && echo "SWITCHYARD_CUDA_LIBS=$SWITCHYARD_CUDA_LIBS" | tee -a "$LOG"
fi

export SWITCHYARD_REQUIRE_GPU=
[ "$DEVICE" != fake ] && export SWITCHYARD_REQUIRE_GPU=1 SWITCHYARD_TEST_GPU=$DEVICE

T=$WORK/tree/repo
run "CUDA bindings (driver, cuBLAS, library search)" 60 "$T/internal/gpu/cuda" "$B/cuda.test" -test.v -test.count=1
run "Kernels vs the CPU path (random inputs, every path and weight type)" 120 "$T/internal/gpu/moe" "$B/moe.test" -test.v -test.count=1
run "Expert node on the GPU (fixture, HF and GGUF; make-before-break swap)" 120 "$T/expert-node" "$B/expert-node.test" -test.v -test.count=1 -test.run 'TestDispatchMatchesReference|TestSetAssignmentSwap'
run "Cluster with GPU experts: golden greedy tokens (f32 wire), expert killed under load" 150 "$T/internal/cli/localcluster" "$B/localcluster.test" -test.v -test.count=1 -test.run 'TestClusterGPUExpertsGolden|TestGPUExpertCrashUnderLoad'
if python3 -c 'import torch, transformers' 2>/dev/null; then
  run "Hugging Face transformers reference (GraniteMoeHybridForCausalLM, float32) vs the golden logits" 120 "$ROOT" python3 scripts/hf_reference.py "$FX" 1e-3
else
  results+=("| Hugging Face reference | SKIPPED (no torch/transformers) | 0s |")
fi

ROWS=1,8,64,512,4096; PRESETS=h-tiny,h-small; REPS=20; SESS=1,8,32,128; LAYERS=6; TOK=16
if [ "$QUICK" = 1 ] || [ "$DEVICE" = fake ]; then ROWS=1,8,64; PRESETS=h-tiny; REPS=3; SESS=1,8; LAYERS=2; TOK=4; fi
# The emulated GPU computes on the CPU: 64 rows of h-tiny's 64 experts took
# over the step's 150 s on a 2-core machine (rows 1 and 8 once: 21 s).
if [ "$DEVICE" = fake ]; then ROWS=1,8; REPS=1; fi
run "Expert compute per round (one MoE layer, bf16)" 150 "$ROOT" "$SY" bench-gpu --device "$DEVICE" --preset "$PRESETS" --rows "$ROWS" --reps "$REPS"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
if [ "$DEVICE" != fake ] && [ -n "$NCU" ]; then
  run "Nsight Compute: the decode GEMV kernels (h-tiny, 8 rows)" 90 "$ROOT" "$NCU" --clock-control none --kernel-name regex:'grouped_gemv' \
    --launch-skip 4 --launch-count 2 --section SpeedOfLight --section Occupancy --section LaunchStats \
    "$SY" bench-gpu --device "$DEVICE" --preset h-tiny --rows 8 --reps 1
fi
run "Synthesize h-tiny ($LAYERS layers, real widths)" 120 "$ROOT" "$SY" synth --preset h-tiny --layers "$LAYERS" --out "$WORK/h-tiny"
run "Cluster decode: CPU expert nodes vs GPU expert nodes (1 trunk on this machine's CPUs)" 210 "$ROOT" "$SY" bench-cluster --model "$WORK/h-tiny" --expert-device "cpu,$DEVICE" --sessions "$SESS" --prompt 16 --tokens "$TOK" --reps 1 --inproc=false

{
  echo
  echo "## Summary"
  echo
  echo "| step | result | time |"
  echo "|---|---|---|"
  printf '%s\n' "${results[@]}"
  echo
  echo "Total $(( $(date +%s) - start_all ))s."
} >> "$REPORT"
# Summary first in the console (the device tool returns the end of the output).
tail -n $(( ${#results[@]} + 6 )) "$REPORT"
rm -rf "$WORK"
