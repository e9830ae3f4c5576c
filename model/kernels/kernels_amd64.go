//go:build !purego

package kernels

import (
	"math"
	"unsafe"

	"golang.org/x/sys/cpu"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

func detectLevel() Level {
	x := &cpu.X86
	base := x.HasAVX2 && x.HasFMA && x.HasF16C && x.HasBMI2
	switch {
	case base && x.HasAVX512F && x.HasAVX512BW && x.HasAVX512DQ && x.HasAVX512VL:
		return LevelAVX512
	case base:
		return LevelAVX2
	}
	return LevelGo
}

func init() {
	z := &isaKernels{lanes: 16, masked: true}
	for dt := range z.maxN {
		z.maxN[dt] = 6
	}
	z.maxN[tensor.Q4_K] = 4
	z.tile[tensor.F32] = [9]tileFn{1: tile512F32N1, 2: tile512F32N2, 3: tile512F32N3, 4: tile512F32N4, 5: tile512F32N5, 6: tile512F32N6}
	z.tile[tensor.BF16] = [9]tileFn{1: tile512BF16N1, 2: tile512BF16N2, 3: tile512BF16N3, 4: tile512BF16N4, 5: tile512BF16N5, 6: tile512BF16N6}
	z.tile[tensor.F16] = [9]tileFn{1: tile512F16N1, 2: tile512F16N2, 3: tile512F16N3, 4: tile512F16N4, 5: tile512F16N5, 6: tile512F16N6}
	z.tile[tensor.Q8_0] = [9]tileFn{1: tile512Q8N1, 2: tile512Q8N2, 3: tile512Q8N3, 4: tile512Q8N4, 5: tile512Q8N5, 6: tile512Q8N6}
	z.tile[tensor.Q4_K] = [9]tileFn{1: tile512Q4KN1, 2: tile512Q4KN2, 3: tile512Q4KN3, 4: tile512Q4KN4}
	// The other quantized types: generic widening per 16 values (see
	// internal/gen), 6 input rows per tile (AVX2: Q6_K and Q5_K too, per 8).
	z.tile[tensor.Q6_K] = [9]tileFn{1: tile512Q6KN1, 2: tile512Q6KN2, 3: tile512Q6KN3, 4: tile512Q6KN4, 5: tile512Q6KN5, 6: tile512Q6KN6}
	z.tile[tensor.Q5_K] = [9]tileFn{1: tile512Q5KN1, 2: tile512Q5KN2, 3: tile512Q5KN3, 4: tile512Q5KN4, 5: tile512Q5KN5, 6: tile512Q5KN6}
	z.tile[tensor.Q4_0] = [9]tileFn{1: tile512Q40N1, 2: tile512Q40N2, 3: tile512Q40N3, 4: tile512Q40N4, 5: tile512Q40N5, 6: tile512Q40N6}
	z.tile[tensor.Q4_1] = [9]tileFn{1: tile512Q41N1, 2: tile512Q41N2, 3: tile512Q41N3, 4: tile512Q41N4, 5: tile512Q41N5, 6: tile512Q41N6}
	z.tile[tensor.Q5_0] = [9]tileFn{1: tile512Q50N1, 2: tile512Q50N2, 3: tile512Q50N3, 4: tile512Q50N4, 5: tile512Q50N5, 6: tile512Q50N6}
	z.tile[tensor.Q5_1] = [9]tileFn{1: tile512Q51N1, 2: tile512Q51N2, 3: tile512Q51N3, 4: tile512Q51N4, 5: tile512Q51N5, 6: tile512Q51N6}
	z.tile[tensor.IQ4_NL] = [9]tileFn{1: tile512IQ4NLN1, 2: tile512IQ4NLN2, 3: tile512IQ4NLN3, 4: tile512IQ4NLN4, 5: tile512IQ4NLN5, 6: tile512IQ4NLN6}
	z.tile[tensor.Q2_K] = [9]tileFn{1: tile512Q2KN1, 2: tile512Q2KN2, 3: tile512Q2KN3, 4: tile512Q2KN4, 5: tile512Q2KN5, 6: tile512Q2KN6}
	z.tile[tensor.Q3_K] = [9]tileFn{1: tile512Q3KN1, 2: tile512Q3KN2, 3: tile512Q3KN3, 4: tile512Q3KN4, 5: tile512Q3KN5, 6: tile512Q3KN6}
	z.tile[tensor.IQ4_XS] = [9]tileFn{1: tile512IQ4XSN1, 2: tile512IQ4XSN2, 3: tile512IQ4XSN3, 4: tile512IQ4XSN4, 5: tile512IQ4XSN5, 6: tile512IQ4XSN6}
	z.tileInv[tensor.BF16] = [3]tileFn{1: tile512BF16N1Inv, 2: tile512BF16N2Inv}
	z.tileInv[tensor.Q8_0] = [3]tileFn{1: tile512Q8N1Inv, 2: tile512Q8N2Inv}
	z.tileInv[tensor.Q4_K] = [3]tileFn{1: tile512Q4KN1Inv, 2: tile512Q4KN2Inv}
	z.tileInv[tensor.Q6_K] = [3]tileFn{1: tile512Q6KN1Inv, 2: tile512Q6KN2Inv}
	z.tileInv[tensor.Q5_K] = [3]tileFn{1: tile512Q5KN1Inv, 2: tile512Q5KN2Inv}
	z.tileInv[tensor.Q4_0] = [3]tileFn{1: tile512Q40N1Inv, 2: tile512Q40N2Inv}
	z.tileInv[tensor.Q4_1] = [3]tileFn{1: tile512Q41N1Inv, 2: tile512Q41N2Inv}
	z.tileInv[tensor.Q5_0] = [3]tileFn{1: tile512Q50N1Inv, 2: tile512Q50N2Inv}
	z.tileInv[tensor.Q5_1] = [3]tileFn{1: tile512Q51N1Inv, 2: tile512Q51N2Inv}
	z.tileInv[tensor.IQ4_NL] = [3]tileFn{1: tile512IQ4NLN1Inv, 2: tile512IQ4NLN2Inv}
	z.tileInv[tensor.Q2_K] = [3]tileFn{1: tile512Q2KN1Inv, 2: tile512Q2KN2Inv}
	z.tileInv[tensor.Q3_K] = [3]tileFn{1: tile512Q3KN1Inv, 2: tile512Q3KN2Inv}
	z.tileInv[tensor.IQ4_XS] = [3]tileFn{1: tile512IQ4XSN1Inv, 2: tile512IQ4XSN2Inv}
	z.panelOrder = panelOrder512
	z.panel = [9]tileFn{1: panel512N1, 2: panel512N2, 3: panel512N3, 4: panel512N4, 5: panel512N5, 6: panel512N6}
	z.widen = [tensor.NumDTypes]tileFn{tensor.BF16: widen512BF16, tensor.F16: widen512F16, tensor.Q8_0: widen512Q8, tensor.Q4_K: widen512Q4K,
		tensor.Q6_K: widen512Q6K, tensor.Q5_K: widen512Q5K, tensor.Q4_0: widen512Q40, tensor.Q4_1: widen512Q41,
		tensor.Q5_0: widen512Q50, tensor.Q5_1: widen512Q51, tensor.IQ4_NL: widen512IQ4NL, tensor.Q2_K: widen512Q2K,
		tensor.IQ4_XS: widen512IQ4XS, tensor.Q3_K: widen512Q3K}
	// Widening bf16 costs one instruction per 16 weights, so re-widening per
	// input-row group beats streaming a float32 panel (twice the bytes) from
	// L2 up to large batches; the costlier f16 and quantized widenings switch
	// to panels sooner (measured on the in_proj shape, cold weights).
	z.panelMinN = [tensor.NumDTypes]int{tensor.F32: 16, tensor.BF16: 256, tensor.F16: 64, tensor.Q8_0: 32, tensor.Q4_K: 24,
		tensor.Q6_K: 24, tensor.Q5_K: 24, tensor.Q4_0: 24, tensor.Q4_1: 24, tensor.Q5_0: 24, tensor.Q5_1: 24,
		tensor.IQ4_NL: 24, tensor.Q2_K: 24, tensor.IQ4_XS: 24, tensor.Q3_K: 24}

	y := &isaKernels{lanes: 8}
	for dt := range y.maxN {
		y.maxN[dt] = 2
	}
	y.tile[tensor.F32] = [9]tileFn{1: tile256F32N1, 2: tile256F32N2}
	y.tile[tensor.BF16] = [9]tileFn{1: tile256BF16N1, 2: tile256BF16N2}
	y.tile[tensor.F16] = [9]tileFn{1: tile256F16N1, 2: tile256F16N2}
	y.tile[tensor.Q8_0] = [9]tileFn{1: tile256Q8N1, 2: tile256Q8N2}
	y.tile[tensor.Q4_K] = [9]tileFn{1: tile256Q4KN1, 2: tile256Q4KN2}
	y.tile[tensor.Q6_K] = [9]tileFn{1: tile256Q6KN1, 2: tile256Q6KN2}
	y.tile[tensor.Q5_K] = [9]tileFn{1: tile256Q5KN1, 2: tile256Q5KN2}
	y.tileInv[tensor.BF16] = [3]tileFn{1: tile256BF16N1Inv}
	y.tileInv[tensor.Q8_0] = [3]tileFn{1: tile256Q8N1Inv}
	y.tileInv[tensor.Q4_K] = [3]tileFn{1: tile256Q4KN1Inv}
	y.tileInv[tensor.Q6_K] = [3]tileFn{1: tile256Q6KN1Inv}
	y.tileInv[tensor.Q5_K] = [3]tileFn{1: tile256Q5KN1Inv}
	y.widen = [tensor.NumDTypes]tileFn{tensor.BF16: widen256BF16, tensor.F16: widen256F16, tensor.Q8_0: widen256Q8, tensor.Q4_K: widen256Q4K,
		tensor.Q6_K: widen256Q6K, tensor.Q5_K: widen256Q5K}

	if maxLevel >= LevelAVX2 {
		isaTables[LevelAVX2] = y
	}
	if maxLevel >= LevelAVX512 {
		isaTables[LevelAVX512] = z
	}
}

func f32p(s []float32) *float32 { return unsafe.SliceData(s) }

// Vector helpers: the assembly levels; false means "use Go".

func dotAsm(l Level, a, b []float32) (float32, bool) {
	switch {
	case l >= LevelAVX512:
		return dot512(f32p(a), f32p(b), len(a)), true
	case l == LevelAVX2:
		return dot256(f32p(a), f32p(b), len(a)), true
	}
	return 0, false
}

func axpyAsm(l Level, alpha float32, x, y []float32) bool {
	switch {
	case l >= LevelAVX512:
		axpy512(alpha, f32p(x), f32p(y), len(x))
	case l == LevelAVX2:
		axpy256(alpha, f32p(x), f32p(y), len(x))
	default:
		return false
	}
	return true
}

func scaleAsm(l Level, alpha float32, x []float32) bool {
	switch {
	case l >= LevelAVX512:
		scale512(alpha, f32p(x), len(x))
	case l == LevelAVX2:
		scale256(alpha, f32p(x), len(x))
	default:
		return false
	}
	return true
}

// addScaledAsm runs AddScaled's kernel (without add, ScaleTo's) over the
// longest prefix of dst that is a multiple of 4 vectors and returns its
// length (0: no kernel at l).
func addScaledAsm(l Level, dst, x []float32, alpha float32, add bool) int {
	var n int
	switch {
	case l >= LevelAVX512:
		n = len(dst) &^ 63
	case l == LevelAVX2:
		n = len(dst) &^ 31
	default:
		return 0
	}
	switch {
	case l >= LevelAVX512 && add:
		addscaled512(f32p(dst), f32p(x), alpha, n)
	case l >= LevelAVX512:
		scaleto512(f32p(dst), f32p(x), alpha, n)
	case add:
		addscaled256(f32p(dst), f32p(x), alpha, n)
	default:
		scaleto256(f32p(dst), f32p(x), alpha, n)
	}
	return n
}

// roundBF16Asm runs RoundBF16's kernel (with add, AddScaledBF16's) over
// the longest prefix of dst that is a multiple of a vector and returns its
// length (0: no kernel at l).
func roundBF16Asm(l Level, dst, x []float32, alpha float32, add bool) int {
	var n int
	switch {
	case l >= LevelAVX512:
		n = len(dst) &^ 15
	case l == LevelAVX2:
		n = len(dst) &^ 7
	default:
		return 0
	}
	switch {
	case l >= LevelAVX512 && add:
		addscaledbf16512(f32p(dst), f32p(x), alpha, n)
	case l >= LevelAVX512:
		roundbf16512(f32p(dst), f32p(x), n)
	case add:
		addscaledbf16256(f32p(dst), f32p(x), alpha, n)
	default:
		roundbf16256(f32p(dst), f32p(x), n)
	}
	return n
}

// bf16WireAsm runs the bf16 wire kernel of op ('e' EncodeBF16, 'd'
// DecodeBF16, 'a' AddBF16) over the longest prefix of f that is a multiple
// of 16 values and returns its length (b holds their bytes; 0 below AVX2).
func bf16WireAsm(l Level, op byte, b []byte, f []float32) int {
	n := len(f) &^ 15
	if n == 0 || l < LevelAVX2 {
		return 0
	}
	bp, fp := unsafe.SliceData(b), f32p(f)
	switch {
	case l >= LevelAVX512 && op == 'e':
		bf16enc512(bp, fp, n)
	case l >= LevelAVX512 && op == 'd':
		bf16dec512(fp, bp, n)
	case l >= LevelAVX512:
		bf16add512(fp, bp, n)
	case op == 'e':
		bf16enc256(bp, fp, n)
	case op == 'd':
		bf16dec256(fp, bp, n)
	default:
		bf16add256(fp, bp, n)
	}
	return n
}

// addWeightedQ80Asm runs AddWeightedQ80's kernel for the outputs dst (their
// weights w, n each), one 32-value column of the rows at a time and up to
// four outputs (two at the AVX2 level) per call (false: no kernel at l).
// The outputs' dst and w rows are passed as a base and a stride, so a group
// of outputs must be equally spaced in memory; groups that are not run one
// output per call.
func addWeightedQ80Asm(l Level, dst [][]float32, rows []byte, stride int, w [][]float32, n int) bool {
	if l < LevelAVX2 {
		return false
	}
	maxR := 4
	if l < LevelAVX512 {
		maxR = 2
	}
	for i0 := 0; i0 < len(dst); {
		r := min(maxR, len(dst)-i0)
		ds, ws := spacing(dst[i0:i0+r]), spacing(w[i0:i0+r])
		if ds < 0 || ws < 0 || (r > 1 && ds < 4*len(dst[i0])) { // not equally spaced, or overlapping
			r, ds, ws = 1, 0, 0
		}
		for b := range len(dst[i0]) / 32 {
			d, rw, wp := f32p(dst[i0][32*b:]), &rows[b*tensor.Q8_0BlockBytes], f32p(w[i0])
			switch {
			case l >= LevelAVX512 && r == 4:
				addweightedq80512R4(d, ds, rw, wp, ws, n, stride)
			case l >= LevelAVX512 && r == 3:
				addweightedq80512R3(d, ds, rw, wp, ws, n, stride)
			case l >= LevelAVX512 && r == 2:
				addweightedq80512R2(d, ds, rw, wp, ws, n, stride)
			case l >= LevelAVX512:
				addweightedq80512R1(d, ds, rw, wp, ws, n, stride)
			case r == 2:
				addweightedq80256R2(d, ds, rw, wp, ws, n, stride)
			default:
				addweightedq80256R1(d, ds, rw, wp, ws, n, stride)
			}
		}
		i0 += r
	}
	return true
}

// spacing is the byte distance between consecutive slices of v when they
// are equally spaced in one array (0 for a single slice), else -1.
func spacing(v [][]float32) int {
	if len(v) < 2 {
		return 0
	}
	d := uintptr(unsafe.Pointer(f32p(v[1]))) - uintptr(unsafe.Pointer(f32p(v[0])))
	for i := 2; i < len(v); i++ {
		if uintptr(unsafe.Pointer(f32p(v[i])))-uintptr(unsafe.Pointer(f32p(v[i-1]))) != d {
			return -1
		}
	}
	if int(d) <= 0 {
		return -1
	}
	return int(d)
}

func addAsm(l Level, dst, a, b []float32) bool {
	switch {
	case l >= LevelAVX512:
		add512(f32p(dst), f32p(a), f32p(b), len(dst))
	case l == LevelAVX2:
		add256(f32p(dst), f32p(a), f32p(b), len(dst))
	default:
		return false
	}
	return true
}

func mulAsm(l Level, dst, a, b []float32) bool {
	switch {
	case l >= LevelAVX512:
		mul512(f32p(dst), f32p(a), f32p(b), len(dst))
	case l == LevelAVX2:
		mul256(f32p(dst), f32p(a), f32p(b), len(dst))
	default:
		return false
	}
	return true
}

// ssmRowsAsm runs SSMRows in assembly where n is a multiple of four
// vectors (the shape in which dot, axpy and scale take no tail path).
func ssmRowsAsm(l Level, st []float32, n int, dA float32, dtx, b, c, y []float32) bool {
	switch {
	case l >= LevelAVX512 && n == 128:
		ssmrows512N128(f32p(st), len(y), dA, f32p(dtx), f32p(b), f32p(c), f32p(y))
	case l >= LevelAVX512 && n%64 == 0:
		ssmrows512(f32p(st), n, len(y), dA, f32p(dtx), f32p(b), f32p(c), f32p(y))
	case l == LevelAVX2 && n%32 == 0:
		ssmrows256(f32p(st), n, len(y), dA, f32p(dtx), f32p(b), f32p(c), f32p(y))
	default:
		return false
	}
	return true
}

// expShiftAsm handles the longest prefix of x that is a multiple of the vector
// width and returns its length and sum (0, 0 without assembly); without store
// x is left as it is (SumExpShift).
func expShiftAsm(l Level, x []float32, m float32, store bool) (int, float64) {
	var n int
	switch {
	case l >= LevelAVX512:
		n = len(x) &^ 15
	case l == LevelAVX2:
		n = len(x) &^ 7
	default:
		return 0, 0
	}
	switch {
	case l >= LevelAVX512 && store:
		return n, expShift512(f32p(x), n, m)
	case l >= LevelAVX512:
		return n, sumExpShift512(f32p(x), n, m)
	case store:
		return n, expShift256(f32p(x), n, m)
	}
	return n, sumExpShift256(f32p(x), n, m)
}

// maxAsm handles the longest prefix of x that is a multiple of the vector width
// and returns its length and maximum (0 and -Inf without assembly).
func maxAsm(l Level, x []float32) (int, float32) {
	switch {
	case l >= LevelAVX512 && len(x) >= 16:
		n := len(x) &^ 15
		return n, maxv512(f32p(x), n)
	case l >= LevelAVX2 && len(x) >= 8:
		n := len(x) &^ 7
		return n, maxv256(f32p(x), n)
	}
	return 0, float32(math.Inf(-1))
}

// siluAsm handles the longest prefix of g that is a multiple of 16 at the
// AVX-512 level and returns its length (0 elsewhere).
func siluAsm(l Level, dst, g, u []float32) int {
	n := len(g) &^ 15
	if l < LevelAVX512 || n == 0 {
		return 0
	}
	_, _ = dst[n-1], g[n-1]
	var pu *float32
	if u != nil {
		_ = u[n-1]
		pu = f32p(u)
	}
	siluMul512(f32p(dst), f32p(g), pu, n)
	return n
}

// Probes.

// fmaProbe runs iters iterations of 12 independent vector FMAs and returns
// the flops per iteration (0 when there is no assembly probe).
func fmaProbe(iters int) (flopsPerIter int) {
	switch {
	case maxLevel >= LevelAVX512:
		fmaPeak512(iters)
		return 12 * 16 * 2
	case maxLevel >= LevelAVX2:
		fmaPeak256(iters)
		return 12 * 8 * 2
	}
	return 0
}

// readProbe streams b (len a multiple of 512) and returns a checksum.
func readProbe(b []byte) uint64 {
	if maxLevel >= LevelAVX512 {
		return readMem512(unsafe.SliceData(b), len(b))
	}
	if maxLevel >= LevelAVX2 {
		return readMem256(unsafe.SliceData(b), len(b))
	}
	return readGo(b)
}

// triadProbe computes a = b + s*c (len a multiple of 64).
func triadProbe(a, b, c []float32, s float32) {
	switch {
	case maxLevel >= LevelAVX512:
		triad512(f32p(a), f32p(b), f32p(c), s, len(a))
	case maxLevel >= LevelAVX2:
		triad256(f32p(a), f32p(b), f32p(c), s, len(a))
	default:
		triadGo(a, b, c, s)
	}
}
