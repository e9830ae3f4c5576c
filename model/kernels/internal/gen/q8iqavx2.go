package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// AVX2 integer kernels of the i-quants of 1 to 3 bits: q8dot256<dtype>N<N>,
// genQ8IQ's contract and bits on ymm, one 32-value sub-block at a time.
//
// The lattice entries are loaded by scalar loads inserted into the vector
// (latticeEntries), their indices built in general registers (a byte of
// the block, with the high bits from elsewhere in it for IQ2_S, IQ3_S,
// IQ1_S and IQ1_M). On ymm, 4 or 8 entries at a time, that measured
// 1.01-1.9x faster than VPGATHERDQ/VPGATHERDD per product here (Zen 5),
// and it keeps the kernels off VSIB addressing, which QEMU 7.2 decodes
// wrongly with index register 4 (TestMatMulQ8AVX2 failed under
// scripts/avx2-emulated.sh where a gather got Y4 as its index; on hardware
// the same code gave the twin's bits).
//
// The signs are VPSIGNB operands: ±1 vectors from a 128-entry table for the
// types with 7-bit sign indices (signVecs4), the block's sign bytes spread
// over a ymm for IQ2_S and IQ3_S (signBytes256). IQ1_S takes its scales
// into the weight bytes instead (iq1sSums256, as genQ8IQ's iq1Sums), and
// IQ1_M its values plus 9, which are never negative (iq1mSums256).

var (
	cIQSpread Mem // VPSHUFB: byte j of each lane ← byte j/8 (low lane) or 2+j/8 (high) of the dword
	cIQBitSel Mem // bytes 1, 2, .., 128 four times
	cIQ1MEv   Mem // dwords 0, 6, 0, 6, ..: IQ1_M's even-group fields
	cIQ1MOd   Mem // dwords 3, 9, 3, 9, ..: its odd-group fields
	cIQ1MIdx  Mem // dwords 0, 0, 1, 1, 2, 2, 3, 3 (VPERMD)
	cIQ1SPatY Mem // cIQ1SPat x8
	cIQ8WY    Mem // cIQ8W x8
	cIQM9WY   Mem // cIQM9W x8
	cIQ1MGrp  Mem // VPSHUFB: words 0, 4, 1, 5, 2, 6, 3, 7 of each lane
)

func genQ8IQAVX2Consts() {
	cIQSpread = data32("iqspread", 0, 0, 0x01010101, 0x01010101, 0x02020202, 0x02020202, 0x03030303, 0x03030303)
	cIQBitSel = data32("iqbitsel", 0x08040201, 0x80402010, 0x08040201, 0x80402010, 0x08040201, 0x80402010, 0x08040201, 0x80402010)
	cIQ1MEv = data32("iq1mev", 0, 6, 0, 6, 0, 6, 0, 6)
	cIQ1MOd = data32("iq1mod", 3, 9, 3, 9, 3, 9, 3, 9)
	cIQ1MIdx = data32("iq1midx", 0, 0, 1, 1, 2, 2, 3, 3)
	cIQ1SPatY = data32("iq1spaty", rep(0x02010201, 8)...)
	cIQ8WY = data32("iq8wy", rep(0x00080008, 8)...)
	cIQM9WY = data32("iqm9wy", rep(0xFFF7FFF7, 8)...)
	var grp []uint32
	perm := []uint32{0, 4, 1, 5, 2, 6, 3, 7}
	for l := 0; l < 2; l++ {
		for k := 0; k < 4; k++ {
			a, b := perm[2*k], perm[2*k+1]
			grp = append(grp, 2*a|(2*a+1)<<8|(2*b)<<16|(2*b+1)<<24)
		}
	}
	cIQ1MGrp = data32("iq1mgrp", grp...)
}

// q8IQAVX2MaxN is the most input rows per AVX2 i-quant kernel (sharing a
// sub-block's loads and signs among them, as q8IQMaxN): one ymm of sums a
// row, the rows' float sums in one vector (blockScalarRows256).
const q8IQAVX2MaxN = 8

// genQ8IQAVX2 emits q8dot256<dtype>N<N>.
func genQ8IQAVX2(d dtype, N int) {
	name := fmt.Sprintf("q8dot256%sN%d", d, N)
	TEXT(name, NOSPLIT, q8Sig)
	Doc(fmt.Sprintf("%s computes %d-input dot products of %s weights with 8-bit activations on AVX2 (see genQ8IQAVX2).", name, N, d))
	ws := ld("wstride")
	wq := ld("w")
	oq := ld("out")
	grid := GP64()
	LEAQ(iqGridSymbol(d, false), grid)
	// Three or more input rows' sums share one vector (blockScalarRows256).
	acc := make([]VecVirtual, N)
	if N > 2 {
		acc = acc[:1]
	}
	for i := range acc {
		acc[i] = YMM()
	}
	q8Rows(N, name, iqBlockBytes(d), ws, wq, oq, acc, func(rowMem func(off int) Mem, xMem func(i, off int) Mem) {
		q8RowIQ256(d, N, rowMem, xMem, grid, acc)
	})
	VZEROUPPER()
	RET()
}

// oddWords256 makes 2s+1 of the int16 lanes of v (VEX).
func oddWords256(v VecVirtual) {
	one := YMM()
	VPBROADCASTD(cIQ1W, one)
	VPSLLW(U8(1), v, v)
	VPOR(one, v, v)
}

// wordsBothLanes packs the 8 dwords of the ymm v (values < 2^15) to words,
// the 8 in each lane (as q8RowIQ4XS256 does its scales).
func wordsBothLanes(v VecVirtual) VecVirtual {
	w := YMM()
	VPACKSSDW(v, v, w)
	VPERMQ(U8(0x88), w, w)
	return w
}

// oddScales256 masks the 8 dwords of t (the scale fields, shifted down)
// with the dword constant mask and returns 2s+1 as words in both lanes.
func oddScales256(t VecVirtual, mask Mem) VecVirtual {
	m := YMM()
	VPBROADCASTD(mask, m)
	VPAND(m, t, t)
	w := wordsBothLanes(t)
	oddWords256(w)
	return w
}

// iqScales256 returns a ymm from which VPSHUFB by cXSWord[ib] makes
// sub-block ib's scale vector: for the per-32 types the 8 scales as words
// in each lane; for the per-16 types the even groups' scales in the low
// lane and the odd groups' in the high. IQ2_XXS and IQ3_XXS take theirs
// from the sub-block's u32 instead (nil).
func iqScales256(d dtype, rowMem func(off int) Mem) VecVirtual {
	switch d {
	case dIQ2XXS, dIQ3XXS:
		return nil
	case dIQ3S:
		t := YMM()
		VPBROADCASTD(rowMem(106), t)
		VPSRLVD(cIQSh4, t, t)
		return oddScales256(t, cIQ15)
	case dIQ1S:
		t := YMM()
		VPMOVZXWD(rowMem(34), t)
		VPSRLD(U8(12), t, t)
		return oddScales256(t, cIQ7)
	case dIQ2XS, dIQ2S:
		off := 66
		if d == dIQ2S {
			off = 74
		}
		lo, hi, m := XMM(), XMM(), XMM()
		VPMOVZXBW(rowMem(off), lo)
		VPSRLW(U8(4), lo, hi)
		VPBROADCASTD(cIQ15W, m)
		VPAND(m, lo, lo)
		w := YMM()
		VINSERTI128(U8(1), hi, lo.AsY(), w)
		oddWords256(w)
		return w
	}
	panic("iqScales256: " + d.String())
}

// iq1mScales256 returns IQ1_M's scales as iqScales256 lays out the per-16
// types' (scw: the even groups' in the low lane, the odd groups' in the
// high) and in group order (grp: word t the scale of group t).
func iq1mScales256(rowMem func(off int) Mem) (scw, grp VecVirtual) {
	e, o, m := YMM(), YMM(), YMM()
	VPMOVZXWD(rowMem(48), e.AsX()) // sc0..sc3 (and the next 4 bytes' words, unused)
	VMOVDQU(cIQ1MIdx, m)
	VPERMD(e, m, e) // sc[i/2] in dword i
	VPSRLVD(cIQ1MOd, e, o)
	VPSRLVD(cIQ1MEv, e, e)
	VPBROADCASTD(cIQ7, m)
	VPAND(m, e, e)
	VPAND(m, o, o)
	scw, grp = YMM(), YMM()
	VPACKUSDW(o, e, scw) // lane 0: even 0-3, odd 0-3; lane 1: even 4-7, odd 4-7
	VPSHUFB(cIQ1MGrp, scw, grp)
	VPERMQ(U8(0xD8), scw, scw) // even 0-7 | odd 0-7
	oddWords256(scw)
	oddWords256(grp)
	return scw, grp
}

// signVecs4 loads the ±1 bytes of 4 groups of 8 values from the sign
// vectors' table (iqSignVecs, iq_amd64.go), group j's 7-bit sign index by
// idx(j): four scalar loads, as llama.cpp's AVX2 kernels take their signs,
// cheaper than spreading a computed mask (signBytes256).
func signVecs4(idx func(j int) GPVirtual) VecVirtual {
	t := GP64()
	LEAQ(Mem{Symbol: Symbol{Name: "·iqSignVecs"}, Base: StaticBase}, t)
	return latticeEntries(t, 4, false, idx)
}

// signBytes256 spreads the 32 sign bits of the dword src (a memory operand
// or an xmm holding it in its low lane) over a ymm of ±1 bytes.
func signBytes256(src Op) VecVirtual {
	s, t := YMM(), YMM()
	VPBROADCASTD(src, s)
	VPSHUFB(cIQSpread, s, s)
	VMOVDQU(cIQBitSel, t)
	VPAND(t, s, s)
	VPCMPEQB(t, s, s)
	VPBROADCASTD(cIQB1, t)
	VPOR(t, s, s)
	return s
}

// q8RowIQ256 adds a row's block to the rows' sums (q8RowIQ's result): acc
// is one per input row, or for more than two rows one ymm
// (blockScalarRows256).
func q8RowIQ256(d dtype, N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, grid GPVirtual, acc []VecVirtual) {
	var scw, grp VecVirtual
	if d == dIQ1M {
		scw, grp = iq1mScales256(rowMem)
	} else {
		scw = iqScales256(d, rowMem)
	}
	isum := make([]VecVirtual, N)
	for i := range isum {
		isum[i] = YMM()
		if d != dIQ1S && d != dIQ1M {
			VPXOR(isum[i], isum[i], isum[i])
		}
	}
	switch d {
	case dIQ1S:
		iq1sSums256(N, rowMem, xMem, grid, scw, isum)
	case dIQ1M:
		iq1mSums256(N, rowMem, xMem, grid, scw, grp, isum)
	default:
		for ib := 0; ib < 8; ib++ {
			u, sg, scv := iqSub256(d, ib, rowMem, grid, scw)
			signedMadd256(N, func(i int) Mem { return xMem(i, 32*ib) }, sg, u, scv, isum)
		}
	}
	dv := iqBlockD(d, rowMem)
	if len(acc) < N {
		blockScalarRows256(isum, dv, func(i int) Mem { return xMem(i, q8xD) }, acc[0])
		return
	}
	for i := 0; i < N; i++ {
		q6BlockScalar256(isum[i], dv, xMem(i, q8xD), acc[i])
	}
}

// iq1sSums256 sets isum[i] to IQ1_S's exact block sums as iq1Sums does
// without VNNI: per sub-block the bytes u = ls·(g+1) (a VPSHUFB table of
// ls and 2ls indexed by the lattice byte g; −1 gives 0), one VPMADDUBSW
// and one VPADDW per input row into word sums (four sub-blocks of at most
// 2·30·128 a word stay below 2^15, so up to 4 input rows widen them twice a
// block; more rows, whose sums take the ymm, every two sub-blocks), then
// 8·Σ u·x + Σ_s (δ_s − 8)·ls_s·Σ_32 x.
func iq1sSums256(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, grid GPVirtual, scw VecVirtual, isum []VecVirtual) {
	// The constants as memory operands: N = 4 needs 14 of the 16 ymm.
	pat, e8 := cIQ1SPatY, cIQ8WY
	subBlock := func(ib int) VecVirtual {
		h := GP64()
		MOVWQZX(rowMem(34+2*ib), h)
		g := latticeEntries(grid, 4, false, indices4(rowMem(2+4*ib), h, 3))
		u := YMM()
		VPSHUFB(cXSWord[ib], scw, u)
		VPMULLW(pat, u, u)
		VPSHUFB(g, u, u)
		return u
	}
	// widen adds 8·(the word sums w) to isum[i] (or sets it, first).
	widen := func(i int, w VecVirtual, first bool) {
		if first {
			VPMADDWD(e8, w, isum[i])
			return
		}
		VPMADDWD(e8, w, w)
		VPADDD(w, isum[i], isum[i])
	}
	if N > 4 {
		for ib := 0; ib < 8; ib += 2 {
			u0, u1 := subBlock(ib), subBlock(ib+1)
			for i := 0; i < N; i++ {
				t, t1 := YMM(), YMM()
				VPMADDUBSW(xMem(i, 32*ib), u0, t)
				VPMADDUBSW(xMem(i, 32*ib+32), u1, t1)
				VPADDW(t1, t, t)
				widen(i, t, ib == 0)
			}
		}
	} else {
		ws := make([]VecVirtual, N)
		for i := range ws {
			ws[i] = YMM()
		}
		for ib := 0; ib < 8; ib++ {
			u := subBlock(ib)
			for i := 0; i < N; i++ {
				if ib%4 == 0 {
					VPMADDUBSW(xMem(i, 32*ib), u, ws[i])
					continue
				}
				t := YMM()
				VPMADDUBSW(xMem(i, 32*ib), u, t)
				VPADDW(t, ws[i], ws[i])
				if ib%4 == 3 {
					widen(i, ws[i], ib == 3)
				}
			}
		}
	}
	// The sub-blocks' (δ − 8)·ls as words, against the 32-value sums.
	sd, q, sg, e := XMM(), XMM(), XMM(), XMM()
	VMOVDQU(rowMem(34), q)
	VPSRAW(U8(15), q, sg) // −1 where δ < 0
	VPXOR(sg, scw.AsX(), sd)
	VPSUBW(sg, sd, sd) // δ·ls
	VPSLLW(U8(3), scw.AsX(), e)
	VPSUBW(e, sd, sd)
	for i := 0; i < N; i++ {
		t := YMM()
		VPMADDWD(xMem(i, q8xBsum32), sd, t.AsX())
		VPADDD(t, isum[i], isum[i])
	}
}

// highIndex returns a function that builds index j as the byte lo(j) with,
// from bit 8 on, the field of width mask (7, 3 or 1) of the byte or word
// src(j) at bit pos(j): the lattice index of the types whose high index
// bits lie elsewhere in the block, for latticeEntries.
func highIndex(lo, src func(j int) Mem, word bool, pos func(j int) int, mask uint32) func(j int) GPVirtual {
	return func(j int) GPVirtual {
		r, h := GP64(), GP64()
		MOVBQZX(lo(j), r)
		if word {
			MOVWQZX(src(j), h)
		} else {
			MOVBQZX(src(j), h)
		}
		if sh := 8 - pos(j); sh > 0 {
			SHLL(U8(sh), h.As32())
		} else if sh < 0 {
			SHRL(U8(-sh), h.As32())
		}
		ANDL(U32(mask<<8), h.As32())
		ORL(h.As32(), r.As32())
		return r
	}
}

// iq1mSums256 sets isum to IQ1_M's exact block sums: per sub-block the
// unsigned bytes h = (w + 9)/2 = 4(g+1) + e (e = 1 where δ = +1: at most
// 9) against x (VPMADDUBSW, no signs), VPMADDWD with twice the scales, and
// per block −9·Σ_t ls_t·Σ_16 x from the activations' 16-value sums. The
// bytes h are entries of iq1mGridH, whose index is the lattice index with
// the group's delta sign bit above it: each group's 4-bit field of the u16
// goes whole into the index (indices4), and the vector does no arithmetic.
// isum need not be zero: it is set.
func iq1mSums256(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, grid GPVirtual, scw, grp VecVirtual, isum []VecVirtual) {
	// The −9 term first (it sets isum), so that grp is not held over the
	// sub-blocks: 8 input rows take the other 15 ymm.
	m9 := grp
	VPMULLW(cIQM9WY, grp, m9) // −9·ls
	for i := 0; i < N; i++ {
		VPMADDWD(xMem(i, q8xBsum16), m9, isum[i])
	}
	VPADDW(scw, scw, scw) // 2·ls
	for ib := 0; ib < 8; ib++ {
		scv := YMM()
		VPSHUFB(cXSWord[ib], scw, scv)
		h := GP64()
		MOVWQZX(rowMem(32+2*ib), h)
		u := latticeEntries(grid, 4, false, indices4(rowMem(4*ib), h, 4))
		for i := 0; i < N; i++ {
			t := YMM()
			VPMADDUBSW(xMem(i, 32*ib), u, t)
			VPMADDWD(scv, t, t)
			VPADDD(t, isum[i], isum[i])
		}
	}
}

// indices4 returns a function that gives the 4 lattice indices of a group
// of entries, index j the byte j of the u32 lo with, from bit 8, field j of
// width w of hi (the fields contiguous from bit 0; higher bits of hi are
// ignored): two PDEPs put all four in the 16-bit fields of one register,
// and index j is its field j (about 2 operations an index, where highIndex
// takes 5). It must be called for j = 0, 1, 2, 3 in that order, as
// latticeEntries does. hi is clobbered.
func indices4(lo Mem, hi GPVirtual, w int) func(j int) GPVirtual {
	t, m := GP64(), GP64()
	MOVL(lo, t.As32())
	MOVQ(U64(0x00FF00FF00FF00FF), m)
	PDEPQ(m, t, t)
	var hm uint64
	for j := 0; j < 4; j++ {
		hm |= (1<<w - 1) << (16*j + 8)
	}
	MOVQ(U64(hm), m)
	PDEPQ(m, hi, hi)
	ORQ(hi, t)
	next := 0
	return func(j int) GPVirtual {
		if j != next {
			panic("indices4: out of order")
		}
		next++
		if j > 0 {
			SHRQ(U8(16), t)
		}
		r := GP64()
		MOVWQZX(t.As16(), r)
		return r
	}
}

// iqSub256 returns sub-block ib's 32 magnitudes (unsigned bytes), its ±1
// sign bytes and its scale words.
func iqSub256(d dtype, ib int, rowMem func(off int) Mem, grid GPVirtual, scw VecVirtual) (u, sg, scv VecVirtual) {
	scv = YMM()
	if scw != nil {
		VPSHUFB(cXSWord[ib], scw, scv)
	}
	switch d {
	case dIQ2XXS, dIQ3XXS:
		var aux Mem
		// Byte indices: scalar loads (as genQ8IQ's kernels).
		if d == dIQ2XXS {
			u = latticeEntries(grid, 4, false, byteIndex(func(j int) Mem { return rowMem(2 + 8*ib + j) }))
			aux = rowMem(2 + 8*ib + 4)
		} else {
			u = latticeEntries(grid, 8, true, byteIndex(func(j int) Mem { return rowMem(2 + 8*ib + j) }))
			aux = rowMem(66 + 4*ib)
		}
		a, s := GP64(), GP64()
		MOVL(aux, a.As32())
		MOVL(a.As32(), s.As32())
		SHRL(U8(28), s.As32())
		LEAL(Mem{Base: s, Index: s, Scale: 1, Disp: 1}, s.As32()) // 2s+1
		IMUL3L(U32(0x00010001), s.As32(), s.As32())
		sw := XMM()
		VMOVD(s.As32(), sw)
		VPBROADCASTD(sw, scv)
		sg = signVecs4(func(j int) GPVirtual {
			r := GP64()
			MOVL(a.As32(), r.As32())
			if j > 0 {
				SHRL(U8(7*j), r.As32())
			}
			ANDL(U32(127), r.As32())
			return r
		})
		return u, sg, scv
	case dIQ2XS:
		u = latticeEntries(grid, 4, false, func(j int) GPVirtual {
			r := GP64()
			MOVWQZX(rowMem(2+8*ib+2*j), r)
			ANDL(U32(511), r.As32())
			return r
		})
		sg = signVecs4(func(j int) GPVirtual {
			r := GP64()
			MOVWLZX(rowMem(2+8*ib+2*j), r.As32())
			SHRL(U8(9), r.As32())
			return r
		})
		return u, sg, scv
	case dIQ2S:
		h := GP64()
		MOVBQZX(rowMem(66+ib), h)
		u = latticeEntries(grid, 4, false, indices4(rowMem(2+4*ib), h, 2))
		sg = signBytes256(rowMem(34 + 4*ib))
		return u, sg, scv
	case dIQ3S:
		u = latticeEntries(grid, 8, true, highIndex(func(j int) Mem { return rowMem(2 + 8*ib + j) },
			func(int) Mem { return rowMem(66 + ib) }, false, func(j int) int { return j }, 1))
		sg = signBytes256(rowMem(74 + 4*ib))
		return u, sg, scv
	}
	panic("iqSub256: " + d.String())
}
