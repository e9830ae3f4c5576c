package moe

import (
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// PTX is kernels.cu compiled for sm_80 (runs on Ampere and Hopper: the driver
// JIT-compiles it at load). `make generate` rebuilds it; `make verify` checks it.
//
//go:embed kernels_sm80.ptx
var PTX []byte

// ErrBudget reports an expert that does not fit the GPU memory budget.
var ErrBudget = errors.New("moe: GPU memory budget exceeded")

// Config sizes an Experts store.
type Config struct {
	Layers, NumExperts   int // the model's layers and routed experts per layer
	Hidden, Intermediate int // H and the expert's I
	TopK                 int // routed experts per token
	// BudgetBytes is the device memory the store may use, experts and scratch
	// together.
	BudgetBytes uint64
	// ReserveRows is the rows one round may carry; scratch for them is reserved
	// out of the budget before experts are placed (the expert node's MaxBatchRows).
	ReserveRows int
	// SmallRows: experts with at most this many rows in a round use the grouped
	// GEMV, the others cuBLAS (default DefaultSmallRows; 0 sends every expert to cuBLAS).
	SmallRows int
}

// DefaultSmallRows is the default path threshold (see Config.SmallRows); the
// GPU check measures both paths at every size.
const DefaultSmallRows = 8

// Validate checks the sizes.
func (c Config) Validate() error {
	switch {
	case c.Layers <= 0 || c.NumExperts <= 0 || c.TopK <= 0:
		return fmt.Errorf("moe: config needs layers, experts and top-k > 0 (have %d, %d, %d)", c.Layers, c.NumExperts, c.TopK)
	case c.Hidden <= 0 || c.Intermediate <= 0 || c.Hidden%8 != 0 || c.Intermediate%8 != 0:
		return fmt.Errorf("moe: hidden %d and expert intermediate %d must be positive multiples of 8 for the GPU kernels", c.Hidden, c.Intermediate)
	case c.ReserveRows <= 0:
		return fmt.Errorf("moe: ReserveRows is %d, want > 0", c.ReserveRows)
	case c.SmallRows < 0:
		return fmt.Errorf("moe: SmallRows is %d, want >= 0", c.SmallRows)
	}
	return nil
}

// ExpertBytes is the device size of one expert (bf16 gate, up and down).
func (c Config) ExpertBytes() uint64 { return uint64(3*c.Hidden*c.Intermediate) * 2 }

// scratchBytes is the device scratch a round of rows needs (see kernels.cu's
// layouts), the cuBLAS experts' bucket padding (at most a quarter) included.
func (c Config) scratchBytes(rows int) uint64 {
	P := uint64(rows * c.TopK)
	Pp := P + P/4 // pair rows with padding
	H, I := uint64(c.Hidden), uint64(c.Intermediate)
	return Pp*(2*H+8*I+2*I+4*H) + P*4*I + uint64(rows)*(8*H) + metaBytes(c, rows)
}

// metaBytes bounds the per-round metadata: inputs, routing, pair rows and tasks.
func metaBytes(c Config, rows int) uint64 {
	P := uint64(rows * c.TopK)
	maxChunks := uint64(c.NumExperts * ((max(c.SmallRows, 1) + MaxGroupRows - 1) / MaxGroupRows))
	tasks := maxChunks * uint64((2*c.Intermediate+c.Hidden)/gemvRowsPerBlock+2) * 8 * taskWords
	return (P+P/4)*12 + tasks + uint64(c.NumExperts)*48 + 7*256
}

// Slots is how many experts fit the budget after the reserved scratch.
func (c Config) Slots() int {
	res := c.scratchBytes(c.ReserveRows)
	if c.BudgetBytes <= res {
		return 0
	}
	return int((c.BudgetBytes - res) / c.ExpertBytes())
}

type devExpert struct {
	ptr  cuda.DevPtr
	refs int
}

// Timing is where a round's time went, measured with CUDA events.
type Timing struct {
	Upload, Kernels, Download time.Duration // host-to-device copy, compute, device-to-host copy
	Pairs, Experts            int           // active (row, expert) pairs and distinct experts
	SmallExperts              int           // experts on the grouped-GEMV path
	Batched                   bool          // the cuBLAS experts ran as batched GEMMs per bucket (else one GEMM each, from the lanes)
	WeightBytes               int64         // expert weight bytes the kernels read (each expert once per GEMV chunk)
	FLOPs                     int64         // 2 * multiply-adds of the three projections
}

// Experts holds experts in GPU memory and computes rounds on them. Acquire and
// Release may run concurrently with Compute; Compute calls are serialised.
type Experts struct {
	dev *cuda.Device
	cfg Config

	mu       sync.Mutex
	resident map[[2]int]*devExpert // guarded by mu
	used     uint64                // guarded by mu: bytes of resident experts

	cmu      sync.Mutex // serialises Compute; guards everything below
	stream   *cuda.Stream
	mod      *cuda.Module
	k        struct{ gather, gemv, silu, combine *cuda.Func }
	ev       [4]*cuda.Event
	gathered *cuda.Event // the cuBLAS path's inputs are ready (main stream)
	lanes    []*lane
	// blasMain issues batched GEMMs on the main stream; noBatched is set once
	// the installed cuBLAS refuses them (then the lanes issue one GEMM per expert).
	blasMain   *cuda.BLAS
	noBatched  bool
	batchedErr error         // why batched GEMMs are off, when the library refused them
	lanesUsed  int           // lanes with work in the current round
	buf        roundBuffers  // device scratch, grown to the high-water mark
	r          roundLayout   // the current round's sizes and metadata offsets
	pinX       *cuda.HostBuf // the round's input rows
	pinMeta    *cuda.HostBuf // routing and tasks
	pinOut     *cuda.HostBuf // the round's output rows
	plan       plan
	closed     bool
}

// lane issues a share of the cuBLAS-path experts on its own stream and handle,
// from its own goroutine, where batched GEMMs are unavailable: one GEMM costs
// the host microseconds to issue, so a prefill round of many experts is issued
// in parallel and its GEMMs overlap.
type lane struct {
	s    *cuda.Stream
	blas *cuda.BLAS
	done *cuda.Event
}

// blasLanes is the number of lanes.
const blasLanes = 4

type devBuf struct {
	p   cuda.DevPtr
	cap int
}

// roundBuffers are the device buffers of a round (layouts in kernels.cu).
type roundBuffers struct {
	x, meta, xb, gu, a, ab, y, out devBuf
}

func (b *roundBuffers) all() []*devBuf {
	return []*devBuf{&b.x, &b.meta, &b.xb, &b.gu, &b.a, &b.ab, &b.y, &b.out}
}

// roundLayout is what the kernels of the current round need besides the plan:
// its sizes and the byte offsets of the metadata block (w | pos | pairRow |
// upTasks | downTasks | batched-GEMM pointer arrays).
type roundLayout struct {
	rows, topK                                           int
	offW, offPos, offRow, offUp, offDown, offPtrs, total int
}

// New loads the kernels on dev and makes an empty store.
func New(dev *cuda.Device, cfg Config) (*Experts, error) {
	if cfg.SmallRows == 0 {
		cfg.SmallRows = DefaultSmallRows
	} else if cfg.SmallRows < 0 {
		cfg.SmallRows = 0
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if res := cfg.scratchBytes(cfg.ReserveRows); cfg.BudgetBytes < res+cfg.ExpertBytes() {
		return nil, fmt.Errorf("%w: budget %s does not hold the %s of scratch for %d rows plus one %s expert",
			ErrBudget, mib(cfg.BudgetBytes), mib(res), cfg.ReserveRows, mib(cfg.ExpertBytes()))
	}
	x := &Experts{dev: dev, cfg: cfg, resident: map[[2]int]*devExpert{}}
	var err error
	if x.mod, err = dev.LoadModule(PTX); err != nil {
		return nil, fmt.Errorf("moe: load kernels: %w", err)
	}
	for _, f := range []struct {
		dst  **cuda.Func
		name string
	}{{&x.k.gather, "gather_bf16"}, {&x.k.gemv, "grouped_gemv"}, {&x.k.silu, "silu_mul_rows"}, {&x.k.combine, "combine_rows"}} {
		if *f.dst, err = x.mod.Func(f.name); err != nil {
			x.mod.Unload()
			return nil, err
		}
	}
	if x.stream, err = dev.NewStream(); err != nil {
		x.mod.Unload()
		return nil, err
	}
	fail := func(err error) (*Experts, error) {
		x.Close()
		return nil, err
	}
	for i := range x.ev {
		if x.ev[i], err = dev.NewEvent(); err != nil {
			return fail(err)
		}
	}
	if x.gathered, err = dev.NewEvent(); err != nil {
		return fail(err)
	}
	if x.blasMain, err = dev.NewBLAS(x.stream); err != nil {
		return fail(err)
	}
	for range blasLanes {
		l := &lane{}
		x.lanes = append(x.lanes, l)
		if l.s, err = dev.NewStream(); err != nil {
			return fail(err)
		}
		if l.blas, err = dev.NewBLAS(l.s); err != nil {
			return fail(err)
		}
		if l.done, err = dev.NewEvent(); err != nil {
			return fail(err)
		}
	}
	return x, nil
}

// SetSmallRows changes the path threshold (Config.SmallRows; negative: cuBLAS
// for every expert) for the following rounds.
func (x *Experts) SetSmallRows(n int) {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	x.cfg.SmallRows = max(n, 0)
}

// BatchedErr returns why batched GEMMs are off (nil while they are used or untried).
func (x *Experts) BatchedErr() error {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	return x.batchedErr
}

// Replay queues the last round's kernels n times back to back (no copies, no
// host work in between) and returns the GPU time per round: what a round
// costs the GPU once launch gaps are hidden, as CUDA graphs would hide them.
// For benchmarks; the outputs are recomputed from the same inputs.
func (x *Experts) Replay(n int) (time.Duration, error) {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	if x.r.rows == 0 || n <= 0 {
		return 0, errors.New("moe: nothing to replay")
	}
	if err := x.ev[0].Record(x.stream); err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		if _, err := x.kernels(); err != nil {
			return 0, err
		}
	}
	if err := x.ev[1].Record(x.stream); err != nil {
		return 0, err
	}
	if err := x.ev[1].Sync(); err != nil {
		return 0, err
	}
	ms, err := cuda.Elapsed(x.ev[0], x.ev[1])
	if err != nil {
		return 0, err
	}
	return time.Duration(float64(ms) * float64(time.Millisecond) / float64(n)), nil
}

// SetBatched turns batched GEMMs for the cuBLAS experts on (the default) or
// off (one GEMM per expert, issued from the lanes).
func (x *Experts) SetBatched(on bool) {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	x.noBatched = !on
}

// Config returns the store's configuration (with defaults applied).
func (x *Experts) Config() Config { return x.cfg }

// Memory returns the device bytes held by experts and by scratch, and the budget.
func (x *Experts) Memory() (experts, scratch, budget uint64) {
	x.mu.Lock()
	experts = x.used
	x.mu.Unlock()
	x.cmu.Lock()
	for _, b := range x.buf.all() {
		scratch += uint64(b.cap)
	}
	x.cmu.Unlock()
	return experts, scratch, x.cfg.BudgetBytes
}

// Resident returns the number of experts in device memory.
func (x *Experts) Resident() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.resident)
}

// Acquire makes expert (layer, e) resident, uploading w as bf16 unless it is
// already there, and takes a reference to it.
func (x *Experts) Acquire(layer, e int, w hybrid.ExpertWeights) error {
	key := [2]int{layer, e}
	x.mu.Lock()
	if d := x.resident[key]; d != nil {
		d.refs++
		x.mu.Unlock()
		return nil
	}
	need := x.cfg.ExpertBytes()
	reserve := x.cfg.scratchBytes(x.cfg.ReserveRows)
	if x.used+need+reserve > x.cfg.BudgetBytes {
		x.mu.Unlock()
		return fmt.Errorf("%w: expert %d of layer %d needs %s; %d experts (%s) and %s of reserved scratch already use the budget of %s (slots: %d)",
			ErrBudget, e, layer, mib(need), len(x.resident), mib(x.used), mib(reserve), mib(x.cfg.BudgetBytes), x.cfg.Slots())
	}
	x.used += need // claimed while uploading without the lock
	x.mu.Unlock()
	p, err := x.upload(layer, e, w)
	x.mu.Lock()
	defer x.mu.Unlock()
	if err != nil {
		x.used -= need
		return err
	}
	if d := x.resident[key]; d != nil { // a concurrent Acquire won
		x.used -= need
		d.refs++
		return x.dev.Free(p)
	}
	x.resident[key] = &devExpert{ptr: p, refs: 1}
	return nil
}

// upload converts w to bf16 [gate; up; down] and copies it to a new allocation.
func (x *Experts) upload(layer, e int, w hybrid.ExpertWeights) (cuda.DevPtr, error) {
	H, I := x.cfg.Hidden, x.cfg.Intermediate
	for _, m := range []struct {
		name       string
		mat        tensor.Matrix
		rows, cols int
	}{{"gate", w.Gate, I, H}, {"up", w.Up, I, H}, {"down", w.Down, H, I}} {
		if m.mat.Data == nil {
			return 0, fmt.Errorf("moe: layer %d expert %d has no %s weights loaded", layer, e, m.name)
		}
		if m.mat.Rows != m.rows || m.mat.Cols != m.cols {
			return 0, fmt.Errorf("moe: layer %d expert %d %s is [%d %d], want [%d %d]", layer, e, m.name, m.mat.Rows, m.mat.Cols, m.rows, m.cols)
		}
	}
	for _, m := range []tensor.Matrix{w.Gate, w.Up, w.Down} {
		if m.Layout != tensor.RowMajor {
			// GPU expert nodes read the file's map; a packed matrix (a CPU
			// node's copy) is not theirs to upload.
			return 0, fmt.Errorf("moe: layer %d expert %d: weights in the %v layout, want row-major (load them mapped)", layer, e, m.Layout)
		}
	}
	host := make([]byte, x.cfg.ExpertBytes())
	off := 0
	row := make([]float32, max(H, I))
	for _, m := range []tensor.Matrix{w.Gate, w.Up, w.Down} {
		for r := 0; r < m.Rows; r++ {
			src := m.Row(r)
			if m.DType == tensor.BF16 {
				off += copy(host[off:], src[:2*m.Cols])
				continue
			}
			v := row[:m.Cols]
			tensor.DequantizeRow(m.DType, src, v)
			for _, f := range v {
				b := bf16(f)
				host[off], host[off+1] = byte(b), byte(b>>8)
				off += 2
			}
		}
	}
	p, err := x.dev.Alloc(len(host))
	if err != nil {
		return 0, fmt.Errorf("moe: layer %d expert %d: %w", layer, e, err)
	}
	if err := x.dev.CopyToDevice(p, host); err != nil {
		x.dev.Free(p)
		return 0, fmt.Errorf("moe: upload layer %d expert %d: %w", layer, e, err)
	}
	return p, nil
}

// Release drops a reference taken by Acquire; the last one frees the expert.
func (x *Experts) Release(layer, e int) error {
	key := [2]int{layer, e}
	x.mu.Lock()
	d := x.resident[key]
	if d == nil {
		x.mu.Unlock()
		return fmt.Errorf("moe: release of expert %d of layer %d, which is not resident", e, layer)
	}
	if d.refs--; d.refs > 0 {
		x.mu.Unlock()
		return nil
	}
	delete(x.resident, key)
	x.used -= x.cfg.ExpertBytes()
	x.mu.Unlock()
	return x.dev.Free(d.ptr)
}

func (x *Experts) lookup(layer int) lookup {
	I, H := x.cfg.Intermediate, x.cfg.Hidden
	return func(e int) (expertPtrs, bool) {
		d := x.resident[[2]int{layer, e}]
		if d == nil {
			return expertPtrs{}, false
		}
		return expertPtrs{gateUp: d.ptr, down: d.ptr.Add(2 * 2 * I * H)}, true
	}
}

// ensure grows device buffer b to at least n bytes (its contents are not kept).
func (x *Experts) ensure(b *devBuf, n int) error {
	n = max(n, 256)
	if b.cap >= n {
		return nil
	}
	if b.p != 0 {
		if err := x.dev.Free(b.p); err != nil {
			return err
		}
		*b = devBuf{}
	}
	size := n + n/4
	p, err := x.dev.Alloc(size)
	if err != nil {
		return fmt.Errorf("moe: round scratch: %w", err)
	}
	*b = devBuf{p: p, cap: size}
	return nil
}

func ensureHost(d *cuda.Device, h **cuda.HostBuf, n int) error {
	if *h != nil && len((*h).Bytes) >= n {
		return nil
	}
	if *h != nil {
		(*h).Free()
		*h = nil
	}
	b, err := d.AllocHost(max(n+n/4, 4096))
	if err != nil {
		return err
	}
	*h = b
	return nil
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func align(n int) int { return (n + 255) &^ 255 }

// Buffers returns page-locked input and output rows for a round of rows: a
// caller that decodes its input into in and passes in and out as the request's
// X and Out saves a copy each way. They stay valid until the next Buffers or
// Compute call with more rows.
func (x *Experts) Buffers(rows int) (in, out []float32, err error) {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	n := rows * x.cfg.Hidden
	if err := ensureHost(x.dev, &x.pinX, 4*n); err != nil {
		return nil, nil, err
	}
	if err := ensureHost(x.dev, &x.pinOut, 4*n); err != nil {
		return nil, nil, err
	}
	return x.pinX.Float32s()[:n], x.pinOut.Float32s()[:n], nil
}

// same reports whether a and b start at the same address.
func same(a, b []float32) bool { return len(a) > 0 && len(b) > 0 && &a[0] == &b[0] }

// Compute evaluates req on the GPU (hybrid.ExpertRequest semantics: Out is
// overwritten with the weighted sum of the row's experts). The main stream
// copies the inputs, runs the grouped GEMVs of the small experts and the
// combine; the lanes run the cuBLAS experts meanwhile.
func (x *Experts) Compute(req *hybrid.ExpertRequest) (Timing, error) {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	var t Timing
	if x.closed {
		return t, errors.New("moe: compute on a closed store")
	}
	c := x.cfg
	R, K, H, I := req.Rows, req.TopK, req.Hidden, c.Intermediate
	switch {
	case req.Layer < 0 || req.Layer >= c.Layers:
		return t, fmt.Errorf("moe: expert request for layer %d of %d", req.Layer, c.Layers)
	case H != c.Hidden:
		return t, fmt.Errorf("moe: layer %d: request rows are %d wide, the model's hidden size is %d", req.Layer, H, c.Hidden)
	case R < 0 || K <= 0:
		return t, fmt.Errorf("moe: layer %d: %d rows x top-%d", req.Layer, R, K)
	case len(req.X) < R*H || len(req.Out) < R*H:
		return t, fmt.Errorf("moe: expert request for layer %d has short buffers", req.Layer)
	}
	if R == 0 {
		return t, nil
	}
	x.mu.Lock()
	err := makePlan(&x.plan, req.Layer, R, K, H, I, req.Experts, req.Weights, c.NumExperts, x.lookup(req.Layer), c.SmallRows)
	x.mu.Unlock()
	if err != nil {
		return t, err
	}
	p := &x.plan
	P, S := p.pairs, p.small
	t.Pairs, t.Experts, t.SmallExperts = p.active, p.experts, p.smallExperts
	upPerChunk := max(1, (2*I+gemvRowsPerBlock-1)/gemvRowsPerBlock)
	t.WeightBytes = int64(len(p.upTasks)/taskWords/upPerChunk+len(p.big)) * int64(c.ExpertBytes())
	t.FLOPs = int64(p.active) * 2 * 3 * int64(H) * int64(I)

	// Host side: the input rows, unless the caller wrote them into Buffers.
	inAliased := x.pinX != nil && same(req.X, x.pinX.Float32s())
	if !inAliased {
		if err := ensureHost(x.dev, &x.pinX, 4*R*H); err != nil {
			return t, err
		}
		copy(x.pinX.Float32s(), req.X[:R*H])
	}
	outAliased := x.pinOut != nil && same(req.Out, x.pinOut.Float32s())
	if !outAliased {
		if err := ensureHost(x.dev, &x.pinOut, 4*R*H); err != nil {
			return t, err
		}
	}
	// Device buffers, then the metadata block.
	nb := len(p.big)
	l := &x.r
	l.rows, l.topK = R, K
	l.offW = 0
	l.offPos = align(l.offW + 4*R*K)
	l.offRow = align(l.offPos + 4*R*K)
	l.offUp = align(l.offRow + 4*P)
	l.offDown = align(l.offUp + 8*len(p.upTasks))
	l.offPtrs = align(l.offDown + 8*len(p.downTasks))
	l.total = align(l.offPtrs + 8*6*nb)
	bf := &x.buf
	for _, need := range []struct {
		b *devBuf
		n int
	}{{&bf.x, 4 * R * H}, {&bf.meta, l.total}, {&bf.xb, 2 * (P - S) * H}, {&bf.gu, 4 * P * 2 * I},
		{&bf.a, 4 * S * I}, {&bf.ab, 2 * (P - S) * I}, {&bf.y, 4 * P * H}, {&bf.out, 4 * R * H}} {
		if err := x.ensure(need.b, need.n); err != nil {
			return t, err
		}
	}
	if err := ensureHost(x.dev, &x.pinMeta, l.total); err != nil {
		return t, err
	}
	m := x.pinMeta
	copy(m.Float32s()[l.offW/4:], req.Weights[:R*K])
	copy(m.Int32s()[l.offPos/4:], p.pos[:R*K])
	copy(m.Int32s()[l.offRow/4:], p.pairRow[:P])
	copy(m.Uint64s()[l.offUp/8:], p.upTasks)
	copy(m.Uint64s()[l.offDown/8:], p.downTasks)
	// Batched-GEMM pointer arrays, per bucket (experts first..first+c):
	// gate|up weights, inputs, outputs, then down weights, inputs, outputs.
	gp := m.Uint64s()[l.offPtrs/8 : l.offPtrs/8+6*nb]
	for _, b := range p.buckets {
		c, q := b.count, gp[6*b.first:]
		for j, g := range p.big[b.first : b.first+c] {
			q[j], q[c+j], q[2*c+j] = uint64(g.expert.gateUp), uint64(bf.xb.p.Add(2*(g.p0-S)*H)), uint64(bf.gu.p.Add(4*g.p0*2*I))
			q[3*c+j], q[4*c+j], q[5*c+j] = uint64(g.expert.down), uint64(bf.ab.p.Add(2*(g.p0-S)*I)), uint64(bf.y.p.Add(4*g.p0*H))
		}
	}

	s := x.stream
	err = x.ev[0].Record(s)
	if err == nil {
		err = s.CopyToDevice(bf.x.p, x.pinX, 0, 4*R*H)
	}
	if err == nil {
		err = s.CopyToDevice(bf.meta.p, m, 0, l.total)
	}
	if err == nil {
		err = x.ev[1].Record(s)
	}
	if err == nil {
		t.Batched, err = x.kernels()
	}
	if err == nil {
		err = x.ev[2].Record(s)
	}
	if err == nil {
		err = s.CopyFromDevice(x.pinOut, 0, bf.out.p, 4*R*H)
	}
	if err == nil {
		err = x.ev[3].Record(s)
	}
	if err == nil {
		err = x.ev[3].Sync()
	}
	if err != nil {
		s.Sync() // leave nothing in flight that reads the pinned buffers
		for _, ln := range x.lanes {
			ln.s.Sync()
		}
		return t, fmt.Errorf("moe: layer %d: %w", req.Layer, err)
	}
	if !outAliased {
		copy(req.Out[:R*H], x.pinOut.Float32s()[:R*H])
	}
	ms := func(a, b int) time.Duration {
		v, err := cuda.Elapsed(x.ev[a], x.ev[b])
		if err != nil {
			return 0
		}
		return time.Duration(float64(v) * float64(time.Millisecond))
	}
	t.Upload, t.Kernels, t.Download = ms(0, 1), ms(1, 2), ms(2, 3)
	return t, nil
}

// kernels queues the current round's computation on the main stream (and the
// lanes): the cuBLAS experts (gathered to bf16, then batched GEMMs or the
// lanes), the grouped GEMVs and SiLU product of the small experts, and the
// combine. It reports whether the cuBLAS experts ran as batched GEMMs.
func (x *Experts) kernels() (batched bool, err error) {
	p, l, bf, s := &x.plan, &x.r, &x.buf, x.stream
	P, S, H, I, R := p.pairs, p.small, p.hidden, p.inter, l.rows
	meta := bf.meta.p
	x.lanesUsed = 0
	if len(p.big) > 0 {
		if err := s.Launch(x.k.gather, [3]uint32{uint32(min(P-S, 1<<20)), 1, 1}, [3]uint32{128, 1, 1}, 0,
			bf.x.p, meta.Add(l.offRow), S, P, H, bf.xb.p); err != nil {
			return false, err
		}
		if !x.noBatched {
			err := x.batched(meta.Add(l.offPtrs))
			switch {
			case err == nil:
				batched = true
			case !errors.Is(err, cuda.ErrNotSupported):
				return false, err
			default:
				x.noBatched, x.batchedErr = true, err // this cuBLAS refuses batched bf16 GEMMs: one GEMM per expert from now on
			}
		}
		if !batched {
			if err := x.gathered.Record(s); err != nil {
				return false, err
			}
			x.lanesUsed = min(len(x.lanes), len(p.big))
			if err := x.runLanes(); err != nil {
				return false, err
			}
		}
	}
	gemv := func(off, ntasks int, in, pairRow, out cuda.DevPtr, K, N int) error {
		return s.Launch(x.k.gemv, [3]uint32{uint32(ntasks), 1, 1}, [3]uint32{gemvThreads, 1, 1}, 0, meta.Add(off), in, pairRow, out, K, N)
	}
	if err := gemv(l.offUp, len(p.upTasks)/taskWords, bf.x.p, meta.Add(l.offRow), bf.gu.p, H, 2*I); err != nil {
		return batched, err
	}
	if err := s.Launch(x.k.silu, [3]uint32{uint32(min((S*I+255)/256, 1<<16)), 1, 1}, [3]uint32{256, 1, 1}, 0,
		bf.gu.p, 0, S, S, I, bf.a.p, bf.ab.p); err != nil {
		return batched, err
	}
	if err := gemv(l.offDown, len(p.downTasks)/taskWords, bf.a.p, 0, bf.y.p, I, H); err != nil {
		return batched, err
	}
	for _, ln := range x.lanes[:x.lanesUsed] {
		if err := s.WaitEvent(ln.done); err != nil {
			return batched, err
		}
	}
	return batched, s.Launch(x.k.combine, [3]uint32{uint32(min(R, 1<<20)), 1, 1}, [3]uint32{128, 1, 1}, 0,
		bf.y.p, meta.Add(l.offPos), meta.Add(l.offW), R, l.topK, H, bf.out.p)
}

// batched runs the cuBLAS-path experts on the main stream: per bucket, one
// batched GEMM for every expert's gate|up and one for every expert's down
// (rows padded to the bucket's), around the bf16 SiLU product; ptrs holds the
// pointer arrays.
func (x *Experts) batched(ptrs cuda.DevPtr) error {
	p, bf := &x.plan, &x.buf
	H, I, S := p.hidden, p.inter, p.small
	for _, b := range p.buckets {
		if err := x.blasMain.BatchedRowMajor(b.rows, 2*I, H, cuda.R16BF, H, cuda.R16BF, H, cuda.R32F, 2*I, b.count,
			ptrs.Add(8*6*b.first)); err != nil {
			return err
		}
	}
	if err := x.stream.Launch(x.k.silu, [3]uint32{uint32(min(((p.pairs-S)*I+255)/256, 1<<16)), 1, 1}, [3]uint32{256, 1, 1}, 0,
		bf.gu.p, S, S, p.pairs, I, bf.a.p, bf.ab.p); err != nil {
		return err
	}
	for _, b := range p.buckets {
		if err := x.blasMain.BatchedRowMajor(b.rows, H, I, cuda.R16BF, I, cuda.R16BF, I, cuda.R32F, H, b.count,
			ptrs.Add(8*(6*b.first+3*b.count))); err != nil {
			return err
		}
	}
	return nil
}

// runLanes splits the cuBLAS-path experts into contiguous shares, one per
// lane, and issues each share from its own goroutine: gate|up GEMMs, the bf16
// SiLU product, down GEMMs, then the lane's done event.
func (x *Experts) runLanes() error {
	p, bf := &x.plan, &x.buf
	H, I, S := p.hidden, p.inter, p.small
	n := x.lanesUsed
	errs := make([]error, n)
	var wg sync.WaitGroup
	for li := 0; li < n; li++ {
		share := p.big[li*len(p.big)/n : (li+1)*len(p.big)/n]
		l := x.lanes[li]
		wg.Go(func() {
			errs[li] = func() error {
				if err := l.s.WaitEvent(x.gathered); err != nil {
					return err
				}
				for _, g := range share {
					if err := l.blas.GemmRowMajor(g.m, 2*I, H, 1, bf.xb.p.Add(2*(g.p0-S)*H), cuda.R16BF, H,
						g.expert.gateUp, cuda.R16BF, H, 0, bf.gu.p.Add(4*g.p0*2*I), cuda.R32F, 2*I); err != nil {
						return err
					}
				}
				pa, pb := share[0].p0, share[len(share)-1].p0+share[len(share)-1].m
				if err := l.s.Launch(x.k.silu, [3]uint32{uint32(min(((pb-pa)*I+255)/256, 1<<16)), 1, 1}, [3]uint32{256, 1, 1}, 0,
					bf.gu.p, pa, S, pb, I, bf.a.p, bf.ab.p); err != nil {
					return err
				}
				for _, g := range share {
					if err := l.blas.GemmRowMajor(g.m, H, I, 1, bf.ab.p.Add(2*(g.p0-S)*I), cuda.R16BF, I,
						g.expert.down, cuda.R16BF, I, 0, bf.y.p.Add(4*g.p0*H), cuda.R32F, H); err != nil {
						return err
					}
				}
				return l.done.Record(l.s)
			}()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close frees the scratch, the kernels and every resident expert.
func (x *Experts) Close() error {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	if x.closed {
		return nil
	}
	x.closed = true
	var errs []error
	if x.stream != nil {
		errs = append(errs, x.stream.Sync())
	}
	for _, l := range x.lanes {
		if l.s != nil {
			errs = append(errs, l.s.Sync())
		}
		if l.blas != nil {
			errs = append(errs, l.blas.Destroy())
		}
		if l.done != nil {
			errs = append(errs, l.done.Destroy())
		}
		if l.s != nil {
			errs = append(errs, l.s.Destroy())
		}
	}
	for _, b := range x.buf.all() {
		if b.p != 0 {
			errs = append(errs, x.dev.Free(b.p))
		}
		*b = devBuf{}
	}
	errs = append(errs, x.pinX.Free(), x.pinMeta.Free(), x.pinOut.Free())
	for _, e := range append(x.ev[:], x.gathered) {
		if e != nil {
			errs = append(errs, e.Destroy())
		}
	}
	if x.blasMain != nil {
		errs = append(errs, x.blasMain.Destroy())
	}
	if x.stream != nil {
		errs = append(errs, x.stream.Destroy())
	}
	if x.mod != nil {
		errs = append(errs, x.mod.Unload())
	}
	x.mu.Lock()
	for k, d := range x.resident {
		errs = append(errs, x.dev.Free(d.ptr))
		delete(x.resident, k)
	}
	x.used = 0
	x.mu.Unlock()
	return errors.Join(errs...)
}
