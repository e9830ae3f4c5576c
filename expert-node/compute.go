package expertnode

import (
	"fmt"
	"math"
	"runtime"
	"time"

	"github.com/switchyard-serving/switchyard/internal/gpu/moe"
	"github.com/switchyard-serving/switchyard/internal/wire"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// computeLoop is the node's single compute goroutine. Each round:
//  1. waits until a chunk is queued (and, with a CoalesceWindow, for more);
//  2. acquires the current shard (a reference, so a concurrent SetAssignment
//     cannot unmap it under the round);
//  3. takes everything queued, up to MaxBatchRows rows;
//  4. checks each chunk against the shard (failures are answered at once);
//  5. groups the rest by (layer, top_k) and computes each group as one
//     hybrid.ExpertRequest over the concatenated rows;
//  6. splits the sums back to each chunk's stream and releases the shard.
//
// It owns rs; it never blocks on a stream (each stream reserved room for its
// results before submitting).
func (n *Node) computeLoop() {
	defer close(n.loopDone)
	var rs roundScratch
	for n.q.wait(n.stop, n.cfg.CoalesceWindow, n.cfg.MaxBatchRows) {
		sh, version := n.acquire()
		if h := n.hooks.roundStart; h != nil {
			h()
		}
		n.round(sh, version, n.q.take(n.cfg.MaxBatchRows), &rs)
		if sh != nil {
			sh.release() // a retired mapping that fails to unmap has no one to tell
		}
		// The streams' send loops this round's answers woke are queued on
		// this goroutine's P, and with more chunks queued the next round
		// would start at once and hold it (the pool's threads holding the
		// others) until a scheduling point. Yield once so they send first.
		runtime.Gosched()
	}
}

// roundScratch holds the compute loop's reusable buffers.
type roundScratch struct {
	x    []float32 // [rows, hidden] concatenated inputs
	out  []float32 // [rows, hidden] weighted sums
	pair []float32 // [rows, top_k, hidden] per-pair outputs (per_pair batches)
	w    []float32 // [rows, top_k] gate weights
	ids  []int32   // [rows, top_k] expert ids
	scr  hybrid.ExpertScratch
}

// group is the chunks of one round with the same layer, top_k and answer
// form (per-pair outputs or row sums).
type group struct {
	layer, topK int
	perPair     bool
	rows        int // total rows of jobs
	jobs        []*job
}

// submit queues b for the compute loop; a closed node answers it at once.
func (n *Node) submit(j *job) {
	if !n.q.push(j) {
		j.fail(ErrClosed)
	}
}

// round computes one round's jobs on sh (nil: not ready).
func (n *Node) round(sh *shard, version uint64, jobs []*job, rs *roundScratch) {
	var groups []*group
	for _, j := range jobs {
		if j.cancelled() {
			continue
		}
		if sh == nil {
			j.fail(ErrNotReady)
			continue
		}
		if err := sh.check(j.b, n.cfg.NodeID, version); err != nil {
			j.fail(err)
			continue
		}
		layer, topK := int(j.b.GetLayer()), int(j.b.GetTopK())
		// GPU shards answer row sums only (the trunk then adds them as they
		// come: no deterministic combine for those rows).
		perPair := j.b.GetPerPair() && n.gpu == nil
		var g *group
		for _, c := range groups {
			if c.layer == layer && c.topK == topK && c.perPair == perPair {
				g = c
				break
			}
		}
		if g == nil {
			g = &group{layer: layer, topK: topK, perPair: perPair}
			groups = append(groups, g)
		}
		g.jobs = append(g.jobs, j)
		g.rows += int(j.b.GetRows())
	}
	for _, g := range groups {
		n.compute(sh, g, rs)
	}
}

// compute runs one coalesced batch: every row of g's jobs in one request, so
// each expert's weights are read once for all of them.
func (n *Node) compute(sh *shard, g *group, rs *roundScratch) {
	start := time.Now()
	H, K, R := sh.model.Cfg.Hidden, g.topK, g.rows
	if n.gpu != nil {
		// Page-locked rows: the activations are decoded straight into the
		// memory the GPU copies from, and the sums read from where it copies to.
		x, out, err := n.gpu.experts.Buffers(R)
		if err != nil {
			err = fmt.Errorf("expertnode: compute layer %d: %w", g.layer, err)
			for _, j := range g.jobs {
				j.fail(err)
			}
			return
		}
		rs.x, rs.out = x, out
	} else {
		rs.x = grow(rs.x, R*H)
		if !g.perPair { // per-pair groups write rs.pair only
			rs.out = grow(rs.out, R*H)
		}
	}
	rs.w = grow(rs.w, R*K)
	if cap(rs.ids) < R*K {
		rs.ids = make([]int32, R*K)
	}
	rs.ids = rs.ids[:R*K]
	off := 0
	for _, j := range g.jobs {
		r := int(j.b.GetRows())
		wire.Decode(j.b.GetDtype(), rs.x[off*H:(off+r)*H], j.b.GetActivations())
		for i, id := range j.b.GetExpertIds() {
			rs.ids[off*K+i] = int32(id) // checked below the layer's expert count
		}
		copy(rs.w[off*K:(off+r)*K], j.b.GetWeights())
		off += r
	}
	req := hybrid.ExpertRequest{Layer: g.layer, Rows: R, Hidden: H, TopK: K, X: rs.x, Experts: rs.ids, Weights: rs.w, Out: rs.out}
	if g.perPair {
		rs.pair = grow(rs.pair, R*K*H)
		req.PairOut = rs.pair
	}
	var err error
	if n.gpu != nil {
		var t moe.Timing
		if t, err = n.gpu.experts.Compute(&req); err == nil {
			n.gpu.observeRound(g.layer, t)
		} else {
			n.deviceFault(err)
		}
	} else {
		err = hybrid.ComputeExperts(sh.model.W.Layers[g.layer].Experts, &req, &rs.scr)
	}
	if err != nil {
		err = fmt.Errorf("expertnode: compute layer %d: %w", g.layer, err)
		for _, j := range g.jobs {
			j.fail(err)
		}
		return
	}
	outs := make([][]byte, len(g.jobs))
	off = 0
	for i, j := range g.jobs {
		r := int(j.b.GetRows())
		if g.perPair {
			// Every pair of non-zero weight, in (row, slot) order.
			dt := j.b.GetDtype()
			w := rs.w[off*K : (off+r)*K]
			pairs := 0
			for _, v := range w {
				if v != 0 {
					pairs++
				}
			}
			b := make([]byte, 0, pairs*H*wire.Size(dt))
			for s, v := range w {
				if v != 0 {
					p := (off*K + s) * H
					b = wire.Encode(dt, b, rs.pair[p:p+H])
				}
			}
			outs[i] = b
		} else {
			outs[i] = wire.Encode(j.b.GetDtype(), nil, rs.out[off*H:(off+r)*H])
		}
		off += r
	}
	elapsed := time.Since(start)
	micros := uint32(min(elapsed.Microseconds(), math.MaxUint32))
	n.observeBatch(g.layer, g.jobs, R, start, elapsed)
	// Count before answering, so a client that has its results sees them counted.
	n.stats.record(g.layer, len(sh.model.W.Layers[g.layer].Experts), rs.ids, R)
	for i, j := range g.jobs {
		j.deliver(&pb.ExpertResult{
			StepId:        j.b.GetStepId(),
			Layer:         j.b.GetLayer(),
			Chunk:         j.b.GetChunk(),
			Rows:          j.b.GetRows(),
			Out:           outs[i],
			ComputeMicros: micros,
			PerPair:       g.perPair,
		})
	}
}

func grow(b []float32, n int) []float32 {
	if cap(b) < n {
		return make([]float32, n)
	}
	return b[:n]
}
