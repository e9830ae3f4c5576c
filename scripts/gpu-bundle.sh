#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on a GPU machine that has no Go
# toolchain and no network: the switchyard CLI built with -tags cuda, the GPU
# test binaries, and the shared golden fixture, stripped and packed into
# .gpu/bundle.tar.xz (about 25 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu/bundle
rm -rf "$out" && mkdir -p "$out/fixtures"
flags=(-tags cuda -trimpath -ldflags='-s -w')
export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
go build "${flags[@]}" -o "$out/switchyard" ./cmd/switchyard
for p in internal/gpu/cuda internal/gpu/moe expert-node internal/cli/localcluster; do
  go test -c "${flags[@]}" -o "$out/$(basename "$p").test" "./$p"
done
cp -r ../shared/fixtures/granite-hybrid-tiny "$out/fixtures/"
git rev-parse HEAD > "$out/commit"
tar -C .gpu -cf - bundle | xz -T2 -6 > .gpu/bundle.tar.xz
ls -la .gpu/bundle.tar.xz
