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
	// Output i's dst and weights are base + i·stride: stride, scaled by 1
	// or 2, or 3·stride in a register of its own, as the index.
	at := func(base, stride GPVirtual) func(i, disp int) Mem {
		var three GPVirtual
		if r == 4 {
			three = GP64()
			LEAQ(Mem{Base: stride, Index: stride, Scale: 2}, three)
		}
		return func(i, disp int) Mem {
			switch i {
			case 0:
				return Mem{Base: base, Disp: disp}
			case 1, 2:
				return Mem{Base: base, Index: stride, Scale: uint8(i), Disp: disp}
			}
			return Mem{Base: base, Index: three, Scale: 1, Disp: disp}
		}
	}
	dm, wm := at(pd, dstride), at(pw, wstride)
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
		VBROADCASTSS(wm(i, 0), sc)
		VMULPS(d, sc, sc) // s = w·d
		for k := range parts {
			t := s.vec()
			VMULPS(sc, qf[k], t)
			VADDPS(t, acc[i][k], acc[i][k])
		}
	}
	ADDQ(stride, pr)
	ADDQ(U8(4), pw)
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
