package kernels

import (
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// tileFn is the signature of every generated tile and widen kernel (see
// internal/gen/tile.go). Strides are in bytes.
//
// Tile kernels compute, for q < nquads, r < 4, i < N:
//
//	out[i*ostride + 16q + 4r] = Σ_k W[4q+r][k] · xp[i*xstride + k]
//
// over nchunks full chunks plus, when tail != 0, one partial chunk whose
// valid elements the opmask tail selects. Widen kernels instead store the
// float32 rows (in the dtype's packed order) at out + (4q+r)*ostride.
// scr is per-quad scratch for Q8_0/Q4_K scales. [pf, pfend) is an address
// range (the next row block) the kernel prefetches into L2, as many lines per
// chunk as the chunk consumes, to overlap that block's memory traffic with
// this block's arithmetic (empty: none). Independently, each kernel
// prefetches the rows two quads ahead of the one it works on.
type tileFn func(w *byte, wstride, nquads int, x *float32, xstride, nchunks, tail int, out *float32, ostride int, scr *float32, pf, pfend uintptr)

// isaKernels is the kernel table of one assembly level.
type isaKernels struct {
	lanes  int                   // float32 lanes per vector
	maxN   [tensor.NumDTypes]int // largest tile height per dtype
	masked bool                  // partial chunks of F32/BF16/F16 handled in the kernels

	tile [tensor.NumDTypes][9]tileFn // [dtype][N]
	// tileInv replaces tile where the fast small-N kernels (two accumulator
	// sets at N=1 or 2, Q8_0's factored form) round differently from the
	// larger tiles: the batch-invariant kernels (see SetBatchInvariant).
	tileInv [tensor.NumDTypes][3]tileFn
	widen   [tensor.NumDTypes]tileFn
	// panelOrder is the sub-vector order of the widen kernels of dtypes that
	// do not store panels in natural order (x is packed to match).
	panelOrder map[tensor.DType][]int
	panel      [9]tileFn // float32 tiles for panels (no look-ahead prefetch of the rows)

	// panelMinN is the n from which a dtype widens row blocks into a float32
	// panel first (0: never).
	panelMinN [tensor.NumDTypes]int
}

// panelMode forces the panel path on (1) or off (-1) for benchmarks; 0 is automatic.
var panelMode int

// isaTables holds the kernel table per level (nil: not available). Filled by
// the architecture files.
var isaTables [LevelAVX512 + 1]*isaKernels

// asmPlan is the per-call set-up of the assembly levels.
type asmPlan struct {
	ik      *isaKernels
	dt      tensor.DType
	nchunks int       // full chunks per row
	tail    int       // opmask of the partial chunk (0: none)
	kmain   int       // columns the kernels cover; the rest is added in Go
	xp      []float32 // packed input rows
	xstride int       // floats between packed rows
	kp      int       // panel row length (floats)
	panel   bool
	f32big  bool // float32 weights at large n: the panel kernels on the weights
	scrLen  int  // floats of per-quad scale scratch
	tiles   [9]tileFn
}

// chunkValues is the number of weight values one kernel iteration consumes.
func chunkValues(lanes int, dt tensor.DType) int {
	switch dt {
	case tensor.BF16:
		return 2 * lanes
	}
	if dt.Quantized() {
		return dt.BlockValues()
	}
	return lanes
}

func planAsm(c *callCtx, lvl Level) bool {
	ik := isaTables[lvl]
	if ik == nil {
		return false
	}
	j := &c.job
	dt, k, n := j.w.DType, j.w.Cols, j.n
	if ik.tile[dt][1] == nil {
		return false
	}
	p := &j.asm
	*p = asmPlan{ik: ik, dt: dt}
	cv := chunkValues(ik.lanes, dt)
	p.nchunks = k / cv
	rem := k % cv
	total := p.nchunks
	p.kmain = k
	if rem != 0 {
		if ik.masked {
			p.tail = 1<<rem - 1
			total++
		} else {
			p.kmain = p.nchunks * cv
		}
	}
	if total == 0 {
		return false // too few columns for one chunk: the Go level does it
	}
	p.kp = total * cv
	p.panel = ik.panelMinN[dt] > 0 && n >= ik.panelMinN[dt] && ik.widen[dt] != nil && ik.panel[1] != nil
	if panelMode != 0 && ik.widen[dt] != nil && ik.panel[1] != nil {
		p.panel = panelMode > 0
	}
	// Float32 weights are their own panel: at large n use the panel kernels
	// (no look-ahead prefetch of the rows) on blocks the size of a panel block.
	p.f32big = dt == tensor.F32 && ik.panelMinN[dt] > 0 && n >= ik.panelMinN[dt] && p.tail == 0 && ik.panel[1] != nil
	p.tiles = ik.tile[dt]
	if p.f32big {
		p.tiles = ik.panel
	}
	if j.inv || batchInvariant.Load() {
		for nn, f := range ik.tileInv[dt] {
			if f != nil {
				p.tiles[nn] = f
			}
		}
	}
	// The bf16 kernels (tiles and widen) take x in even/odd order; the
	// panels of some quantized types are stored in the tiles' order of
	// sub-vectors (both so that panels and tiles round alike).
	evenOdd := dt == tensor.BF16
	var order []int
	if p.panel {
		order = ik.panelOrder[dt]
	}
	if evenOdd || p.tail != 0 || order != nil {
		c.xbuf = alignedF32(c.xbuf, n*p.kp)
		bf := 0
		if evenOdd {
			bf = cv
		}
		packX(c.xbuf, j.x, n, k, p.kp, p.kmain, bf)
		if order != nil {
			permuteX(c.xbuf, n, p.kp, cv, ik.lanes, order)
		}
		p.xp, p.xstride = c.xbuf, p.kp
	} else {
		p.xp, p.xstride = j.x, k
	}
	// Per-quad scale scratch, as the kernels' prologues lay it out.
	nb4 := (p.nchunks + 3) / 4 * 4
	switch dt {
	case tensor.Q8_0, tensor.Q4_0, tensor.Q5_0, tensor.IQ4_NL:
		// float32 scales [block][row], then the f16 staging area.
		p.scrLen = nb4 * (4 + 2)
	case tensor.Q4_1, tensor.Q5_1:
		// float32 [block][d, m][row], then the staging area.
		p.scrLen = nb4 * 2 * (4 + 2)
	case tensor.Q4_K, tensor.Q5_K:
		p.scrLen = p.nchunks * 64
	case tensor.Q6_K, tensor.Q2_K, tensor.Q3_K:
		p.scrLen = p.nchunks * 128
	case tensor.IQ4_XS:
		p.scrLen = p.nchunks * 32
	}
	j.block = asmBlock
	if p.panel || p.f32big {
		j.rb = rowBlock(j.w.Rows, 4*p.kp, panelBlockBytes)
	} else {
		j.rb = rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)
	}
	return true
}

// packX copies the kmain first values of each of the n rows of x (stride k)
// into dst (stride kp), zero-padded. With bf > 0 every chunk of bf values is
// stored even-indexed values first, then odd-indexed ones, matching the
// kernels' bf16 widening.
func packX(dst, x []float32, n, k, kp, kmain, bf int) {
	for i := 0; i < n; i++ {
		xi := x[i*k : i*k+kmain]
		d := dst[i*kp : (i+1)*kp]
		if bf == 0 {
			copy(d, xi)
			clear(d[kmain:])
			continue
		}
		half := bf / 2
		for c0 := 0; c0 < kp; c0 += bf {
			dc := d[c0 : c0+bf]
			if c0+bf <= kmain {
				xc := xi[c0 : c0+bf]
				if bf == 32 { // AVX-512: fixed-size arrays, no bounds checks
					evenOdd32((*[32]float32)(dc), (*[32]float32)(xc))
					continue
				}
				for jj := 0; jj < half; jj++ {
					dc[jj] = xc[2*jj]
					dc[half+jj] = xc[2*jj+1]
				}
				continue
			}
			for jj := 0; jj < half; jj++ {
				e := c0 + 2*jj
				dc[jj], dc[half+jj] = 0, 0
				if e < kmain {
					dc[jj] = xi[e]
				}
				if e+1 < kmain {
					dc[half+jj] = xi[e+1]
				}
			}
		}
	}
}

// evenOdd32 stores x's even elements, then its odd ones, in d.
func evenOdd32(d, x *[32]float32) {
	for jj := range 16 {
		d[jj] = x[2*jj]
		d[16+jj] = x[2*jj+1]
	}
}

// permuteX reorders, in place, the sub-vectors of `lanes` values within
// every chunk of cv values of the n packed rows (stride kp): position t of a
// chunk gets natural sub-vector order[t].
func permuteX(x []float32, n, kp, cv, lanes int, order []int) {
	var tmp [256]float32
	for i := 0; i < n; i++ {
		row := x[i*kp : (i+1)*kp]
		for c0 := 0; c0+cv <= kp; c0 += cv {
			ch := row[c0 : c0+cv]
			copy(tmp[:cv], ch)
			for t, nat := range order {
				copy(ch[t*lanes:(t+1)*lanes], tmp[nat*lanes:(nat+1)*lanes])
			}
		}
	}
}

// groupSize is the size of input-row group g when n rows are split into
// ceil(n/maxN) near-equal groups.
func groups(n, maxN int) (ng, base, rem int) {
	ng = (n + maxN - 1) / maxN
	return ng, n / ng, n % ng
}

func asmBlock(j *mmJob, s *scratch, r0, r1, nr0, nr1 int) {
	p := &j.asm
	ik, dt := p.ik, p.dt
	rows, n := j.w.Rows, j.n
	nq := (r1 - r0) / 4
	s.scr = alignedF32(s.scr, max(p.scrLen, 16))
	scr := &s.scr[0]
	mx := ik.maxN[dt]
	if p.panel {
		mx = ik.maxN[tensor.F32]
	}
	ng, base, rem := groups(n, mx)
	// With several passes over the block (input-row groups, or a panel),
	// prefetch the next block during them, split across the calls.
	wd := uintptr(unsafe.Pointer(unsafe.SliceData(j.w.Data)))
	pfBase, pf0, pfLen := wd, 0, 0
	if nr1 > nr0 && (ng > 1 || p.panel) {
		pf0, pfLen = nr0*j.rowBytes, (nr1-nr0)*j.rowBytes
	} else if len(j.after) > 0 {
		// This block's share of what the caller reads next.
		pfBase = uintptr(unsafe.Pointer(unsafe.SliceData(j.after)))
		pf0 = len(j.after) * r0 / rows
		pfLen = len(j.after)*r1/rows - pf0
	}
	if nq > 0 {
		wb := &j.w.Data[r0*j.rowBytes]
		if p.panel {
			s.f = alignedF32(s.f, nq*4*p.kp)
			ik.widen[dt](wb, j.rowBytes, nq, nil, 0, p.nchunks, p.tail, &s.f[0], 4*p.kp, scr, wd, wd)
			pw := (*byte)(unsafe.Pointer(&s.f[0]))
			chunks := p.kp / ik.lanes
			i0 := 0
			for g := 0; g < ng; g++ {
				nn := base + b2i(g < rem)
				a, e := pfRange(pfBase, pf0, pfLen, g, ng)
				ik.panel[nn](pw, 4*p.kp, nq, &p.xp[i0*p.xstride], 4*p.xstride, chunks, 0, &j.out[i0*rows+r0], 4*rows, nil, a, e)
				i0 += nn
			}
		} else {
			tf := &p.tiles
			i0 := 0
			for g := 0; g < ng; g++ {
				nn := base + b2i(g < rem)
				a, e := pfRange(pfBase, pf0, pfLen, g, ng)
				tf[nn](wb, j.rowBytes, nq, &p.xp[i0*p.xstride], 4*p.xstride, p.nchunks, p.tail, &j.out[i0*rows+r0], 4*rows, scr, a, e)
				i0 += nn
			}
		}
	}
	if lr := (r1 - r0) % 4; lr > 0 {
		// A partial last quad: run the kernel on a zero-padded copy.
		rr := r0 + 4*nq
		buf := paddedQuad(j, s, rr, lr)
		tf := &p.tiles
		wb, ws, chunks, tail := &buf[0], j.rowBytes, p.nchunks, p.tail
		if p.panel {
			s.f = alignedF32(s.f, 4*p.kp)
			ik.widen[dt](wb, j.rowBytes, 1, nil, 0, p.nchunks, p.tail, &s.f[0], 4*p.kp, scr, wd, wd)
			tf = &ik.panel
			wb, ws, chunks, tail = (*byte)(unsafe.Pointer(&s.f[0])), 4*p.kp, p.kp/ik.lanes, 0
		}
		i0 := 0
		for g := 0; g < ng; g++ {
			nn := base + b2i(g < rem)
			tf[nn](wb, ws, 1, &p.xp[i0*p.xstride], 4*p.xstride, chunks, tail, &s.otail[0], 16, scr, wd, wd)
			for i := 0; i < nn; i++ {
				copy(j.out[(i0+i)*rows+rr:(i0+i)*rows+rr+lr], s.otail[4*i:4*i+lr])
			}
			i0 += nn
		}
	}
	if k := j.w.Cols; p.kmain < k {
		// Columns the kernels did not cover (levels without masked tails).
		for r := r0; r < r1; r++ {
			row := j.w.Row(r)
			for i := 0; i < n; i++ {
				xi := j.x[i*k : (i+1)*k]
				var t float32
				for c := p.kmain; c < k; c++ {
					t += weightAt(dt, row, c) * xi[c]
				}
				j.out[i*rows+r] += t
			}
		}
	}
}

// paddedQuad copies the lr (< 4) weight rows from rr into s.rows, padded
// with zero rows to a whole quad, for the kernels that work on quads.
func paddedQuad(j *mmJob, s *scratch, rr, lr int) []byte {
	need := 4 * j.rowBytes
	if cap(s.rows) < need {
		s.rows = make([]byte, need)
	}
	buf := s.rows[:need]
	clear(buf[copy(buf, j.w.Data[rr*j.rowBytes:(rr+lr)*j.rowBytes]):])
	return buf
}

// pfRange is the part g of ng of the prefetch range [off, off+n) of base, as
// addresses (only ever prefetched, never dereferenced).
func pfRange(base uintptr, off, n, g, ng int) (uintptr, uintptr) {
	if n == 0 {
		return base, base
	}
	return base + uintptr(off+n*g/ng), base + uintptr(off+n*(g+1)/ng)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Row block sizes: weight bytes per block of the fused path, float32 bytes
// per block of the panel path.
var (
	fusedBlockBytes = 256 << 10
	panelBlockBytes = 1 << 20
)
