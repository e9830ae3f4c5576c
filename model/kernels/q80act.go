package kernels

import (
	"encoding/binary"
	"math"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// 8-bit activations for Q8_0 weights at prefill sizes.
//
// A Q8_0 row keeps one scale per 32 values, so the K-quant integer kernels'
// approach (walk a weight row, add its blocks' integer sums) would need one
// horizontal reduction and one float32 step per row and block: no cheaper
// than widening the weights. The Q8_0 integer kernels (internal/gen/q80.go)
// instead put 16 input rows in the 16 lanes of a register: a group of 16
// input rows is quantized to 8 bits per block of 32 values (llama.cpp's
// quantize_row_q8_0: d = amax/127 kept as f16, q = round(x·127/amax)) and
// stored interleaved, 4 bytes of each row per 32-bit lane; VPDPBUSD (AVX-512
// VNNI) multiplies them with 4 weight bytes broadcast from the unchanged
// Q8_0 row, 8 instructions per block for 16 input rows, then one conversion
// and one FMA per block (about 2.5 times fewer instructions per
// multiply-add than the float32 tiles).
//
// The layout of one quantized block of a group (q80xBlockBytes):
//
//	[64j, 64j+64)  j < 8: dword lane i = values 4j..4j+3 of input row i,
//	               as q+128 (unsigned)
//	[512, 576)     lane i = d of input row i (float32, rounded to f16)
//
// For each weight row and block, q80prep512 computes −128·Σ q_w (the bias
// that the activations' +128 adds to the sums) and d_w as float32; the
// kernel starts each block's sum from it, so the sums are exact:
// Σ q_x·q_w. A lane's result is
//
//	acc = 0; for b: acc = fma(float32(Σ_b q_x·q_w), d_x,b·d_w,b, acc)
//
// whatever the other lanes hold, the number of weight rows per call or the
// thread: the path is batch-invariant among the calls that take it. It is
// taken from q80MinRows input rows on (below, one row's quarter-empty or
// emptier group costs more than the float32 tiles), in the default mode
// only: with SetBatchInvariant on, Q8_0 keeps the float32 kernels at every
// row count, so that a row's result is the same at 1 and 500 rows.
// matMulQ80Ref is the plain twin.

const (
	q80Group       = 16  // input rows per quantized group (the lanes)
	q80xBlockBytes = 576 // one block of a group
	q80Values      = 32
	q80Tiny        = q8Tiny
	q80MaxRows     = 6 // weight rows per q80dot512R call
)

// q80MinRows is the fewest input rows for which MatMul takes the Q8_0
// integer path (measured: BenchmarkQ80Activations).
var q80MinRows = 8

// q80Usable reports whether MatMul may take the Q8_0 integer path for a
// product with n input rows (inv: the call asks for the batch-invariant
// kernels).
func q80Usable(w tensor.Matrix, n int, inv bool) bool {
	return q8Act.Load() && w.DType == tensor.Q8_0 && w.Cols > 0 && w.Cols%q80Values == 0 &&
		n >= q80MinRows && !inv && !batchInvariant.Load()
}

// usesQ80 reports whether MatMul at the current level takes the Q8_0
// integer path for this product with n input rows (finite x assumed).
func usesQ80(w tensor.Matrix, n int) bool {
	return KernelLevel() >= LevelAVX512 && hasQ80Kernels() && q80Usable(w, n, false)
}

// quantizeQ80Ref quantizes rows (at most 16; the other lanes are zero) of x,
// xstride values apart, nb blocks of 32 values each, into one group at dst
// (nb·q80xBlockBytes bytes), the bytes quantQ80I512 writes. It reports false
// if a row holds an infinity or a NaN.
func quantizeQ80Ref(dst []byte, x []float32, xstride, rows, nb int) bool {
	dst = dst[:nb*q80xBlockBytes]
	clear(dst)
	for b := 0; b < nb; b++ {
		blk := dst[b*q80xBlockBytes : (b+1)*q80xBlockBytes]
		for i := 0; i < q80Group; i++ {
			var d, id float32
			var xs []float32
			if i < rows {
				xs = x[i*xstride+b*q80Values : i*xstride+(b+1)*q80Values]
				var amax float32
				for _, v := range xs {
					if v != v || math.IsInf(float64(v), 0) {
						return false
					}
					amax = max(amax, float32(math.Abs(float64(v))))
				}
				if amax >= q80Tiny {
					d = tensor.F16ToF32(tensor.F32ToF16(amax / 127))
					id = 127 / amax
				}
			}
			binary.LittleEndian.PutUint32(blk[512+4*i:], math.Float32bits(d))
			for l := 0; l < q80Values; l++ {
				var q int32
				if xs != nil {
					// Round to nearest even (see quantizeQ8KRef).
					q = int32(math.Float32bits(xs[l]*id+12582912)) - 0x4B400000
					q = min(127, max(-127, q))
				}
				blk[64*(l/4)+4*i+l%4] = byte(q + 128)
			}
		}
	}
	return true
}

// dotQ80Ref is lane i's dot product of a Q8_0 row with a quantized group:
// the exact integer sum per block, then one float32 FMA.
func dotQ80Ref(row, xg []byte, i, nb int) float32 {
	var acc float32
	for b := 0; b < nb; b++ {
		blk := row[b*tensor.Q8_0BlockBytes : (b+1)*tensor.Q8_0BlockBytes]
		xb := xg[b*q80xBlockBytes : (b+1)*q80xBlockBytes]
		var s int32
		for l := 0; l < q80Values; l++ {
			s += int32(int8(blk[2+l])) * (int32(xb[64*(l/4)+4*i+l%4]) - 128)
		}
		dx := math.Float32frombits(binary.LittleEndian.Uint32(xb[512+4*i:]))
		dw := tensor.F16ToF32(binary.LittleEndian.Uint16(blk))
		acc = fma32(float32(s), dx*dw, acc)
	}
	return acc
}

// fma32 is a·b+c for float32 values where a·b is exact in float64 (a an
// integer below 2^24): the float64 sum then rounds to float32 as one fused
// step would, but for ties the double rounding might break differently;
// TestMatMulQ80 checks the kernels against it bit for bit.
func fma32(a, b, c float32) float32 {
	return float32(math.FMA(float64(a), float64(b), float64(c)))
}

// matMulQ80Ref is the reference twin of the Q8_0 integer path: out = x·Wᵀ
// with each row of x quantized by quantizeQ80Ref (a row with an infinity or
// a NaN in float32, as MatMul does).
func matMulQ80Ref(out []float32, w tensor.Matrix, x []float32, n int) {
	k := w.Cols
	nb := k / q80Values
	xg := make([]byte, nb*q80xBlockBytes)
	for i := 0; i < n; i++ {
		if !quantizeQ80Ref(xg, x[i*k:], k, 1, nb) {
			MatMulRef(out[i*w.Rows:(i+1)*w.Rows], w, x[i*k:(i+1)*k], 1)
			continue
		}
		for r := 0; r < w.Rows; r++ {
			out[i*w.Rows+r] = dotQ80Ref(w.Row(r), xg, 0, nb)
		}
	}
}
