package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// addWeightedQ80MaxR is the most output rows one addweightedq80 call sums
// into: each takes 32/lanes accumulators (the block's widening is shared),
// which AVX2's 16 registers hold for two outputs.
func addWeightedQ80MaxR(s isa) int {
	if s.z {
		return 4
	}
	return 2
}

// genAddWeightedQ80 emits addweightedq80<512|256>R<r>: one 32-value column
// of n Q8_0 rows (each 34-byte block: an f16 scale d, then 32 int8 values q;
// the rows stride bytes apart) weighted and summed into r output rows at
// once, row after row of the blocks: for output i, s = float32(w_i[t]·d_t),
// then dst_i[j] += float32(s·q_tj) (a multiply and an add, each rounded: the
// bits of AddWeightedQ80Ref for each output alone). The outputs' dst are
// dstride bytes apart, their weights wstride bytes apart. This is
// attention's weighted sum over a Q8_0 KV cache's values, which are stored
// token-major as llama.cpp stores a quantized V cache; the r rows of a
// prefill block share each block's widening.
func genAddWeightedQ80(s isa, r int) {
	name := fname("addweightedq80", s, fmt.Sprintf("R%d", r))
	TEXT(name, NOSPLIT, "func(dst *float32, dstride int, rows *byte, w *float32, wstride, n, stride int)")
	Doc(fmt.Sprintf("%s computes, for %d outputs i, dst_i[j] += float32(float32(w_i[t]·d_t)·q_tj) for j < 32, t < n in order, over n Q8_0 blocks stride bytes apart (see genAddWeightedQ80).", name, r))
	pd := ld("dst")
	dstride := ld("dstride")
	pr := ld("rows")
	pw := ld("w")
	wstride := ld("wstride")
	n := ld("n")
	stride := ld("stride")
	parts := 32 / s.lanes
	// Output i's dst and weights: base + i·stride, as index registers.
	var d2, w2 GPVirtual
	if r >= 3 {
		d2, w2 = GP64(), GP64()
		LEAQ(Mem{Base: dstride, Index: dstride, Scale: 1}, d2)
		LEAQ(Mem{Base: wstride, Index: wstride, Scale: 1}, w2)
	}
	dm := func(i, disp int) Mem {
		switch i {
		case 0:
			return Mem{Base: pd, Disp: disp}
		case 1:
			return Mem{Base: pd, Index: dstride, Scale: 1, Disp: disp}
		case 2:
			return Mem{Base: pd, Index: d2, Scale: 1, Disp: disp}
		}
		return Mem{Base: pd, Index: dstride, Scale: 1, Disp: disp}
	}
	wm := func(i int) Mem {
		switch i {
		case 0:
			return Mem{Base: pw}
		case 1:
			return Mem{Base: pw, Index: wstride, Scale: 1}
		case 2:
			return Mem{Base: pw, Index: w2, Scale: 1}
		}
		return Mem{Base: pw, Index: wstride, Scale: 1}
	}
	// The fourth output is the second one's row doubled: dst + 3·dstride.
	var pd3, pw3 GPVirtual
	if r == 4 {
		pd3, pw3 = GP64(), GP64()
		LEAQ(Mem{Base: pd, Index: d2, Scale: 1}, pd3)
		LEAQ(Mem{Base: pw, Index: w2, Scale: 1}, pw3)
		dm0 := dm
		dm = func(i, disp int) Mem {
			if i == 3 {
				return Mem{Base: pd3, Index: dstride, Scale: 1, Disp: disp}
			}
			return dm0(i, disp)
		}
		wm0 := wm
		wm = func(i int) Mem {
			if i == 3 {
				return Mem{Base: pw3, Index: wstride, Scale: 1}
			}
			return wm0(i)
		}
	}
	acc := make([][]VecVirtual, r)
	for i := range acc {
		acc[i] = make([]VecVirtual, parts)
		for k := range parts {
			acc[i][k] = s.vec()
			VMOVUPS(dm(i, 4*s.lanes*k), acc[i][k])
		}
	}
	TESTQ(n, n)
	JZ(LabelRef(name + "_store"))
	Label(name + "_l")
	h, d := s.vec(), s.vec()
	if s.z {
		VPBROADCASTW(Mem{Base: pr}, h.AsY())
		VCVTPH2PS(h.AsY(), d)
	} else {
		VPBROADCASTW(Mem{Base: pr}, h.AsX())
		VCVTPH2PS(h.AsX(), d)
	}
	qf := make([]VecVirtual, parts)
	for k := range parts {
		qf[k] = s.vec()
		VPMOVSXBD(Mem{Base: pr, Disp: 2 + s.lanes*k}, qf[k])
		VCVTDQ2PS(qf[k], qf[k])
	}
	for i := range r {
		sc := s.vec()
		VBROADCASTSS(wm(i), sc)
		VMULPS(d, sc, sc) // s = w·d
		for k := range parts {
			t := s.vec()
			VMULPS(sc, qf[k], t)
			VADDPS(t, acc[i][k], acc[i][k])
		}
	}
	ADDQ(stride, pr)
	ADDQ(U8(4), pw)
	if r == 4 {
		ADDQ(U8(4), pw3)
	}
	DECQ(n)
	JNZ(LabelRef(name + "_l"))
	Label(name + "_store")
	for i := range acc {
		for k := range parts {
			VMOVUPS(acc[i][k], dm(i, 4*s.lanes*k))
		}
	}
	VZEROUPPER()
	RET()
}
