package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// TestQ80x16MatchesRowMajor: a packed Q8_0 matrix gives the bits the
// row-major one gives, at every kernel level and thread count, for any
// number of input rows (the packed kernels on AVX-512 VNNI: the twin's
// bits), with a partial last group, and with an input row holding a NaN or
// an infinity; its rows dequantize as the row-major rows do.
func TestQ80x16MatchesRowMajor(t *testing.T) {
	if !hasQ80x16Kernels() {
		t.Skip("no packed Q8_0 kernels on this CPU or build")
	}
	rng := rand.New(rand.NewPCG(31, 31))
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	for _, rows := range []int{1, 16, 37, 100} {
		for _, cols := range []int{32, 96, 544, 1536} {
			w := randMatrix(rng, tensor.Q8_0, rows, cols)
			if !CanPackQ80x16(w) {
				t.Fatalf("[%d,%d]: not packable", rows, cols)
			}
			p := PackQ80x16(make([]byte, PackedQ80x16Bytes(rows, cols)), w)
			want, got := make([]float32, cols), make([]float32, cols)
			for _, r := range []int{0, rows / 2, rows - 1} {
				tensor.DequantizeRow(w.DType, w.Row(r), want)
				DequantizeMatrixRow(p, r, got)
				for c := range want {
					if math.Float32bits(got[c]) != math.Float32bits(want[c]) {
						t.Fatalf("[%d,%d] row %d col %d: %g packed, %g row-major", rows, cols, r, c, got[c], want[c])
					}
				}
			}
			for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 9, 17} {
				x := randVec(rng, n*cols)
				if n == 5 {
					x[3*cols+1] = float32(math.NaN())
				}
				if n == 9 {
					x[cols] = float32(math.Inf(1))
				}
				twin := make([]float32, n*rows)
				if n < 5 {
					matMulQ80Ref(twin, w, x, n)
				}
				for _, l := range SupportedLevels() {
					SetKernelLevel(l)
					for _, th := range []int{1, 2} {
						what := fmt.Sprintf("[%d,%d] n=%d level=%v threads=%d", rows, cols, n, l, th)
						ref := make([]float32, n*rows)
						withThreads(th, func() { MatMul(ref, w, x, n) })
						out := make([]float32, n*rows+1)
						out[n*rows] = 42
						withThreads(th, func() { MatMul(out, p, x, n) })
						if out[n*rows] != 42 {
							t.Fatalf("%s: wrote past out", what)
						}
						for i := range ref {
							if math.Float32bits(out[i]) != math.Float32bits(ref[i]) {
								t.Fatalf("%s: out[%d] = %g packed, %g row-major", what, i, out[i], ref[i])
							}
							if n < 5 && l == LevelAVX512 && math.Float32bits(out[i]) != math.Float32bits(twin[i]) {
								t.Fatalf("%s: out[%d] = %g packed, %g twin (matMulQ80Ref)", what, i, out[i], twin[i])
							}
						}
					}
				}
				SetKernelLevel(prev)
			}
		}
	}
}

// TestPackQ80x16Parallel: a matrix large enough to be packed on several
// goroutines gives the bytes of a packing on one, and unpacks to its rows.
func TestPackQ80x16Parallel(t *testing.T) {
	rng := rand.New(rand.NewPCG(32, 32))
	rows, cols := 64*16*4+5, 64
	w := randMatrix(rng, tensor.Q8_0, rows, cols)
	n := PackedQ80x16Bytes(rows, cols)
	par, ser := make([]byte, n), make([]byte, n)
	PackQ80x16(par, w)
	packQ80x16Groups(ser, w, 0, (rows+15)/16)
	if string(par) != string(ser) {
		t.Fatal("parallel packing differs from serial packing")
	}
	p := tensor.Matrix{DType: tensor.Q8_0, Rows: rows, Cols: cols, Data: par, Layout: tensor.Q80x16}
	if string(RowMajorBytes(p, 0, rows*w.RowStride())) != string(w.Data) {
		t.Fatal("packed matrix does not unpack to its rows")
	}
}
