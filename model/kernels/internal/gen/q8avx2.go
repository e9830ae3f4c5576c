package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// Integer kernels for CPUs with AVX2 but not AVX-512: K-quant (Q2_K to
// Q6_K) and IQ4_XS weights times activations quantized to 8
// bits (the same quantized blocks as genQ8's), VPMADDUBSW of the weight
// codes with the activations and VPMADDWD with the sub-block scales, on
// ymm, in q8Rows' loops. Each block's sum is taken to one float32 step per
// row exactly as q8BlockScalar and q6BlockScalar take it (the same exact
// integers, the same multiplies and adds), so these kernels give the bits
// of the AVX-512 ones and of the plain twin.
//
// q8dot256<dtype>N<N> (genQ8AVX2) has genQ8's signature and meaning.

// q8AVX2MaxN is the most input rows per AVX2 integer kernel of dtype d:
// IQ4_XS's few registers per input row leave room for four (fewer passes
// over the weights at prefill sizes), the others take q8MaxN.
func q8AVX2MaxN(d dtype) int {
	if d == dIQ4XS {
		return 4
	}
	return q8MaxN
}

// q8AVX2Dtypes are the weight types with AVX2 integer kernels.
var q8AVX2Dtypes = []dtype{dQ4K, dQ5K, dQ6K, dQ3K, dQ2K, dIQ4XS}

var (
	cQ6Quarter [4]Mem // VPSHUFB: word 2p of the low lane across it, word 2p+1 of the high lane across it
	cXSLane    Mem    // dwords 0 x4, 4 x4 (VPSRLVD: a lane's low nibbles, then its high)
	cXSWord    [8]Mem // VPSHUFB: word ib of each lane in every word
)

func genQ8AVX2Consts() {
	for p := 0; p < 4; p++ {
		lo, hi := uint32(4*p), uint32(4*p+2) // the bytes of words 2p and 2p+1
		cQ6Quarter[p] = data32(fmt.Sprintf("q6quarter_%d", p), append(rep(lo|(lo+1)<<8|lo<<16|(lo+1)<<24, 4), rep(hi|(hi+1)<<8|hi<<16|(hi+1)<<24, 4)...)...)
	}
	cXSLane = data32("xslane", 0, 0, 0, 0, 4, 4, 4, 4)
	for ib := 0; ib < 8; ib++ {
		b := uint32(2 * ib)
		cXSWord[ib] = data32(fmt.Sprintf("xsword_%d", ib), rep(b|(b+1)<<8|b<<16|(b+1)<<24, 8)...)
	}
}

func genQ8AVX2(d dtype, N int) {
	name := fmt.Sprintf("q8dot256%sN%d", d, N)
	TEXT(name, NOSPLIT, q8Sig)
	Doc(fmt.Sprintf("%s computes %d-input dot products of %s weights with 8-bit activations on AVX2 (see genQ8AVX2).", name, N, d))
	ws := ld("wstride")
	wq := ld("w")
	oq := ld("out")
	c0F := YMM()
	VPBROADCASTD(cB0F, c0F)
	acc := make([]VecVirtual, N)
	for i := range acc {
		acc[i] = YMM()
	}
	switch d {
	case dQ4K, dQ5K:
		bb, qs := 144, 16
		var c10 VecVirtual
		if d == dQ5K {
			bb, qs = 176, 48
			c10 = YMM()
			VPBROADCASTD(cB10, c10)
		}
		q8Rows(N, name, bb, ws, wq, oq, acc, func(rowMem func(off int) Mem, xMem func(i, off int) Mem) {
			q8RowQ4K256(d, N, rowMem, xMem, c0F, c10, qs, acc)
		})
	case dQ6K:
		c30 := YMM()
		VPBROADCASTD(cB30, c30)
		q8Rows(N, name, 210, ws, wq, oq, acc, func(rowMem func(off int) Mem, xMem func(i, off int) Mem) {
			q8RowQ6K256(N, rowMem, xMem, c0F, c30, acc)
		})
	case dIQ4XS:
		tab := YMM()
		VMOVDQU(cIQ4Y, tab)
		q8Rows(N, name, 136, ws, wq, oq, acc, func(rowMem func(off int) Mem, xMem func(i, off int) Mem) {
			q8RowIQ4XS256(N, rowMem, xMem, c0F, tab, acc)
		})
	case dQ3K, dQ2K:
		c03 := YMM()
		VPBROADCASTD(cB03, c03)
		bb := 110
		if d == dQ2K {
			bb = 84
		}
		q8Rows(N, name, bb, ws, wq, oq, acc, func(rowMem func(off int) Mem, xMem func(i, off int) Mem) {
			q8RowQ23K256(d, N, rowMem, xMem, c0F, c03, acc)
		})
	default:
		panic("genQ8AVX2: " + d.String())
	}
	VZEROUPPER()
	RET()
}

// q8RowQ4K256 adds a Q4_K or Q5_K block of a row to acc[i] (q8RowQ4K's
// layout and result, on ymm).
func q8RowQ4K256(d dtype, N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, c10 VecVirtual, qs int, acc []VecVirtual) {
	sc, mn := q4kScalesGP(rowMem)
	tab := YMM() // the 8 scale bytes in every qword
	VMOVQ(sc, tab.AsX())
	VPBROADCASTQ(tab.AsX(), tab)
	mins := YMM()
	VMOVQ(mn, mins.AsX())
	VPMOVZXBW(mins.AsX(), mins.AsX())
	var qh VecVirtual
	if d == dQ5K {
		qh = YMM()
		VMOVDQU(rowMem(16), qh)
	}
	isum := make([]VecVirtual, N)
	for i := range isum {
		isum[i] = YMM()
		VPXOR(isum[i], isum[i], isum[i])
	}
	for c := 0; c < 4; c++ {
		for h := 0; h < 2; h++ {
			// Sub-block 2c+h: the low (h = 0) or high nibbles of bytes
			// qs+32c.., with bit 2c+h of qh as the fifth bit for Q5_K.
			q := YMM()
			if h == 0 {
				VPAND(rowMem(qs+32*c), c0F, q)
			} else {
				VMOVDQU(rowMem(qs+32*c), q)
				VPSRLW(U8(4), q, q)
				VPAND(c0F, q, q)
			}
			if d == dQ5K {
				t := YMM()
				switch b := 2*c + h; {
				case b < 4:
					VPSLLW(U8(4-b), qh, t)
				case b > 4:
					VPSRLW(U8(b-4), qh, t)
				default:
					VMOVDQU(qh, t)
				}
				VPAND(c10, t, t)
				VPOR(t, q, q)
			}
			scv := YMM()
			VPSHUFB(cQ8IdxQ4[c].Offset(32*h), tab, scv)
			maddScaled256(N, func(i int) Mem { return xMem(i, 64*c+32*h) }, q, scv, isum)
		}
	}
	dd := XMM()
	VPBROADCASTD(rowMem(0), dd)
	VCVTPH2PS(dd, dd)
	for i := 0; i < N; i++ {
		ms := XMM()
		VPMADDWD(xMem(i, q8xBsum32), mins.AsX(), ms)
		q8BlockScalar256(isum[i], ms, dd, xMem(i, q8xD), acc[i])
	}
}

// maddScaled256 adds, for each of the N input rows, the 16-bit pair sums of
// the weight codes q times the row's activations at x(i) (VPMADDUBSW),
// weighted by the sub-block scales scv (VPMADDWD), into isum[i].
func maddScaled256(N int, x func(i int) Mem, q, scv VecVirtual, isum []VecVirtual) {
	for i := 0; i < N; i++ {
		p := YMM()
		VPMADDUBSW(x(i), q, p)
		VPMADDWD(scv, p, p)
		VPADDD(p, isum[i], isum[i])
	}
}

// q8BlockScalar256 is q8BlockScalar with VEX instructions: isum a ymm of
// int32 partial sums, ms an xmm of four, the same steps.
func q8BlockScalar256(isum, ms, dd VecVirtual, dx Mem, acc VecVirtual) {
	t := XMM()
	VEXTRACTI128(U8(1), isum, t)
	VPADDD(t, isum.AsX(), isum.AsX())
	lo, hi := XMM(), XMM()
	VPUNPCKLDQ(ms, isum.AsX(), lo)
	VPUNPCKHDQ(ms, isum.AsX(), hi)
	VPADDD(hi, lo, lo)
	VPSHUFD(U8(0x4E), lo, hi)
	VPADDD(hi, lo, lo)
	VCVTDQ2PS(lo, lo)
	f := XMM()
	VBROADCASTSS(dx, f)
	VMULPS(dd, f, f) // [d·d_x, dmin·d_x]
	VMULPS(f, lo, lo)
	VADDSS(lo, acc.AsX(), acc.AsX())
	VMOVSHDUP(lo, hi)
	VSUBSS(hi, acc.AsX(), acc.AsX())
}

// q8RowQ6K256 adds a Q6_K block of a row to acc[i] (q8RowQ6K's layout and
// result), 32 values per ymm: quarter p of half h is the low (p even) or
// high nibbles of ql bytes 64h+32(p&1).., with bits 2p..2p+1 of qh bytes
// 32h.. on top. The block's integer sum is reduced and scaled as
// q6BlockScalar does it.
func q8RowQ6K256(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, c30 VecVirtual, acc []VecVirtual) {
	// The 16 scales as int16 (low lane 0..7, high lane 8..15).
	sc16 := YMM()
	VPMOVSXBW(rowMem(192), sc16)
	isum := make([]VecVirtual, N)
	for i := range isum {
		// The −32 offset: −32·Σ_j sc_j·Σ_{16 values} x.
		isum[i] = YMM()
		VPMADDWD(xMem(i, q8xBsum16), sc16, isum[i])
		negShifted256(isum[i], 5)
	}
	for h := 0; h < 2; h++ {
		sch := halfScales256(sc16, h)
		hb := YMM()
		VMOVDQU(rowMem(128+32*h), hb)
		for p := 0; p < 4; p++ {
			q, t := YMM(), YMM()
			src := rowMem(64*h + 32*(p&1))
			if p < 2 {
				VPAND(src, c0F, q)
			} else {
				VMOVDQU(src, q)
				VPSRLW(U8(4), q, q)
				VPAND(c0F, q, q)
			}
			switch p { // bits 2p..2p+1 of qh to 4..5
			case 0:
				VPSLLW(U8(4), hb, t)
			case 1:
				VPSLLW(U8(2), hb, t)
			case 2:
				VMOVDQU(hb, t)
			case 3:
				VPSRLW(U8(2), hb, t)
			}
			VPAND(c30, t, t)
			VPOR(t, q, q)
			// Sub-blocks 8h+2p (low lane) and 8h+2p+1 (high lane).
			scv := YMM()
			VPSHUFB(cQ6Quarter[p], sch, scv)
			maddScaled256(N, func(i int) Mem { return xMem(i, 128*h+32*p) }, q, scv, isum)
		}
	}
	dv := XMM()
	VPBROADCASTW(rowMem(208), dv)
	VCVTPH2PS(dv, dv)
	for i := 0; i < N; i++ {
		q6BlockScalar256(isum[i], dv, xMem(i, q8xD), acc[i])
	}
}

// halfScales256 returns half h's eight int16 scales (lane h of sc16, the
// block's 16) in both lanes, so that each quarter's scale vector (sub-blocks
// 8h+2p in the low lane, 8h+2p+1 in the high) is one in-lane VPSHUFB by
// cQ6Quarter[p] (q8RowQ6K256, q8RowQ23K256).
func halfScales256(sc16 VecVirtual, h int) VecVirtual {
	sch := YMM()
	VPERMQ(U8(0x44+0xAA*h), sc16, sch) // qwords 2h, 2h+1, 2h, 2h+1
	return sch
}

// negShifted256 sets v to −(v << k), int32 lanes: a code offset taken off
// a sum (−32·OFF for Q6_K, −4·OFF for Q3_K).
func negShifted256(v VecVirtual, k int) {
	VPSLLD(U8(k), v, v)
	z := YMM()
	VPXOR(z, z, z)
	VPSUBD(v, z, v)
}

// q6BlockScalar256 is q6BlockScalar with VEX instructions (isum a ymm).
func q6BlockScalar256(isum, dv VecVirtual, dx Mem, acc VecVirtual) {
	t := XMM()
	VEXTRACTI128(U8(1), isum, t)
	VPADDD(t, isum.AsX(), isum.AsX())
	VPSHUFD(U8(0x4E), isum.AsX(), t)
	VPADDD(t, isum.AsX(), isum.AsX())
	VPSHUFD(U8(0xB1), isum.AsX(), t)
	VPADDD(t, isum.AsX(), isum.AsX())
	VCVTDQ2PS(isum.AsX(), isum.AsX())
	f := XMM()
	VBROADCASTSS(dx, f)
	VMULPS(dv, f, f) // d·d_x
	VMULSS(f, isum.AsX(), isum.AsX())
	VADDSS(isum.AsX(), acc.AsX(), acc.AsX())
}

// q8RowQ23K256 adds a Q3_K or Q2_K block of a row to acc[i] (q8RowQ3K's and
// q8RowQ2K's layouts and results), 32 values per ymm: field j of half n is
// bits 2j, 2j+1 of the 2-bit bytes 32n.. (for Q3_K with bit 4n+j of hmask
// as the third bit), sub-blocks 8n+2j (low lane) and 8n+2j+1 (high lane).
// The block's integer sums are reduced and scaled as q6BlockScalar (Q3_K)
// and q8BlockScalar (Q2_K) do it.
func q8RowQ23K256(d dtype, N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, c03 VecVirtual, acc []VecVirtual) {
	sc16 := YMM() // the 16 scales as int16 (low lane 0..7, high lane 8..15)
	isum := make([]VecVirtual, N)
	for i := range isum {
		isum[i] = YMM()
	}
	var mins, hm, c04 VecVirtual
	qs := 16
	if d == dQ3K {
		qs = 32
		// Scale j's low nibble is nibble j/8 of byte j%8, its high bits
		// bits 2(j/4), 2(j/4)+1 of byte 8+j%4; less 32.
		v, t := XMM(), XMM()
		VMOVQ(rowMem(96), v)
		VPUNPCKLQDQ(v, v, v)
		VPSRLVD(cQ3ScLo, v, v)
		VPAND(c0F.AsX(), v, v)
		VPBROADCASTD(rowMem(104), t)
		VPSRLVD(cQ3ScHi, t, t)
		VPAND(c03.AsX(), t, t)
		VPSLLD(U8(4), t, t)
		VPOR(v, t, t)
		VPBROADCASTD(cB20, v)
		VPSUBB(v, t, t)
		VPMOVSXBW(t, sc16)
		// The −4 offset: −4·Σ_j sc_j·Σ_{16 values} x.
		for i := range isum {
			VPMADDWD(xMem(i, q8xBsum16), sc16, isum[i])
			negShifted256(isum[i], 2)
		}
		hm = YMM()
		VMOVDQU(rowMem(0), hm)
		c04 = YMM()
		VPBROADCASTD(cB04, c04)
	} else {
		raw, t := XMM(), XMM()
		VMOVDQU(rowMem(0), raw)
		VPAND(c0F.AsX(), raw, t)
		VPMOVZXBW(t, sc16)
		VPSRLW(U8(4), raw, t)
		VPAND(c0F.AsX(), t, t)
		mins = YMM()
		VPMOVZXBW(t, mins)
		for i := range isum {
			VPXOR(isum[i], isum[i], isum[i])
		}
	}
	for n := 0; n < 2; n++ {
		sch := halfScales256(sc16, n)
		for j := 0; j < 4; j++ {
			q := YMM()
			if j == 0 {
				VPAND(rowMem(qs+32*n), c03, q)
			} else {
				VMOVDQU(rowMem(qs+32*n), q)
				VPSRLW(U8(2*j), q, q)
				VPAND(c03, q, q)
			}
			if d == dQ3K {
				t := YMM()
				switch b := 4*n + j; { // bit b of hmask to bit 2
				case b < 2:
					VPSLLW(U8(2-b), hm, t)
				case b > 2:
					VPSRLW(U8(b-2), hm, t)
				default:
					VMOVDQU(hm, t)
				}
				VPAND(c04, t, t)
				VPOR(t, q, q)
			}
			scv := YMM()
			VPSHUFB(cQ6Quarter[j], sch, scv) // sub-blocks 8n+2j, 8n+2j+1
			maddScaled256(N, func(i int) Mem { return xMem(i, 128*n+32*j) }, q, scv, isum)
		}
	}
	if d == dQ3K {
		dv := XMM()
		VPBROADCASTW(rowMem(108), dv)
		VCVTPH2PS(dv, dv)
		for i := 0; i < N; i++ {
			q6BlockScalar256(isum[i], dv, xMem(i, q8xD), acc[i])
		}
		return
	}
	dd := XMM()
	VPBROADCASTD(rowMem(80), dd)
	VCVTPH2PS(dd, dd)
	for i := 0; i < N; i++ {
		ms, t := YMM(), XMM()
		VPMADDWD(xMem(i, q8xBsum16), mins, ms)
		VEXTRACTI128(U8(1), ms, t)
		m4 := XMM()
		VPADDD(t, ms.AsX(), m4)
		q8BlockScalar256(isum[i], m4, dd, xMem(i, q8xD), acc[i])
	}
}

// signedMadd256 adds, for each of the N input rows, Σ scale·Σ |w|·x with
// w's signs (sg: VPSIGNB's operand, never 0 where w is not) to isum[i]:
// the activations at x(i) signed as w, VPMADDUBSW with the magnitudes u,
// VPMADDWD with the scale words scv.
func signedMadd256(N int, x func(i int) Mem, sg, u, scv VecVirtual, isum []VecVirtual) {
	for i := 0; i < N; i++ {
		t := YMM()
		VMOVDQU(x(i), t)
		VPSIGNB(sg, t, t)
		VPMADDUBSW(t, u, t)
		VPMADDWD(scv, t, t)
		VPADDD(t, isum[i], isum[i])
	}
}

// q8RowIQ4XS256 adds an IQ4_XS block of a row to acc[i] (q8RowIQ4XS's
// layout and result), one 32-value sub-block per ymm: the sub-block's 16
// bytes in both lanes, low nibbles in the low lane and high nibbles in the
// high (VPSRLVD by 0 and 4), looked up in the codebook; |kv| against x with
// kv's sign (VPSIGNB), VPMADDUBSW, VPMADDWD with the sub-block's scale. The
// block's sum is reduced and scaled as q6BlockScalar does it.
func q8RowIQ4XS256(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, tab VecVirtual, acc []VecVirtual) {
	sc := iq4xsScaleInts(rowMem(0))
	sc16 := YMM() // the 8 scales as int16 in each lane
	VPACKSSDW(sc, sc, sc16)
	VPERMQ(U8(0x88), sc16, sc16)
	isum := make([]VecVirtual, N)
	for i := range isum {
		isum[i] = YMM()
		VPXOR(isum[i], isum[i], isum[i])
	}
	for ib := 0; ib < 8; ib++ {
		q, a := YMM(), YMM()
		VBROADCASTI128(rowMem(8+16*ib), q)
		VPSRLVD(cXSLane, q, q)
		VPAND(c0F, q, q)
		VPSHUFB(q, tab, q) // kv
		VPABSB(q, a)
		scv := YMM()
		VPSHUFB(cXSWord[ib], sc16, scv)
		signedMadd256(N, func(i int) Mem { return xMem(i, 32*ib) }, q, a, scv, isum)
	}
	dv := XMM()
	VPBROADCASTW(rowMem(0), dv)
	VCVTPH2PS(dv, dv)
	for i := 0; i < N; i++ {
		q6BlockScalar256(isum[i], dv, xMem(i, q8xD), acc[i])
	}
}
