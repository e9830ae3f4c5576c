package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- Q3_K and Q2_K repacked in 16-row groups: q3kx16N, q2kx16N ----
//
// A group of 16 weight rows (tensor.Q3Kx16, Q2Kx16), per block of 256
// values, the 16 rows' blocks rearranged, nothing added:
//
//	Q3_K: [0, 32)       the 16 rows' d (f16)
//	      [32+64j+4r)   bytes 4j..4j+3 of row r's block, j < 27: hmask
//	                    (j < 8), the 2-bit fields qs (j < 24), the 12
//	                    bytes of 6-bit scales (j < 27)
//	Q2_K: [0, 32)       d, [32, 64) dmin
//	      [64+64j+4r)   bytes 4j..4j+3 of row r's block, j < 20: the 16
//	                    scale/min bytes (j < 4), then qs
//
// qs word 8h+g (half h, g < 8) holds 4 bytes whose 2-bit field f is values
// 128h+32f+4g..+3 of the row (sub-block 8h+2f+g/4); for Q3_K bit 4h+f of
// hmask word g is their third bit. Each field is moved to bits 0-1 (Q3_K:
// the third bit to bit 2, VPTERNLOGD merging them), giving a register of
// 4 codes of each of the 16 rows (lane = weight row), which one VPDPBUSD
// per input row multiplies with the input's 4 bytes broadcast: the lanes
// sum a sub-block with no horizontal reduction. Each sub-block sum fits an
// int16 (|Σ 16·7·127| < 2^15), so one VPDPWSSD with the sub-block's scale
// in the low int16 of each lane (high int16 0) scales and adds it to I.
//
// Q3_K: I − 4·OFF (OFF = Σ_j sc_j·Σ of the input's 16 values of sub-block
// j, the offset −4 of the codes), scaled as q6BlockScalar scales a block.
// Q2_K: I and M = Σ_j m_j·(the same sums), scaled as q8BlockScalar scales
// them. The same float32 steps per (row, block) as the row-major kernels
// (q8RowQ3K, q8RowQ2K): the same bits.
//
// q3kx16N<n> and q2kx16N<n> compute groups consecutive groups against n
// input rows (xstride bytes apart), writing group g's 16 results for input
// row i at out + i·ostride + 64·g bytes.

const (
	q3kx16Block = 16 * 110
	q2kx16Block = 16 * 84
)

// q23kx16MaxN is the most input rows per call (registers: per input row
// two sub-block sums per unit, I, the offset or M, and the float32 sum).
const q23kx16MaxN = 3

// q23kUnits: about this many (half, field) units run interleaved at one
// input row (fewer at more rows), for enough independent VPDPBUSD chains.
const q23kUnits = 4

var cQ3Sel [4]Mem // VPSHUFB: byte k of each dword to bits 8-15 of the dword, the rest 0

func genQ23Kx16Consts() {
	for k := 0; k < 4; k++ {
		var v []uint32
		for p := 0; p < 16; p++ {
			v = append(v, 0x80800080|uint32(4*(p%4)+k)<<8)
		}
		cQ3Sel[k] = data32(fmt.Sprintf("q3sel_%d", k), v...)
	}
}

func genQ3Kx16(n int) { genQ23Kx16(dQ3K, n) }
func genQ2Kx16(n int) { genQ23Kx16(dQ2K, n) }

// ---- Q3_K codes unpacked once for many input rows: q3kx16CN ----
//
// As for Q6_K (genQ6Kx16Unpack): q3kx16Unpack writes each tensor.Q3Kx16
// block's 3-bit codes out once, as q3kCodesBlock bytes,
//
//	[0, 32)             the 16 rows' d (f16); [32, 64) unused
//	[64+64k, +64)       the scale words 24+k of tensor.Q3Kx16 (k < 3)
//	[256+64s, +64)      code register s = q3kCodeSlot(h, f, g): qs word
//	                    8h+g's field f with its third bit from hmask
//
// and the q3kx16CN<n> kernels load them where q3kx16N<n> makes them
// (genQ23Kx16 with codes): the same integer sums and float32 steps, the
// same bits.

// q3kCodesBlock is the bytes of one block unpacked by q3kx16Unpack.
const q3kCodesBlock = 256 + 64*64

// q3kCodesMaxN is the most input rows per q3kx16CN kernel.
const q3kCodesMaxN = 4

// q3kCodeSlot is the slot of the codes of field f of qs word 8h+g.
func q3kCodeSlot(h, f, g int) int { return 8*(4*h+f) + g }

// q3kCodes sets q to the 3-bit codes of field f of Q3_K qs word 8h+g (word
// addresses a tensor.Q3Kx16 block's words; s scratch).
func q3kCodes(word func(j int) Mem, h, f, g int, c03, c04, q, s VecVirtual) {
	wm := word(8 + 8*h + g)
	// q = bit 4h+f of hmask word g at bit 2 | field f.
	switch b := 4*h + f; {
	case b < 2:
		VPSLLW(U8(2-b), word(g), q)
		VPANDD(c04, q, q)
	case b > 2:
		VPSRLW(U8(b-2), word(g), q)
		VPANDD(c04, q, q)
	default:
		VPANDD(word(g), c04, q)
	}
	if f == 0 {
		VPTERNLOGD(U8(0xF8), wm, c03, q)
	} else {
		VPSRLW(U8(2*f), wm, s)
		VPTERNLOGD(U8(0xF8), s, c03, q)
	}
}

// genQ3Kx16Unpack emits q3kx16Unpack(w, nblocks, dst).
func genQ3Kx16Unpack() {
	const name = "q3kx16Unpack"
	wp, cnt, dp := unpackBegin(name, "Q3_K", "3-bit", "genQ3Kx16Unpack")
	word := func(j int) Mem { return Mem{Base: wp, Disp: 32 + 64*j} }
	c03, c04 := ZMM(), ZMM()
	VPBROADCASTD(cB03, c03)
	VPBROADCASTD(cB04, c04)
	Label(name + "_blk")
	d := YMM()
	VMOVDQU(Mem{Base: wp}, d)
	VMOVDQU(d, Mem{Base: dp})
	q, s := ZMM(), ZMM()
	for k := 0; k < 3; k++ {
		VMOVDQU64(word(24+k), q)
		VMOVDQU64(q, Mem{Base: dp, Disp: 64 + 64*k})
	}
	lines := (q3kx16Block + 63) / 64
	for h := 0; h < 2; h++ {
		for f := 0; f < 4; f++ {
			prefetchPart(wp, 3*q3kx16Block, lines, 4*h+f, 8)
			for g := 0; g < 8; g++ {
				q3kCodes(word, h, f, g, c03, c04, q, s)
				VMOVDQU64(q, Mem{Base: dp, Disp: 256 + 64*q3kCodeSlot(h, f, g)})
			}
		}
	}
	unpackEnd(name, q3kx16Block, q3kCodesBlock, wp, cnt, dp)
}

// genQ3Kx16Codes emits q3kx16CN<n>: q3kx16N<n> on blocks unpacked by
// q3kx16Unpack.
func genQ3Kx16Codes(n int) { genQ23Kx16From(dQ3K, true, n) }

// genQ23Kx16 emits q3kx16N<n> (d Q3_K) or q2kx16N<n> (Q2_K).
func genQ23Kx16(d dtype, n int) { genQ23Kx16From(d, false, n) }

// genQ23Kx16From is genQ23Kx16, or with codes genQ3Kx16Codes.
func genQ23Kx16From(d dtype, codes bool, n int) {
	q3 := d == dQ3K
	name := fmt.Sprintf("q2kx16N%d", n)
	blockBytes, wbase, qs := q2kx16Block, 64, 4
	if q3 {
		name = fmt.Sprintf("q3kx16N%d", n)
		blockBytes, wbase, qs = q3kx16Block, 32, 8
	}
	prefetch, lines := 3*blockBytes, (blockBytes+63)/64
	var wp GPVirtual
	var idx []GPVirtual
	if codes {
		name = fmt.Sprintf("q3kx16CN%d", n)
		blockBytes, prefetch, lines = q3kCodesBlock, 0, 0
		wp, idx = codesBegin(name, "Q3_K", "q3kx16Unpack", "genQ3Kx16Unpack", n)
	} else {
		wp, idx = packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked %s weights with %d quantized input rows (see genQ23Kx16).", name, d, n), n)
	}
	word := func(j int) Mem { return Mem{Base: wp, Disp: wbase + 64*j} }
	if codes {
		// The scale words 24..26 only.
		word = func(j int) Mem { return Mem{Base: wp, Disp: 64 + 64*(j-24)} }
	}
	c03, c0F := ZMM(), ZMM()
	VPBROADCASTD(cB03, c03)
	VPBROADCASTD(cB0F, c0F)
	var c04, c20 VecVirtual
	if q3 {
		c04, c20 = ZMM(), ZMM()
		VPBROADCASTD(cB04, c04)
		VPBROADCASTD(cB20, c20)
	}
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, prefetch, lines, false)
	// sc[k]: per lane the scales of sub-blocks 4k..4k+3, one byte each
	// (Q3_K: int8, less 32; Q2_K: the low nibbles).
	var sc [4]VecVirtual
	off := make([]VecVirtual, n) // Q3_K: OFF_i; Q2_K: M_i
	for i := range off {
		off[i] = ZMM()
		VPXORD(off[i], off[i], off[i])
	}
	pair := ZMM()
	if q3 {
		// Scale j's low nibble is nibble j/8 of byte j%8, its high bits
		// bits 2(j/4), 2(j/4)+1 of byte 8+j%4.
		w0, w1, w2 := ZMM(), ZMM(), ZMM()
		VMOVDQU64(word(24), w0)
		VMOVDQU64(word(25), w1)
		VMOVDQU64(word(26), w2)
		for k := 0; k < 4; k++ {
			sc[k] = ZMM()
			lo := w0
			if k%2 == 1 {
				lo = w1
			}
			switch k { // the high bit pair to bits 4-5
			case 0:
				VPSLLD(U8(4), w2, sc[k])
			case 1:
				VPSLLD(U8(2), w2, sc[k])
			case 2:
				VMOVDQA64(w2, sc[k])
			case 3:
				VPSRLD(U8(2), w2, sc[k])
			}
			VPANDD_BCST(cB30, sc[k], sc[k])
			if k >= 2 {
				t := ZMM()
				VPSRLD(U8(4), lo, t)
				lo = t
			}
			VPTERNLOGD(U8(0xF8), c0F, lo, sc[k]) // |= the low nibble
			VPSUBB(c20, sc[k], sc[k])
		}
		// OFF_i: the scales paired as int16 against the input's 16-value
		// sums.
		for p := 0; p < 8; p++ {
			VPSHUFB(cQ6Pair[p%2], sc[p/2], pair)
			VPSRAW(U8(8), pair, pair)
			for i := 0; i < n; i++ {
				VPDPWSSD_BCST(xm(i, q8xBsum16+4*p), pair, off[i])
			}
		}
	} else {
		for k := 0; k < 4; k++ {
			sc[k] = ZMM()
			VPANDD(word(k), c0F, sc[k])
			mn := ZMM()
			VPSRLD(U8(4), word(k), mn)
			VPANDD(c0F, mn, mn)
			// M_i: the mins paired as int16 against the 16-value sums.
			for a := 0; a < 2; a++ {
				VPSHUFB(cQ4KPair[a], mn, pair)
				for i := 0; i < n; i++ {
					VPDPWSSD_BCST(xm(i, q8xBsum16+8*k+4*a), pair, off[i])
				}
			}
		}
	}
	isum := make([]VecVirtual, n)
	for i := range isum {
		isum[i] = ZMM()
		VPXORD(isum[i], isum[i], isum[i])
	}
	type unit struct{ h, f int }
	var units []unit
	for h := 0; h < 2; h++ {
		for f := 0; f < 4; f++ {
			units = append(units, unit{h, f})
		}
	}
	upp := max(1, q23kUnits/n) // units per pass
	dsub := newDsub(upp, n)
	s, q, scw := ZMM(), ZMM(), ZMM()
	for u0 := 0; u0 < len(units); u0 += upp {
		np := min(upp, len(units)-u0)
		zeroDsub(dsub[:np])
		for g := 0; g < 8; g++ {
			for u := 0; u < np; u++ {
				h, f := units[u0+u].h, units[u0+u].f
				wm := word(qs + 8*h + g)
				if codes {
					VMOVDQU64(Mem{Base: wp, Disp: 256 + 64*q3kCodeSlot(h, f, g)}, q)
				} else if q3 {
					q3kCodes(word, h, f, g, c03, c04, q, s)
				} else if f == 0 {
					VPANDD(wm, c03, q)
				} else {
					VPSRLW(U8(2*f), wm, q)
					VPANDD(c03, q, q)
				}
				for i := 0; i < n; i++ {
					VPDPBUSD_BCST(xm(i, 128*h+32*f+4*g), q, dsub[u][i][g/4])
				}
			}
		}
		for u := 0; u < np; u++ {
			h, f := units[u0+u].h, units[u0+u].f
			for e := 0; e < 2; e++ {
				j := 8*h + 2*f + e // the sub-block of dsub[u][i][e]
				if q3 {
					VPSHUFB(cQ3Sel[j%4], sc[j/4], scw)
					VPSRAW(U8(8), scw, scw) // sc_j in the low int16, 0 above
				} else {
					VPSHUFB(cQ4KSel[j%4], sc[j/4], scw)
				}
				for i := 0; i < n; i++ {
					VPDPWSSD(scw, dsub[u][i][e], isum[i])
				}
			}
		}
	}
	dw := ZMM()
	VCVTPH2PS(Mem{Base: wp}, dw)
	t, t2 := ZMM(), ZMM()
	if q3 {
		// acc += float(I − 4·OFF)·(d·d_x) (q6BlockScalar).
		for i := 0; i < n; i++ {
			VPSLLD(U8(2), off[i], off[i])
			VPSUBD(off[i], isum[i], isum[i])
			scaleStep(VADDPS, xm(i, q8xD), dw, isum[i], acc[i], t, t2)
		}
	} else {
		// acc += float(I)·(d·d_x); acc −= float(M)·(dmin·d_x) (q8BlockScalar).
		dmw := ZMM()
		VCVTPH2PS(Mem{Base: wp, Disp: 32}, dmw)
		for i := 0; i < n; i++ {
			scaleStep(VADDPS, xm(i, q8xD), dw, isum[i], acc[i], t, t2)
			scaleStep(VSUBPS, xm(i, q8xD), dmw, off[i], acc[i], t, t2)
		}
	}
	packedNextBlock(name, blockBytes, wp, xq, cnt)
	packedEnd(name, acc)
}

// ---- IQ4_XS repacked in 16-row groups: iq4xsx16N ----
//
// A group of 16 weight rows (tensor.IQ4XSx16), per block of 256 values
// (iq4xsx16Block bytes, the 16 rows' blocks rearranged, nothing added):
//
//	[0, 32)        the 16 rows' d (f16)
//	[32, 64)       the 16 rows' scales_h (the high bit pairs of the 8 scales)
//	[64+64j+4r)    bytes 4+4j..7+4j of row r's block, j < 33: scales_l
//	               (j = 0), then the nibbles
//
// Nibble word 4ib+g (sub-block ib, g < 4) holds 4 bytes whose low nibbles
// are values 32ib+4g..+3 of the row and whose high nibbles are the same 16
// further on; each is looked up in the IQ4_NL codebook as value + 128
// (unsigned, VPSHUFB) and multiplied with the input's 4 bytes broadcast
// (VPDPBUSD, lane = weight row), so the lanes sum Σ (kv+128)·q_x over the
// sub-block with no horizontal reduction. Scaled by ls−32 (VPMULLD: the
// sums exceed int16) into I, less 128·Σ_ib (ls_ib−32)·(the input's 32-value
// sums) (VPDPWSSD, the scales paired as int16), that is Σ (ls−32)·Σ kv·q_x
// exactly, and the block added to the lane's float32 sum as q6BlockScalar
// adds it for one row: the same bits as the row-major kernels
// (q8RowIQ4XS).

const iq4xsx16Block = 16 * 136

// iq4xsx16MaxN is the most input rows per call.
const iq4xsx16MaxN = 3

var cW16 Mem // dword 0x0000FFFF

func genIQ4XSx16Consts() {
	cW16 = data32("w16", 0xFFFF)
}

// genIQ4XSx16 emits iq4xsx16N<n>.
func genIQ4XSx16(n int) {
	name := fmt.Sprintf("iq4xsx16N%d", n)
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked IQ4_XS weights with %d quantized input rows (see genIQ4XSx16).", name, n), n)
	word := func(j int) Mem { return Mem{Base: wp, Disp: 64 + 64*j} }
	c0F, d0F, d30, tab := ZMM(), ZMM(), ZMM(), ZMM()
	VPBROADCASTD(cB0F, c0F)
	VPBROADCASTD(cNib, d0F)
	VPBROADCASTD(cD30, d30)
	VMOVDQU64(cIQ4U, tab)
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, 3*iq4xsx16Block, (iq4xsx16Block+63)/64, false)
	sh := ZMM()
	VPMOVZXWD(Mem{Base: wp, Disp: 32}, sh)
	off, isum := make([]VecVirtual, n), make([]VecVirtual, n)
	for i := range off {
		off[i], isum[i] = ZMM(), ZMM()
		VPXORD(off[i], off[i], off[i])
		VPXORD(isum[i], isum[i], isum[i])
	}
	upp := max(1, 4/n) // sub-blocks per pass
	dsub := newDsub(upp, n)
	lo, hi, ls, prev, t := ZMM(), ZMM(), ZMM(), ZMM(), ZMM()
	for ib0 := 0; ib0 < 8; ib0 += upp {
		zeroDsub(dsub[:upp])
		for g := 0; g < 4; g++ {
			for u := 0; u < upp; u++ {
				wm := word(1 + 4*(ib0+u) + g)
				VPANDD(wm, c0F, lo)
				VPSHUFB(lo, tab, lo)
				VPSRLD(U8(4), wm, hi)
				VPANDD(c0F, hi, hi)
				VPSHUFB(hi, tab, hi)
				for i := 0; i < n; i++ {
					VPDPBUSD_BCST(xm(i, 32*(ib0+u)+4*g), lo, dsub[u][i][0])
					VPDPBUSD_BCST(xm(i, 32*(ib0+u)+16+4*g), hi, dsub[u][i][1])
				}
			}
		}
		for u := 0; u < upp; u++ {
			ib := ib0 + u
			// ls = nibble ib of scales_l | bits 2ib, 2ib+1 of scales_h at
			// bits 4-5, less 32.
			xsHighBits(sh, ls, ib)
			VPANDD(d30, ls, ls)
			if ib == 0 {
				VPTERNLOGD(U8(0xF8), word(0), d0F, ls)
			} else {
				VPSRLD(U8(4*ib), word(0), t)
				VPTERNLOGD(U8(0xF8), t, d0F, ls)
			}
			VPSUBD_BCST(cD32, ls, ls)
			for i := 0; i < n; i++ {
				d := dsub[u][i]
				VPADDD(d[1], d[0], d[0])
				VPMULLD(ls, d[0], d[0])
				VPADDD(d[0], isum[i], isum[i])
			}
			// OFF_i: sub-blocks ib−1 and ib paired as int16 against the
			// input's 32-value sums.
			if ib%2 == 0 {
				VMOVDQA64(ls, prev)
				continue
			}
			VPSLLD(U8(16), ls, t)
			VPTERNLOGD_BCST(U8(0xF8), cW16, prev, t) // t |= prev & 0xFFFF
			for i := 0; i < n; i++ {
				VPDPWSSD_BCST(xm(i, q8xBsum32+4*(ib/2)), t, off[i])
			}
		}
	}
	// acc += float(I − 128·OFF)·(d·d_x) (q6BlockScalar).
	dw, t2 := ZMM(), ZMM()
	VCVTPH2PS(Mem{Base: wp}, dw)
	for i := 0; i < n; i++ {
		VPSLLD(U8(7), off[i], off[i])
		VPSUBD(off[i], isum[i], isum[i])
		scaleStep(VADDPS, xm(i, q8xD), dw, isum[i], acc[i], t, t2)
	}
	packedNextBlock(name, iq4xsx16Block, wp, xq, cnt)
	packedEnd(name, acc)
}

// xsHighBits sets dst to the dwords of sh (IQ4_XS's scales_h, one row per
// lane) shifted so that bits 2ib, 2ib+1 (sub-block ib's high scale bits)
// land at bits 4-5.
func xsHighBits(sh, dst VecVirtual, ib int) {
	switch {
	case 2*ib < 4:
		VPSLLD(U8(4-2*ib), sh, dst)
	case 2*ib > 4:
		VPSRLD(U8(2*ib-4), sh, dst)
	case dst.Size() == 64:
		VMOVDQA64(sh, dst)
	default:
		VMOVDQA(sh, dst)
	}
}

// ---- Q3_K and Q2_K packed in 16-row groups on AVX2: q3kx16AVX2N, q2kx16AVX2N ----
//
// tensor.Q3Kx16's and Q2Kx16's layouts (see genQ23Kx16), taken as two
// halves of 8 rows (bytes 32h.. of every 64-byte line, one dword lane per
// row), as genQKx16AVX2 takes Q4_K's. Per half, unit (h', f) and word g,
// the 2-bit fields (Q3_K: with their third bit) of 8 rows are multiplied
// with the input's 4 bytes broadcast by VPMADDUBSW; a sub-block's 4 words
// of pair sums add up in int16 (at most 4·2·7·127 = 7112), and one VPMADDWD
// with the sub-block's scale in both int16s of each dword (Q3_K: sign-
// extended) gives sc·(the sub-block's Σ q·q_x) per lane. Q3_K's −4 offset
// is taken off I as 4·Σ sc·(16-value sums); Q2_K's mins go to M. The same
// exact integers and float32 steps as every other Q3_K and Q2_K kernel.

// q23kx16AVX2MaxN is the most input rows per call.
const q23kx16AVX2MaxN = 2

var (
	cQ3Dup   [4]Mem // VPSHUFB: byte k of each dword to the high byte of both its int16s (VPSRAW 8 then sign-extends)
	cQ3PairY [2]Mem // VPSHUFB: bytes 2a, 2a+1 of each dword to the high bytes of its two int16s
	cB03Y    Mem    // 32 bytes 0x03
	cB04Y    Mem    // 32 bytes 0x04
	cB30Y    Mem    // 32 bytes 0x30
	cB20Y    Mem    // 32 bytes 0x20
)

func genQ23Kx16AVX2Consts() {
	for k := 0; k < 4; k++ {
		var v []uint32
		for p := 0; p < 8; p++ {
			b := uint32(4*(p%4) + k)
			v = append(v, 0x00800080|b<<8|b<<24)
		}
		cQ3Dup[k] = data32(fmt.Sprintf("q3dup_%d", k), v...)
	}
	for a := 0; a < 2; a++ {
		var v []uint32
		for p := 0; p < 8; p++ {
			b := uint32(4*(p%4) + 2*a)
			v = append(v, 0x00800080|b<<8|(b+1)<<24)
		}
		cQ3PairY[a] = data32(fmt.Sprintf("q3pairy_%d", a), v...)
	}
	cB03Y = data32("b03y", rep(0x03030303, 8)...)
	cB04Y = data32("b04y", rep(0x04040404, 8)...)
	cB30Y = data32("b30y", rep(0x30303030, 8)...)
	cB20Y = data32("b20y", rep(0x20202020, 8)...)
}

func genQ3Kx16AVX2(n int) { genQ23Kx16AVX2(dQ3K, n) }
func genQ2Kx16AVX2(n int) { genQ23Kx16AVX2(dQ2K, n) }

// genQ23Kx16AVX2 emits q3kx16AVX2N<n> (d Q3_K) or q2kx16AVX2N<n> (Q2_K).
func genQ23Kx16AVX2(d dtype, n int) {
	q3 := d == dQ3K
	name := fmt.Sprintf("q2kx16AVX2N%d", n)
	blockBytes, wbase, qs := q2kx16Block, 64, 4
	if q3 {
		name = fmt.Sprintf("q3kx16AVX2N%d", n)
		blockBytes, wbase, qs = q3kx16Block, 32, 8
	}
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked %s weights with %d quantized input rows on AVX2 (see genQ23Kx16AVX2).", name, d, n), n)
	Pragma("noescape")
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, 3*blockBytes, (blockBytes+63)/64, true) // acc[2i+h]: input row i, weight rows 8h..8h+7
	for h := 0; h < 2; h++ {
		word := func(j int) Mem { return Mem{Base: wp, Disp: wbase + 64*j + 32*h} }
		isum := make([]VecVirtual, n)
		var msum []VecVirtual // Q2_K: M
		for i := range isum {
			isum[i] = YMM()
			VPXOR(isum[i], isum[i], isum[i])
		}
		if !q3 {
			msum = make([]VecVirtual, n)
			for i := range msum {
				msum[i] = YMM()
				VPXOR(msum[i], msum[i], msum[i])
			}
		}
		var sc VecVirtual // the scales of the current 4 sub-blocks, one byte each per lane
		for hh := 0; hh < 2; hh++ {
			for f := 0; f < 4; f++ {
				k := 2*hh + f/2 // sub-blocks 4k..4k+3
				if f%2 == 0 {
					sc = YMM()
					if q3 {
						// sc_j: nibble of byte j%8 of scale words 24/25 |
						// bits 2(j/4).. of word 26, less 32.
						lo := word(24 + k%2)
						t := YMM()
						switch k {
						case 0:
							shift256(VPSLLD, U8(4), word(26), sc)
						case 1:
							shift256(VPSLLD, U8(2), word(26), sc)
						case 2:
							VMOVDQU(word(26), sc)
						case 3:
							shift256(VPSRLD, U8(2), word(26), sc)
						}
						VPAND(cB30Y, sc, sc)
						if k >= 2 {
							shift256(VPSRLD, U8(4), lo, t)
						} else {
							VMOVDQU(lo, t)
						}
						VPAND(cB0FY, t, t)
						VPOR(t, sc, sc)
						VPSUBB(cB20Y, sc, sc)
					} else {
						VMOVDQU(word(k), sc)
						VPAND(cB0FY, sc, sc)
						// M_i += the mins of sub-blocks 4k..4k+3 against the
						// input's 16-value sums, paired as int16.
						mn := YMM()
						shift256(VPSRLD, U8(4), word(k), mn)
						VPAND(cB0FY, mn, mn)
						for a := 0; a < 2; a++ {
							mp := YMM()
							VPSHUFB(cQ4KPair[a], mn, mp)
							for i := 0; i < n; i++ {
								xb := YMM()
								VPBROADCASTD(xm(i, q8xBsum16+8*k+4*a), xb)
								VPMADDWD(xb, mp, xb)
								VPADDD(xb, msum[i], msum[i])
							}
						}
					}
				}
				if q3 {
					// I_i −= 4·(sc_{2p}, sc_{2p+1})·(the input's 16-value
					// sums of the unit's two sub-blocks), p = 4hh+f.
					pair := YMM()
					VPSHUFB(cQ3PairY[f%2], sc, pair)
					VPSRAW(U8(8), pair, pair)
					for i := 0; i < n; i++ {
						xb := YMM()
						VPBROADCASTD(xm(i, q8xBsum16+4*(4*hh+f)), xb)
						VPMADDWD(xb, pair, xb)
						VPSLLD(U8(2), xb, xb)
						VPSUBD(xb, isum[i], isum[i])
					}
				}
				d16 := make([][2]VecVirtual, n)
				for g := 0; g < 8; g++ {
					wm := word(qs + 8*hh + g)
					q := YMM()
					if f == 0 {
						VMOVDQU(wm, q)
					} else {
						shift256(VPSRLW, U8(2*f), wm, q)
					}
					VPAND(cB03Y, q, q)
					if q3 {
						t := YMM()
						switch b := 4*hh + f; { // bit b of hmask word g to bit 2
						case b < 2:
							shift256(VPSLLW, U8(2-b), word(g), t)
						case b > 2:
							shift256(VPSRLW, U8(b-2), word(g), t)
						default:
							VMOVDQU(word(g), t)
						}
						VPAND(cB04Y, t, t)
						VPOR(t, q, q)
					}
					for i := 0; i < n; i++ {
						p := YMM()
						VPBROADCASTD(xm(i, 128*hh+32*f+4*g), p)
						VPMADDUBSW(p, q, p)
						e := g / 4
						if g%4 == 0 {
							d16[i][e] = p
							continue
						}
						VPADDW(p, d16[i][e], d16[i][e])
					}
				}
				for e := 0; e < 2; e++ {
					j := 8*hh + 2*f + e
					s := YMM()
					if q3 {
						VPSHUFB(cQ3Dup[j%4], sc, s)
						VPSRAW(U8(8), s, s)
					} else {
						VPSHUFB(cQ4KDup[j%4], sc, s)
					}
					for i := 0; i < n; i++ {
						VPMADDWD(s, d16[i][e], d16[i][e])
						VPADDD(d16[i][e], isum[i], isum[i])
					}
				}
			}
		}
		dw := YMM()
		VCVTPH2PS(Mem{Base: wp, Disp: 16 * h}, dw)
		var dmw VecVirtual
		if !q3 {
			dmw = YMM()
			VCVTPH2PS(Mem{Base: wp, Disp: 32 + 16*h}, dmw)
		}
		for i := 0; i < n; i++ {
			scaleStep256(VADDPS, xm(i, q8xD), dw, isum[i], acc[2*i+h])
			if !q3 {
				scaleStep256(VSUBPS, xm(i, q8xD), dmw, msum[i], acc[2*i+h])
			}
		}
	}
	packedNextBlock(name, blockBytes, wp, xq, cnt)
	packedEnd(name, acc)
}

// ---- IQ4_XS packed in 16-row groups on AVX2: iq4xsx16AVX2N ----
//
// tensor.IQ4XSx16's layout (see genIQ4XSx16) taken as two halves of 8
// rows (bytes 32h.. of every 64-byte line, one dword lane per row), as
// genQKx16AVX2 takes Q4_K's. Per half, sub-block ib and 4-byte word g, the
// low and then the high nibbles of 8 rows become their codebook values by
// VPSHUFB and go into VPMADDUBSW with llama.cpp's sign trick (|value| as
// the unsigned operand, the input's 4 bytes broadcast with the value's sign
// by VPSIGNB: a pair sum is at most 2·127·127). Those pair sums cannot add
// up in int16, so each goes straight into VPMADDWD with the sub-block's
// signed 6-bit scale in both int16s of every dword, and into the row's int32
// sum I. No codebook offset, so nothing is taken off: I is the exact
// integer of every other IQ4_XS kernel, and acc += float(I)·(d·d_x) is
// their float32 step (q6BlockScalar).
//
// The codebook values (nibbles, VPSHUFB, VPABSB) are built once per word
// for every input row of the call, so prefill's products take up to four
// rows per pass. From three rows the float32 sums live in the stack frame
// (added there once per half block) rather than in registers, which AVX2's
// sixteen could not hold beside the rows' int32 sums.

// iq4xsx16AVX2MaxN is the most input rows per call.
const iq4xsx16AVX2MaxN = 4

// iq4xsx16AVX2RegAcc is the most input rows whose float32 sums stay in
// registers (genIQ4XSx16AVX2).
const iq4xsx16AVX2RegAcc = 2

var (
	cD0FY Mem // 8 dwords 0x0F
	cD30Y Mem // 8 dwords 0x30
	cW32Y Mem // 16 words 32
)

func genIQ4XSx16AVX2Consts() {
	cD0FY = data32("d0fy", rep(0x0F, 8)...)
	cD30Y = data32("d30y", rep(0x30, 8)...)
	cW32Y = data32("w32y", rep(0x00200020, 8)...)
}

// genIQ4XSx16AVX2 emits iq4xsx16AVX2N<n>.
func genIQ4XSx16AVX2(n int) {
	name := fmt.Sprintf("iq4xsx16AVX2N%d", n)
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked IQ4_XS weights with %d quantized input rows on AVX2 (see genIQ4XSx16AVX2).", name, n), n)
	Pragma("noescape")
	c0F, tab := YMM(), YMM()
	VPBROADCASTD(cB0F, c0F)
	VMOVDQU(cIQ4Y, tab)
	prefetch, lines := 3*iq4xsx16Block, (iq4xsx16Block+63)/64
	var (
		cnt, xq GPVirtual
		xm      func(i, disp int) Mem
		acc     []VecVirtual // acc[2i+h]: input row i, weight rows 8h..8h+7
		frame   Mem          // from three rows: the sums in the stack frame, acc[2i+h] at 32(2i+h)
	)
	if n <= iq4xsx16AVX2RegAcc {
		cnt, xq, xm, acc = packedLoopHead(name, n, idx, wp, prefetch, lines, true)
	} else {
		frame = AllocLocal(64 * n)
		cnt, xq, xm = packedGroupHead(name, idx)
		zero := YMM()
		VXORPS(zero, zero, zero)
		for k := 0; k < 2*n; k++ {
			VMOVUPS(zero, frame.Offset(32*k))
		}
		packedBlockHead(name, wp, prefetch, lines)
	}
	for h := 0; h < 2; h++ {
		word := func(j int) Mem { return Mem{Base: wp, Disp: 64 + 64*j + 32*h} }
		sh := YMM() // scales_h, a word per lane
		VPMOVZXWD(Mem{Base: wp, Disp: 32 + 16*h}, sh)
		isum := make([]VecVirtual, n)
		for ib := 0; ib < 8; ib++ {
			// ls: nibble ib of scales_l | bits 2ib, 2ib+1 of scales_h at
			// bits 4-5, less 32, in both int16s of each dword.
			ls, t := YMM(), YMM()
			xsHighBits(sh, t, ib)
			VPAND(cD30Y, t, t)
			if ib == 0 {
				VMOVDQU(word(0), ls)
			} else {
				shift256(VPSRLD, U8(4*ib), word(0), ls)
			}
			VPAND(cD0FY, ls, ls)
			VPOR(t, ls, ls)
			VPSLLD(U8(16), ls, t)
			VPOR(t, ls, ls)
			VPSUBW(cW32Y, ls, ls)
			for g := 0; g < 4; g++ {
				wm := word(1 + 4*ib + g)
				for k := 0; k < 2; k++ {
					q, a := YMM(), YMM()
					nibbleHalf256(wm, k, c0F, q)
					VPSHUFB(q, tab, q)
					VPABSB(q, a)
					for i := 0; i < n; i++ {
						p := YMM()
						VPBROADCASTD(xm(i, 32*ib+16*k+4*g), p)
						VPSIGNB(q, p, p)
						VPMADDUBSW(p, a, p)
						maddAcc256(ls, p, &isum[i])
					}
				}
			}
		}
		dw := YMM()
		VCVTPH2PS(Mem{Base: wp, Disp: 16 * h}, dw)
		for i := 0; i < n; i++ {
			if acc != nil {
				scaleStep256(VADDPS, xm(i, q8xD), dw, isum[i], acc[2*i+h])
				continue
			}
			f := YMM()
			VMOVUPS(frame.Offset(32*(2*i+h)), f)
			scaleStep256(VADDPS, xm(i, q8xD), dw, isum[i], f)
			VMOVUPS(f, frame.Offset(32*(2*i+h)))
		}
	}
	packedNextBlock(name, iq4xsx16Block, wp, xq, cnt)
	if acc == nil {
		acc = make([]VecVirtual, 2*n)
		for k := range acc {
			acc[k] = YMM()
			VMOVUPS(frame.Offset(32*k), acc[k])
		}
	}
	packedEnd(name, acc)
}
