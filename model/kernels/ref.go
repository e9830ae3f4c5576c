package kernels

import (
	"encoding/binary"
	"math"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// MatMulRef is the reference twin of MatMul: dequantize each row, then a plain
// float32 dot product per output. w may be in any layout (packed rows are
// dequantized through DequantizeMatrixRow).
func MatMulRef(out []float32, w tensor.Matrix, x []float32, n int) {
	row := make([]float32, w.Cols)
	for r := 0; r < w.Rows; r++ {
		DequantizeMatrixRow(w, r, row)
		for i := 0; i < n; i++ {
			xi := x[i*w.Cols : (i+1)*w.Cols]
			var s float32
			for c, v := range row {
				s += v * xi[c]
			}
			out[i*w.Rows+r] = s
		}
	}
}

// RMSNorm writes w ⊙ x / sqrt(mean(x²) + eps) into out (out may alias x).
func RMSNorm(out, x, w []float32, eps float32) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := float32(1 / math.Sqrt(ss/float64(len(x))+float64(eps)))
	for i, v := range x {
		out[i] = w[i] * (v * inv)
	}
}

// SiLU returns u·sigmoid(u).
func SiLU(u float32) float32 { return u / (1 + float32(math.Exp(float64(-u)))) }

// Softplus returns log(1+exp(x)), and x itself above 20 (as ggml does).
func Softplus(x float32) float32 {
	if x > 20 {
		return x
	}
	return float32(math.Log1p(math.Exp(float64(x))))
}

// Softmax normalises x in place (max-subtracted, float32 result).
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	m := x[0]
	for _, v := range x[1:] {
		if v > m {
			m = v
		}
	}
	var s float64
	for i, v := range x {
		e := math.Exp(float64(v - m))
		x[i] = float32(e)
		s += e
	}
	inv := float32(1 / s)
	for i := range x {
		x[i] *= inv
	}
}

// DotRef is the reference twin of Dot.
func DotRef(a, b []float32) float32 {
	var s float32
	for i, v := range a {
		s += v * b[i]
	}
	return s
}

// AxpyRef is the reference twin of Axpy.
func AxpyRef(alpha float32, x, y []float32) {
	for i, v := range x {
		y[i] += alpha * v
	}
}

// ScaleRef is the reference twin of Scale.
func ScaleRef(alpha float32, x []float32) {
	for i := range x {
		x[i] *= alpha
	}
}

// AddScaledRef is the plain twin of AddScaled (the conversion rounds the
// product: Go may not fuse it into the add).
func AddScaledRef(dst, x []float32, alpha float32) {
	for i := range dst {
		dst[i] += float32(alpha * x[i])
	}
}

// ScaleToRef is the plain twin of ScaleTo.
func ScaleToRef(dst, x []float32, alpha float32) {
	for i := range dst {
		dst[i] = alpha * x[i]
	}
}

// AddWeightedQ80Ref is the plain twin of AddWeightedQ80.
func AddWeightedQ80Ref(dst []float32, rows []byte, stride int, w []float32) {
	for t, wt := range w {
		row := rows[t*stride:]
		for b := range len(dst) / 32 {
			blk := row[b*tensor.Q8_0BlockBytes:]
			s := wt * tensor.F16ToF32(binary.LittleEndian.Uint16(blk))
			out := dst[32*b : 32*b+32]
			for j := range out {
				out[j] += float32(s * float32(int8(blk[2+j])))
			}
		}
	}
}

// RoundBF16Ref is the plain twin of RoundBF16.
func RoundBF16Ref(dst, x []float32) {
	for i := range dst {
		dst[i] = tensor.BF16ToF32(tensor.F32ToBF16(x[i]))
	}
}

// AddScaledBF16Ref is the plain twin of AddScaledBF16.
func AddScaledBF16Ref(dst, x []float32, alpha float32) {
	for i := range dst {
		dst[i] += tensor.BF16ToF32(tensor.F32ToBF16(float32(alpha * x[i])))
	}
}

// EncodeBF16Ref is the plain twin of EncodeBF16.
func EncodeBF16Ref(dst []byte, x []float32) {
	for i, v := range x {
		binary.LittleEndian.PutUint16(dst[2*i:], tensor.F32ToBF16(v))
	}
}

// DecodeBF16Ref is the plain twin of DecodeBF16.
func DecodeBF16Ref(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = tensor.BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// AddBF16Ref is the plain twin of AddBF16.
func AddBF16Ref(dst []float32, src []byte) {
	for i := range dst {
		dst[i] += tensor.BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// AddRef is the reference twin of Add.
func AddRef(dst, a, b []float32) {
	for i := range dst {
		dst[i] = a[i] + b[i]
	}
}

// MulRef is the reference twin of Mul.
func MulRef(dst, a, b []float32) {
	for i := range dst {
		dst[i] = a[i] * b[i]
	}
}
