package kernels

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// The product observer sees every product of the three entry points with
// its matrix, input rows and thread mode, computes the same result, and is
// gone once reset.
func TestProductObserver(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	w := randMatrix(rng, tensor.Q8_0, 48, 64)
	x := randVec(rng, 3*64)
	want := make([]float32, 3*48)
	MatMul(want, w, x, 3)

	var mu sync.Mutex
	var seen []Product
	prev := SetProductObserver(func(p Product) {
		mu.Lock()
		seen = append(seen, p)
		mu.Unlock()
	})
	if prev != nil {
		t.Fatal("an observer was already set")
	}
	got := make([]float32, 3*48)
	withThreads(2, func() { MatMul(got, w, x, 3) })
	MatMulSerial(got, w, x, 3)
	MatMulSerialInvariant(got[:48], w, x[:64], 1)
	if SetProductObserver(nil) == nil {
		t.Fatal("SetProductObserver(nil) did not return the observer it replaced")
	}
	MatMul(got, w, x, 3) // not observed
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("observed product differs at %d: %v, want %v", i, got[i], want[i])
		}
	}
	if len(seen) != 3 {
		t.Fatalf("observer saw %d products, want 3", len(seen))
	}
	for i, want := range []struct {
		n      int
		serial bool
	}{{3, false}, {3, true}, {1, true}} {
		p := seen[i]
		if p.DType != tensor.Q8_0 || p.Rows != 48 || p.Cols != 64 || p.N != want.n || p.Serial != want.serial || p.Bytes != w.Bytes() || p.Elapsed <= 0 {
			t.Errorf("product %d: %+v, want Q8_0 48x64 n=%d serial=%v %d bytes and a duration", i, p, want.n, want.serial, w.Bytes())
		}
	}
}
