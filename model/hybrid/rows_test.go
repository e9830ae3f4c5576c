package hybrid

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// addPairs' vector form (kernels.Scale, then kernels.Add) gives the bits of
// the plain loop dst[c] += float32(w·y[c]) at every kernel level, for every
// form of answer and any range of columns.
func TestAddPairsMatchesLoop(t *testing.T) {
	prev := kernels.KernelLevel()
	defer kernels.SetKernelLevel(prev)
	r := rand.New(rand.NewPCG(5, 6))
	for _, lvl := range kernels.SupportedLevels() {
		kernels.SetKernelLevel(lvl)
		for _, tc := range []struct{ h, c0, c1 int }{{1536, 0, 1536}, {1536, 768, 1536}, {100, 0, 100}, {100, 16, 83}, {7, 0, 7}} {
			for _, form := range []string{"sums", "bf16 wire", "per pair"} {
				const rows, topK = 3, 2
				req := &ExpertRequest{Rows: rows, Hidden: tc.h, TopK: topK, Weights: make([]float32, rows*topK), Out: make([]float32, rows*tc.h)}
				for i := range req.Weights {
					req.Weights[i] = float32(r.Float64())
				}
				for i := range req.Out {
					req.Out[i] = float32(r.NormFloat64())
				}
				switch form {
				case "bf16 wire":
					req.BF16Wire = true
				case "per pair":
					req.PairOut = make([]float32, rows*topK*tc.h)
				}
				slots := []int32{0, 3, 4}
				down := make([]float32, len(slots)*tc.h)
				for i := range down {
					down[i] = float32(r.NormFloat64())
				}
				wantOut := append([]float32(nil), req.Out...)
				var wantPair []float32
				if req.PairOut != nil {
					wantPair = make([]float32, len(req.PairOut))
				}
				for j, slot := range slots {
					w := req.Weights[slot]
					for c := tc.c0; c < tc.c1; c++ {
						p := float32(w * down[j*tc.h+c])
						if wantPair != nil {
							wantPair[int(slot)*tc.h+c] = p
							continue
						}
						if req.BF16Wire {
							p = tensor.BF16ToF32(tensor.F32ToBF16(p))
						}
						row := int(slot) / topK
						wantOut[row*tc.h+c] = float32(wantOut[row*tc.h+c] + p)
					}
				}
				addPairs(req, slots, down, tc.c0, tc.c1)
				got, want := req.Out, wantOut
				if wantPair != nil {
					got, want = req.PairOut, wantPair
				}
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("level %v %+v %s: value %d = %g, loop %g", lvl, tc, form, i, got[i], want[i])
					}
				}
			}
		}
	}
}

// The row-wise work split across threads (parallelRows: norms, residuals,
// the conv, the gate, top-k, the expert sums) gives the same logits and
// states, bit for bit, as one thread, whatever the split.
func TestForwardRowSplitsSameBits(t *testing.T) {
	m := loadFixture(t)
	prevMin := minRowSplitNs
	defer func() { minRowSplitNs = prevMin }()
	prevThreads := kernels.Threads()
	defer kernels.SetThreads(prevThreads)
	run := func(threads, minNs int) ([]float32, *State) {
		kernels.SetThreads(threads)
		minRowSplitNs = minNs
		st := m.NewState()
		toks := make([]int, 37)
		for i := range toks {
			toks[i] = (11*i + 5) % m.Cfg.VocabSize
		}
		seq := []Seq{{State: st, Tokens: toks, AllLogits: true}}
		if err := m.Forward(seq); err != nil {
			t.Fatal(err)
		}
		return append([]float32(nil), seq[0].Logits...), st
	}
	wantLogits, wantState := run(1, prevMin)
	for _, threads := range []int{2, 3} {
		gotLogits, gotState := run(threads, 0) // split everything
		name := fmt.Sprintf("%d threads", threads)
		for i := range wantLogits {
			if math.Float32bits(gotLogits[i]) != math.Float32bits(wantLogits[i]) {
				t.Fatalf("%s: logit %d = %g, one thread %g", name, i, gotLogits[i], wantLogits[i])
			}
		}
		for l := range wantState.SSM {
			for i, v := range wantState.SSM[l] {
				if math.Float32bits(gotState.SSM[l][i]) != math.Float32bits(v) {
					t.Fatalf("%s: Mamba layer %d state value %d differs", name, l, i)
				}
			}
		}
	}
}
