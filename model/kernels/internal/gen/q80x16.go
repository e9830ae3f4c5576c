package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- Q8_0 repacked in 16-row groups: q80x16N ----
//
// A group of 16 weight rows (tensor.Q80x16), per block of 32 values
// (q80x16Block bytes):
//
//	[0, 32)     the 16 rows' d (f16)
//	[32, 544)   64j+4r+k: value 4j+k of row r, as q+128 (unsigned)
//
// The input rows are quantized as for q80rows512 (q80rTile bytes per 16
// blocks: q, d_x, 128·Σq_x). Per block, register j of the group holds bytes
// 4j..4j+3 of all 16 rows (lane = weight row), and one VPDPBUSD per 64
// weight bytes multiplies them with the input row's 4 bytes broadcast: the
// lanes hold the block's sums Σ(q_w+128)·q_x with no horizontal reduction;
// taking off 128·Σq_x leaves the exact Σq_w·q_x. Then, per block in order,
// acc += float(sum)·(d_w·d_x), multiplied and added as q80dot512R and
// q80rows512 do: the same bits.
//
// q80x16N<n> computes groups consecutive groups against n input rows
// (xstride bytes apart), writing group g's 16 results for input row i at
// out + i·ostride + 64·g bytes.

const q80x16Block = 544

// q80x16MaxN is the most input rows per call: 8 weight registers, the
// scales, and per input row an accumulator and its block sum (two partial
// sums for one or two rows, whose chains are otherwise the only work).
const q80x16MaxN = 8

func genQ80x16(n int) { genX16Q80Act("Q80", n) }

// q40x16Block is a block of a Q4_0 or IQ4_NL 16-row group: the 16 d, then
// 4 words of nibbles per row.
const q40x16Block = 16 * 18

// q50x16Block is a block of a Q5_0 16-row group: the 16 d, then the word
// of fifth bits (qh) and 4 words of nibbles per row.
const q50x16Block = 16 * 22

var (
	cQ5Rep [4]Mem // VPSHUFB: byte m of each dword in all 4 of its bytes
	cQ5Nib [2]Mem // bytes 1, 2, 4, 8 (h = 0) or 16, 32, 64, 128 (h = 1) in each dword
)

var (
	cIQ4U Mem // the IQ4_NL codebook plus 128 (unsigned bytes) in every 16-byte lane
	cMXU  Mem // MXFP4's codebook (E2M1 doubled) plus 128 likewise
	cD2   Mem // dword 2
	cD128 Mem // dword 128
	cDFF  Mem // dword 0xFF
	cF1   Mem // float32 1
	cE8M0 Mem // dword 0x00200000: 2^-128, the E8M0 scale 0 halved (float32 bits)
)

// mxfp4Values is MXFP4's codebook: the E2M1 values doubled, as ggml keeps
// them (tensor.MXFP4Values).
var mxfp4Values = []int{0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12}

// codebookU returns a 16-value int8 codebook plus 128, as unsigned bytes in
// every 16-byte lane of a zmm register (VPSHUFB table).
func codebookU(name string, cb []int) Mem {
	var tab []uint32
	for l := 0; l < 4; l++ {
		for i := 0; i < 16; i += 4 {
			tab = append(tab, uint32(cb[i]+128)|uint32(cb[i+1]+128)<<8|uint32(cb[i+2]+128)<<16|uint32(cb[i+3]+128)<<24)
		}
	}
	return data32(name, tab...)
}

func genQ40x16Consts() {
	iq4 := []int{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
	cIQ4U = codebookU("iq4u", iq4)
	cMXU = codebookU("mxfp4u", mxfp4Values)
	cD2 = data32("d2", 2)
	cE8M0 = data32("e8m0min", 0x00200000)
	cD128 = data32("dword128", 128)
	cDFF = data32("dwordff", 0xFF)
	cF1 = data32("f32one", 0x3F800000)
	for m := 0; m < 4; m++ {
		var v []uint32
		for p := 0; p < 16; p++ {
			b := uint32(4*(p%4) + m)
			v = append(v, b*0x01010101)
		}
		cQ5Rep[m] = data32(fmt.Sprintf("q5rep_%d", m), v...)
	}
	cQ5Nib[0] = data32("q5nib_0", rep(0x08040201, 16)...)
	cQ5Nib[1] = data32("q5nib_1", rep(0x80402010, 16)...)
}

// genX16Q80Act emits the packed kernels whose input rows are quantized as
// Q8_0's (q80rows512's tiles): q80x16N<n> (typ "Q80"), and q40x16N<n> and
// iq4nlx16N<n> ("Q40", "IQ4NL": tensor.Q40x16 and IQ4NLx16, whose 4 words
// of nibbles per row give 8 registers of unsigned codes, the low nibbles
// values 4j.., the high ones 16+4j.., in the order of Q8_0's 8 words).
// Q4_0's codes q (0..15) make Σq·q_x, from which 8·Σq_x (128·Σq_x / 16)
// is taken; IQ4_NL's are looked up as codebook value + 128, from which
// 128·Σq_x is taken, as for Q8_0: each leaves Σ v·q_x with v the int8 value
// the Q8_0 rewrite of the block holds, and the float32 steps are Q8_0's, so
// the packed and row-major (rewritten) products give the same bits.
//
// Q4_1's and Q5_1's groups (tensor.Q41x16, Q51x16: the 16 d, the 16 m,
// then Q5_1's word of fifth bits and the 4 words of nibbles per row) give
// q41x16N<n> and q51x16N<n>: their unsigned codes' sums as they are, then
// q41rows512's float32 steps with the min's share (min81Step).
func genX16Q80Act(typ string, n int) {
	name, blockBytes, wp, idx := x16Begin(typ, "N", n, "(see genX16Q80Act)")
	wt := x16Consts(typ)
	cnt, xq, dc, bi := x16GroupHead(name)
	xm := func(base GPVirtual, i, disp int) Mem { return packedXMem(idx, base, i, disp) }
	acc := packedZeroAcc(n)
	Label(name + "_blk")
	if n >= x16PrefetchMinN {
		x16Prefetch(wp, blockBytes)
	}
	dw, m128 := x16Scales(wt, wp)
	words := x16Words(wt)
	wv := x16Codes(wt, func(k int) Op { return Mem{Base: wp, Disp: words + 64*k} })
	x16Rows(wt, n, wv, dw, m128, xm, xq, dc, acc)
	ADDQ(U32(blockBytes), wp)
	q80NextBlock(name, xq, dc, bi, cnt)
	packedEnd(name, acc)
}

// x16PrefetchBytes: the Q8_0 family's packed kernels of x16PrefetchMinN or
// more input rows prefetch, at each block, the block about this many bytes
// on (the K-quants' three Q4_K blocks). Without it, weights from memory ran
// at about half their speed in cache at 8 input rows (Q8_0 at 6448×1536:
// 200 against 410 GFLOP/s). Measured in docs/performance.md (session 35).
const x16PrefetchBytes = 3 * q4kx16Block

// x16PrefetchMinN: the fewest input rows whose kernels prefetch. At 2 to 4
// input rows the same prefetches were level or slower (Q4_0, MXFP4), or
// gained too little to tell from the noise (Q8_0); at one input row the
// hardware prefetchers keep up (session 17).
const x16PrefetchMinN = 5

// x16Prefetch emits the prefetches of the block of blockBytes about
// x16PrefetchBytes on from wp (every line it may touch).
func x16Prefetch(wp GPVirtual, blockBytes int) {
	dist := (x16PrefetchBytes + blockBytes - 1) / blockBytes * blockBytes
	for l := 0; l < (blockBytes+63)/64+1; l++ {
		PREFETCHT0(Mem{Base: wp, Disp: dist + 64*l})
	}
}

// x16GroupHead emits the head of a group of the Q8_0 family's packed
// kernels: the group label, then the block count, xq (the current block's q
// in the current tile), dc (its d_x and 128·Σq_x, at xq's tile + 512/576 +
// 4·b) and bi (the block's index within the tile).
func x16GroupHead(name string) (cnt, xq, dc, bi GPVirtual) {
	Label(name + "_grp")
	cnt = ld("nblocks")
	xq = ld("xq")
	dc = GP64()
	MOVQ(xq, dc)
	bi = GP64()
	XORQ(bi, bi)
	return cnt, xq, dc, bi
}

// x16Consts emits the constants the packed kernels of typ keep in
// registers and returns the type's description holding them.
func x16Consts(typ string) q80W {
	wt := q80W{typ: typ}
	if typ != "Q80" {
		wt.shift = ZMM() // here: 0x0F bytes
		VPBROADCASTD(cB0F, wt.shift)
	}
	switch typ {
	case "IQ4NL":
		wt.tab = ZMM()
		VMOVDQU64(cIQ4U, wt.tab)
	case "MXFP4":
		wt.tab = ZMM()
		VMOVDQU64(cMXU, wt.tab)
		wt.e8 = ZMM()
		VPBROADCASTD(cF1, wt.e8)
	}
	if wt.q5() {
		wt.c10 = ZMM()
		VPBROADCASTD(cB10, wt.c10)
	}
	return wt
}

// x16Words is the offset of a block's words (after the d, and the m).
func x16Words(wt q80W) int {
	switch {
	case wt.hasMin():
		return 64
	case wt.typ == "MXFP4":
		return 16 // after the 16 E8M0 bytes
	}
	return 32
}

// x16RawWords is the number of a block's 64-byte words (per 16 rows): 8
// of Q8_0's values, else 4 of nibbles, after Q5_0's and Q5_1's word of
// fifth bits.
func x16RawWords(wt q80W) int {
	switch {
	case wt.typ == "Q80":
		return 8
	case wt.q5():
		return 5
	}
	return 4
}

// x16Scales emits the float32 d (and 128·m, Q4_1 and Q5_1) of the block
// of a group at wp.
func x16Scales(wt q80W, wp GPVirtual) (dw, m128 VecVirtual) {
	dw = ZMM()
	if wt.typ == "MXFP4" {
		e8m0Half(Mem{Base: wp}, wt.e8, dw)
		return dw, nil
	}
	VCVTPH2PS(Mem{Base: wp}, dw)
	if wt.hasMin() {
		m128 = ZMM()
		VCVTPH2PS(Mem{Base: wp, Disp: 32}, m128)
		minScale(m128)
	}
	return dw, m128
}

// e8m0Half sets dw to the float32 values 2^(e−128) of the 16 E8M0 bytes e
// at m (tensor.E8M0Half, exactly): 1.0 (one) scaled by 2^(e−128) with
// VSCALEFPS, which rounds nothing here (e = 0 and 1 give the subnormals
// 2^−128 and 2^−127; Go leaves denormals on). A subnormal base (2^−128
// scaled by 2^e) would cost a microcode assist per block.
func e8m0Half(m Mem, one, dw VecVirtual) {
	e := ZMM()
	VPMOVZXBD(m, e)
	VPSUBD_BCST(cD128, e, e)
	VCVTDQ2PS(e, e)
	VSCALEFPS(e, one, dw)
}

// x16Codes emits a block's 8 registers of unsigned codes (lane = weight
// row), the values of Q8_0's 8 words in order, from its raw words
// word(0..x16RawWords-1) (memory or registers).
func x16Codes(wt q80W, word func(k int) Op) []VecVirtual {
	typ := wt.typ
	c0F := wt.shift
	nib := 0 // the first word of nibbles
	if wt.q5() {
		nib = 1 // after the fifth bits
	}
	wv := make([]VecVirtual, 8)
	var rep, qh VecVirtual
	if wt.q5() {
		if r, ok := word(0).(VecVirtual); ok {
			qh = r
		} else {
			qh = ZMM()
			VMOVDQU64(word(0), qh)
		}
	}
	for j := range wv {
		wv[j] = ZMM()
		if typ == "Q80" {
			if r, ok := word(j).(VecVirtual); ok {
				wv[j] = r
			} else {
				VMOVDQU64(word(j), wv[j])
			}
			continue
		}
		if j < 4 {
			VPANDD(word(nib+j), c0F, wv[j])
		} else {
			VPSRLW(U8(4), word(nib+j-4), wv[j])
			VPANDD(c0F, wv[j], wv[j])
		}
		if typ == "IQ4NL" || typ == "MXFP4" {
			VPSHUFB(wv[j], wt.tab, wv[j])
		}
		if wt.q5() {
			// Register j's values are 4j..4j+3 of the block (j < 4: low
			// nibbles; else high: 16+4(j−4) = 4j): their fifth bits are
			// bits 4j..4j+3 of qh, bits 4(j%2).. of its byte j/2.
			if j%2 == 0 {
				rep = ZMM()
				VPSHUFB(cQ5Rep[j/2], qh, rep)
			}
			k := K()
			VPTESTMB(cQ5Nib[j%2], rep, k)
			VPADDB(wt.c10, wv[j], k, wv[j])
		}
	}
	return wv
}

// x16Rows emits a block's sums and float32 steps for n input rows (acc[i]
// row i's), the block's codes in wv, its d (and 128·m) in dw (m128).
func x16Rows(wt q80W, n int, wv []VecVirtual, dw, m128 VecVirtual, xm func(base GPVirtual, i, disp int) Mem, xq, dc GPVirtual, acc []VecVirtual) {
	typ := wt.typ
	for i := 0; i < n; i++ {
		s0 := ZMM()
		VPXORD(s0, s0, s0)
		if n <= 2 {
			s1 := ZMM()
			VPXORD(s1, s1, s1)
			for j := 0; j < 8; j++ {
				s := s0
				if j%2 == 1 {
					s = s1
				}
				VPDPBUSD_BCST(xm(xq, i, 4*j), wv[j], s)
			}
			VPADDD(s1, s0, s0)
		} else {
			for j := 0; j < 8; j++ {
				VPDPBUSD_BCST(xm(xq, i, 4*j), wv[j], s0)
			}
		}
		if wt.hasMin() {
			f, t := ZMM(), ZMM()
			VCVTDQ2PS(s0, f)
			VMULPS_BCST(xm(dc, i, q80rD), dw, t) // d_w·d_x
			VMULPS(t, f, f)
			min81Step(m128, xm(dc, i, q80rC), xm(dc, i, q80rD), f, true)
			VADDPS(f, acc[i], acc[i])
			continue
		}
		if typ == "Q40" || typ == "Q50" {
			c := ZMM()
			VPBROADCASTD(xm(dc, i, q80rC), c)
			if typ == "Q40" {
				VPSRAD(U8(4), c, c) // 8·Σq_x
			} else {
				VPSRAD(U8(3), c, c) // 16·Σq_x
			}
			VPSUBD(c, s0, s0)
		} else {
			VPSUBD_BCST(xm(dc, i, q80rC), s0, s0)
		}
		f, t := ZMM(), ZMM()
		VCVTDQ2PS(s0, f)
		VMULPS_BCST(xm(dc, i, q80rD), dw, t) // d_w·d_x, as d_x·d_w (one rounding)
		VMULPS(t, f, f)
		VADDPS(f, acc[i], acc[i])
	}
}

// q80NextBlock moves a kernel reading q80rows512's tiles on by a block (the
// weights' pointer moved by the caller): xq to the next block's q, dc to its
// d_x and 128·Σq_x, bi counting the blocks of the tile, into the next tile
// after 16; then loops to name_blk while cnt blocks are left.
func q80NextBlock(name string, xq, dc, bi, cnt GPVirtual) {
	q80Advance(xq, dc, bi, 1, name+"_next")
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
}

// q80Advance moves xq, dc and bi (as q80NextBlock) on by k blocks (1, or
// a divisor of 16 that keeps a step within a tile), into the next tile
// when bi reaches 16; label is emitted after.
func q80Advance(xq, dc, bi GPVirtual, k int, label string) {
	if k == 1 {
		ADDQ(U8(32), xq)
		ADDQ(U8(4), dc)
		INCQ(bi)
	} else {
		ADDQ(U32(32*k), xq)
		ADDQ(U8(4*k), dc)
		ADDQ(U8(k), bi)
	}
	CMPQ(bi, U8(16))
	JNE(LabelRef(label))
	// Next tile: q moved 512 bytes into the tile, d/c 64.
	ADDQ(U32(q80rTile-512), xq)
	ADDQ(U32(q80rTile-64), dc)
	XORQ(bi, bi)
	Label(label)
}

// x16Begin emits the TEXT of the Q8_0 family's packed kernel of type typ
// ("Q80", "Q40", "IQ4NL") for n input rows, named <type>x16<suffix><n>,
// and returns its name, the size of a group's block and packedBegin's
// registers.
func x16Begin(typ, suffix string, n int, see string) (name string, blockBytes int, wp GPVirtual, idx []GPVirtual) {
	name, blockBytes = x16Name(typ, suffix, n), x16BlockBytes(typ)
	wp, idx = packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked %s weights with %d quantized input rows %s.", name, typ, n, see), n)
	return name, blockBytes, wp, idx
}

// x16Name is the name of the packed kernel of type typ ("Q80", "Q40",
// ...) with suffix and n ("N", n input rows; "S", n streams).
func x16Name(typ, suffix string, n int) string {
	return map[string]string{"Q80": "q80x16", "Q40": "q40x16", "IQ4NL": "iq4nlx16", "Q50": "q50x16", "Q41": "q41x16", "Q51": "q51x16", "MXFP4": "mxfp4x16"}[typ] + suffix + fmt.Sprint(n)
}

// x16BlockBytes is the size of a block of a 16-row group of type typ.
func x16BlockBytes(typ string) int {
	return map[string]int{"Q80": q80x16Block, "Q40": q40x16Block, "IQ4NL": q40x16Block, "Q50": q50x16Block, "Q41": 16 * 20, "Q51": 16 * 24, "MXFP4": 16 * 17}[typ]
}

// packedSig is the signature of the packed kernels (q80x16N, q4kx16N,
// q5kx16N, q6kx16N).
const packedSig = "func(w *byte, groups, nblocks int, xq *byte, xstride int, out *float32, ostride int)"

// packedBegin emits a packed kernel's TEXT and loads its weights pointer and
// the byte offsets of input rows 1..n-1 from input row 0 (idx[i] =
// i·xstride; idx[0] unused).
func packedBegin(name, doc string, n int) (wp GPVirtual, idx []GPVirtual) {
	TEXT(name, NOSPLIT, packedSig)
	Doc(doc)
	wp = ld("w")
	xs := ld("xstride")
	idx = make([]GPVirtual, n)
	for i := 1; i < n; i++ {
		idx[i] = GP64()
		if i == 1 {
			MOVQ(xs, idx[i])
		} else {
			IMUL3Q(U8(i), xs, idx[i])
		}
	}
	return wp, idx
}

// packedXMem is input row i's operand at base + disp (base: row 0's).
func packedXMem(idx []GPVirtual, base GPVirtual, i, disp int) Mem {
	if i == 0 {
		return Mem{Base: base, Disp: disp}
	}
	return Mem{Base: base, Index: idx[i], Scale: 1, Disp: disp}
}

// packedZeroAcc returns n zeroed accumulators (one per input row: lane =
// weight row of the group).
func packedZeroAcc(n int) []VecVirtual {
	acc := make([]VecVirtual, n)
	for i := range acc {
		acc[i] = ZMM()
		VXORPS(acc[i], acc[i], acc[i])
	}
	return acc
}

// packedLoopHead emits the loops' heads of a packed kernel: the group
// label, the block count and input pointer, the zeroed float32 sums (a zmm
// per input row, or with ymm two: acc[2i+h] for weight rows 8h..8h+7), the
// block label, and lines prefetches of the lines from wp+prefetch on (0: the
// kernel spreads them through its block with prefetchPart). xm addresses
// input row i's bytes at disp.
func packedLoopHead(name string, n int, idx []GPVirtual, wp GPVirtual, prefetch, lines int, ymm bool) (cnt, xq GPVirtual, xm func(i, disp int) Mem, acc []VecVirtual) {
	cnt, xq, xm = packedGroupHead(name, idx)
	if ymm {
		acc = make([]VecVirtual, 2*n)
		for i := range acc {
			acc[i] = YMM()
			VXORPS(acc[i], acc[i], acc[i])
		}
	} else {
		acc = packedZeroAcc(n)
	}
	packedBlockHead(name, wp, prefetch, lines)
	return cnt, xq, xm, acc
}

// packedGroupHead emits the group label and loads the block count and the
// input pointer (packedLoopHead's first part).
func packedGroupHead(name string, idx []GPVirtual) (cnt, xq GPVirtual, xm func(i, disp int) Mem) {
	Label(name + "_grp")
	cnt = ld("nblocks")
	xq = ld("xq")
	xm = func(i, disp int) Mem { return packedXMem(idx, xq, i, disp) }
	return cnt, xq, xm
}

// packedBlockHead emits the block label and the block's prefetches
// (packedLoopHead's last part).
func packedBlockHead(name string, wp GPVirtual, prefetch, lines int) {
	Label(name + "_blk")
	for l := 0; l < lines; l++ {
		PREFETCHT0(Mem{Base: wp, Disp: prefetch + 64*l})
	}
}

// prefetchPart emits part k of parts of the prefetches of the lines lines
// from wp+dist on: lines [k·lines/parts, (k+1)·lines/parts), for kernels
// that spread their prefetches through a block's code rather than issue
// them together at its start (q6kx16N: see q6kPrefetch).
func prefetchPart(wp GPVirtual, dist, lines, k, parts int) {
	for l := k * lines / parts; l < (k+1)*lines/parts; l++ {
		PREFETCHT0(Mem{Base: wp, Disp: dist + 64*l})
	}
}

// packedNextBlock moves the weights (blockBytes) and the quantized input
// rows (one q8xBlock) on by a block and loops to name_blk while blocks are
// left (the K-quant packed kernels).
func packedNextBlock(name string, blockBytes int, wp, xq, cnt GPVirtual) {
	ADDQ(U32(blockBytes), wp)
	ADDQ(U32(q8xBlock), xq)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
}

// scaleStep emits one block's float32 step of the integer kernels,
// acc = op(float32(isum)·(d_x·d), acc), d_x broadcast from dx (s and f
// scratch): the rounding q8BlockScalar and q6BlockScalar define.
func scaleStep(op func(...Op), dx Mem, d, isum, acc, s, f VecVirtual) {
	VMULPS_BCST(dx, d, s)
	VCVTDQ2PS(isum, f)
	VMULPS(s, f, f)
	op(f, acc, acc)
}

// packedEnd emits a packed kernel's group epilogue: the group's 16 results
// of input row i at out + i·ostride (acc[i], one zmm; or, from the AVX2
// kernels, acc[2i] and acc[2i+1], rows 0-7 and 8-15 in two ymm), out moved
// on 64 bytes, the next group (from name_grp), then the return.
func packedEnd(name string, acc []VecVirtual) {
	perRow := 1
	if acc[0].Size() == 32 {
		perRow = 2
	}
	op := ld("out")
	ost := ld("ostride")
	o := GP64()
	MOVQ(op, o)
	for i := 0; i < len(acc)/perRow; i++ {
		if i > 0 {
			ADDQ(ost, o)
		}
		for k := 0; k < perRow; k++ {
			VMOVUPS(acc[perRow*i+k], Mem{Base: o, Disp: 32 * k})
		}
	}
	nextGroup(name, op)
}

// nextGroup emits the end of a packed kernel's group: the out parameter
// (held in o) moved on 64 bytes, the next group (from name_grp), then the
// return.
func nextGroup(name string, o GPVirtual) {
	ADDQ(U8(64), o)
	Store(o, Param("out"))
	DECQ(paddr("groups"))
	JNZ(LabelRef(name + "_grp"))
	VZEROUPPER()
	RET()
}

// genX16Streams emits the two-stream kernel of n (1 or 2) input rows of a
// packed type whose input rows are quantized as Q8_0's (q80x16S2N1,
// q40x16S2N1, ...: see streams.go). Per block, the raw words of both
// runs' blocks are loaded first, interleaved (which measured 15% faster for
// Q8_0 than one run's block after the other's), then each run's block is
// computed as the one-run kernel computes it.
func genX16Streams(typ string, n int) {
	name, blockBytes := x16Name(typ, "S2N", n), x16BlockBytes(typ)
	wp := streamsBegin(name, typ, 2, n)
	idx := make([]GPVirtual, n)
	if n > 1 {
		idx[1] = ld("xstride")
	}
	wt := x16Consts(typ)
	cnt, xq, dc, bi := x16GroupHead(name)
	acc := [][]VecVirtual{packedZeroAcc(n), packedZeroAcc(n)}
	Label(name + "_blk")
	words, nw := x16Words(wt), x16RawWords(wt)
	raw := [2][]VecVirtual{make([]VecVirtual, nw), make([]VecVirtual, nw)}
	for k := range nw {
		for s := range 2 {
			raw[s][k] = ZMM()
			VMOVDQU64(Mem{Base: wp[s], Disp: words + 64*k}, raw[s][k])
		}
	}
	xm := func(base GPVirtual, i, disp int) Mem { return packedXMem(idx, base, i, disp) }
	for s := range 2 {
		dw, m128 := x16Scales(wt, wp[s])
		wv := x16Codes(wt, func(k int) Op { return raw[s][k] })
		x16Rows(wt, n, wv, dw, m128, xm, xq, dc, acc[s])
		ADDQ(U32(blockBytes), wp[s])
	}
	q80NextBlock(name, xq, dc, bi, cnt)
	streamsEnd(name, acc)
}
