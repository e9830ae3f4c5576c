package hybrid

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

func randBF16(rng *rand.Rand, rows, cols int) tensor.Matrix {
	data := make([]byte, 2*rows*cols)
	for i := range rows * cols {
		binary.LittleEndian.PutUint16(data[2*i:], tensor.F32ToBF16(float32(rng.NormFloat64()*0.05)))
	}
	m, err := tensor.NewMatrix(tensor.BF16, rows, cols, data)
	if err != nil {
		panic(err)
	}
	return m
}

// ComputeExperts gives the same bits on one thread (each product split
// across the pool) and on several (whole experts in parallel, in one group
// or several, or each product split when one expert holds most rows), for
// row sums, per-pair outputs and the bf16-wire rounding, and agrees with a
// plain float64 evaluation.
func TestComputeExpertsThreadsAndForms(t *testing.T) {
	const nExp, h, inter, topK = 8, 64, 32, 3
	rng := rand.New(rand.NewPCG(3, 4))
	experts := make([]ExpertWeights, nExp)
	for e := range experts {
		experts[e] = ExpertWeights{Gate: randBF16(rng, inter, h), Up: randBF16(rng, inter, h), Down: randBF16(rng, h, inter)}
	}
	prevGroup := expertGroupBytes
	defer func() { expertGroupBytes = prevGroup }()
	cases := []struct {
		rows       int
		groupPairs int  // expertGroupBytes in pairs (0: the default)
		skewed     bool // every row's first slot on expert 0
		threads    int  // the several threads (0: 2)
	}{
		{rows: 1}, {rows: 3}, {rows: 7},
		{rows: 40},                           // over expertParallelMaxRows per expert: in parallel, one group
		{rows: 40, groupPairs: 20},           // several groups
		{rows: 40, skewed: true, threads: 4}, // expert 0 holds more than a thread's share: split products
	}
	for _, tc := range cases {
		rows := tc.rows
		expertGroupBytes = prevGroup
		if tc.groupPairs > 0 {
			expertGroupBytes = tc.groupPairs * 4 * (2*h + 2*inter)
		}
		req := func() *ExpertRequest {
			r := &ExpertRequest{Rows: rows, Hidden: h, TopK: topK, X: make([]float32, rows*h), Experts: make([]int32, rows*topK),
				Weights: make([]float32, rows*topK), Out: make([]float32, rows*h)}
			rr := rand.New(rand.NewPCG(uint64(rows), 9))
			for i := range r.X {
				r.X[i] = float32(rr.NormFloat64())
			}
			for i := range rows {
				perm := rr.Perm(nExp)
				if tc.skewed {
					for j, e := range perm {
						if e == 0 {
							perm[0], perm[j] = perm[j], perm[0]
						}
					}
				}
				for j := range topK {
					r.Experts[i*topK+j], r.Weights[i*topK+j] = int32(perm[j]), float32(rr.Float64())
				}
			}
			return r
		}
		run := func(threads int, mod func(*ExpertRequest)) *ExpertRequest {
			prev := kernels.Threads()
			kernels.SetThreads(threads)
			defer kernels.SetThreads(prev)
			r := req()
			mod(r)
			if err := ComputeExperts(experts, r, &ExpertScratch{}); err != nil {
				t.Fatal(err)
			}
			return r
		}
		forms := map[string]func(*ExpertRequest){
			"sums":      func(*ExpertRequest) {},
			"bf16 wire": func(r *ExpertRequest) { r.BF16Wire = true },
			"per pair":  func(r *ExpertRequest) { r.PairOut = make([]float32, rows*topK*h) },
		}
		for name, mod := range forms {
			a, b := run(1, mod), run(max(2, tc.threads), mod)
			ga, gb := a.Out, b.Out
			if a.PairOut != nil {
				ga, gb = a.PairOut, b.PairOut
			}
			for i := range ga {
				if math.Float32bits(ga[i]) != math.Float32bits(gb[i]) {
					t.Fatalf("rows %d, %s: 1 thread %g, 2 threads %g at %d", rows, name, ga[i], gb[i], i)
				}
			}
		}
		// Against float64 arithmetic on the same bf16 weights (float32
		// activations: bf16 ones would differ by their rounding).
		prevBF := kernels.SetBF16Activations(false)
		r := run(2, func(*ExpertRequest) {})
		kernels.SetBF16Activations(prevBF)
		for i := range rows {
			want := make([]float64, h)
			for j := range topK {
				ew := experts[r.Experts[i*topK+j]]
				act := make([]float64, inter)
				for k := range inter {
					var g, u float64
					for c := range h {
						x := float64(r.X[i*h+c])
						g += float64(bf16At(ew.Gate, k, c)) * x
						u += float64(bf16At(ew.Up, k, c)) * x
					}
					act[k] = g / (1 + math.Exp(-g)) * u
				}
				for c := range h {
					var d float64
					for k := range inter {
						d += float64(bf16At(ew.Down, c, k)) * act[k]
					}
					want[c] += float64(r.Weights[i*topK+j]) * d
				}
			}
			for c := range h {
				if d := math.Abs(want[c] - float64(r.Out[i*h+c])); d > 1e-4 {
					t.Fatalf("rows %d: row %d out %d = %g, float64 %g", rows, i, c, r.Out[i*h+c], want[c])
				}
			}
		}
	}
}

func bf16At(m tensor.Matrix, r, c int) float32 {
	return tensor.BF16ToF32(binary.LittleEndian.Uint16(m.Data[2*(r*m.Cols+c):]))
}
