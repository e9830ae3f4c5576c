package main

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// Integer kernels: K-quant (Q2_K to Q6_K) and IQ4_XS weights times
// activations quantized to 8 bits (AVX-512 BW + VNNI).
//
// The activations are quantized per block of 256 values (see quantizeQ8K in
// package kernels), 320 bytes per block:
//
//	[0, 256)    q: int8, x ≈ d·q
//	[256, 288)  int16 sums of q over each 16 values
//	[288, 304)  int16 sums of q over each 32 values
//	[304, 308)  d: float32
//
// Per weight row and block the kernels form the exact integer sums
// Σ sc_j·Σ q_w·q_x (VPMADDUBSW of the unsigned weight codes with the signed
// activations, then VPDPWSSD with the sub-block scales) and, for the
// offsets (Q2_K's and Q4_K's mins, Q6_K's −32, Q3_K's −4), the
// scale-weighted activation sums;
// float32 enters only to scale those integers by the blocks' d's.
// q8Tiny: blocks whose largest |x| is below it quantize to zero (so that
// 127/amax stays finite).
const q8Tiny = 1e-30

const (
	q8xBlock  = 320
	q8xBsum16 = 256
	q8xBsum32 = 288
	q8xD      = 304
)

// q8Dtypes are the weight types with integer kernels.
var q8Dtypes = []dtype{dQ4K, dQ5K, dQ6K, dQ3K, dQ2K, dIQ4XS}

// q8MaxN is the largest number of input rows per integer kernel call.
const q8MaxN = 2

var (
	cQ8ShQ4  Mem    // words: 0 x16, 4 x16 (VPSRLVW: low nibbles, then high)
	cQ8ShQ6A Mem    // words: 4 x16, 2 x16 (VPSLLVW: qh bits 0-1, then 2-3, to bits 4-5)
	cQ8ShQ6B Mem    // words: 0 x16, 2 x16 (VPSRLVW: qh bits 4-5, then 6-7, to bits 4-5)
	cB0F     Mem    // dword 0x0F0F0F0F
	cB30     Mem    // dword 0x30303030
	cQ8IdxQ4 [4]Mem // VPSHUFB controls: chunk c's scale bytes 2c (16 words), 2c+1 (16 words)
	cQ8IdxQ6 [4]Mem // VPERMW indices: chunk c's scales 4c..4c+3 (x8 each)
	cQ8Q5Bit [4]Mem // bytes: chunk c's fifth-bit masks in qh, 1<<2c (x32), 1<<(2c+1) (x32)
	cB10     Mem    // dword 0x10101010
	cB03     Mem    // dword 0x03030303
	cB04     Mem    // dword 0x04040404
	cB20     Mem    // dword 0x20202020
	cQ8ShQ2  [2]Mem // words: 0 x16, 2 x16; 4 x16, 6 x16 (VPSRLVW: a chunk's two 2-bit fields)
	cQ3Bit   [4]Mem // bytes: chunk c's third-bit masks in hmask, 1<<(2c) x32, 1<<(2c+1) x32
	cQ3ScLo  Mem    // dwords 0, 0, 4, 4 (VPSRLVD: the Q3_K scales' low nibbles)
	cQ3ScHi  Mem    // dwords 0, 2, 4, 6 (VPSRLVD: their high bit pairs)
	cQ8IdxXS [4]Mem // VPERMW indices: chunk c's scales 2c (x16), 2c+1 (x16)
)

func genQ8Consts() {
	w2 := func(v uint32) uint32 { return v | v<<16 }
	cQ8ShQ4 = data32("q8shq4", append(rep(0, 8), rep(w2(4), 8)...)...)
	cQ8ShQ6A = data32("q8shq6a", append(rep(w2(4), 8), rep(w2(2), 8)...)...)
	cQ8ShQ6B = data32("q8shq6b", append(rep(0, 8), rep(w2(2), 8)...)...)
	cB0F = data32("b0f", 0x0F0F0F0F)
	cB30 = data32("b30", 0x30303030)
	cB10 = data32("b10", 0x10101010)
	cB03 = data32("b03", 0x03030303)
	cB04 = data32("b04", 0x04040404)
	cB20 = data32("b20", 0x20202020)
	cQ8ShQ2[0] = data32("q8shq2_0", append(rep(0, 8), rep(w2(2), 8)...)...)
	cQ8ShQ2[1] = data32("q8shq2_1", append(rep(w2(4), 8), rep(w2(6), 8)...)...)
	cQ3ScLo = data32("q3sclo", 0, 0, 4, 4)
	cQ3ScHi = data32("q3schi", 0, 2, 4, 6)
	for c := 0; c < 4; c++ {
		a, b := uint32(2*c), uint32(2*c+1)
		// Word = scale byte (then 0x80: a zero high byte).
		cQ8IdxQ4[c] = data32(fmt.Sprintf("q8idxq4_%d", c), append(rep(w2(0x8000|a), 8), rep(w2(0x8000|b), 8)...)...)
		var v []uint32
		for g := 0; g < 4; g++ {
			v = append(v, rep(w2(uint32(4*c+g)), 4)...)
		}
		cQ8IdxQ6[c] = data32(fmt.Sprintf("q8idxq6_%d", c), v...)
		cQ8IdxXS[c] = data32(fmt.Sprintf("q8idxxs_%d", c), append(rep(w2(uint32(2*c)), 8), rep(w2(uint32(2*c+1)), 8)...)...)
		lo, hi := uint32(1)<<(2*c), uint32(1)<<(2*c+1)
		cQ8Q5Bit[c] = data32(fmt.Sprintf("q8q5bit_%d", c), append(rep(lo*0x01010101, 8), rep(hi*0x01010101, 8)...)...)
		// Chunk c of a Q3_K block: values 64c.., half n = c/2, fields j
		// = 2(c%2) and j+1, whose third bits are bits 4n+j, 4n+j+1 = 2c,
		// 2c+1 of hmask.
		cQ3Bit[c] = data32(fmt.Sprintf("q3bit_%d", c), append(rep(lo*0x01010101, 8), rep(hi*0x01010101, 8)...)...)
	}
}

// q8VNNI: the kernel being generated may use VPDPWSSD.
var q8VNNI bool

// dpwssd adds the pairwise products of the int16 lanes of a and b to the
// int32 lanes of acc.
func dpwssd(a, b, acc VecVirtual) {
	if q8VNNI {
		VPDPWSSD(a, b, acc)
		return
	}
	t := ZMM()
	VPMADDWD(a, b, t)
	VPADDD(t, acc, acc)
}

const q8Sig = "func(w *byte, wstride, nrows int, xq *byte, xqstride, nblocks int, out *float32, ostride int)"

// hfoldY folds the 8 float32 lanes of the ymm a into its lowest lane with
// op (packed), the last step with last, h (an xmm) as scratch: the high
// half onto the low, then the pairs 0x4E, then 0xB1 (VEX forms: the AVX2
// kernels).
func hfoldY(a, h VecVirtual, op, last func(...Op)) {
	VEXTRACTF128(U8(1), a, h)
	op(h, a.AsX(), a.AsX())
	VPERMILPS(U8(0x4E), a.AsX(), h)
	op(h, a.AsX(), a.AsX())
	VPERMILPS(U8(0xB1), a.AsX(), h)
	last(h, a.AsX(), a.AsX())
}

// hsumZ adds the 16 float32 lanes of a into its lowest lane, with h as
// scratch (EVEX forms only, so any of the 32 registers will do; virtual or
// physical).
func hsumZ(a, h Vec) { hfoldZ(a, h, VADDPS, VADDSS) }

// hmaxZ leaves the largest of a's 16 float32 lanes in every lane of its low
// xmm, with h as scratch (as hsumZ).
func hmaxZ(a, h Vec) { hfoldZ(a, h, VMAXPS, VMAXPS) }

// hfoldZ folds the 16 float32 lanes of a in place with op (packed), the
// last step with last: halves, quarters, then pairs within the xmm.
func hfoldZ(a, h Vec, op, last func(...Op)) {
	VEXTRACTF64X4(U8(1), a.AsZ(), h.AsY())
	op(h.AsY(), a.AsY(), a.AsY())
	VEXTRACTF32X4(U8(1), a.AsY(), h.AsX())
	op(h.AsX(), a.AsX(), a.AsX())
	VPERMILPS(U8(0x4E), a.AsX(), h.AsX())
	op(h.AsX(), a.AsX(), a.AsX())
	VPERMILPS(U8(0xB1), a.AsX(), h.AsX())
	last(h.AsX(), a.AsX(), a.AsX())
}

// genQ8 emits q8dot512<dtype>N<N>: for r < nrows, i < N
//
//	out[i*ostride + 4r] = Σ_k W[r][k] · X[i][k]
//
// with W's rows wstride bytes apart and X[i] the quantized activations at
// xq + i*xqstride (nblocks blocks of q8xBlock bytes). Strides are in bytes.
//
// With vnni false it emits q8dot512<dtype>N<N>BW for CPUs with AVX-512 BW but
// not VNNI (Skylake-SP): VPMADDWD and VPADDD instead of VPDPWSSD, the same
// integer sums.
func genQ8(d dtype, N int, vnni bool) {
	name := fmt.Sprintf("q8dot512%sN%d", d, N)
	if !vnni {
		name += "BW"
	}
	q8VNNI = vnni
	TEXT(name, NOSPLIT, q8Sig)
	Doc(fmt.Sprintf("%s computes %d-input dot products of %s weights with 8-bit activations (see genQ8).", name, N, d))
	var bb int
	switch d {
	case dQ4K:
		bb = 144
	case dQ5K:
		bb = 176
	case dQ6K:
		bb = 210
	case dQ3K:
		bb = 110
	case dQ2K:
		bb = 84
	case dIQ4XS:
		bb = 136
	default:
		panic("genQ8: " + d.String())
	}
	ws := ld("wstride")
	wq := ld("w")
	oq := ld("out")

	c0F := ZMM()
	VPBROADCASTD(cB0F, c0F)
	var c30 VecVirtual
	switch d {
	case dQ6K:
		c30 = ZMM()
		VPBROADCASTD(cB30, c30)
	case dQ5K:
		c30 = ZMM() // 0x10 bytes: the fifth bit
		VPBROADCASTD(cB10, c30)
	case dQ3K, dQ2K:
		c30 = ZMM() // 0x03 bytes: a 2-bit field
		VPBROADCASTD(cB03, c30)
	case dIQ4XS:
		c30 = ZMM() // the IQ4_NL codebook (int8) in every 16-byte lane
		VBROADCASTI64X4(cIQ4Y, c30)
	}
	var idx [4]VecVirtual
	for c := range idx {
		idx[c] = ZMM()
		switch d {
		case dIQ4XS:
			VMOVDQU64(cQ8IdxXS[c], idx[c])
		case dQ4K, dQ5K:
			VMOVDQU64(cQ8IdxQ4[c], idx[c])
		default:
			VMOVDQU64(cQ8IdxQ6[c], idx[c])
		}
	}
	acc := make([]VecVirtual, N) // per input row
	for i := range acc {
		acc[i] = ZMM()
	}

	q8Rows(N, name, bb, ws, wq, oq, acc, func(rowMem func(off int) Mem, xMem func(i, off int) Mem) {
		isum := make([]VecVirtual, N)
		for i := range isum {
			isum[i] = ZMM()
		}
		switch d {
		case dQ4K, dQ5K:
			q8RowQ4K(d, N, rowMem, xMem, c0F, c30, idx, isum, acc)
		case dQ6K:
			q8RowQ6K(N, rowMem, xMem, c0F, c30, idx, isum, acc)
		case dQ3K:
			q8RowQ3K(N, rowMem, xMem, c0F, c30, idx, isum, acc)
		case dQ2K:
			q8RowQ2K(N, rowMem, xMem, c0F, c30, idx, isum, acc)
		case dIQ4XS:
			q8RowIQ4XS(N, rowMem, xMem, c0F, c30, idx, isum, acc)
		}
	})
	VZEROUPPER()
	RET()
}

// q8RowQ4K adds row r's block (Q4_K or Q5_K) to acc[i]:
//
//	dx_i · (d·Σ_j sc_j·Σ q·x_i − dmin·Σ_j m_j·Σ x_i)
//
// Q4_K block: d, dmin (f16) at 0 and 2, 12 bytes of 6-bit scales and mins at
// 4, 128 bytes of nibbles at 16 (values 64c+l: low nibble of byte 32c+l for
// l < 32, high nibble of byte 32c+l-32 above). Q5_K: the same with the
// nibbles at 48 and 32 bytes qh at 16 whose bit 2c (l < 32) or 2c+1 (above)
// of byte l%32 is the fifth bit of value 64c+l (c10: bytes 0x10).
func q8RowQ4K(d dtype, N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, c10 VecVirtual, idx [4]VecVirtual, isum, acc []VecVirtual) {
	qs := 16
	var qh VecVirtual
	if d == dQ5K {
		qs = 48
		qh = ZMM()
		VBROADCASTI64X4(rowMem(16), qh)
	}
	sc, u2 := q4kScalesGP(rowMem)

	// The 8 scale bytes in every qword; chunk c's scale words by VPSHUFB.
	tab := ZMM()
	VMOVQ(sc, tab.AsX())
	VPBROADCASTQ(tab.AsX(), tab)
	mins := ZMM()
	VMOVQ(u2, mins.AsX())
	VPMOVZXBW(mins.AsX(), mins.AsX())
	q8RowQ4KBody(d, N, rowMem, xMem, c0F, c10, idx, isum, acc, qs, qh, tab, mins)
}

// q4kScalesGP decodes a Q4_K/Q5_K block's 12 bytes of 6-bit scales and mins
// (at rowMem(4)) in general registers: sc holds the 8 scale bytes, mn the 8
// mins.
func q4kScalesGP(rowMem func(off int) Mem) (sc, mn GPVirtual) {
	// Scales and mins, one byte each (u0 = bytes 4..7, u1 = 8..11, u2 = 12..15):
	// sc[0..3] = u0 & 0x3f, m[0..3] = u1 & 0x3f,
	// sc[4..7] = (u2 & 0xf) | (u0 >> 6) << 4, m[4..7] = (u2 >> 4) | (u1 >> 6) << 4.
	u0, u1, u2, t := GP64(), GP64(), GP64(), GP64()
	MOVL(rowMem(4), u0.As32())
	MOVL(rowMem(8), u1.As32())
	MOVL(rowMem(12), u2.As32())
	MOVL(u0.As32(), t.As32())
	SHRL(U8(2), t.As32())
	ANDL(U32(0x30303030), t.As32())
	ANDL(U32(0x3F3F3F3F), u0.As32())
	sc = GP64()
	MOVL(u2.As32(), sc.As32())
	ANDL(U32(0x0F0F0F0F), sc.As32())
	ORL(t.As32(), sc.As32())
	SHLQ(U8(32), sc)
	ORQ(u0, sc)
	MOVL(u1.As32(), t.As32())
	SHRL(U8(2), t.As32())
	ANDL(U32(0x30303030), t.As32())
	ANDL(U32(0x3F3F3F3F), u1.As32())
	SHRL(U8(4), u2.As32())
	ANDL(U32(0x0F0F0F0F), u2.As32())
	ORL(t.As32(), u2.As32())
	SHLQ(U8(32), u2)
	ORQ(u1, u2)
	return sc, u2
}

func q8RowQ4KBody(d dtype, N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, c10 VecVirtual, idx [4]VecVirtual, isum, acc []VecVirtual, qs int, qh, tab, mins VecVirtual) {
	// Two partial sums per input row (chunks 0-1 and 2-3) to halve the
	// dependency chain.
	part := make([][2]VecVirtual, N)
	for i := range part {
		part[i] = [2]VecVirtual{isum[i], ZMM()}
	}
	for c := 0; c < 4; c++ {
		q := ZMM()
		VBROADCASTI64X4(rowMem(qs+32*c), q)
		VPSRLVW(cQ8ShQ4, q, q)
		VPANDD(c0F, q, q)
		if d == dQ5K {
			k := K()
			VPTESTMB(cQ8Q5Bit[c], qh, k)
			VPADDB(c10, q, k, q)
		}
		scv := ZMM()
		VPSHUFB(idx[c], tab, scv)
		for i := 0; i < N; i++ {
			p := ZMM()
			VPMADDUBSW(xMem(i, 64*c), q, p)
			if c%2 == 0 {
				VPMADDWD(scv, p, part[i][c/2])
			} else {
				dpwssd(scv, p, part[i][c/2])
			}
		}
	}
	// d, dmin as float32 in the low two lanes.
	dd := ZMM()
	VPBROADCASTD(rowMem(0), dd.AsX())
	VCVTPH2PS(dd.AsX(), dd.AsX())
	for i := 0; i < N; i++ {
		ms := ZMM()
		VPMADDWD(xMem(i, q8xBsum32), mins.AsX(), ms.AsX())
		VPADDD(part[i][1], part[i][0], isum[i])
		q8BlockScalar(isum[i], ms, dd, xMem(i, q8xD), acc[i])
	}
}

// q8BlockScalar adds one block's share to a row's sum in the low lane of
// acc, as every Q4_K/Q5_K kernel does (the row-major ones here and the
// 16-row ones of genQ4Kx16, lane = weight row, so that both give the same
// bits): with I = Σ_j sc_j·Σ q·q_x (the lanes of isum added) and
// M = Σ_j m_j·Σ q_x (the four lanes of ms added), exact integers,
//
//	acc += float(I)·(d·d_x);  acc −= float(M)·(dmin·d_x)
//
// each product and sum rounded on its own (no FMA). dd holds d and dmin as
// float32 in its low two lanes, dx is d_x in memory. isum and ms are
// clobbered.
func q8BlockScalar(isum, ms, dd VecVirtual, dx Mem, acc VecVirtual) {
	t := ZMM()
	VEXTRACTI64X4(U8(1), isum, t.AsY())
	VPADDD(t.AsY(), isum.AsY(), isum.AsY())
	VEXTRACTI32X4(U8(1), isum.AsY(), t.AsX())
	VPADDD(t.AsX(), isum.AsX(), isum.AsX())
	// [I0..I3], [M0..M3] -> [I, M, I, M].
	lo, hi := ZMM(), ZMM()
	VPUNPCKLDQ(ms.AsX(), isum.AsX(), lo.AsX())
	VPUNPCKHDQ(ms.AsX(), isum.AsX(), hi.AsX())
	VPADDD(hi.AsX(), lo.AsX(), lo.AsX())
	VPSHUFD(U8(0x4E), lo.AsX(), hi.AsX())
	VPADDD(hi.AsX(), lo.AsX(), lo.AsX())
	VCVTDQ2PS(lo.AsX(), lo.AsX())
	f := ZMM()
	VMULPS_BCST(dx, dd.AsX(), f.AsX()) // [d·d_x, dmin·d_x]
	VMULPS(f.AsX(), lo.AsX(), lo.AsX())
	VADDSS(lo.AsX(), acc.AsX(), acc.AsX())
	VMOVSHDUP(lo.AsX(), hi.AsX())
	VSUBSS(hi.AsX(), acc.AsX(), acc.AsX())
}

// q8RowQ6K adds row r's block to acc[i]: dx_i·d·Σ_g sc_g·Σ (q−32)·x_i.
//
// Q6_K block: 128 bytes of low nibbles at 0, 64 bytes of high bit pairs at
// 128, 16 int8 scales at 192, d (f16) at 208. Half h (values 128h..128h+127)
// reads ql[64h..64h+63] and qh[32h..32h+31]: value 128h+l is
// ql[l]&15 | (qh[l]>>0&3)<<4 (l < 32), ql[l]&15 | (qh[l-32]>>2&3)<<4 (l < 64),
// ql[l-64]>>4 | (qh[l-64]>>4&3)<<4 (l < 96), ql[l-64]>>4 | (qh[l-96]>>6&3)<<4.
func q8RowQ6K(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, c30 VecVirtual, idx [4]VecVirtual, isum, acc []VecVirtual) {
	tab := ZMM()
	VPMOVSXBW(rowMem(192), tab.AsY())
	// The −32 offset: 32·Σ_g sc_g·Σ_{16 values} x (32·sc fits int16).
	mo := make([]VecVirtual, N)
	sc32 := ZMM()
	VPSLLW(U8(5), tab.AsY(), sc32.AsY())
	for i := 0; i < N; i++ {
		mo[i] = ZMM()
		VPMADDWD(xMem(i, q8xBsum16), sc32.AsY(), mo[i].AsY())
	}
	// One partial sum per half and input row (shorter dependency chains).
	hs := halfSums(N)
	for h := 0; h < 2; h++ {
		ql := ZMM()
		VMOVDQU64(rowMem(64*h), ql)
		qh := ZMM()
		VBROADCASTI64X4(rowMem(128+32*h), qh)
		for part := 0; part < 2; part++ {
			u := ZMM()
			if part == 0 {
				VPSLLVW(cQ8ShQ6A, qh, u)
			} else {
				VPSRLW(U8(4), ql, ql)
				VPSRLVW(cQ8ShQ6B, qh, u)
			}
			VPANDD(c30, u, u)
			// u |= ql & 0x0f
			VPTERNLOGD(U8(0xF8), c0F, ql, u)
			c := 2*h + part
			scv := ZMM()
			VPERMW(tab, idx[c], scv)
			maddChunk512(N, func(i int) Op { return xMem(i, 64*c) }, u, scv, hs, h, part == 0)
		}
	}
	q6Finish(N, rowMem(208), mo, hs, isum, xMem, acc)
}

// q6Finish ends a row's block in the Q6_K manner (Q6_K, Q3_K, IQ4_XS): the
// two half sums of each input row less the offset mo[i] (none when mo is
// nil) into isum[i], scaled by d (the f16 at dm) as q6BlockScalar does it.
func q6Finish(N int, dm Mem, mo []VecVirtual, hs [][2]VecVirtual, isum []VecVirtual, xMem func(i, off int) Mem, acc []VecVirtual) {
	dv := ZMM()
	VPBROADCASTW(dm, dv.AsX())
	VCVTPH2PS(dv.AsX(), dv.AsX())
	for i := 0; i < N; i++ {
		if mo != nil {
			VPSUBD(mo[i], hs[i][0], hs[i][0])
		}
		VPADDD(hs[i][1], hs[i][0], isum[i])
		q6BlockScalar(isum[i], dv, xMem(i, q8xD), acc[i])
	}
}

// maddChunk512 adds, for each input row i, the pair sums of the unsigned
// codes u times the signed activations x(i) (VPMADDUBSW) weighted by the
// sub-block scales scv to hs[i][h]: VPMADDWD when first (hs[i][h] then
// starts there), else VPDPWSSD or its BW twin (dpwssd).
func maddChunk512(N int, x func(i int) Op, u, scv VecVirtual, hs [][2]VecVirtual, h int, first bool) {
	for i := 0; i < N; i++ {
		p := ZMM()
		VPMADDUBSW(x(i), u, p)
		if first {
			VPMADDWD(scv, p, hs[i][h])
		} else {
			dpwssd(scv, p, hs[i][h])
		}
	}
}

// q6BlockScalar adds one Q6_K block's share to a row's sum in the low lane
// of acc, as every Q6_K kernel does (the row-major ones here and the 16-row
// ones of genQ6Kx16, so that both give the same bits): with I the lanes of
// isum added (the block's exact Σ sc·Σ(q−32)·q_x),
//
//	acc += float(I)·(d·d_x)
//
// the product and the sum rounded on their own (no FMA). dv holds d as
// float32 in its low lane, dx is d_x in memory. isum is clobbered.
func q6BlockScalar(isum, dv VecVirtual, dx Mem, acc VecVirtual) {
	t := ZMM()
	VEXTRACTI64X4(U8(1), isum, t.AsY())
	VPADDD(t.AsY(), isum.AsY(), isum.AsY())
	VEXTRACTI32X4(U8(1), isum.AsY(), t.AsX())
	VPADDD(t.AsX(), isum.AsX(), isum.AsX())
	VPSHUFD(U8(0x4E), isum.AsX(), t.AsX())
	VPADDD(t.AsX(), isum.AsX(), isum.AsX())
	VPSHUFD(U8(0xB1), isum.AsX(), t.AsX())
	VPADDD(t.AsX(), isum.AsX(), isum.AsX())
	VCVTDQ2PS(isum.AsX(), isum.AsX())
	f := ZMM()
	VMULPS_BCST(dx, dv.AsX(), f.AsX()) // d·d_x
	VMULSS(f.AsX(), isum.AsX(), isum.AsX())
	VADDSS(isum.AsX(), acc.AsX(), acc.AsX())
}

// rowLane is the dword of the vector accumulator holding input row i's sum
// (reduceRows' order: lane i%4, dword i/4 of it), for up to 16 rows.
func rowLane(i int) int { return 4*(i%4) + i/4 }

// reduceRows adds up the 16 dwords of each of the (at most 16) zmm v,
// leaving v[i]'s total in dword rowLane(i) of the result, in 5 to 23
// operations for 8 rows (45 for 16) where one q6BlockScalar reduction per
// row takes 8: halves of two rows at a time (VSHUFI64X2), then quarters of
// four, then the four dwords of each lane across two vectors (unpacks and
// VPSHUFD), or for more than 8 rows across four (dword and qword unpacks).
// For at most 8 rows the other dwords hold partial sums. v is clobbered.
func reduceRows(v []VecVirtual) VecVirtual {
	zero := lazyZero(func() VecVirtual {
		z := ZMM()
		VPXORD(z, z, z)
		return z
	})
	lanes := func(lo, hi uint8) func(a, b VecVirtual) VecVirtual {
		return func(a, b VecVirtual) VecVirtual {
			l, h := ZMM(), ZMM()
			VSHUFI64X2(U8(lo), b, a, l)
			VSHUFI64X2(U8(hi), b, a, h)
			VPADDD(h, l, l)
			return l
		}
	}
	// Halves: row 2k's in lanes 0-1, row 2k+1's in lanes 2-3.
	s := pairRows(v, zero, lanes(0x44, 0xEE))
	// Quarters: row 4k+L's in lane L.
	t := pairRows(s, zero, lanes(0x88, 0xDD))
	// Per lane: t0.0+t0.2, t1.0+t1.2, t0.1+t0.3, t1.1+t1.3.
	dwords := func(t0, t1 VecVirtual) VecVirtual {
		p, q := ZMM(), ZMM()
		VPUNPCKLDQ(t1, t0, p) // per lane: t0.0 t1.0 t0.1 t1.1
		VPUNPCKHDQ(t1, t0, q) // t0.2 t1.2 t0.3 t1.3
		VPADDD(q, p, p)
		return p
	}
	if len(t) <= 2 {
		return pairRows(t, zero, func(t0, t1 VecVirtual) VecVirtual {
			p, q := dwords(t0, t1), ZMM()
			VPSHUFD(U8(0x4E), p, q)
			VPADDD(q, p, p) // dword 0: t0's lane total, dword 1: t1's
			return p
		})[0]
	}
	// Up to 16 rows: dword k of lane L holds t_k's lane total.
	a := pairRows(t, zero, dwords)
	return pairRows(a, zero, func(a, b VecVirtual) VecVirtual {
		lo, hi := ZMM(), ZMM()
		VPUNPCKLQDQ(b, a, lo) // a.0 a.1 b.0 b.1
		VPUNPCKHQDQ(b, a, hi) // a.2 a.3 b.2 b.3
		VPADDD(hi, lo, lo)
		return lo
	})[0]
}

// lazyZero returns a function that gives one zero vector, made by mk on
// its first call.
func lazyZero(mk func() VecVirtual) func() VecVirtual {
	var z VecVirtual
	return func() VecVirtual {
		if z == nil {
			z = mk()
		}
		return z
	}
}

// pairRows combines v[0] with v[1], v[2] with v[3], and so on (a last one
// without a partner with zero()): one level of reduceRows' and
// reduceRows256's trees. At most 16 rows.
func pairRows(v []VecVirtual, zero func() VecVirtual, combine func(a, b VecVirtual) VecVirtual) []VecVirtual {
	if len(v) > 16 {
		panic("pairRows: more than 16 rows")
	}
	var out []VecVirtual
	for k := 0; k < len(v); k += 2 {
		b := zero
		if k+1 < len(v) {
			b = func() VecVirtual { return v[k+1] }
		}
		out = append(out, combine(v[k], b()))
	}
	return out
}

// blockScalarRows is q6BlockScalar for N input rows at once, the rows'
// sums in one vector acc (dword rowLane(i) for row i):
//
//	acc_i += float(I_i)·(d·d_x,i)
//
// lane by lane with the same roundings, so the bits of N q6BlockScalar.
// isum is clobbered.
func blockScalarRows(isum []VecVirtual, dv VecVirtual, dx func(i int) Mem, acc VecVirtual) {
	I := reduceRows(isum)
	N := len(isum)
	// d_x of row L+4k in dword k of lane L (rowLane).
	dxv := ZMM()
	for L := 0; L < 4 && L < N; L++ {
		x := dxv.AsX()
		if L > 0 {
			x = XMM()
		}
		VMOVSS(dx(L), x)
		for k := 1; L+4*k < N; k++ {
			VINSERTPS(U8(k<<4), dx(L+4*k), x, x)
		}
		if L > 0 {
			VINSERTF32X4(U8(L), x, dxv, dxv)
		}
	}
	f := ZMM()
	VBROADCASTSS(dv.AsX(), f)
	VMULPS(dxv, f, f) // d·d_x
	VCVTDQ2PS(I, I)
	VMULPS(f, I, I)
	VADDPS(I, acc, acc)
}

// rowLane256 is the dword of the AVX2 vector accumulator holding input row
// i's sum (reduceRows256's order: lane i%2, dword i/2 of it).
func rowLane256(i int) int { return 4*(i%2) + i/2 }

// reduceRows256 is reduceRows for the (at most 8) ymm v, in VEX
// instructions: row i's total in dword rowLane256(i), in 21 operations for
// 8 rows where q6BlockScalar256 takes 6 a row. v is clobbered.
func reduceRows256(v []VecVirtual) VecVirtual {
	zero := lazyZero(func() VecVirtual {
		z := YMM()
		VPXOR(z, z, z)
		return z
	})
	// Halves: row 2k's in the low lane, row 2k+1's in the high.
	s := pairRows(v, zero, func(a, b VecVirtual) VecVirtual {
		lo, hi := YMM(), YMM()
		VPERM2I128(U8(0x20), b, a, lo)
		VPERM2I128(U8(0x31), b, a, hi)
		VPADDD(hi, lo, lo)
		return lo
	})
	// Lane L: row 4k+L's two partial sums in dwords 0 and 2, row 4k+2+L's
	// in dwords 1 and 3.
	t := pairRows(s, zero, func(a, b VecVirtual) VecVirtual {
		p, q := YMM(), YMM()
		VPUNPCKLDQ(b, a, p)
		VPUNPCKHDQ(b, a, q)
		VPADDD(q, p, p)
		return p
	})
	return pairRows(t, zero, func(t0, t1 VecVirtual) VecVirtual {
		p, q := YMM(), YMM()
		VPUNPCKLQDQ(t1, t0, p)
		VPUNPCKHQDQ(t1, t0, q)
		VPADDD(q, p, p) // lane L: rows L, 2+L, 4+L, 6+L
		return p
	})[0]
}

// blockScalarRows256 is blockScalarRows on a ymm accumulator (VEX; row i
// in dword rowLane256(i)): the bits of N q6BlockScalar256.
func blockScalarRows256(isum []VecVirtual, dv VecVirtual, dx func(i int) Mem, acc VecVirtual) {
	I := reduceRows256(isum)
	N := len(isum)
	// Lane L: the d_x of rows L, 2+L, 4+L, 6+L.
	dxv := YMM()
	for L := 0; L < 2 && L < N; L++ {
		x := dxv.AsX()
		if L > 0 {
			x = XMM()
		}
		VMOVSS(dx(L), x)
		for j := 1; j < 4 && 2*j+L < N; j++ {
			VINSERTPS(U8(j<<4), dx(2*j+L), x, x)
		}
		if L > 0 {
			VINSERTF128(U8(1), x, dxv, dxv)
		}
	}
	f := YMM()
	VBROADCASTSS(dv.AsX(), f)
	VMULPS(dxv, f, f) // d·d_x
	VCVTDQ2PS(I, I)
	VMULPS(f, I, I)
	VADDPS(I, acc, acc)
}

// q3kScalesX decodes a Q3_K block's 16 6-bit scales (12 bytes at sc) into
// an xmm of 16 int8, each less 32 (t, c0F: scratch and 0x0F bytes). Scale
// j's low nibble is nibble j/8 of byte j%8, its high bits bits 2(j/4),
// 2(j/4)+1 of byte 8+j%4.
func q3kScalesX(sc func(off int) Mem, c0F VecVirtual) VecVirtual {
	v, t := XMM(), XMM()
	VMOVQ(sc(0), v)
	VPUNPCKLQDQ(v, v, v)   // bytes 0-7 twice
	VPSRLVD(cQ3ScLo, v, v) // low nibbles of scales 0-7, then 8-15 (in bits 0-3)
	VPBROADCASTD(sc(8), t)
	VPSRLVD(cQ3ScHi, t, t) // high bit pairs of scales 4k..4k+3 in bits 0-1 of dword k
	VPANDD_BCST(cB03, t, t)
	VPSLLD(U8(4), t, t)
	VPTERNLOGD(U8(0xF8), c0F.AsX(), v, t) // t |= v & 0x0F
	b20 := XMM()
	VPBROADCASTD(cB20, b20)
	VPSUBB(b20, t, t)
	return t
}

// q8RowQ3K adds row r's block to acc[i]: dx_i·d·Σ_g sc_g·Σ (u−4)·x_i.
//
// Q3_K block: hmask[32] at 0, 64 bytes of 2-bit fields at 32, 12 bytes of
// 6-bit scales at 96 (biased by 32), d (f16) at 108. Value 128n+32j+l
// (l < 32) has u = (qs[32n+l] >> 2j)&3 | ((hmask[l] >> (4n+j))&1) << 2 and
// sub-block (128n+32j+l)/16, so chunk c (values 64c..64c+63) is fields j =
// 2(c%2) and j+1 of qs bytes 32(c/2).., with third bits 2c, 2c+1 of hmask.
// The −4 is taken off as 4·Σ_g sc_g·Σ_{16 values} x, as Q6_K's −32.
func q8RowQ3K(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, c03 VecVirtual, idx [4]VecVirtual, isum, acc []VecVirtual) {
	sc8 := q3kScalesX(func(off int) Mem { return rowMem(96 + off) }, c0F)
	tab := ZMM()
	VPMOVSXBW(sc8, tab.AsY())
	mo := make([]VecVirtual, N)
	sc4 := ZMM()
	VPSLLW(U8(2), tab.AsY(), sc4.AsY())
	for i := 0; i < N; i++ {
		mo[i] = ZMM()
		VPMADDWD(xMem(i, q8xBsum16), sc4.AsY(), mo[i].AsY())
	}
	hm := ZMM()
	VBROADCASTI64X4(rowMem(0), hm)
	c04 := ZMM()
	VPBROADCASTD(cB04, c04)
	hs := halfSums(N)
	q23Chunks512(N, rowMem, xMem, 32, c03, hm, c04, tab, idx, hs)
	q6Finish(N, rowMem(108), mo, hs, isum, xMem, acc)
}

// iq4xsScaleInts decodes an IQ4_XS block's 8 6-bit scales (scales_h at
// blk+2, scales_l at blk+4) into the 8 dwords of a ymm, each less 32: scale
// ib's low nibble is nibble ib of scales_l, its high bits bits 2ib, 2ib+1 of
// scales_h (VEX instructions: the AVX2 kernels use it too).
func iq4xsScaleInts(blk Mem) VecVirtual {
	lo, hi, t := YMM(), YMM(), YMM()
	VPBROADCASTD(blk.Offset(4), lo)
	VPSRLVD(cXSShl, lo, lo)
	VPBROADCASTD(cNib, t)
	VPAND(t, lo, lo)
	VPBROADCASTD(blk.Offset(2), hi) // bytes 2..5: scales_h in the low 16 bits
	VPSRLVD(cXSShh, hi, hi)
	VPBROADCASTD(cD3, t)
	VPAND(t, hi, hi)
	VPSLLD(U8(4), hi, hi)
	VPOR(hi, lo, lo)
	VPBROADCASTD(cD32, t)
	VPSUBD(t, lo, lo)
	return lo
}

// q8RowIQ4XS adds row r's block to acc[i]: dx_i·d·Σ_ib (ls_ib−32)·Σ kv·x_i.
//
// IQ4_XS block: d (f16) at 0, scales_h at 2, scales_l at 4, 128 bytes of
// nibbles at 8: sub-block ib (values 32ib..32ib+31) is the low nibbles of
// bytes 8+16ib.. then their high nibbles, each an index into the IQ4_NL
// codebook kv (int8, in every 16-byte lane of tab). Chunk c (64 values)
// takes bytes 8+32c..: low nibbles of the 32 (VPSRLVW by 0), high nibbles
// (by 4), its 16-byte lanes put in value order (VSHUFI64X2), looked up.
// VPMADDUBSW needs an unsigned operand: |kv| against x with kv's sign
// (llama.cpp's sign trick; AVX-512 has no VPSIGNB, so x is negated where
// kv is negative, by a masked subtraction), then VPMADDWD or VPDPWSSD with
// the sub-block scales as int16. |kv|·|x| ≤ 127·127, so no pair saturates.
func q8RowIQ4XS(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, tab VecVirtual, idx [4]VecVirtual, isum, acc []VecVirtual) {
	sc := iq4xsScaleInts(rowMem(0))
	sc16 := ZMM()
	VPMOVDW(sc, sc16.AsX())
	zero := ZMM()
	VPXORD(zero, zero, zero)
	hs := halfSums(N)
	for c := 0; c < 4; c++ {
		q := ZMM()
		VBROADCASTI64X4(rowMem(8+32*c), q)
		VPSRLVW(cQ8ShQ4, q, q)
		VPANDD(c0F, q, q)
		VSHUFI64X2(U8(0xD8), q, q, q) // lanes 0, 2, 1, 3: values in order
		VPSHUFB(q, tab, q)            // kv
		k := K()
		VPMOVB2M(q, k)
		VPABSB(q, q)
		scv := ZMM()
		VPERMW(sc16, idx[c], scv)
		maddChunk512(N, func(i int) Op {
			x := ZMM()
			VMOVDQU64(xMem(i, 64*c), x)
			VPSUBB(x, zero, k, x) // −x where kv < 0
			return x
		}, q, scv, hs, c/2, c%2 == 0)
	}
	q6Finish(N, rowMem(0), nil, hs, isum, xMem, acc)
}

// q23Chunks512 adds the four 64-value chunks of a Q3_K or Q2_K block's
// 2-bit fields (at rowMem(qs)) to hs: chunk c is fields 2(c%2) and
// 2(c%2)+1 of the 32 bytes qs+32(c/2).., for Q3_K (hm the hmask bytes in
// both halves) with the third bits 2c, 2c+1 of hmask added as 4 (c04),
// scaled by the sub-block scales tab (int16, by VPERMW).
func q23Chunks512(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, qs int, c03, hm, c04, tab VecVirtual, idx [4]VecVirtual, hs [][2]VecVirtual) {
	for c := 0; c < 4; c++ {
		h, part := c/2, c%2
		u := ZMM()
		VBROADCASTI64X4(rowMem(qs+32*h), u)
		VPSRLVW(cQ8ShQ2[part], u, u)
		VPANDD(c03, u, u)
		if hm != nil {
			k := K()
			VPTESTMB(cQ3Bit[c], hm, k)
			VPADDB(c04, u, k, u) // the third bit: +4 where set
		}
		scv := ZMM()
		VPERMW(tab, idx[c], scv)
		maddChunk512(N, func(i int) Op { return xMem(i, 64*c) }, u, scv, hs, h, part == 0)
	}
}

// halfSums allocates the two partial integer sums per input row of the
// row-major kernels (one per half of a block, for shorter chains).
func halfSums(N int) [][2]VecVirtual {
	hs := make([][2]VecVirtual, N)
	for i := range hs {
		hs[i] = [2]VecVirtual{ZMM(), ZMM()}
	}
	return hs
}

// q8RowQ2K adds row r's block to acc[i]:
//
//	dx_i · (d·Σ_g sc_g·Σ q·x_i − dmin·Σ_g m_g·Σ x_i)
//
// Q2_K block: 16 bytes at 0 (sub-block g's scale in the low nibble of byte
// g, its min in the high), 64 bytes of 2-bit fields at 16 (qs, as Q3_K's),
// d and dmin (f16) at 80 and 82.
func q8RowQ2K(N int, rowMem func(off int) Mem, xMem func(i, off int) Mem, c0F, c03 VecVirtual, idx [4]VecVirtual, isum, acc []VecVirtual) {
	raw, t := XMM(), XMM()
	VMOVDQU(rowMem(0), raw)
	VPANDD(c0F.AsX(), raw, t)
	tab := ZMM()
	VPMOVZXBW(t, tab.AsY())
	VPSRLW(U8(4), raw, t)
	VPANDD(c0F.AsX(), t, t)
	mins := ZMM()
	VPMOVZXBW(t, mins.AsY())
	hs := halfSums(N)
	q23Chunks512(N, rowMem, xMem, 16, c03, nil, nil, tab, idx, hs)
	dd := ZMM()
	VPBROADCASTD(rowMem(80), dd.AsX())
	VCVTPH2PS(dd.AsX(), dd.AsX())
	for i := 0; i < N; i++ {
		ms := ZMM()
		VPMADDWD(xMem(i, q8xBsum16), mins.AsY(), ms.AsY())
		tt := ZMM()
		VEXTRACTI32X4(U8(1), ms.AsY(), tt.AsX())
		VPADDD(tt.AsX(), ms.AsX(), ms.AsX())
		VPADDD(hs[i][1], hs[i][0], isum[i])
		q8BlockScalar(isum[i], ms, dd, xMem(i, q8xD), acc[i])
	}
}

var (
	cAbs   Mem // dword 0x7FFFFFFF
	cF127  Mem // float32 127
	cTiny  Mem // float32 1e-30: blocks whose largest |x| is below quantize to 0
	cB80   Mem // dword 0x80808080
	cW1    Mem // dword 0x00010001
	cD2048 Mem // dword 2048
)

func genQ8QuantConsts() {
	cAbs = data32("absmask", 0x7FFFFFFF)
	cF127 = data32("float32v127", 0x42FE0000)
	cTiny = data32("float32tiny", math.Float32bits(q8Tiny))
	cB80 = data32("b80", 0x80808080)
	cW1 = data32("w1", 0x00010001)
	cD2048 = data32("dword2048", 2048)
}

// genQ8Quant emits quantQ8K512(x, nblocks, dst) bool: the AVX-512 twin of
// quantizeQ8KRef (package kernels), byte for byte: per block of 256 values
// d = amax/127, q = round-to-nearest-even(x·(127/amax)), the int16 sums of
// q over 16 and 32 values, zero padding. It returns false if x holds an
// infinity or a NaN (dst is then undefined).
func genQ8Quant() {
	name := "quantQ8K512"
	TEXT(name, NOSPLIT, "func(x *float32, nblocks int, dst *byte) bool")
	Doc(name + " quantizes nblocks blocks of 256 values of x to 8 bits at dst (see genQ8Quant).")
	px := ld("x")
	nb := ld("nblocks")
	pd := ld("dst")
	abs := ZMM()
	VPBROADCASTD(cAbs, abs)
	bad := K()
	KXORW(bad, bad, bad)
	zero := ZMM()
	VPXORD(zero, zero, zero)

	Label(name + "_blk")
	v := make([]VecVirtual, 16)
	m := ZMM()
	VXORPS(m, m, m)
	for g := range v {
		v[g] = ZMM()
		VMOVUPS(Mem{Base: px, Disp: 64 * g}, v[g])
		k := K()
		VFPCLASSPSZ(U8(0x99), v[g], k) // QNaN, +Inf, -Inf, SNaN
		KORW(k, bad, bad)
		t := ZMM()
		VANDPS(abs, v[g], t)
		VMAXPS(t, m, m)
	}
	// Horizontal max into every lane of the low xmm.
	h := ZMM()
	hmaxZ(m, h)
	// d = amax/127 and id = 127/amax, both 0 for a (near-)zero block.
	d, id := ZMM(), ZMM()
	VXORPS(d, d, d)
	VXORPS(id, id, id)
	VUCOMISS(cTiny, m.AsX())
	JCS(LabelRef(name + "_zero")) // amax < tiny (or unordered: then bad is set)
	VMOVSS(cF127, id.AsX())
	VDIVSS(m.AsX(), id.AsX(), id.AsX()) // 127/amax
	t := ZMM()
	VDIVSS(cF127, m.AsX(), t.AsX()) // amax/127 (lanes 1-3: amax)
	VMOVSS(t.AsX(), d.AsX(), d.AsX())
	Label(name + "_zero")
	// Bytes [304, 320): d, then zero padding.
	VMOVUPS(d.AsX(), Mem{Base: pd, Disp: q8xD})
	VBROADCASTSS(id.AsX(), id)
	for g := range v {
		VMULPS(id, v[g], v[g])
		VCVTPS2DQ(v[g], v[g])
		VPMOVSDB(v[g], Mem{Base: pd, Disp: 16 * g})
	}
	// Group sums: SAD of the biased bytes (q+128) per 8 bytes, pairs added,
	// the bias (16·128) taken off.
	b80 := ZMM()
	VPBROADCASTD(cB80, b80)
	w1 := ZMM()
	VPBROADCASTD(cW1, w1)
	sums := ZMM()
	for c := 0; c < 4; c++ {
		q := ZMM()
		VPXORD(Mem{Base: pd, Disp: 64 * c}, b80, q)
		VPSADBW(zero, q, q)
		s := ZMM()
		VPMOVQW(q, s.AsX())
		VPMADDWD(w1.AsX(), s.AsX(), s.AsX())
		if c == 0 {
			VMOVDQA64(s, sums)
		} else {
			VINSERTI32X4(U8(c), s.AsX(), sums, sums)
		}
	}
	VPSUBD_BCST(cD2048, sums, sums)
	s16 := ZMM()
	VPMOVDW(sums, s16.AsY())
	VMOVDQU(s16.AsY(), Mem{Base: pd, Disp: q8xBsum16})
	VPMADDWD(w1.AsY(), s16.AsY(), s16.AsY())
	VPMOVDW(s16.AsY(), Mem{Base: pd, Disp: q8xBsum32})
	ADDQ(U32(1024), px)
	ADDQ(U32(q8xBlock), pd)
	DECQ(nb)
	JNZ(LabelRef(name + "_blk"))
	retFinite512(bad)
}

// q8Rows emits the integer kernels' loops (genQ8, genQ8AVX2), block
// emitting one block of one row: the rows one after the other, each row's
// blocks in order, so that the weights are read as one sequential stream (measured
// faster than four interleaved row streams with software prefetch, which the
// hardware prefetcher follows less well), each row reduced on its own.
func q8Rows(N int, name string, bb int, ws, wq, oq GPVirtual, acc []VecVirtual, block func(rowMem func(off int) Mem, xMem func(i, off int) Mem)) {
	Label(name + "_row")
	w0 := GP64()
	MOVQ(wq, w0)
	xp := ld("xq")
	var xs, xs3 GPVirtual
	if N > 1 {
		xs = ld("xqstride")
	}
	if N > 3 {
		xs3 = GP64()
		LEAQ(Mem{Base: xs, Index: xs, Scale: 2}, xs3)
	}
	// Input rows 4, 8 and 12 (N > 4, 8, 12): four rows from each base.
	var xp4, xp8, xp12 GPVirtual
	if N > 4 {
		xp4 = GP64()
		LEAQ(Mem{Base: xp, Index: xs, Scale: 4}, xp4)
	}
	if N > 8 {
		xp8 = GP64()
		LEAQ(Mem{Base: xp, Index: xs, Scale: 8}, xp8)
	}
	if N > 12 {
		xp12 = GP64()
		LEAQ(Mem{Base: xp4, Index: xs, Scale: 8}, xp12)
	}
	cnt := ld("nblocks")
	for _, a := range acc {
		VXORPS(a, a, a)
	}
	rowMem := func(off int) Mem { return Mem{Base: w0, Disp: off} }
	xMem := func(i, off int) Mem {
		if i >= 16 {
			panic("q8Rows: more than 16 input rows")
		}
		base := [4]GPVirtual{xp, xp4, xp8, xp12}[i/4]
		switch i % 4 {
		case 0:
			return Mem{Base: base, Disp: off}
		case 1, 2:
			return Mem{Base: base, Index: xs, Scale: uint8(i % 4), Disp: off}
		}
		return Mem{Base: base, Index: xs3, Scale: 1, Disp: off}
	}
	Label(name + "_blk")
	block(rowMem, xMem)
	ADDQ(U32(bb), w0)
	for _, p := range []GPVirtual{xp, xp4, xp8, xp12} {
		if p != nil {
			ADDQ(U32(q8xBlock), p)
		}
	}
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))

	var os GPVirtual
	if N > 1 {
		os = ld("ostride")
	}
	op := GP64()
	MOVQ(oq, op)
	for i := 0; i < N; i++ {
		if len(acc) < N {
			// One vector: row i's sum in dword rowLane(i) (blockScalarRows),
			// for a ymm rowLane256(i) (blockScalarRows256, VEX only).
			l, t := rowLane(i), XMM()
			if acc[0].Size() == 32 {
				l = rowLane256(i)
			}
			src := acc[0].AsX()
			switch {
			case l >= 4 && acc[0].Size() == 32:
				VEXTRACTF128(U8(1), acc[0], t)
				src = t
			case l >= 4:
				VEXTRACTF32X4(U8(l/4), acc[0], t)
				src = t
			}
			VEXTRACTPS(U8(l%4), src, Mem{Base: op})
		} else {
			// The row's sum is in the low lane (q8BlockScalar, q6BlockScalar).
			VMOVSS(acc[i].AsX(), Mem{Base: op})
		}
		if i+1 < N {
			ADDQ(os, op)
		}
	}
	ADDQ(U8(4), oq)
	ADDQ(ws, wq)
	DECQ(paddr("nrows"))
	JNZ(LabelRef(name + "_row"))
}
