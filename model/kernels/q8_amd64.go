//go:build !purego

package kernels

import (
	"unsafe"

	"golang.org/x/sys/cpu"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// The integer kernels need AVX-512 BW (VPMADDUBSW, VPERMW on zmm); with VNNI
// they use VPDPWSSD, without it (Skylake-SP) their BW twins VPMADDWD and
// VPADDD.
var hasQ8 = cpu.X86.HasAVX512BW

func init() {
	if !cpu.X86.HasAVX512VNNI {
		useQ8BW()
	}
}

// useQ8BW switches to the kernels without VNNI.
func useQ8BW() {
	q8Kernels = q8KernelsBW
}

// q8Kernels, q8KernelsBW and q8Kernels256 are in kerneltables_amd64.go,
// written by the generator.

// q8LevelKernels returns the integer kernels of dt at level lvl (nil
// entries where there are none).
func q8LevelKernels(dt tensor.DType, lvl Level) [q8MaxRows + 1]q8Fn {
	switch {
	case lvl >= LevelAVX512 && hasQ8:
		return q8Kernels[dt]
	case lvl == LevelAVX2 && maxLevel >= LevelAVX2:
		return q8Kernels256[dt]
	}
	return [q8MaxRows + 1]q8Fn{}
}

// planQ8 sets up the integer path for the call (see q8act.go): it quantizes
// the input rows into c.xq. It reports false when the path does not apply,
// and nonFinite when it does but an input row holds an infinity or a NaN.
func planQ8(c *callCtx, lvl Level) (ok, nonFinite bool) {
	j := &c.job
	if j.w.Layout != tensor.RowMajor {
		// packedFast held: the packed kernels run.
		ok := planPacked(c, lvl)
		return ok, !ok
	}
	if asQ80(j.w.DType) {
		return planQ80(c, lvl)
	}
	fns := q8LevelKernels(j.w.DType, lvl)
	if fns[1] == nil || !q8Usable(j.w) {
		return false, false
	}
	if !planQ8K(c) {
		return false, true
	}
	j.q8.fns = fns
	j.block = q8Block
	j.rb = rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)
	return true, false
}

// usePacked sets a product up to run the packed kernels fns on weights in
// spec's layout (packed beforehand, or as block goes), 16-row groups per
// row block.
func usePacked(j *mmJob, fns []packedFn, spec *packSpec, block func(*mmJob, *scratch, int, int, int, int)) {
	j.q8.packed = fns
	j.q8.groupBytes = j.w.Cols / spec.dt.BlockValues() * spec.groupBytes()
	j.block = block
	j.rb = packedRowBlock(j)
}

// q8PackingBlock computes rows [r0, r1) (r0 a multiple of 16) of a
// row-major product with many input rows (Q4_1, Q5_1: q81PackMinRows):
// each 16-row group is packed into the worker's scratch (as Pack packs
// it), then the packed kernels run it against every input row, with the
// bits of the row-major kernels.
func q8PackingBlock(j *mmJob, s *scratch, r0, r1, _, _ int) {
	spec := specOf(j.w.DType, tensor.RowMajor)
	for g := r0; g < r1; g += packRows {
		m := min(packRows, r1-g)
		sub := tensor.Matrix{DType: j.w.DType, Rows: m, Cols: j.w.Cols, Data: j.w.Data[g*j.rowBytes : (g+m)*j.rowBytes]}
		packedGroupAll(j, s, spec, sub, g)
	}
}

// packedGroupAll packs sub (the m ≤ 16 rows from row g of a product's
// row-major weights) into the worker's scratch and runs the product's
// packed kernels (j.q8.packed) on it against every input row.
func packedGroupAll(j *mmJob, s *scratch, spec *packSpec, sub tensor.Matrix, g int) {
	p := &j.q8
	if cap(s.rows) < p.groupBytes {
		s.rows = make([]byte, p.groupBytes)
	}
	buf := s.rows[:p.groupBytes]
	spec.packGroups(buf, sub, 0, 1)
	rows, m := j.w.Rows, sub.Rows
	maxN := len(p.packed) - 1
	for i0 := 0; i0 < j.n; i0 += maxN {
		nn := min(maxN, j.n-i0)
		if m == packRows {
			p.packed[nn](&buf[0], 1, p.nb, &p.xq[i0*p.xstride], p.xstride, &j.out[i0*rows+g], 4*rows)
			continue
		}
		var tmp [8 * packRows]float32
		p.packed[nn](&buf[0], 1, p.nb, &p.xq[i0*p.xstride], p.xstride, &tmp[0], 4*packRows)
		for i := 0; i < nn; i++ {
			copy(j.out[(i0+i)*rows+g:][:m], tmp[i*packRows:])
		}
	}
}

// planQ8K quantizes the input rows into c.xq for the K-quant integer
// kernels (quantizeQ8K's blocks, one row after another) and sets j.q8's xq
// and nb. It reports false if a row holds an infinity or a NaN.
func planQ8K(c *callCtx) bool {
	j := &c.job
	nb := j.w.Cols / q8xValues
	need := j.n*nb*q8xBlockBytes + 64
	if cap(c.xq) < need {
		c.xq = make([]byte, need)
	}
	buf := c.xq[:need]
	off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(buf))) & 63)
	xq := buf[off : off+j.n*nb*q8xBlockBytes]
	k := j.w.Cols
	for i := 0; i < j.n; i++ {
		if !quantizeQ8K(xq[i*nb*q8xBlockBytes:], j.x[i*k:(i+1)*k]) {
			return false
		}
	}
	j.q8 = q8Plan{xq: xq, nb: nb}
	return true
}

func q8Block(j *mmJob, _ *scratch, r0, r1, _, _ int) {
	p := &j.q8
	xs := p.nb * q8xBlockBytes
	maxN := 2
	for maxN < q8MaxRows && p.fns[maxN+1] != nil {
		maxN++
	}
	for i0 := 0; i0 < j.n; {
		nn := min(maxN, j.n-i0)
		p.fns[nn](&j.w.Data[r0*j.rowBytes], j.rowBytes, r1-r0, &p.xq[i0*xs], xs, p.nb, &j.out[i0*j.w.Rows+r0], 4*j.w.Rows)
		i0 += nn
	}
}

func hasQ8Kernels() bool { return hasQ8 }

// hasQ8KernelsAt reports whether products with dt weights run integer
// kernels at level lvl.
func hasQ8KernelsAt(dt tensor.DType, lvl Level) bool { return q8LevelKernels(dt, lvl)[1] != nil }

// hasQ80KernelsAt reports whether products with Q8_0 weights run integer
// kernels at level lvl (AVX-512 VNNI, or the AVX2 ones).
func hasQ80KernelsAt(lvl Level) bool {
	// q80Level leaves AVX-512 only where the CPU has VNNI.
	lvl = q80Level(lvl)
	return lvl >= LevelAVX512 || (lvl == LevelAVX2 && maxLevel >= LevelAVX2)
}

// quantizeQ8KAsm runs quantQ8K512 (quantQ8K256 at the AVX2 level) where
// the integer kernels exist (done).
func quantizeQ8KAsm(dst []byte, x []float32, nb int) (ok, done bool) {
	// The current level, not the CPU's best: the AVX2 level quantizes as an
	// AVX2-only CPU does (the same bytes either way).
	switch lvl := KernelLevel(); {
	case lvl >= LevelAVX512 && hasQ8:
		return quantQ8K512(unsafe.SliceData(x), nb, unsafe.SliceData(dst)), true
	case lvl == LevelAVX2 && maxLevel >= LevelAVX2:
		return quantQ8K256(unsafe.SliceData(x), nb, unsafe.SliceData(dst)), true
	}
	return false, false
}

// forceQ8BW makes MatMul use the kernels without VNNI until the returned
// function is called (tests).
func forceQ8BW() (restore func()) {
	prev := q8Kernels
	q8Kernels = q8KernelsBW
	return func() { q8Kernels = prev }
}

// hasQ80: the CPU has VPDPBUSD on zmm (AVX-512 VNNI).
var hasQ80 = cpu.X86.HasAVX512VNNI && cpu.X86.HasAVX512BW

// q80Level is the level whose kernels products of the Q8_0 family (Q8_0,
// and asQ80's other types) run at level lvl: on AVX-512 CPUs without VNNI
// (Skylake-SP) the AVX2 ones, which need no VNNI, rather than widening the
// weights to float32.
func q80Level(lvl Level) Level {
	if lvl >= LevelAVX512 && !hasQ80 {
		return LevelAVX2
	}
	return lvl
}

// q80Layout reports whether l is a packed layout of the Q8_0 family.
func q80Layout(l tensor.Layout) bool {
	return l == tensor.Q80x16 || l == tensor.Q40x16 || l == tensor.IQ4NLx16 || l == tensor.Q50x16 ||
		l == tensor.Q41x16 || l == tensor.Q51x16 || l == tensor.MXFP4x16
}

// forceNoQ80VNNI makes the Q8_0 family run as on an AVX-512 CPU without
// VNNI until the returned function is called (tests).
func forceNoQ80VNNI() (restore func()) {
	prev := hasQ80
	hasQ80 = false
	return func() { hasQ80 = prev }
}

type q80DotFn func(w *byte, wstride int, xg *byte, nblocks int, prep *byte, pstride int, out *float32)

var q80Dots = [q80MaxRows + 1]q80DotFn{1: q80dot512R1, 2: q80dot512R2, 3: q80dot512R3, 4: q80dot512R4, 5: q80dot512R5, 6: q80dot512R6}

// hasPackedKernels reports whether the CPU runs the packed kernels of dtype
// dt at its best level (q80x16N, q4kx16N, q5kx16N, q6kx16N, q3kx16N,
// q2kx16N, iq4xsx16N, q40x16N, q50x16N,
// iq4nlx16N: VPDPBUSD and VPDPWSSD on zmm; without AVX-512 VNNI the AVX2
// kernels of Q8_0, Q4_0, Q5_0 and IQ4_NL, and on AVX2-only CPUs those of
// Q4_K, Q5_K, Q3_K, Q2_K and IQ4_XS; packed.go).
func hasPackedKernels(dt tensor.DType) bool {
	s := specOf(dt, tensor.RowMajor)
	return s != nil && packedKernelsAt(s.layout, maxLevel) != nil
}

// packedFast reports whether a product with weights in packed layout l runs
// packed kernels at level lvl (else matMulUnpacked).
func packedFast(l tensor.Layout, lvl Level) bool {
	return q8Act.Load() && packedKernelsAt(l, lvl) != nil
}

// packedKernelsAt returns the packed kernels of layout l at level lvl (nil
// where there are none).
func packedKernelsAt(l tensor.Layout, lvl Level) []packedFn {
	switch packedLevel(l, lvl) {
	case LevelAVX512:
		return packedKernels[l]
	case LevelAVX2:
		return packedKernelsAVX2[l]
	}
	return nil
}

// packedLevel is the level whose packed kernels of layout l run at level
// lvl: LevelAVX512, LevelAVX2, or LevelGo for none.
func packedLevel(l tensor.Layout, lvl Level) Level {
	if q80Layout(l) {
		lvl = q80Level(lvl)
	}
	switch {
	case lvl >= LevelAVX512 && hasQ80 && maxLevel >= LevelAVX512:
		return LevelAVX512
	case lvl == LevelAVX2 && maxLevel >= LevelAVX2:
		return LevelAVX2
	}
	return LevelGo
}

// The packed kernels' tables by layout and input rows (packedKernels,
// packedKernelsAVX2 for the AVX2 kernels: no VNNI, VPMADDUBSW; Q5_K and
// Q6_K are packed there only when asked, packOnlyAsked) are in
// kerneltables_amd64.go, written by the generator from the kernels it emits.

// planPacked sets up a product with packed weights: each input row
// quantized as the row-major kernels of its type quantize it (q80rows512's
// tiles for Q8_0, quantizeQ8K's blocks for the K-quants). It reports false if a row
// holds an infinity or a NaN (the caller then runs the product unpacked).
func planPacked(c *callCtx, lvl Level) bool {
	j := &c.job
	if asQ80(j.w.DType) {
		if !planQ80Rows(c, q80Level(lvl)) {
			return false
		}
		j.q8.xstride = (j.q8.nb + 15) / 16 * q80rTileBytes
	} else {
		if !planQ8K(c) {
			return false
		}
		j.q8.xstride = j.q8.nb * q8xBlockBytes
	}
	usePacked(j, packedKernelsAt(j.w.Layout, lvl), specOf(j.w.DType, j.w.Layout), packedRows512)
	planCodes(j, lvl)
	planStreams(j, lvl)
	return true
}

// Unpacked codes. A packed kernel makes each block's integer codes from
// the packed bytes on every pass of its input rows over the weights (at
// most 3 input rows a pass for Q6_K, Q5_K and Q3_K). Where making them
// costs much beside the products (per 64 values of the 16 rows, Q6_K: 13
// operations, Q5_K: 5, Q3_K: 4, against one VPDPBUSD per input row), a
// product of codesMinRows input rows or more unpacks each worker's row
// block once into its scratch (q6kx16Unpack, q5kx16Unpack, q3kx16Unpack)
// and runs the kernels that load the codes instead (codesKernels in
// kerneltables_amd64.go: q6kx16CN<n>, q5kx16CN<n> and q3kx16CN<n>, up to
// 4 input rows a pass). They compute the same integer sums and the same
// float32 step per block as the packed kernels, so a row gets the same
// bits whether it is multiplied alone or among many
// (TestPackedMatchesRowMajor, TestCodesMatchPacked). Measured in
// docs/performance.md (session 35).

// codesMinRows is, by layout, the fewest input rows for which a product
// unpacks codes. BenchmarkCodes, one thread: Q6_K gains 4% (the LM head's
// shape) and 19% (in_proj's) at 16 input rows, and at 8 loses 14% and
// breaks even; Q5_K gains 25-33% at 16 and 11-25% at 8, but decoding 8
// sessions of the Q5_K_M file end to end was 6-7% slower with Q5_K from 8
// (bench --ab codes, one and two threads). A variable for tests and
// benchmarks.
var codesMinRows = [tensor.NumLayouts]int{tensor.Q6Kx16: 16, tensor.Q5Kx16: 16, tensor.Q3Kx16: 16}

// codesUnpackers and codesBlockBytes (the unpacking kernels and the bytes
// of a block they write, by layout) are in kerneltables_amd64.go, written by
// the generator.

// testHookCodes runs after packedCodesRange unpacked a row block (tests;
// set on one goroutine while no product runs).
var testHookCodes func()

// planCodes sets a packed product up to unpack codes (j.q8.codes) where
// its layout has kernels for them and its input rows make it pay.
func planCodes(j *mmJob, lvl Level) {
	j.q8.codes = nil
	if lvl < LevelAVX512 || codesUnpackers[j.w.Layout] == nil || j.n < codesMinRows[j.w.Layout] || noCodes.Load() {
		return
	}
	j.q8.codes = codesKernels[j.w.Layout]
}

// packedCodesRange is packedRowsRange with codes: the row block's groups
// (a partial last one included) unpacked into s, then as many input rows
// per pass over them as the codes kernels take.
func packedCodesRange(j *mmJob, s *scratch, r0, r1 int) {
	p := &j.q8
	l := j.w.Layout
	g0 := r0 / packRows
	groups := (r1 - r0 + packRows - 1) / packRows
	gb := p.nb * codesBlockBytes[l] // bytes of one unpacked group
	need := groups*gb + 64
	if cap(s.codes) < need {
		s.codes = make([]byte, need)
	}
	off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(s.codes))) & 63)
	buf := s.codes[off : off+groups*gb]
	codesUnpackers[l](&j.w.Data[g0*p.groupBytes], groups*p.nb, &buf[0])
	if testHookCodes != nil {
		testHookCodes()
	}
	packedPasses(j, p.codes, buf, gb, r0, r1)
}

// The two-stream kernels (streamKernels and streamKernelsAVX2 in
// kerneltables_amd64.go, written by the generator) take one and two input
// rows at the AVX-512 level, for Q8_0 and the types whose input rows are
// quantized as its, and for the K-quants Q4_K, Q5_K and Q6_K. One core
// reads memory faster from two distant places at once than from one
// (BenchmarkReadStreams), and a product of one or two
// input rows is bound by that read: q80x16S2N1 measured 1.15-1.2 times
// q80x16N1 (BenchmarkStreams, one thread, in_proj and expert shapes).
// q4kx16S2N2 and q5kx16S2N1 spread each run's software prefetches through
// its block: 1.13-1.17 and 1.05-1.09 times the one-run kernels on those
// shapes (Q5_K's two-row form does not fit the registers). With each
// block's prefetches issued together at its start, as the one-run kernels
// issue them, two runs were slower (scripts/streamexp shows the same on a
// synthetic loop). q4kx16S2N1 and q6kx16S2N1 (genQ4Kx16Shared,
// genQ6Kx16Shared) also compute the two runs' blocks together, so that one
// broadcast of the input serves both and each weight word is loaded once:
// in cache (L2) Q4_K went from 85 to 105 GB/s with it. From memory, one
// thread, the one-row Q4_K kernel gained 2-5% on the in_proj and expert
// shapes over the earlier two-run kernel; Q6_K's two runs are 1.07 times
// its one run on in_proj and the experts' down shape, 0.97 on the LM head's
// (the Q6_K two-run kernels before, without the shared loads, measured
// 0.6-0.8). End to end on the Q4_K_M file (session 29 in
// docs/performance.md) each gave 1-4% in decode.
//
// At the AVX2 level they take one input row (two runs of two input rows
// would not fit the 16 ymm registers). BenchmarkStreams at the AVX2 level, one thread, one run
// against two: Q8_0 1.1-1.15 times as fast on the in_proj and LM-head
// shapes, 1.07 on an expert's; Q4_0 and Q4_1 1.05 and 1.1 on in_proj,
// level on an expert's. IQ4_NL, Q5_0 and Q5_1 measured level on in_proj and
// 10-33% slower on an expert's, so they have none.

// maxStreamRows is the most input rows of a two-stream product.
const maxStreamRows = 2

// minRunRows is the fewest rows per run worth a two-stream kernel (of
// packed groups, or bf16rows512S2).
const minRunRows = 64

// twoRunBlocksPerThread is the fewest blocks per thread of a two-run
// product (rowBlockPer), against rowBlock's 4: a block of a two-run product
// reads two places at once, and shorter pieces of each restart the
// hardware's streams more often. At two threads it measured faster or level
// (BenchmarkStreams shapes and the shared expert's, temporary benchmark,
// two rounds): Q4_K 1536×1024 30-32 → 24-26 µs, 1536×512 17.4 → 12.4 µs,
// BF16 in_proj 411-427 → 383-385 µs, Q8_0 1536×512 21.6-21.7 → 18.4-19.9
// µs; at one thread level or faster.
const twoRunBlocksPerThread = 2

// useTwoRuns makes j a product of two runs of span rows each (mmJob.span),
// its blocks about fusedBlockBytes of both runs' weights, a multiple of
// align rows.
func useTwoRuns(j *mmJob, span, align int) {
	j.span = span
	j.rb = max(align, rowBlockPer(span, 2*j.rowBytes, fusedBlockBytes, twoRunBlocksPerThread)&^(align-1))
}

// planStreams makes a packed product of one or two input rows run its
// layout's two-stream kernel, if it has one: the whole groups cut into two
// runs of equal length (the first run's rows are the blocks; the last block
// also computes the rows after the runs, a group and a partial group at
// most).
func planStreams(j *mmJob, lvl Level) {
	if j.n > maxStreamRows {
		return
	}
	fn := streamKernelAt(j.w.Layout, lvl, j.n)
	span := j.w.Rows / packRows / 2 * packRows
	if ProductStreams() != 2 || fn == nil || span < minRunRows {
		return
	}
	j.q8.streams = fn
	useTwoRuns(j, span, packRows)
}

// streamKernelAt returns the two-stream kernel of layout l for n input
// rows (at most maxStreamRows) that level lvl runs, or nil.
func streamKernelAt(l tensor.Layout, lvl Level, n int) streamFn {
	switch packedLevel(l, lvl) {
	case LevelAVX512:
		return streamKernels[l][n]
	case LevelAVX2:
		return streamKernelsAVX2[l][n]
	}
	return nil
}

// hasStreamKernel reports whether layout l has a two-stream kernel for n
// input rows at level lvl.
func hasStreamKernel(l tensor.Layout, lvl Level, n int) bool {
	return n <= maxStreamRows && streamKernelAt(l, lvl, n) != nil
}

// planPair sets the packed product c (of j.w, one or two input rows) up
// as MatMulPairSerial's: its two-stream kernel with the whole of j.w as
// the first run and b, of the same type, layout and shape, as the second,
// written to outB. It reports false where that does not apply (row-major
// weights, no two-stream kernel, too few rows, an input row with an
// infinity or a NaN), and the caller makes two products.
func planPair(c *callCtx, lvl Level, b tensor.Matrix, outB []float32) bool {
	j := &c.job
	a := j.w
	if a.Layout == tensor.RowMajor || !packedFast(a.Layout, lvl) || j.n > maxStreamRows || ProductStreams() != 2 ||
		a.Rows%packRows != 0 || a.Rows < minRunRows {
		return false
	}
	fn := streamKernelAt(a.Layout, lvl, j.n)
	if fn == nil || !planPacked(c, lvl) {
		return false
	}
	j.q8.streams = fn
	useTwoRuns(j, a.Rows, packRows)
	// The second run's weights and results are wherever b and outB are:
	// the kernel adds these offsets to the first run's pointers.
	j.q8.pair = true
	j.q8.wspan = int(uintptr(unsafe.Pointer(unsafe.SliceData(b.Data))) - uintptr(unsafe.Pointer(unsafe.SliceData(a.Data))))
	j.q8.ospan = int(uintptr(unsafe.Pointer(unsafe.SliceData(outB))) - uintptr(unsafe.Pointer(unsafe.SliceData(j.out))))
	return true
}

// packedRowBlock is the rows per block of a product run by packed kernels:
// whole 16-row groups, about fusedBlockBytes of weights.
func packedRowBlock(j *mmJob) int {
	return max(packRows, rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)&^(packRows-1))
}

// packedRows512 computes rows [r0, r1) (whole groups but the last) for
// every input row, as many input rows per pass over the groups' weights as
// the kernels take: the whole groups straight into out, a partial last
// group through a buffer. With a two-stream kernel (planStreams), rows
// [r0, r1) and the same rows of the second run.
func packedRows512(j *mmJob, s *scratch, r0, r1, _, _ int) {
	p := &j.q8
	if p.codes != nil && p.streams == nil {
		packedCodesRange(j, s, r0, r1)
		return
	}
	if p.streams != nil {
		gb := p.groupBytes
		wspan, ospan := j.span/packRows*gb, 4*j.span
		if p.pair {
			wspan, ospan = p.wspan, p.ospan
		}
		p.streams(&j.w.Data[r0/packRows*gb], (r1-r0)/packRows, p.nb, &p.xq[0], p.xstride, &j.out[r0], 4*j.w.Rows, wspan, ospan)
		if r1 == j.span {
			packedRowsRange(j, 2*j.span, j.w.Rows)
		}
		return
	}
	packedRowsRange(j, r0, r1)
}

// packedRowsRange is packedRows512 on one run of rows.
func packedRowsRange(j *mmJob, r0, r1 int) {
	if r0 >= r1 {
		return
	}
	p := &j.q8
	g0 := r0 / packRows
	packedPasses(j, p.packed, j.w.Data[g0*p.groupBytes:], p.groupBytes, r0, r1)
}

// packedPasses runs the kernels fns (by input rows) on rows [r0, r1) of
// the product, whose groups (whole ones, then a partial last one) start
// at w, gb bytes apart, for every input row, as many input rows per pass
// as fns take: the whole groups straight into out, a partial last group
// through a buffer.
func packedPasses(j *mmJob, fns []packedFn, w []byte, gb, r0, r1 int) {
	p := &j.q8
	maxN := len(fns) - 1
	xs, rows := p.xstride, j.w.Rows
	g0, full := r0/packRows, (r1-r0)/packRows
	for i0 := 0; i0 < j.n; i0 += maxN {
		nn := min(maxN, j.n-i0)
		if full > 0 {
			fns[nn](&w[0], full, p.nb, &p.xq[i0*xs], xs, &j.out[i0*rows+g0*packRows], 4*rows)
		}
		if tail := r1 - r0 - full*packRows; tail > 0 {
			var tmp [8 * packRows]float32
			g := g0 + full
			fns[nn](&w[full*gb], 1, p.nb, &p.xq[i0*xs], xs, &tmp[0], 4*packRows)
			for i := 0; i < nn; i++ {
				copy(j.out[(i0+i)*rows+g*packRows:][:tail], tmp[i*packRows:])
			}
		}
	}
}

// planQ80 sets up the Q8_0 integer path (q80act.go): it quantizes the input
// rows, 16 per group, into c.xq.
func planQ80(c *callCtx, lvl Level) (ok, nonFinite bool) {
	j := &c.job
	lvl = q80Level(lvl)
	if !hasQ80KernelsAt(lvl) {
		return false, false
	}
	choice := q80Choice(j.w, j.n, j.inv)
	if lvl < LevelAVX512 && choice != q80None {
		choice = q80Rows
		if j.n >= q80PackMinRows256 {
			choice = q80Lanes
		}
	}
	if !q80Rewrites(j.w.DType) && choice != q80None {
		// Q4_1 and Q5_1 (no Q8_0 rewrite): their own kernels per input
		// row, or from q81PackMinRows rows 16-row groups packed as the
		// product goes.
		if !planQ80Rows(c, lvl) {
			return false, true
		}
		if j.n >= q81PackMinRows {
			spec := specOf(j.w.DType, tensor.RowMajor)
			j.q8.xstride = (j.q8.nb + 15) / 16 * q80rTileBytes
			usePacked(j, packedKernelsAt(spec.layout, lvl), spec, q8PackingBlock)
		}
		return true, false
	}
	switch choice {
	case q80None:
		return false, false
	case q80Rows:
		ok := planQ80Rows(c, lvl)
		return ok, !ok
	}
	if lvl < LevelAVX512 {
		// AVX2: many input rows run the packed kernels on 16-row groups
		// packed as the product goes.
		if !planQ80Rows(c, lvl) {
			return false, true
		}
		j.q8.xstride = (j.q8.nb + 15) / 16 * q80rTileBytes
		usePacked(j, packedKernelsAVX2[tensor.Q80x16], specOf(tensor.Q8_0, tensor.RowMajor), q80PackingBlock)
		return true, false
	}
	k := j.w.Cols
	nb := k / q80Values
	ng := (j.n + q80Group - 1) / q80Group
	gs := nb * q80xBlockBytes
	need := ng*gs + 64
	if cap(c.xq) < need {
		c.xq = make([]byte, need)
	}
	buf := c.xq[:need]
	off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(buf))) & 63)
	xq := buf[off : off+ng*gs]
	for g := 0; g < ng; g++ {
		x := j.x[g*q80Group*k:]
		if rows := j.n - g*q80Group; rows < q80Group {
			// The last group's missing rows quantize as zeros.
			c.xbuf = alignedF32(c.xbuf, q80Group*k)
			copy(c.xbuf, x[:rows*k])
			clear(c.xbuf[rows*k:])
			x = c.xbuf
		}
		if !quantQ80I512(unsafe.SliceData(x), 4*k, nb, &xq[g*gs]) {
			return false, true
		}
	}
	j.q8 = q8Plan{xq: xq, nb: nb}
	j.block = q80Block
	j.rb = rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)
	return true, false
}

// planQ80Rows sets up q80rows512 (q80rows256 at the AVX2 level): each
// input row quantized on its own (quantQ80R512's tiles, zero-padded). It
// reports false if a row holds an infinity or a NaN.
func planQ80Rows(c *callCtx, lvl Level) bool {
	j := &c.job
	k := j.w.Cols
	nb := k / q80Values
	xs := (nb + 15) / 16 * q80rTileBytes
	need := j.n*xs + 64
	if cap(c.xq) < need {
		c.xq = make([]byte, need)
	}
	buf := c.xq[:need]
	off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(buf))) & 63)
	xq := buf[off : off+j.n*xs]
	for i := 0; i < j.n; i++ {
		clear(xq[(i+1)*xs-q80rTileBytes : (i+1)*xs])
		if lvl < LevelAVX512 {
			if !quantQ80R256(&j.x[i*k], nb, &xq[i*xs]) {
				return false
			}
		} else if !quantQ80R512(&j.x[i*k], nb, &xq[i*xs]) {
			return false
		}
	}
	j.q8 = q8Plan{xq: xq, nb: nb}
	if lvl < LevelAVX512 {
		j.block = q80Rows256Block
		j.rb = rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)
		return true
	}
	j.block = q80RowsBlock
	// Whole groups of 16 rows per block (the kernel's unit).
	j.rb = max(16, rowBlock(j.w.Rows, j.rowBytes, fusedBlockBytes)&^15)
	return true
}

// q80RowsBlock runs q80rows512 on rows [r0, r1) for each input row.
func q80RowsBlock(j *mmJob, s *scratch, r0, r1, _, _ int) {
	p := &j.q8
	nt := (p.nb + 15) / 16
	xs := nt * q80rTileBytes
	s.f = alignedF32(s.f, 16*16*nt)
	// Q4_0, Q5_0 and IQ4_NL rows are read as they are (their own kernels),
	// the others as Q8_0 rows.
	rows := q80RowsFns[j.w.DType]
	w, ws := j.w.Data[r0*j.rowBytes:], j.rowBytes
	if rows == nil {
		rows = q80rows512
		w, ws = q80Weights(j, s, r0, r1)
	}
	for i := 0; i < j.n; i++ {
		rows(&w[0], ws, r1-r0, &p.xq[i*xs], p.nb, &s.f[0], &j.out[i*j.w.Rows+r0])
	}
}

// q80Rows256Block computes rows [r0, r1) for each input row on AVX2: with
// one input row q80rows256 (q40rows256 and iq4nlrows256 on their own rows),
// with more q80rows8x256 on groups of 8 rows and q80rows256 on the rest
// (the same bits).
func q80Rows256Block(j *mmJob, s *scratch, r0, r1, _, _ int) {
	p := &j.q8
	if f := q80Rows256Fns[j.w.DType]; f != nil && (j.n == 1 || !q80Rewrites(j.w.DType)) {
		// Q4_0, Q5_0 and IQ4_NL rows read as they are (Q4_1 and Q5_1
		// always: they have no Q8_0 rewrite).
		xs := (p.nb + 15) / 16 * q80rTileBytes
		for i := 0; i < j.n; i++ {
			f(&j.w.Data[r0*j.rowBytes], j.rowBytes, r1-r0, &p.xq[i*xs], p.nb, &j.out[i*j.w.Rows+r0])
		}
		return
	}
	w, ws := q80Weights(j, s, r0, r1)
	xs := (p.nb + 15) / 16 * q80rTileBytes
	g := (r1 - r0) / 8
	if j.n == 1 {
		g = 0
	}
	r8 := r0 + 8*g
	for i := 0; i < j.n; i++ {
		if g > 0 {
			q80rows8x256(&w[0], ws, g, &p.xq[i*xs], p.nb, &j.out[i*j.w.Rows+r0])
		}
		if r8 < r1 {
			q80rows256(&w[(r8-r0)*ws], ws, r1-r8, &p.xq[i*xs], p.nb, &j.out[i*j.w.Rows+r8])
		}
	}
}

// q80PackingBlock computes rows [r0, r1) (r0 a multiple of 16) of a
// row-major Q8_0 product on AVX2 with many input rows: each 16-row group is
// packed into the worker's scratch (as Pack packs it), then the packed
// kernels run it against every input row, so that the weights are read
// once per two input rows from cache, with the bits of q80rows256.
func q80PackingBlock(j *mmJob, s *scratch, r0, r1, _, _ int) {
	spec := specOf(tensor.Q8_0, tensor.RowMajor)
	for g := r0; g < r1; g += packRows {
		m := min(packRows, r1-g)
		w, _ := q80Weights(j, s, g, g+m)
		packedGroupAll(j, s, spec, tensor.Matrix{DType: tensor.Q8_0, Rows: m, Cols: j.w.Cols, Data: w}, g)
	}
}

// q80RowsFns are the one-input-row kernels of the types that have their
// own (nil: q80rows512 on rows rewritten as Q8_0 rows).
var q80RowsFns = [tensor.NumDTypes]func(w *byte, wstride, nrows int, xq *byte, nblocks int, tmp *float32, out *float32){
	tensor.Q4_0: q40rows512, tensor.IQ4_NL: iq4nlrows512, tensor.Q5_0: q50rows512, tensor.Q4_1: q41rows512, tensor.Q5_1: q51rows512,
	tensor.MXFP4: mxfp4rows512}

// q80Rows256Fns are the AVX2 one-input-row kernels of the types that have
// their own (nil: q80rows256 on rows rewritten as Q8_0 rows).
var q80Rows256Fns = [tensor.NumDTypes]func(w *byte, wstride, nrows int, xq *byte, nblocks int, out *float32){
	tensor.Q4_0: q40rows256, tensor.IQ4_NL: iq4nlrows256, tensor.Q5_0: q50rows256, tensor.Q4_1: q41rows256, tensor.Q5_1: q51rows256,
	tensor.MXFP4: mxfp4rows256}

// q80Weights returns rows [r0, r1) of the product's weights as Q8_0 rows and
// their stride: the weights' own bytes for Q8_0, else (asQ80's other types)
// the rows rewritten into the worker's scratch by the conv*Q80 assembly.
func q80Weights(j *mmJob, s *scratch, r0, r1 int) (w []byte, stride int) {
	if j.w.DType == tensor.Q8_0 {
		return j.w.Data[r0*j.rowBytes : r1*j.rowBytes], j.rowBytes
	}
	nb := j.w.Cols / q80Values
	stride = nb * tensor.Q8_0BlockBytes
	need := (r1 - r0) * stride
	if cap(s.conv) < need {
		s.conv = make([]byte, need)
	}
	w = s.conv[:need]
	conv := convQ80Fns[j.w.DType]
	for r := r0; r < r1; r++ {
		conv(&j.w.Data[r*j.rowBytes], nb, &w[(r-r0)*stride])
	}
	return w, stride
}

// convQ80Fns rewrite rows of the types asQ80 accepts as Q8_0 rows.
var convQ80Fns = [tensor.NumDTypes]func(src *byte, nblocks int, dst *byte){
	tensor.Q4_0: convQ40Q80, tensor.Q5_0: convQ50Q80, tensor.IQ4_NL: convIQ4NLQ80}

// q80Block computes rows [r0, r1) for every group: the weight rows' sums and
// scales first (q80prep512), then group by group (one group's activations
// stay in L1) the rows q80MaxRows at a time.
func q80Block(j *mmJob, s *scratch, r0, r1, _, _ int) {
	p := &j.q8
	nb, rows, n := p.nb, j.w.Rows, j.n
	nr := r1 - r0
	ps := (nb + 15) / 16 * 16 * 8 // bytes per row of q80prep512's output
	if cap(s.q80prep) < nr*ps {
		s.q80prep = make([]byte, nr*ps)
	}
	prep := s.q80prep[:nr*ps]
	w, ws := q80Weights(j, s, r0, r1)
	q80prep512(&w[0], ws, nr, nb, &prep[0], ps)
	gs := nb * q80xBlockBytes
	o := &s.q80o
	for g := 0; g*q80Group < n; g++ {
		ni := min(q80Group, n-g*q80Group)
		for r := r0; r < r1; r += q80MaxRows {
			rr := min(q80MaxRows, r1-r)
			q80Dots[rr](&w[(r-r0)*ws], ws, &p.xq[g*gs], nb, &prep[(r-r0)*ps], ps, &o[0])
			for i := 0; i < ni; i++ {
				dst := j.out[(g*q80Group+i)*rows+r:]
				for q := 0; q < rr; q++ {
					dst[q] = o[q*q80Group+i]
				}
			}
		}
	}
}
