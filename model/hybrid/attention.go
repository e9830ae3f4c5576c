package hybrid

import (
	"cmp"
	"math"
	"slices"
	"sync/atomic"

	"github.com/switchyard-serving/switchyard/model/kernels"
)

// Attention over the paged KV cache. A task is one query head of a block of up to
// attnBlock consecutive query rows of one sequence. Per KV page it computes the
// block's scores as one matrix product (queries × the page's keys), takes a
// causal softmax over each row across the pages, and accumulates the weighted
// values as a second product (probabilities × the page's transposed values).
// Tasks run in parallel, heaviest first; a block only visits the pages its
// last row can see, so causal prefill costs about half of a full square.

const attnBlock = 64 // query rows per task

type attnTask struct {
	kv      *KVCache
	r       int // the sequence's first row in the batch
	pos0    int // tokens held before this step
	t0, t1  int // query rows [t0, t1) of the sequence
	h       int // query head
	keysMax int // keys visible to the last row (pos0+t1)
}

// attnScratch is one attention worker's memory, reused across calls.
type attnScratch struct {
	q, s, o, tmp, inv []float32
}

// attention runs attention layer ai over the batch: reads sc.u, writes sc.mix.
func (m *Model) attention(sc *scratch, batch []Seq, ai int, w *AttnWeights, N int) error {
	c := m.Cfg
	qd, kvd, hd := c.QDim(), c.KVDim(), c.HeadDim()
	nq, nkv := c.Heads, c.KVHeads
	sc.q = grow(sc.q, N*qd)
	sc.k = grow(sc.k, N*kvd)
	sc.v = grow(sc.v, N*kvd)
	x := sc.u[:N*c.Hidden]
	kernels.MatMul(sc.q, w.Q, x, N)
	kernels.MatMul(sc.k, w.K, x, N)
	kernels.MatMul(sc.v, w.V, x, N)
	sc.att = grow(sc.att, N*qd)

	tasks := sc.attnTasks[:0]
	flops := 0
	r := 0
	for _, s := range batch {
		T := len(s.Tokens)
		st := s.State
		pos0 := st.Pos
		if c.UseRope() {
			for t := range T {
				rope(sc.q[(r+t)*qd:(r+t+1)*qd], nq, hd, pos0+t, c.RopeTheta, c.RopeInterleaved)
				rope(sc.k[(r+t)*kvd:(r+t+1)*kvd], nkv, hd, pos0+t, c.RopeTheta, c.RopeInterleaved)
			}
		}
		kv := &st.KV[ai]
		kv.Append(sc.k[r*kvd:(r+T)*kvd], sc.v[r*kvd:(r+T)*kvd], T)
		for t0 := 0; t0 < T; t0 += attnBlock {
			t1 := min(T, t0+attnBlock)
			for h := range nq {
				tasks = append(tasks, attnTask{kv: kv, r: r, pos0: pos0, t0: t0, t1: t1, h: h, keysMax: pos0 + t1})
			}
			flops += 4 * (t1 - t0) * (pos0 + t1) * hd * nq
		}
		r += T
	}
	sc.attnTasks = tasks
	runAttention(sc, tasks, flops, sc.q, sc.att, qd, hd, nq/nkv, c.AttentionMult)
	kernels.MatMul(sc.mix, w.O, sc.att[:N*qd], N)
	return nil
}

// runAttention runs the tasks (about flops floating-point operations in all)
// on up to kernels.Threads() goroutines, heaviest first, and then drops the
// tasks' cache pointers.
func runAttention(sc *scratch, tasks []attnTask, flops int, q, att []float32, qd, hd, rep int, scale float32) {
	slices.SortStableFunc(tasks, func(a, b attnTask) int { return cmp.Compare(b.keysMax*(b.t1-b.t0), a.keysMax*(a.t1-a.t0)) })
	workers := min(kernels.Threads(), len(tasks))
	if flops < 4<<20 {
		workers = 1
	}
	for len(sc.attn) < workers {
		sc.attn = append(sc.attn, attnScratch{})
	}
	var next atomic.Int64
	parallel(workers, func(wi int) {
		ws := &sc.attn[wi]
		for {
			i := int(next.Add(1) - 1)
			if i >= len(tasks) {
				return
			}
			attendBlock(&tasks[i], q, att, ws, qd, hd, rep, scale)
		}
	})
	clear(tasks)
}

// attendBlock computes one task: att rows [r+t0, r+t1) of head h.
func attendBlock(t *attnTask, q, att []float32, ws *attnScratch, qd, hd, rep int, scale float32) {
	const P = PageTokens
	nb := t.t1 - t.t0
	kh := t.h / rep
	ws.q = grow(ws.q, nb*hd)
	for i := range nb { // the rows of head h, pre-scaled so the products are the scores
		o := (t.r+t.t0+i)*qd + t.h*hd
		for d, v := range q[o : o+hd] {
			ws.q[i*hd+d] = v * scale
		}
	}
	np := (t.keysMax + P - 1) / P
	// Scores, page-major: s[p] is [nb, P] (row i, key p*P+j).
	ws.s = grow(ws.s, np*nb*P)
	for p := range np {
		kernels.MatMulSerial(ws.s[p*nb*P:(p+1)*nb*P], t.kv.keys(p, kh), ws.q, nb)
	}
	ws.inv = grow(ws.inv, nb)
	for i := range nb {
		last := t.pos0 + t.t0 + i // the row's query sees keys 0..last
		lp := last / P
		mx := float32(math.Inf(-1))
		for p := 0; p <= lp; p++ {
			seg := ws.s[(p*nb+i)*P : (p*nb+i+1)*P]
			mx = max(mx, kernels.Max(seg[:min(P, last+1-p*P)]))
		}
		var sum float64
		for p := range np {
			seg := ws.s[(p*nb+i)*P : (p*nb+i+1)*P]
			valid := max(0, min(P, last+1-p*P))
			if valid > 0 {
				sum += kernels.ExpShift(seg[:valid], mx)
			}
			clear(seg[valid:])
		}
		ws.inv[i] = float32(1 / sum)
	}
	// Weighted values: o = Σ_p s[p] · V[p] (V stored transposed per page).
	ws.o = grow(ws.o, nb*hd)
	ws.tmp = grow(ws.tmp, nb*hd)
	o := ws.o[:nb*hd]
	for p := range np {
		dst := o
		if p > 0 {
			dst = ws.tmp[:nb*hd]
		}
		kernels.MatMulSerial(dst, t.kv.values(p, kh), ws.s[p*nb*P:(p+1)*nb*P], nb)
		if p > 0 {
			kernels.Add(o, o, dst)
		}
	}
	for i := range nb {
		dst := att[(t.r+t.t0+i)*qd+t.h*hd : (t.r+t.t0+i)*qd+(t.h+1)*hd]
		inv := ws.inv[i]
		for d, v := range o[i*hd : (i+1)*hd] {
			dst[d] = v * inv
		}
	}
}
