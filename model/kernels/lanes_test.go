package kernels

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Lanes hand out every block exactly once, to participants with a lane, to
// ones beyond the lanes, and when some lanes' owners never come (their
// blocks are stolen); an owner takes its lane's blocks in order.
func TestLanesClaimEveryBlockOnce(t *testing.T) {
	for _, tc := range []struct{ nblocks, lanes, participants int }{
		{1, 2, 2}, {2, 2, 2}, {23, 2, 2}, {23, 2, 1}, {100, 4, 2}, {100, 4, 6}, {7, 3, 3}, {490, 16, 16}, {256, 64, 64}, {256, 64, 8},
	} {
		t.Run(fmt.Sprintf("%d blocks, %d lanes, %d participants", tc.nblocks, tc.lanes, tc.participants), func(t *testing.T) {
			for rep := range 20 {
				var j mmJob
				j.nblocks = tc.nblocks
				j.splitLanes(tc.lanes)
				if j.lanes != tc.lanes {
					t.Fatalf("lanes %d, want %d", j.lanes, tc.lanes)
				}
				got := make([][]int, tc.participants)
				var wg sync.WaitGroup
				for p := range tc.participants {
					wg.Add(1)
					go func() {
						defer wg.Done()
						l := int(j.next.Add(1) - 1)
						for {
							b, _ := j.claim(l)
							if b < 0 {
								return
							}
							got[p] = append(got[p], b)
						}
					}()
				}
				wg.Wait()
				seen := make([]int, tc.nblocks)
				for _, bs := range got {
					for _, b := range bs {
						seen[b]++
					}
				}
				for b, n := range seen {
					if n != 1 {
						t.Fatalf("rep %d: block %d claimed %d times (%v)", rep, b, n, got)
					}
				}
				if tc.participants == 1 {
					// Alone: its own lane in order, then the others' upper
					// halves, each half in order: few jumps.
					jumps := 0
					for i := 1; i < len(got[0]); i++ {
						if got[0][i] != got[0][i-1]+1 {
							jumps++
						}
					}
					own := tc.nblocks / tc.lanes
					for i := range own {
						if got[0][i] != i {
							t.Fatalf("rep %d: order %v does not start with its lane in order", rep, got[0])
						}
					}
					if max := tc.lanes * (bits.Len(uint(tc.nblocks)) + 1); jumps > max {
						t.Fatalf("rep %d: order %v has %d jumps, want at most %d", rep, got[0], jumps, max)
					}
				}
			}
		})
	}
}

// A product split into lanes gives the bits of one thread and of blocks
// handed out in turn, for decode-sized inputs of every packed type.
func TestLanesSameBits(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(61, 62))
		for _, dt := range []tensor.DType{tensor.BF16, tensor.Q8_0, tensor.Q4_K, tensor.Q6_K, tensor.Q4_0, tensor.F32} {
			w := randMatrix(rng, dt, 3000, 512)
			if CanPack(w) {
				w = Pack(make([]byte, PackedBytes(dt, w.Rows, w.Cols)), w)
			}
			for _, n := range []int{1, 2, 5} {
				x := randVec(rng, n*w.Cols)
				want := make([]float32, n*w.Rows)
				withThreads(1, func() { MatMul(want, w, x, n) })
				for _, threads := range []int{2, 3, 8} {
					for _, lanes := range []bool{true, false} {
						prev := SetProductLanes(lanes)
						got := make([]float32, n*w.Rows)
						withThreads(threads, func() { MatMul(got, w, x, n) })
						SetProductLanes(prev)
						for i := range want {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%v n=%d threads=%d lanes=%v: out[%d] = %g, one thread %g", dt, n, threads, lanes, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
	})
}
