package kernels

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// TestAddWeightedQ80SameBits: at every level AddWeightedQ80 gives the bits
// of its twin and of the plain sum written out here (each row dequantized as
// tensor.DequantizeRow does, then weighted and added row after row), over
// rows stride bytes apart, with scales that are f16 subnormals, zero and
// large, and int8 values at both ends (-128 too, which files may hold).
func TestAddWeightedQ80SameBits(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(71, 72))
		for _, c := range []struct{ hd, n, gap int }{
			{32, 0, 0}, {32, 1, 0}, {64, 7, 3}, {128, 256, 0}, {128, 33, 34}, {256, 19, 5},
		} {
			rb := c.hd / 32 * tensor.Q8_0BlockBytes
			stride := rb + c.gap
			rows := make([]byte, c.n*stride+rb)
			for i := range rows {
				rows[i] = byte(rng.IntN(256))
			}
			scales := []uint16{0, 1, 0x03ff, 0x3c00, 0x2e66, 0xb800, 0x7bff, 0x1234}
			w := make([]float32, c.n)
			for tk := range c.n {
				for b := range c.hd / 32 {
					o := tk*stride + b*tensor.Q8_0BlockBytes
					binary.LittleEndian.PutUint16(rows[o:], scales[rng.IntN(len(scales))])
					rows[o+2], rows[o+3] = 0x80, 0x7f // -128, 127
				}
				w[tk] = float32(rng.Float64())
				if tk%5 == 0 {
					w[tk] = 0
				}
			}
			dst := make([]float32, c.hd)
			for i := range dst {
				dst[i] = float32(rng.NormFloat64())
			}
			want := append([]float32(nil), dst...)
			deq := make([]float32, c.hd)
			for tk := range c.n {
				row := rows[tk*stride : tk*stride+rb]
				for b := range c.hd / 32 {
					blk := row[b*tensor.Q8_0BlockBytes:]
					s := w[tk] * tensor.F16ToF32(binary.LittleEndian.Uint16(blk))
					for j := range 32 {
						deq[32*b+j] = float32(s * float32(int8(blk[2+j])))
					}
				}
				for i := range want {
					want[i] += deq[i]
				}
			}
			got, twin := append([]float32(nil), dst...), append([]float32(nil), dst...)
			AddWeightedQ80(got, rows, stride, w)
			AddWeightedQ80Ref(twin, rows, stride, w)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) || math.Float32bits(twin[i]) != math.Float32bits(want[i]) {
					t.Fatalf("hd=%d n=%d stride=%d [%d]: %g, twin %g, want %g", c.hd, c.n, stride, i, got[i], twin[i], want[i])
				}
			}
		}
	})
}

// BenchmarkAddWeightedQ80 is one query row's weighted sum over one full KV
// page of one head (256 tokens, head_dim 128).
func BenchmarkAddWeightedQ80(b *testing.B) {
	const n, hd = 256, 128
	rb := hd / 32 * tensor.Q8_0BlockBytes
	src := make([]float32, n*hd)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range src {
		src[i] = float32(rng.NormFloat64())
	}
	rows := make([]byte, n*rb)
	tensor.QuantizeQ8_0(src, rows)
	w := make([]float32, n)
	for i := range w {
		w[i] = float32(rng.Float64())
	}
	dst := make([]float32, hd)
	for b.Loop() {
		AddWeightedQ80(dst, rows, rb, w)
	}
	b.ReportMetric(float64(n*rb)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
}

// TestAddWeightedQ80RowsSameBits: AddWeightedQ80Rows gives each output the
// bits of AddWeightedQ80Ref alone, at every level, for 1 to 7 outputs (so
// groups of four, three, two and one), equally spaced in one array (the
// kernels' strides) or not (one output per call).
func TestAddWeightedQ80RowsSameBits(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(73, 74))
		for _, hd := range []int{32, 128} {
			for m := 1; m <= 7; m++ {
				for _, spaced := range []bool{true, false} {
					const n = 45
					rb := hd / 32 * tensor.Q8_0BlockBytes
					src := make([]float32, n*hd)
					for i := range src {
						src[i] = float32(rng.NormFloat64())
					}
					rows := make([]byte, n*rb)
					tensor.QuantizeQ8_0(src, rows)
					dst, w := make([][]float32, m), make([][]float32, m)
					dbuf, wbuf := make([]float32, m*(hd+8)), make([]float32, m*(n+3))
					for i := range m {
						if spaced {
							dst[i], w[i] = dbuf[i*(hd+8):i*(hd+8)+hd], wbuf[i*(n+3):i*(n+3)+n]
						} else {
							dst[i], w[i] = make([]float32, hd), make([]float32, n)
						}
						for j := range dst[i] {
							dst[i][j] = float32(rng.NormFloat64())
						}
						for j := range w[i] {
							w[i][j] = float32(rng.Float64())
						}
					}
					want := make([][]float32, m)
					for i := range m {
						want[i] = append([]float32(nil), dst[i]...)
						AddWeightedQ80Ref(want[i], rows, rb, w[i])
					}
					AddWeightedQ80Rows(dst, rows, rb, w)
					for i := range m {
						for j := range want[i] {
							if math.Float32bits(dst[i][j]) != math.Float32bits(want[i][j]) {
								t.Fatalf("hd=%d, %d outputs (spaced %v): output %d [%d] = %g, want %g", hd, m, spaced, i, j, dst[i][j], want[i][j])
							}
						}
					}
				}
			}
		}
	})
}
