#!/usr/bin/env bash
# The stream experiment: generates the loops (gen.go) into a temporary copy
# and runs them. F selects loops by name, e.g. F=blk_S2 or F=_X1.
#   F=blk_ bash scripts/streamexp/run.sh
set -euo pipefail
# The loops are AVX-512 (VPDPBUSD on zmm): elsewhere they would fault.
if ! grep -q avx512_vnni /proc/cpuinfo 2>/dev/null; then
  echo "streamexp: needs an x86-64 CPU with AVX-512 VNNI" >&2; exit 1
fi
src=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp "$src"/go.mod "$src"/gen.go "$src"/streams_test.go "$tmp"
cd "$tmp" && go run gen.go && go test -count=1 -v -run Streams . | grep GB/s
