package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// Integer kernels for CPUs with AVX2 but not AVX-512: Q4_K and Q5_K weights
// times activations quantized to 8 bits (the same quantized blocks as
// genQ8's), VPMADDUBSW of the weight codes with the activations and
// VPMADDWD with the sub-block scales, on ymm. Each block's sum is taken to
// one float32 step per row exactly as q8BlockScalar takes it (the same
// exact integers, the same multiplies and adds), so these kernels give the
// bits of the AVX-512 ones and of the plain twin.
//
// q8dot256<dtype>N<N> has genQ8's signature and meaning.

// q8AVX2Dtypes are the weight types with AVX2 integer kernels.
var q8AVX2Dtypes = []dtype{dQ4K, dQ5K}

func genQ8AVX2(d dtype, N int) {
	name := fmt.Sprintf("q8dot256%sN%d", d, N)
	TEXT(name, NOSPLIT, q8Sig)
	Doc(fmt.Sprintf("%s computes %d-input dot products of %s weights with 8-bit activations on AVX2 (see genQ8AVX2).", name, N, d))
	bb, qs := 144, 16
	if d == dQ5K {
		bb, qs = 176, 48
	}
	ws := ld("wstride")
	wq := ld("w")
	oq := ld("out")
	c0F := YMM()
	VPBROADCASTD(cB0F, c0F)
	var c10 VecVirtual
	if d == dQ5K {
		c10 = YMM()
		VPBROADCASTD(cB10, c10)
	}

	Label(name + "_row")
	w0 := GP64()
	MOVQ(wq, w0)
	xp := ld("xq")
	var xs GPVirtual
	if N > 1 {
		xs = ld("xqstride")
	}
	cnt := ld("nblocks")
	acc := make([]VecVirtual, N)
	for i := range acc {
		acc[i] = YMM()
		VXORPS(acc[i], acc[i], acc[i])
	}
	rowMem := func(off int) Mem { return Mem{Base: w0, Disp: off} }
	xMem := func(i, off int) Mem {
		if i == 0 {
			return Mem{Base: xp, Disp: off}
		}
		return Mem{Base: xp, Index: xs, Scale: 1, Disp: off}
	}
	Label(name + "_blk")
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
			for i := 0; i < N; i++ {
				p := YMM()
				VPMADDUBSW(xMem(i, 64*c+32*h), q, p)
				VPMADDWD(scv, p, p)
				VPADDD(p, isum[i], isum[i])
			}
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
	ADDQ(U32(bb), w0)
	ADDQ(U32(q8xBlock), xp)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))

	var os GPVirtual
	if N > 1 {
		os = ld("ostride")
	}
	op := GP64()
	MOVQ(oq, op)
	for i := 0; i < N; i++ {
		VMOVSS(acc[i].AsX(), Mem{Base: op})
		if i+1 < N {
			ADDQ(os, op)
		}
	}
	ADDQ(U8(4), oq)
	ADDQ(ws, wq)
	DECQ(paddr("nrows"))
	JNZ(LabelRef(name + "_row"))
	VZEROUPPER()
	RET()
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
