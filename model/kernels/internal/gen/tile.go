package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

type dtype int

const (
	dF32 dtype = iota
	dBF16
	dF16
	dQ8
	dQ4K
	dQ6K
	dQ5K
	// The types below have AVX-512 kernels only (the AVX2 level dequantizes
	// them in Go).
	dQ40
	dQ41
	dQ50
	dQ51
	dIQ4NL
	dQ2K
	dIQ4XS
	dQ3K
	// The i-quants of 1 to 3 bits: integer kernels only (q8iq.go).
	dIQ2XXS
	dIQ2XS
	dIQ2S
	dIQ3XXS
	dIQ3S
	dIQ1S
	dIQ1M
)

var allDtypes = []dtype{dF32, dBF16, dF16, dQ8, dQ4K, dQ6K, dQ5K, dQ40, dQ41, dQ50, dQ51, dIQ4NL, dQ2K, dIQ4XS, dQ3K}

func (d dtype) String() string {
	return [...]string{"F32", "BF16", "F16", "Q8", "Q4K", "Q6K", "Q5K", "Q40", "Q41", "Q50", "Q51", "IQ4NL", "Q2K", "IQ4XS", "Q3K", "IQ2XXS", "IQ2XS", "IQ2S", "IQ3XXS", "IQ3S", "IQ1S", "IQ1M"}[d]
}

// tensorName is the name of d's constant in package tensor.
func (d dtype) tensorName() string {
	return [...]string{"F32", "BF16", "F16", "Q8_0", "Q4_K", "Q6_K", "Q5_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q2_K", "IQ4_XS", "Q3_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"}[d]
}

// only512 reports a dtype without an AVX2 kernel.
func only512(d dtype) bool { return d > dQ5K }

// blk32 reports the 32-value block types handled by the generic staging
// prologue, and the byte offsets of their f16 fields (d, then m for the
// affine types).
func blk32(d dtype) (fields []int, ok bool) {
	switch d {
	case dQ40, dQ50, dIQ4NL:
		return []int{0}, true
	case dQ41, dQ51:
		return []int{0, 2}, true
	}
	return nil, false
}

// rowScrBytes is the per-row stride of the K-quant scale scratch of one chunk.
func rowScrBytes(d dtype) int {
	switch d {
	case dQ4K, dQ5K:
		return 64 // 8 x d·sc, 8 x dmin·m
	case dQ6K, dQ2K, dQ3K:
		return 128 // 16 x scale, 16 x min (Q6_K: 32·scale, Q3_K: 4·scale)
	case dIQ4XS:
		return 32 // 8 x d·(sc−32)
	}
	return 0
}

type mode int

const (
	modeFMA   mode = iota // multiply with x and store 4xN dot products
	modeWiden             // store the widened float32 rows (panel)
	modePanel             // modeFMA on a float32 panel in L2: no look-ahead prefetch of the rows
	// modeFMAInvariant is modeFMA with one accumulator per (weight row, input
	// row) and no per-block factoring, whatever N: it adds a row's products
	// in the order every N > 2 tile and the panel path use, so a row's
	// result does not depend on how many rows share its call (batch
	// invariance). modeFMA at N = 1 (and N = 2 on AVX-512) uses two
	// accumulator sets, or Q8_0's factored form, which round differently.
	modeFMAInvariant
)

// fastSmallN reports whether modeFMA at (s, d, N) uses two accumulator sets
// or the factored Q8_0 form, i.e. differs from modeFMAInvariant.
func fastSmallN(s isa, d dtype, N int) bool {
	return chunkValues(s, d)/s.lanes >= 2 && (N == 1 || (N == 2 && s.z))
}

// chunkValues is the number of weight values one loop iteration consumes per row.
func chunkValues(s isa, d dtype) int {
	switch d {
	case dF32, dF16:
		return s.lanes
	case dBF16:
		return 2 * s.lanes
	case dQ8, dQ40, dQ41, dQ50, dQ51, dIQ4NL:
		return 32
	case dQ4K, dQ6K, dQ5K, dQ2K, dIQ4XS, dQ3K:
		return 256
	}
	panic("dtype")
}

// chunkBytes is the number of weight bytes per row of one chunk.
func chunkBytes(s isa, d dtype) int {
	switch d {
	case dF32:
		return 4 * s.lanes
	case dF16:
		return 2 * s.lanes
	case dBF16:
		return 4 * s.lanes
	case dQ8:
		return 34
	case dQ4K:
		return 144
	case dQ6K:
		return 210
	case dQ5K:
		return 176
	case dQ40, dIQ4NL:
		return 18
	case dQ41:
		return 20
	case dQ50:
		return 22
	case dQ51:
		return 24
	case dQ2K:
		return 84
	case dIQ4XS:
		return 136
	case dQ3K:
		return 110
	}
	panic("dtype")
}

// hasTail reports whether the kernel handles a masked partial last chunk.
func hasTail(s isa, d dtype) bool {
	return s.z && (d == dF32 || d == dBF16 || d == dF16)
}

// scratch bytes per chunk used by the scale prologue
func scrChunkBytes(d dtype) int {
	switch d {
	case dQ8:
		return 16 // 4 rows x float32 scale
	case dQ4K, dQ5K, dQ6K, dQ2K, dIQ4XS, dQ3K:
		return 4 * rowScrBytes(d)
	}
	if f, ok := blk32(d); ok {
		return 16 * len(f) // 4 rows x d [, 4 rows x m]
	}
	return 0
}

// pfDist enables (> 0) the software prefetch of the rows two quads ahead.
var pfDist = 1

const tileSig = "func(w *byte, wstride, nquads int, x *float32, xstride, nchunks, tail int, out *float32, ostride int, scr *float32, pf, pfend uintptr)"

// genTile emits one tile (modeFMA) or widen (modeWiden) kernel.
//
// Arguments (strides in bytes):
//
//	w, wstride, nquads: 4*nquads weight rows starting at w
//	x, xstride:         N packed input rows (modeFMA)
//	nchunks, tail:      full chunks per row, and the opmask of a partial chunk (0: none)
//	out, ostride:       modeFMA: out[i*ostride + 4*q*4 + r*4] for input row i, quad q, row r
//	                    modeWiden: panel rows, row r of quad q at out + (4q+r)*ostride
//	scr:                scratch for the per-block scales (Q8, Q4K)
func genTile(s isa, d dtype, N int, m mode) {
	var name string
	switch m {
	case modeFMA:
		name = fmt.Sprintf("tile%s%sN%d", s.name, d, N)
	case modeFMAInvariant:
		name = fmt.Sprintf("tile%s%sN%dInv", s.name, d, N)
	case modePanel:
		name = fmt.Sprintf("panel%sN%d", s.name, N)
	default:
		name = fmt.Sprintf("widen%s%s", s.name, d)
	}
	TEXT(name, NOSPLIT, tileSig)
	switch m {
	case modeFMA:
		Doc(fmt.Sprintf("%s computes 4-row x %d-input dot products of %s weights (see genTile).", name, N, d))
	case modeFMAInvariant:
		Doc(fmt.Sprintf("%s computes 4-row x %d-input dot products of %s weights in the batch-invariant order (see genTile).", name, N, d))
	case modePanel:
		Doc(fmt.Sprintf("%s computes 4-row x %d-input dot products of a float32 panel (see genTile).", name, N))
	default:
		Doc(fmt.Sprintf("%s widens quads of %s weight rows into a float32 panel (see genTile).", name, d))
	}
	aheadPF := pfDist > 0 && m != modePanel
	fma := m != modeWiden
	lanes, vb := s.lanes, s.vbytes()
	subvecs := chunkValues(s, d) / lanes
	cb := chunkBytes(s, d)
	xcb := 4 * chunkValues(s, d) // x (or panel) bytes per chunk

	ws := ld("wstride")
	wq := ld("w")
	oq := ld("out")
	// nquads is counted down in its argument slot; ostride is reloaded when
	// needed (general registers are scarce in the Q4K/N=6 kernels).
	var os GPVirtual
	if !fma {
		os = ld("ostride")
	}
	var xs GPVirtual // reloaded per quad, after the scale prologue

	// Constants kept in registers.
	var cMask, cNibV VecVirtual
	if d == dBF16 {
		cMask = s.vec()
		VBROADCASTSS(cBF16Hi, cMask)
	}
	var cHiV VecVirtual // on AVX2: dwords 0x30 (Q6_K's high bit pairs), 0x10 (Q5_K's fifth bits)
	if (d == dQ4K || d == dQ6K || d == dQ5K) && !s.z {
		cNibV = s.vec()
		VBROADCASTSS(cNib, cNibV)
	}
	if (d == dQ6K || d == dQ5K) && !s.z {
		cHiV = s.vec()
		if d == dQ6K {
			VBROADCASTSS(cD30, cHiV)
		} else {
			VBROADCASTSS(cD16, cHiV)
		}
	}
	var iq4Tab VecVirtual
	if d == dIQ4NL || d == dIQ4XS {
		iq4Tab = ZMM()
		VMOVUPS(cIQ4, iq4Tab)
	}
	// Prefetch of the next row block (into L2), one line per chunk.
	pf := ld("pf")
	pfend, _ := Param("pfend").Resolve()
	var ktail OpmaskVirtual
	if hasTail(s, d) {
		ktail = K()
		t := ld("tail")
		KMOVQ(t, ktail)
	}

	// Accumulators.
	// Q8_0 with few input rows: multiply the integer-valued weights with x and
	// apply the block scale once per block and input row (4+3N vector ops per
	// block and row instead of 6+2N).
	fast := m == modeFMA && fastSmallN(s, d, N)
	factored := d == dQ8 && fast
	sets := 1
	if fast && !factored {
		sets = 2
	}
	// pipe: the Q8_0 scales of the next quad are staged (scalar loads and
	// stores, off the vector ports) during this quad's main loop and converted
	// at its end; those loads also prefetch the next quad.
	pipe := factored
	var acc [2][4][]VecVirtual
	if fma {
		for st := 0; st < sets; st++ {
			for r := 0; r < 4; r++ {
				acc[st][r] = make([]VecVirtual, N)
				for i := 0; i < N; i++ {
					acc[st][r][i] = s.vec()
				}
			}
		}
	}

	if pipe {
		// Scales of the first quad.
		a0, a3 := GP64(), GP64()
		MOVQ(wq, a0)
		LEAQ(Mem{Base: wq, Index: ws, Scale: 2}, a3)
		ADDQ(ws, a3)
		genScalePrologue(s, d, name+"_p0", a0, a3, ws, ld("scr"))
	}

	Label(name + "_quad")
	w0 := GP64()
	MOVQ(wq, w0)
	w3 := GP64()
	LEAQ(Mem{Base: wq, Index: ws, Scale: 2}, w3)
	ADDQ(ws, w3)
	var sp GPVirtual
	var nx0, nx3, stg GPVirtual
	if scrChunkBytes(d) > 0 {
		sp = ld("scr")
		if !pipe {
			genScalePrologue(s, d, name, w0, w3, ws, sp)
		} else {
			// Rows of the next quad (of this quad again when it is the last).
			nx0 = GP64()
			LEAQ(Mem{Base: wq, Index: ws, Scale: 4}, nx0)
			CMPQ(paddr("nquads"), U8(1))
			CMOVQEQ(wq, nx0)
			nx3 = GP64()
			LEAQ(Mem{Base: nx0, Index: ws, Scale: 2}, nx3)
			ADDQ(ws, nx3)
			stg = ld("nchunks")
			ADDQ(U8(3), stg)
			ANDQ(I8(-4), stg)
			SHLQ(U8(4), stg)
			ADDQ(sp, stg)
		}
	}
	var pq GPVirtual
	if aheadPF {
		pq = GP64()
		// Two quads ahead, into L2 (measured better than one quad ahead into
		// L1; the Q8 staging loads read the next quad and must not miss).
		LEAQ(Mem{Base: wq, Index: ws, Scale: 8}, pq)
	}
	var x0, x3, o0, o3 GPVirtual
	if fma && N > 1 {
		xs = ld("xstride")
	}
	if fma {
		x0 = ld("x")
		if N > 3 {
			x3 = GP64()
			LEAQ(Mem{Base: x0, Index: xs, Scale: 2}, x3)
			ADDQ(xs, x3)
		}
	} else {
		o0 = GP64()
		MOVQ(oq, o0)
		o3 = GP64()
		LEAQ(Mem{Base: oq, Index: os, Scale: 2}, o3)
		ADDQ(os, o3)
	}
	cnt := ld("nchunks")

	if fma {
		for st := 0; st < sets; st++ {
			for r := 0; r < 4; r++ {
				for i := 0; i < N; i++ {
					a := acc[st][r][i]
					VXORPS(a, a, a)
				}
			}
		}
	}

	rowMem := func(r, off int) Mem {
		switch r {
		case 0:
			return Mem{Base: w0, Disp: off}
		case 1:
			return Mem{Base: w0, Index: ws, Scale: 1, Disp: off}
		case 2:
			return Mem{Base: w0, Index: ws, Scale: 2, Disp: off}
		}
		return Mem{Base: w3, Disp: off}
	}
	xMem := func(i, off int) Mem {
		switch i {
		case 0:
			return Mem{Base: x0, Disp: off}
		case 1:
			return Mem{Base: x0, Index: xs, Scale: 1, Disp: off}
		case 2:
			return Mem{Base: x0, Index: xs, Scale: 2, Disp: off}
		case 3:
			return Mem{Base: x3, Disp: off}
		case 4:
			return Mem{Base: x3, Index: xs, Scale: 1, Disp: off}
		}
		return Mem{Base: x3, Index: xs, Scale: 2, Disp: off}
	}
	oMem := func(r, off int) Mem {
		switch r {
		case 0:
			return Mem{Base: o0, Disp: off}
		case 1:
			return Mem{Base: o0, Index: os, Scale: 1, Disp: off}
		case 2:
			return Mem{Base: o0, Index: os, Scale: 2, Disp: off}
		}
		return Mem{Base: o3, Disp: off}
	}

	// widen emits the float32 vector of sub-vector j of row r (chunk at byte
	// offset wo of the row, scale scratch at byte offset so).
	widen := func(j, r, wo, so int, masked bool, v VecVirtual) {
		switch d {
		case dF32:
			if masked {
				VMOVUPS_Z(rowMem(r, wo), ktail, v)
			} else {
				VMOVUPS(rowMem(r, wo), v)
			}
		case dBF16:
			// Even bf16 values (low halves of the dwords) become v<<16; odd
			// values are the dwords with the low half cleared. x is packed in
			// the same even/odd order, and panels are stored in it too, so the
			// panel path adds each row's products in the tile kernels' order.
			switch {
			case masked:
				t := s.vec()
				VMOVDQU16_Z(rowMem(r, wo), ktail, t)
				if j == 0 {
					VPSLLD(U8(16), t, v)
				} else {
					VPANDD(t, cMask, v)
				}
			case s.z:
				if j == 0 {
					VPSLLD(U8(16), rowMem(r, wo), v)
				} else {
					VPANDD(rowMem(r, wo), cMask, v)
				}
			default:
				if j == 0 {
					VMOVDQU(rowMem(r, wo), v)
					VPSLLD(U8(16), v, v)
				} else {
					VPAND(rowMem(r, wo), cMask, v)
				}
			}
		case dF16:
			if masked {
				t := YMM()
				VMOVDQU16_Z(rowMem(r, wo), ktail, t)
				VCVTPH2PS(t, v)
			} else {
				VCVTPH2PS(rowMem(r, wo+j*2*lanes), v)
			}
		case dQ8:
			VPMOVSXBD(rowMem(r, wo+2+j*lanes), v)
			VCVTDQ2PS(v, v)
			sm := Mem{Base: sp, Disp: so + 4*r}
			if s.z {
				VMULPS_BCST(sm, v, v)
			} else {
				t := s.vec()
				VBROADCASTSS(sm, t)
				VMULPS(t, v, v)
			}
		case dQ4K:
			per64 := 64 / lanes // sub-vectors per 64 values
			c := j / per64
			jj := j % per64
			hi := jj >= per64/2
			boff := 16 + c*32 + (jj%(per64/2))*lanes
			sbj := 2*c + b2i(hi)
			VPMOVZXBD(rowMem(r, wo+boff), v)
			nibble(s, v, hi, cNibV)
			VCVTDQ2PS(v, v)
			scaleMinS(s, v, Mem{Base: sp, Disp: so + r*64 + sbj*4}, Mem{Base: sp, Disp: so + r*64 + 32 + sbj*4})
		case dQ6K:
			// Sub-vector j: values v0..v0+lanes of 128-value half n, quarter
			// qtr (low nibbles of ql bytes for quarters 0-1, high for 2-3;
			// quarters 1 and 3 at +32), position p in the quarter, with their
			// top two bits at 2·qtr of qh; scale sub-block v0/16.
			v0 := j * lanes
			n, l := v0/128, v0%128
			qtr, p := l/32, l%32
			VPMOVZXBD(rowMem(r, wo+64*n+p+32*(qtr&1)), v)
			nibble(s, v, qtr >= 2, cNibV)
			h := s.vec()
			VPMOVZXBD(rowMem(r, wo+128+32*n+p), h)
			highBits(s, v, h, 2*qtr, cD30, cHiV)
			VCVTDQ2PS(v, v)
			sb := v0 / 16
			scaleMinS(s, v, Mem{Base: sp, Disp: so + r*128 + 4*sb}, Mem{Base: sp, Disp: so + r*128 + 64 + 4*sb})
		case dQ5K:
			// Q4_K's layout (values v0..v0+lanes at position p of half hi of
			// 64-value group c: the low or high nibbles of qs bytes 32c+p..)
			// plus a fifth bit, bit 2c (+1 for the high nibbles) of qh byte p.
			v0 := j * lanes
			c, l := v0/64, v0%64
			hi, p := l/32, l%32
			VPMOVZXBD(rowMem(r, wo+48+32*c+p), v)
			nibble(s, v, hi == 1, cNibV)
			h := s.vec()
			VPMOVZXBD(rowMem(r, wo+16+p), h)
			highBits(s, v, h, 2*c+hi, cD16, cHiV)
			VCVTDQ2PS(v, v)
			sbj := 2*c + hi
			scaleMinS(s, v, Mem{Base: sp, Disp: so + r*64 + sbj*4}, Mem{Base: sp, Disp: so + r*64 + 32 + sbj*4})
		case dQ2K:
			// 2-bit values: sub-vector j (scale sub-block j) is bits 2·(j%8/2)
			// of 16 bytes at 32·(j/8) + 16·(j%2).
			n, jj := j/8, j%8
			VPMOVZXBD(rowMem(r, wo+16+32*n+16*(jj%2)), v)
			if sh := 2 * (jj / 2); sh > 0 {
				VPSRLD(U8(sh), v, v)
			}
			VPANDD_BCST(cD3, v, v)
			VCVTDQ2PS(v, v)
			scaleMin(v, Mem{Base: sp, Disp: so + r*128 + 4*j}, Mem{Base: sp, Disp: so + r*128 + 64 + 4*j}, false)
		case dQ3K:
			// Q2_K's 2-bit layout (at 32) plus a third bit, bit 4·(j/8)+(j%8/2)
			// of hmask byte 16·(j%2)+l; the value is (q | hbit<<2) − 4, the −4
			// folded into the stored min 4·scale.
			n, jj := j/8, j%8
			VPMOVZXBD(rowMem(r, wo+32+32*n+16*(jj%2)), v)
			if sh := 2 * (jj / 2); sh > 0 {
				VPSRLD(U8(sh), v, v)
			}
			VPANDD_BCST(cD3, v, v)
			h := ZMM()
			VPMOVZXBD(rowMem(r, wo+16*(jj%2)), h)
			shiftTo(h, 4*n+jj/2, 2)
			VPTERNLOGD_BCST(U8(0xF8), cD4, h, v) // v |= h & 4
			VCVTDQ2PS(v, v)
			scaleMin(v, Mem{Base: sp, Disp: so + r*128 + 4*j}, Mem{Base: sp, Disp: so + r*128 + 64 + 4*j}, false)
		case dIQ4XS:
			// Codebook indices: sub-vector j is the low (even j) or high nibbles
			// of the 16 bytes of 32-value sub-block j/2. VPERMPS uses only the
			// low 4 bits of each index.
			VPMOVZXBD(rowMem(r, wo+8+16*(j/2)), v)
			if j%2 == 1 {
				VPSRLD(U8(4), v, v)
			}
			VPERMPS(iq4Tab, v, v)
			VMULPS_BCST(Mem{Base: sp, Disp: so + r*32 + 4*(j/2)}, v, v)
		case dIQ4NL:
			VPMOVZXBD(rowMem(r, wo+2), v)
			if j == 1 {
				VPSRLD(U8(4), v, v)
			}
			VPERMPS(iq4Tab, v, v)
			VMULPS_BCST(Mem{Base: sp, Disp: so + 4*r}, v, v)
		case dQ40, dQ41, dQ50, dQ51:
			// 32-value blocks: sub-vector 0 is the low nibbles of the 16 quant
			// bytes, sub-vector 1 the high ones; Q5 types OR in bit j·16+l of
			// qh as 16 (through an opmask); Q*_0 subtract their bias.
			qoff := map[dtype]int{dQ40: 2, dQ41: 4, dQ50: 6, dQ51: 8}[d]
			VPMOVZXBD(rowMem(r, wo+qoff), v)
			if j == 1 {
				VPSRLD(U8(4), v, v)
			} else {
				VPANDD_BCST(cNib, v, v)
			}
			if d == dQ50 || d == dQ51 {
				k := K()
				KMOVW(rowMem(r, wo+qoff-4+2*j), k)
				VPORD_BCST(cD16, v, k, v)
			}
			switch d {
			case dQ40:
				VPSUBD_BCST(cD8, v, v)
			case dQ50:
				VPSUBD_BCST(cD16, v, v)
			}
			VCVTDQ2PS(v, v)
			dm := Mem{Base: sp, Disp: so + 4*r}
			if d == dQ40 || d == dQ50 {
				VMULPS_BCST(dm, v, v)
			} else {
				scaleMin(v, dm, Mem{Base: sp, Disp: so + 16 + 4*r}, true)
			}
		}
	}

	// Q4_K on AVX-512: per 32 quant bytes of a row, VPMOVZXBD + VPERMPS look
	// the low and high nibbles up in two 16-entry tables that already hold
	// d·sc·q − dmin·m for the two sub-blocks (built with one FMA each).
	q4perm := d == dQ4K && s.z
	var iotaV VecVirtual
	if q4perm {
		iotaV = ZMM()
		VMOVUPS(cIota, iotaV)
	}
	xInRegs := N <= 3
	q4Chunk := func(k, wo, xo, so int) {
		for c := 0; c < 4; c++ {
			var tlo, thi [4]VecVirtual
			for r := 0; r < 4; r++ {
				for h, t := range []*VecVirtual{&tlo[r], &thi[r]} {
					sbj := 2*c + h
					*t = ZMM()
					VBROADCASTSS(Mem{Base: sp, Disp: so + r*64 + 32 + sbj*4}, *t)
					VFMSUB231PS_BCST(Mem{Base: sp, Disp: so + r*64 + sbj*4}, iotaV, *t)
				}
			}
			for half := 0; half < 2; half++ {
				vlo := c*64 + half*16 // value offsets within the superblock
				vhi := vlo + 32
				var xlo, xhi []VecVirtual
				if fma && xInRegs {
					for i := 0; i < N; i++ {
						a, b := ZMM(), ZMM()
						VMOVUPS(xMem(i, xo+4*vlo), a)
						VMOVUPS(xMem(i, xo+4*vhi), b)
						xlo, xhi = append(xlo, a), append(xhi, b)
					}
				}
				for r := 0; r < 4; r++ {
					p := ZMM()
					VPMOVZXBD(rowMem(r, wo+16+c*32+half*16), p)
					for h := 0; h < 2; h++ {
						v := ZMM()
						if h == 0 {
							VPERMPS(tlo[r], p, v)
						} else {
							VPSRLD(U8(4), p, p)
							VPERMPS(thi[r], p, v)
						}
						vo := vlo
						if h == 1 {
							vo = vhi
						}
						if !fma {
							// Stored in the order the tile kernel adds them (see
							// recordPanel), not at the natural offset vo.
							VMOVUPS(v, oMem(r, xo+4*lanes*recordPanel(d, r, 2*(2*c+half)+h, vo/lanes)))
							continue
						}
						st := 0
						if sets == 2 {
							st = h
						}
						for i := 0; i < N; i++ {
							if xInRegs {
								xr := xlo[i]
								if h == 1 {
									xr = xhi[i]
								}
								VFMADD231PS(xr, v, acc[st][r][i])
							} else {
								VFMADD231PS(xMem(i, xo+4*vo), v, acc[st][r][i])
							}
						}
					}
				}
			}
		}
	}

	// Q6_K and Q5_K on AVX-512: 4 groups of 4 sub-vectors per super-block
	// whose quant bytes (and high bits) are loaded once per row and group
	// (the generic path reloads them per sub-vector). x stays in registers
	// for N <= 2.
	kGroup := s.z && (d == dQ6K || d == dQ5K)
	kChunk := func(wo, xo, so int) {
		for g := 0; g < 4; g++ {
			var vo [4]int // value offsets of the group's 4 sub-vectors
			for q := range vo {
				if d == dQ6K {
					vo[q] = 128*(g/2) + 32*q + 16*(g%2)
				} else {
					vo[q] = 64*g + 32*(q/2) + 16*(q%2)
				}
			}
			var xr [][4]VecVirtual
			if fma && N <= 2 {
				xr = make([][4]VecVirtual, N)
				for i := 0; i < N; i++ {
					for q := range vo {
						xr[i][q] = ZMM()
						VMOVUPS(xMem(i, xo+4*vo[q]), xr[i][q])
					}
				}
			}
			for r := 0; r < 4; r++ {
				var vals [4]VecVirtual
				a, b := ZMM(), ZMM()
				var hs [2]VecVirtual
				if d == dQ6K {
					n, half := g/2, g%2
					VPMOVZXBD(rowMem(r, wo+64*n+16*half), a)
					VPMOVZXBD(rowMem(r, wo+64*n+32+16*half), b)
					hs[0] = ZMM()
					VPMOVZXBD(rowMem(r, wo+128+32*n+16*half), hs[0])
					hs[1] = hs[0]
				} else {
					VPMOVZXBD(rowMem(r, wo+48+32*g), a)
					VPMOVZXBD(rowMem(r, wo+48+32*g+16), b)
					hs[0], hs[1] = ZMM(), ZMM()
					VPMOVZXBD(rowMem(r, wo+16), hs[0])
					VPMOVZXBD(rowMem(r, wo+32), hs[1])
				}
				// Quarters (Q6_K) or (hi, part) pairs (Q5_K): 0 = a low, 1 = b low,
				// 2 = a high, 3 = b high nibbles.
				vals[2], vals[3] = ZMM(), ZMM()
				VPSRLD(U8(4), a, vals[2])
				VPSRLD(U8(4), b, vals[3])
				VPANDD_BCST(cNib, a, a)
				VPANDD_BCST(cNib, b, b)
				vals[0], vals[1] = a, b
				for q := range vals {
					// The high bit(s) of value q sit at bit `from` of its qh byte.
					var from, sbj int
					var h VecVirtual
					mask := cD30
					if d == dQ6K {
						from, h = 2*q, hs[0]
						sbj = 8*(g/2) + 2*q + g%2
					} else {
						hi := q / 2
						from, h, mask = 2*g+hi, hs[q%2], cD16
						sbj = 2*g + hi
					}
					t := h
					if from != 4 {
						t = ZMM()
						if from < 4 {
							VPSLLD(U8(4-from), h, t)
						} else {
							VPSRLD(U8(from-4), h, t)
						}
					}
					VPTERNLOGD_BCST(U8(0xF8), mask, t, vals[q]) // vals |= t & mask
					VCVTDQ2PS(vals[q], vals[q])
					rs := rowScrBytes(d)
					half := rs / 2
					scaleMin(vals[q], Mem{Base: sp, Disp: so + r*rs + 4*sbj}, Mem{Base: sp, Disp: so + r*rs + half + 4*sbj}, false)
				}
				for q, v := range vals {
					if !fma {
						VMOVUPS(v, oMem(r, xo+4*lanes*recordPanel(d, r, 4*g+q, vo[q]/lanes)))
						continue
					}
					st := 0
					if sets == 2 {
						st = q % 2
					}
					for i := 0; i < N; i++ {
						if xr != nil {
							VFMADD231PS(xr[i][q], v, acc[st][r][i])
						} else {
							VFMADD231PS(xMem(i, xo+4*vo[q]), v, acc[st][r][i])
						}
					}
				}
			}
		}
	}

	// chunk emits the work of one chunk at chunk offset k (in chunks).
	chunk := func(k int, masked bool) {
		wo := k * cb
		xo := k * xcb
		so := k * scrChunkBytes(d)
		if aheadPF && !masked {
			// Prefetch the rows two quads ahead (the 4*wstride bytes at
			// w + 8*wstride) at the pace this quad is consumed.
			for off := 0; off < 4*cb; off += 64 {
				PREFETCHT1(Mem{Base: pq, Disp: 4*wo + off})
			}
		}
		if q4perm {
			q4Chunk(k, wo, xo, so)
			return
		}
		if kGroup {
			kChunk(wo, xo, so)
			return
		}
		if factored {
			xv := make([][]VecVirtual, N)
			for i := range xv {
				xv[i] = make([]VecVirtual, subvecs)
				for j := range xv[i] {
					xv[i][j] = s.vec()
					VMOVUPS(xMem(i, xo+j*vb), xv[i][j])
				}
			}
			for r := 0; r < 4; r++ {
				t := make([]VecVirtual, N)
				for j := 0; j < subvecs; j++ {
					v := s.vec()
					VPMOVSXBD(rowMem(r, wo+2+j*lanes), v)
					VCVTDQ2PS(v, v)
					for i := 0; i < N; i++ {
						if j == 0 {
							t[i] = s.vec()
							VMULPS(xv[i][j], v, t[i])
						} else {
							VFMADD231PS(xv[i][j], v, t[i])
						}
					}
				}
				if pipe {
					var m Mem
					switch r {
					case 0:
						m = Mem{Base: nx0, Disp: wo}
					case 1:
						m = Mem{Base: nx0, Index: ws, Scale: 1, Disp: wo}
					case 2:
						m = Mem{Base: nx0, Index: ws, Scale: 2, Disp: wo}
					case 3:
						m = Mem{Base: nx3, Disp: wo}
					}
					g := GP32()
					MOVWLZX(m, g)
					MOVW(g.As16(), Mem{Base: stg, Disp: 8*k + 2*r})
				}
				sm := Mem{Base: sp, Disp: so + 4*r}
				for i := 0; i < N; i++ {
					if s.z {
						VFMADD231PS_BCST(sm, t[i], acc[0][r][i])
					} else {
						b := s.vec()
						VBROADCASTSS(sm, b)
						VFMADD231PS(b, t[i], acc[0][r][i])
					}
				}
			}
			return
		}
		for j := 0; j < subvecs; j++ {
			if masked && d == dF16 && j > 0 {
				break
			}
			st := 0
			if sets == 2 {
				st = j % 2
			}
			v := make([]VecVirtual, 4)
			for r := 0; r < 4; r++ {
				v[r] = s.vec()
				widen(j, r, wo, so, masked, v[r])
			}
			if !fma {
				for r := 0; r < 4; r++ {
					VMOVUPS(v[r], oMem(r, xo+j*vb))
				}
				continue
			}
			for i := 0; i < N; i++ {
				xv := s.vec()
				VMOVUPS(xMem(i, xo+j*vb), xv)
				for r := 0; r < 4; r++ {
					VFMADD231PS(v[r], xv, acc[st][r][i])
				}
			}
		}
	}
	// nextPF prefetches as many lines of the next block as one chunk of this
	// quad consumes, so that even two passes over a block cover the next one.
	pfLines := max(1, 4*cb/64)
	if m == modePanel {
		pfLines = max(1, cb/64) // a float32 panel row is twice as long as bf16
	}
	nextPF := func() {
		for l := 0; l < pfLines; l++ {
			PREFETCHT1(Mem{Base: pf, Disp: 64 * l})
		}
		t := GP64()
		LEAQ(Mem{Base: pf, Disp: 64 * pfLines}, t)
		CMPQ(t, pfend.Addr)
		CMOVQCS(t, pf)
	}
	advance := func(k int) {
		for i := 0; i < k; i++ {
			nextPF()
		}
		if aheadPF {
			ADDQ(U32(4*k*cb), pq)
		}
		if pipe {
			ADDQ(U32(k*cb), nx0)
			ADDQ(U32(k*cb), nx3)
			ADDQ(U32(8*k), stg)
		}
		ADDQ(U32(k*cb), w0)
		ADDQ(U32(k*cb), w3)
		if fma {
			ADDQ(U32(k*xcb), x0)
			if N > 3 {
				ADDQ(U32(k*xcb), x3)
			}
		} else {
			ADDQ(U32(k*xcb), o0)
			ADDQ(U32(k*xcb), o3)
		}
		if sp != nil {
			ADDQ(U32(k*scrChunkBytes(d)), sp)
		}
	}

	unroll := 1
	if (d == dF32 || d == dF16 || d == dBF16 || chunkValues(s, d) == 32) && (N <= 3 || !fma) {
		unroll = 2
	}
	if unroll > 1 {
		Label(name + "_lu")
		CMPQ(cnt, U32(unroll))
		JL(LabelRef(name + "_l1"))
		for k := 0; k < unroll; k++ {
			chunk(k, false)
		}
		advance(unroll)
		SUBQ(U32(unroll), cnt)
		JMP(LabelRef(name + "_lu"))
	}
	Label(name + "_l1")
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_tail"))
	chunk(0, false)
	advance(1)
	DECQ(cnt)
	JMP(LabelRef(name + "_l1"))
	Label(name + "_tail")
	if hasTail(s, d) {
		KORTESTQ(ktail, ktail)
		JZ(LabelRef(name + "_done"))
		chunk(0, true)
	}
	Label(name + "_done")
	if pipe {
		// Convert the staged scales of the next quad (8 bytes of f16 per
		// block, 4 rows) into float32 [block][row].
		q := ld("scr")
		st := ld("nchunks")
		ADDQ(U8(3), st)
		ANDQ(I8(-4), st)
		SHLQ(U8(4), st)
		ADDQ(q, st)
		per := s.lanes / 4
		Label(name + "_cv")
		CMPQ(st, stg)
		JAE(LabelRef(name + "_cvd"))
		v := s.vec()
		VCVTPH2PS(Mem{Base: st}, v)
		VMOVUPS(v, Mem{Base: q})
		ADDQ(U8(8*per), st)
		ADDQ(U8(16*per), q)
		JMP(LabelRef(name + "_cv"))
		Label(name + "_cvd")
	}

	if fma {
		if sets == 2 {
			for r := 0; r < 4; r++ {
				for i := 0; i < N; i++ {
					VADDPS(acc[1][r][i], acc[0][r][i], acc[0][r][i])
				}
			}
		}
		os = ld("ostride")
		var oi3 GPVirtual
		if N > 3 {
			oi3 = GP64()
			LEAQ(Mem{Base: oq, Index: os, Scale: 2}, oi3)
			ADDQ(os, oi3)
		}
		for i := 0; i < N; i++ {
			res := reduce4(s, acc[0][0][i], acc[0][1][i], acc[0][2][i], acc[0][3][i])
			var dst Mem
			switch i {
			case 0:
				dst = Mem{Base: oq}
			case 1:
				dst = Mem{Base: oq, Index: os, Scale: 1}
			case 2:
				dst = Mem{Base: oq, Index: os, Scale: 2}
			case 3:
				dst = Mem{Base: oi3}
			case 4:
				dst = Mem{Base: oi3, Index: os, Scale: 1}
			case 5:
				dst = Mem{Base: oi3, Index: os, Scale: 2}
			}
			VMOVUPS(res, dst)
		}
		ADDQ(U8(16), oq)
	} else {
		LEAQ(Mem{Base: oq, Index: os, Scale: 4}, oq)
	}
	LEAQ(Mem{Base: wq, Index: ws, Scale: 4}, wq)
	DECQ(paddr("nquads"))
	JNZ(LabelRef(name + "_quad"))
	VZEROUPPER()
	RET()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// reduce4 returns an xmm holding the horizontal sums of a0..a3.
func reduce4(s isa, a0, a1, a2, a3 VecVirtual) Register {
	if !s.z {
		h01, h23 := YMM(), YMM()
		VHADDPS(a1, a0, h01)
		VHADDPS(a3, a2, h23)
		VHADDPS(h23, h01, h01)
		x := XMM()
		VEXTRACTF128(U8(1), h01, x)
		VADDPS(x, h01.AsX(), x)
		return x
	}
	t0, t1 := ZMM(), ZMM()
	// b01: 128-bit lanes 0,1 hold a0's half sums, lanes 2,3 a1's.
	VSHUFF32X4(U8(0x44), a1, a0, t0)
	VSHUFF32X4(U8(0xEE), a1, a0, t1)
	b01 := ZMM()
	VADDPS(t1, t0, b01)
	VSHUFF32X4(U8(0x44), a3, a2, t0)
	VSHUFF32X4(U8(0xEE), a3, a2, t1)
	b23 := ZMM()
	VADDPS(t1, t0, b23)
	// c: lane l holds 4 partial sums of a_l.
	VSHUFF32X4(U8(0x88), b23, b01, t0)
	VSHUFF32X4(U8(0xDD), b23, b01, t1)
	c := ZMM()
	VADDPS(t1, t0, c)
	VPERMILPS(U8(0x4E), c, t0)
	VADDPS(t0, c, c)
	VPERMILPS(U8(0xB1), c, t0)
	VADDPS(t0, c, c)
	idx := ZMM()
	VMOVDQU32(cRedIdx, idx)
	VPERMPS(c, idx, t0)
	return t0.AsX()
}

// genScalePrologue converts the per-block scales of the 4 rows of the current
// quad into float32 in scr, laid out per chunk:
//
//	Q8:  16 bytes per block:        scale of row r at 4r
//	Q4K: 256 bytes per superblock:  row r at 64r: 8 x d·sc_j, then 8 x dmin·m_j
func genScalePrologue(s isa, d dtype, name string, w0, w3, ws, sp GPVirtual) {
	cnt := ld("nchunks")
	p := GP64()
	MOVQ(w0, p)
	q := GP64()
	MOVQ(sp, q)
	fields, is32 := blk32(d)
	if d == dQ8 {
		fields, is32 = []int{0}, true
	}
	switch {
	case is32:
		// Copy the f16 scales (and mins) into a staging area laid out
		// [block][field][row] (scalar loads and stores, off the vector ports),
		// then convert 16 halves at a time with VCVTPH2PS into float32
		// [block][field][row] (16 bytes per field and block).
		nf, bb := len(fields), chunkBytes(s, d)
		p3 := GP64()
		MOVQ(w3, p3)
		stg := GP64()
		MOVQ(cnt, stg)
		ADDQ(U8(3), stg)
		ANDQ(I8(-4), stg)
		SHLQ(U8(uint64(log2(16*nf))), stg)
		ADDQ(sp, stg) // staging after roundup(nb, 4) x 16·nf bytes of float32 scales
		st0 := GP64()
		MOVQ(stg, st0)
		t := GP32()
		rm := func(r, off int) Mem {
			switch r {
			case 0:
				return Mem{Base: p, Disp: off}
			case 1:
				return Mem{Base: p, Index: ws, Scale: 1, Disp: off}
			case 2:
				return Mem{Base: p, Index: ws, Scale: 2, Disp: off}
			}
			return Mem{Base: p3, Disp: off}
		}
		stage := func(b int) {
			for f, fo := range fields {
				for r := 0; r < 4; r++ {
					MOVWLZX(rm(r, bb*b+fo), t)
					MOVW(t.As16(), Mem{Base: stg, Disp: 8*nf*b + 8*f + 2*r})
				}
			}
		}
		Label(name + "_s4")
		CMPQ(cnt, U8(4))
		JL(LabelRef(name + "_s1"))
		for b := 0; b < 4; b++ {
			stage(b)
		}
		ADDQ(U32(4*bb), p)
		ADDQ(U32(4*bb), p3)
		ADDQ(U8(32*nf), stg)
		SUBQ(U8(4), cnt)
		JMP(LabelRef(name + "_s4"))
		Label(name + "_s1")
		TESTQ(cnt, cnt)
		JZ(LabelRef(name + "_cv"))
		stage(0)
		ADDQ(U8(bb), p)
		ADDQ(U8(bb), p3)
		ADDQ(U8(8*nf), stg)
		DECQ(cnt)
		JMP(LabelRef(name + "_s1"))
		// Convert: 8 bytes of staging (one field of a block, 4 rows) per 16
		// bytes of scales.
		Label(name + "_cv")
		per := s.lanes / 4 // fields per conversion
		Label(name + "_cl")
		CMPQ(st0, stg)
		JAE(LabelRef(name + "_sgd"))
		v := s.vec()
		VCVTPH2PS(Mem{Base: st0}, v)
		VMOVUPS(v, Mem{Base: q})
		ADDQ(U8(8*per), st0)
		ADDQ(U8(16*per), q)
		JMP(LabelRef(name + "_cl"))
		Label(name + "_sgd")
	case rowScrBytes(d) > 0 && d != dQ4K:
		TESTQ(cnt, cnt)
		JZ(LabelRef(name + "_sgd"))
		Label(name + "_sg")
		p3 := GP64()
		LEAQ(Mem{Base: p, Index: ws, Scale: 2}, p3)
		ADDQ(ws, p3)
		for r := 0; r < 4; r++ {
			src := []Mem{{Base: p}, {Base: p, Index: ws, Scale: 1}, {Base: p, Index: ws, Scale: 2}, {Base: p3}}[r]
			dst := Mem{Base: q, Disp: rowScrBytes(d) * r}
			switch d {
			case dQ5K:
				q4Scales(s, src, dst)
			case dQ6K:
				q6Scales(s, src, dst)
			case dQ2K:
				q2Scales(src, dst)
			case dIQ4XS:
				iq4xsScales(src, dst)
			case dQ3K:
				q3Scales(src, dst)
			}
		}
		ADDQ(U32(chunkBytes(s, d)), p)
		ADDQ(U32(scrChunkBytes(d)), q)
		DECQ(cnt)
		JNZ(LabelRef(name + "_sg"))
		Label(name + "_sgd")
	case d == dQ4K:
		_ = w3
		TESTQ(cnt, cnt)
		JZ(LabelRef(name + "_sgd"))
		Label(name + "_sg")
		for r := 0; r < 4; r++ {
			var src Mem
			switch r {
			case 0:
				src = Mem{Base: p}
			case 1:
				src = Mem{Base: p, Index: ws, Scale: 1}
			case 2:
				src = Mem{Base: p, Index: ws, Scale: 2}
			case 3:
				src = Mem{Base: p, Index: ws, Scale: 1} // adjusted below
			}
			if r == 3 {
				p3 := GP64()
				LEAQ(Mem{Base: p, Index: ws, Scale: 2}, p3)
				ADDQ(ws, p3)
				src = Mem{Base: p3}
			}
			q4Scales(s, src, Mem{Base: q, Disp: 64 * r})
		}
		ADDQ(U32(144), p)
		ADDQ(U32(256), q)
		DECQ(cnt)
		JNZ(LabelRef(name + "_sg"))
		Label(name + "_sgd")
	}
}

// q4Scales unpacks the 12-byte scales field of one Q4_K block (at src+4) and
// writes 8 x d·sc_j then 8 x dmin·m_j as float32 at dst.
func q4Scales(s isa, src, dst Mem) {
	v := XMM()
	VMOVDQU(src.Offset(4), v) // a, b, c, (first 4 bytes of qs)
	pp, qq := XMM(), XMM()
	VPSHUFD(U8(0x98), v, pp) // a c b c
	VPSHUFD(U8(0x50), v, qq) // a a b b
	VPSRLVD(cQ4ShP, pp, pp)
	VPSRLVD(cQ4ShQ, qq, qq)
	VPAND(cQ4MaskP, pp, pp)
	VPAND(cQ4MaskQ, qq, qq)
	VPOR(qq, pp, pp) // bytes: sc0..7, m0..7
	dd := XMM()
	VCVTPH2PS(src, dd) // d, dmin, (junk), (junk)
	if s.z {
		f := ZMM()
		VPMOVZXBD(pp, f)
		VCVTDQ2PS(f, f)
		ddz := ZMM()
		idx := ZMM()
		VMOVDQU32(cQ4DDIdx, idx)
		VPERMPS(dd.AsZ(), idx, ddz)
		VMULPS(ddz, f, f)
		VMOVUPS(f, dst)
		return
	}
	lo, hi := YMM(), YMM()
	VPMOVZXBD(pp, lo)
	VPSHUFD(U8(0xEE), pp, pp)
	VPMOVZXBD(pp, hi)
	VCVTDQ2PS(lo, lo)
	VCVTDQ2PS(hi, hi)
	b := YMM()
	VBROADCASTSS(dd, b)
	VMULPS(b, lo, lo)
	VMOVSHDUP(dd, dd)
	VBROADCASTSS(dd, b)
	VMULPS(b, hi, hi)
	VMOVUPS(lo, dst)
	VMOVUPS(hi, dst.Offset(32))
}

// shiftTo shifts the dwords of v so that bit from lands at bit to.
func shiftTo(v VecVirtual, from, to int) {
	switch {
	case from < to:
		VPSLLD(U8(to-from), v, v)
	case from > to:
		VPSRLD(U8(from-to), v, v)
	}
}

// scaleMin computes v = v·[sc] − [mn] (add: v·[sc] + [mn]) with both scalars
// broadcast from memory.
func scaleMin(v VecVirtual, sc, mn Mem, add bool) {
	m := ZMM()
	VBROADCASTSS(mn, m)
	if add {
		VFMADD132PS_BCST(sc, m, v)
	} else {
		VFMSUB132PS_BCST(sc, m, v)
	}
}

// bcstF16 returns a zmm holding the f16 at src converted to float32 in every lane.
func bcstF16(src Mem) VecVirtual {
	h := YMM()
	VPBROADCASTW(src, h)
	z := ZMM()
	VCVTPH2PS(h, z)
	return z
}

// nibble keeps the high (hi) or low nibble of each dword of v (bytes
// zero-extended): on AVX2 with the 0x0F constant in cNibV.
func nibble(s isa, v VecVirtual, hi bool, cNibV VecVirtual) {
	switch {
	case hi:
		VPSRLD(U8(4), v, v)
	case s.z:
		VPANDD_BCST(cNib, v, v)
	default:
		VPAND(cNibV, v, v)
	}
}

// highBits ors into v the bits of h from bit `from` on, moved to bit 4 and
// masked by mask (in memory, AVX-512) or maskV (AVX2: the same dwords in a
// register): Q6_K's high bit pairs, Q5_K's fifth bits.
func highBits(s isa, v, h VecVirtual, from int, mask Mem, maskV VecVirtual) {
	shiftTo(h, from, 4)
	if s.z {
		VPANDD_BCST(mask, h, h)
		VPORD(h, v, v)
	} else {
		VPAND(maskV, h, h)
		VPOR(h, v, v)
	}
}

// scaleMinS is scaleMin (v = v·[sc] − [mn]) on either ISA.
func scaleMinS(s isa, v VecVirtual, sc, mn Mem) {
	if s.z {
		scaleMin(v, sc, mn, false)
		return
	}
	m, t := s.vec(), s.vec()
	VBROADCASTSS(mn, m)
	VBROADCASTSS(sc, t)
	VFMSUB132PS(t, m, v)
}

// q6Scales writes the 16 scales d·sc_j of one Q6_K block at dst and 32·d·sc_j
// at dst+64.
func q6Scales(s isa, src, dst Mem) {
	if !s.z {
		h := XMM()
		VPBROADCASTW(src.Offset(208), h)
		d := YMM()
		VCVTPH2PS(h, d)
		c := YMM()
		VBROADCASTSS(cF32, c)
		for k := 0; k < 2; k++ {
			f := YMM()
			VPMOVSXBD(src.Offset(192+8*k), f)
			VCVTDQ2PS(f, f)
			VMULPS(d, f, f)
			VMOVUPS(f, dst.Offset(32*k))
			VMULPS(c, f, f)
			VMOVUPS(f, dst.Offset(64+32*k))
		}
		return
	}
	d := bcstF16(src.Offset(208))
	f := ZMM()
	VPMOVSXBD(src.Offset(192), f)
	VCVTDQ2PS(f, f)
	VMULPS(d, f, f)
	VMOVUPS(f, dst)
	VMULPS_BCST(cF32, f, f)
	VMOVUPS(f, dst.Offset(64))
}

// q2Scales writes the 16 scales d·(sc_j & 15) of one Q2_K block at dst and the
// mins dmin·(sc_j >> 4) at dst+64.
func q2Scales(src, dst Mem) {
	d := bcstF16(src.Offset(80))
	dmin := bcstF16(src.Offset(82))
	f, g := ZMM(), ZMM()
	VPMOVZXBD(src, f)
	VPSRLD(U8(4), f, g)
	VPANDD_BCST(cNib, f, f)
	VCVTDQ2PS(f, f)
	VCVTDQ2PS(g, g)
	VMULPS(d, f, f)
	VMULPS(dmin, g, g)
	VMOVUPS(f, dst)
	VMOVUPS(g, dst.Offset(64))
}

// iq4xsScales writes the 8 sub-block scales d·(sc−32) of one IQ4_XS block at
// dst: the low 4 bits of scale i are nibble i of the dword at 4, the high 2 bits
// bits 2i of the word at 2.
func iq4xsScales(src, dst Mem) {
	lo, hi := YMM(), YMM()
	VPBROADCASTD(src.Offset(4), lo)
	VPSRLVD(cXSShl, lo, lo)
	VPANDD_BCST(cNib, lo, lo)
	VPBROADCASTD(src.Offset(2), hi)
	VPSRLVD(cXSShh, hi, hi)
	VPANDD_BCST(cD3, hi, hi)
	VPSLLD(U8(4), hi, hi)
	VPORD(hi, lo, lo)
	VPSUBD_BCST(cD32, lo, lo)
	VCVTDQ2PS(lo, lo)
	d := bcstF16(src)
	VMULPS(d.AsY(), lo, lo)
	VMOVUPS(lo, dst)
}

// q3Scales writes the 16 scales d·(sc_j − 32) of one Q3_K block at dst and
// 4·d·(sc_j − 32) at dst+64. Scale j has its low 4 bits in nibble j/8 of byte
// 96 + j%8 and its high 2 bits at bit 2·(j/4) of byte 104 + j%4.
func q3Scales(src, dst Mem) {
	d := bcstF16(src.Offset(108))
	a := YMM()
	VPMOVZXBD(src.Offset(96), a) // bytes 0..7 of the scales
	hb := YMM()
	VPBROADCASTD(src.Offset(104), hb) // bytes 8..11
	for half := 0; half < 2; half++ {
		lo, hi := YMM(), YMM()
		if half == 0 {
			VPANDD_BCST(cNib, a, lo)
		} else {
			VPSRLD(U8(4), a, lo)
		}
		VPSRLVD([]Mem{cQ3Sh0, cQ3Sh1}[half], hb, hi)
		VPANDD_BCST(cD3, hi, hi)
		VPSLLD(U8(4), hi, hi)
		VPORD(hi, lo, lo)
		VPSUBD_BCST(cD32, lo, lo)
		VCVTDQ2PS(lo, lo)
		VMULPS(d.AsY(), lo, lo)
		VMOVUPS(lo, dst.Offset(32*half))
		VMULPS_BCST(cF4, lo, lo)
		VMOVUPS(lo, dst.Offset(64+32*half))
	}
}

// panelOrder records, per dtype, the natural sub-vector index (of `lanes`
// values within a chunk) of each sub-vector a widen kernel stores, in the
// order it stores them: the order in which the tile kernels add them. The
// panel path packs x the same way (model/kernels panelorder_amd64.go, written
// by writePanelOrder), so panels and tiles round identically.
var panelOrder = map[dtype][]int{}

// recordPanel notes that the t-th sub-vector of a chunk of row r is natural
// sub-vector nat, and returns t.
func recordPanel(d dtype, r, t, nat int) int {
	if r == 0 {
		o := panelOrder[d]
		for len(o) <= t {
			o = append(o, -1)
		}
		if o[t] >= 0 && o[t] != nat {
			panic(fmt.Sprintf("panel order of %v: sub-vector %d is %d and %d", d, t, o[t], nat))
		}
		o[t] = nat
		panelOrder[d] = o
	}
	return t
}
