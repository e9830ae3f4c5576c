//go:build !purego

package kernels

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// hasBF16Dot: the CPU has VDPBF16PS (AVX-512 BF16).
var hasBF16Dot = cpu.X86.HasAVX512BF16 && cpu.X86.HasAVX512BW

type bf16DotFn func(w *byte, wstride, nquads int, x *byte, xstride, nchunks int, out *float32, ostride int)

var bf16Dots = [7]bf16DotFn{1: bf16dot512N1, 2: bf16dot512N2, 3: bf16dot512N3, 4: bf16dot512N4, 5: bf16dot512N5, 6: bf16dot512N6}

// planBF16 sets up the bf16-activation path for the call (see bf16act.go):
// it rounds the input rows to bf16 into c.xb. It reports false when the path
// does not apply.
func planBF16(c *callCtx, lvl Level) bool {
	j := &c.job
	// Attention over bf16 KV pages (MatMulSerialInvariant) keeps float32
	// queries and probabilities: the KV cache's documented accuracy.
	if lvl < LevelAVX512 || !hasBF16Dot || j.inv || !bf16Usable(j.w) {
		return false
	}
	k := j.w.Cols
	need := j.n*k + 32
	if cap(c.xb) < need {
		c.xb = make([]uint16, need)
	}
	buf := c.xb[:need]
	off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(buf))) & 63 / 2)
	xb := buf[off : off+j.n*k]
	toBF16(xb, j.x[:j.n*k])
	j.bf = xb
	j.block = bf16Block
	j.rb = rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)
	if j.n == 1 && ProductStreams() == 2 && j.w.Rows/2 >= minRunRows {
		// Two runs of rows at once (bf16rows512S2), as planStreams.
		useTwoRuns(j, j.w.Rows/2, 4)
	}
	return true
}

func bf16Block(j *mmJob, s *scratch, r0, r1, _, _ int) {
	rows, n, k := j.w.Rows, j.n, j.w.Cols
	// One input row: the rows one after the other (a sequential stream;
	// measured 58-70% -> 68-72% of the bandwidth), the tiles' bits.
	if n == 1 {
		xb := (*byte)(unsafe.Pointer(unsafe.SliceData(j.bf)))
		if j.span == 0 {
			bf16rows512(&j.w.Data[r0*j.rowBytes], j.rowBytes, r1-r0, xb, k/32, &j.out[r0])
			return
		}
		// Rows [r0, r1) and [r0+span, r1+span) at once; the last block
		// also the odd row after them.
		bf16rows512S2(&j.w.Data[r0*j.rowBytes], j.rowBytes, r1-r0, xb, k/32, &j.out[r0], j.span*j.rowBytes, 4*j.span)
		if r1 == j.span && rows > 2*j.span {
			bf16rows512(&j.w.Data[2*j.span*j.rowBytes], j.rowBytes, rows-2*j.span, xb, k/32, &j.out[2*j.span])
		}
		return
	}
	nq := (r1 - r0) / 4
	ng, base, rem := groups(n, 6)
	xb := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(j.bf))), 2*len(j.bf))
	run := func(wb *byte, nquads int, out []float32, ostride int) {
		i0 := 0
		for g := 0; g < ng; g++ {
			nn := base + b2i(g < rem)
			bf16Dots[nn](wb, j.rowBytes, nquads, &xb[2*i0*k], 2*k, k/32, &out[i0*ostride], 4*ostride)
			i0 += nn
		}
	}
	if nq > 0 {
		run(&j.w.Data[r0*j.rowBytes], nq, j.out[r0:], rows)
	}
	if lr := (r1 - r0) % 4; lr > 0 {
		// A partial last quad: the kernels on a zero-padded copy, up to 6
		// input rows at a time (a row's result is the same in any group).
		rr := r0 + 4*nq
		buf := paddedQuad(j, s, rr, lr)
		for i0 := 0; i0 < n; i0 += 6 {
			nn := min(6, n-i0)
			bf16Dots[nn](&buf[0], j.rowBytes, 1, &xb[2*i0*k], 2*k, k/32, &s.otail[0], 16)
			for i := 0; i < nn; i++ {
				copy(j.out[(i0+i)*rows+rr:(i0+i)*rows+rr+lr], s.otail[4*i:4*i+lr])
			}
		}
	}
}

func hasBF16DotKernels() bool { return hasBF16Dot }

// toBF16Asm converts the longest prefix of x that is a multiple of 16 with
// toBF16512 (AVX-512) and returns its length.
func toBF16Asm(dst []uint16, x []float32) int {
	n := len(x) &^ 15
	if maxLevel < LevelAVX512 || n == 0 {
		return 0
	}
	_ = dst[n-1]
	toBF16512(unsafe.SliceData(dst), unsafe.SliceData(x), n)
	return n
}
