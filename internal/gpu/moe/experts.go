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
const DefaultSmallRows = 32

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

// scratchBytes is the device scratch a round of rows needs (see kernels.cu's layouts).
func (c Config) scratchBytes(rows int) uint64 {
	P := uint64(rows * c.TopK)
	H, I := uint64(c.Hidden), uint64(c.Intermediate)
	return P*(4*H+2*H+8*I+4*I+2*I+4*H) + uint64(rows)*(8*H) + metaBytes(c, rows)
}

// metaBytes bounds the per-round metadata: inputs, routing, pair rows and tasks.
func metaBytes(c Config, rows int) uint64 {
	P := uint64(rows * c.TopK)
	maxChunks := uint64(c.NumExperts * ((max(c.SmallRows, 1) + MaxGroupRows - 1) / MaxGroupRows))
	tasks := maxChunks * uint64((2*c.Intermediate+c.Hidden)/gemvRowsPerBlock+2) * 8 * taskWords
	return uint64(rows)*uint64(4*c.Hidden) + P*12 + tasks + 6*256
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

	cmu     sync.Mutex // serialises Compute; guards everything below
	stream  *cuda.Stream
	blas    *cuda.BLAS
	mod     *cuda.Module
	k       struct{ gather, gemv, silu, combine *cuda.Func }
	ev      [4]*cuda.Event
	scratch map[string]*devBuf
	pinIn   *cuda.HostBuf
	pinOut  *cuda.HostBuf
	plan    plan
	closed  bool
}

type devBuf struct {
	p   cuda.DevPtr
	cap int
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
	x := &Experts{dev: dev, cfg: cfg, resident: map[[2]int]*devExpert{}, scratch: map[string]*devBuf{}}
	var err error
	if x.mod, err = dev.LoadModule(PTX); err != nil {
		return nil, fmt.Errorf("moe: load kernels: %w", err)
	}
	for _, f := range []struct {
		dst  **cuda.Func
		name string
	}{{&x.k.gather, "gather_rows"}, {&x.k.gemv, "grouped_gemv"}, {&x.k.silu, "silu_mul_rows"}, {&x.k.combine, "combine_rows"}} {
		if *f.dst, err = x.mod.Func(f.name); err != nil {
			x.mod.Unload()
			return nil, err
		}
	}
	if x.stream, err = dev.NewStream(); err != nil {
		x.mod.Unload()
		return nil, err
	}
	if x.blas, err = dev.NewBLAS(x.stream); err != nil {
		x.stream.Destroy()
		x.mod.Unload()
		return nil, err
	}
	for i := range x.ev {
		if x.ev[i], err = dev.NewEvent(); err != nil {
			x.Close()
			return nil, err
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

// Config returns the store's configuration (with defaults applied).
func (x *Experts) Config() Config { return x.cfg }

// Device returns the GPU.
func (x *Experts) Device() *cuda.Device { return x.dev }

// Memory returns the device bytes held by experts and by scratch, and the budget.
func (x *Experts) Memory() (experts, scratch, budget uint64) {
	x.mu.Lock()
	experts = x.used
	x.mu.Unlock()
	x.cmu.Lock()
	for _, b := range x.scratch {
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

// ensure returns device scratch buffer name with at least n bytes.
func (x *Experts) ensure(name string, n int) (cuda.DevPtr, error) {
	n = max(n, 256)
	b := x.scratch[name]
	if b != nil && b.cap >= n {
		return b.p, nil
	}
	if b != nil {
		if err := x.dev.Free(b.p); err != nil {
			return 0, err
		}
		delete(x.scratch, name)
	}
	size := n + n/4
	p, err := x.dev.Alloc(size)
	if err != nil {
		return 0, fmt.Errorf("moe: scratch %s: %w", name, err)
	}
	x.scratch[name] = &devBuf{p: p, cap: size}
	return p, nil
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

// Compute evaluates req on the GPU (hybrid.ExpertRequest semantics: Out is
// overwritten with the weighted sum of the row's experts).
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
	P := p.pairs
	t.Pairs, t.Experts, t.SmallExperts = P, p.experts, p.smallExperts
	smallChunks := len(p.downTasks) / taskWords / max(1, (H+gemvRowsPerBlock-1)/gemvRowsPerBlock)
	t.WeightBytes = int64(smallChunks)*int64(c.ExpertBytes()) + int64(len(p.big))*int64(c.ExpertBytes())
	t.FLOPs = int64(P) * 2 * 3 * int64(H) * int64(I)

	// Host metadata, one copy: X | w | pos | pairRow | upTasks | downTasks.
	offX := 0
	offW := align(offX + 4*R*H)
	offPos := align(offW + 4*R*K)
	offRow := align(offPos + 4*R*K)
	offUp := align(offRow + 4*P)
	offDown := align(offUp + 8*len(p.upTasks))
	total := align(offDown + 8*len(p.downTasks))
	if err := ensureHost(x.dev, &x.pinIn, total); err != nil {
		return t, err
	}
	if err := ensureHost(x.dev, &x.pinOut, 4*R*H); err != nil {
		return t, err
	}
	in := x.pinIn
	copy(in.Float32s()[offX/4:], req.X[:R*H])
	copy(in.Float32s()[offW/4:], req.Weights[:R*K])
	copy(in.Int32s()[offPos/4:], p.pos[:R*K])
	copy(in.Int32s()[offRow/4:], p.pairRow[:P])
	copy(in.Uint64s()[offUp/8:], p.upTasks)
	copy(in.Uint64s()[offDown/8:], p.downTasks)

	bufs := []struct {
		name string
		n    int
	}{{"meta", total}, {"xs", 4 * p.small * H}, {"xb", 2 * (P - p.small) * H}, {"gu", 4 * P * 2 * I},
		{"a", 4 * p.small * I}, {"ab", 2 * (P - p.small) * I}, {"y", 4 * P * H}, {"out", 4 * R * H}}
	ptr := map[string]cuda.DevPtr{}
	for _, b := range bufs {
		d, err := x.ensure(b.name, b.n)
		if err != nil {
			return t, err
		}
		ptr[b.name] = d
	}
	meta := ptr["meta"]
	s := x.stream
	steps := []func() error{
		func() error { return x.ev[0].Record(s) },
		func() error { return s.CopyToDevice(meta, in, 0, total) },
		func() error { return x.ev[1].Record(s) },
		func() error {
			return s.Launch(x.k.gather, [3]uint32{uint32(min(P, 1<<20)), 1, 1}, [3]uint32{128, 1, 1}, 0,
				meta.Add(offX), meta.Add(offRow), P, p.small, H, ptr["xs"], ptr["xb"])
		},
		func() error {
			return s.Launch(x.k.gemv, [3]uint32{uint32(len(p.upTasks) / taskWords), 1, 1}, [3]uint32{32 * gemvRowsPerBlock, 1, 1}, 0,
				meta.Add(offUp), ptr["xs"], ptr["gu"], H, 2*I)
		},
		func() error {
			for _, g := range p.big {
				if err := x.blas.GemmRowMajor(g.m, 2*I, H, 1, ptr["xb"].Add(2*(g.p0-p.small)*H), cuda.R16BF, H,
					g.expert.gateUp, cuda.R16BF, H, 0, ptr["gu"].Add(4*g.p0*2*I), cuda.R32F, 2*I); err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			return s.Launch(x.k.silu, [3]uint32{uint32(min((P*I+255)/256, 1<<16)), 1, 1}, [3]uint32{256, 1, 1}, 0,
				ptr["gu"], P, p.small, I, ptr["a"], ptr["ab"])
		},
		func() error {
			return s.Launch(x.k.gemv, [3]uint32{uint32(len(p.downTasks) / taskWords), 1, 1}, [3]uint32{32 * gemvRowsPerBlock, 1, 1}, 0,
				meta.Add(offDown), ptr["a"], ptr["y"], I, H)
		},
		func() error {
			for _, g := range p.big {
				if err := x.blas.GemmRowMajor(g.m, H, I, 1, ptr["ab"].Add(2*(g.p0-p.small)*I), cuda.R16BF, I,
					g.expert.down, cuda.R16BF, I, 0, ptr["y"].Add(4*g.p0*H), cuda.R32F, H); err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			return s.Launch(x.k.combine, [3]uint32{uint32(min(R, 1<<20)), 1, 1}, [3]uint32{128, 1, 1}, 0,
				ptr["y"], meta.Add(offPos), meta.Add(offW), R, K, H, ptr["out"])
		},
		func() error { return x.ev[2].Record(s) },
		func() error { return s.CopyFromDevice(x.pinOut, 0, ptr["out"], 4*R*H) },
		func() error { return x.ev[3].Record(s) },
		func() error { return x.ev[3].Sync() },
	}
	for _, f := range steps {
		if err := f(); err != nil {
			s.Sync() // leave nothing in flight that reads the pinned buffers
			return t, fmt.Errorf("moe: layer %d: %w", req.Layer, err)
		}
	}
	copy(req.Out[:R*H], x.pinOut.Float32s()[:R*H])
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
	for _, b := range x.scratch {
		errs = append(errs, x.dev.Free(b.p))
	}
	x.scratch = nil
	errs = append(errs, x.pinIn.Free(), x.pinOut.Free())
	for _, e := range x.ev {
		if e != nil {
			errs = append(errs, e.Destroy())
		}
	}
	if x.blas != nil {
		errs = append(errs, x.blas.Destroy())
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
