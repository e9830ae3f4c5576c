package main

import (
	"fmt"
	"sort"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// Integer kernels for Q8_0 weights at prefill sizes (AVX-512 VNNI).
//
// Q8_0 keeps one scale per 32 values, so a kernel that walks weight rows
// must turn every block's integer sum into float32 on its own (a horizontal
// reduction per row and block), which costs as much as widening the weights.
// These kernels instead put 16 input rows in the 16 lanes of a register: the
// activations of a group of 16 input rows are quantized to 8 bits per block
// of 32 values and stored interleaved, 4 bytes of each row per dword lane,
//
//	block b of a group (q80xBlock bytes):
//	[64j, 64j+64)  for j < 8: lane i = values 4j..4j+3 of input row i,
//	               as unsigned bytes q+128
//	[512, 576)     lane i = d of input row i (float32, rounded to f16 and back)
//
// and VPDPBUSD multiplies them with 4 weight bytes broadcast from the
// unchanged Q8_0 row: 8 instructions give the 16 rows' exact block sums
// Σ (q_x+128)·q_w, from which the kernel takes 128·Σ q_w (per weight row and
// block, prepared by q80prep512) before one conversion and one FMA per block
// per 16 input rows. Every lane is computed on its own, in the same order
// whatever the other lanes hold or how many weight rows the call has.
const (
	q80xBlock  = 576
	q80xD      = 512
	q80MaxRows = 6 // weight rows per q80dot512R<R> call
)

var (
	cQ80Perm [3][2]Mem // the transpose network's VPERMI2D indices (see q80Transpose)
)

// q80Transpose computes the index vectors of a three-stage VPERMI2D network
// that turns 8 registers holding a [16 rows][8 dwords] matrix row-major
// (register k: rows 2k and 2k+1) into 8 registers holding it column-major
// (register j: dword j of rows 0..15, in row order). Stage s pairs
// registers z and z|1<<s: the one with bit s clear gets the dwords whose
// index has bit s clear, the other the rest, each in (row, dword) order.
func q80Transpose() (idx [3][2][16]uint32) {
	type el struct{ row, dw int }
	var cont [8][16]el
	for k := 0; k < 8; k++ {
		for l := 0; l < 16; l++ {
			cont[k][l] = el{2*k + l/8, l % 8}
		}
	}
	for s := 0; s < 3; s++ {
		var next [8][16]el
		for z := 0; z < 8; z++ {
			if z&(1<<s) != 0 {
				continue
			}
			a, b := z, z|1<<s
			for half := 0; half < 2; half++ {
				// Candidates from table a (index l) and table b (16+l).
				type pick struct {
					e   el
					src uint32
				}
				var ps []pick
				for t, reg := range []int{a, b} {
					for l := 0; l < 16; l++ {
						e := cont[reg][l]
						if (e.dw>>s)&1 == half {
							ps = append(ps, pick{e, uint32(16*t + l)})
						}
					}
				}
				if len(ps) != 16 {
					panic("q80Transpose: unbalanced stage")
				}
				sort.Slice(ps, func(i, j int) bool {
					if ps[i].e.row != ps[j].e.row {
						return ps[i].e.row < ps[j].e.row
					}
					return ps[i].e.dw < ps[j].e.dw
				})
				dst := a
				if half == 1 {
					dst = b
				}
				var v [16]uint32
				for l, p := range ps {
					next[dst][l] = p.e
					v[l] = p.src
				}
				if z == 0 {
					idx[s][half] = v
				} else if idx[s][half] != v {
					panic("q80Transpose: stage indices differ between pairs")
				}
			}
		}
		cont = next
	}
	for j := 0; j < 8; j++ {
		for l := 0; l < 16; l++ {
			if cont[j][l] != (el{l, j}) {
				panic("q80Transpose: not a transpose")
			}
		}
	}
	return idx
}

func genQ80Consts() {
	idx := q80Transpose()
	for s := range idx {
		for h := range idx[s] {
			cQ80Perm[s][h] = data32(fmt.Sprintf("q80perm%d%d", s, h), idx[s][h][:]...)
		}
	}
}

// genQ80Quant emits quantQ80I512(x, xstride, nblocks, dst) bool: quantizes
// 16 input rows (xstride bytes apart) of nblocks·32 values into the
// interleaved layout above, the AVX-512 twin of quantizeQ80Ref (package
// kernels), byte for byte: per row and block d = amax/127 rounded to f16,
// q = round-to-nearest-even(x·(127/amax)), as llama.cpp's quantize_row_q8_0.
// It returns false if x holds an infinity or a NaN (dst is then undefined).
func genQ80Quant() {
	name := "quantQ80I512"
	TEXT(name, NOSPLIT, "func(x *float32, xstride, nblocks int, dst *byte) bool")
	Doc(name + " quantizes 16 input rows to the interleaved 8-bit layout of the Q8_0 integer kernels (see genQ80Quant).")
	px := ld("x")
	xs := ld("xstride")
	nb := ld("nblocks")
	pd := ld("dst")
	abs := ZMM()
	VPBROADCASTD(cAbs, abs)
	b80 := ZMM()
	VPBROADCASTD(cB80, b80)
	bad := K()
	KXORW(bad, bad, bad)

	Label(name + "_blk")
	pr := GP64()
	MOVQ(px, pr)
	for i := 0; i < 16; i++ {
		v0, v1 := ZMM(), ZMM()
		VMOVUPS(Mem{Base: pr}, v0)
		VMOVUPS(Mem{Base: pr, Disp: 64}, v1)
		if i < 15 {
			ADDQ(xs, pr)
		}
		for _, v := range []VecVirtual{v0, v1} {
			k := K()
			VFPCLASSPSZ(U8(0x99), v, k) // QNaN, +Inf, -Inf, SNaN
			KORW(k, bad, bad)
		}
		m, h := ZMM(), ZMM()
		VANDPS(abs, v0, m)
		VANDPS(abs, v1, h)
		VMAXPS(h, m, m)
		VEXTRACTF64X4(U8(1), m, h.AsY())
		VMAXPS(h.AsY(), m.AsY(), m.AsY())
		VEXTRACTF32X4(U8(1), m.AsY(), h.AsX())
		VMAXPS(h.AsX(), m.AsX(), m.AsX())
		VPERMILPS(U8(0x4E), m.AsX(), h.AsX())
		VMAXPS(h.AsX(), m.AsX(), m.AsX())
		VPERMILPS(U8(0xB1), m.AsX(), h.AsX())
		VMAXPS(h.AsX(), m.AsX(), m.AsX())
		// d = f16(amax/127) and id = 127/amax, both 0 for a (near-)zero block.
		d, id := ZMM(), ZMM()
		VXORPS(d, d, d)
		VXORPS(id, id, id)
		zero := fmt.Sprintf("%s_zero%d", name, i)
		VUCOMISS(cTiny, m.AsX())
		JCS(LabelRef(zero)) // amax < tiny (or unordered: then bad is set)
		VMOVSS(cF127, id.AsX())
		VDIVSS(m.AsX(), id.AsX(), id.AsX()) // 127/amax
		t := ZMM()
		VDIVSS(cF127, m.AsX(), t.AsX()) // amax/127
		VCVTPS2PH(U8(0), t.AsX(), t.AsX())
		VCVTPH2PS(t.AsX(), t.AsX())
		VMOVSS(t.AsX(), d.AsX(), d.AsX())
		Label(zero)
		VMOVSS(d.AsX(), Mem{Base: pd, Disp: q80xD + 4*i})
		VBROADCASTSS(id.AsX(), id)
		for c, v := range []VecVirtual{v0, v1} {
			VMULPS(id, v, v)
			VCVTPS2DQ(v, v)
			VPMOVSDB(v, Mem{Base: pd, Disp: 32*i + 16*c})
		}
	}
	// The block's 16 rows are now row-major at dst; transpose them to one
	// register per 4-value chunk, lane = row, and bias to unsigned.
	z := make([]VecVirtual, 8)
	for k := range z {
		z[k] = ZMM()
		VMOVDQU64(Mem{Base: pd, Disp: 64 * k}, z[k])
	}
	for s := 0; s < 3; s++ {
		next := make([]VecVirtual, 8)
		for a := 0; a < 8; a++ {
			if a&(1<<s) != 0 {
				continue
			}
			b := a | 1<<s
			for h, dst := range []int{a, b} {
				o := ZMM()
				VMOVDQU64(cQ80Perm[s][h], o)
				VPERMI2D(z[b], z[a], o)
				next[dst] = o
			}
		}
		z = next
	}
	for j := range z {
		VPXORD(b80, z[j], z[j])
		VMOVDQU64(z[j], Mem{Base: pd, Disp: 64 * j})
	}
	ADDQ(U8(128), px)
	ADDQ(U32(q80xBlock), pd)
	DECQ(nb)
	JNZ(LabelRef(name + "_blk"))
	KORTESTW(bad, bad)
	ok := GP8()
	SETEQ(ok)
	Store(ok, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// genQ80Prep emits q80prep512(w, wstride, nrows, nblocks, ws, wd): for each
// of nrows Q8_0 weight rows and each block b, ws[b*nrows+r] = −128·Σ q (the
// bias the activations' +128 adds to a block sum) and wd[b*nrows+r] = d as
// float32.
func genQ80Prep() {
	name := "q80prep512"
	TEXT(name, NOSPLIT, "func(w *byte, wstride, nrows, nblocks int, ws *int32, wd *float32)")
	Doc(name + " prepares the per-block sums and scales of Q8_0 weight rows for q80dot512R (see genQ80Prep).")
	wq := ld("w")
	nr := ld("nrows")
	os := GP64()
	MOVQ(nr, os)
	SHLQ(U8(2), os)
	pws := ld("ws")
	pwd := ld("wd")
	b80 := ZMM()
	VPBROADCASTD(cB80, b80)
	zero := ZMM()
	VPXORD(zero, zero, zero)

	Label(name + "_row")
	wp := GP64()
	MOVQ(wq, wp)
	o := GP64()
	XORQ(o, o)
	cnt := ld("nblocks")
	Label(name + "_blk")
	q := ZMM()
	VMOVDQU(Mem{Base: wp, Disp: 2}, q.AsY())
	VPXORD(b80.AsY(), q.AsY(), q.AsY())
	VPSADBW(zero.AsY(), q.AsY(), q.AsY())
	h := ZMM()
	VEXTRACTI32X4(U8(1), q.AsY(), h.AsX())
	VPADDQ(h.AsX(), q.AsX(), q.AsX())
	VPSHUFD(U8(0x4E), q.AsX(), h.AsX())
	VPADDQ(h.AsX(), q.AsX(), q.AsX())
	s := GP32()
	VMOVD(q.AsX(), s)
	// −128·(S − 32·128) with S the sum of the biased bytes.
	SHLL(U8(7), s)
	NEGL(s)
	ADDL(U32(524288), s)
	MOVL(s, Mem{Base: pws, Index: o, Scale: 1})
	hd := GP32()
	MOVWLZX(Mem{Base: wp}, hd)
	f := ZMM()
	VMOVD(hd, f.AsX())
	VCVTPH2PS(f.AsX(), f.AsX())
	VMOVSS(f.AsX(), Mem{Base: pwd, Index: o, Scale: 1})
	ADDQ(U8(34), wp)
	ADDQ(os, o)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))

	ADDQ(U8(4), pws)
	ADDQ(U8(4), pwd)
	ADDQ(paddr("wstride"), wq)
	DECQ(nr)
	JNZ(LabelRef(name + "_row"))
	VZEROUPPER()
	RET()
}

// genQ80Dot emits q80dot512R<R>(w, wstride, xg, nblocks, ws, wd, out): for
// the R Q8_0 weight rows at w (wstride bytes apart) and the 16 input rows of
// the quantized group xg, out[16r+i] = Σ_b float(Σ_k q_w·q_x)·(d_x·d_w),
// accumulated over the blocks in order with one FMA each; ws and wd are
// q80prep512's (nrows = R).
func genQ80Dot(R int) {
	name := fmt.Sprintf("q80dot512R%d", R)
	TEXT(name, NOSPLIT, "func(w *byte, wstride int, xg *byte, nblocks int, ws *int32, wd *float32, out *float32)")
	Doc(fmt.Sprintf("%s multiplies %d Q8_0 weight rows with a group of 16 quantized input rows (see genQ80Dot).", name, R))
	rows := make([]GPVirtual, R)
	rows[0] = ld("w")
	st := ld("wstride")
	for r := 1; r < R; r++ {
		rows[r] = GP64()
		LEAQ(Mem{Base: rows[r-1], Index: st, Scale: 1}, rows[r])
	}
	xg := ld("xg")
	cnt := ld("nblocks")
	pws := ld("ws")
	pwd := ld("wd")
	off := GP64()
	XORQ(off, off)
	acc := make([]VecVirtual, R)
	for r := range acc {
		acc[r] = ZMM()
		VXORPS(acc[r], acc[r], acc[r])
	}
	Label(name + "_blk")
	x := make([]VecVirtual, 8)
	for j := range x {
		x[j] = ZMM()
		VMOVDQU64(Mem{Base: xg, Disp: 64 * j}, x[j])
	}
	dx := ZMM()
	VMOVUPS(Mem{Base: xg, Disp: q80xD}, dx)
	for r := 0; r < R; r++ {
		is := ZMM()
		VPBROADCASTD(Mem{Base: pws, Disp: 4 * r}, is)
		for j := 0; j < 8; j++ {
			VPDPBUSD_BCST(Mem{Base: rows[r], Index: off, Scale: 1, Disp: 2 + 4*j}, x[j], is)
		}
		f, s := ZMM(), ZMM()
		VCVTDQ2PS(is, f)
		VMULPS_BCST(Mem{Base: pwd, Disp: 4 * r}, dx, s)
		VFMADD231PS(s, f, acc[r])
	}
	ADDQ(U8(34), off)
	ADDQ(U32(q80xBlock), xg)
	ADDQ(U8(4*R), pws)
	ADDQ(U8(4*R), pwd)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
	op := ld("out")
	for r := 0; r < R; r++ {
		VMOVUPS(acc[r], Mem{Base: op, Disp: 64 * r})
	}
	VZEROUPPER()
	RET()
}
