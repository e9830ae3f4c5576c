package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- Q6_K repacked in 16-row groups: q6kx16N ----
//
// A group of 16 weight rows (tensor.Q6Kx16), per block of 256 values
// (q6kx16Block bytes, the 16 rows' blocks rearranged, nothing added):
//
//	[0, 32)             the 16 rows' d (f16)
//	[32+64j+4r, +4)     bytes 4j..4j+3 of row r's block, j < 52: the low
//	                    nibbles ql (j < 32), the high bit pairs qh (j < 48),
//	                    the int8 scales (j < 52)
//
// Half h of a block (values 128h..128h+127) takes ql words 16h..16h+15 and
// qh words 8h..8h+7 (of the qh bytes). qh word q holds, for the ql words q
// and q+8 of the half, the high bit pairs of their low nibbles (bits 0-1,
// 2-3) and of their high nibbles (bits 4-5, 6-7). Each pair is moved to
// bits 4-5 and merged with its nibble (VPTERNLOGD), giving four registers of
// 6-bit codes, each 4 values of each of the 16 rows (lane = weight row),
// which one VPDPBUSD per input row multiplies with the input's 4 bytes
// broadcast: the lanes sum a 16-value sub-block with no horizontal
// reduction. The sub-block sums are scaled by their int8 scales (VPMULLD)
// into I, the −32 offset taken off as 32·Σ sc·Σx over the sub-blocks
// (VPDPWSSD of the scales paired as int16 with the input's 16-value sums),
// and the block added to the lane's float32 sum as q6BlockScalar adds it for
// one row: the same bits as the row-major kernels.
//
// q6kx16N<n> computes groups consecutive groups against n input rows
// (xstride bytes apart), writing group g's 16 results for input row i at
// out + i·ostride + 64·g bytes.

const q6kx16Block = 16 * 210

// q6kPrefetch: each block prefetches the block this many bytes on (three
// blocks): 29 against 18 GB/s from memory at one input row (medians of five
// alternated runs, in_proj shape; one block ahead 25, two 27, four 29;
// PREFETCHNTA no better). The block's 54 prefetches are spread through its
// code (prefetchPart: at each of 8 or 16 steps its share) rather than
// issued together at its start: on a Zen 5 VM, one input row, one thread,
// 230-234 against 290-319 µs on the in_proj shape, 18-19 against 24-26 µs
// on an expert's, and 80-88% against 47-72% of the read probe on a 126 MB
// LM head (BenchmarkPacked, BenchmarkPackedStream, alternated runs). The
// same spreading measured level or slower for Q4_K and Q5_K (36 and 44
// lines a block), whose one-run kernels keep them together; the
// two-stream kernels spread them (genQKx16Streams, genQ6Kx16Shared).
const q6kPrefetch = 3 * q6kx16Block

// q6kx16MaxN is the most input rows per call (registers: per input row four
// sub-block sums, I, the offset and the float32 sum).
const q6kx16MaxN = 3

var (
	cQ6Top  [4]Mem // VPSHUFB: byte k of each dword to its top byte, the rest 0
	cQ6Pair [2]Mem // VPSHUFB: bytes 2a, 2a+1 of each dword to the high bytes of its two words
)

func genQ6Kx16Consts() {
	for k := 0; k < 4; k++ {
		var v []uint32
		for p := 0; p < 16; p++ {
			v = append(v, 0x00808080|uint32(4*(p%4)+k)<<24)
		}
		cQ6Top[k] = data32(fmt.Sprintf("q6top_%d", k), v...)
	}
	for a := 0; a < 2; a++ {
		var v []uint32
		for p := 0; p < 16; p++ {
			b := uint32(4*(p%4) + 2*a)
			v = append(v, 0x00800080|b<<8|(b+1)<<24)
		}
		cQ6Pair[a] = data32(fmt.Sprintf("q6pair_%d", a), v...)
	}
}

func genQ6Kx16(n int) {
	name := fmt.Sprintf("q6kx16N%d", n)
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked Q6_K weights with %d quantized input rows (see genQ6Kx16).", name, n), n)
	c0F, c30 := ZMM(), ZMM()
	VPBROADCASTD(cB0F, c0F)
	VPBROADCASTD(cB30, c30)
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, q6kPrefetch, 0, false)
	word := func(j int) Mem { return Mem{Base: wp, Disp: 32 + 64*j} }
	qh, s0 := ZMM(), ZMM()
	q6kx16Body(n, wp, xm, acc, q6kSource{
		scaleWord: func(k int) Mem { return word(48 + k) },
		codes: func(h, q int, t [4]VecVirtual) {
			VMOVDQU64(word(32+8*h+q), qh)
			q6kCodes(qh, word(16*h+q), word(16*h+q+8), c0F, c30, t, s0)
		},
		prefetch: true,
	})
	packedNextBlock(name, q6kx16Block, wp, xq, cnt)
	packedEnd(name, acc)
}

// ---- Q6_K codes unpacked once for many input rows: q6kx16CN ----
//
// At many input rows the q6kx16N kernels spend most of their work making
// the 6-bit codes (q6kCodes: 13 operations per 64 values of the 16 rows),
// once per pass of at most q6kx16MaxN input rows. q6kx16Unpack writes each
// block's codes out once, as q6kCodesBlock bytes:
//
//	[0, 32)                the 16 rows' d (f16), as in tensor.Q6Kx16
//	[32, 64)               unused, so that every register is 64-aligned
//	[64+64s, +64)          code register s = q6kCodeSlot(h, q, k): the
//	                       register t[k] that q6kCodes makes of the block's
//	                       qh word 8h+q (values 128h + 4q + 32k of the 16
//	                       rows, 4 each)
//	[64+4096+64k, +64)     the scale words 48+k of tensor.Q6Kx16
//
// and the q6kx16CN<n> kernels then load the codes instead of making them,
// and otherwise compute exactly what q6kx16N<n> computes (q6kx16Body): the
// same integer sums and the same float32 step per block, so the same bits.
// Measured in session 35 (docs/performance.md).

// q6kCodesBlock is the bytes of one block unpacked by q6kx16Unpack.
const q6kCodesBlock = 64 + 64*64 + 4*64

// q6kCodesMaxN is the most input rows per q6kx16CN kernel (registers: per
// input row four sub-block sums, I, the offset and the float32 sum, 28 at
// four rows, beside the four code registers: the constants and scratch of
// making the codes are not needed).
const q6kCodesMaxN = 4

// q6kCodeSlot is the slot of code register k of qh word 8h+q, in the order
// q6kx16Body takes them at two or more input rows (units of (half, h),
// then q within the half).
func q6kCodeSlot(h, q, k int) int { return ((2*(q/4)+h)*4+q%4)*4 + k }

// unpackBegin emits the head of an unpacking kernel name(w, nblocks, dst)
// of typ's packed blocks into their codes (bits: "6-bit", ...; see: the
// generator to read) and loads its parameters.
func unpackBegin(name, typ, bits, see string) (wp, cnt, dp GPVirtual) {
	TEXT(name, NOSPLIT, "func(w *byte, nblocks int, dst *byte)")
	Doc(fmt.Sprintf("%s unpacks nblocks consecutive blocks of repacked %s weights into their %s codes (see %s).", name, typ, bits, see))
	return ld("w"), ld("nblocks"), ld("dst")
}

// unpackEnd emits the end of an unpacking kernel's block loop (from
// name_blk): w and dst moved on a block (blockBytes packed, codesBytes
// unpacked), the next block, then the return.
func unpackEnd(name string, blockBytes, codesBytes int, wp, cnt, dp GPVirtual) {
	ADDQ(U32(blockBytes), wp)
	ADDQ(U32(codesBytes), dp)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
	VZEROUPPER()
	RET()
}

// codesBegin emits the head of the kernel name that runs typ's blocks
// unpacked by unpack with n input rows (packedBegin).
func codesBegin(name, typ, unpack, see string, n int) (wp GPVirtual, idx []GPVirtual) {
	return packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of %s weights unpacked by %s with %d quantized input rows (see %s).", name, typ, unpack, n, see), n)
}

// genQ6Kx16Unpack emits q6kx16Unpack(w, nblocks, dst): nblocks consecutive
// tensor.Q6Kx16 blocks (a run of whole groups) unpacked into dst as
// q6kCodesBlock bytes each.
func genQ6Kx16Unpack() {
	const name = "q6kx16Unpack"
	wp, cnt, dp := unpackBegin(name, "Q6_K", "6-bit", "genQ6Kx16Unpack")
	c0F, c30 := ZMM(), ZMM()
	VPBROADCASTD(cB0F, c0F)
	VPBROADCASTD(cB30, c30)
	word := func(j int) Mem { return Mem{Base: wp, Disp: 32 + 64*j} }
	Label(name + "_blk")
	d := YMM()
	VMOVDQU(Mem{Base: wp}, d)
	VMOVDQU(d, Mem{Base: dp})
	qh, s0 := ZMM(), ZMM()
	t := [4]VecVirtual{ZMM(), ZMM(), ZMM(), ZMM()}
	for h := 0; h < 2; h++ {
		for q := 0; q < 8; q++ {
			prefetchPart(wp, q6kPrefetch, q6kx16Block/64+1, 8*h+q, 16)
			VMOVDQU64(word(32+8*h+q), qh)
			q6kCodes(qh, word(16*h+q), word(16*h+q+8), c0F, c30, t, s0)
			for k := range t {
				VMOVDQU64(t[k], Mem{Base: dp, Disp: 64 + 64*q6kCodeSlot(h, q, k)})
			}
		}
	}
	for k := 0; k < 4; k++ {
		VMOVDQU64(word(48+k), qh)
		VMOVDQU64(qh, Mem{Base: dp, Disp: 64 + 64*64 + 64*k})
	}
	unpackEnd(name, q6kx16Block, q6kCodesBlock, wp, cnt, dp)
}

// genQ6Kx16Codes emits q6kx16CN<n>: q6kx16N<n> on blocks unpacked by
// q6kx16Unpack (groups of q6kCodesBlock-byte blocks).
func genQ6Kx16Codes(n int) {
	name := fmt.Sprintf("q6kx16CN%d", n)
	wp, idx := codesBegin(name, "Q6_K", "q6kx16Unpack", "genQ6Kx16Unpack", n)
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, 0, 0, false)
	q6kx16Body(n, wp, xm, acc, q6kSource{
		scaleWord: func(k int) Mem { return Mem{Base: wp, Disp: 64 + 64*64 + 64*k} },
		codes: func(h, q int, t [4]VecVirtual) {
			for k := range t {
				VMOVDQU64(Mem{Base: wp, Disp: 64 + 64*q6kCodeSlot(h, q, k)}, t[k])
			}
		},
	})
	packedNextBlock(name, q6kCodesBlock, wp, xq, cnt)
	packedEnd(name, acc)
}

// q6kSource is where q6kx16Body takes a block's codes and scales from: the
// scale words 48..51 of tensor.Q6Kx16 (scaleWord(0..3)), the four code
// registers of qh word 8h+q (codes), and whether it prefetches the
// tensor.Q6Kx16 block q6kPrefetch bytes on. The 16 rows' d is at the
// block's start either way.
type q6kSource struct {
	scaleWord func(k int) Mem
	codes     func(h, q int, t [4]VecVirtual)
	prefetch  bool
}

// q6kx16Body emits one block of genQ6Kx16's kernels (the block at wp, the
// input rows' block at xm, n input rows' sums acc), with its prefetches.
func q6kx16Body(n int, wp GPVirtual, xm func(i, disp int) Mem, acc []VecVirtual, src q6kSource) {
	// The offset: OFF_i = Σ_j sc_j·(Σ of the input's 16 values of sub-block
	// j), the scales paired as int16 against the input's int16 sums.
	off := make([]VecVirtual, n)
	for i := range off {
		off[i] = ZMM()
		VPXORD(off[i], off[i], off[i])
	}
	sw, t := ZMM(), ZMM()
	for p := 0; p < 8; p++ {
		VMOVDQU64(src.scaleWord(p/2), sw)
		VPSHUFB(cQ6Pair[p%2], sw, t)
		VPSRAW(U8(8), t, t)
		for i := 0; i < n; i++ {
			VPDPWSSD_BCST(xm(i, q8xBsum16+4*p), t, off[i])
		}
	}
	// I_i = Σ_j sc_j·(sub-block j's Σ q·q_x), units of four q's of a half
	// (eight sub-blocks' sums at one input row, four above), two units
	// interleaved at one input row for enough independent chains.
	isum := make([]VecVirtual, n)
	for i := range isum {
		isum[i] = ZMM()
		VPXORD(isum[i], isum[i], isum[i])
	}
	upp := max(1, 2/n) // units per pass
	dsub := make([][][4]VecVirtual, upp)
	for u := range dsub {
		dsub[u] = make([][4]VecVirtual, n)
		for i := range dsub[u] {
			for s := range dsub[u][i] {
				dsub[u][i][s] = ZMM()
			}
		}
	}
	t0, t1, t2, t3, s0 := ZMM(), ZMM(), ZMM(), ZMM(), ZMM()
	type unit struct{ h, half int }
	var units []unit
	for half := 0; half < 2; half++ {
		for h := 0; h < 2; h++ {
			units = append(units, unit{h, half})
		}
	}
	for u0 := 0; u0 < len(units); u0 += upp {
		for u := 0; u < upp; u++ {
			for i := 0; i < n; i++ {
				for s := 0; s < 4; s++ {
					VPXORD(dsub[u][i][s], dsub[u][i][s], dsub[u][i][s])
				}
			}
		}
		for qs := 0; qs < 4; qs++ {
			if src.prefetch {
				prefetchPart(wp, q6kPrefetch, q6kx16Block/64+1, u0/upp*4+qs, len(units)/upp*4)
			}
			for u := 0; u < upp; u++ {
				h, q := units[u0+u].h, 4*units[u0+u].half+qs
				src.codes(h, q, [4]VecVirtual{t0, t1, t2, t3})
				// Values 128h + 4q (t0), +32 (t1), +64 (t2), +96 (t3).
				for i := 0; i < n; i++ {
					d := dsub[u][i]
					VPDPBUSD_BCST(xm(i, 128*h+4*q), t0, d[0])
					VPDPBUSD_BCST(xm(i, 128*h+32+4*q), t1, d[1])
					VPDPBUSD_BCST(xm(i, 128*h+64+4*q), t2, d[2])
					VPDPBUSD_BCST(xm(i, 128*h+96+4*q), t3, d[3])
				}
			}
		}
		for u := 0; u < upp; u++ {
			h, half := units[u0+u].h, units[u0+u].half
			for s := 0; s < 4; s++ {
				j := 8*h + 2*s + half // the sub-block of dsub[u][i][s]
				VMOVDQU64(src.scaleWord(j/4), sw)
				VPSHUFB(cQ6Top[j%4], sw, t)
				VPSRAD(U8(24), t, t) // sc_j, sign-extended
				for i := 0; i < n; i++ {
					d := dsub[u][i][s]
					VPMULLD(t, d, d)
					VPADDD(d, isum[i], isum[i])
				}
			}
		}
	}
	// acc += float(I − 32·OFF)·(d·d_x) (q6BlockScalar).
	dw := ZMM()
	VCVTPH2PS(Mem{Base: wp}, dw)
	for i := 0; i < n; i++ {
		VPSLLD(U8(5), off[i], off[i])
		VPSUBD(off[i], isum[i], isum[i])
		scaleStep(VADDPS, xm(i, q8xD), dw, isum[i], acc[i], t, s0)
	}
}

// q6kCodes sets t to the four registers of 6-bit codes of one qh word and
// its two ql words (memory or registers): t[0] the low nibbles of ql0 with
// qh's bits 0-1, t[1] ql1's low nibbles with bits 2-3, t[2] ql0's high
// nibbles with bits 4-5, t[3] ql1's high nibbles with bits 6-7, each pair
// moved to bits 4-5 (s0 scratch).
func q6kCodes(qh VecVirtual, ql0, ql1 Op, c0F, c30 VecVirtual, t [4]VecVirtual, s0 VecVirtual) {
	VPSLLW(U8(4), qh, t[0]) // bits 0-1 to 4-5
	VPANDD(c30, t[0], t[0])
	VPSLLW(U8(2), qh, t[1]) // bits 2-3
	VPANDD(c30, t[1], t[1])
	VPANDD(c30, qh, t[2])   // bits 4-5
	VPSRLW(U8(2), qh, t[3]) // bits 6-7
	VPANDD(c30, t[3], t[3])
	VPTERNLOGD(U8(0xF8), ql0, c0F, t[0]) // |= low nibbles of ql0
	VPSRLW(U8(4), ql0, s0)
	VPTERNLOGD(U8(0xF8), s0, c0F, t[2]) // |= high nibbles of ql0
	VPTERNLOGD(U8(0xF8), ql1, c0F, t[1])
	VPSRLW(U8(4), ql1, s0)
	VPTERNLOGD(U8(0xF8), s0, c0F, t[3])
}

// q6kS2Prefetch: each of genQ6Kx16Shared's runs prefetches two blocks on
// (6.7 KB ahead in each run). Against three, on the BenchmarkStreams
// shapes, one input row, one and two threads (medians of three alternated
// runs, in two runs of the benchmark): level or 1-13% faster on every
// shape (the LM head's 29.7-31.2 → 31.2-31.9 GB/s on one thread, 59.2 →
// 61.1 on two).
const q6kS2Prefetch = 2 * q6kx16Block

// genQ6Kx16Shared emits q6kx16S2N1: two runs of Q6_K groups (see
// streams.go) against one input row, the runs' blocks computed together as
// genQ4Kx16Shared computes Q4_K's: each of the input's 4-byte broadcasts
// serves both runs, and each ql word is loaded once into a register (the
// one-run kernel reads it twice, as operands of VPTERNLOGD and VPSRLW).
// The same integer sums and float32 steps per group as q6kx16N1: the same
// bits.
func genQ6Kx16Shared() {
	name := "q6kx16S2N1"
	wp := streamsBegin(name, "Q6_K", 2, 1)
	c0F, c30 := ZMM(), ZMM()
	VPBROADCASTD(cB0F, c0F)
	VPBROADCASTD(cB30, c30)
	cnt, xq, acc := streamsLoopHead(name)
	x := func(disp int) Mem { return Mem{Base: xq, Disp: disp} }
	word := func(r, j int) Mem { return Mem{Base: wp[r], Disp: 32 + 64*j} }
	// The offsets, as q6kx16Body computes them.
	var off, isum [2]VecVirtual
	sw, t := ZMM(), ZMM()
	for r := range 2 {
		off[r], isum[r] = ZMM(), ZMM()
		VPXORD(off[r], off[r], off[r])
		VPXORD(isum[r], isum[r], isum[r])
		for p := 0; p < 8; p++ {
			VMOVDQU64(word(r, 48+p/2), sw)
			VPSHUFB(cQ6Pair[p%2], sw, t)
			VPSRAW(U8(8), t, t)
			VPDPWSSD_BCST(x(q8xBsum16+4*p), t, off[r])
		}
	}
	var dsub [2][4]VecVirtual // [run][sub-block of the unit]
	for r := range dsub {
		for s := range dsub[r] {
			dsub[r][s] = ZMM()
		}
	}
	var xb [4]VecVirtual
	for k := range xb {
		xb[k] = ZMM()
	}
	qh, ql0, ql1, t0, t1, t2, t3, s0 := ZMM(), ZMM(), ZMM(), ZMM(), ZMM(), ZMM(), ZMM(), ZMM()
	lines := q6kx16Block/64 + 1
	for unit := 0; unit < 4; unit++ {
		h, half := unit%2, unit/2
		for r := range dsub {
			for s := range dsub[r] {
				VPXORD(dsub[r][s], dsub[r][s], dsub[r][s])
			}
		}
		for qs := 0; qs < 4; qs++ {
			q := 4*half + qs
			for r := range 2 {
				prefetchPart(wp[r], q6kS2Prefetch, lines, unit*4+qs, 16)
			}
			for k := range xb {
				VPBROADCASTD(x(128*h+32*k+4*q), xb[k])
			}
			for r := range 2 {
				VMOVDQU64(word(r, 32+8*h+q), qh)
				VMOVDQU64(word(r, 16*h+q), ql0)
				VMOVDQU64(word(r, 16*h+q+8), ql1)
				q6kCodes(qh, ql0, ql1, c0F, c30, [4]VecVirtual{t0, t1, t2, t3}, s0)
				// Values 128h + 4q (t0), +32 (t1), +64 (t2), +96 (t3).
				for k, tk := range []VecVirtual{t0, t1, t2, t3} {
					VPDPBUSD(xb[k], tk, dsub[r][k])
				}
			}
		}
		for r := range 2 {
			for s := 0; s < 4; s++ {
				j := 8*h + 2*s + half // the sub-block of dsub[r][s]
				VMOVDQU64(word(r, 48+j/4), sw)
				VPSHUFB(cQ6Top[j%4], sw, t)
				VPSRAD(U8(24), t, t) // sc_j, sign-extended
				VPMULLD(t, dsub[r][s], dsub[r][s])
				VPADDD(dsub[r][s], isum[r], isum[r])
			}
		}
	}
	// acc += float(I − 32·OFF)·(d·d_x) (q6BlockScalar).
	for r := range 2 {
		dw := ZMM()
		VCVTPH2PS(Mem{Base: wp[r]}, dw)
		VPSLLD(U8(5), off[r], off[r])
		VPSUBD(off[r], isum[r], isum[r])
		scaleStep(VADDPS, x(q8xD), dw, isum[r], acc[r][0], t, s0)
		ADDQ(U32(q6kx16Block), wp[r])
	}
	streamsNextBlock(name, xq, cnt, acc)
}
