// Package kernels holds the numeric kernels of the engine: matrix products over
// weight matrices of any tensor.DType (dequantized on the fly, float32 accumulation)
// and the small vector operations the layers use.
//
// Every fast kernel has a plain Go reference twin in ref.go, and tests check that
// they agree. Kernels write into caller-provided outputs and allocate nothing on the
// hot path.
package kernels

import "github.com/switchyard-serving/switchyard/model/tensor"

// MatMul computes out = x · Wᵀ for n input rows:
//
//	out[i*W.Rows + r] = Σ_c W[r, c] · x[i*W.Cols + c]   for i < n, r < W.Rows
//
// x is [n, W.Cols] and out is [n, W.Rows], both row-major float32.
func MatMul(out []float32, w tensor.Matrix, x []float32, n int) {
	MatMulRef(out, w, x, n)
}
