package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"

)

// Hot (L2-resident) single-thread tile throughput: cycles per weight byte.
func BenchmarkHot(b *testing.B) {
	for _, dt := range allDTypes {
		for _, n := range []int{1, 2, 4, 6} {
			w := randMatrix(rand.New(rand.NewPCG(1, 1)), dt, 64, 1536)
			x := randVec(rand.New(rand.NewPCG(1, 1)), n*1536)
			out := make([]float32, n*64)
			b.Run(fmt.Sprintf("%v/n=%d", dt, n), func(b *testing.B) {
				withThreads(1, func() {
					b.SetBytes(int64(w.Bytes()))
					for i := 0; i < b.N; i++ {
						MatMul(out, w, x, n)
					}
				})
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(sec*2.76e9/float64(w.Rows*w.Cols/32), "cyc/32vals/row")
			})
		}
	}
}
