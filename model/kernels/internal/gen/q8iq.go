package main

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// Integer kernels of the i-quants of 1 to 3 bits (IQ2_XXS, IQ2_XS, IQ2_S,
// IQ3_XXS, IQ3_S, IQ1_S, IQ1_M) on 8-bit activations (AVX-512 BW + VNNI,
// and the BW twins): q8dot512<dtype>N<N>, the signature and activations of
// genQ8.
//
// Each block is taken in its integer form (tensor.IQInts): value j is
// d·k·ls[j/16]·w[j], w the signed lattice values, ls the odd sub-block
// scales, k a power of two. Per chunk of 64 values the kernel builds the
// magnitudes |w| as unsigned bytes and the 64 signs as a mask:
//
//   - the lattice entries come from the package's copies of the tables
//     (iq_amd64.go): where an index is one byte of the block (IQ2_XXS,
//     IQ3_XXS) or a masked u16 (IQ2_XS), by scalar loads inserted into the
//     vector (latticeEntries); where it has high bits elsewhere in the
//     block (IQ2_S, IQ3_S, IQ1_S, IQ1_M), the indices are built in a vector
//     and the entries gathered (VPGATHERDQ: 8 entries of 8 values; VPGATHERDD
//     for IQ3_S's 4-value entries). Measured per type, whichever was faster
//     on the 6448x1536 product at one input row (AMD Zen 5, whose gathers
//     are microcoded; two A/B runs of 3 and 4 alternated rounds): scalar
//     loads 1.19-1.33x the gather for IQ2_XXS, 1.11-1.38x for IQ2_XS,
//     1.40-1.50x for IQ3_XXS, and 0.88-0.98x for the others;
//   - the signs are either sign bytes in the block (IQ2_S, IQ3_S: the mask
//     is loaded as it is) or 7-bit indices whose eighth bit is their parity
//     (IQ2_XXS, IQ2_XS, IQ3_XXS: PDEP spreads 8 of them over the bytes of a
//     general register, a shift-and-xor ladder computes the parities);
//   - IQ1_S and IQ1_M's values are −1, 0 or 1 plus ±1/8. Their kernels
//     need no signs (iq1Sums): IQ1_S's bytes are ls·(g+1) and IQ1_M's
//     (w + 9)/2, with VNNI times ls by a VPSHUFB table per 16 values
//     (without, IQ1_M's come from a table indexed with the delta's sign
//     bit); what the offsets and the ±1/8 add is taken off per block from
//     the activations' group sums.
//
// Otherwise, as q8RowIQ4XS, x is negated where w is negative (masked
// VPSUBB), then VPMADDUBSW of |w| with it and VPMADDWD/VPDPWSSD with the
// scales as int16 give the exact Σ ls·Σ w·q_x; |w| ≤ 62, so no pair
// saturates. The block ends as q6BlockScalar, with d·k for d; for 3 to 16
// input rows the rows' sums are reduced and scaled together
// (blockScalarRows), lane by lane with the same roundings.

// q8IQDtypes are the i-quant types with integer kernels.
var q8IQDtypes = []dtype{dIQ2XXS, dIQ2XS, dIQ2S, dIQ3XXS, dIQ3S, dIQ1S, dIQ1M}

// q8IQMaxN is the most input rows per AVX-512 i-quant kernel: building a
// chunk's magnitudes and signs (the gathers, the sign masks) costs several
// times what one input row's multiply-adds do, so a kernel shares it among
// up to 16 rows (prefill), whose sums then fill one zmm (reduceRows).
const q8IQMaxN = 16

var (
	cIQ7       Mem // dword 7
	cIQ15      Mem // dword 15
	cIQ15W     Mem // dword 0x000F000F (word 15s)
	cIQ7W      Mem // dword 0x00070007 (word 7s)
	cIQB1      Mem // dword 0x01010101 (byte 1s)
	cIQ1       Mem // dword 1
	cIQ1W      Mem // dword 0x00010001 (word 1s)
	cIQShS     Mem // dwords 0, 2, .., 14: IQ2_S's high index bits of a chunk
	cIQShS3    Mem // dwords 0..15: IQ3_S's ninth index bits of a chunk
	cIQSh1S    Mem // dwords 0, 3, 6, 9, 16, 19, 22, 25: IQ1_S's high index bits
	cIQSh4     Mem // dwords 0, 4, .., 28: nibbles
	cIQ1SPat   Mem // dword 0x02010201: IQ1_S's table bytes ls, 2ls (iq1Sums)
	cIQ1SPat8  Mem // dword 0x10081008: the same times 8 (with VNNI)
	cIQ1MPat   Mem // qword: IQ1_M's table bytes 0, 4ls, 8ls, 0, ls, 5ls, 9ls, 0
	cIQB5      Mem // dword 0x05050505
	cIQ1MNeg   Mem // qwords 1<<3, 1<<7, .., 1<<31: IQ1_M's delta signs of a chunk
	cIQ8W      Mem // dword 0x00080008 (word 8s)
	cIQM9W     Mem // dword 0xFFF7FFF7 (word −9s)
	cIQ1MScIdx Mem // words j/4 (j < 16): IQ1_M's scale word of 16-value group j
	cIQ1MScSh  Mem // words 3·(j%4): the group's 3-bit field
	cIQK       = map[dtype]Mem{}
)

func genQ8IQConsts() {
	cIQ7 = data32("iq7", 7)
	cIQ15 = data32("iq15", 15)
	cIQ15W = data32("iq15w", 0x000F000F)
	cIQ7W = data32("iq7w", 0x00070007)
	cIQB1 = data32("iqb1", 0x01010101)
	cIQ1 = data32("iq1", 1)
	cIQ1W = data32("iq1w", 0x00010001)
	cIQShS = data32("iqshs", 0, 2, 4, 6, 8, 10, 12, 14)
	var s16 []uint32
	for i := uint32(0); i < 16; i++ {
		s16 = append(s16, i)
	}
	cIQShS3 = data32("iqshs3", s16...)
	cIQSh1S = data32("iqsh1s", 0, 3, 6, 9, 16, 19, 22, 25)
	cIQSh4 = data32("iqsh4", 0, 4, 8, 12, 16, 20, 24, 28)
	cIQ1SPat = data32("iq1spat", 0x02010201)
	cIQ1SPat8 = data32("iq1spat8", 0x10081008)
	cIQ1MPat = data32("iq1mpat", 0x00080400, 0x00090501)
	cIQB5 = data32("iqb5", 0x05050505)
	var neg []uint32
	for g := uint32(0); g < 8; g++ {
		neg = append(neg, 1<<(4*g+3), 0)
	}
	cIQ1MNeg = data32("iq1mneg", neg...)
	cIQ8W = data32("iq8w", 0x00080008)
	cIQM9W = data32("iqm9w", 0xFFF7FFF7)
	var idx, sh []uint32
	for j := uint32(0); j < 16; j += 2 {
		idx = append(idx, j/4|(j+1)/4<<16)
		sh = append(sh, 3*(j%4)|3*((j+1)%4)<<16)
	}
	cIQ1MScIdx = data32("iq1mscidx", idx...)
	cIQ1MScSh = data32("iq1mscsh", sh...)
	// In a fixed order: the generated file must not depend on map order.
	for _, d := range q8IQDtypes {
		k := map[dtype]float32{dIQ2XXS: 0.125, dIQ2XS: 0.125, dIQ2S: 0.125, dIQ3XXS: 0.25, dIQ1S: 0.125, dIQ1M: 0.125}[d]
		if k != 0 {
			cIQK[d] = data32("iqk"+d.String(), math.Float32bits(k))
		}
	}
}

// iqGridSymbol is the package variable holding the type's lattice
// (kernels/iq_amd64.go): 8-byte entries, 4-byte for the IQ3 types. IQ1_M's
// is iq1mGridH, but IQ1_S's for the VNNI kernels (iq1Sums).
func iqGridSymbol(d dtype, vnni bool) Mem {
	if d == dIQ1M && vnni {
		d = dIQ1S
	}
	name := map[dtype]string{
		dIQ2XXS: "iq2xxsGridQ8", dIQ2XS: "iq2xsGridQ8", dIQ2S: "iq2sGridQ8",
		dIQ3XXS: "iq3xxsGridQ8", dIQ3S: "iq3sGridQ8", dIQ1S: "iq1sGridQ8", dIQ1M: "iq1mGridH",
	}[d]
	return Mem{Symbol: Symbol{Name: "·" + name}, Base: StaticBase}
}

func iqBlockBytes(d dtype) int {
	return map[dtype]int{dIQ2XXS: 66, dIQ2XS: 74, dIQ2S: 82, dIQ3XXS: 98, dIQ3S: 110, dIQ1S: 50, dIQ1M: 56}[d]
}

// genQ8IQ emits q8dot512<dtype>N<N> (with vnni false, ...BW) for an i-quant:
// genQ8's contract.
func genQ8IQ(d dtype, N int, vnni bool) {
	name := fmt.Sprintf("q8dot512%sN%d", d, N)
	if !vnni {
		name += "BW"
	}
	q8VNNI = vnni
	TEXT(name, NOSPLIT, q8Sig)
	Doc(fmt.Sprintf("%s computes %d-input dot products of %s weights with 8-bit activations (see genQ8IQ).", name, N, d))
	ws := ld("wstride")
	wq := ld("w")
	oq := ld("out")
	grid := GP64()
	LEAQ(iqGridSymbol(d, vnni), grid)
	// The VPERMW indices of the chunks' scales: in registers for one or two
	// input rows, loaded per chunk for more (whose sums take the registers).
	var idx [4]Op
	for c := range idx {
		idx[c] = cQ8IdxXS[c]
		if perGroup16(d) {
			idx[c] = cQ8IdxQ6[c]
		}
		if N <= 2 {
			r := ZMM()
			VMOVDQU64(idx[c], r)
			idx[c] = r
		}
	}
	// Two or more input rows' sums share one vector (blockScalarRows).
	acc := make([]VecVirtual, N)
	if N > 2 {
		acc = acc[:1]
	}
	for i := range acc {
		acc[i] = ZMM()
	}
	q8Rows(N, name, iqBlockBytes(d), ws, wq, oq, acc, func(rowMem func(off int) Mem, xMem func(i, off int) Mem) {
		q8RowIQ(d, N, rowMem, xMem, grid, idx, acc)
	})
	VZEROUPPER()
	RET()
}

// perGroup16 reports the types whose scales are per 16 values (else per 32).
func perGroup16(d dtype) bool { return d == dIQ2XS || d == dIQ2S || d == dIQ1M }

// q8RowIQ adds a row's block to the rows' sums: dx_i·(d·k)·Σ_t ls_t·Σ w·q_x.
// acc is one per input row, or for more than two rows one vector
// (blockScalarRows).
func q8RowIQ(d dtype, N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, grid GPVirtual, idx [4]Op, acc []VecVirtual) {
	sc16 := iqScales(d, rowMem)
	var isum []VecVirtual
	if isIQ1(d) {
		isum = iq1Sums(d, N, rowMem, xMem, grid, idx, sc16)
	} else {
		isum = iqSums(d, N, rowMem, xMem, grid, idx, sc16)
	}
	dv := iqBlockD(d, rowMem)
	if len(acc) < N {
		blockScalarRows(isum, dv, func(i int) Mem { return xMem(i, q8xD) }, acc[0])
		return
	}
	for i := range isum {
		q6BlockScalar(isum[i], dv, xMem(i, q8xD), acc[i])
	}
}

// iqBlockD returns the block's d·k as float32 in the low lane of an xmm:
// d (f16; IQ1_M's the top nibbles of its four scale words) times k, exact
// (a power of two). Both levels' kernels use it.
func iqBlockD(d dtype, rowMem func(off int) Mem) VecVirtual {
	dv := XMM()
	if d == dIQ1M {
		q, h := GP64(), GP64()
		MOVQ(rowMem(48), q)
		MOVQ(U64(0xF000F000F000F000), h)
		PEXTQ(h, q, q)
		VMOVQ(q, dv)
	} else {
		VPBROADCASTW(rowMem(0), dv)
	}
	VCVTPH2PS(dv, dv)
	if k, ok := cIQK[d]; ok {
		VMULSS(k, dv, dv)
	}
	return dv
}

// chunkScales returns chunk c's scales as int16 lanes for VPMADDWD: word j
// the scale of values 2j, 2j+1 (VPERMW of sc16 by idx[c]; loaded first for
// more than two rows).
func chunkScales(sc16 VecVirtual, idx [4]Op, c, N int) VecVirtual {
	scv, ix := ZMM(), idx[c]
	if N > 2 {
		r := ZMM()
		VMOVDQU64(ix, r)
		ix = r
	}
	VPERMW(sc16, ix, scv)
	return scv
}

// iqSums returns each input row's exact block sum Σ_t ls_t·Σ w·q_x, spread
// over a zmm's dwords: per chunk |w| against x with w's sign (VPMADDUBSW),
// then the scales (VPMADDWD, VPDPWSSD).
func iqSums(d dtype, N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, grid GPVirtual, idx [4]Op, sc16 VecVirtual) []VecVirtual {
	zero := ZMM()
	VPXORD(zero, zero, zero)
	// Two partial sums per input row (halves of the block: shorter chains)
	// for one or two rows, one for more.
	hs := make([][2]VecVirtual, N)
	for i := range hs {
		hs[i][0] = ZMM()
		hs[i][1] = hs[i][0]
		if N <= 2 {
			hs[i][1] = ZMM()
		}
	}
	for c := 0; c < 4; c++ {
		u, k := iqChunk(d, c, rowMem, grid)
		scv := chunkScales(sc16, idx, c, N)
		h, first := c/2, c%2 == 0
		if N > 2 {
			h, first = 0, c == 0
		}
		maddChunk512(N, func(i int) Op {
			x := ZMM()
			VMOVDQU64(xMem(i, 64*c), x)
			VPSUBB(x, zero, k, x) // −x where w < 0
			return x
		}, u, scv, hs, h, first)
	}
	isum := make([]VecVirtual, N)
	for i := range isum {
		isum[i] = hs[i][0]
		if N <= 2 {
			VPADDD(hs[i][1], hs[i][0], isum[i])
		}
	}
	return isum
}

// isIQ1 reports the IQ1 types, whose kernels are iq1Sums.
func isIQ1(d dtype) bool { return d == dIQ1S || d == dIQ1M }

// iq1Sums is iqSums for IQ1_S and IQ1_M, whose lattice values g are −1, 0
// or 1 and w = 8g + δ, δ = ±1 per 32 (IQ1_S) or 8 (IQ1_M) values. Their
// bytes need no signs:
//
//   - IQ1_S: u = ls·(g+1), from a VPSHUFB table of ls and 2ls per 16 values
//     (one lane, one scale ls) indexed by the lattice byte (g = −1 is the
//     index 0xFF, which VPSHUFB makes 0; with VNNI 8·ls·(g+1), at most
//     240), so that the block's sum is 8·Σ u·x + Σ_s (δ_s − 8)·ls_s·Σ_32 x
//     over its 32-value sub-blocks s, from the activations' 32-value sums;
//   - IQ1_M: h = (w + 9)/2 = 4(g+1) + e, e = (δ+1)/2, at most 9. With VNNI
//     u = ls·h by a VPSHUFB table indexed by g + 1 + 4e (at most 135), the
//     sum 2·Σ u·x − 9·Σ_t ls_t·Σ_16 x. Without, h is gathered from
//     iq1mGridH by the lattice index with the group's delta sign bit above
//     it, against x, then VPMADDWD with 2·ls (u could saturate a
//     VPMADDUBSW pair). The VNNI kernels keep IQ1_S's 16 KB lattice: with
//     iq1mGridH's 32 KB beside 8 input rows' activations, 8-row products
//     ran at 0.8 of the speed (L1 is 48 KB here).
//
// So a chunk costs each input row one VPDPBUSD with VNNI (without, a
// VPMADDUBSW and a VPADDW or VPMADDWD). Every step is exact in int32, so
// the sums are iqSums' (tensor.IQInts).
func iq1Sums(d dtype, N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, grid GPVirtual, idx [4]Op, sc16 VecVirtual) []VecVirtual {
	isum := make([]VecVirtual, N)
	for i := range isum {
		isum[i] = ZMM()
	}
	// The table's bytes as multiples of ls, a word pattern for VPMULLW.
	var pat, c1, c5 VecVirtual
	switch {
	case d == dIQ1M && q8VNNI:
		pat = ZMM()
		VPBROADCASTQ(cIQ1MPat, pat)
		c1, c5 = ZMM(), ZMM()
		VPBROADCASTD(cIQB1, c1)
		VPBROADCASTD(cIQB5, c5)
	case d == dIQ1M:
	case q8VNNI:
		pat = ZMM()
		VPBROADCASTD(cIQ1SPat8, pat)
	default:
		pat = ZMM()
		VPBROADCASTD(cIQ1SPat, pat)
	}
	// The block-level terms, per input row: IQ1_S's Σ_s (δ_s − 8)·ls_s·Σ_32 x
	// (with VNNI the rows' first sums), IQ1_M's −9·Σ_t ls_t·Σ_16 x (without
	// VNNI the first sums, with it added last).
	var sd, m9 VecVirtual
	switch {
	case d == dIQ1S:
		sd = ZMM()
		q, sg, e := XMM(), XMM(), XMM()
		VMOVDQU64(rowMem(34), q)
		VPSRAW(U8(15), q, sg) // −1 where δ < 0
		VPXORD(sg, sc16.AsX(), sd.AsX())
		VPSUBW(sg, sd.AsX(), sd.AsX()) // δ·ls
		VPSLLW(U8(3), sc16.AsX(), e)
		VPSUBW(e, sd.AsX(), sd.AsX()) // (δ − 8)·ls
		if q8VNNI {
			for i := range isum {
				VPMADDWD(xMem(i, q8xBsum32), sd.AsX(), isum[i].AsX())
			}
		}
	default:
		m9 = YMM()
		VPBROADCASTD(cIQM9W, m9)
		VPMULLW(m9, sc16.AsY(), m9) // −9·ls
		for i := range isum {
			if q8VNNI {
				VPXORD(isum[i], isum[i], isum[i])
			} else {
				VPMADDWD(xMem(i, q8xBsum16), m9, isum[i].AsY())
			}
		}
		if !q8VNNI {
			VPADDW(sc16, sc16, sc16) // 2·ls
		}
	}
	for c := 0; c < 4; c++ {
		ix := ZMM()
		if d == dIQ1S {
			VPMOVZXBD(rowMem(2+8*c), ix.AsY())
			iqHighBits(ix, rowMem(34+4*c), cIQSh1S, cIQ7, true)
		} else {
			// The 3 high index bits (without VNNI the delta's sign bit
			// above them: iq1mGridH's index).
			m := cIQ7
			if !q8VNNI {
				m = cIQ15
			}
			VPMOVZXBD(rowMem(8*c), ix.AsY())
			iqHighBits(ix, rowMem(32+4*c), cIQSh4, m, true)
		}
		g := gatherEntries(grid, ix, false)
		if d == dIQ1M && q8VNNI {
			// The table index g + 1 + 4e: 5 added, 1 in the groups
			// (qwords) whose δ < 0.
			neg, kd := ZMM(), K()
			VPBROADCASTD(rowMem(32+4*c), neg)
			VPTESTMQ(cIQ1MNeg, neg, kd)
			VPBLENDMQ(c1, c5, kd, neg)
			VPADDB(neg, g, g)
		}
		u := chunkScales(sc16, idx, c, N)
		if pat == nil {
			// IQ1_M without VNNI: h against x, then the doubled scales.
			for i := range isum {
				p := ZMM()
				VPMADDUBSW(xMem(i, 64*c), g, p)
				dpwssd(u, p, isum[i])
			}
			continue
		}
		VPMULLW(pat, u, u)
		VPSHUFB(g, u, u)
		for i := range isum {
			x := xMem(i, 64*c)
			switch {
			case q8VNNI:
				VPDPBUSD(x, u, isum[i])
			case c == 0:
				VPMADDUBSW(x, u, isum[i])
			default:
				// Word sums: at most 4 chunks of 2·30·128, below 2^15.
				t := ZMM()
				VPMADDUBSW(x, u, t)
				VPADDW(t, isum[i], isum[i])
			}
		}
	}
	switch {
	case d == dIQ1S && !q8VNNI:
		e8 := ZMM()
		VPBROADCASTD(cIQ8W, e8)
		for i := range isum {
			t := ZMM()
			VPMADDWD(e8, isum[i], isum[i]) // 8·Σ u·x
			VPMADDWD(xMem(i, q8xBsum32), sd.AsX(), t.AsX())
			VPADDD(t, isum[i], isum[i])
		}
	case d == dIQ1M && q8VNNI:
		for i := range isum {
			t := ZMM()
			VPSLLD(U8(1), isum[i], isum[i])
			VPMADDWD(xMem(i, q8xBsum16), m9, t.AsY())
			VPADDD(t, isum[i], isum[i])
		}
	}
	return isum
}

// oddWords makes 2s+1 of the int16 lanes of v (in place).
func oddWords(v Op) {
	VPSLLW(U8(1), v, v)
	VPORD_BCST(cIQ1W, v, v)
}

// iqScales returns the block's scales as int16 in the low words of a zmm:
// 8 (per 32 values, for idx cQ8IdxXS) or 16 (per 16 values, cQ8IdxQ6).
func iqScales(d dtype, rowMem func(off int) Mem) VecVirtual {
	out := ZMM()
	switch d {
	case dIQ2XXS:
		// The top 4 bits of each sub-block's u32 at 6+8ib: qword ib of the
		// 64 bytes at 2, shifted by 60.
		t := ZMM()
		VMOVDQU64(rowMem(2), t)
		VPSRLQ(U8(60), t, t)
		VPMOVQW(t, out.AsX())
		oddWords(out.AsX())
	case dIQ3XXS:
		t := ZMM()
		VMOVDQU32(rowMem(66), t.AsY())
		VPSRLD(U8(28), t.AsY(), t.AsY())
		VPMOVDW(t.AsY(), out.AsX())
		oddWords(out.AsX())
	case dIQ3S:
		t := ZMM()
		VPBROADCASTD(rowMem(106), t.AsY())
		VPSRLVD(cIQSh4, t.AsY(), t.AsY())
		VPANDD_BCST(cIQ15, t.AsY(), t.AsY())
		VPMOVDW(t.AsY(), out.AsX())
		oddWords(out.AsX())
	case dIQ1S:
		t := ZMM()
		VPMOVZXWD(rowMem(34), t.AsY())
		VPSRLD(U8(12), t.AsY(), t.AsY())
		VPANDD_BCST(cIQ7, t.AsY(), t.AsY())
		VPMOVDW(t.AsY(), out.AsX())
		oddWords(out.AsX())
	case dIQ2XS, dIQ2S:
		// 16 nibbles: group 2ib is the low nibble of byte ib, 2ib+1 the high.
		off := 66
		if d == dIQ2S {
			off = 74
		}
		w, lo, hi := XMM(), XMM(), XMM()
		VPMOVZXBW(rowMem(off), w)
		VPSRLW(U8(4), w, hi)
		VPANDD_BCST(cIQ15W, w, lo)
		VPUNPCKHWD(hi, lo, w)
		VPUNPCKLWD(hi, lo, lo)
		VINSERTI128(U8(1), w, lo.AsY(), out.AsY())
		oddWords(out.AsY())
	case dIQ1M:
		// Group j's 3-bit field: bits 3(j%4).. of the u16 at 48+2(j/4).
		t := ZMM()
		ix := ZMM()
		VPBROADCASTQ(rowMem(48), t.AsY())
		VMOVDQU64(cIQ1MScIdx, ix.AsY())
		VPERMW(t.AsY(), ix.AsY(), out.AsY())
		VPSRLVW(cIQ1MScSh, out.AsY(), out.AsY())
		VPANDD_BCST(cIQ7W, out.AsY(), out.AsY())
		oddWords(out.AsY())
	default:
		panic("iqScales: " + d.String())
	}
	return out
}

// iqSignsGP returns the 64-bit sign mask of 8 groups of 8 values whose 7-bit
// sign indices are the low 56 bits of x (index g at bits 7g..): byte g is
// index g and, as bit 7, its parity. x is clobbered.
func iqSignsGP(x GPVirtual) GPVirtual {
	m, t, u := GP64(), GP64(), GP64()
	MOVQ(U64(0x7F7F7F7F7F7F7F7F), m)
	PDEPQ(m, x, x)
	MOVQ(x, t)
	SHRQ(U8(4), t)
	XORQ(x, t)
	MOVQ(t, u)
	SHRQ(U8(2), u)
	XORQ(u, t)
	MOVQ(t, u)
	SHRQ(U8(1), u)
	XORQ(u, t)
	MOVQ(U64(0x0101010101010101), m)
	ANDQ(m, t)
	SHLQ(U8(7), t)
	ORQ(t, x)
	return x
}

// two28 packs the low 28 bits of the u32s a and b (a first) into a GP.
func two28(a, b Mem) GPVirtual {
	x, y := GP64(), GP64()
	MOVL(a, x.As32())
	ANDL(U32(0x0FFFFFFF), x.As32())
	MOVL(b, y.As32())
	ANDL(U32(0x0FFFFFFF), y.As32())
	SHLQ(U8(28), y)
	ORQ(y, x)
	return x
}

// gatherEntries gathers 8 qword lattice entries at the dword indices of
// the ymm ix, or with dword 16 dword entries at those of the zmm ix.
func gatherEntries(grid GPVirtual, ix VecVirtual, dword bool) VecVirtual {
	u := ZMM()
	k := K()
	if dword {
		KXNORW(k, k, k)
	} else {
		KXNORB(k, k, k)
	}
	VPXORD(u, u, u)
	if dword {
		VPGATHERDD(Mem{Base: grid, Index: ix, Scale: 4}, k, u)
	} else {
		VPGATHERDQ(Mem{Base: grid, Index: ix.AsY(), Scale: 8}, k, u)
	}
	return u
}

// latticeEntries loads n lattice entries (8 bytes each, or 4 with dword)
// by scalar loads inserted into a vector (VMOVQ and VPINSRQ fill an xmm
// with two entries, VMOVD and VPINSRD with four; two xmm make the ymm of
// the AVX2 kernels, four the zmm of the AVX-512 ones), entry j at the index
// idx(j) emits into a general register. On AMD's cores a gather is
// microcoded and costs more than these loads where the index is cheap to
// read (see the file comment).
func latticeEntries(grid GPVirtual, n int, dword bool, idx func(j int) GPVirtual) VecVirtual {
	per, scale := 2, uint8(8)
	if dword {
		per, scale = 4, 4
	}
	x := make([]VecVirtual, n/per)
	for p := range x {
		x[p] = XMM()
		m := func(j int) Mem { return Mem{Base: grid, Index: idx(per*p + j), Scale: scale} }
		if dword {
			VMOVD(m(0), x[p])
			for q := 1; q < per; q++ {
				VPINSRD(U8(q), m(q), x[p], x[p])
			}
		} else {
			VMOVQ(m(0), x[p])
			VPINSRQ(U8(1), m(1), x[p], x[p])
		}
	}
	if len(x) == 2 {
		// A ymm (AVX2: VEX; the registers are below 16 there).
		u := YMM()
		VINSERTI128(U8(1), x[1], x[0].AsY(), u)
		return u
	}
	lo, hi, u := YMM(), YMM(), ZMM()
	VINSERTI64X2(U8(1), x[1], x[0].AsY(), lo)
	VINSERTI64X2(U8(1), x[3], x[2].AsY(), hi)
	VINSERTI64X4(U8(1), hi, lo.AsZ(), u)
	return u
}

// byteIndex returns a function that loads index byte j from m(j).
func byteIndex(m func(j int) Mem) func(j int) GPVirtual {
	return func(j int) GPVirtual {
		r := GP64()
		MOVBQZX(m(j), r)
		return r
	}
}

// iqHighBits ORs into ix (dwords) the field of width mask (a dword constant)
// of the dword at src shifted right by the per-lane counts sh, moved up by
// 8 bits: the high bits of the lattice indices.
func iqHighBits(ix VecVirtual, src Mem, sh, mask Mem, y bool) {
	t := ZMM()
	v, tv := Op(ix), Op(t)
	if y {
		v, tv = ix.AsY(), t.AsY()
	}
	VPBROADCASTD(src, tv)
	VPSRLVD(sh, tv, tv)
	VPANDD_BCST(mask, tv, tv)
	VPSLLD(U8(8), tv, tv)
	VPORD(tv, v, v)
}

// iqChunk returns chunk c's 64 magnitudes |w| (unsigned bytes) and the mask
// of its negative values.
func iqChunk(d dtype, c int, rowMem func(off int) Mem, grid GPVirtual) (VecVirtual, Register) {
	k := K()
	switch d {
	case dIQ2XXS, dIQ3XXS:
		var u VecVirtual
		var sa, sb Mem
		if d == dIQ2XXS {
			// Sub-blocks 2c, 2c+1: 4 index bytes and a u32 each, at 2+16c.
			u = latticeEntries(grid, 8, false, byteIndex(func(j int) Mem { return rowMem(2 + 16*c + j + 4*(j/4)) }))
			sa, sb = rowMem(2+16*c+4), rowMem(2+16*c+12)
		} else {
			u = latticeEntries(grid, 16, true, byteIndex(func(j int) Mem { return rowMem(2 + 16*c + j) }))
			sa, sb = rowMem(66+8*c), rowMem(66+8*c+4)
		}
		KMOVQ(iqSignsGP(two28(sa, sb)), k)
		return u, k
	case dIQ2XS:
		u := latticeEntries(grid, 8, false, func(j int) GPVirtual {
			r := GP64()
			MOVWQZX(rowMem(2+16*c+2*j), r)
			ANDL(U32(511), r.As32())
			return r
		})
		a, b, m := GP64(), GP64(), GP64()
		MOVQ(U64(0xFE00FE00FE00FE00), m)
		MOVQ(rowMem(2+16*c), a)
		PEXTQ(m, a, a)
		MOVQ(rowMem(2+16*c+8), b)
		PEXTQ(m, b, b)
		SHLQ(U8(28), b)
		ORQ(b, a)
		KMOVQ(iqSignsGP(a), k)
		return u, k
	case dIQ2S:
		ix := ZMM()
		VPMOVZXBD(rowMem(2+8*c), ix.AsY())
		iqHighBits(ix, rowMem(66+2*c), cIQShS, cD3, true)
		u := gatherEntries(grid, ix, false)
		KMOVQ(rowMem(34+8*c), k)
		return u, k
	case dIQ3S:
		ix := ZMM()
		VPMOVZXBD(rowMem(2+16*c), ix)
		iqHighBits(ix, rowMem(66+2*c), cIQShS3, cIQ1, false)
		u := gatherEntries(grid, ix, true)
		KMOVQ(rowMem(74+8*c), k)
		return u, k
	}
	panic("iqChunk: " + d.String())
}
