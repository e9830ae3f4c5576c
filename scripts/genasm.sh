#!/usr/bin/env bash
# Regenerates the amd64 assembly kernels of model/kernels with the avo program in
# model/kernels/internal/gen (its own module: avo pinned in its go.mod). With
# --check it generates into a temporary folder and fails if the committed
# asm_amd64.s, asm_amd64.go, panelorder_amd64.go or kerneltables_amd64.go differ.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
dest=model/kernels
if [ "${1:-}" = "--check" ]; then dest=$(mktemp -d); trap 'rm -rf "$dest"' EXIT; fi
if [ "$dest" = model/kernels ]; then
  (cd model/kernels/internal/gen && $GO run . -out ../../asm_amd64.s -stubs ../../asm_amd64.go -pkg kernels)
else
  (cd model/kernels/internal/gen && $GO run . -out "$dest/asm_amd64.s" -stubs "$dest/asm_amd64.go" -pkg kernels)
fi
if [ "${1:-}" = "--check" ]; then
  # The first line of avo's files names the command's output paths.
  for f in asm_amd64.s asm_amd64.go panelorder_amd64.go kerneltables_amd64.go; do
    if ! cmp -s <(tail -n +2 "$dest/$f") <(tail -n +2 "model/kernels/$f"); then
      diff <(tail -n +2 "$dest/$f") <(tail -n +2 "model/kernels/$f") | head -20
      echo "generated kernels are out of date ($f): run 'make generate'" >&2; exit 1
    fi
  done
  echo "verify-asm: generated kernels are up to date"
fi
