#!/usr/bin/env bash
# Compiles internal/gpu/moe/kernels.cu to the committed PTX with Debian's
# clang-16 (no CUDA toolkit): `scripts/genptx.sh` rewrites it, `--check` fails
# when the committed file is not what the source compiles to. Without clang-16,
# --check says so and passes (CI installs it; see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
src=internal/gpu/moe/kernels.cu
dst=internal/gpu/moe/kernels_sm80.ptx
CLANG=${CLANG:-clang-16}
if ! command -v "$CLANG" >/dev/null; then
  if [ "${1:-}" = --check ]; then echo "genptx: $CLANG not installed; PTX not checked"; exit 0; fi
  echo "genptx: $CLANG not found (apt-get install clang-16)" >&2; exit 1
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# sm_80 PTX 7.8: runs on Ampere and Hopper (the driver JIT-compiles it for the GPU).
"$CLANG" -x cuda --cuda-device-only -nocudainc -nocudalib --cuda-gpu-arch=sm_80 \
  -Xclang -target-feature -Xclang +ptx78 -O3 -S "$src" -o "$out"
if [ "${1:-}" = --check ]; then
  if ! cmp -s "$out" "$dst"; then echo "genptx: $dst is stale; run make generate" >&2; diff "$dst" "$out" | head -20 >&2; exit 1; fi
  echo "genptx: $dst is current"
else
  cp "$out" "$dst"; echo "genptx: wrote $dst"
fi
