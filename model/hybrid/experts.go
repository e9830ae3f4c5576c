package hybrid

import (
	"fmt"

	"github.com/switchyard-serving/switchyard/model/kernels"
)

// ExpertRequest asks for the routed-expert part of one MoE layer for a batch of rows:
//
//	Out[i] = Σ_j Weights[i*TopK+j] · expert_{Experts[i*TopK+j]}(X[i])
//
// The cluster's trunk node turns it into one message per expert node; the
// in-process implementation computes it directly.
type ExpertRequest struct {
	Layer   int       // decoder layer index
	Rows    int       // number of token rows
	Hidden  int       // row width
	TopK    int       // routed experts per row
	X       []float32 // [Rows, Hidden], the FFN input (post_attention_layernorm output)
	Experts []int32   // [Rows, TopK] expert ids
	Weights []float32 // [Rows, TopK] gate weights (softmax over the row's top-k)
	Out     []float32 // [Rows, Hidden], overwritten by the backend
	// Failed, when not nil ([Rows]), lets the backend fail single rows instead
	// of the whole request: it sets Failed[i] for a row it could not compute
	// (its Out row is then meaningless) and Wait returns nil. Rows already set
	// on entry were failed earlier in the step and need not be computed.
	Failed []bool
	// PairOut, when not nil ([Rows*TopK, Hidden]), receives each pair's
	// weighted output w·expert(X[row]) (rounded to float32 on its own) at its
	// slot instead of the row sums in Out, which is then left untouched; slots
	// of weight 0 are not written. Expert nodes answer the deterministic
	// combine with it.
	PairOut []float32
	// BF16Wire makes an in-process computation round as the cluster's
	// bfloat16 wire does under the deterministic combine: the rows are
	// rounded to bfloat16 before the experts see them, and each pair's
	// weighted output is rounded to bfloat16 before it is added. Out is then
	// bitwise what a trunk gets from expert nodes.
	BF16Wire bool
	// Beside, when set, is work of the caller's (the trunk's shared expert,
	// run with one-thread products) that an in-process backend may run as
	// one more task beside the routed experts' parallel tasks, on the same
	// threads, before Begin returns: then it sets BesideDone, else the
	// caller runs it itself after Begin. A remote backend leaves it to the
	// caller, whose threads are free while the expert nodes compute.
	Beside     func()
	BesideDone bool
}

// Pending is an expert computation in flight.
type Pending interface {
	// Wait blocks until the request's Out is filled, or returns why it cannot be.
	Wait() error
}

// ExpertBackend computes routed experts. Begin may return before the work is done,
// so the caller can compute the shared expert meanwhile; the request's slices must
// stay untouched until Wait returns.
type ExpertBackend interface {
	Begin(req *ExpertRequest) Pending
}

type donePending struct{ err error }

func (d donePending) Wait() error { return d.err }

// Done returns a Pending that is already complete with err.
func Done(err error) Pending { return donePending{err} }

// LocalExperts computes experts in process from the model's weights. It groups the
// rows by expert so that each expert's weights are read once per request.
type LocalExperts struct {
	Layers []LayerWeights
	// BF16Wire sets ExpertRequest.BF16Wire on every request: a trunk with
	// in-process experts then computes bitwise what it would get from
	// expert nodes over the bf16 wire with the deterministic combine.
	BF16Wire bool
	scr      ExpertScratch
}

var _ ExpertBackend = (*LocalExperts)(nil)

// Begin computes the request synchronously.
func (l *LocalExperts) Begin(req *ExpertRequest) Pending {
	if req.Layer < 0 || req.Layer >= len(l.Layers) {
		return Done(fmt.Errorf("hybrid: expert request for layer %d of %d", req.Layer, len(l.Layers)))
	}
	req.BF16Wire = req.BF16Wire || l.BF16Wire
	return Done(ComputeExperts(l.Layers[req.Layer].Experts, req, &l.scr))
}

// ExpertScratch holds reusable buffers for ComputeExperts.
type ExpertScratch struct {
	rows   []int32
	gather []float32
	gate   []float32
	up     []float32
	down   []float32
}

// grow returns b resliced to n values, reallocated when its capacity is short.
func grow[T any](b []T, n int) []T {
	if cap(b) < n {
		return make([]T, n)
	}
	return b[:n]
}

// ComputeExperts evaluates req against the given experts (indexed by expert id; an
// entry with no weights means the expert is not held here, which is an error).
//
// Every row's sum adds its experts' weighted outputs in increasing expert id,
// starting from zero, each product w·y rounded to float32 first: the order
// the trunk's dispatcher uses for per-pair answers from expert nodes, so that
// with batch-invariant kernels a row's result depends neither on the rows
// batched with it nor on which node holds which expert.
func ComputeExperts(experts []ExpertWeights, req *ExpertRequest, scr *ExpertScratch) error {
	defer stageEnd(StageExperts, stageStart())
	h := req.Hidden
	if len(req.X) < req.Rows*h || len(req.Experts) < req.Rows*req.TopK || len(req.Weights) < req.Rows*req.TopK ||
		(req.PairOut == nil && len(req.Out) < req.Rows*h) || (req.PairOut != nil && len(req.PairOut) < req.Rows*req.TopK*h) {
		return fmt.Errorf("hybrid: expert request for layer %d has short buffers", req.Layer)
	}
	if req.PairOut == nil {
		clear(req.Out[:req.Rows*h])
	}
	// Bucket (row, slot) pairs by expert. Pairs with weight 0 are padding (a remote
	// caller pads rows to a fixed pair count) and are skipped.
	counts := make([]int, len(experts)+1)
	for i, e := range req.Experts[:req.Rows*req.TopK] {
		if req.Weights[i] == 0 {
			continue
		}
		if e < 0 || int(e) >= len(experts) || experts[e].Gate.Data == nil {
			return fmt.Errorf("hybrid: layer %d: expert %d is not available here", req.Layer, e)
		}
		counts[e+1]++
	}
	for i := 1; i < len(counts); i++ {
		counts[i] += counts[i-1]
	}
	n := req.Rows * req.TopK
	if cap(scr.rows) < n {
		scr.rows = make([]int32, n)
	}
	order := scr.rows[:n]
	fill := append([]int(nil), counts[:len(experts)]...)
	for i, e := range req.Experts[:n] {
		if req.Weights[i] == 0 {
			continue
		}
		order[fill[e]] = int32(i)
		fill[e]++
	}
	var active []int
	maxM, inter := 0, 0
	for e := range experts {
		if m := counts[e+1] - counts[e]; m > 0 {
			active = append(active, e)
			maxM = max(maxM, m)
			inter = max(inter, experts[e].Gate.Rows)
		}
	}
	total := counts[len(experts)] // pairs with a weight
	// On several threads, whole experts run in parallel, each product on one
	// thread, into per-expert slices of one buffer; the sums below then run
	// in expert order as always, so the result is the same bits either way.
	// At decode the experts' products are too small to split well (each
	// would pay the pool's hand-offs); at prefill sizes a split product is
	// below the pool's wake-up threshold once the workers have parked, so
	// the experts would run on the caller alone (measured: the MoE layers
	// of a 128-token prefill took 109 ms on one thread and 109 on two). The
	// experts go in groups of at most expertGroupBytes of scratch, in
	// expert order. Fewer experts than threads, or one expert holding more
	// than a thread's share of the rows, split each product instead.
	if t := kernels.Threads(); t > 1 && len(active) >= t && (maxM <= expertParallelMaxRows || maxM*t <= total) {
		per := 4 * (2*h + 2*inter) // scratch bytes per pair
		maxPairs := max(maxM, expertGroupBytes/per)
		gp := min(total, maxPairs)
		scr.gather = grow(scr.gather, gp*h)
		scr.gate = grow(scr.gate, gp*inter)
		scr.up = grow(scr.up, gp*inter)
		scr.down = grow(scr.down, gp*h)
		for g0 := 0; g0 < len(active); {
			g1, pairs, est := g0, 0, 0
			for g1 < len(active) {
				e := active[g1]
				m := counts[e+1] - counts[e]
				if g1 > g0 && pairs+m > maxPairs {
					break
				}
				pairs += m
				// Single-thread time: weights at 14 GB/s, flops at 50 GFLOP/s.
				est += experts[e].Bytes()/14 + 3*2*experts[e].Gate.Rows*h*m/50
				g1++
			}
			base := counts[active[g0]]
			// The caller's work beside the experts goes with the first
			// group, first, as it is the largest task (the shared expert).
			beside := 0
			if g0 == 0 && req.Beside != nil {
				beside = 1
			}
			kernels.ParallelFor(g1-g0+beside, est, func(i int) {
				if i < beside {
					req.Beside()
					return
				}
				e := active[g0+i-beside]
				lo, hi := counts[e]-base, counts[e+1]-base
				m, in := hi-lo, experts[e].Gate.Rows
				g := scr.gather[lo*h : hi*h]
				gatherRows(req, order[counts[e]:counts[e+1]], g)
				expertFFN(true, experts[e], m, g, scr.gate[lo*inter:lo*inter+m*in], scr.up[lo*inter:lo*inter+m*in], scr.down[lo*h:hi*h])
			})
			ts := stageStart()
			sumPairs(req, pairs, func(c0, c1 int) {
				for _, e := range active[g0:g1] {
					lo, hi := counts[e]-base, counts[e+1]-base
					addPairs(req, order[counts[e]:counts[e+1]], scr.down[lo*h:hi*h], c0, c1)
				}
			})
			stageEnd(StageExpertSums, ts)
			req.BesideDone = req.BesideDone || beside > 0
			g0 = g1
		}
		return nil
	}
	for _, e := range active {
		lo, hi := counts[e], counts[e+1]
		ew := experts[e]
		m := hi - lo
		inter := ew.Gate.Rows
		scr.gather = grow(scr.gather, m*h)
		gatherRows(req, order[lo:hi], scr.gather)
		scr.gate = grow(scr.gate, m*inter)
		scr.up = grow(scr.up, m*inter)
		scr.down = grow(scr.down, m*h)
		expertFFN(false, ew, m, scr.gather, scr.gate, scr.up, scr.down)
		ts := stageStart()
		sumPairs(req, m, func(c0, c1 int) { addPairs(req, order[lo:hi], scr.down, c0, c1) })
		stageEnd(StageExpertSums, ts)
	}
	return nil
}

// expertParallelMaxRows: calls whose experts have at most this many rows
// each run whole experts in parallel (ComputeExperts), however unevenly the
// rows fall.
const expertParallelMaxRows = 8

// expertGroupBytes bounds the scratch of experts run in parallel
// (ComputeExperts): gathered rows, gate, up and down outputs per pair (a
// variable for tests).
var expertGroupBytes = 32 << 20

// expertFFN computes one expert for m rows g: dn = Down·(silu(Gate·g) ⊙ Up·g),
// with gt and up as scratch, its products split across the threads, or
// (serial, when experts run in parallel) on the caller alone: there Gate
// and Up as one product of two runs (kernels.MatMulPairSerial: the input
// quantized once, each matrix read as one run; the same bits).
func expertFFN(serial bool, ew ExpertWeights, m int, g, gt, up, dn []float32) {
	mm := kernels.MatMul
	if serial {
		mm = kernels.MatMulSerial
		kernels.MatMulPairSerial(gt, ew.Gate, up, ew.Up, g, m)
	} else {
		mm(gt, ew.Gate, g, m)
		mm(up, ew.Up, g, m)
	}
	kernels.SiLUMul(gt[:m*ew.Gate.Rows], gt[:m*ew.Gate.Rows], up[:m*ew.Gate.Rows])
	mm(dn, ew.Down, gt, m)
}

// gatherRows copies the rows of slots into g (one row per slot), rounded to
// bfloat16 under req.BF16Wire.
func gatherRows(req *ExpertRequest, slots []int32, g []float32) {
	h := req.Hidden
	for j, slot := range slots {
		row := int(slot) / req.TopK
		gj := g[j*h : (j+1)*h]
		if req.BF16Wire {
			kernels.RoundBF16(gj, req.X[row*h:(row+1)*h])
			continue
		}
		copy(gj, req.X[row*h:(row+1)*h])
	}
}

// sumPairs runs add (addPairs calls) over the hidden columns, cut into
// ranges of whole 16-column blocks across the compute threads when the
// pairs are many (prefill): every value's sum still adds the same terms in
// the same order.
func sumPairs(req *ExpertRequest, pairs int, add func(c0, c1 int)) {
	h := req.Hidden
	blocks := (h + 15) / 16
	parallelRows(blocks, 8*pairs, func(_, b0, b1 int) { add(min(16*b0, h), min(16*b1, h)) })
}

// addPairs uses columns [c0, c1) of one expert's outputs (down, one row per
// slot): each weighted output goes to req.PairOut, or is added to its row of
// req.Out. Each product w·y is rounded to float32 on its own (kernels.Scale,
// in place in down, or in kernels.AddScaled's registers), and to bfloat16
// under req.BF16Wire (kernels.AddScaledBF16), as the dispatcher's sum of
// per-pair answers rounds it, and then added: the same bits as a plain
// loop of dst[c] += float32(w·y[c]) (TestAddPairsMatchesLoop).
func addPairs(req *ExpertRequest, slots []int32, down []float32, c0, c1 int) {
	h := req.Hidden
	for j, slot := range slots {
		src := down[j*h+c0 : j*h+c1]
		if req.PairOut != nil {
			kernels.Scale(req.Weights[slot], src)
			copy(req.PairOut[int(slot)*h+c0:int(slot)*h+c1], src)
			continue
		}
		// Scale (and round) then add in one pass, src not written back.
		row := int(slot) / req.TopK
		dst := req.Out[row*h+c0 : row*h+c1]
		if req.BF16Wire {
			kernels.AddScaledBF16(dst, src, req.Weights[slot])
			continue
		}
		kernels.AddScaled(dst, src, req.Weights[slot])
	}
}
