package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// q8DTypes are the weight types with integer kernels on 8-bit activations
// (quantizeQ8K's blocks).
var q8DTypes = []tensor.DType{tensor.Q4_K, tensor.Q5_K, tensor.Q6_K, tensor.Q3_K, tensor.Q2_K, tensor.IQ4_XS,
	tensor.IQ2_XXS, tensor.IQ2_XS, tensor.IQ2_S, tensor.IQ3_XXS, tensor.IQ3_S, tensor.IQ1_S, tensor.IQ1_M}

// TestMatMulQ8 checks the integer kernels against their plain twin
// (matMulQ8Ref: the same bits) and against the
// float32 reference within the error of 8-bit activations.
func TestMatMulQ8(t *testing.T) {
	if KernelLevel() < LevelAVX512 || !hasQ8Kernels() {
		t.Skip("no integer kernels on this CPU")
	}
	testMatMulQ8(t)
	// The kernels for CPUs without VNNI, wherever they can run: the same
	// function, and the same bits as the VNNI ones.
	rng := rand.New(rand.NewPCG(11, 11))
	var vnni [][]float32
	var cases [][2]any
	for _, dt := range q8DTypes {
		w := randMatrix(rng, dt, 37, 768)
		x := randVec(rng, 3*768)
		out := make([]float32, 3*37)
		MatMul(out, w, x, 3)
		vnni = append(vnni, out)
		cases = append(cases, [2]any{w, x})
	}
	if restore := forceQ8BW(); restore != nil {
		defer restore()
		testMatMulQ8(t)
		for c, cs := range cases {
			w, x := cs[0].(tensor.Matrix), cs[1].([]float32)
			out := make([]float32, 3*37)
			MatMul(out, w, x, 3)
			for i := range out {
				if math.Float32bits(out[i]) != math.Float32bits(vnni[c][i]) {
					t.Fatalf("%v: out[%d] = %g without VNNI, %g with", w.DType, i, out[i], vnni[c][i])
				}
			}
		}
	}
}

func testMatMulQ8(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for _, dt := range q8DTypes {
		for _, rows := range []int{1, 3, 4, 7, 33, 260} {
			for _, cols := range []int{256, 768, 1536} {
				w := randMatrix(rng, dt, rows, cols)
				ns := []int{1, 2, 3, 5, 8, 12, 15, 38} // 38 = 16+16+6 (AVX-512 i-quants), 4·8+6 (AVX2)
				if rows == 33 && cols == 768 {
					// Every other kernel width once: up to 8 rows a kernel,
					// 12 = 8+4 and 15 = 8+7; up to 16, each on its own.
					ns = append(ns, 4, 7, 9, 10, 11, 13, 14)
				}
				for _, n := range ns {
					x := randVec(rng, n*cols)
					abs := absRef(w, x, n)
					want := make([]float32, n*rows)
					matMulQ8Ref(want, w, x, n)
					exact := make([]float32, n*rows)
					MatMulRef(exact, w, x, n)
					for _, th := range []int{1, 2} {
						got := make([]float32, n*rows+1)
						got[n*rows] = 42
						withThreads(th, func() { MatMul(got, w, x, n) })
						if got[n*rows] != 42 {
							t.Fatalf("%v: wrote past out", dt)
						}
						what := fmt.Sprintf("%v [%d,%d] n=%d threads=%d", dt, rows, cols, n, th)
						for i := range want {
							// Twin: the same bits (one float32 sum per row).
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%s: out[%d] = %g, twin %g: not the same bits", what, i, got[i], want[i])
							}
							if d := math.Abs(float64(got[i] - want[i])); d > 1e-5*float64(abs[i])+1e-30 {
								t.Fatalf("%s: out[%d] = %g, twin %g (|w·x| %g)", what, i, got[i], want[i], abs[i])
							}
							// Float32 reference: 8-bit activations err by at most
							// half a step (amax/254) per value.
							if d := math.Abs(float64(got[i] - exact[i])); d > 0.01*float64(abs[i]) {
								t.Fatalf("%s: out[%d] = %g, float32 ref %g (|w·x| %g)", what, i, got[i], exact[i], abs[i])
							}
						}
					}
				}
			}
		}
	}
}

// TestQuantizeQ8K checks the activation blocks at every kernel level (the
// assembly of AVX-512 and AVX2, the Go twin below them): values within half
// a step, the group sums, the Go twin's bytes, and non-finite inputs
// refused.
func TestQuantizeQ8K(t *testing.T) {
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	for _, l := range SupportedLevels() {
		SetKernelLevel(l)
		t.Run(l.String(), testQuantizeQ8K)
	}
}

func testQuantizeQ8K(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	x := randVec(rng, 512)
	x[3] = 0
	x[300] = -7 // the block's extreme: q = -127 exactly
	buf := make([]byte, 2*q8xBlockBytes)
	if !quantizeQ8K(buf, x) {
		t.Fatal("finite input refused")
	}
	for b := 0; b < 2; b++ {
		blk := buf[b*q8xBlockBytes:]
		d := math.Float32frombits(uint32(blk[304]) | uint32(blk[305])<<8 | uint32(blk[306])<<16 | uint32(blk[307])<<24)
		var s16 [16]int
		for l := 0; l < 256; l++ {
			q := int(int8(blk[l]))
			if e := math.Abs(float64(x[b*256+l] - d*float32(q))); e > 0.5001*float64(d) {
				t.Fatalf("block %d value %d: %g quantized to %d·%g", b, l, x[b*256+l], q, d)
			}
			s16[l/16] += q
		}
		for g := 0; g < 16; g++ {
			if got := int(int16(uint16(blk[256+2*g]) | uint16(blk[257+2*g])<<8)); got != s16[g] {
				t.Fatalf("block %d: sum16[%d] = %d, want %d", b, g, got, s16[g])
			}
			if g%2 == 1 {
				if got := int(int16(uint16(blk[288+g-1]) | uint16(blk[289+g-1])<<8)); got != s16[g-1]+s16[g] {
					t.Fatalf("block %d: sum32[%d] = %d, want %d", b, g/2, got, s16[g-1]+s16[g])
				}
			}
		}
	}
	if int8(buf[q8xBlockBytes+300-256]) != -127 {
		t.Fatalf("extreme value quantized to %d", int8(buf[q8xBlockBytes+300-256]))
	}
	// The assembly writes the same bytes as the Go twin.
	for _, y := range [][]float32{x, make([]float32, 512), randVec(rng, 1536)} {
		y[len(y)-1] = 1e-31
		got := make([]byte, len(y)/256*q8xBlockBytes)
		want := make([]byte, len(got))
		for i := range got {
			got[i], want[i] = 0xAA, 0x55
		}
		if !quantizeQ8K(got, y) || !quantizeQ8KRef(want, y) {
			t.Fatal("finite input refused")
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("len %d: byte %d (block %d offset %d) = %#x, Go twin %#x", len(y), i, i/q8xBlockBytes, i%q8xBlockBytes, got[i], want[i])
			}
		}
	}
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		y := append([]float32(nil), x...)
		y[100] = bad
		if quantizeQ8K(buf, y) || quantizeQ8KRef(buf, y) {
			t.Fatalf("%v accepted", bad)
		}
	}
}

// TestMatMulQ8NonFinite: a row holding a NaN or an infinity takes the float32
// path on its own (its result propagates the NaN as float32 would), and the
// other rows keep the bits they have when computed alone.
func TestMatMulQ8NonFinite(t *testing.T) {
	if KernelLevel() < LevelAVX512 || !hasQ8Kernels() {
		t.Skip("no integer kernels on this CPU")
	}
	rng := rand.New(rand.NewPCG(10, 10))
	for _, dt := range []tensor.DType{tensor.Q4_K, tensor.Q6_K} {
		w := randMatrix(rng, dt, 37, 512)
		const n = 5
		x := randVec(rng, n*w.Cols)
		x[2*w.Cols+7] = float32(math.NaN())
		x[4*w.Cols] = float32(math.Inf(1))
		out := make([]float32, n*w.Rows)
		MatMul(out, w, x, n)
		for i := 0; i < n; i++ {
			alone := make([]float32, w.Rows)
			MatMul(alone, w, x[i*w.Cols:(i+1)*w.Cols], 1)
			for r := range alone {
				got := out[i*w.Rows+r]
				if math.Float32bits(got) != math.Float32bits(alone[r]) && !(got != got && alone[r] != alone[r]) {
					t.Fatalf("%v row %d out[%d] = %g batched, %g alone", dt, i, r, got, alone[r])
				}
			}
		}
		if v := out[2*w.Rows]; v == v {
			t.Fatalf("%v: the NaN row gave %g", dt, v)
		}
	}
}

// TestMatMulBF16Activations checks the bf16 kernels against their twin
// (matMulBF16Ref: float32 rounding apart, the same function), against the
// float32 reference within the error of bf16 activations, and that in the
// batch-invariant mode a row's result does not depend on the other rows of
// the call.
func TestMatMulBF16Activations(t *testing.T) {
	if KernelLevel() < LevelAVX512 || !hasBF16DotKernels() {
		t.Skip("no AVX-512 BF16 on this CPU")
	}
	rng := rand.New(rand.NewPCG(12, 12))
	for _, rows := range []int{1, 5, 64, 131} {
		for _, cols := range []int{32, 96, 1536} {
			w := randMatrix(rng, tensor.BF16, rows, cols)
			for _, n := range []int{1, 2, 6, 7, 13} {
				x := randVec(rng, n*cols)
				abs := absRef(w, x, n)
				twin := make([]float32, n*rows)
				matMulBF16Ref(twin, w, x, n)
				exact := make([]float32, n*rows)
				MatMulRef(exact, w, x, n)
				got := make([]float32, n*rows)
				withThreads(2, func() { MatMul(got, w, x, n) })
				// Rows alone, in the batch-invariant mode (by default one
				// input row walks the rows in another order).
				prevInv := SetBatchInvariant(true)
				inv := make([]float32, n*rows)
				MatMul(inv, w, x, n)
				for i := range got {
					if d := math.Abs(float64(got[i] - twin[i])); d > tolerance(cols)*float64(abs[i])+1e-30 {
						t.Fatalf("[%d,%d] n=%d: out[%d] = %g, twin %g", rows, cols, n, i, got[i], twin[i])
					}
					// bf16 activations: half a unit of 8 bits per value.
					if d := math.Abs(float64(got[i] - exact[i])); d > 0.004*float64(abs[i]) {
						t.Fatalf("[%d,%d] n=%d: out[%d] = %g, float32 ref %g", rows, cols, n, i, got[i], exact[i])
					}
					alone := make([]float32, rows)
					MatMul(alone, w, x[(i/rows)*cols:(i/rows+1)*cols], 1)
					if math.Float32bits(alone[i%rows]) != math.Float32bits(inv[i]) {
						t.Fatalf("[%d,%d] n=%d: out[%d] = %g batched, %g alone (batch-invariant mode)", rows, cols, n, i, inv[i], alone[i%rows])
					}
				}
				SetBatchInvariant(prevInv)
			}
		}
	}
}

// TestToBF16: the assembly rounds as the Go twin does, NaNs and infinities
// included.
func TestToBF16(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 13))
	x := randVec(rng, 1000)
	for i := range x {
		x[i] *= float32(math.Pow(2, float64(rng.IntN(60)-30)))
	}
	specials := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.Float32frombits(0x7F800001), math.Float32frombits(0x3F808000), math.Float32frombits(0x3F818000), math.MaxFloat32, 1e-45}
	copy(x[5:], specials)
	got, want := make([]uint16, len(x)), make([]uint16, len(x))
	toBF16(got, x)
	toBF16Ref(want, x)
	for i := range x {
		if got[i] != want[i] {
			t.Fatalf("%g (%#x): %#x, Go twin %#x", x[i], math.Float32bits(x[i]), got[i], want[i])
		}
	}
	if want[5+6] != 0x3F80 || want[5+7] != 0x3F82 {
		t.Fatalf("ties: %#x %#x, want 0x3f80 0x3f82 (to even)", want[11], want[12])
	}
	if w := want[5+4]; w&0x7F80 != 0x7F80 || w&0x7F == 0 {
		t.Fatalf("NaN became %#x", w)
	}
}

// TestMatMulQ8AVX2: the AVX2 integer kernels (q8DTypes) give the plain
// twin's bits, and so the AVX-512 kernels' bits, wherever the AVX2 level
// runs.
func TestMatMulQ8AVX2(t *testing.T) {
	if MaxLevel() < LevelAVX2 {
		t.Skip("no AVX2 on this CPU or build")
	}
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	defer SetQ8Activations(SetQ8Activations(true))
	rng := rand.New(rand.NewPCG(12, 12))
	for _, dt := range q8DTypes {
		for _, rows := range []int{1, 7, 33} {
			for _, cols := range []int{256, 1536} {
				w := randMatrix(rng, dt, rows, cols)
				for _, n := range []int{1, 2, 3, 5, 8, 12, 15, 22} { // every kernel width: 12 = 8+4, 15 = 8+7, 22 = 8+8+6
					x := randVec(rng, n*cols)
					SetKernelLevel(LevelAVX2)
					if !usesQ8(w) {
						t.Fatalf("%v: the AVX2 level does not run the integer kernels", dt)
					}
					want := make([]float32, n*rows)
					matMulQ8Ref(want, w, x, n)
					// The twin against the float32 reference: 8-bit
					// activations err by at most half a step per value.
					exact := make([]float32, n*rows)
					MatMulRef(exact, w, x, n)
					abs := absRef(w, x, n)
					for i := range want {
						if d := math.Abs(float64(want[i] - exact[i])); d > 0.01*float64(abs[i]) {
							t.Fatalf("%v [%d,%d] n=%d: twin out[%d] = %g, float32 ref %g (|w·x| %g)", dt, rows, cols, n, i, want[i], exact[i], abs[i])
						}
					}
					for _, th := range []int{1, 2} {
						got := make([]float32, n*rows)
						withThreads(th, func() { MatMul(got, w, x, n) })
						for i := range want {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%v [%d,%d] n=%d threads=%d: out[%d] = %g on AVX2, twin %g", dt, rows, cols, n, th, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
	}
}
