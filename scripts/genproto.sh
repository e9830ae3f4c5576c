#!/usr/bin/env bash
# Regenerates the Go code of proto/ with protoc (Debian protobuf-compiler 3.21.12)
# and the plugins pinned as tool dependencies in go.mod. With --check it generates
# into a temporary folder and fails if the committed code differs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler libprotobuf-dev" >&2; exit 1; }
bin=$(mktemp -d); trap 'rm -rf "$bin" "${out:-}"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
dest=proto
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); dest=$out; fi
PATH="$bin:$PATH" protoc -I proto -I /usr/include \
  --go_out="$dest" --go_opt=paths=source_relative \
  --go-grpc_out="$dest" --go-grpc_opt=paths=source_relative \
  proto/switchyard/v1/*.proto
if [ "${1:-}" = "--check" ]; then
  diff -r -x '*.proto' -x '*.md' "$out/switchyard" proto/switchyard >/dev/null 2>&1 || {
    diff -r -x '*.proto' -x '*.md' "$out/switchyard" proto/switchyard | head -20
    echo "generated protobuf code is out of date: run 'make proto'" >&2; exit 1; }
  echo "verify-proto: generated code is up to date"
fi
