// Command gen generates the amd64 assembly of package kernels with avo.
//
// It is its own module so that avo (and golang.org/x/tools) never enter the
// main module's dependencies. Regenerate from model/kernels with
//
//	go generate ./model/kernels
//
// which runs, in this directory,
//
//	go run . -out ../../asm_amd64.s -stubs ../../asm_amd64.go -pkg kernels
//
// The generated files are committed; a plain `go build` needs neither avo nor
// GOEXPERIMENT nor cgo.
//
// Kernel families (each in an AVX-512 "512" and an AVX2+FMA "256" flavour):
//
//   - tile<isa><dtype>N<n>: out[i][r] = Σ_k W[r][k]·x[i][k] for quads of 4
//     weight rows and n input rows, widening the weights on the fly;
//   - widen<isa><dtype>: dequantize quads of rows into a float32 panel that the
//     F32 tile kernel then multiplies (the prefill path);
//   - dot, axpy, scale, add, expShift, maxv: vector helpers;
//   - fmaPeak, readMem, triad: machine probes.
package main

import (
	. "github.com/mmcloughlin/avo/build"
)

func main() {
	ConstraintExpr("!purego")
	genConsts()
	genExpConsts()
	for _, s := range []isa{isa512, isa256} {
		genProbes(s)
		genVec(s)
		genExp(s)
		genMax(s)
	}
	for _, dt := range allDtypes {
		for n := 1; n <= maxN(isa512, dt); n++ {
			genTile(isa512, dt, n, modeFMA)
		}
		if dt == dF32 {
			for n := 1; n <= isa512.maxN; n++ {
				genTile(isa512, dt, n, modePanel)
			}
		}
		if dt != dF32 {
			genTile(isa512, dt, 0, modeWiden)
		}
	}
	for _, dt := range allDtypes {
		if only512(dt) {
			continue
		}
		for n := 1; n <= maxN(isa256, dt); n++ {
			genTile(isa256, dt, n, modeFMA)
		}
		if dt != dF32 {
			genTile(isa256, dt, 0, modeWiden)
		}
	}
	Generate()
}
