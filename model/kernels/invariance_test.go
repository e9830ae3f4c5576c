package kernels

import (
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// batchSizes crosses every tile height and every dtype's panel threshold.
var batchSizes = []int{1, 2, 3, 4, 5, 6, 7, 11, 13, 16, 23, 24, 25, 31, 32, 33, 63, 64, 65, 255, 256, 257}

// TestMatMulBatchInvariant: a row's result does not depend on the rows that
// share its call (their number, the tile it lands in, the panel path) nor on
// the thread count: bitwise, at every level and dtype. This is what makes a
// request's tokens independent of the other sessions batched with it.
func TestMatMulBatchInvariant(t *testing.T) {
	defer SetBatchInvariant(SetBatchInvariant(true))
	forEachLevel(t, func(t *testing.T) {
		for _, dt := range allDTypes {
			for _, shape := range [][2]int{{36, 544}, {38, 550}, {38, 37}} {
				// 38 rows end in a partial quad; 550 and 37 columns in a
				// masked (or Go) tail of the plain types.
				rows, cols := shape[0], shape[1]
				if dt.Quantized() {
					if cols = 2 * dt.BlockValues(); dt.BlockValues() == 32 {
						// 544: the float32 kernels of Q4_1 and Q5_1; 512
						// (the last shape) their integer ones.
						cols = 544
						if shape[1] == 37 {
							cols = 512
						}
					}
				}
				rng := rand.New(rand.NewPCG(uint64(dt), 7))
				w := randMatrix(rng, dt, rows, cols)
				maxN := batchSizes[len(batchSizes)-1]
				x := randVec(rng, maxN*cols)
				// Each row alone, one thread.
				alone := make([]float32, maxN*w.Rows)
				withThreads(1, func() {
					for i := range maxN {
						MatMul(alone[i*w.Rows:(i+1)*w.Rows], w, x[i*cols:(i+1)*cols], 1)
					}
				})
				for _, threads := range []int{1, 2} {
					for _, n := range batchSizes {
						// The last n rows, so each row sits at a different
						// position in its tile than when the batch starts at 0.
						off := maxN - n
						got := make([]float32, n*w.Rows)
						withThreads(threads, func() { MatMul(got, w, x[off*cols:], n) })
						for i := range n * w.Rows {
							want := alone[off*w.Rows+i]
							if math.Float32bits(got[i]) != math.Float32bits(want) {
								t.Errorf("%v [%d,%d] n=%d threads %d: row %d out %d = %g, alone %g", dt, rows, cols, n, threads, off+i/w.Rows, i%w.Rows, got[i], want)
								break
							}
						}
					}
				}
			}
		}
	})
}

// ParallelFor calls fn once for every index, on the pool's threads too.
func TestParallelFor(t *testing.T) {
	for _, threads := range []int{1, 2} {
		withThreads(threads, func() {
			for _, n := range []int{0, 1, 2, 7, 100} {
				seen := make([]atomic.Int32, n)
				ParallelFor(n, wakeWorthNs, func(i int) { seen[i].Add(1) })
				for i := range seen {
					if c := seen[i].Load(); c != 1 {
						t.Fatalf("threads %d, n %d: index %d called %d times", threads, n, i, c)
					}
				}
			}
		})
	}
}

// MatMulSerialInvariant is batch-invariant whatever SetBatchInvariant says
// (attention over KV caches relies on it).
func TestMatMulSerialInvariant(t *testing.T) {
	defer SetBatchInvariant(SetBatchInvariant(false))
	forEachLevel(t, func(t *testing.T) {
		for _, dt := range allDTypes {
			cols := 512
			rng := rand.New(rand.NewPCG(uint64(dt), 11))
			w := randMatrix(rng, dt, 20, cols)
			const maxN = 40
			x := randVec(rng, maxN*cols)
			alone := make([]float32, maxN*w.Rows)
			for i := range maxN {
				MatMulSerialInvariant(alone[i*w.Rows:(i+1)*w.Rows], w, x[i*cols:(i+1)*cols], 1)
			}
			for _, n := range []int{2, 3, 5, 24, 40} {
				got := make([]float32, n*w.Rows)
				MatMulSerialInvariant(got, w, x[(maxN-n)*cols:], n)
				for i := range got {
					if math.Float32bits(got[i]) != math.Float32bits(alone[(maxN-n)*w.Rows+i]) {
						t.Fatalf("%v n=%d: out %d = %g, alone %g", dt, n, i, got[i], alone[(maxN-n)*w.Rows+i])
					}
				}
			}
		}
	})
}

// MatMulSerialInvariantThen gives MatMulSerialInvariant's bits whatever it is
// told to prefetch (nothing, less or more than the weights, one byte), at the
// attention pages' shapes (keys 256×128, transposed values 128×256), a
// partial quad and several input-row groups.
func TestMatMulSerialInvariantThen(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		for _, dt := range []tensor.DType{tensor.BF16, tensor.F32, tensor.F16, tensor.Q8_0} {
			for _, sh := range [][2]int{{256, 128}, {128, 256}, {22, 64}} {
				rng := rand.New(rand.NewPCG(uint64(dt), uint64(sh[0])))
				w := randMatrix(rng, dt, sh[0], sh[1])
				for _, n := range []int{1, 3, 12} {
					x := randVec(rng, n*sh[1])
					want := make([]float32, n*w.Rows)
					MatMulSerialInvariant(want, w, x, n)
					other := make([]byte, 3*len(w.Data))
					for _, after := range [][]byte{nil, other[:1], other[:len(w.Data)/3], other[:len(w.Data)], other} {
						got := make([]float32, n*w.Rows)
						MatMulSerialInvariantThen(got, w, x, n, after)
						for i := range got {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%v %dx%d n=%d, %d bytes after: out %d = %g, want %g", dt, sh[0], sh[1], n, len(after), i, got[i], want[i])
							}
						}
					}
				}
			}
		}
	})
}
