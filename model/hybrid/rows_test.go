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

// ComputeExperts runs the caller's Beside task once, with the first group
// of experts run in parallel, and says so; on one thread it leaves it to
// the caller.
func TestComputeExpertsBeside(t *testing.T) {
	const nExp, h, inter, topK, rows = 8, 64, 32, 3, 2
	rng := rand.New(rand.NewPCG(7, 8))
	experts := make([]ExpertWeights, nExp)
	for e := range experts {
		experts[e] = ExpertWeights{Gate: randBF16(rng, inter, h), Up: randBF16(rng, inter, h), Down: randBF16(rng, h, inter)}
	}
	prev := kernels.Threads()
	defer kernels.SetThreads(prev)
	for _, threads := range []int{1, 2} {
		kernels.SetThreads(threads)
		req := &ExpertRequest{Rows: rows, Hidden: h, TopK: topK, X: make([]float32, rows*h), Experts: []int32{0, 3, 5, 1, 2, 7},
			Weights: []float32{0.5, 0.3, 0.2, 0.6, 0.3, 0.1}, Out: make([]float32, rows*h)}
		ran := 0
		req.Beside = func() { ran++ }
		if err := ComputeExperts(experts, req, &ExpertScratch{}); err != nil {
			t.Fatal(err)
		}
		want := 0
		if threads > 1 {
			want = 1
		}
		if ran != want || req.BesideDone != (want == 1) {
			t.Errorf("%d threads: Beside ran %d times, BesideDone %v; want %d", threads, ran, req.BesideDone, want)
		}
	}
}

// The shared expert run beside the routed experts (one-thread products)
// gives the bits of its products split across the threads.
func TestSharedBesideSameBits(t *testing.T) {
	m := loadFixture(t)
	prevThreads := kernels.Threads()
	defer kernels.SetThreads(prevThreads)
	defer SetSharedBeside(SetSharedBeside(true))
	kernels.SetThreads(2)
	run := func(beside bool) [][]float32 {
		SetSharedBeside(beside)
		var out [][]float32
		states := []*State{m.NewState(), m.NewState(), m.NewState()}
		for i, st := range states { // prefills of 5 to 7 rows, then decode steps of 3
			toks := make([]int, 5+i)
			for j := range toks {
				toks[j] = (13*j + 7*i + 1) % m.Cfg.VocabSize
			}
			seq := []Seq{{State: st, Tokens: toks}}
			if err := m.Forward(seq); err != nil {
				t.Fatal(err)
			}
			out = append(out, append([]float32(nil), seq[0].Logits...))
		}
		for step := range 3 {
			batch := make([]Seq, len(states))
			for i, st := range states {
				batch[i] = Seq{State: st, Tokens: []int{(31*step + 5*i + 2) % m.Cfg.VocabSize}}
			}
			if err := m.Forward(batch); err != nil {
				t.Fatal(err)
			}
			for _, s := range batch {
				out = append(out, append([]float32(nil), s.Logits...))
			}
		}
		return out
	}
	want, got := run(false), run(true)
	for i := range want {
		for j := range want[i] {
			if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
				t.Fatalf("logits %d, value %d: beside %g, split %g", i, j, got[i][j], want[i][j])
			}
		}
	}
}
