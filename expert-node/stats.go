package expertnode

import (
	"slices"
	"sync"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// stats are the activation counters reported by the Stats RPC. The compute loop
// records; Stats reads (and optionally resets).
type stats struct {
	mu      sync.Mutex
	counts  map[int][]uint64 // guarded by mu: layer -> rows per expert id
	batches uint64           // guarded by mu: coalesced compute batches run
	rows    uint64           // guarded by mu: rows computed
}

// record counts one coalesced batch of rows for layer; ids are its [rows, top_k]
// expert ids, each already checked to be below experts.
func (s *stats) record(layer, experts int, ids []int32, rows int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counts == nil {
		s.counts = map[int][]uint64{}
	}
	c := s.counts[layer]
	if len(c) < experts {
		c = append(c, make([]uint64, experts-len(c))...)
		s.counts[layer] = c
	}
	for _, id := range ids {
		c[id]++
	}
	s.batches++
	s.rows += uint64(rows)
}

// snapshot returns the non-zero counts ordered by (layer, expert), the batch and
// row totals, and zeroes them all when reset is set.
func (s *stats) snapshot(reset bool) (counts []*pb.ExpertCount, batches, rows uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	layers := make([]int, 0, len(s.counts))
	for l := range s.counts {
		layers = append(layers, l)
	}
	slices.Sort(layers)
	for _, l := range layers {
		for e, n := range s.counts[l] {
			if n > 0 {
				counts = append(counts, &pb.ExpertCount{Layer: uint32(l), Expert: uint32(e), Rows: n})
			}
		}
	}
	batches, rows = s.batches, s.rows
	if reset {
		s.counts, s.batches, s.rows = nil, 0, 0
	}
	return counts, batches, rows
}
