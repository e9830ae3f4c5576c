//go:build !purego

package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// TestCodesMatchPacked: a product that unpacks its codes (packedCodesRange)
// gives every row the bits the packed kernels give it, at every number of
// input rows (passes of 1 to 4 rows and their remainders), with whole and
// partial last groups, on one and two threads; and it does unpack.
func TestCodesMatchPacked(t *testing.T) {
	if KernelLevel() < LevelAVX512 || !hasPackedKernels(tensor.Q6_K) || !hasPackedKernels(tensor.Q5_K) || !hasPackedKernels(tensor.Q3_K) {
		t.Skip("no AVX-512 packed Q6_K, Q5_K and Q3_K kernels on this CPU or build")
	}
	defer SetQ8Activations(SetQ8Activations(true))
	rng := rand.New(rand.NewPCG(35, 35))
	for _, dt := range []tensor.DType{tensor.Q6_K, tensor.Q5_K, tensor.Q3_K} {
		for _, shape := range [][2]int{{16, 256}, {37, 512}, {100, 1536}} {
			rows, cols := shape[0], shape[1]
			w := randMatrix(rng, dt, rows, cols)
			p := Pack(make([]byte, PackedBytes(dt, rows, cols)), w)
			if codesUnpackers[p.Layout] == nil {
				t.Fatalf("%v packs into %v, which has no codes kernels", dt, p.Layout)
			}
			for _, n := range []int{1, 2, 4, 5, 7, 8, 9, 13, 33} {
				x := randVec(rng, n*cols)
				for _, th := range []int{1, 2} {
					what := fmt.Sprintf("%v [%d,%d] n=%d threads=%d", dt, rows, cols, n, th)
					want, got := make([]float32, n*rows), make([]float32, n*rows+1)
					got[n*rows] = 42
					restore := setCodesMinRows(1 << 30)
					withThreads(th, func() { MatMul(want, p, x, n) })
					setCodesMinRows(1)
					var unpacked atomic.Int32
					testHookCodes = func() { unpacked.Add(1) }
					withThreads(th, func() { MatMul(got, p, x, n) })
					testHookCodes = nil
					restore()
					if n > 2 && unpacked.Load() == 0 { // one and two rows run the two-stream kernels
						t.Fatalf("%s: no codes were unpacked", what)
					}
					if got[n*rows] != 42 {
						t.Fatalf("%s: wrote past out", what)
					}
					for i := range want {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("%s: out[%d] = %g from codes, %g packed", what, i, got[i], want[i])
						}
					}
				}
			}
		}
	}
}

// setCodesMinRows makes every layout unpack codes from n input rows on,
// and returns the function that restores the thresholds.
func setCodesMinRows(n int) (restore func()) {
	prev := codesMinRows
	for l := range codesMinRows {
		codesMinRows[l] = n
	}
	return func() { codesMinRows = prev }
}

// BenchmarkCodes: Q6_K, Q5_K and Q3_K products with many input rows, with
// the codes unpacked once per row block (codes) against the packed kernels
// making them on every pass (packed), alternated in one run, one thread:
// the LM head's shape at batched decode, in_proj's and an expert's down at
// prefill sizes.
func BenchmarkCodes(b *testing.B) {
	for _, dt := range []tensor.DType{tensor.Q6_K, tensor.Q5_K, tensor.Q3_K} {
		for _, sh := range [][2]int{{100352, 1536}, {6448, 1536}, {1536, 512}} {
			w := randMatrix(rand.New(rand.NewPCG(1, 1)), dt, sh[0], sh[1])
			p := Pack(make([]byte, PackedBytes(dt, w.Rows, w.Cols)), w)
			for _, n := range []int{3, 4, 6, 8, 16, 32, 64} {
				for _, codes := range []bool{false, true} {
					name := map[bool]string{false: "packed", true: "codes"}[codes]
					b.Run(fmt.Sprintf("%v/%dx%d/n=%d/%s", dt, sh[0], sh[1], n, name), func(b *testing.B) {
						defer setCodesMinRows(map[bool]int{false: 1 << 30, true: 1}[codes])()
						benchMatMulOn(b, []tensor.Matrix{p}, n, 1)
					})
				}
			}
		}
	}
}
