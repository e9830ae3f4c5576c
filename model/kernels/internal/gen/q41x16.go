package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- Q4_1 and Q5_1 repacked in 16-row groups: q41x16N, q51x16N ----
//
// A group of 16 weight rows (tensor.Q41x16, Q51x16), per block of 32
// values:
//
//	[0, 32)     the 16 rows' d (f16)
//	[32, 64)    the 16 rows' m (f16)
//	Q5_1 only:  [64, 128) the rows' fifth bits (qh), a dword per row
//	then        64j+4r: word j of row r's nibbles (j < 4)
//
// The input rows are the K-quants' Q8_K blocks (256 values: q, the
// 32-value sums, d_x), eight weight blocks per input block. Per weight
// block k, register j (j < 8) holds values 4j..4j+3 of the 16 rows (the low
// nibbles of word j, or the high nibbles of word j−4, Q5_1's fifth bits
// added as 16 where qh has them), and VPDPBUSD multiplies them with the
// input's 4 bytes broadcast: lane r holds row r's exact I_k = Σ q·q_x with
// no horizontal reduction. Then per lane t = float(I_k)·(d·d_x) +
// float(C_k)·(m·d_x) is added to the row's sum for block position k (eight
// zmm per input row), and when the group's blocks end the eight are added
// as ((a0+a4)+(a2+a6))+((a1+a5)+(a3+a7)): q41Lanes256's and q41Fold's
// steps, so the bits of the row-major kernels and of dotQ8Ref.
//
// q41x16N<n> has the packed kernels' signature (packedSig); nblocks counts
// the input's 256-value blocks.

// q41x16MaxN is the most input rows per call: eight sums per input row.
const q41x16MaxN = 2

// genQ41x16 emits q41x16N<n> (d Q4_1) or q51x16N<n> (Q5_1).
func genQ41x16(d dtype, n int) {
	q5 := d == dQ51
	name := fmt.Sprintf("q41x16N%d", n)
	blockBytes, nib := 16*20, 64
	if q5 {
		name = fmt.Sprintf("q51x16N%d", n)
		blockBytes, nib = 16*24, 128
	}
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked %s weights with %d quantized input rows (see genQ41x16).", name, d, n), n)
	c0F := ZMM()
	VPBROADCASTD(cB0F, c0F)
	var c10 VecVirtual
	if q5 {
		c10 = ZMM()
		VPBROADCASTD(cB10, c10)
	}
	Label(name + "_grp")
	cnt := ld("nblocks")
	xq := ld("xq")
	xm := func(i, disp int) Mem { return packedXMem(idx, xq, i, disp) }
	acc := make([][8]VecVirtual, n)
	for i := range acc {
		for k := range acc[i] {
			acc[i][k] = ZMM()
			VXORPS(acc[i][k], acc[i][k], acc[i][k])
		}
	}
	// Per input row the block's sum, in two partial sums for one input row
	// (whose chain of VPDPBUSD is otherwise the only work), one for two
	// (registers: eight sums per input row). The temporaries are the same
	// virtual registers for every block (avo's greedy allocator fails on
	// a fresh set per block at two input rows).
	parts := 3 - n
	s := make([][]VecVirtual, n)
	for i := range s {
		for range parts {
			s[i] = append(s[i], ZMM())
		}
	}
	w, dw, mw, sc, c := ZMM(), ZMM(), ZMM(), ZMM(), ZMM()
	var qh, rep VecVirtual
	if q5 {
		qh, rep = ZMM(), ZMM()
	}
	Label(name + "_blk")
	for k := 0; k < 8; k++ {
		wm := func(disp int) Mem { return Mem{Base: wp, Disp: blockBytes*k + disp} }
		for i := range s {
			for _, p := range s[i] {
				VPXORD(p, p, p)
			}
		}
		if q5 {
			VMOVDQU64(wm(64), qh)
		}
		for j := 0; j < 8; j++ {
			if j < 4 {
				VPANDD(wm(nib+64*j), c0F, w)
			} else {
				VPSRLW(U8(4), wm(nib+64*(j-4)), w)
				VPANDD(c0F, w, w)
			}
			if q5 {
				// Values 4j..4j+3: bits 4(j%2).. of qh's byte j/2 (as q50x16N).
				if j%2 == 0 {
					VPSHUFB(cQ5Rep[j/2], qh, rep)
				}
				m := K()
				VPTESTMB(cQ5Nib[j%2], rep, m)
				VPADDB(c10, w, m, w)
			}
			for i := 0; i < n; i++ {
				VPDPBUSD_BCST(xm(i, 32*k+4*j), w, s[i][j%parts])
			}
		}
		VCVTPH2PS(wm(0), dw)
		VCVTPH2PS(wm(32), mw)
		for i := 0; i < n; i++ {
			f := s[i][0]
			if parts == 2 {
				VPADDD(s[i][1], f, f)
			}
			VMULPS_BCST(xm(i, q8xD), dw, sc) // d·d_x, as d_x·d (one rounding)
			VCVTDQ2PS(f, f)
			VMULPS(sc, f, f)
			VPBROADCASTW(xm(i, q8xBsum32+2*k), c)
			VPSRAD(U8(16), c, c) // C_k, sign-extended, in every dword
			VCVTDQ2PS(c, c)
			VMULPS_BCST(xm(i, q8xD), mw, sc) // m·d_x
			VMULPS(sc, c, c)
			VADDPS(c, f, f)
			VADDPS(f, acc[i][k], acc[i][k])
		}
	}
	ADDQ(U32(8*blockBytes), wp)
	ADDQ(U32(q8xBlock), xq)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
	out := make([]VecVirtual, n)
	for i := range acc {
		a := acc[i]
		VADDPS(a[4], a[0], a[0])
		VADDPS(a[6], a[2], a[2])
		VADDPS(a[5], a[1], a[1])
		VADDPS(a[7], a[3], a[3])
		VADDPS(a[2], a[0], a[0])
		VADDPS(a[3], a[1], a[1])
		VADDPS(a[1], a[0], a[0])
		out[i] = a[0]
	}
	packedEnd(name, out)
}
