package kernels

// Dot returns Σ a[i]·b[i] (float32 accumulation). b must be at least as long as a.
func Dot(a, b []float32) float32 {
	b = b[:len(a)]
	if len(a) >= 16 {
		if s, ok := dotAsm(KernelLevel(), a, b); ok {
			return s
		}
	}
	return dotGo(a, b)
}

// Axpy computes y[i] += alpha·x[i] for i < len(x). y must be at least as long as x.
func Axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
	if len(x) >= 16 && axpyAsm(KernelLevel(), alpha, x, y) {
		return
	}
	for i, v := range x {
		y[i] += alpha * v
	}
}

// Scale computes x[i] *= alpha.
func Scale(alpha float32, x []float32) {
	if len(x) >= 16 && scaleAsm(KernelLevel(), alpha, x) {
		return
	}
	for i := range x {
		x[i] *= alpha
	}
}

// Add computes dst[i] = a[i] + b[i] for i < len(dst); dst may alias a or b.
// a and b must be at least as long as dst.
func Add(dst, a, b []float32) {
	a, b = a[:len(dst)], b[:len(dst)]
	if len(dst) >= 16 && addAsm(KernelLevel(), dst, a, b) {
		return
	}
	for i := range dst {
		dst[i] = a[i] + b[i]
	}
}
