package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- Q8_0 repacked in 16-row groups: q80x16N ----
//
// A group of 16 weight rows (tensor.Q80x16), per block of 32 values
// (q80x16Block bytes):
//
//	[0, 32)     the 16 rows' d (f16)
//	[32, 544)   64j+4r+k: value 4j+k of row r, as q+128 (unsigned)
//
// The input rows are quantized as for q80rows512 (q80rTile bytes per 16
// blocks: q, d_x, 128·Σq_x). Per block, register j of the group holds bytes
// 4j..4j+3 of all 16 rows (lane = weight row), and one VPDPBUSD per 64
// weight bytes multiplies them with the input row's 4 bytes broadcast: the
// lanes hold the block's sums Σ(q_w+128)·q_x with no horizontal reduction;
// taking off 128·Σq_x leaves the exact Σq_w·q_x. Then, per block in order,
// acc += float(sum)·(d_w·d_x), multiplied and added as q80dot512R and
// q80rows512 do: the same bits.
//
// q80x16N<n> computes groups consecutive groups against n input rows
// (xstride bytes apart), writing group g's 16 results for input row i at
// out + i·ostride + 64·g bytes.

const q80x16Block = 544

// q80x16MaxN is the most input rows per call: 8 weight registers, the
// scales, and per input row an accumulator and its block sum (two partial
// sums for one or two rows, whose chains are otherwise the only work).
const q80x16MaxN = 8

func genQ80x16(n int) {
	name := fmt.Sprintf("q80x16N%d", n)
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked Q8_0 weights with %d quantized input rows (see genQ80x16).", name, n), n)
	Label(name + "_grp")
	cnt := ld("nblocks")
	xq := ld("xq") // the current block's q in the current tile
	// dc: the current block's d_x and 128·Σq_x (at xq's tile + 512/576 + 4·b).
	dc := GP64()
	MOVQ(xq, dc)
	xm := func(base GPVirtual, i, disp int) Mem { return packedXMem(idx, base, i, disp) }
	bi := GP64() // block index within the tile
	XORQ(bi, bi)
	acc := packedZeroAcc(n)
	Label(name + "_blk")
	dw := ZMM()
	VCVTPH2PS(Mem{Base: wp}, dw)
	wv := make([]VecVirtual, 8)
	for j := range wv {
		wv[j] = ZMM()
		VMOVDQU64(Mem{Base: wp, Disp: 32 + 64*j}, wv[j])
	}
	for i := 0; i < n; i++ {
		s0 := ZMM()
		VPXORD(s0, s0, s0)
		if n <= 2 {
			s1 := ZMM()
			VPXORD(s1, s1, s1)
			for j := 0; j < 8; j++ {
				s := s0
				if j%2 == 1 {
					s = s1
				}
				VPDPBUSD_BCST(xm(xq, i, 4*j), wv[j], s)
			}
			VPADDD(s1, s0, s0)
		} else {
			for j := 0; j < 8; j++ {
				VPDPBUSD_BCST(xm(xq, i, 4*j), wv[j], s0)
			}
		}
		VPSUBD_BCST(xm(dc, i, q80rC), s0, s0)
		f, t := ZMM(), ZMM()
		VCVTDQ2PS(s0, f)
		VMULPS_BCST(xm(dc, i, q80rD), dw, t) // d_w·d_x, as d_x·d_w (one rounding)
		VMULPS(t, f, f)
		VADDPS(f, acc[i], acc[i])
	}
	ADDQ(U32(q80x16Block), wp)
	ADDQ(U8(32), xq)
	ADDQ(U8(4), dc)
	INCQ(bi)
	CMPQ(bi, U8(16))
	JNE(LabelRef(name + "_next"))
	// Next tile: q moved 512 bytes into the tile, d/c 64.
	ADDQ(U32(q80rTile-512), xq)
	ADDQ(U32(q80rTile-64), dc)
	XORQ(bi, bi)
	Label(name + "_next")
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
	packedEnd(name, acc)
}

// packedSig is the signature of the packed kernels (q80x16N, q4kx16N,
// q5kx16N, q6kx16N).
const packedSig = "func(w *byte, groups, nblocks int, xq *byte, xstride int, out *float32, ostride int)"

// packedBegin emits a packed kernel's TEXT and loads its weights pointer and
// the byte offsets of input rows 1..n-1 from input row 0 (idx[i] =
// i·xstride; idx[0] unused).
func packedBegin(name, doc string, n int) (wp GPVirtual, idx []GPVirtual) {
	TEXT(name, NOSPLIT, packedSig)
	Doc(doc)
	wp = ld("w")
	xs := ld("xstride")
	idx = make([]GPVirtual, n)
	for i := 1; i < n; i++ {
		idx[i] = GP64()
		if i == 1 {
			MOVQ(xs, idx[i])
		} else {
			IMUL3Q(U8(i), xs, idx[i])
		}
	}
	return wp, idx
}

// packedXMem is input row i's operand at base + disp (base: row 0's).
func packedXMem(idx []GPVirtual, base GPVirtual, i, disp int) Mem {
	if i == 0 {
		return Mem{Base: base, Disp: disp}
	}
	return Mem{Base: base, Index: idx[i], Scale: 1, Disp: disp}
}

// packedZeroAcc returns n zeroed accumulators (one per input row: lane =
// weight row of the group).
func packedZeroAcc(n int) []VecVirtual {
	acc := make([]VecVirtual, n)
	for i := range acc {
		acc[i] = ZMM()
		VXORPS(acc[i], acc[i], acc[i])
	}
	return acc
}

// packedNextBlock moves the weights (blockBytes) and the quantized input
// rows (one q8xBlock) on by a block and loops to name_blk while blocks are
// left (the K-quant packed kernels).
func packedNextBlock(name string, blockBytes int, wp, xq, cnt GPVirtual) {
	ADDQ(U32(blockBytes), wp)
	ADDQ(U32(q8xBlock), xq)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
}

// scaleStep emits one block's float32 step of the integer kernels,
// acc = op(float32(isum)·(d_x·d), acc), d_x broadcast from dx (s and f
// scratch): the rounding q8BlockScalar and q6BlockScalar define.
func scaleStep(op func(...Op), dx Mem, d, isum, acc, s, f VecVirtual) {
	VMULPS_BCST(dx, d, s)
	VCVTDQ2PS(isum, f)
	VMULPS(s, f, f)
	op(f, acc, acc)
}

// packedEnd emits a packed kernel's group epilogue: the group's 16 results
// of input row i at out + i·ostride, out moved on 64 bytes, the next group
// (from name_grp), then the return.
func packedEnd(name string, acc []VecVirtual) {
	op := ld("out")
	ost := ld("ostride")
	o := GP64()
	MOVQ(op, o)
	for i := range acc {
		if i > 0 {
			ADDQ(ost, o)
		}
		VMOVUPS(acc[i], Mem{Base: o})
	}
	ADDQ(U8(64), op)
	Store(op, Param("out"))
	DECQ(paddr("groups"))
	JNZ(LabelRef(name + "_grp"))
	VZEROUPPER()
	RET()
}
