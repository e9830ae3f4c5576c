package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/ir"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// bf16 dot-product kernels (AVX-512 BF16): bf16 weights times activations
// rounded to bf16, with VDPBF16PS (32 products per instruction into 16
// float32 lanes, twice the work of an FMA and no widening). Neither avo nor
// the Go assembler knows VDPBF16PS, so it is emitted as bytes; its operands
// must then be physical registers, and so are all of these kernels'.

// vdpbf16ps emits VDPBF16PS zmm(acc), zmm(a), zmm(b) (Intel operand order):
// acc[j] += a[2j]·b[2j] + a[2j+1]·b[2j+1] for the 16 float32 lanes j.
func vdpbf16ps(acc, a, b int) {
	inv := func(bit int) byte {
		if bit == 0 {
			return 1
		}
		return 0
	}
	p1 := inv(acc&8)<<7 | inv(b&16)<<6 | inv(b&8)<<5 | inv(acc&16)<<4 | 0x02 // map 0F38
	p2 := byte(^a&0xF)<<3 | 0x04 | 0x02                                      // W0, vvvv, pp F3
	p3 := byte(0x40) | inv(a&16)<<3                                          // 512-bit
	modrm := byte(0xC0) | byte(acc&7)<<3 | byte(b&7)
	for _, v := range []byte{0x62, p1, p2, p3, 0x52, modrm} {
		Instruction(&ir.Instruction{Opcode: "BYTE", Operands: []Op{U8(v)}})
	}
}

var zRegs = []VecPhysical{Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15,
	Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31}

// genBF16Dot emits bf16dot512N<N>(w, wstride, nquads, x, xstride, nchunks, out, ostride):
// for q < nquads, r < 4, i < N
//
//	out[i*ostride + 16q + 4r] = Σ_k W[4q+r][k]·X[i][k]
//
// over nchunks chunks of 32 values, W bf16 (rows wstride bytes apart), X
// bf16 (rows xstride bytes apart, natural order). Strides in bytes.
func genBF16Dot(N int) {
	name := fmt.Sprintf("bf16dot512N%d", N)
	TEXT(name, NOSPLIT, "func(w *byte, wstride, nquads int, x *byte, xstride, nchunks int, out *float32, ostride int)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s computes 4-row x %d-input dot products of bf16 weights and bf16 activations with VDPBF16PS (see genBF16Dot).", name, N))
	wq, ws, xq, xs, oq, os := RAX, RBX, RDX, R8, R10, R11
	w0, w3, x0, x3, cnt := R12, R13, RDI, RSI, R9
	Load(Param("w"), wq)
	Load(Param("wstride"), ws)
	Load(Param("x"), xq)
	Load(Param("xstride"), xs)
	Load(Param("out"), oq)
	Load(Param("ostride"), os)
	acc := func(r, i int) int { return r*N + i }
	wreg := func(r int) int { return 24 + r }
	const xr = 28

	Label(name + "_quad")
	MOVQ(wq, w0)
	LEAQ(Mem{Base: wq, Index: ws, Scale: 2}, w3)
	ADDQ(ws, w3)
	MOVQ(xq, x0)
	if N > 3 {
		LEAQ(Mem{Base: xq, Index: xs, Scale: 2}, x3)
		ADDQ(xs, x3)
	}
	Load(Param("nchunks"), cnt)
	for r := 0; r < 4; r++ {
		for i := 0; i < N; i++ {
			z := zRegs[acc(r, i)]
			VPXORD(z, z, z)
		}
	}
	rowMem := func(r int) Mem {
		switch r {
		case 0:
			return Mem{Base: w0}
		case 1:
			return Mem{Base: w0, Index: ws, Scale: 1}
		case 2:
			return Mem{Base: w0, Index: ws, Scale: 2}
		}
		return Mem{Base: w3}
	}
	xMem := func(i int) Mem {
		switch i {
		case 0:
			return Mem{Base: x0}
		case 1:
			return Mem{Base: x0, Index: xs, Scale: 1}
		case 2:
			return Mem{Base: x0, Index: xs, Scale: 2}
		case 3:
			return Mem{Base: x3}
		case 4:
			return Mem{Base: x3, Index: xs, Scale: 1}
		}
		return Mem{Base: x3, Index: xs, Scale: 2}
	}
	Label(name + "_chunk")
	for r := 0; r < 4; r++ {
		VMOVDQU32(rowMem(r), zRegs[wreg(r)])
	}
	for i := 0; i < N; i++ {
		VMOVDQU32(xMem(i), zRegs[xr])
		for r := 0; r < 4; r++ {
			vdpbf16ps(acc(r, i), wreg(r), xr)
		}
	}
	ADDQ(U8(64), w0)
	ADDQ(U8(64), w3)
	ADDQ(U8(64), x0)
	if N > 3 {
		ADDQ(U8(64), x3)
	}
	DECQ(cnt)
	JNZ(LabelRef(name + "_chunk"))

	// Reduce each input row's four accumulators to four sums and store them.
	MOVQ(oq, x0)
	for i := 0; i < N; i++ {
		a := [4]VecPhysical{zRegs[acc(0, i)], zRegs[acc(1, i)], zRegs[acc(2, i)], zRegs[acc(3, i)]}
		t0, t1, b01, b23, c := Z24, Z25, Z26, Z27, Z28
		VSHUFF32X4(U8(0x44), a[1], a[0], t0)
		VSHUFF32X4(U8(0xEE), a[1], a[0], t1)
		VADDPS(t1, t0, b01)
		VSHUFF32X4(U8(0x44), a[3], a[2], t0)
		VSHUFF32X4(U8(0xEE), a[3], a[2], t1)
		VADDPS(t1, t0, b23)
		VSHUFF32X4(U8(0x88), b23, b01, t0)
		VSHUFF32X4(U8(0xDD), b23, b01, t1)
		VADDPS(t1, t0, c)
		VPERMILPS(U8(0x4E), c, t0)
		VADDPS(t0, c, c)
		VPERMILPS(U8(0xB1), c, t0)
		VADDPS(t0, c, c)
		VMOVDQU32(cRedIdx, Z29)
		VPERMPS(c, Z29, t0)
		VMOVUPS(X24, Mem{Base: x0})
		if i+1 < N {
			ADDQ(os, x0)
		}
	}
	ADDQ(U8(16), oq)
	LEAQ(Mem{Base: wq, Index: ws, Scale: 4}, wq)
	DECQ(paddr("nquads"))
	JNZ(LabelRef(name + "_quad"))
	VZEROUPPER()
	RET()
}

var (
	cD7FFF Mem // dword 0x7FFF
	cD1    Mem // dword 1
	cW40   Mem // dword 0x40 (the quiet bit of a bf16 NaN)
)

func genToBF16Consts() {
	cD7FFF = data32("dword7fff", 0x7FFF)
	cD1 = data32("dword1", 1)
	cW40 = data32("dword40", 0x40)
}

// genToBF16 emits toBF16512(dst, x, n): dst[i] = x[i] rounded to bf16
// (nearest even; a NaN stays a quiet NaN) for n (a multiple of 16) values,
// the same bits as toBF16 in package kernels.
func genToBF16() {
	name := "toBF16512"
	TEXT(name, NOSPLIT, "func(dst *uint16, x *float32, n int)")
	Pragma("noescape")
	Doc(name + " rounds n (a multiple of 16) float32 values to bf16 (see genToBF16).")
	pd, px, n := ld("dst"), ld("x"), ld("n")
	c7 := ZMM()
	VPBROADCASTD(cD7FFF, c7)
	c1 := ZMM()
	VPBROADCASTD(cD1, c1)
	c40 := ZMM()
	VPBROADCASTD(cW40, c40)
	SHRQ(U8(4), n)
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	v := ZMM()
	VMOVDQU32(Mem{Base: px}, v)
	t := ZMM()
	VPSRLD(U8(16), v, t)
	VPANDD(c1, t, t)
	VPADDD(c7, t, t)
	r := ZMM()
	VPADDD(t, v, r)
	VPSRLD(U8(16), r, r)
	// NaNs: the truncated bits with the quiet bit set.
	k := K()
	VCMPPS(U8(3), v, v, k) // unordered
	h := ZMM()
	VPSRLD(U8(16), v, h)
	VPORD(c40, h, h)
	VMOVDQA32(h, k, r)
	VPMOVDW(r, Mem{Base: pd})
	ADDQ(U8(64), px)
	ADDQ(U8(32), pd)
	DECQ(n)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// genBF16Rows emits bf16rows512(w, wstride, nrows, x, nchunks, out): for
// r < nrows, out[r] = Σ_k W[r][k]·x[k] over nchunks chunks of 32 values (one
// input row; W and x bf16). It walks the rows one after the other (one
// sequential stream through the weights), with one accumulator per row over
// the chunks in order and the tiles' lane reduction (hsumZ is the same tree
// per row as genBF16Dot's four-row reduction): the bits of bf16dot512N, so
// that one input row gives a row the same result as a tile of several.
// (The four accumulators per row it had before measured the same speed
// within 2%, one thread, in_proj shape: the next row's loads and products
// overlap the current row's chain.)
//
// With streams 2 it emits bf16rows512S2(w, wstride, nrows, x, nchunks, out,
// wspan, ospan): the same on two runs of rows at once, run two starting
// wspan bytes after w and writing ospan bytes after out (see streams.go:
// one core reads faster from two distant places than from one), each row's
// chain and reduction as bf16rows512's.
func genBF16Rows(streams int) {
	name := "bf16rows512"
	sig := "func(w *byte, wstride, nrows int, x *byte, nchunks int, out *float32)"
	doc := " computes one-input-row dot products of bf16 weight rows taken one after the other, with VDPBF16PS (see genBF16Rows)."
	if streams == 2 {
		name += "S2"
		sig = "func(w *byte, wstride, nrows int, x *byte, nchunks int, out *float32, wspan, ospan int)"
		doc = " computes one-input-row dot products of bf16 weight rows of two runs at once, with VDPBF16PS (see genBF16Rows)."
	}
	TEXT(name, NOSPLIT, sig)
	Pragma("noescape")
	Doc(name + doc)
	wq, ws, oq, xp, cnt := RAX, RBX, R10, RDI, R9
	ptr := []Register{R12, R13}[:streams] // run s's current chunk
	wreg := [2]int{8, 16}                 // run s's weight registers (Z8.., Z16..)
	sp, osp := R11, R8
	Load(Param("w"), wq)
	Load(Param("wstride"), ws)
	Load(Param("out"), oq)
	if streams == 2 {
		Load(Param("wspan"), sp)
		Load(Param("ospan"), osp)
	}
	Label(name + "_row")
	MOVQ(wq, ptr[0])
	if streams == 2 {
		LEAQ(Mem{Base: wq, Index: sp, Scale: 1}, ptr[1])
	}
	Load(Param("x"), xp)
	Load(Param("nchunks"), cnt)
	for s := range ptr {
		VPXORD(zRegs[2*s], zRegs[2*s], zRegs[2*s])
	}
	// step emits k chunks' loads and products of every run.
	step := func(k int) {
		for c := 0; c < k; c++ {
			for s := range ptr {
				VMOVDQU32(Mem{Base: ptr[s], Disp: 64 * c}, zRegs[wreg[s]+c])
			}
			VMOVDQU32(Mem{Base: xp, Disp: 64 * c}, zRegs[12+c])
		}
		for c := 0; c < k; c++ {
			for s := range ptr {
				vdpbf16ps(2*s, wreg[s]+c, 12+c)
			}
		}
		for _, p := range append(ptr, xp) {
			if k == 4 {
				ADDQ(U32(256), p)
			} else {
				ADDQ(U8(64), p)
			}
		}
	}
	Label(name + "_four")
	CMPQ(cnt, U8(4))
	JL(LabelRef(name + "_one"))
	step(4)
	SUBQ(U8(4), cnt)
	JMP(LabelRef(name + "_four"))
	Label(name + "_one")
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_red"))
	step(1)
	DECQ(cnt)
	JMP(LabelRef(name + "_one"))
	Label(name + "_red")
	for s := range ptr {
		hsumZ(zRegs[2*s], zRegs[2*s+1])
	}
	VMOVSS(X0, Mem{Base: oq})
	if streams == 2 {
		VMOVSS(X2, Mem{Base: oq, Index: osp, Scale: 1})
	}
	ADDQ(U8(4), oq)
	ADDQ(ws, wq)
	DECQ(paddr("nrows"))
	JNZ(LabelRef(name + "_row"))
	VZEROUPPER()
	RET()
}
