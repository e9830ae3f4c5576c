#!/usr/bin/env bash
# The stream experiment: generates the loops (gen.go) into a temporary copy
# and runs them. F selects loops by name, e.g. F=blk_S2 or F=_X1.
#   F=blk_ bash scripts/streamexp/run.sh
set -euo pipefail
src=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp "$src"/go.mod "$src"/gen.go "$src"/streams_test.go "$tmp"
cd "$tmp" && go run gen.go && go test -count=1 -v -run Streams . | grep GB/s
