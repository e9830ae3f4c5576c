package main

import (
	"math"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// cExp holds the constants of expShift (see exp.go in package kernels for the
// method): min and max argument, log2(e), ln2 split in two, the Taylor
// coefficients 1/7! .. 1/1!, and the exponent bias 127 (an integer).
var cExp Mem

const (
	expMin = iota
	expMax
	expLog2e
	expLn2Hi
	expLn2Lo
	expC7   // 1/7!, then 1/6! .. 1/1! = 1, then 1 (the constant term)
	expBias = expC7 + 8
)

func genExpConsts() {
	f := func(v float64) uint32 { return math.Float32bits(float32(v)) }
	vals := []uint32{f(-87.33654), f(88), f(1.44269504088896341), f(0.693359375), f(-2.12194440e-4)}
	fact := 1.0
	cs := make([]uint32, 8)
	for k := 1; k <= 7; k++ {
		fact *= float64(k)
		cs[7-k] = f(1 / fact) // cs[0] = 1/7!, ..., cs[6] = 1/1!
	}
	cs[7] = f(1)
	vals = append(vals, cs...)
	vals = append(vals, 127)
	cExp = data32("expconsts", vals...)
}

// genExp emits expShift: x[i] = e^(x[i]-m) for n (a multiple of the lane count)
// floats, returning Σ as float64 (accumulated in float64 lanes). Arguments are
// clamped to [-87.34, 88] (results ~1.2e-38 at the bottom, not 0); NaNs stay NaN.
//
// Without store it emits sumExpShift512/256: the same sum, x unchanged
// (for a log softmax's denominator).
func genExp(s isa, store bool) {
	name := fname("expShift", s, "")
	doc := []string{name + " sets x[i] = exp(x[i]-m) for i < n (a multiple of the vector width)", "and returns their sum."}
	if !store {
		name = fname("sumExpShift", s, "")
		doc = []string{name + " returns the sum of exp(x[i]-m) for i < n (a multiple of the vector width), x unchanged."}
	}
	TEXT(name, NOSPLIT, "func(x *float32, n int, m float32) float64")
	Pragma("noescape")
	Doc(doc...)
	px := ld("x")
	n := ld("n")
	mv := s.vec()
	VBROADCASTSS(paddr("m"), mv)
	ec := newExpConsts(s)
	lo, hi := ec.lo, ec.hi
	// float64 accumulators: twice the lanes' width in doubles.
	var acc [2]VecVirtual
	for i := range acc {
		if s.z {
			acc[i] = ZMM()
		} else {
			acc[i] = YMM()
		}
		VXORPD(acc[i], acc[i], acc[i])
	}
	SHRQ(U8(log2(s.lanes)), n)
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	d := s.vec()
	VMOVUPS(Mem{Base: px}, d)
	VSUBPS(mv, d, d)
	VMAXPS(d, lo, d) // a NaN in d is the second source: it propagates
	VMINPS(d, hi, d)
	p := ec.exp(s, d)
	if store {
		VMOVUPS(p, Mem{Base: px})
	}
	// Widen to float64 and accumulate.
	if s.z {
		w := ZMM()
		VCVTPS2PD(p.AsY(), w)
		VADDPD(w, acc[0], acc[0])
		h := YMM()
		VEXTRACTF64X4(U8(1), p, h)
		VCVTPS2PD(h, w)
		VADDPD(w, acc[1], acc[1])
	} else {
		w := YMM()
		VCVTPS2PD(p.AsX(), w)
		VADDPD(w, acc[0], acc[0])
		h := XMM()
		VEXTRACTF128(U8(1), p, h)
		VCVTPS2PD(h, w)
		VADDPD(w, acc[1], acc[1])
	}
	ADDQ(U32(s.vbytes()), px)
	DECQ(n)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_done")
	VADDPD(acc[1], acc[0], acc[0])
	y := acc[0]
	if s.z {
		t := YMM()
		VEXTRACTF64X4(U8(1), acc[0], t)
		VADDPD(t, acc[0].AsY(), t)
		y = t
	}
	x := XMM()
	VEXTRACTF128(U8(1), y.AsY(), x)
	VADDPD(x, y.AsX(), x)
	t := XMM()
	VUNPCKHPD(x, x, t)
	VADDSD(t, x, x)
	Store(x, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// expConsts are expShift's constants in registers.
type expConsts struct {
	lo, hi, l2e, ln2hi, ln2lo, bias VecVirtual
	coef                            func(i int) VecVirtual
}

func newExpConsts(s isa) *expConsts {
	bc := func(i int) VecVirtual {
		v := s.vec()
		VBROADCASTSS(cExp.Offset(4*i), v)
		return v
	}
	ec := &expConsts{lo: bc(expMin), hi: bc(expMax), l2e: bc(expLog2e), ln2hi: bc(expLn2Hi), ln2lo: bc(expLn2Lo), bias: bc(expBias)}
	// The AVX-512 flavour keeps the coefficients in registers (it has 32); the
	// AVX2 one broadcasts each from memory when it needs it.
	ec.coef = func(i int) VecVirtual { return bc(expC7 + i) }
	if s.z {
		regs := make([]VecVirtual, 8)
		for i := range regs {
			regs[i] = bc(expC7 + i)
		}
		ec.coef = func(i int) VecVirtual { return regs[i] }
	}
	return ec
}

// exp returns e^d for d already clamped to [lo, hi] (d is clobbered).
func (ec *expConsts) exp(s isa, d VecVirtual) VecVirtual {
	kf := s.vec()
	VMULPS(ec.l2e, d, kf)
	if s.z {
		VRNDSCALEPS(U8(0), kf, kf) // round to nearest
	} else {
		VROUNDPS(U8(0), kf, kf)
	}
	VFNMADD231PS(ec.ln2hi, kf, d) // d -= kf·ln2hi
	VFNMADD231PS(ec.ln2lo, kf, d) // d -= kf·ln2lo
	p := s.vec()
	VMOVAPS(ec.coef(0), p)
	for i := 1; i < 8; i++ {
		VFMADD213PS(ec.coef(i), d, p) // p = p·r + c
	}
	k := s.vec()
	VCVTPS2DQ(kf, k)
	VPADDD(ec.bias, k, k)
	VPSLLD(U8(23), k, k)
	VMULPS(k, p, p)
	return p
}

// genSiLU emits siluMul512(dst, g, u, n): dst[i] = g[i]/(1+e^-g[i])·u[i] for
// n (a multiple of 16) floats, or without the product when u is nil; the
// same operations, in the same order, as SiLUMul's Go loop around expShift
// (so the same bits).
func genSiLU() {
	s := isa512
	name := "siluMul512"
	TEXT(name, NOSPLIT, "func(dst, gate, u *float32, n int)")
	Pragma("noescape")
	Doc(name + " sets dst[i] = gate[i]/(1+exp(-gate[i]))·u[i] for i < n (a multiple of 16; u may be nil).")
	pd, pg, pu, n := ld("dst"), ld("gate"), ld("u"), ld("n")
	ec := newExpConsts(s)
	one := s.vec()
	VBROADCASTSS(cExp.Offset(4*(expC7+7)), one) // the constant term: 1
	SHRQ(U8(4), n)
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	g := s.vec()
	VMOVUPS(Mem{Base: pg}, g)
	d := s.vec()
	VXORPS(d, d, d)
	VSUBPS(g, d, d) // -g
	VMAXPS(d, ec.lo, d)
	VMINPS(d, ec.hi, d)
	e := ec.exp(s, d)
	VADDPS(one, e, e)
	VDIVPS(e, g, g)
	TESTQ(pu, pu)
	JZ(LabelRef(name + "_store"))
	VMULPS(Mem{Base: pu}, g, g)
	ADDQ(U8(64), pu)
	Label(name + "_store")
	VMOVUPS(g, Mem{Base: pd})
	ADDQ(U8(64), pd)
	ADDQ(U8(64), pg)
	DECQ(n)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// genMax emits maxv: the largest of n floats (n a positive multiple of the
// vector width; NaNs are not propagated).
func genMax(s isa) {
	name := fname("maxv", s, "")
	TEXT(name, NOSPLIT, "func(x *float32, n int) float32")
	Doc(name + " returns the largest of x[0..n) (n a positive multiple of the vector width).")
	px := ld("x")
	n := ld("n")
	acc := make([]VecVirtual, 4)
	for i := range acc {
		acc[i] = s.vec()
		VMOVUPS(Mem{Base: px}, acc[i])
	}
	Label(name + "_l4")
	CMPQ(n, U32(4*s.lanes))
	JL(LabelRef(name + "_l1"))
	for i := range acc {
		VMAXPS(Mem{Base: px, Disp: i * s.vbytes()}, acc[i], acc[i])
	}
	ADDQ(U32(4*s.vbytes()), px)
	SUBQ(U32(4*s.lanes), n)
	JMP(LabelRef(name + "_l4"))
	Label(name + "_l1")
	TESTQ(n, n)
	JZ(LabelRef(name + "_red"))
	VMAXPS(Mem{Base: px}, acc[0], acc[0])
	ADDQ(U32(s.vbytes()), px)
	SUBQ(U32(s.lanes), n)
	JMP(LabelRef(name + "_l1"))
	Label(name + "_red")
	VMAXPS(acc[1], acc[0], acc[0])
	VMAXPS(acc[3], acc[2], acc[2])
	VMAXPS(acc[2], acc[0], acc[0])
	x := hreduce(s, acc[0], VMAXPS, VMAXSS)
	Store(x, ReturnIndex(0))
	VZEROUPPER()
	RET()
}
