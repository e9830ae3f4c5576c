// Package hybrid computes the Granite 4.0 hybrid (Mamba-2 + attention + MoE) forward
// pass: batched prefill and decode over many independent sessions at once, with
// the routed experts behind the ExpertBackend seam so a cluster can compute them
// remotely.
//
// One Forward call takes a batch of sequences, each a session State plus the new
// tokens to feed it (a whole prompt, a prefill chunk, or one decode token). Every
// weight matmul runs once over all rows of the batch; the Mamba scan and attention
// run per sequence against that sequence's state. Arithmetic is float32.
//
// Per layer (spec section 3): h += r·mixer(rmsnorm(h)); h += r·(moe(x) + shared(x))
// with x = rmsnorm(h); logits = (rmsnorm(h) · Embedᵀ) / logits_scaling.
package hybrid

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// ErrInput reports a bad Forward argument (token out of range, empty sequence, ...).
var ErrInput = errors.New("hybrid: bad input")

// Model is a loaded model. Forward is not safe for concurrent use: one step at a
// time per Model (the scheduler owns it). Weights are read-only and may be shared.
type Model struct {
	Cfg     *config.Config
	W       *Weights
	Experts ExpertBackend // routed experts; LocalExperts by default

	// ScanChunkedMin is the sequence length from which Mamba prefill uses the
	// chunked SSD scan instead of the token-by-token recurrence (0, the
	// default: never, the recurrence always). Both give the same result up to
	// float rounding, but only the recurrence gives bitwise the same result
	// however a prompt is cut into Forward calls: the chunked form's sums
	// depend on where its chunks start, so cuts that are not multiples of
	// MambaChunkSize from position 0 (and single-token calls, which always
	// recur) change the last bits. On CPUs the recurrence is also the faster
	// form (kernels.SSMRows; `go test ./model/hybrid -bench MambaScan`).
	ScanChunkedMin int

	// KVDType is the element type of the KV caches of the states NewState
	// makes: BF16 (half the memory; keys and values rounded to nearest
	// bfloat16 as they are cached) or F32. Open and the loaders set it from
	// LoadOptions (DefaultKVDType, BF16, unless asked otherwise); the zero
	// value, a model assembled by New, reads as F32.
	KVDType tensor.DType

	closer func() error
	copied int64 // bytes of weights copied out of the file's map (LoadOptions.NoMmap)
	scr    scratch
	scr2   scratch // the second micro-batch of ForwardPingPong
}

// New assembles a model from a config and weights, with in-process experts.
func New(c *config.Config, w *Weights) *Model {
	return &Model{Cfg: c, W: w, Experts: &LocalExperts{Layers: w.Layers}}
}

// Close releases the checkpoint mapping, if the model owns one.
func (m *Model) Close() error {
	if m.closer != nil {
		return m.closer()
	}
	return nil
}

// CopiedBytes is the size of the weights the model copied out of the file's
// map into its own memory (LoadOptions.NoMmap); 0 when it reads them through
// the map.
func (m *Model) CopiedBytes() int64 { return m.copied }

// NewState returns a fresh session state, its KV caches of type m.KVDType.
func (m *Model) NewState() *State { return NewStateKV(m.Cfg, m.KVDType) }

// KVBytesPerToken is the KV memory one token of a session takes (see
// KVBytesPerToken).
func (m *Model) KVBytesPerToken() int64 { return KVBytesPerToken(m.Cfg, m.KVDType) }

// Seq is one sequence of a Forward batch.
type Seq struct {
	State  *State
	Tokens []int
	// AllLogits asks for logits at every position ([len(Tokens), vocab] in Logits);
	// otherwise only the last position's ([vocab]). NoLogits skips the LM head
	// (a prefill chunk that is not the prompt's last).
	AllLogits bool
	NoLogits  bool
	Logits    []float32 // filled by Forward (reused if large enough)
	// Err is set by Forward when this sequence alone could not be computed (a
	// non-finite activation, or its routed experts failed while the others'
	// did not): its state is then invalid and its Logits unset. The other
	// sequences of the batch are computed as if it were not there.
	Err error
}

// ErrSequence is the cause of a failed sequence (Seq.Err wraps it).
var ErrSequence = errors.New("hybrid: sequence failed")

type scratch struct {
	h, u, f, mix []float32
	proj         []float32
	xbc, y       []float32
	xbcAct, dt   []float32
	convTmp      []float32
	q, k, v, att []float32
	sharedG      []float32
	sharedU      []float32
	router       []float32
	moeOut       []float32
	exps         []int32
	wts          []float32
	failed       []bool   // [N] rows that failed this step
	failWhy      []string // [N] why (set when failed)
	scores       []float32
	outRows      []float32
	logitRows    [][]float32    // head: each row's destination (cleared after use)
	toks         []int          // the batch's tokens in row order
	chunks       []chunkScratch // one per scan worker
	attn         []attnScratch  // one per attention worker
	attnTasks    []attnTask
}

// parallel runs fn(0..n-1) on up to n participants of the kernels' worker
// pool (kernels.ParallelFor: the caller and the pool's workers, claiming
// indices one at a time; inline when n == 1), estNs the estimated
// single-thread time of all of them: the pool runs small work on the caller
// alone, and below a millisecond it uses only workers that are already
// busy-waiting for work (as they are between a decode step's products), for
// which a hand-off costs about a microsecond rather than a goroutine's
// wake-up.
func parallel(n, estNs int, fn func(i int)) {
	if n <= 1 {
		fn(0)
		return
	}
	kernels.ParallelFor(n, estNs, fn)
}

// minRowSplitNs is the least estimated single-thread time of row-wise work
// (norms, residuals, the conv, the gate, the expert sums) that parallelRows
// splits across the compute threads: below it a hand-off costs more than
// it saves (decode's rows).
var minRowSplitNs = 20_000 // a variable for tests

// parallelRows runs fn over [0, n) cut into contiguous ranges, one per
// compute thread (part numbers them), when the whole is estimated at
// nsPerRow·n ns of one thread's time and worth splitting; else fn(0, 0, n)
// on the caller. Each row's work must not depend on how the rows are cut:
// then the results are the same bits whatever the threads.
func parallelRows(n, nsPerRow int, fn func(part, r0, r1 int)) {
	parts := rowParts(n, nsPerRow)
	if parts <= 1 {
		fn(0, 0, n)
		return
	}
	parallel(parts, n*nsPerRow, func(i int) { fn(i, i*n/parts, (i+1)*n/parts) })
}

var noRowSplits atomic.Bool

// SetRowSplitting turns the splitting of row-wise work across the compute
// threads (parallelRows) on or off, on by default, and returns the previous
// setting: for measurements (bench --ab rows); the results are the same
// bits either way.
func SetRowSplitting(on bool) (prev bool) { return !noRowSplits.Swap(!on) }

// rowParts is how many ranges parallelRows cuts n rows into.
func rowParts(n, nsPerRow int) int {
	if n*nsPerRow < minRowSplitNs || noRowSplits.Load() {
		return 1
	}
	return max(1, min(kernels.Threads(), n))
}

// Forward advances every sequence of the batch by its tokens, updating the states
// and filling the requested logits. On error the states may be partially updated
// (the caller discards the step).
func (m *Model) Forward(batch []Seq) error {
	return m.forwardWith(m.Experts, batch, &m.scr, nil)
}

// ForwardOn is Forward with the routed experts of this one step computed by
// experts instead of m.Experts: a caller passes a backend that carries the
// step's own context (trace, deadline, cancellation) rather than setting it on
// a shared backend on the side.
func (m *Model) ForwardOn(experts ExpertBackend, batch []Seq) error {
	return m.forwardWith(experts, batch, &m.scr, nil)
}

// baton serialises the CPU work of two micro-batches: the holder computes; it
// hands the baton over while it waits for remote experts.
type baton chan struct{}

func (b baton) acquire() {
	if b != nil {
		b <- struct{}{}
	}
}

func (b baton) release() {
	if b != nil {
		<-b
	}
}

// ForwardPingPong runs two micro-batches so that one computes while the other
// waits for its routed experts (MegaScale-Infer's ping-pong): each MoE layer's
// dispatch of micro-batch a overlaps the trunk compute of micro-batch b and vice
// versa. The result equals Forward on each micro-batch.
func (m *Model) ForwardPingPong(a, b []Seq) error { return m.ForwardPingPongOn(m.Experts, a, b) }

// ForwardPingPongOn is ForwardPingPong with the step's own expert backend (see
// ForwardOn).
func (m *Model) ForwardPingPongOn(experts ExpertBackend, a, b []Seq) error {
	if len(a) == 0 {
		return m.ForwardOn(experts, b)
	}
	if len(b) == 0 {
		return m.ForwardOn(experts, a)
	}
	bt := make(baton, 1)
	errs := make(chan error, 1)
	go func() {
		bt.acquire()
		defer bt.release()
		errs <- m.forwardWith(experts, b, &m.scr2, bt)
	}()
	bt.acquire()
	errA := m.forwardWith(experts, a, &m.scr, bt)
	bt.release()
	errB := <-errs
	if errA != nil {
		return errA
	}
	return errB
}

func (m *Model) forwardWith(experts ExpertBackend, batch []Seq, sc *scratch, bt baton) error {
	defer stageEnd(StageStep, stageStart())
	c := m.Cfg
	H := c.Hidden
	N := 0
	nm, na := c.NumLayers(config.Mamba), c.NumLayers(config.Attention)
	for i, s := range batch {
		if len(s.Tokens) == 0 {
			return fmt.Errorf("%w: sequence %d has no tokens", ErrInput, i)
		}
		if s.State == nil {
			return fmt.Errorf("%w: sequence %d has no state", ErrInput, i)
		}
		if s.State.freed {
			return fmt.Errorf("%w: sequence %d's state was freed (State.Free)", ErrInput, i)
		}
		if len(s.State.Conv) != nm || len(s.State.SSM) != nm || len(s.State.KV) != na {
			return fmt.Errorf("%w: sequence %d's state has %d Mamba and %d attention layers, the model %d and %d", ErrInput, i, len(s.State.Conv), len(s.State.KV), nm, na)
		}
		for _, t := range s.Tokens {
			if t < 0 || t >= c.VocabSize {
				return fmt.Errorf("%w: token id %d out of range [0, %d)", ErrInput, t, c.VocabSize)
			}
		}
		N += len(s.Tokens)
	}
	if cap(sc.failed) < N {
		sc.failed, sc.failWhy = make([]bool, N), make([]string, N)
	}
	sc.failed, sc.failWhy = sc.failed[:N], sc.failWhy[:N]
	clear(sc.failed)
	clear(sc.failWhy)
	for i := range batch {
		batch[i].Err = nil
	}
	sc.h = grow(sc.h, N*H)
	sc.u = grow(sc.u, N*H)
	sc.f = grow(sc.f, N*H)
	sc.mix = grow(sc.mix, N*H)

	// Embeddings x multiplier.
	sc.toks = sc.toks[:0]
	for _, s := range batch {
		sc.toks = append(sc.toks, s.Tokens...)
	}
	parallelRows(N, H, func(_, r0, r1 int) {
		for r := r0; r < r1; r++ {
			row := sc.h[r*H : (r+1)*H]
			kernels.DequantizeMatrixRow(m.W.Embed, sc.toks[r], row)
			for j := range row {
				row[j] *= c.EmbeddingMultiplier
			}
		}
	})
	mi, ai := 0, 0
	for li := range m.W.Layers {
		lw := &m.W.Layers[li]
		rmsNormRows(sc.u, sc.h, lw.InputNorm, c.RMSNormEps, N, H)
		var err error
		t0 := stageStart()
		if lw.Type == config.Mamba {
			err = m.mamba(sc, batch, mi, lw.Mamba, N)
			mi++
			stageEnd(StageMamba, t0)
		} else {
			err = m.attention(sc, batch, ai, lw.Attn, N)
			ai++
			stageEnd(StageAttention, t0)
		}
		if err != nil {
			return fmt.Errorf("layer %d: %w", li, err)
		}
		axpyRows(c.ResidualMultiplier, sc.mix, sc.h, N, H)
		rmsNormRows(sc.u, sc.h, lw.PostNorm, c.RMSNormEps, N, H)
		t0 = stageStart()
		if err := m.ffn(experts, sc, bt, li, lw, N); err != nil {
			return fmt.Errorf("layer %d: %w", li, err)
		}
		stageEnd(StageMoE, t0)
		axpyRows(c.ResidualMultiplier, sc.f, sc.h, N, H)
	}
	for _, s := range batch {
		s.State.Pos += len(s.Tokens)
	}
	r := 0
	for i := range batch {
		for t := range batch[i].Tokens {
			if sc.failed[r+t] {
				batch[i].Err = fmt.Errorf("%w: token %d: %s", ErrSequence, t, sc.failWhy[r+t])
				batch[i].NoLogits, batch[i].AllLogits = true, false
				break
			}
		}
		r += len(batch[i].Tokens)
	}
	defer stageEnd(StageHead, stageStart())
	return m.head(sc, batch)
}

// failRows marks the rows of x that hold a non-finite value as failed and
// zeroes every failed row, so one corrupt sequence cannot reach the others
// through the router or the experts batched with them.
func failRows(sc *scratch, x []float32, H, layer int) {
	parallelRows(len(sc.failed), H/2, func(_, r0, r1 int) {
		for r := r0; r < r1; r++ {
			row := x[r*H : (r+1)*H]
			if !sc.failed[r] {
				for _, v := range row {
					if v != v || v > math.MaxFloat32 || v < -math.MaxFloat32 {
						sc.failed[r] = true
						sc.failWhy[r] = fmt.Sprintf("non-finite activation entering the feed-forward of layer %d", layer)
						break
					}
				}
			}
			if sc.failed[r] {
				clear(row)
			}
		}
	})
}

func axpy(a float32, x, y []float32) {
	for i, v := range x {
		y[i] += a * v
	}
}

// axpyRows is axpy over the first n rows of h values of x and y, the rows
// split across the compute threads.
func axpyRows(a float32, x, y []float32, n, h int) {
	parallelRows(n, h/2, func(_, r0, r1 int) { axpy(a, x[r0*h:r1*h], y[r0*h:r1*h]) })
}

// rmsNormRows writes the RMSNorm of each of the first n rows (h values) of
// x to dst, the rows split across the compute threads.
func rmsNormRows(dst, x, w []float32, eps float32, n, h int) {
	parallelRows(n, h/2, func(_, r0, r1 int) {
		for r := r0; r < r1; r++ {
			kernels.RMSNorm(dst[r*h:(r+1)*h], x[r*h:(r+1)*h], w, eps)
		}
	})
}

// head applies the final norm and LM head to the rows that need logits.
func (m *Model) head(sc *scratch, batch []Seq) error {
	c := m.Cfg
	H, V := c.Hidden, c.VocabSize
	// Collect the rows that need logits.
	var rows []int
	r := 0
	for _, s := range batch {
		switch {
		case s.NoLogits:
		case s.AllLogits:
			for t := range s.Tokens {
				rows = append(rows, r+t)
			}
		default:
			rows = append(rows, r+len(s.Tokens)-1)
		}
		r += len(s.Tokens)
	}
	if len(rows) == 0 {
		return nil
	}
	sc.u = grow(sc.u, len(rows)*H)
	for i, row := range rows {
		kernels.RMSNorm(sc.u[i*H:(i+1)*H], sc.h[row*H:(row+1)*H], m.W.FinalNorm, c.RMSNormEps)
	}
	sc.outRows = grow(sc.outRows, len(rows)*V)
	kernels.MatMul(sc.outRows, m.W.Output, sc.u[:len(rows)*H], len(rows))
	// Each row of logits goes to its sequence scaled by 1/LogitsScaling in
	// one vector pass (kernels.ScaleTo: the rounding of a loop of x *= inv),
	// the rows split across the threads. A scale in place then a copy, on
	// one thread, took 0.55-1.27 ms for 32 rows of a 100k vocabulary,
	// against 0.50 for ScaleTo on one (go test ./model/kernels -bench
	// ScaleTo); end to end it is within the noise.
	dst := sc.logitRows[:0]
	for bi := range batch {
		s := &batch[bi]
		if s.NoLogits {
			continue
		}
		n := 1
		if s.AllLogits {
			n = len(s.Tokens)
		}
		if cap(s.Logits) < n*V {
			s.Logits = make([]float32, n*V)
		}
		s.Logits = s.Logits[:n*V]
		for t := range n {
			dst = append(dst, s.Logits[t*V:(t+1)*V])
		}
	}
	sc.logitRows = dst
	inv := 1 / c.LogitsScaling
	parallelRows(len(dst), V/8, func(_, r0, r1 int) {
		for i := r0; i < r1; i++ {
			kernels.ScaleTo(dst[i], sc.outRows[i*V:(i+1)*V], inv)
		}
	})
	clear(sc.logitRows) // no references to the sequences' logits kept
	return nil
}

// mamba runs Mamba-2 layer mi (numbered among Mamba layers) over the batch: reads
// sc.u, writes sc.mix.
func (m *Model) mamba(sc *scratch, batch []Seq, mi int, w *MambaWeights, N int) error {
	c := m.Cfg
	din, cd, nh, P, ns, G, K := c.DInner(), c.ConvDim(), c.MambaHeads, c.MambaHeadDim, c.MambaDState, c.MambaGroups, c.MambaDConv
	ip := c.InProjDim()
	sc.proj = grow(sc.proj, N*ip)
	kernels.MatMul(sc.proj, w.InProj, sc.u[:N*c.Hidden], N)
	sc.y = grow(sc.y, N*din)
	r := 0
	for _, s := range batch {
		T := len(s.Tokens)
		st := s.State
		conv, ssm := st.Conv[mi], st.SSM[mi]
		// Causal depthwise conv over [state ‖ new xBC], then SiLU.
		ext := grow(sc.xbc, (K-1+T)*cd)
		sc.xbc = ext
		copy(ext, conv)
		ts := stageStart()
		parallelRows(T, cd/4, func(_, t0, t1 int) {
			for t := t0; t < t1; t++ {
				copy(ext[(K-1+t)*cd:(K+t)*cd], sc.proj[(r+t)*ip+din:(r+t)*ip+din+cd])
			}
		})
		sc.xbcAct = grow(sc.xbcAct, T*cd)
		xbc := sc.xbcAct // post-activation x|B|C
		// Tokens are independent given ext: split them across the threads,
		// each part with cd values of scratch.
		sc.convTmp = grow(sc.convTmp, rowParts(T, 2*K*cd)*cd)
		parallelRows(T, 2*K*cd, func(part, t0, t1 int) {
			causalConv(xbc[t0*cd:t1*cd], ext[t0*cd:], sc.convTmp[part*cd:(part+1)*cd], w, K)
		})
		copy(conv, ext[T*cd:(T+K-1)*cd])
		// dt = softplus(dt_raw + dt_bias), per token and head.
		sc.dt = grow(sc.dt, T*nh)
		dt := sc.dt
		parallelRows(T, 20*nh, func(_, t0, t1 int) {
			for t := t0; t < t1; t++ {
				raw := sc.proj[(r+t)*ip+din+cd : (r+t)*ip+din+cd+nh]
				for h := range nh {
					dt[t*nh+h] = kernels.Softplus(raw[h] + w.DtBias[h])
				}
			}
		})
		stageEnd(StageConv, ts)
		ts = stageStart()
		y := sc.y[r*din : (r+T)*din]
		chunked := T >= m.ScanChunkedMin && m.ScanChunkedMin > 0 && T > 1
		// Heads are independent: split them across the compute threads, at
		// decode too (a one-token scan of H-Tiny's 48 heads takes about 25 µs:
		// split over two threads, 4-8% more two-thread decode tokens/s on the
		// Q4_K_M file, measured in one process against one thread's scan).
		// About 16 state values are updated and read per ns on one thread.
		workers := min(kernels.Threads(), nh)
		for len(sc.chunks) < workers {
			sc.chunks = append(sc.chunks, chunkScratch{})
		}
		parallel(workers, T*nh*P*ns/16, func(wi int) {
			p := scanParams{T: T, H: nh, P: P, N: ns, G: G, convDim: cd, dInner: din, xbc: xbc, dt: dt, A: w.A, D: w.D, state: ssm, y: y,
				h0: wi * nh / workers, h1: (wi + 1) * nh / workers}
			if chunked {
				p.chunk = c.MambaChunkSize
				scanChunked(&p, &sc.chunks[wi])
			} else {
				scanRecurrent(&p, &sc.chunks[wi])
			}
		})
		stageEnd(StageScan, ts)
		ts = stageStart()
		// Gate with silu(z), then RMSNorm per group of d_inner/G channels.
		gs := din / G
		parallelRows(T, din, func(_, t0, t1 int) {
			for t := t0; t < t1; t++ {
				yt := y[t*din : (t+1)*din]
				z := sc.proj[(r+t)*ip : (r+t)*ip+din]
				kernels.SiLUMul(yt, z, yt)
				for g := range G {
					kernels.RMSNorm(yt[g*gs:(g+1)*gs], yt[g*gs:(g+1)*gs], w.Norm[g*gs:(g+1)*gs], c.RMSNormEps)
				}
			}
		})
		stageEnd(StageGate, ts)
		r += T
	}
	kernels.MatMul(sc.mix, w.OutProj, sc.y[:N*din], N)
	return nil
}

// rope rotates each head of v in place at position pos.
func rope(v []float32, heads, hd, pos int, theta float32, interleaved bool) {
	half := hd / 2
	for i := range half {
		freq := math.Pow(float64(theta), -2*float64(i)/float64(hd))
		ang := float64(pos) * float64(float32(freq))
		cs, sn := float32(math.Cos(ang)), float32(math.Sin(ang))
		for h := range heads {
			b := v[h*hd:]
			var a, bb *float32
			if interleaved {
				a, bb = &b[2*i], &b[2*i+1]
			} else {
				a, bb = &b[i], &b[i+half]
			}
			x0, x1 := *a, *bb
			*a = x0*cs - x1*sn
			*bb = x0*sn + x1*cs
		}
	}
}

// ffn runs the MoE (routed experts via the backend, shared expert locally,
// overlapped) or the dense MLP: reads sc.u, writes sc.f.
func (m *Model) ffn(experts ExpertBackend, sc *scratch, bt baton, li int, lw *LayerWeights, N int) error {
	c := m.Cfg
	H := c.Hidden
	x := sc.u[:N*H]
	failRows(sc, x, H, li)
	var pend Pending
	var req ExpertRequest
	if c.IsMoE() {
		E, k := c.Experts, c.ExpertsPerTok
		sc.router = grow(sc.router, N*E)
		kernels.MatMul(sc.router, lw.Router, x, N)
		if cap(sc.exps) < N*k {
			sc.exps = make([]int32, N*k)
		}
		sc.exps = sc.exps[:N*k]
		sc.wts = grow(sc.wts, N*k)
		parallelRows(N, 4*k*E, func(_, r0, r1 int) {
			for r := r0; r < r1; r++ {
				topK(sc.router[r*E:(r+1)*E], sc.exps[r*k:(r+1)*k], sc.wts[r*k:(r+1)*k])
			}
		})
		sc.moeOut = grow(sc.moeOut, N*H)
		req = ExpertRequest{Layer: li, Rows: N, Hidden: H, TopK: k, X: x, Experts: sc.exps, Weights: sc.wts, Out: sc.moeOut, Failed: sc.failed}
		if N <= sharedBesideMaxRows && !noSharedBeside.Load() {
			req.Beside = func() { m.sharedExpert(sc, lw, x, N, true) }
		}
		pend = experts.Begin(&req)
	}
	// Shared expert (the whole FFN of dense models), computed while experts
	// run, unless an in-process backend ran it beside them.
	if !req.BesideDone {
		m.sharedExpert(sc, lw, x, N, false)
	}
	if pend != nil {
		bt.release() // let the other micro-batch compute while the experts run
		err := pend.Wait()
		bt.acquire()
		if err != nil {
			return fmt.Errorf("experts: %w", err)
		}
		for r := range sc.failed {
			if sc.failed[r] && sc.failWhy[r] == "" {
				sc.failWhy[r] = fmt.Sprintf("its routed experts of layer %d could not be computed", li)
			}
		}
		parallelRows(N, H/4, func(_, r0, r1 int) {
			kernels.Add(sc.f[r0*H:r1*H], sc.f[r0*H:r1*H], sc.moeOut[r0*H:r1*H])
		})
	}
	return nil
}

// sharedExpert computes the shared expert (the whole FFN of dense models)
// of the N rows x into sc.f, its products split across the threads, or
// (serial) on the caller's alone, as a task beside the routed experts. The
// results are the same bits either way.
func (m *Model) sharedExpert(sc *scratch, lw *LayerWeights, x []float32, N int, serial bool) {
	mm := kernels.MatMul
	if serial {
		mm = kernels.MatMulSerial
	}
	sh := lw.Shared
	S := sh.Gate.Rows
	sc.sharedG = grow(sc.sharedG, N*S)
	sc.sharedU = grow(sc.sharedU, N*S)
	mm(sc.sharedG, sh.Gate, x, N)
	mm(sc.sharedU, sh.Up, x, N)
	if serial {
		kernels.SiLUMul(sc.sharedG[:N*S], sc.sharedG[:N*S], sc.sharedU[:N*S])
	} else {
		parallelRows(N, 2*S, func(_, r0, r1 int) {
			kernels.SiLUMul(sc.sharedG[r0*S:r1*S], sc.sharedG[r0*S:r1*S], sc.sharedU[r0*S:r1*S])
		})
	}
	mm(sc.f, sh.Down, sc.sharedG, N)
}

// sharedBesideMaxRows: steps of at most this many rows offer the shared
// expert to an in-process backend to run beside the routed experts
// (ExpertRequest.Beside): at decode sizes a product split across the
// threads reads its weights more slowly than whole products side by side.
// bench --ab shared, Q4_K_M, two threads: 1.03-1.06 at one session,
// 1.03-1.04 at 8 and 1.04-1.05 at 16; level at 32 (0.99, 1.01).
const sharedBesideMaxRows = 16

var noSharedBeside atomic.Bool

// SetSharedBeside turns on or off (on by default) the shared expert's
// running beside the routed experts of an in-process backend, and returns
// the previous setting: for measurements (bench --ab shared); the results
// are the same bits either way.
func SetSharedBeside(on bool) (prev bool) { return !noSharedBeside.Swap(!on) }

// topK picks the k largest router logits (ties: lower expert id first) and writes
// their softmax-normalised weights. k passes of a max search: no allocation on
// the hot path, and k is small (Granite: 6 or 10 of 64/72).
func topK(logits []float32, ids []int32, wts []float32) {
	k := len(ids)
	for j := range k {
		best := -1
		for e, v := range logits {
			taken := false
			for _, id := range ids[:j] {
				if int(id) == e {
					taken = true
					break
				}
			}
			if !taken && (best < 0 || v > logits[best]) {
				best = e
			}
		}
		ids[j] = int32(best)
	}
	mx := logits[ids[0]]
	var sum float32
	for j := range k {
		e := float32(math.Exp(float64(logits[ids[j]] - mx)))
		wts[j] = e
		sum += e
	}
	for j := range k {
		wts[j] /= sum
	}
}

// causalConv computes the depthwise causal conv and SiLU of T = len(out)/cd
// tokens: out[t][ch] = silu(b[ch] + Σ_k w[ch][k]·ext[t+k][ch]), ext holding
// the K−1 previous rows before the T new ones (cd = len(w.ConvB) channels),
// tap by tap as vector products over the channels, each product and sum
// rounded as a plain loop over channels and taps rounds them, in the same
// order: the same bits (TestCausalConvMatchesLoop). tmp holds cd values.
func causalConv(out, ext, tmp []float32, w *MambaWeights, K int) {
	cd := len(w.ConvB)
	wk := w.convByTap(K)
	for t := range len(out) / cd {
		o := out[t*cd : (t+1)*cd]
		copy(o, w.ConvB)
		for k := range K {
			kernels.Mul(tmp, wk[k*cd:(k+1)*cd], ext[(t+k)*cd:])
			kernels.Add(o, o, tmp)
		}
		kernels.SiLUMul(o, o, nil)
	}
}
