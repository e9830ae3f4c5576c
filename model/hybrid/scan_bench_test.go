package hybrid

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkMambaScan is one Mamba-2 layer's selective scan over a 512-token
// prefill chunk at H-Tiny's shape (48 heads of 64, state 128, one group), on
// one goroutine, in both forms: the token-by-token recurrence (the trunk's
// prefill: its result does not depend on how a prompt is cut into calls) and
// the chunked SSD form (chunk 256).
func BenchmarkMambaScan(b *testing.B) {
	const T, H, P, N, G = 512, 48, 64, 128, 1
	r := rand.New(rand.NewPCG(9, 10))
	din, cd := H*P, H*P+2*G*N
	mk := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	xbc, D := mk(T*cd), mk(H)
	dt, A := make([]float32, T*H), make([]float32, H)
	for i := range dt {
		dt[i] = float32(0.01 + 0.5*r.Float64())
	}
	for i := range A {
		A[i] = -float32(1 + 8*r.Float64())
	}
	for _, bc := range []struct {
		name  string
		chunk int
	}{{"recurrent", 0}, {"chunked", 256}} {
		b.Run(bc.name, func(b *testing.B) {
			p := scanParams{T: T, H: H, P: P, N: N, G: G, convDim: cd, dInner: din, xbc: xbc, dt: dt, A: A, D: D,
				state: make([]float32, H*P*N), y: make([]float32, T*din), chunk: bc.chunk}
			var sc chunkScratch
			for b.Loop() {
				if bc.chunk > 0 {
					scanChunked(&p, &sc)
				} else {
					scanRecurrent(&p, &chunkScratch{})
				}
			}
			b.ReportMetric(float64(T)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
