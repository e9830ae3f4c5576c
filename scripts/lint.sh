#!/usr/bin/env bash
# Checks the import rules in .golangci.yml (depguard, importas, gci) with the
# golangci-lint pinned in tools/lint/go.mod, built once into bin/golangci-lint.
#
#   bash scripts/lint.sh                  # lint ./... (make verify-lint)
#   bash scripts/lint.sh ./model/...      # lint some packages only
#
# The binary is rebuilt only when its golangci-lint version or Go toolchain
# differs from the pin and the go command in use.
set -euo pipefail
cd -P "$(dirname "$0")/.."
root=$PWD
GO=${GO:-go}
bin=$root/bin/golangci-lint
mod=github.com/golangci/golangci-lint/v2

want=$(cd tools/lint && "$GO" list -m -f '{{.Version}}' "$mod")
gover=$("$GO" env GOVERSION)

have=""
if [[ -x $bin ]]; then
  # "mod <path> <version> <sum>" and "<file>: <go version>" from the build info.
  have=$("$GO" version -m "$bin" 2>/dev/null | awk -v m="$mod" '$1 == "mod" && $2 == m { print $3 }')
  built_with=$("$GO" version "$bin" 2>/dev/null | awk '{ print $2 }')
  [[ $built_with == "$gover" ]] || have=""
fi

if [[ $have != "$want" ]]; then
  echo "lint: building golangci-lint $want with $gover into bin/golangci-lint"
  mkdir -p bin
  (cd tools/lint && "$GO" build -o ../../bin/golangci-lint "$mod/cmd/golangci-lint")
fi

if [[ $# -eq 0 ]]; then
  set -- ./...
fi
exec "$bin" run --config "$root/.golangci.yml" "$@"
