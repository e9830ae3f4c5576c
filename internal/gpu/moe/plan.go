package moe

import (
	"fmt"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
)

// MaxGroupRows is the most rows one grouped-GEMV task multiplies (the MMAX of
// kernels.cu); an expert with more small-path rows is split into tasks of at
// most this many.
const MaxGroupRows = 8

// gemvRowsPerBlock is the weight rows one grouped-GEMV block computes (RPW
// rows for each of the WPB warps of its 128 threads, kernels.cu).
const (
	gemvRowsPerBlock = 16
	gemvThreads      = 128
)

// taskWords is the uint64 words of one grouped-GEMV task.
const taskWords = 3

// expertPtrs are one resident expert's device matrices.
type expertPtrs struct {
	gateUp cuda.DevPtr // bf16 [2I, H]
	down   cuda.DevPtr // bf16 [H, I]
}

// bigSeg is one expert's pairs on the cuBLAS path.
type bigSeg struct {
	p0, m  int
	expert expertPtrs
}

// plan is one round laid out for the kernels.
type plan struct {
	rows, topK, hidden, inter int
	pairs                     int     // P: active (row, slot) pairs
	small                     int     // pairs on the grouped-GEMV path (they come first)
	pairRow                   []int32 // [P] the input row of each pair
	pos                       []int32 // [rows*topK] the pair of each slot, -1 for padding
	upTasks, downTasks        []uint64
	big                       []bigSeg
	experts                   int // distinct experts used
	smallExperts              int
}

// lookup returns the device matrices of an expert, or false when it is not resident.
type lookup func(expert int) (expertPtrs, bool)

// makePlan sorts the pairs of a request by expert and assigns each expert to a
// path: experts with at most smallRows rows go to the grouped GEMV, the rest to
// cuBLAS. Slots with weight 0 are padding. p is reused.
func makePlan(p *plan, layer, rows, topK, hidden, inter int, ids []int32, weights []float32, numExperts int, get lookup, smallRows int) error {
	n := rows * topK
	if len(ids) < n || len(weights) < n {
		return fmt.Errorf("moe: layer %d: %d rows x top-%d need %d ids and weights, have %d and %d", layer, rows, topK, n, len(ids), len(weights))
	}
	*p = plan{rows: rows, topK: topK, hidden: hidden, inter: inter,
		pairRow: p.pairRow[:0], pos: grow(p.pos, n), upTasks: p.upTasks[:0], downTasks: p.downTasks[:0], big: p.big[:0]}
	counts := make([]int, numExperts)
	for i, e := range ids[:n] {
		if weights[i] == 0 {
			continue
		}
		if e < 0 || int(e) >= numExperts {
			return fmt.Errorf("moe: layer %d: expert %d is not available here (the layer has %d experts)", layer, e, numExperts)
		}
		counts[e]++
	}
	// Order: small experts, then big ones, each by id; a pair list per expert in slot order.
	order := make([]int, 0, numExperts)
	for pass := 0; pass < 2; pass++ {
		for e, c := range counts {
			if c > 0 && (c <= smallRows) == (pass == 0) {
				order = append(order, e)
			}
		}
		if pass == 0 {
			p.smallExperts = len(order)
		}
	}
	start := make([]int, numExperts)
	next := 0
	ptrs := make([]expertPtrs, numExperts)
	for _, e := range order {
		ep, ok := get(e)
		if !ok {
			return fmt.Errorf("moe: layer %d: expert %d is not available here", layer, e)
		}
		ptrs[e] = ep
		start[e] = next
		next += counts[e]
		if counts[e] <= smallRows {
			p.small = next
		}
	}
	p.pairs, p.experts = next, len(order)
	p.pairRow = grow(p.pairRow, next)
	fill := append([]int(nil), start...)
	for i, e := range ids[:n] {
		if weights[i] == 0 {
			p.pos[i] = -1
			continue
		}
		q := fill[e]
		fill[e]++
		p.pos[i] = int32(q)
		p.pairRow[q] = int32(i / topK)
	}
	for k, e := range order {
		p0, m := start[e], counts[e]
		if k >= p.smallExperts {
			p.big = append(p.big, bigSeg{p0: p0, m: m, expert: ptrs[e]})
			continue
		}
		for c0 := 0; c0 < m; c0 += MaxGroupRows {
			mc := min(MaxGroupRows, m-c0)
			word := uint64(uint32(p0+c0)) | uint64(mc)<<32
			for n0 := 0; n0 < 2*inter; n0 += gemvRowsPerBlock {
				p.upTasks = append(p.upTasks, uint64(ptrs[e].gateUp), word, uint64(n0))
			}
			for n0 := 0; n0 < hidden; n0 += gemvRowsPerBlock {
				p.downTasks = append(p.downTasks, uint64(ptrs[e].down), word, uint64(n0))
			}
		}
	}
	return nil
}

func grow[T any](b []T, n int) []T {
	if cap(b) < n {
		return make([]T, n)
	}
	return b[:n]
}
