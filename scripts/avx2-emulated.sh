#!/usr/bin/env bash
# avx2-emulated.sh: runs the kernels' tests and the golden tests against
# llama.cpp's logits on an emulated AVX2-only CPU (QEMU's user-mode
# emulator, CPU model EPYC-Milan: AMD Zen 3, AVX2 and FMA, no AVX-512), so
# the kernel level is chosen from the CPU's own feature bits and every
# instruction an AVX2-only CPU lacks faults, as it would on one. On this
# project's AVX-512 machines SWITCHYARD_KERNELS=avx2 runs the AVX2 kernels
# too, but the CPU executes AVX-512 instructions that slip into them without
# complaint (session 26 found 1,356 in the packed AVX2 kernels:
# TestAVX2KernelsHaveNoEVEX now checks the encodings in make test).
#
# Slow (QEMU's TCG interprets every vector instruction): about 15 minutes
# on 2 cores, so it is not part of make test. Needs qemu-user (Debian:
# apt-get install qemu-user; QEMU 7.2 or later, the first with AVX2);
# without it it says so and stops (exit 0). CPU=<model> picks another
# model (qemu-x86_64 -cpu help), e.g. Haswell-v4.
#
#   bash scripts/avx2-emulated.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CPU=${CPU:-EPYC-Milan}
if ! command -v qemu-x86_64 >/dev/null; then
  echo "avx2-emulated: no qemu-x86_64 (apt-get install qemu-user): skipping"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/kernels.test" ./model/kernels
go test -c -o "$tmp/hybrid.test" ./model/hybrid
fails=0
run() { # package dir, test binary, -test.run pattern
  local start=$SECONDS rc
  echo "== $1: $3 on an emulated $CPU"
  set +e
  (cd "$1" && qemu-x86_64 -cpu "$CPU" "$2" -test.run "$3" -test.v >"$tmp/out" 2>&1)
  rc=$?
  set -e
  # QEMU warns about host CPUID bits it does not emulate; those lines are dropped.
  grep -v "warning: TCG doesn't support" "$tmp/out" |
    grep -E '^(--- |ok|PASS|FAIL)|level avx2|panic|SIGILL|illegal instruction' || true
  echo "== $1: exit status $rc, $((SECONDS - start)) s"
  [ "$rc" = 0 ] || fails=$((fails + 1))
}
# Every AVX2 kernel against its plain twin, at every shape the tests use;
# the level is AVX2 because the emulated CPU has no AVX-512 (the tests'
# AVX-512 subtests skip).
run model/kernels "$tmp/kernels.test" 'TestMatMulQ80$|TestMatMulShapes|TestPackedMatchesRowMajor|TestMatMulBatchInvariant|TestMatMulSerialInvariant|TestStreamsMatchOneRun|TestQuantize|TestMatMulQ8'
# Whole models against llama.cpp's logits: BF16, Q8_0, the Q4_0 family,
# llama-quantize's Q4_K_M and the low-bit types.
run model/hybrid "$tmp/hybrid.test" 'TestLlamaCppBF16Direct$|TestLlamaCppQ8_0Direct|TestLlamaCppQ40FamilyDirect|TestLlamaCppQ4KMDirect|TestLlamaCppLowBitDirect'
if [ "$fails" != 0 ]; then
  echo "avx2-emulated: FAIL ($fails of 2 runs)" >&2
  exit 1
fi
echo "avx2-emulated: PASS"
