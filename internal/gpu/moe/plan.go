package moe

import (
	"fmt"
	"sort"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
)

// MaxGroupRows is the most rows one grouped-GEMV task multiplies (the MMAX of
// kernels.cu); an expert with more small-path rows is split into tasks of at
// most this many.
const MaxGroupRows = 16

// gemvRowsPerBlock is the weight rows one grouped-GEMV block computes (RPW
// rows for each of the WPB warps of its 128 threads, kernels.cu); gemvPass is
// the input rows it multiplies per pass (MPASS).
const (
	gemvRowsPerBlock = 16
	gemvThreads      = 128
	gemvPass         = 4
)

// taskWords is the uint64 words of one grouped-GEMV task.
const taskWords = 3

// expertPtrs are one resident expert's device matrices.
type expertPtrs struct {
	gateUp cuda.DevPtr // bf16 [2I, H]
	down   cuda.DevPtr // bf16 [H, I]
}

// bigSeg is one expert's pairs on the cuBLAS path: m rows at p0, in a slot of
// its bucket's rows (the rest is padding).
type bigSeg struct {
	p0, m  int
	expert expertPtrs
}

// bucket is cuBLAS-path experts padded to one row count, computed by one
// batched GEMM per projection: big[first : first+count], rows each.
type bucket struct{ first, count, rows int }

// bucketFill: the cuBLAS experts, largest first, share a bucket while they
// have at least this fraction of its rows, so padding adds at most
// 1/bucketFill - 1 = 25% to their rows (scratchBytes reserves for it).
const bucketFill = 0.8

// plan is one round laid out for the kernels.
type plan struct {
	rows, topK, hidden, inter int
	pairs                     int     // P: pair rows, the cuBLAS experts' padding included
	active                    int     // (row, slot) pairs with a weight
	small                     int     // pairs on the grouped-GEMV path (they come first)
	pairRow                   []int32 // [P] the input row of each pair, -1 for padding
	pos                       []int32 // [rows*topK] the pair of each slot, -1 for padding
	upTasks, downTasks        []uint64
	big                       []bigSeg
	buckets                   []bucket
	scr                       planScratch
	experts                   int // distinct experts used
	smallExperts              int
}

// planScratch is makePlan's per-expert working space, reused across rounds.
type planScratch struct {
	counts, order, start, fill []int
	ptrs                       []expertPtrs
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
	*p = plan{rows: rows, topK: topK, hidden: hidden, inter: inter, pairRow: p.pairRow[:0], pos: grow(p.pos, n),
		upTasks: p.upTasks[:0], downTasks: p.downTasks[:0], big: p.big[:0], buckets: p.buckets[:0], scr: p.scr}
	sc := &p.scr
	sc.counts = grow(sc.counts, numExperts)
	clear(sc.counts)
	counts := sc.counts
	for i, e := range ids[:n] {
		if weights[i] == 0 {
			continue
		}
		if e < 0 || int(e) >= numExperts {
			return fmt.Errorf("moe: layer %d: expert %d is not available here (the layer has %d experts)", layer, e, numExperts)
		}
		counts[e]++
	}
	// Order: small experts by id, then big ones by rows (largest first, then
	// by id); a pair list per expert in slot order.
	order := sc.order[:0]
	for e, c := range counts {
		if c > 0 && c <= smallRows {
			order = append(order, e)
		}
	}
	p.smallExperts = len(order)
	for e, c := range counts {
		if c > smallRows {
			order = append(order, e)
		}
	}
	bigIDs := order[p.smallExperts:]
	sort.SliceStable(bigIDs, func(a, b int) bool { return counts[bigIDs[a]] > counts[bigIDs[b]] })
	sc.order = order
	sc.start, sc.ptrs = grow(sc.start, numExperts), grow(sc.ptrs, numExperts)
	start, ptrs := sc.start, sc.ptrs
	next := 0
	for k, e := range order {
		ep, ok := get(e)
		if !ok {
			return fmt.Errorf("moe: layer %d: expert %d is not available here", layer, e)
		}
		ptrs[e] = ep
		start[e] = next
		p.active += counts[e]
		if k < p.smallExperts {
			next += counts[e]
			p.small = next
			continue
		}
		nb := len(p.buckets)
		if nb == 0 || float64(counts[e]) < bucketFill*float64(p.buckets[nb-1].rows) {
			p.buckets = append(p.buckets, bucket{first: len(p.big), rows: counts[e]})
			nb++
		}
		p.buckets[nb-1].count++
		p.big = append(p.big, bigSeg{p0: next, m: counts[e], expert: ep})
		next += p.buckets[nb-1].rows
	}
	p.pairs, p.experts = next, len(order)
	p.pairRow = grow(p.pairRow, next)
	for i := p.small; i < next; i++ {
		p.pairRow[i] = -1 // padding rows of the buckets
	}
	sc.fill = append(sc.fill[:0], start...)
	fill := sc.fill
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
	for _, e := range order[:p.smallExperts] {
		p0, m := start[e], counts[e]
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
