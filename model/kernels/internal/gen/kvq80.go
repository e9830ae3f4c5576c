package main

import (
	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// genAddWeightedQ80 emits addweightedq80512 / addweightedq80256: one
// 32-value column of n Q8_0 rows (each 34-byte block: an f16 scale d, then
// 32 int8 values q; the rows stride bytes apart) weighted and summed into
// dst, row after row: s = float32(w[t]·d_t), then dst[j] += float32(s·q_tj)
// (a multiply and an add, each rounded: the bits of AddWeightedQ80Ref).
// This is attention's weighted sum over a Q8_0 KV cache's values, which are
// stored token-major as llama.cpp stores a quantized V cache.
func genAddWeightedQ80(s isa) {
	name := fname("addweightedq80", s, "")
	TEXT(name, NOSPLIT, "func(dst *float32, rows *byte, w *float32, n, stride int)")
	Doc(name + " computes dst[j] += float32(float32(w[t]·d_t)·q_tj) for j < 32, t < n in order, over n Q8_0 blocks stride bytes apart (see genAddWeightedQ80).")
	pd := ld("dst")
	pr := ld("rows")
	pw := ld("w")
	n := ld("n")
	stride := ld("stride")
	parts := 32 / s.lanes
	acc := make([]VecVirtual, parts)
	for k := range acc {
		acc[k] = s.vec()
		VMOVUPS(Mem{Base: pd, Disp: 4 * s.lanes * k}, acc[k])
	}
	TESTQ(n, n)
	JZ(LabelRef(name + "_store"))
	Label(name + "_l")
	h, d, wt := s.vec(), s.vec(), s.vec()
	if s.z {
		VPBROADCASTW(Mem{Base: pr}, h.AsY())
		VCVTPH2PS(h.AsY(), d)
	} else {
		VPBROADCASTW(Mem{Base: pr}, h.AsX())
		VCVTPH2PS(h.AsX(), d)
	}
	VBROADCASTSS(Mem{Base: pw}, wt)
	VMULPS(d, wt, d) // s = w·d
	for k := range parts {
		q := s.vec()
		VPMOVSXBD(Mem{Base: pr, Disp: 2 + s.lanes*k}, q)
		VCVTDQ2PS(q, q)
		VMULPS(d, q, q)
		VADDPS(q, acc[k], acc[k])
	}
	ADDQ(stride, pr)
	ADDQ(U8(4), pw)
	DECQ(n)
	JNZ(LabelRef(name + "_l"))
	Label(name + "_store")
	for k := range acc {
		VMOVUPS(acc[k], Mem{Base: pd, Disp: 4 * s.lanes * k})
	}
	VZEROUPPER()
	RET()
}
