package kernels

import "github.com/switchyard-serving/switchyard/model/tensor"

// Vector helpers for the Mamba-2 recurrence, attention and residuals. Each
// dispatches on KernelLevel like MatMul (LevelRef runs the reference twins).
// Short vectors (< 16) run in Go.

// Dot returns Σ a[i]·b[i] (float32 accumulation). b must be at least as long as a.
func Dot(a, b []float32) float32 {
	b = b[:len(a)]
	l := KernelLevel()
	if l == LevelRef {
		return DotRef(a, b)
	}
	if len(a) >= 16 {
		if s, ok := dotAsm(l, a, b); ok {
			return s
		}
	}
	return dotGo(a, b)
}

// Axpy computes y[i] += alpha·x[i] for i < len(x). y must be at least as long as x.
func Axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
	l := KernelLevel()
	if l == LevelRef {
		AxpyRef(alpha, x, y)
		return
	}
	if len(x) >= 16 && axpyAsm(l, alpha, x, y) {
		return
	}
	for i, v := range x {
		y[i] += alpha * v
	}
}

// Scale computes x[i] *= alpha.
func Scale(alpha float32, x []float32) {
	l := KernelLevel()
	if l == LevelRef {
		ScaleRef(alpha, x)
		return
	}
	if len(x) >= 16 && scaleAsm(l, alpha, x) {
		return
	}
	for i := range x {
		x[i] *= alpha
	}
}

// The vector helpers below run their kernel over the longest prefix the
// kernel takes at the current level (none at LevelRef and LevelGo) and their
// plain twin over the rest.

// AddScaled computes dst[i] += alpha·x[i] for i < len(dst), the product
// rounded to float32 before the add: the bits of Scale(alpha, x) then
// Add(dst, dst, x), without writing x (AddScaledRef is its twin).
func AddScaled(dst, x []float32, alpha float32) {
	x = x[:len(dst)]
	n := addScaledAsm(KernelLevel(), dst, x, alpha, true)
	AddScaledRef(dst[n:], x[n:], alpha)
}

// ScaleTo computes dst[i] = alpha·x[i] for i < len(dst): Scale's bits
// into another slice, in one pass instead of Scale then a copy
// (ScaleToRef is its twin).
func ScaleTo(dst, x []float32, alpha float32) {
	x = x[:len(dst)]
	n := addScaledAsm(KernelLevel(), dst, x, alpha, false)
	ScaleToRef(dst[n:], x[n:], alpha)
}

// RoundBF16 sets dst[i] to x[i] rounded to bfloat16 and widened back
// (tensor.BF16ToF32(tensor.F32ToBF16(x[i])): nearest even, a NaN stays a
// quiet NaN) for i < len(dst); dst may alias x (RoundBF16Ref is its twin).
func RoundBF16(dst, x []float32) {
	x = x[:len(dst)]
	n := roundBF16Asm(KernelLevel(), dst, x, 0, false)
	RoundBF16Ref(dst[n:], x[n:])
}

// AddScaledBF16 computes dst[i] += alpha·x[i] for i < len(dst), the
// product rounded to float32 and then to bfloat16 before the add (as a
// weighted expert output that crossed the bf16 wire), without writing x
// (AddScaledBF16Ref is its twin).
func AddScaledBF16(dst, x []float32, alpha float32) {
	x = x[:len(dst)]
	n := roundBF16Asm(KernelLevel(), dst, x, alpha, true)
	AddScaledBF16Ref(dst[n:], x[n:], alpha)
}

// EncodeBF16 writes each x[i] rounded to bfloat16 (tensor.F32ToBF16) as 2
// little-endian bytes at dst[2i:] (len(dst) >= 2·len(x)): the bf16 wire's
// encoding (EncodeBF16Ref is its twin).
func EncodeBF16(dst []byte, x []float32) {
	dst = dst[:2*len(x)]
	n := bf16WireAsm(KernelLevel(), 'e', dst, x)
	EncodeBF16Ref(dst[2*n:], x[n:])
}

// DecodeBF16 widens len(dst) little-endian bfloat16 values of src into dst
// (tensor.BF16ToF32; DecodeBF16Ref is its twin).
func DecodeBF16(dst []float32, src []byte) {
	src = src[:2*len(dst)]
	n := bf16WireAsm(KernelLevel(), 'd', src, dst)
	DecodeBF16Ref(dst[n:], src[2*n:])
}

// AddBF16 adds len(dst) little-endian bfloat16 values of src to dst
// (AddBF16Ref is its twin).
func AddBF16(dst []float32, src []byte) {
	src = src[:2*len(dst)]
	n := bf16WireAsm(KernelLevel(), 'a', src, dst)
	AddBF16Ref(dst[n:], src[2*n:])
}

// AddWeightedQ80 adds the weighted sum of len(w) Q8_0 rows to dst: row t
// starts at rows[t·stride] and holds len(dst)/32 blocks (each an f16 scale
// d and 32 int8 values q), and for each row in turn, dst[32b+j] +=
// float32(float32(w[t]·d_tb)·q_tbj), the product and the add each rounded
// (AddWeightedQ80Ref is its twin). It is attention's weighted sum over the
// values of a Q8_0 KV cache, stored a token per row as llama.cpp stores a
// quantized V cache. len(dst) must be a multiple of 32.
func AddWeightedQ80(dst []float32, rows []byte, stride int, w []float32) {
	if len(dst)%32 != 0 {
		panic("kernels: AddWeightedQ80 of a partial block")
	}
	if len(w) == 0 {
		return
	}
	if len(rows) < (len(w)-1)*stride+len(dst)/32*tensor.Q8_0BlockBytes {
		panic("kernels: AddWeightedQ80 rows too short")
	}
	if addWeightedQ80Asm(KernelLevel(), [][]float32{dst}, rows, stride, [][]float32{w}, len(w)) {
		return
	}
	AddWeightedQ80Ref(dst, rows, stride, w)
}

// AddWeightedQ80Rows is AddWeightedQ80 for several outputs over the same
// rows, dst[i] weighted by w[i] (every w[i] as long; the outputs must not
// overlap), each output's bits those of AddWeightedQ80 alone: the outputs
// share the widening of each block (a prefill block's query rows over a
// page of values).
func AddWeightedQ80Rows(dst [][]float32, rows []byte, stride int, w [][]float32) {
	if len(w) != len(dst) {
		panic("kernels: AddWeightedQ80Rows with a weight row per output")
	}
	if len(dst) == 0 || len(w[0]) == 0 {
		return
	}
	n, hd := len(w[0]), len(dst[0])
	for i := range dst {
		if len(dst[i]) != hd || len(w[i]) != n {
			panic("kernels: AddWeightedQ80Rows of outputs of different lengths")
		}
	}
	if hd%32 != 0 {
		panic("kernels: AddWeightedQ80Rows of a partial block")
	}
	if len(rows) < (n-1)*stride+hd/32*tensor.Q8_0BlockBytes {
		panic("kernels: AddWeightedQ80Rows rows too short")
	}
	if addWeightedQ80Asm(KernelLevel(), dst, rows, stride, w, n) {
		return
	}
	for i := range dst {
		AddWeightedQ80Ref(dst[i], rows, stride, w[i])
	}
}

// Add computes dst[i] = a[i] + b[i] for i < len(dst); dst may alias a or b.
// a and b must be at least as long as dst.
func Add(dst, a, b []float32) {
	a, b = a[:len(dst)], b[:len(dst)]
	l := KernelLevel()
	if l == LevelRef {
		AddRef(dst, a, b)
		return
	}
	if len(dst) >= 16 && addAsm(l, dst, a, b) {
		return
	}
	for i := range dst {
		dst[i] = a[i] + b[i]
	}
}

// Mul computes dst[i] = a[i]·b[i] for i < len(dst); dst may alias a or b.
// a and b must be at least as long as dst.
func Mul(dst, a, b []float32) {
	a, b = a[:len(dst)], b[:len(dst)]
	l := KernelLevel()
	if l == LevelRef {
		MulRef(dst, a, b)
		return
	}
	if len(dst) >= 16 && mulAsm(l, dst, a, b) {
		return
	}
	for i := range dst {
		dst[i] = a[i] * b[i]
	}
}

// SSMRows advances len(y) Mamba-2 state rows of n values each (st, row i
// at st[i·n:]) by one token and reads them out: for each row
//
//	s ← dA·s; s += dtx[i]·b; y[i] = c·s
//
// exactly as Scale, Axpy and Dot called on the row one after another
// (SSMRowsRef) compute it, in one call where n is a multiple of four
// vectors. b and c must hold at least n values, dtx len(y).
func SSMRows(st []float32, n int, dA float32, dtx, b, c, y []float32) {
	rows := len(y)
	st, dtx, b, c = st[:rows*n], dtx[:rows], b[:n], c[:n]
	if rows > 0 && n > 0 && ssmRowsAsm(KernelLevel(), st, n, dA, dtx, b, c, y) {
		return
	}
	SSMRowsRef(st, n, dA, dtx, b, c, y)
}

// SSMRowsRef is the plain twin of SSMRows: the three vector helpers per
// row.
func SSMRowsRef(st []float32, n int, dA float32, dtx, b, c, y []float32) {
	for i := range y {
		s := st[i*n : (i+1)*n]
		Scale(dA, s)
		Axpy(dtx[i], b, s)
		y[i] = Dot(c, s)
	}
}
