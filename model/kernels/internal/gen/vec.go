package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// genProbes emits the machine probes: an FMA throughput loop, a streaming read
// and a STREAM-style triad.
func genProbes(s isa) {
	// fmaPeak: iters x 12 independent vector FMAs (2 flops per lane each).
	name := fname("fmaPeak", s, "")
	TEXT(name, NOSPLIT, "func(iters int)")
	Doc(name+" runs iters x 12 independent vector FMAs.", "It exists to measure the FMA throughput of one core.")
	n := ld("iters")
	acc := make([]VecVirtual, 12)
	a, b := s.vec(), s.vec()
	VXORPS(a, a, a)
	VXORPS(b, b, b)
	for i := range acc {
		acc[i] = s.vec()
		VXORPS(acc[i], acc[i], acc[i])
	}
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	for i := range acc {
		VFMADD231PS(a, b, acc[i])
	}
	DECQ(n)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()

	// readMem: stream n bytes (n a multiple of 8 vectors) as 4 concurrent
	// streams (like the 4 rows of a tile) through xor accumulators.
	name = fname("readMem", s, "")
	TEXT(name, NOSPLIT, "func(p *byte, n int) uint64")
	Doc(name+" reads n bytes (a multiple of 8 vectors) as 4 interleaved streams", "and returns a checksum. It measures read bandwidth.")
	p := ld("p")
	n = ld("n")
	acc = make([]VecVirtual, 8)
	for i := range acc {
		acc[i] = s.vec()
		VPXOR(acc[i].AsY(), acc[i].AsY(), acc[i].AsY())
	}
	step := 8 * s.vbytes()
	SHRQ(U8(log2(step)), n)
	JZ(LabelRef(name + "_done"))
	q := GP64()
	MOVQ(n, q)
	SHLQ(U8(log2(step)-2), q) // quarter of the bytes
	Label(name + "_loop")
	for i := range acc {
		m := Mem{Base: p, Disp: (i % 2) * s.vbytes()}
		switch i / 2 {
		case 1:
			m = Mem{Base: p, Index: q, Scale: 1, Disp: (i % 2) * s.vbytes()}
		case 2:
			m = Mem{Base: p, Index: q, Scale: 2, Disp: (i % 2) * s.vbytes()}
		case 3:
			m = Mem{Base: p, Index: q, Scale: 2, Disp: (i % 2) * s.vbytes()}
		}
		if i/2 == 3 {
			r := GP64()
			LEAQ(Mem{Base: p, Index: q, Scale: 2}, r)
			m = Mem{Base: r, Index: q, Scale: 1, Disp: (i % 2) * s.vbytes()}
		}
		if s.z {
			VPXORD(m, acc[i], acc[i])
		} else {
			VPXOR(m, acc[i], acc[i])
		}
	}
	ADDQ(U32(2*s.vbytes()), p)
	DECQ(n)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_done")
	for i := 1; i < len(acc); i++ {
		if s.z {
			VPXORD(acc[i], acc[0], acc[0])
		} else {
			VPXOR(acc[i], acc[0], acc[0])
		}
	}
	r := GP64()
	VMOVQ(acc[0].AsX(), r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()

	// triad: a[i] = b[i] + s*c[i], n a multiple of 4 vectors.
	name = fname("triad", s, "")
	TEXT(name, NOSPLIT, "func(a, b, c *float32, s float32, n int)")
	Doc(name + " computes a[i] = b[i] + s*c[i] for n (a multiple of 4 vectors) floats.")
	pa := ld("a")
	pb := ld("b")
	pc := ld("c")
	n = ld("n")
	sc := s.vec()
	VBROADCASTSS(paddr("s"), sc)
	step = 4 * s.vbytes()
	SHRQ(U8(log2(4*s.lanes)), n)
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	v := make([]VecVirtual, 4)
	for i := range v {
		v[i] = s.vec()
		VMOVUPS(Mem{Base: pb, Disp: i * s.vbytes()}, v[i])
		VFMADD231PS(Mem{Base: pc, Disp: i * s.vbytes()}, sc, v[i])
		VMOVUPS(v[i], Mem{Base: pa, Disp: i * s.vbytes()})
	}
	ADDQ(U32(step), pa)
	ADDQ(U32(step), pb)
	ADDQ(U32(step), pc)
	DECQ(n)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

func log2(v int) int {
	n := 0
	for 1<<n < v {
		n++
	}
	if 1<<n != v {
		panic("not a power of two")
	}
	return n
}

// hsum reduces v to a scalar in the low lane of the returned xmm register.
func hsum(s isa, v VecVirtual) VecVirtual { return hreduce(s, v, VADDPS, VADDSS) }

// hreduce folds the lanes of v with op (ps: packed, ss: scalar) into the low
// lane of the returned xmm register.
func hreduce(s isa, v VecVirtual, ps, ss func(...Op)) VecVirtual {
	if s.z {
		y := YMM()
		VEXTRACTF64X4(U8(1), v, y)
		ps(y, v.AsY(), y)
		v = y
	}
	x := XMM()
	VEXTRACTF128(U8(1), v.AsY(), x)
	ps(x, v.AsX(), x)
	t := XMM()
	VMOVHLPS(x, x, t)
	ps(t, x, x)
	VMOVSHDUP(x, t)
	ss(t, x, x)
	return x
}

// tailMask loads (1<<n)-1 into an opmask (n < 16).
func tailMask(n Register) OpmaskVirtual {
	t := GP64()
	MOVQ(U32(1), t)
	SHLXQ(n, t, t)
	DECQ(t)
	k := K()
	KMOVQ(t, k)
	return k
}

// genVec emits dot, axpy, scale and add.
func genVec(s isa) {
	// ---- dot ----
	name := fname("dot", s, "")
	TEXT(name, NOSPLIT, "func(a, b *float32, n int) float32")
	Doc(name + " returns Σ a[i]·b[i] for i < n.")
	pa := ld("a")
	pb := ld("b")
	n := ld("n")
	acc := zeroedVecs(s, 4)
	vecLoops(s, name, n, []GPVirtual{pa, pb}, func(disp, j int) {
		v := s.vec()
		VMOVUPS(Mem{Base: pa, Disp: disp}, v)
		VFMADD231PS(Mem{Base: pb, Disp: disp}, v, acc[j])
	})
	Label(name + "_tail")
	if s.z {
		TESTQ(n, n)
		JZ(LabelRef(name + "_red"))
		k := tailMask(n)
		v := s.vec()
		w := s.vec()
		VMOVUPS_Z(Mem{Base: pa}, k, v)
		VMOVUPS_Z(Mem{Base: pb}, k, w)
		VFMADD231PS(w, v, acc[1])
		Label(name + "_red")
		foldAcc4(acc)
		r := hsum(s, acc[0])
		Store(r, ReturnIndex(0))
	} else {
		foldAcc4(acc)
		r := hsum(s, acc[0])
		TESTQ(n, n)
		JZ(LabelRef(name + "_ret"))
		Label(name + "_sl")
		t := XMM()
		VMOVSS(Mem{Base: pa}, t)
		VFMADD231SS(Mem{Base: pb}, t, r)
		ADDQ(U8(4), pa)
		ADDQ(U8(4), pb)
		DECQ(n)
		JNZ(LabelRef(name + "_sl"))
		Label(name + "_ret")
		Store(r, ReturnIndex(0))
	}
	VZEROUPPER()
	RET()

	// ---- axpy: y += alpha*x ----
	name = fname("axpy", s, "")
	TEXT(name, NOSPLIT, "func(alpha float32, x, y *float32, n int)")
	Doc(name + " computes y[i] += alpha·x[i] for i < n.")
	al := s.vec()
	VBROADCASTSS(paddr("alpha"), al)
	px := ld("x")
	py := ld("y")
	n = ld("n")
	vecLoops(s, name, n, []GPVirtual{px, py}, func(disp, _ int) {
		v := s.vec()
		VMOVUPS(Mem{Base: py, Disp: disp}, v)
		VFMADD231PS(Mem{Base: px, Disp: disp}, al, v)
		VMOVUPS(v, Mem{Base: py, Disp: disp})
	})
	vecTail(s, name, n, []GPVirtual{px, py}, func(k OpmaskVirtual) {
		v := s.vec()
		w := s.vec()
		VMOVUPS_Z(Mem{Base: py}, k, v)
		VMOVUPS_Z(Mem{Base: px}, k, w)
		VFMADD231PS(w, al, v)
		VMOVUPS(v, k, Mem{Base: py})
	}, func() {
		t := XMM()
		VMOVSS(Mem{Base: py}, t)
		VFMADD231SS(Mem{Base: px}, al.AsX(), t)
		VMOVSS(t, Mem{Base: py})
	})

	// ---- scale: x *= alpha ----
	name = fname("scale", s, "")
	TEXT(name, NOSPLIT, "func(alpha float32, x *float32, n int)")
	Doc(name + " computes x[i] *= alpha for i < n.")
	al = s.vec()
	VBROADCASTSS(paddr("alpha"), al)
	px = ld("x")
	n = ld("n")
	vecLoops(s, name, n, []GPVirtual{px}, func(disp, _ int) {
		v := s.vec()
		VMULPS(Mem{Base: px, Disp: disp}, al, v)
		VMOVUPS(v, Mem{Base: px, Disp: disp})
	})
	vecTail(s, name, n, []GPVirtual{px}, func(k OpmaskVirtual) {
		v := s.vec()
		VMOVUPS_Z(Mem{Base: px}, k, v)
		VMULPS(v, al, v)
		VMOVUPS(v, k, Mem{Base: px})
	}, func() {
		t := XMM()
		VMULSS(Mem{Base: px}, al.AsX(), t)
		VMOVSS(t, Mem{Base: px})
	})

	genBinary(s, "add", "+", VADDPS, VADDSS)
	genBinary(s, "mul", "·", VMULPS, VMULSS)
	genAddScaled(s, true)
	genAddScaled(s, false)
	genRoundBF16(s, false)
	genRoundBF16(s, true)
	for r := 1; r <= addWeightedQ80MaxR(s); r++ {
		genAddWeightedQ80(s, r)
	}
	genBF16Wire(s, "enc")
	genBF16Wire(s, "dec")
	genBF16Wire(s, "add")
	genSSMRows(s)
	if s.z {
		genSSMRows128()
	}
}

// genSSMRows128 emits ssmrows512N128, ssmrows512 for rows of exactly 128
// values (the Granite 4.0-H family's state size): b and c stay in 16
// registers for all the rows, so each 16 values of a row cost one load and
// one store besides the multiply and the two FMAs (ssmrows512 loads b and c
// again for every row). The same steps in the same order: the same bits.
func genSSMRows128() {
	const vb, chunks = 64, 8
	name := "ssmrows512N128"
	TEXT(name, NOSPLIT, "func(st *float32, rows int, dA float32, dtx, b, c, y *float32)")
	Doc(name + " is ssmrows512 for rows of 128 values, b and c held in registers (see genSSMRows128).")
	da := ZMM()
	VBROADCASTSS(paddr("dA"), da)
	pb := ld("b")
	pc := ld("c")
	bv, cv := make([]VecVirtual, chunks), make([]VecVirtual, chunks)
	for j := range chunks {
		bv[j], cv[j] = ZMM(), ZMM()
		VMOVUPS(Mem{Base: pb, Disp: j * vb}, bv[j])
		VMOVUPS(Mem{Base: pc, Disp: j * vb}, cv[j])
	}
	ps := ld("st")
	pt := ld("dtx")
	py := ld("y")
	Label(name + "_row")
	al := ZMM()
	VBROADCASTSS(Mem{Base: pt}, al)
	acc := zeroedVecs(isa512, 4)
	for j := range chunks {
		// As ssmrows512's two passes of its 4-vector loop: chunk j into
		// acc[j%4].
		v := ZMM()
		VMOVUPS(Mem{Base: ps, Disp: j * vb}, v)
		VMULPS(da, v, v)
		VFMADD231PS(bv[j], al, v)
		VMOVUPS(v, Mem{Base: ps, Disp: j * vb})
		VFMADD231PS(cv[j], v, acc[j%4])
	}
	ADDQ(U32(chunks*vb), ps)
	foldAcc4(acc)
	// hsumZ: hsum's steps in EVEX forms (all 32 registers are in use).
	h := ZMM()
	hsumZ(acc[0], h)
	ssmRowEnd(name, acc[0].AsX(), py, pt)
}

// genSSMRows emits ssmrows512 or ssmrows256, one token's Mamba-2 state
// update and read-out for rows consecutive state rows of n values (n a
// multiple of 4 vectors): for each row i
//
//	s ← s·dA; s += dtx[i]·b (fused); y[i] = Σ c·s
//
// with the steps, roundings and summation order of scale, axpy and dot
// called one after another on the row (SSMRowsRef), so the same bits,
// without three calls per row.
func genSSMRows(s isa) {
	vb := s.vbytes()
	lanes := s.lanes
	name := fname("ssmrows", s, "")
	TEXT(name, NOSPLIT, "func(st *float32, n, rows int, dA float32, dtx, b, c, y *float32)")
	Doc(name + " updates rows state rows of n values by one token and reads them out (see genSSMRows).")
	da := s.vec()
	VBROADCASTSS(paddr("dA"), da)
	ps := ld("st")
	pt := ld("dtx")
	py := ld("y")
	Label(name + "_row")
	al := s.vec()
	VBROADCASTSS(Mem{Base: pt}, al)
	pb := ld("b")
	pc := ld("c")
	cnt := ld("n")
	acc := zeroedVecs(s, 4)
	Label(name + "_l4")
	for u := 0; u < 4; u++ {
		v := s.vec()
		VMOVUPS(Mem{Base: ps, Disp: u * vb}, v)
		VMULPS(da, v, v)                                    // scale
		VFMADD231PS(Mem{Base: pb, Disp: u * vb}, al, v)     // axpy
		VMOVUPS(v, Mem{Base: ps, Disp: u * vb})             //
		VFMADD231PS(Mem{Base: pc, Disp: u * vb}, v, acc[u]) // dot
	}
	ADDQ(U32(4*vb), ps)
	ADDQ(U32(4*vb), pb)
	ADDQ(U32(4*vb), pc)
	SUBQ(U32(4*lanes), cnt)
	JNZ(LabelRef(name + "_l4"))
	foldAcc4(acc)
	ssmRowEnd(name, hsum(s, acc[0]), py, pt)
}

// genBinary emits <op>512 or <op>256: dst[i] = a[i] sym b[i] for i < n,
// vop the packed instruction, sop the scalar one (AVX2 tails).
func genBinary(s isa, op, sym string, vop, sop func(...Op)) {
	name := fname(op, s, "")
	TEXT(name, NOSPLIT, "func(dst, a, b *float32, n int)")
	Doc(name + " computes dst[i] = a[i] " + sym + " b[i] for i < n.")
	pd := ld("dst")
	pa := ld("a")
	pb := ld("b")
	n := ld("n")
	ptrs := []GPVirtual{pa, pb, pd}
	vecLoops(s, name, n, ptrs, func(disp, _ int) {
		v := s.vec()
		VMOVUPS(Mem{Base: pa, Disp: disp}, v)
		vop(Mem{Base: pb, Disp: disp}, v, v)
		VMOVUPS(v, Mem{Base: pd, Disp: disp})
	})
	vecTail(s, name, n, ptrs, func(k OpmaskVirtual) {
		v := s.vec()
		w := s.vec()
		VMOVUPS_Z(Mem{Base: pa}, k, v)
		VMOVUPS_Z(Mem{Base: pb}, k, w)
		vop(w, v, v)
		VMOVUPS(v, k, Mem{Base: pd})
	}, func() {
		t := XMM()
		VMOVSS(Mem{Base: pa}, t)
		sop(Mem{Base: pb}, t, t)
		VMOVSS(t, Mem{Base: pd})
	})
}

// vecLoops emits the element loops of the float32 vector kernels: body
// runs four vectors a step (disp i·vector bytes, j = i, for i < 4) while n
// holds four vectors' lanes or more, then one a step (disp 0, j 0) while
// it holds a vector's; each step moves every pointer in ptrs on and takes
// its lanes off n. It ends by jumping to name_tail, which the caller emits
// (vecTail, or dot's own).
func vecLoops(s isa, name string, n GPVirtual, ptrs []GPVirtual, body func(disp, j int)) {
	vb := s.vbytes()
	lanes := s.lanes
	for _, u := range []int{4, 1} {
		next := name + "_tail"
		if u == 4 {
			next = name + "_l1"
		}
		label := fmt.Sprintf("%s_l%d", name, u)
		Label(label)
		CMPQ(n, U32(u*lanes))
		JL(LabelRef(next))
		for i := 0; i < u; i++ {
			body(i*vb, i)
		}
		for _, p := range ptrs {
			ADDQ(U32(u*vb), p)
		}
		SUBQ(U32(u*lanes), n)
		JMP(LabelRef(label))
	}
}

// vecTail emits name_tail, the last n (fewer than a vector's lanes)
// elements of a vector kernel, and its return: masked with the n lanes'
// mask on AVX-512, else scalar one element a step, every pointer in ptrs
// moved on by 4 bytes a step.
func vecTail(s isa, name string, n GPVirtual, ptrs []GPVirtual, masked func(k OpmaskVirtual), scalar func()) {
	Label(name + "_tail")
	TESTQ(n, n)
	JZ(LabelRef(name + "_ret"))
	if s.z {
		masked(tailMask(n))
	} else {
		Label(name + "_sl")
		scalar()
		for _, p := range ptrs {
			ADDQ(U8(4), p)
		}
		DECQ(n)
		JNZ(LabelRef(name + "_sl"))
	}
	Label(name + "_ret")
	VZEROUPPER()
	RET()
}

// zeroedVecs returns n vector registers of s's width, zeroed.
func zeroedVecs(s isa, n int) []VecVirtual {
	v := make([]VecVirtual, n)
	for i := range v {
		v[i] = s.vec()
		VXORPS(v[i], v[i], v[i])
	}
	return v
}

// foldAcc4 adds four accumulators into acc[0] as (a0+a1)+(a2+a3), the order
// dot and the SSM row kernels share.
func foldAcc4(acc []VecVirtual) {
	VADDPS(acc[1], acc[0], acc[0])
	VADDPS(acc[3], acc[2], acc[2])
	VADDPS(acc[2], acc[0], acc[0])
}

// ssmRowEnd ends a row of the SSM row kernels: the read-out (r's low lane)
// stored at y, y and dtx moved on, the next row (from name_row) while rows
// are left, then the return.
func ssmRowEnd(name string, r Op, py, pt GPVirtual) {
	VMOVSS(r, Mem{Base: py})
	ADDQ(U8(4), py)
	ADDQ(U8(4), pt)
	DECQ(paddr("rows"))
	JNZ(LabelRef(name + "_row"))
	VZEROUPPER()
	RET()
}

// genAddScaled emits addscaled512 or addscaled256: dst[i] += alpha·x[i]
// for i < n, n a multiple of 4 vectors' lanes (the caller does the rest),
// the product rounded to float32 before the add (VMULPS, then VADDPS: not
// fused), so the bits of scale then add (Scale(alpha, x); Add(dst, dst,
// x)) without writing x back and reading it again. Without add it emits
// scaleto512/256: dst[i] = alpha·x[i] (Scale's bits, into another slice).
func genAddScaled(s isa, add bool) {
	vb := s.vbytes()
	name := fname("addscaled", s, "")
	doc := name + " computes dst[i] += alpha·x[i] for i < n (a multiple of 4 vectors' lanes), the product rounded first."
	if !add {
		name = fname("scaleto", s, "")
		doc = name + " computes dst[i] = alpha·x[i] for i < n (a multiple of 4 vectors' lanes)."
	}
	TEXT(name, NOSPLIT, "func(dst, x *float32, alpha float32, n int)")
	Doc(doc)
	al := s.vec()
	VBROADCASTSS(paddr("alpha"), al)
	pd := ld("dst")
	px := ld("x")
	n := ld("n")
	TESTQ(n, n)
	JZ(LabelRef(name + "_ret"))
	Label(name + "_l4")
	for i := 0; i < 4; i++ {
		v := s.vec()
		VMULPS(Mem{Base: px, Disp: i * vb}, al, v)
		if add {
			// dst is the add's first source, as in add512(dst, dst, x):
			// the same NaN where both are one.
			w := s.vec()
			VMOVUPS(Mem{Base: pd, Disp: i * vb}, w)
			VADDPS(v, w, w)
			v = w
		}
		VMOVUPS(v, Mem{Base: pd, Disp: i * vb})
	}
	ADDQ(U32(4*vb), px)
	ADDQ(U32(4*vb), pd)
	SUBQ(U32(4*s.lanes), n)
	JNZ(LabelRef(name + "_l4"))
	Label(name + "_ret")
	VZEROUPPER()
	RET()
}

var (
	cDHi16 Mem // dwords 0xFFFF0000
	cDQNaN Mem // dwords 0x00400000 (a float32's quiet bit)
)

func genRoundBF16Consts() {
	cDHi16 = data32("dwordffff0000", 0xFFFF0000)
	cDQNaN = data32("dword400000", 0x400000)
}

// bf16Consts holds roundBF16Vec's constants in registers.
type bf16Consts struct{ one, half, hi, quiet VecVirtual }

func loadBF16Consts(s isa) bf16Consts {
	c := bf16Consts{s.vec(), s.vec(), s.vec(), s.vec()}
	VPBROADCASTD(cD1, c.one)
	VPBROADCASTD(cD7FFF, c.half)
	VPBROADCASTD(cDHi16, c.hi)
	VPBROADCASTD(cDQNaN, c.quiet)
	return c
}

// roundBF16Vec returns v's float32s rounded to bfloat16 and widened back
// (nearest even; a NaN keeps its top 16 bits with the quiet bit set): the
// bits of tensor.BF16ToF32(tensor.F32ToBF16(x)), and of toBF16512's
// rounding.
func roundBF16Vec(s isa, v VecVirtual, c bf16Consts) VecVirtual {
	and := func(a, b, d Op) { VPAND(a, b, d) }
	or := func(a, b, d Op) { VPOR(a, b, d) }
	if s.z {
		and = func(a, b, d Op) { VPANDD(a, b, d) }
		or = func(a, b, d Op) { VPORD(a, b, d) }
	}
	t, r, q := s.vec(), s.vec(), s.vec()
	VPSRLD(U8(16), v, t)
	and(c.one, t, t)
	VPADDD(c.half, t, t)
	VPADDD(t, v, r)
	and(c.hi, r, r)
	and(c.hi, v, q)
	or(c.quiet, q, q)
	if s.z {
		k := K()
		VCMPPS(U8(3), v, v, k) // unordered: a NaN
		VMOVDQA32(q, k, r)
		return r
	}
	m := s.vec()
	VCMPPS(U8(3), v, v, m)
	VPBLENDVB(m, q, r, r)
	return r
}

// genRoundBF16 emits roundbf16512 / roundbf16256 (dst[i] = x[i] rounded
// to bfloat16 and widened back) or, with scaled, addscaledbf16512 /
// addscaledbf16256 (dst[i] += round(float32(alpha·x[i])), the add's first
// source dst), for n a multiple of one vector's lanes: what an in-process
// trunk does to each expert input and output so that they round as the
// cluster's bf16 wire does.
func genRoundBF16(s isa, scaled bool) {
	vb := s.vbytes()
	name := fname("roundbf16", s, "")
	sig := "func(dst, x *float32, n int)"
	doc := name + " computes dst[i] = x[i] rounded to bfloat16 (and widened back) for i < n (a multiple of a vector's lanes)."
	if scaled {
		name = fname("addscaledbf16", s, "")
		sig = "func(dst, x *float32, alpha float32, n int)"
		doc = name + " computes dst[i] += float32(alpha·x[i]) rounded to bfloat16 for i < n (a multiple of a vector's lanes)."
	}
	TEXT(name, NOSPLIT, sig)
	Doc(doc)
	var al VecVirtual
	if scaled {
		al = s.vec()
		VBROADCASTSS(paddr("alpha"), al)
	}
	c := loadBF16Consts(s)
	pd := ld("dst")
	px := ld("x")
	n := ld("n")
	TESTQ(n, n)
	JZ(LabelRef(name + "_ret"))
	Label(name + "_l")
	v := s.vec()
	if scaled {
		VMULPS(Mem{Base: px}, al, v)
	} else {
		VMOVUPS(Mem{Base: px}, v)
	}
	r := roundBF16Vec(s, v, c)
	if scaled {
		w := s.vec()
		VMOVUPS(Mem{Base: pd}, w)
		VADDPS(r, w, w)
		r = w
	}
	VMOVUPS(r, Mem{Base: pd})
	ADDQ(U32(vb), px)
	ADDQ(U32(vb), pd)
	SUBQ(U32(s.lanes), n)
	JNZ(LabelRef(name + "_l"))
	Label(name + "_ret")
	VZEROUPPER()
	RET()
}

// genBF16Wire emits the bfloat16 wire conversions (package wire's encoding,
// little-endian bytes at any alignment), for n a multiple of 16 values:
// bf16enc512/256(dst *byte, x *float32, n) writes x rounded to bfloat16
// (roundBF16Vec's rounding: tensor.F32ToBF16's bits), bf16dec512/256(dst
// *float32, src *byte, n) widens them (tensor.BF16ToF32), and
// bf16add512/256(dst *float32, src *byte, n) adds them to dst.
func genBF16Wire(s isa, op string) {
	name := fname("bf16"+op, s, "")
	sig := map[string]string{"enc": "func(dst *byte, x *float32, n int)", "dec": "func(dst *float32, src *byte, n int)", "add": "func(dst *float32, src *byte, n int)"}[op]
	doc := map[string]string{
		"enc": " writes x[i] rounded to bfloat16 as 2 little-endian bytes each, for i < n (a multiple of 16).",
		"dec": " widens n (a multiple of 16) little-endian bfloat16 values of src into dst.",
		"add": " adds n (a multiple of 16) little-endian bfloat16 values of src to dst.",
	}[op]
	TEXT(name, NOSPLIT, sig)
	Doc(name + doc)
	pd := ld("dst")
	n := ld("n")
	var c bf16Consts
	var px GPVirtual
	if op == "enc" {
		c = loadBF16Consts(s)
		px = ld("x")
	} else {
		px = ld("src")
	}
	SHRQ(U8(4), n)
	JZ(LabelRef(name + "_ret"))
	Label(name + "_l")
	switch op {
	case "enc":
		// 16 values: one zmm, or two ymm packed to words.
		var parts []VecVirtual
		for k := 0; k < 16/s.lanes; k++ {
			v := s.vec()
			VMOVUPS(Mem{Base: px, Disp: 4 * s.lanes * k}, v)
			r := roundBF16Vec(s, v, c)
			VPSRLD(U8(16), r, r)
			parts = append(parts, r)
		}
		if s.z {
			VPMOVDW(parts[0], Mem{Base: pd})
		} else {
			// In-lane packing gives words 0-3, 8-11 | 4-7, 12-15: VPERMQ
			// puts the quadwords back in order.
			VPACKUSDW(parts[1], parts[0], parts[0])
			VPERMQ(U8(0xD8), parts[0], parts[0])
			VMOVDQU(parts[0], Mem{Base: pd})
		}
		ADDQ(U8(64), px)
		ADDQ(U8(32), pd)
	default:
		for k := 0; k < 16/s.lanes; k++ {
			v := s.vec()
			VPMOVZXWD(Mem{Base: px, Disp: 2 * s.lanes * k}, v)
			VPSLLD(U8(16), v, v)
			if op == "add" {
				w := s.vec()
				VMOVUPS(Mem{Base: pd, Disp: 4 * s.lanes * k}, w)
				VADDPS(v, w, w)
				v = w
			}
			VMOVUPS(v, Mem{Base: pd, Disp: 4 * s.lanes * k})
		}
		ADDQ(U8(32), px)
		ADDQ(U8(64), pd)
	}
	DECQ(n)
	JNZ(LabelRef(name + "_l"))
	Label(name + "_ret")
	VZEROUPPER()
	RET()
}
