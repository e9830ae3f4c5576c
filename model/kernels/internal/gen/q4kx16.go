package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- Q4_K repacked in 16-row groups: q4kx16N ----
//
// A group of 16 weight rows (tensor.Q4Kx16), per block of 256 values
// (q4kx16Block bytes, the 16 rows' blocks rearranged, nothing added):
//
//	[0, 32)       the 16 rows' d (f16)
//	[32, 64)      the 16 rows' dmin (f16)
//	[64, 256)     64k+4r: bytes 4+4k..7+4k of row r's block (k < 3: the
//	              packed 6-bit scales and mins)
//	[256, 2304)   256+512c+64g+4r: bytes 16+32c+4g..19+32c+4g of row r's
//	              block (c < 4, g < 8: the nibbles)
//
// The input rows are quantized as for the row-major integer kernels
// (q8xBlock bytes per block). Register (c, g) holds 4 nibble bytes of each
// of the 16 rows (lane = weight row): their low nibbles are values
// 64c+4g..64c+4g+3 (sub-block 2c), their high nibbles the same 32 further on
// (sub-block 2c+1), so one VPDPBUSD per nibble half and input row, against
// the input's 4 bytes broadcast, sums a sub-block in each lane with no
// horizontal reduction (the high nibbles are taken in place, as 16 times
// their value, and the low sub-blocks' scales multiplied by 16 to match;
// every term of the sum is then a multiple of 16, and it is divided back
// exactly). The sub-block sums are scaled by the 6-bit scales (VPMULLD)
// into I, the mins paired as int16 and multiplied with the
// input's 32-value sums (VPDPWSSD) into M, and the block added to the lane's
// float32 sum as q8BlockScalar adds it for one row: the same bits as the
// row-major kernels.
//
// q4kx16N<n> computes groups consecutive groups against n input rows
// (xstride bytes apart), writing group g's 16 results for input row i at
// out + i·ostride + 64·g bytes.

const q4kx16Block = 16 * 144

// q4kPrefetch: each block prefetches the block this many bytes on (three
// blocks). From memory at one input row the kernel otherwise waits for each
// block's lines once its instructions reach them: 28 against 18 GB/s
// (medians of five alternated runs, in_proj shape; one and two blocks ahead
// gave 24-25, four and six 24).
const q4kPrefetch = 3 * q4kx16Block

// q4kChains: about this many chunks run interleaved at one input row (fewer
// at more rows), for enough independent VPDPBUSD chains (measured: 4 beat 2
// and 1 by 15-25% at one row from memory).
const q4kChains = 4

// q4kx16MaxN is the most input rows per call (registers: per input row two
// sub-block sums, I, M and the float32 sum).
const q4kx16MaxN = 4

var (
	cQ4KSel  [4]Mem // VPSHUFB: byte k of each dword to the dword's low byte, the rest 0
	cQ4KPair [2]Mem // VPSHUFB: bytes 2a, 2a+1 of each dword to its two int16s
	cB3F     Mem    // dword 0x3F3F3F3F
)

func genQ4Kx16Consts() {
	for k := 0; k < 4; k++ {
		var v []uint32
		for p := 0; p < 16; p++ {
			v = append(v, 0x80808000|uint32(4*(p%4)+k))
		}
		cQ4KSel[k] = data32(fmt.Sprintf("q4ksel_%d", k), v...)
	}
	for a := 0; a < 2; a++ {
		var v []uint32
		for p := 0; p < 16; p++ {
			b := uint32(4*(p%4) + 2*a)
			v = append(v, 0x80008000|b|(b+1)<<16)
		}
		cQ4KPair[a] = data32(fmt.Sprintf("q4kpair_%d", a), v...)
	}
	cB3F = data32("b3f", 0x3F3F3F3F)
}

// ---- Q5_K repacked in 16-row groups: q5kx16N ----
//
// tensor.Q5Kx16 is Q4Kx16 with the fifth bits: per block of a 16-row
// group (q5kx16Block bytes), d and dmin, the scales' 3 words, then the 8
// words of qh (64+64k+4r for k in 3..10: bytes 16+4(k−3).. of row r's
// block), then the nibbles' 32 words (from 768). qh word g holds the fifth
// bits of the values 4g..4g+3 of every 32: bit 2c for sub-block 2c (the
// low nibbles of chunk c), bit 2c+1 for sub-block 2c+1. Each is moved to
// bit 4 and merged with its nibble (VPTERNLOGD); the high nibbles are
// shifted down first, since 16 times a 5-bit code does not fit a byte.
// The rest is q4kx16N's: the same float32 steps (q8BlockScalar), the same
// bits as the row-major kernels.

const q5kx16Block = 16 * 176

// q5kx16MaxN is the most input rows per q5kx16N call (q4kx16N's registers,
// and qh's).
const q5kx16MaxN = 3

// q5kPrefetch: as q4kPrefetch, three blocks on.
const q5kPrefetch = 3 * q5kx16Block

func genQ4Kx16(n int) { genQKx16(dQ4K, n) }

// ---- Q5_K codes unpacked once for many input rows: q5kx16CN ----
//
// As for Q6_K (genQ6Kx16Unpack): q5kx16Unpack writes each tensor.Q5Kx16
// block's 5-bit codes out once, as q5kCodesBlock bytes,
//
//	[0, 256)            the block's first 256 bytes: d, dmin and the
//	                    scales' 3 words, as in tensor.Q5Kx16
//	[256+64s, +64)      code register s = q5kCodeSlot(c, g, k): chunk c's
//	                    register (c, g) with its fifth bits, the low
//	                    nibbles' codes (k = 0, sub-block 2c) or the high
//	                    nibbles' (k = 1, sub-block 2c+1)
//
// and the q5kx16CN<n> kernels load them where q5kx16N<n> makes them
// (qkx16BlockFrom): the same integer sums and float32 steps, the same bits.

// q5kCodesBlock is the bytes of one block unpacked by q5kx16Unpack.
const q5kCodesBlock = 256 + 64*64

// q5kCodesMaxN is the most input rows per q5kx16CN kernel.
const q5kCodesMaxN = 4

// q5kCodeSlot is the slot of code register k of chunk c's register g.
func q5kCodeSlot(c, g, k int) int { return 2*(8*c+g) + k }

// genQ5Kx16Unpack emits q5kx16Unpack(w, nblocks, dst).
func genQ5Kx16Unpack() {
	const name = "q5kx16Unpack"
	wp, cnt, dp := unpackBegin(name, "Q5_K", "5-bit", "genQ5Kx16Unpack")
	c0F, _ := qkx16Consts(true)
	Label(name + "_blk")
	qh, t, lo, hi := ZMM(), ZMM(), ZMM(), ZMM()
	for k := 0; k < 4; k++ { // d, dmin, the scales
		VMOVDQU64(Mem{Base: wp, Disp: 64 * k}, t)
		VMOVDQU64(t, Mem{Base: dp, Disp: 64 * k})
	}
	for g := 0; g < 8; g++ {
		prefetchPart(wp, q5kPrefetch, q5kx16Block/64, g, 8)
		VMOVDQU64(Mem{Base: wp, Disp: 256 + 64*g}, qh)
		for c := 0; c < 4; c++ {
			wm := Mem{Base: wp, Disp: 768 + 512*c + 64*g}
			q5Bit(qh, 2*c, t, lo)
			VPTERNLOGD(U8(0xF8), wm, c0F, lo)
			q5Bit(qh, 2*c+1, t, hi)
			VPSRLW(U8(4), wm, t)
			VPTERNLOGD(U8(0xF8), t, c0F, hi)
			VMOVDQU64(lo, Mem{Base: dp, Disp: 256 + 64*q5kCodeSlot(c, g, 0)})
			VMOVDQU64(hi, Mem{Base: dp, Disp: 256 + 64*q5kCodeSlot(c, g, 1)})
		}
	}
	unpackEnd(name, q5kx16Block, q5kCodesBlock, wp, cnt, dp)
}

// genQ5Kx16Codes emits q5kx16CN<n>: q5kx16N<n> on blocks unpacked by
// q5kx16Unpack.
func genQ5Kx16Codes(n int) {
	name := fmt.Sprintf("q5kx16CN%d", n)
	wp, idx := codesBegin(name, "Q5_K", "q5kx16Unpack", "genQ5Kx16Unpack", n)
	c0F, cF0 := qkx16Consts(true)
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, 0, 0, false)
	qkx16BlockFrom(true, true, n, wp, xm, acc, c0F, cF0, 0, 0, 0)
	packedNextBlock(name, q5kCodesBlock, wp, xq, cnt)
	packedEnd(name, acc)
}

func genQ5Kx16(n int) { genQKx16(dQ5K, n) }

// genQKx16 emits q4kx16N<n> (d Q4_K) or q5kx16N<n> (Q5_K).
func genQKx16(d dtype, n int) {
	q5 := d == dQ5K
	name := fmt.Sprintf("%sx16N%d", qkx16Prefix(q5), n)
	blockBytes, prefetch, qs := qkx16Sizes(q5)
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked %s weights with %d quantized input rows (see genQ4Kx16).", name, d, n), n)
	c0F, cF0 := qkx16Consts(q5)
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, prefetch, blockBytes/64, false)
	qkx16Block(q5, n, wp, xm, acc, c0F, cF0, qs, 0, 0)
	packedNextBlock(name, blockBytes, wp, xq, cnt)
	packedEnd(name, acc)
}

// qkx16Prefix is the kernels' name prefix: q4k, or q5k for Q5_K.
func qkx16Prefix(q5 bool) string {
	if q5 {
		return "q5k"
	}
	return "q4k"
}

// qkx16Sizes are a Q4_K (q5: Q5_K) group block's bytes, its prefetch
// distance and the offset of its nibbles.
func qkx16Sizes(q5 bool) (blockBytes, prefetch, qs int) {
	if q5 {
		return q5kx16Block, q5kPrefetch, 768
	}
	return q4kx16Block, q4kPrefetch, 256
}

// qkx16Consts loads the constants of genQKx16's kernels: 0x0F bytes, and
// for Q4_K 0xF0 bytes.
func qkx16Consts(q5 bool) (c0F, cF0 VecVirtual) {
	c0F = ZMM()
	VPBROADCASTD(cB0F, c0F)
	if !q5 {
		cF0 = ZMM()
		VPTERNLOGD(U8(0x55), c0F, c0F, cF0) // ^0x0F0F0F0F: 0xF0 bytes
	}
	return c0F, cF0
}

// genQKx16Streams emits q4kx16S2N<n> (d Q4_K) or q5kx16S2N<n>: two runs
// of groups (see streams.go), n input rows, each block of run 0 then the
// same block of run 1, computed as genQKx16's kernels compute them (the
// same bits), with each run's prefetches (prefetch bytes on) spread
// through its block's code rather than issued together at its start.
// Q4_K's one-row form is genQ4Kx16Shared's.
func genQKx16Streams(d dtype, n int) {
	q5 := d == dQ5K
	name := fmt.Sprintf("%sx16S2N%d", qkx16Prefix(q5), n)
	blockBytes, prefetch, qs := qkx16Sizes(q5)
	wp := streamsBegin(name, d.String(), 2, n)
	idx := make([]GPVirtual, n)
	if n > 1 {
		idx[1] = ld("xstride")
	}
	c0F, cF0 := qkx16Consts(q5)
	Label(name + "_grp")
	cnt := ld("nblocks")
	xq := ld("xq")
	xm := func(i, disp int) Mem { return packedXMem(idx, xq, i, disp) }
	acc := [][]VecVirtual{packedZeroAcc(n), packedZeroAcc(n)}
	Label(name + "_blk")
	for r := range 2 {
		qkx16Block(q5, n, wp[r], xm, acc[r], c0F, cF0, qs, prefetch, blockBytes/64)
		ADDQ(U32(blockBytes), wp[r])
	}
	ADDQ(U32(q8xBlock), xq)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
	streamsEnd(name, acc)
}

// qkx16Block emits one block of genQKx16's kernels (weights at wp, the
// input rows' block at xm, n input rows' sums acc). With lines > 0 it also
// prefetches the lines lines from wp+prefetch on, spread over its eight
// steps.
func qkx16Block(q5 bool, n int, wp GPVirtual, xm func(i, disp int) Mem, acc []VecVirtual, c0F, cF0 VecVirtual, qs, prefetch, lines int) {
	qkx16BlockFrom(q5, false, n, wp, xm, acc, c0F, cF0, qs, prefetch, lines)
}

// qkx16BlockFrom is qkx16Block, with the 5-bit codes of a Q5_K block
// loaded from a block that q5kx16Unpack wrote (codes) instead of made
// from its fifth bits and nibbles.
func qkx16BlockFrom(q5, codes bool, n int, wp GPVirtual, xm func(i, disp int) Mem, acc []VecVirtual, c0F, cF0 VecVirtual, qs, prefetch, lines int) {
	scLo, scHi, msum := qkScalesMins(wp, n, xm, c0F)
	// I_i = Σ_j sc_j·(sub-block j's Σ q·q_x). The chunks run cpu at a time,
	// interleaved, so that there are about eight VPDPBUSD chains at once
	// (per chunk and input row two, each eight long).
	cpu := max(1, q4kChains/n)
	isum := make([]VecVirtual, n)
	for i := range isum {
		isum[i] = ZMM()
	}
	dsub := newDsub(cpu, n) // [chunk in unit][input row][half]
	lo, hi, sc := ZMM(), ZMM(), ZMM()
	var qh, t VecVirtual
	if q5 && !codes {
		qh, t = ZMM(), ZMM()
	}
	for c0 := 0; c0 < 4; c0 += cpu {
		zeroDsub(dsub[:cpu])
		for g := 0; g < 8; g++ {
			if lines > 0 {
				prefetchPart(wp, prefetch, lines, c0/cpu*8+g, 4/cpu*8)
			}
			if q5 && !codes {
				VMOVDQU64(Mem{Base: wp, Disp: 256 + 64*g}, qh)
			}
			for u := 0; u < cpu; u++ {
				c := c0 + u
				wm := Mem{Base: wp, Disp: qs + 512*c + 64*g}
				if codes {
					VMOVDQU64(Mem{Base: wp, Disp: 256 + 64*q5kCodeSlot(c, g, 0)}, lo)
					VMOVDQU64(Mem{Base: wp, Disp: 256 + 64*q5kCodeSlot(c, g, 1)}, hi)
				} else if q5 {
					// lo = nibble | bit 2c of qh at bit 4; hi likewise with
					// bit 2c+1 and the high nibble shifted down.
					q5Bit(qh, 2*c, t, lo)
					VPTERNLOGD(U8(0xF8), wm, c0F, lo)
					q5Bit(qh, 2*c+1, t, hi)
					VPSRLW(U8(4), wm, t)
					VPTERNLOGD(U8(0xF8), t, c0F, hi)
				} else {
					VPANDD(wm, c0F, lo)
					VPANDD(wm, cF0, hi) // 16·high nibble
				}
				for i := 0; i < n; i++ {
					VPDPBUSD_BCST(xm(i, 64*c+4*g), lo, dsub[u][i][0])
					VPDPBUSD_BCST(xm(i, 64*c+32+4*g), hi, dsub[u][i][1])
				}
			}
		}
		for u := 0; u < cpu; u++ {
			qkScaleChunk(q5, c0+u, scLo, scHi, sc, dsub[u], isum)
		}
	}
	for i := 0; !q5 && i < n; i++ {
		VPSRAD(U8(4), isum[i], isum[i]) // I (every term was a multiple of 16)
	}
	// acc += float(I)·(d·d_x); acc −= float(M)·(dmin·d_x) (q8BlockScalar).
	dw, dmw := ZMM(), ZMM()
	VCVTPH2PS(Mem{Base: wp}, dw)
	VCVTPH2PS(Mem{Base: wp, Disp: 32}, dmw)
	f, s := ZMM(), ZMM()
	for i := 0; i < n; i++ {
		scaleStep(VADDPS, xm(i, q8xD), dw, isum[i], acc[i], s, f)
		scaleStep(VSUBPS, xm(i, q8xD), dmw, msum[i], acc[i], s, f)
	}
}

// q5Bit sets dst to bit b of each byte of qh moved to bit 4 (the rest 0),
// with t as scratch.
func q5Bit(qh VecVirtual, b int, t, dst VecVirtual) {
	src := qh
	switch {
	case b < 4:
		VPSLLW(U8(4-b), qh, t)
		src = t
	case b > 4:
		VPSRLW(U8(b-4), qh, t)
		src = t
	}
	VPANDD_BCST(cB10, src, dst)
}

// newDsub allocates the sub-block sums of the packed K-quant kernels:
// [unit][input row][two sub-blocks].
func newDsub(units, n int) [][][2]VecVirtual {
	dsub := make([][][2]VecVirtual, units)
	for u := range dsub {
		dsub[u] = make([][2]VecVirtual, n)
		for i := range dsub[u] {
			dsub[u][i] = [2]VecVirtual{ZMM(), ZMM()}
		}
	}
	return dsub
}

// zeroDsub zeroes the sub-block sums of the units of dsub.
func zeroDsub(dsub [][][2]VecVirtual) {
	for _, d := range dsub {
		for _, di := range d {
			VPXORD(di[0], di[0], di[0])
			VPXORD(di[1], di[1], di[1])
		}
	}
}

// genQ4Kx16Shared emits q4kx16S2N1: genQKx16Streams's two runs of Q4_K
// groups against one input row, the runs' blocks computed together so that
// each of the input's 4-byte broadcasts serves both runs and each weight
// register is loaded once (the one-run kernels take the broadcast and the
// weights as memory operands of every instruction: two loads per VPDPBUSD,
// so a block is bound by the load ports in cache). The same integer sums
// and float32 steps per group as q4kx16N1: the same bits.
func genQ4Kx16Shared() {
	name := "q4kx16S2N1"
	wp := streamsBegin(name, "Q4K", 2, 1)
	c0F, cF0 := qkx16Consts(false)
	cnt, xq, acc := streamsLoopHead(name)
	x := func(disp int) Mem { return Mem{Base: xq, Disp: disp} }
	xm := func(_, disp int) Mem { return x(disp) }
	var scLo, scHi, msum, isum [2]VecVirtual
	for r := range 2 {
		var m []VecVirtual
		scLo[r], scHi[r], m = qkScalesMins(wp[r], 1, xm, c0F)
		msum[r], isum[r] = m[0], ZMM()
	}
	// Chunks at once: 2 chunks × 2 halves × 2 runs VPDPBUSD chains.
	const units = 2
	var dsub [units][2][2]VecVirtual // [unit][run][half]
	for u := range dsub {
		for r := range 2 {
			dsub[u][r] = [2]VecVirtual{ZMM(), ZMM()}
		}
	}
	xlo, xhi, w, lo, hi, sc := ZMM(), ZMM(), ZMM(), ZMM(), ZMM(), ZMM()
	lines := q4kx16Block / 64
	for c0 := 0; c0 < 4; c0 += units {
		for u := range dsub {
			for r := range 2 {
				VPXORD(dsub[u][r][0], dsub[u][r][0], dsub[u][r][0])
				VPXORD(dsub[u][r][1], dsub[u][r][1], dsub[u][r][1])
			}
		}
		for g := 0; g < 8; g++ {
			for r := range 2 {
				prefetchPart(wp[r], q4kPrefetch, lines, c0/units*8+g, 4/units*8)
			}
			for u := 0; u < units; u++ {
				c := c0 + u
				VPBROADCASTD(x(64*c+4*g), xlo)
				VPBROADCASTD(x(64*c+32+4*g), xhi)
				for r := range 2 {
					VMOVDQU64(Mem{Base: wp[r], Disp: 256 + 512*c + 64*g}, w)
					VPANDD(w, c0F, lo)
					VPANDD(w, cF0, hi) // 16·high nibble
					VPDPBUSD(xlo, lo, dsub[u][r][0])
					VPDPBUSD(xhi, hi, dsub[u][r][1])
				}
			}
		}
		for u := 0; u < units; u++ {
			c := c0 + u
			for r := range 2 {
				qkScaleChunk(false, c, scLo[r], scHi[r], sc, [][2]VecVirtual{dsub[u][r]}, isum[r:r+1])
			}
		}
	}
	f, s := ZMM(), ZMM()
	for r := range 2 {
		VPSRAD(U8(4), isum[r], isum[r]) // I (every term was a multiple of 16)
		dw, dmw := ZMM(), ZMM()
		VCVTPH2PS(Mem{Base: wp[r]}, dw)
		VCVTPH2PS(Mem{Base: wp[r], Disp: 32}, dmw)
		scaleStep(VADDPS, x(q8xD), dw, isum[r], acc[r][0], s, f)
		scaleStep(VSUBPS, x(q8xD), dmw, msum[r], acc[r][0], s, f)
		ADDQ(U32(q4kx16Block), wp[r])
	}
	streamsNextBlock(name, xq, cnt, acc)
}

// qkScaleChunk adds chunk c's two sub-block sums d[i] of each input row
// i, each times its 6-bit scale from scLo or scHi (sc scratch), to isum[i],
// the first chunk setting it. For Q4_K (!q5) the low sub-block's scale is
// taken 16 times, against its high nibbles taken in place.
func qkScaleChunk(q5 bool, c int, scLo, scHi, sc VecVirtual, d [][2]VecVirtual, isum []VecVirtual) {
	src := scLo
	if c >= 2 {
		src = scHi
	}
	for h := 0; h < 2; h++ {
		VPSHUFB(cQ4KSel[(2*c+h)%4], src, sc)
		if h == 0 && !q5 {
			VPSLLD(U8(4), sc, sc) // 16·sc against the low nibbles
		}
		for i := range d {
			if c == 0 && h == 0 {
				VPMULLD(sc, d[i][h], isum[i])
				continue
			}
			VPMULLD(sc, d[i][h], d[i][h])
			VPADDD(d[i][h], isum[i], isum[i])
		}
	}
}

// qkScalesMins decodes a Q4_K or Q5_K group block's scales, one byte per
// dword lane (scLo: sub-blocks 0-3, scHi: 4-7), and returns them with each
// input row's M_i = Σ_j m_j·(the input's 32-value sums of sub-block j), the
// mins paired as int16 against the input's int16 sums, pair by pair (xm
// addresses input row i's block).
func qkScalesMins(wp GPVirtual, n int, xm func(i, disp int) Mem, c0F VecVirtual) (scLo, scHi VecVirtual, msum []VecVirtual) {
	// sc[0..3] = u0 & 0x3f, m[0..3] = u1 & 0x3f,
	// sc[4..7] = (u2 & 0xf) | (u0 >> 6) << 4, m[4..7] = (u2 >> 4) | (u1 >> 6) << 4.
	u0, u1, u2 := ZMM(), ZMM(), ZMM()
	VMOVDQU64(Mem{Base: wp, Disp: 64}, u0)
	VMOVDQU64(Mem{Base: wp, Disp: 128}, u1)
	VMOVDQU64(Mem{Base: wp, Disp: 192}, u2)
	scHi, mHi := ZMM(), ZMM()
	VPSRLD(U8(2), u0, scHi)
	VPANDD_BCST(cB30, scHi, scHi)
	VPTERNLOGD(U8(0xF8), c0F, u2, scHi) // scHi |= u2 & 0x0f
	VPSRLD(U8(2), u1, mHi)
	VPANDD_BCST(cB30, mHi, mHi)
	VPSRLD(U8(4), u2, u2)
	VPTERNLOGD(U8(0xF8), c0F, u2, mHi) // mHi |= (u2 >> 4) & 0x0f
	scLo = u0
	VPANDD_BCST(cB3F, scLo, scLo)
	mLo := u1
	VPANDD_BCST(cB3F, mLo, mLo)
	msum = make([]VecVirtual, n)
	for i := range msum {
		msum[i] = ZMM()
		VPXORD(msum[i], msum[i], msum[i])
	}
	mp := ZMM()
	for p := 0; p < 4; p++ {
		src := mLo
		if p >= 2 {
			src = mHi
		}
		VPSHUFB(cQ4KPair[p%2], src, mp)
		for i := 0; i < n; i++ {
			VPDPWSSD_BCST(xm(i, q8xBsum32+4*p), mp, msum[i])
		}
	}
	return scLo, scHi, msum
}
