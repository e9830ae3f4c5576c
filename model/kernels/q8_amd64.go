//go:build !purego

package kernels

import (
	"unsafe"

	"golang.org/x/sys/cpu"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// The integer kernels need AVX-512 BW (VPMADDUBSW, VPERMW on zmm) and VNNI
// (VPDPWSSD).
var hasQ8 = cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VNNI

var q8Kernels = [tensor.NumDTypes][3]q8Fn{
	tensor.Q4_K: {1: q8dot512Q4KN1, 2: q8dot512Q4KN2},
	tensor.Q5_K: {1: q8dot512Q5KN1, 2: q8dot512Q5KN2},
	tensor.Q6_K: {1: q8dot512Q6KN1, 2: q8dot512Q6KN2},
}

// planQ8 sets up the integer path for the call (see q8act.go): it quantizes
// the input rows into c.xq. It reports false when the path does not apply.
func planQ8(c *callCtx, lvl Level) bool {
	j := &c.job
	if lvl < LevelAVX512 || !hasQ8 || !q8Usable(j.w, j.n, j.inv) {
		return false
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
			return false
		}
	}
	j.q8 = q8Plan{fns: q8Kernels[j.w.DType], xq: xq, nb: nb}
	j.block = q8Block
	j.rb = rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)
	return true
}

func q8Block(j *mmJob, s *scratch, r0, r1, _, _ int) {
	p := &j.q8
	rows, n := j.w.Rows, j.n
	xs := p.nb * q8xBlockBytes
	nq := (r1 - r0) / 4
	run := func(wb *byte, nquads int, out []float32, ostride int) {
		for i0 := 0; i0 < n; {
			nn := min(2, n-i0)
			p.fns[nn](wb, j.rowBytes, nquads, &p.xq[i0*xs], xs, p.nb, &out[i0*ostride], 4*ostride)
			i0 += nn
		}
	}
	if nq > 0 {
		run(&j.w.Data[r0*j.rowBytes], nq, j.out[r0:], rows)
	}
	if lr := (r1 - r0) % 4; lr > 0 {
		// A partial last quad: run the kernel on a zero-padded copy.
		rr := r0 + 4*nq
		need := 4 * j.rowBytes
		if cap(s.rows) < need {
			s.rows = make([]byte, need)
		}
		buf := s.rows[:need]
		clear(buf[copy(buf, j.w.Data[rr*j.rowBytes:(rr+lr)*j.rowBytes]):])
		var tmp [4 * q8MaxRows]float32
		run(&buf[0], 1, tmp[:], 4)
		for i := 0; i < n; i++ {
			copy(j.out[i*rows+rr:i*rows+rr+lr], tmp[4*i:4*i+lr])
		}
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
