package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// The MatMul design is described in the package documentation (kernels.go);
// the assembly plumbing is in tiles.go, the worker pool in pool.go.

// scratch is per-worker memory, grown on demand and reused across calls.
type scratch struct {
	f     []float32 // Go level: dequantized rows; asm: panel
	scr   []float32 // per-block scales of the current quad (quantized types)
	rows  []byte    // zero-padded copy of a partial last quad
	otail [4 * 8]float32

	q80prep []byte                         // Q8_0 lane groups: q80prep512's per-block sums and scales
	conv    []byte                         // rows rewritten as Q8_0 rows (q80Weights)
	codes   []byte                         // a row block's packed groups unpacked (packedCodesRange)
	q80o    [q80MaxRows * q80Group]float32 // one q80dot512R call's results
}

// alignedF32 returns a 64-byte-aligned float32 slice of length n, reusing b.
func alignedF32(b []float32, n int) []float32 {
	if cap(b) >= n && n > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%64 == 0 {
		return b[:n]
	}
	if cap(b) >= n && n == 0 {
		return b[:0]
	}
	raw := make([]float32, n+16)
	off := 0
	for uintptr(unsafe.Pointer(&raw[off]))%64 != 0 {
		off++
	}
	return raw[off : off+n : off+n]
}

// callCtx is the per-call state; pooled so that a call allocates nothing.
type callCtx struct {
	job  mmJob
	xbuf []float32
	xq   []byte   // quantized input rows (8-bit activations)
	xb   []uint16 // input rows rounded to bf16 (bf16 activations)
	s    scratch
	// helpers counts the ParallelFor participants that may be computing
	// blocks of job (runHelped); outside job, which each call resets.
	helpers atomic.Int32
	lanes   []atomic.Uint64 // job.lane's memory, kept across calls
}

var ctxPool = sync.Pool{New: func() any { return new(callCtx) }}

// mmJob is one MatMul call split into row blocks.
type mmJob struct {
	out      []float32
	w        tensor.Matrix
	rowBytes int
	x        []float32 // the caller's input rows
	n        int

	inv     bool // batch-invariant kernels whatever SetBatchInvariant says
	rb      int  // rows per block (a multiple of 4)
	nblocks int  // number of row blocks
	// span > 0: the blocks cover rows [0, span), and block [r0, r1) stands
	// for rows [r0, r1) and [r0+span, r1+span) of a two-stream kernel
	// (q8Plan.streams, bf16rows512S2) and, the last one, the rows after
	// 2·span too.
	span int
	// next is the next block to claim (lanes == 0), or the next lane to
	// hand a participant (lanes > 0).
	next atomic.Int64
	// lanes > 0: the blocks are cut into that many lanes of consecutive
	// blocks, one per participant, each taking its lane's blocks in order
	// (lane[l] packs the blocks [lo, hi) left: lo<<32 | hi); a participant
	// whose lane is empty steals the upper half of the fullest lane as its
	// own. So each participant reads one run of weights after another
	// rather than every other block: a block begun away from the previous
	// one restarts the hardware's streams (splitLanes).
	lanes int
	lane  []atomic.Uint64 // callCtx.lanes, at least lanes long

	// block computes rows [r0, r1); [nr0, nr1) is the block this participant
	// processes next (empty if none), which the kernels may prefetch.
	block func(j *mmJob, s *scratch, r0, r1, nr0, nr1 int)
	asm   asmPlan  // used by the assembly levels
	q8    q8Plan   // used by the integer kernels
	bf    []uint16 // the bf16 input rows of the bf16 kernels
	// after is memory the caller reads after the product
	// (MatMulSerialInvariantThen): each row block's tile kernels prefetch its
	// share of it, in proportion to the block's rows, when they have no next
	// block of their own to prefetch.
	after []byte
}

// q8Plan is the per-call set-up of the integer kernels (q8act.go).
type q8Plan struct {
	fns        [q8MaxRows + 1]q8Fn
	xq         []byte // quantized input rows, nb blocks each
	nb         int
	packed     []packedFn // the packed kernels by input rows (packed layouts)
	codes      []packedFn // the kernels on unpacked codes by input rows, or nil (planCodes)
	streams    streamFn   // the two-stream kernel of the input rows (mmJob.span), or nil
	pair       bool       // MatMulPairSerial: the second run is another matrix, wspan and ospan bytes on
	wspan      int
	ospan      int
	xstride    int // bytes between quantized input rows (packed layouts)
	groupBytes int // bytes of one packed 16-row group (packed layouts)
}

// blockedRows is the rows the blocks cover: all, or [0, span).
func (j *mmJob) blockedRows() int {
	if j.span > 0 {
		return j.span
	}
	return j.w.Rows
}

// streamFn is a two-stream kernel (see internal/gen/streams.go).
type streamFn func(w *byte, groups, nblocks int, xq *byte, xstride int, out *float32, ostride int, wspan, ospan int)

func (j *mmJob) run(s *scratch) { j.runBlocks(s) }

// splitLanes cuts the job's blocks into n lanes (n <= 1: none, one shared
// counter), in j.lane if it is long enough.
func (j *mmJob) splitLanes(n int) {
	j.lanes = 0
	if n <= 1 {
		return
	}
	if len(j.lane) < n {
		j.lane = make([]atomic.Uint64, n)
	}
	j.lanes = n
	for l := range n {
		j.lane[l].Store(packLane(l*j.nblocks/n, (l+1)*j.nblocks/n))
	}
}

func packLane(lo, hi int) uint64       { return uint64(lo)<<32 | uint64(hi) }
func unpackLane(v uint64) (lo, hi int) { return int(v >> 32), int(uint32(v)) }

// claimLane takes the first block left in lane l, or returns -1.
func (j *mmJob) claimLane(l int) int {
	for {
		v := j.lane[l].Load()
		lo, hi := unpackLane(v)
		if lo >= hi {
			return -1
		}
		if j.lane[l].CompareAndSwap(v, packLane(lo+1, hi)) {
			return lo
		}
	}
}

// stealLane moves the upper half of the fullest lane (at least one block)
// to lane l, which must be empty, and returns that half's first block,
// already claimed; l < 0 (a participant without a lane) takes the fullest
// lane's last block alone. It returns -1 when every lane is empty.
func (j *mmJob) stealLane(l int) int {
	for {
		best, most := -1, 0
		for k := range j.lanes {
			lo, hi := unpackLane(j.lane[k].Load())
			if hi-lo > most {
				best, most = k, hi-lo
			}
		}
		if best < 0 {
			return -1
		}
		v := j.lane[best].Load()
		lo, hi := unpackLane(v)
		if lo >= hi {
			continue
		}
		mid := hi - 1
		if l >= 0 {
			mid = lo + (hi-lo)/2
		}
		if !j.lane[best].CompareAndSwap(v, packLane(lo, mid)) {
			continue
		}
		if l >= 0 {
			j.lane[l].Store(packLane(mid+1, hi))
		}
		return mid
	}
}

// claim takes participant lane l's next block (lanes > 0), stealing when
// its lane is empty, and returns it with the block it would take next (for
// the kernels' prefetches; -1 if none), or -1.
func (j *mmJob) claim(l int) (b, next int) {
	if l >= j.lanes {
		l = -1
	}
	b = -1
	if l >= 0 {
		b = j.claimLane(l)
	}
	if b < 0 {
		b = j.stealLane(l)
	}
	next = -1
	if b >= 0 && l >= 0 {
		if lo, hi := unpackLane(j.lane[l].Load()); lo < hi {
			next = lo
		}
	}
	return b, next
}

// runBlocks claims and computes blocks until none is left and returns how
// many it computed.
func (j *mmJob) runBlocks(s *scratch) (blocks int) {
	if j.lanes > 0 {
		l := int(j.next.Add(1) - 1)
		for b, nb := j.claim(l); b >= 0; b, nb = j.claim(l) {
			j.runBlock(s, b, nb)
			blocks++
		}
		return blocks
	}
	// Claim one block ahead so that the kernels know which to prefetch.
	for b := int(j.next.Add(1) - 1); b < j.nblocks; blocks++ {
		nb := int(j.next.Add(1) - 1)
		j.runBlock(s, b, nb)
		b = nb
	}
	return blocks
}

// runBlock computes block b, telling the kernel that block nb comes next
// (none when nb is out of range).
func (j *mmJob) runBlock(s *scratch, b, nb int) {
	rows := j.blockedRows()
	nr0, nr1 := 0, 0
	if nb >= 0 && nb < j.nblocks {
		nr0, nr1 = nb*j.rb, min(nb*j.rb+j.rb, rows)
	}
	r0 := b * j.rb
	j.block(j, s, r0, min(r0+j.rb, rows), nr0, nr1)
}

var noLanes atomic.Bool

// laneMaxRows: split products of at most this many input rows, whose
// weights stream from memory, give each thread a lane of consecutive blocks
// (mmJob.lanes). bench --ab lanes, two threads, alternated in one process:
// one-session decode 1.07-1.15 (Q4_K_M), 1.14 (BF16), 1.03-1.07 (Q8_0);
// eight sessions 1.04; 32 and 128 sessions level, prefill 512 0.99.
const laneMaxRows = 8

// SetProductLanes turns on or off (on by default) the lanes of consecutive
// blocks that the threads of a split product take (mmJob.lanes), against
// one shared counter that hands out blocks in turn, and returns the
// previous setting: for measurements (bench --ab lanes). The results are
// the same bits either way.
func SetProductLanes(on bool) (prev bool) { return !noLanes.Swap(!on) }

// MatMul computes out = x · Wᵀ for n input rows:
//
//	out[i*W.Rows + r] = Σ_c W[r, c] · x[i*W.Cols + c]   for i < n, r < W.Rows
//
// x is [n, W.Cols] and out is [n, W.Rows], both row-major float32. Weights of
// any tensor.DType are widened on the fly; accumulation is float32. MatMul
// runs on Threads() threads (small products on the caller alone) and
// allocates nothing in steady state.
func MatMul(out []float32, w tensor.Matrix, x []float32, n int) {
	if obs := productObserver.Load(); obs != nil {
		observed(obs, out, w, x, n, Threads(), false, nil)
		return
	}
	matMul(out, w, x, n, Threads(), false)
}

// MatMulSerial is MatMul on the calling goroutine alone, for callers that run
// many small products in parallel themselves (routed experts at decode).
func MatMulSerial(out []float32, w tensor.Matrix, x []float32, n int) {
	if obs := productObserver.Load(); obs != nil {
		observed(obs, out, w, x, n, 1, false, nil)
		return
	}
	matMul(out, w, x, n, 1, false)
}

// MatMulPairSerial computes outA = x·Aᵀ and outB = x·Bᵀ on the calling
// goroutine, with the bits of two MatMulSerial calls, for n input rows and
// two matrices of one type, packed layout and shape (a routed expert's gate
// and up): where the layout has a two-stream kernel for n input rows, as
// one product whose two runs are the two matrices (the input quantized
// once, each matrix read whole as one run, where each product alone reads
// its two halves as the runs). Otherwise, with the product observer set
// (bench --breakdown), or SetProductPairs(false), it makes the two calls.
func MatMulPairSerial(outA []float32, a tensor.Matrix, outB []float32, b tensor.Matrix, x []float32, n int) {
	if productObserver.Load() == nil && !noPairs.Load() && n > 0 && a.Rows > 0 && a.Cols > 0 &&
		a.DType == b.DType && a.Layout == b.Layout && a.Rows == b.Rows && a.Cols == b.Cols {
		checkMatMul(outA, a, x, n)
		checkMatMul(outB, b, x, n)
		c := ctxPool.Get().(*callCtx)
		j := &c.job
		j.out, j.w, j.x, j.n = outA, a, x, n
		j.rowBytes = a.RowStride()
		j.next.Store(0)
		if planPair(c, KernelLevel(), b, outB) {
			runPlanned(c, 1)
			return
		}
		*j = mmJob{}
		ctxPool.Put(c)
	}
	MatMulSerial(outA, a, x, n)
	MatMulSerial(outB, b, x, n)
}

var noPairs atomic.Bool

// SetProductPairs turns on (the default) or off MatMulPairSerial's one
// product of two matrices and returns the previous setting: for
// measurements (bench --ab pairs). The results are the same bits either
// way.
func SetProductPairs(on bool) (prev bool) { return !noPairs.Swap(!on) }

var noCodes atomic.Bool

// SetCodesUnpacking turns on (the default) or off the unpacking of a
// packed product's codes once for its many input rows (Q6_K, Q5_K and Q3_K at
// codesMinRows input rows or more, on AVX-512) and returns the previous
// setting: for measurements (bench --ab codes). The results are the same
// bits either way.
func SetCodesUnpacking(on bool) (prev bool) { return !noCodes.Swap(!on) }

// MatMulSerialInvariant is MatMulSerial with the batch-invariant kernels
// whatever SetBatchInvariant says: for attention over KV caches, so that a
// query's scores and outputs do not depend on how many queries share the call
// (a prompt resumed from a prefix checkpoint, or cut into other chunks,
// computes the same bits as a whole prefill; bf16 KV pages would otherwise
// round differently at one and two queries).
func MatMulSerialInvariant(out []float32, w tensor.Matrix, x []float32, n int) {
	MatMulSerialInvariantThen(out, w, x, n, nil)
}

// MatMulSerialInvariantThen is MatMulSerialInvariant for a caller that reads
// after (for attention: the page's values after its keys, the next page's
// keys after the values) once the product is done: the kernels that can
// prefetch it into the cache as they go, a line for each line of weights they
// read, so that its memory traffic overlaps this product's arithmetic. The
// results are the same bits as MatMulSerialInvariant's.
func MatMulSerialInvariantThen(out []float32, w tensor.Matrix, x []float32, n int, after []byte) {
	if obs := productObserver.Load(); obs != nil {
		observed(obs, out, w, x, n, 1, true, after)
		return
	}
	matMulThen(out, w, x, n, 1, true, after)
}

func matMul(out []float32, w tensor.Matrix, x []float32, n, threads int, inv bool) {
	matMulThen(out, w, x, n, threads, inv, nil)
}

// matMulThen is matMul with memory the caller reads after the product, which
// the tile kernels prefetch across it (mmJob.after).
func matMulThen(out []float32, w tensor.Matrix, x []float32, n, threads int, inv bool, after []byte) {
	if n <= 0 || w.Rows <= 0 {
		return
	}
	checkMatMul(out, w, x, n)
	lvl := KernelLevel()
	if w.Layout != tensor.RowMajor && !packedFast(w.Layout, lvl) {
		matMulUnpacked(out, w, x, n, threads, inv)
		return
	}
	if lvl == LevelRef {
		MatMulRef(out, w, x, n)
		return
	}
	if w.Cols == 0 {
		clear(out[:n*w.Rows])
		return
	}
	c := ctxPool.Get().(*callCtx)
	j := &c.job
	j.out, j.w, j.x, j.n, j.inv, j.after = out, w, x, n, inv, after
	j.rowBytes = w.RowStride()
	j.next.Store(0)
	q8, nonFinite := planQ8(c, lvl)
	if nonFinite && w.Layout != tensor.RowMajor {
		// Only the row-major path takes rows with an infinity or a NaN.
		*j = mmJob{}
		ctxPool.Put(c)
		matMulUnpacked(out, w, x, n, threads, inv)
		return
	}
	if nonFinite && n > 1 {
		// A row with an infinity or a NaN widens the weights, alone; the
		// other rows run together without it, so that their results are
		// what they are in a batch without that row.
		*j = mmJob{}
		ctxPool.Put(c)
		matMulNonFinite(out, w, x, n, threads, inv)
		return
	}
	if !q8 && !planBF16(c, lvl) && (lvl < LevelAVX2 || !planAsm(c, lvl)) {
		planGo(j)
	}
	runPlanned(c, threads)
}

// runPlanned runs the planned product c on up to threads threads (one: with
// its blocks offered to idle ParallelFor participants) and puts c back.
func runPlanned(c *callCtx, threads int) {
	j := &c.job
	w, n := j.w, j.n
	j.nblocks = (j.blockedRows() + j.rb - 1) / j.rb
	// Rough single-thread time: weights at 14 GB/s plus flops at 100 GFLOP/s
	// (the Go level is slower, which only makes it worth more threads).
	est := w.Bytes()/14 + w.Rows*w.Cols*n/50
	if threads == 1 && j.nblocks > 1 && n <= helpMaxRows && w.Bytes() >= helpMinBytes && forHelping.Load() > 0 && !noHelping.Load() {
		runHelped(c)
	} else {
		if n <= laneMaxRows && !noLanes.Load() {
			j.lane = c.lanes                                             // grown by splitLanes, kept for the next call
			j.splitLanes(min(threads, j.nblocks, runtime.GOMAXPROCS(0))) // parallel's participants at most
			c.lanes = j.lane
		}
		parallel(j, min(threads, j.nblocks), &c.s, est)
	}
	*j = mmJob{}
	ctxPool.Put(c)
}

// matMulNonFinite runs each input row holding an infinity or a NaN alone and
// the others as one batch.
func matMulNonFinite(out []float32, w tensor.Matrix, x []float32, n, threads int, inv bool) {
	k := w.Cols
	var good []int
	for i := 0; i < n; i++ {
		if finite(x[i*k : (i+1)*k]) {
			good = append(good, i)
			continue
		}
		matMul(out[i*w.Rows:(i+1)*w.Rows], w, x[i*k:(i+1)*k], 1, threads, inv)
	}
	if len(good) == 0 {
		return
	}
	gx := make([]float32, len(good)*k)
	gout := make([]float32, len(good)*w.Rows)
	for t, i := range good {
		copy(gx[t*k:], x[i*k:(i+1)*k])
	}
	matMul(gout, w, gx, len(good), threads, inv)
	for t, i := range good {
		copy(out[i*w.Rows:(i+1)*w.Rows], gout[t*w.Rows:])
	}
}

func finite(x []float32) bool {
	for _, v := range x {
		if v != v || math.IsInf(float64(v), 0) {
			return false
		}
	}
	return true
}

func checkMatMul(out []float32, w tensor.Matrix, x []float32, n int) {
	rb, err := w.DType.RowBytes(w.Cols)
	if err != nil {
		panic(err)
	}
	if w.Cols < 0 || len(w.Data) < w.Rows*rb {
		panic(fmt.Sprintf("kernels: MatMul weight %v [%d,%d] has %d bytes, need %d", w.DType, w.Rows, w.Cols, len(w.Data), w.Rows*rb))
	}
	if len(x) < n*w.Cols {
		panic(fmt.Sprintf("kernels: MatMul x has %d values, need %d", len(x), n*w.Cols))
	}
	if len(out) < n*w.Rows {
		panic(fmt.Sprintf("kernels: MatMul out has %d values, need %d", len(out), n*w.Rows))
	}
}

// rowBlock picks the rows per block: about target bytes of (effective) row
// data, a multiple of 4, and at least 4 blocks per thread when rows allow.
func rowBlock(rows, rowBytes, target int) int {
	return rowBlockPer(rows, rowBytes, target, 4)
}

// rowBlockPer is rowBlock with at least per blocks per thread (while a
// block has more than 16 rows) instead of 4.
func rowBlockPer(rows, rowBytes, target, per int) int {
	rb := max(4, target/max(rowBytes, 1)&^3)
	t := Threads()
	for rb > 16 && (rows+rb-1)/rb < per*t {
		rb = (rb / 2) &^ 3
	}
	return rb
}

// ---- the portable Go level ----

func planGo(j *mmJob) {
	j.block = goBlock
	j.rb = rowBlock(j.w.Rows, j.rowBytes, 128<<10)
}

func goBlock(j *mmJob, s *scratch, r0, r1, _, _ int) {
	k := j.w.Cols
	s.f = alignedF32(s.f, 4*k)
	buf := s.f
	rows := j.w.Rows
	for r := r0; r < r1; r += 4 {
		nr := min(4, r1-r)
		for q := 0; q < nr; q++ {
			dequantRow(j.w.DType, j.w.Row(r+q), buf[q*k:(q+1)*k])
		}
		for i := 0; i < j.n; i++ {
			xi := j.x[i*k : (i+1)*k]
			o := j.out[i*rows+r : i*rows+r+nr]
			if nr == 4 {
				o[0], o[1], o[2], o[3] = dot4Go(buf[:k], buf[k:2*k], buf[2*k:3*k], buf[3*k:4*k], xi)
				continue
			}
			for q := range o {
				o[q] = dotGo(buf[q*k:(q+1)*k], xi)
			}
		}
	}
}

// dequantRow widens one row (len(dst) values) to float32.
func dequantRow(dt tensor.DType, src []byte, dst []float32) {
	switch dt {
	case tensor.F32:
		src = src[:4*len(dst)]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case tensor.BF16:
		src = src[:2*len(dst)]
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
		}
	case tensor.Q8_0:
		for b := 0; b < len(dst)/tensor.Q8_0BlockValues; b++ {
			blk := src[b*tensor.Q8_0BlockBytes : (b+1)*tensor.Q8_0BlockBytes]
			d := tensor.F16ToF32(binary.LittleEndian.Uint16(blk))
			out := dst[b*32 : b*32+32]
			q := blk[2:34]
			for i := range out {
				out[i] = d * float32(int8(q[i]))
			}
		}
	default:
		tensor.DequantizeRow(dt, src, dst)
	}
}

func dotGo(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func dot4Go(w0, w1, w2, w3, x []float32) (s0, s1, s2, s3 float32) {
	n := len(x)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	for c, xv := range x {
		s0 += w0[c] * xv
		s1 += w1[c] * xv
		s2 += w2[c] * xv
		s3 += w3[c] * xv
	}
	return
}

// weightAt decodes element c of a plain-typed (F32, BF16, F16) row.
func weightAt(dt tensor.DType, row []byte, c int) float32 {
	switch dt {
	case tensor.F32:
		return math.Float32frombits(binary.LittleEndian.Uint32(row[4*c:]))
	case tensor.BF16:
		return math.Float32frombits(uint32(binary.LittleEndian.Uint16(row[2*c:])) << 16)
	case tensor.F16:
		return tensor.F16ToF32(binary.LittleEndian.Uint16(row[2*c:]))
	}
	panic("kernels: weightAt of a block type")
}
