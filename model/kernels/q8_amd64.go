//go:build !purego

package kernels

import (
	"unsafe"

	"golang.org/x/sys/cpu"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// The integer kernels need AVX-512 BW (VPMADDUBSW, VPERMW on zmm); with VNNI
// they use VPDPWSSD, without it (Skylake-SP) their BW twins VPMADDWD and
// VPADDD.
var hasQ8 = cpu.X86.HasAVX512BW

func init() {
	if !cpu.X86.HasAVX512VNNI {
		useQ8BW()
	}
}

// useQ8BW switches to the kernels without VNNI.
func useQ8BW() {
	q8Kernels = q8KernelsBW
}

var q8Kernels = [tensor.NumDTypes][3]q8Fn{
	tensor.Q4_K: {1: q8dot512Q4KN1, 2: q8dot512Q4KN2},
	tensor.Q5_K: {1: q8dot512Q5KN1, 2: q8dot512Q5KN2},
	tensor.Q6_K: {1: q8dot512Q6KN1, 2: q8dot512Q6KN2},
}

var q8KernelsBW = [tensor.NumDTypes][3]q8Fn{
	tensor.Q4_K: {1: q8dot512Q4KN1BW, 2: q8dot512Q4KN2BW},
	tensor.Q5_K: {1: q8dot512Q5KN1BW, 2: q8dot512Q5KN2BW},
	tensor.Q6_K: {1: q8dot512Q6KN1BW, 2: q8dot512Q6KN2BW},
}

// planQ8 sets up the integer path for the call (see q8act.go): it quantizes
// the input rows into c.xq. It reports false when the path does not apply,
// and nonFinite when it does but an input row holds an infinity or a NaN.
func planQ8(c *callCtx, lvl Level) (ok, nonFinite bool) {
	j := &c.job
	if lvl < LevelAVX512 || !hasQ8 || !q8Usable(j.w) {
		return false, false
	}
	nb := j.w.Cols / q8xValues
	need := j.n*nb*q8xBlockBytes + 64
	if cap(c.xq) < need {
		c.xq = make([]byte, need)
	}
	buf := c.xq[:need]
	off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(buf))) & 63)
	xq := buf[off : off+j.n*nb*q8xBlockBytes]
	k := j.w.Cols
	for i := 0; i < j.n; i++ {
		if !quantizeQ8K(xq[i*nb*q8xBlockBytes:], j.x[i*k:(i+1)*k]) {
			return false, true
		}
	}
	j.q8 = q8Plan{fns: q8Kernels[j.w.DType], xq: xq, nb: nb}
	j.block = q8Block
	j.rb = rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)
	return true, false
}

func q8Block(j *mmJob, _ *scratch, r0, r1, _, _ int) {
	p := &j.q8
	xs := p.nb * q8xBlockBytes
	for i0 := 0; i0 < j.n; {
		nn := min(2, j.n-i0)
		p.fns[nn](&j.w.Data[r0*j.rowBytes], j.rowBytes, r1-r0, &p.xq[i0*xs], xs, p.nb, &j.out[i0*j.w.Rows+r0], 4*j.w.Rows)
		i0 += nn
	}
}

func hasQ8Kernels() bool { return hasQ8 }

// quantizeQ8KAsm runs quantQ8K512 where the integer kernels exist (done).
func quantizeQ8KAsm(dst []byte, x []float32, nb int) (ok, done bool) {
	if !hasQ8 || maxLevel < LevelAVX512 {
		return false, false
	}
	return quantQ8K512(unsafe.SliceData(x), nb, unsafe.SliceData(dst)), true
}

// forceQ8BW makes MatMul use the kernels without VNNI until the returned
// function is called (tests).
func forceQ8BW() (restore func()) {
	prev := q8Kernels
	q8Kernels = q8KernelsBW
	return func() { q8Kernels = prev }
}
