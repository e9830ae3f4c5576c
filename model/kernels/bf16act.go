package kernels

import (
	"math"
	"os"
	"sync/atomic"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// bf16 activations.
//
// Products with bf16 weights round the input rows to bf16 (round to nearest
// even) and multiply with VDPBF16PS (AVX-512 BF16), 32 products per
// instruction into float32, with no widening of the weights: as llama.cpp
// does for bf16 weights on such CPUs (its vec_dot_type for BF16). The
// activations lose precision (relative 2^-9 per value). matMulBF16Ref is the
// plain twin.

// bf16Act is SetBF16Activations' setting (default on; the
// SWITCHYARD_BF16_ACTIVATIONS environment variable set to 0 turns it off).
var bf16Act atomic.Bool

func init() { bf16Act.Store(os.Getenv("SWITCHYARD_BF16_ACTIVATIONS") != "0") }

// SetBF16Activations chooses whether products with bf16 weights round the
// activations to bf16 and run VDPBF16PS (on, the default, where the CPU has
// AVX-512 BF16) or widen the weights to float32 (off). It returns the
// previous setting.
func SetBF16Activations(on bool) (prev bool) { return bf16Act.Swap(on) }

func bf16Usable(w tensor.Matrix) bool {
	return bf16Act.Load() && w.DType == tensor.BF16 && w.Cols%32 == 0 && w.Cols > 0
}

// toBF16 rounds x to bf16 (nearest even; NaNs stay NaNs). The assembly
// (toBF16512) gives the same bits.
func toBF16(dst []uint16, x []float32) {
	dst = dst[:len(x)]
	done := toBF16Asm(dst, x)
	toBF16Ref(dst[done:], x[done:])
}

// toBF16Ref is toBF16 in plain Go.
func toBF16Ref(dst []uint16, x []float32) {
	dst = dst[:len(x)]
	for i, v := range x {
		b := math.Float32bits(v)
		if v != v {
			dst[i] = uint16(b>>16) | 0x40
			continue
		}
		dst[i] = uint16((b + 0x7FFF + (b>>16)&1) >> 16)
	}
}

// usesBF16 reports whether MatMul at the current level runs the bf16 kernels.
func usesBF16(w tensor.Matrix) bool {
	return KernelLevel() >= LevelAVX512 && hasBF16DotKernels() && bf16Usable(w)
}

// matMulBF16Ref is the plain twin of the bf16 kernels: x rounded to bf16,
// products and sums in float64 (the kernels' float32 rounding is within the
// tests' tolerance).
func matMulBF16Ref(out []float32, w tensor.Matrix, x []float32, n int) {
	k := w.Cols
	xb := make([]uint16, k)
	xf := make([]float32, k)
	row := make([]float32, k)
	for i := 0; i < n; i++ {
		toBF16(xb, x[i*k:(i+1)*k])
		for c, v := range xb {
			xf[c] = math.Float32frombits(uint32(v) << 16)
		}
		for r := 0; r < w.Rows; r++ {
			tensor.DequantizeRow(w.DType, w.Row(r), row)
			var s float64
			for c, v := range row {
				s += float64(v) * float64(xf[c])
			}
			out[i*w.Rows+r] = float32(s)
		}
	}
}
