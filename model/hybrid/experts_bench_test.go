package hybrid

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// BenchmarkComputeExperts times one decode-sized routed-expert call on
// H-Tiny's shapes (hidden 1536, 512 per expert, 64 bf16 experts: 302 MB,
// so the weights stream from memory), at 1 and 8 rows and with all six of a
// token's experts or half of them (what one of two expert nodes gets). The
// reported GB/s is the weight bytes read per second.
func BenchmarkComputeExperts(b *testing.B) { benchComputeExperts(b, 0) }

// BenchmarkComputeExpertsGap is BenchmarkComputeExperts with 2 ms between
// calls (not timed), as an expert node sees between a trunk's layers: with
// the default spin wait the pool's workers park in between, and calls whose
// estimated time is under a millisecond run on the caller alone; spin=5ms
// keeps them polling (kernels.SetSpinWait, expert nodes' SpinWait).
func BenchmarkComputeExpertsGap(b *testing.B) {
	for _, spin := range []time.Duration{0, 5 * time.Millisecond} {
		b.Run(fmt.Sprintf("spin=%v", spin), func(b *testing.B) {
			prev := kernels.SetSpinWait(spin)
			defer kernels.SetSpinWait(prev)
			benchComputeExperts(b, 2*time.Millisecond)
		})
	}
}

func benchComputeExperts(b *testing.B, gap time.Duration) {
	const h, inter, nExp = 1536, 512, 64
	rng := rand.New(rand.NewPCG(1, 2))
	mat := func(rows, cols int) tensor.Matrix {
		d := make([]byte, 2*rows*cols)
		for i := 0; i < len(d); i += 2 {
			v := tensor.F32ToBF16(float32(rng.NormFloat64()) * 0.02)
			d[i], d[i+1] = byte(v), byte(v>>8)
		}
		return tensor.Matrix{DType: tensor.BF16, Rows: rows, Cols: cols, Data: d}
	}
	experts := make([]ExpertWeights, nExp)
	for e := range experts {
		experts[e] = ExpertWeights{Gate: mat(inter, h), Up: mat(inter, h), Down: mat(h, inter)}
	}
	for _, rows := range []int{1, 8} {
		for _, k := range []int{3, 6} {
			b.Run(fmt.Sprintf("rows=%d/k=%d/threads=%d", rows, k, kernels.Threads()), func(b *testing.B) {
				req := &ExpertRequest{Rows: rows, Hidden: h, TopK: k, X: make([]float32, rows*h), Experts: make([]int32, rows*k),
					Weights: make([]float32, rows*k), Out: make([]float32, rows*h)}
				for i := range req.X {
					req.X[i] = float32(rng.NormFloat64())
				}
				var scr ExpertScratch
				bytes := 0
				for i := 0; b.Loop(); i++ {
					// Different experts each call, as consecutive layers read.
					bytes = 0
					seen := map[int32]bool{}
					for r := range rows {
						for j := range k {
							e := int32((i*7 + r*k + j*11) % nExp)
							req.Experts[r*k+j], req.Weights[r*k+j] = e, 1/float32(k)
							if !seen[e] {
								seen[e] = true
								bytes += experts[e].Bytes()
							}
						}
					}
					if gap > 0 {
						b.StopTimer()
						for t := time.Now(); time.Since(t) < gap; {
							time.Sleep(gap / 4) // the caller idles, as a node between layers
						}
						b.StartTimer()
					}
					if err := ComputeExperts(experts, req, &scr); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(bytes)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
			})
		}
	}
}
