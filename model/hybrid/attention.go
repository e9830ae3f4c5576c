package hybrid

import (
	"cmp"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Attention over the paged KV cache. A task is one or more query heads that
// share a KV head (all of a KV head's query heads when there are tasks enough
// for the threads) over a block of up to attnBlock consecutive query rows of one
// sequence. Per KV page it computes the rows' scores as one matrix product
// (every head's queries × the page's keys, so a page is read once for the
// heads that share it), folds them into an online causal softmax per row, and
// accumulates the weighted values as a second product (probabilities × the
// page's transposed values). The products are batch-invariant and the softmax
// is per row, so a row's result is the same bits whatever the task holds with
// it.
// Tasks run in parallel, heaviest first; a block only visits the pages its
// last row can see, so causal prefill costs about half of a full square.

const attnBlock = 64 // query rows per task

type attnTask struct {
	kv      *KVCache
	r       int // the sequence's first row in the batch
	pos0    int // tokens held before this step
	t0, t1  int // query rows [t0, t1) of the sequence
	h       int // (first) query head
	nh      int // query heads h, h+1, ... of the task, sharing one KV head (0: 1)
	keysMax int // keys visible to the last row (pos0+t1)
}

// attnScratch is one attention worker's memory, reused across calls.
type attnScratch struct {
	q, s, o, tmp, mx []float32
	sum              []float64
	dst, w, wHead    [][]float32 // Q8_0 values: the rows a page's weighted sum goes to
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
	// A task per KV head (its rep query heads together) when that leaves
	// two tasks a thread, else a task per query head.
	groups := 0
	for _, s := range batch {
		groups += (len(s.Tokens) + attnBlock - 1) / attnBlock * nkv
	}
	per := nq / nkv
	if groups < 2*kernels.Threads() {
		per = 1
	}
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
		if kv.Len() != pos0 {
			return fmt.Errorf("%w: attention layer %d holds %d tokens, the state %d (a failed step was not discarded)", ErrState, ai, kv.Len(), pos0)
		}
		kv.Append(sc.k[r*kvd:(r+T)*kvd], sc.v[r*kvd:(r+T)*kvd], T)
		for t0 := 0; t0 < T; t0 += attnBlock {
			t1 := min(T, t0+attnBlock)
			for h := 0; h < nq; h += per {
				tasks = append(tasks, attnTask{kv: kv, r: r, pos0: pos0, t0: t0, t1: t1, h: h, nh: per, keysMax: pos0 + t1})
			}
			flops += 4 * (t1 - t0) * (pos0 + t1) * hd * nq
		}
		r += T
	}
	sc.attnTasks = tasks
	t0 := stageStart()
	runAttention(sc, tasks, flops, sc.q, sc.att, qd, hd, nq/nkv, c.AttentionMult)
	stageEnd(StageAttentionCore, t0)
	kernels.MatMul(sc.mix, w.O, sc.att[:N*qd], N)
	return nil
}

// runAttention runs the tasks (about flops floating-point operations in all)
// on up to kernels.Threads() goroutines, heaviest first, and then drops the
// tasks' cache pointers.
func runAttention(sc *scratch, tasks []attnTask, flops int, q, att []float32, qd, hd, rep int, scale float32) {
	slices.SortStableFunc(tasks, func(a, b attnTask) int { return cmp.Compare(b.weight(), a.weight()) })
	workers := min(kernels.Threads(), len(tasks))
	for len(sc.attn) < workers {
		sc.attn = append(sc.attn, attnScratch{})
	}
	var next atomic.Int64
	parallel(workers, flops/20, func(wi int) { // about 20 GFLOP/s on one thread
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

// weight is how much work a task is, to run the heaviest first.
func (t *attnTask) weight() int { return t.keysMax * (t.t1 - t.t0) * max(1, t.nh) }

// attendBlock computes one task: att rows [r+t0, r+t1) of its heads. Its
// rows are head-major: row i is head h+i/nt at query row t0+i%nt.
func attendBlock(t *attnTask, q, att []float32, ws *attnScratch, qd, hd, rep int, scale float32) {
	const P = PageTokens
	nt := t.t1 - t.t0
	nh := max(1, t.nh)
	nb := nh * nt // rows
	kh := t.h / rep
	if (t.h+nh-1)/rep != kh {
		panic("hybrid: an attention task's heads do not share a KV head")
	}
	ws.q = grow(ws.q, nb*hd)
	for i := range nb { // the rows, pre-scaled so the products are the scores
		o := (t.r+t.t0+i%nt)*qd + (t.h+i/nt)*hd
		for d, v := range q[o : o+hd] {
			ws.q[i*hd+d] = v * scale
		}
	}
	np := (t.keysMax + P - 1) / P
	// One page at a time with an online softmax (running max and sum per row,
	// earlier pages' weighted values rescaled when the max grows), so the scratch
	// is one page of scores whatever the context.
	sc := grow(ws.s, nb*P)
	ws.s = sc
	ws.o = grow(ws.o, nb*hd)
	ws.tmp = grow(ws.tmp, nb*hd)
	ws.mx = grow(ws.mx, nb)
	ws.sum = grow(ws.sum, nb)
	o := ws.o[:nb*hd]
	keys := t.kv.keys(0, kh)
	for p := range np {
		// bf16 and f32 pages: the keys' product prefetches the page's
		// values, the values' product the next page's keys, so that a long
		// context's pages stream in while the products before them compute.
		var values, nextKeys tensor.Matrix
		if p+1 < np {
			nextKeys = t.kv.keys(p+1, kh)
		}
		if t.kv.dt != tensor.Q8_0 {
			values = t.kv.values(p, kh)
		}
		kernels.MatMulSerialInvariantThen(sc, keys, ws.q, nb, values.Data)
		for i := range nb {
			seg := sc[i*P : (i+1)*P]
			valid := max(0, min(P, t.pos0+t.t0+i%nt+1-p*P)) // the row's query sees keys 0..pos0+t0+i%nt
			if valid == 0 {
				clear(seg)
				continue
			}
			if pm := kernels.Max(seg[:valid]); p == 0 || pm > ws.mx[i] {
				if p > 0 { // rescale what earlier pages contributed
					alpha := kernels.Exp(ws.mx[i] - pm)
					ws.sum[i] *= float64(alpha)
					kernels.Scale(alpha, o[i*hd:(i+1)*hd])
				} else {
					ws.sum[i] = 0
				}
				ws.mx[i] = pm
			}
			ws.sum[i] += kernels.ExpShift(seg[:valid], ws.mx[i])
			clear(seg[valid:])
		}
		// Weighted values: o += s · V[p] (V stored transposed per page, or
		// Q8_0 rows a token each, summed row by row).
		if t.kv.dt == tensor.Q8_0 {
			if p == 0 {
				clear(o)
			}
			// The rows that see this page, over the keys all of them see at
			// once (they share each block's widening), then each over the
			// rest of its own: in token order either way, so each row gets
			// the bits it gets alone.
			rows, rb := t.kv.valueRows(p, kh), t.kv.rowBytes()
			ws.dst, ws.w = ws.dst[:0], ws.w[:0]
			common := P
			for i := range nb {
				if valid := max(0, min(P, t.pos0+t.t0+i%nt+1-p*P)); valid > 0 {
					ws.dst, ws.w = append(ws.dst, o[i*hd:(i+1)*hd]), append(ws.w, sc[i*P:i*P+valid])
					common = min(common, valid)
				}
			}
			if len(ws.dst) > 0 {
				head := ws.wHead[:0]
				for _, w := range ws.w {
					head = append(head, w[:common])
				}
				ws.wHead = head
				kernels.AddWeightedQ80Rows(ws.dst, rows, rb, head)
				for j, w := range ws.w {
					if len(w) > common {
						kernels.AddWeightedQ80(ws.dst[j], rows[common*rb:], rb, w[common:])
					}
				}
			}
			clear(ws.dst) // no references to this step's rows kept
			clear(ws.w)
			clear(ws.wHead)
		} else if p == 0 {
			kernels.MatMulSerialInvariantThen(o, values, sc, nb, nextKeys.Data)
		} else {
			kernels.MatMulSerialInvariantThen(ws.tmp[:nb*hd], values, sc, nb, nextKeys.Data)
			kernels.Add(o, o, ws.tmp[:nb*hd])
		}
		keys = nextKeys
	}
	for i := range nb {
		at := (t.r+t.t0+i%nt)*qd + (t.h+i/nt)*hd
		dst := att[at : at+hd]
		inv := float32(1 / ws.sum[i])
		for d, v := range o[i*hd : (i+1)*hd] {
			dst[d] = v * inv
		}
	}
}
