package moe

import (
	"testing"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
)

// TestPlanBuckets checks the layout invariants the kernels rely on: small
// experts first and unpadded; cuBLAS experts largest first, each in a slot of
// its bucket's rows with the padding marked -1; every slot maps to a real row.
func TestPlanBuckets(t *testing.T) {
	const topK, nExperts = 4, 16
	buckets := 0
	for _, tc := range []struct{ rows, small int }{{300, 0}, {300, 16}, {300, 60}, {40, 0}, {40, 6}, {25, 0}} {
		rows, small := tc.rows, tc.small
		req := randRequest(uint64(small)+7, 0, rows, 64, topK, nExperts, true)
		if rows != 300 {
			// Rows per expert R, R/2, R/4, R/8: several buckets.
			for r := 0; r < rows; r++ {
				for j, e := range []int{0, 1 + r%2, 3 + r%4, 7 + r%8} {
					req.Experts[r*topK+j] = int32(e)
				}
			}
		}
		get := func(e int) (expertPtrs, bool) {
			return expertPtrs{gateUp: cuda.DevPtr(1000 * (e + 1)), down: cuda.DevPtr(1000*(e+1) + 500)}, true
		}
		var p plan
		if err := makePlan(&p, 0, rows, topK, 64, 32, req.Experts, req.Weights, nExperts, get, small); err != nil {
			t.Fatal(err)
		}
		active := 0
		for i, w := range req.Weights[:rows*topK] {
			if w == 0 {
				if p.pos[i] != -1 {
					t.Fatalf("padding slot %d maps to pair %d", i, p.pos[i])
				}
				continue
			}
			active++
			q := p.pos[i]
			if q < 0 || int(q) >= p.pairs || p.pairRow[q] != int32(i/topK) {
				t.Fatalf("slot %d: pair %d (of %d) holds row %d, want %d", i, q, p.pairs, p.pairRow[q], i/topK)
			}
		}
		if p.active != active {
			t.Fatalf("active %d, want %d", p.active, active)
		}
		next := p.small
		for bi, b := range p.buckets {
			if b.count == 0 || b.first+b.count > len(p.big) {
				t.Fatalf("bucket %d: %+v of %d experts", bi, b, len(p.big))
			}
			for j, g := range p.big[b.first : b.first+b.count] {
				if g.p0 != next || g.m > b.rows || g.m <= small {
					t.Fatalf("bucket %d expert %d: p0 %d (want %d), m %d of %d rows", bi, j, g.p0, next, g.m, b.rows)
				}
				if float64(g.m) < bucketFill*float64(b.rows) {
					t.Fatalf("bucket %d pads %d rows to %d", bi, g.m, b.rows)
				}
				for r := g.p0 + g.m; r < g.p0+b.rows; r++ {
					if p.pairRow[r] != -1 {
						t.Fatalf("padding row %d holds input row %d", r, p.pairRow[r])
					}
				}
				next += b.rows
			}
			if bi > 0 && b.rows > p.buckets[bi-1].rows {
				t.Fatalf("buckets not largest first: %+v", p.buckets)
			}
		}
		if next != p.pairs {
			t.Fatalf("pairs %d, layout ends at %d", p.pairs, next)
		}
		buckets = max(buckets, len(p.buckets))
		t.Logf("rows %d small %d: %d active pairs, %d rows with padding, %d buckets, %d GEMV experts", rows, small, p.active, p.pairs, len(p.buckets), p.smallExperts)
	}
	if buckets < 2 {
		t.Fatal("no case made more than one bucket")
	}
}
