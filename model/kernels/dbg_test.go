package kernels

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

func TestDbgThreads(t *testing.T) {
	w := randMatrix(rand.New(rand.NewPCG(1, 1)), tensor.BF16, 6448, 1536)
	x := randVec(rand.New(rand.NewPCG(1, 1)), 1536)
	out := make([]float32, 6448)
	for _, th := range []int{1, 2} {
		withThreads(th, func() {
			MatMul(out, w, x, 1)
			t0 := time.Now()
			for i := 0; i < 100; i++ {
				MatMul(out, w, x, 1)
			}
			t.Logf("threads %d: %v per call (hot L3)", th, time.Since(t0)/100)
		})
	}
}
