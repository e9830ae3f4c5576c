#!/usr/bin/env bash
# The stream experiment: generates the loops and their test (go run
# ./scripts/streamexp) into a temporary module and runs them. F selects loops
# by name, e.g. F=blk_S2 or F=_X1.
#   F=blk_ bash scripts/streamexp/run.sh
set -euo pipefail
# The loops are AVX-512 (VPDPBUSD on zmm): elsewhere they would fault.
if ! grep -q avx512_vnni /proc/cpuinfo 2>/dev/null; then
  echo "streamexp: needs an x86-64 CPU with AVX-512 VNNI" >&2; exit 1
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$(dirname "$0")/../.." && go run ./scripts/streamexp -out "$tmp")
cd "$tmp" && go test -count=1 -v -run Streams . | grep GB/s
