package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- Q8_0 integer kernels for AVX2 (no VNNI): q80x16AVX2N, q80rows256 ----
//
// The same quantized input rows (q80rows512's tiles: q, d_x, 128·Σq_x per
// block) and the same float32 step per (weight row, block) as the AVX-512
// kernels, acc += float32(Σq_w·q_x)·(d_w·d_x), multiplied and added
// separately, in block order: the same bits. Without VPDPBUSD, each block
// sum is made with llama.cpp's AVX2 trick: VPMADDUBSW multiplies unsigned
// with signed bytes and saturates int16 pair sums, so it takes |q_w| as the
// unsigned operand and q_x with the sign of q_w (VPSIGNB) as the signed one
// (a pair sum is at most 2·128·127 = 32512), and VPMADDWD with 16-bit ones
// adds the pairs into int32 lanes. The sums are exact, so no 128·Σq_x
// correction is needed.
//
//   - q80x16AVX2N<n> (packed Q8_0, tensor.Q80x16; packedSig): per block and
//     4-byte word j, two ymm hold word j of rows 0-7 and 8-15 (lane = weight
//     row, the bytes stored as q+128 are flipped back by one VPXOR), so the
//     input row's 4 bytes broadcast give every row's partial sum in its own
//     lane with nothing to reduce.
//   - q80rows256 (row-major Q8_0, one input row): each weight row walked
//     alone, a block per ymm, its 8 partial sums reduced to one by a
//     shuffle-add ladder, then the float32 step in the low lane. For
//     matrices the loader leaves row-major (read through the file's map).

// q80x16AVX2MaxN is the most input rows per q80x16AVX2N call: per input row
// two accumulators, two block sums and a broadcast register, beside the two
// constants and three temporaries of 16 ymm.
const q80x16AVX2MaxN = 2

// q80SignedSum adds the int32 pair sums of the signed weight bytes q times
// the signed activation bytes x (both ymm registers) to s: VPMADDUBSW of
// |q| (a) with x signed as q, then VPMADDWD with the 16-bit ones.
func q80SignedSum(q, a, x, ones, s VecVirtual) {
	t := YMM()
	VPSIGNB(q, x, t)
	VPMADDUBSW(t, a, t)
	VPMADDWD(ones, t, t)
	VPADDD(t, s, s)
}

func genQ80x16AVX2(n int) { genX16AVX2("Q80", n) }

// genX16AVX2 emits q80x16AVX2N<n> (typ "Q80"), q40x16AVX2N<n> ("Q40") or
// iq4nlx16AVX2N<n> ("IQ4NL"), and Q5_0's, Q4_1's and Q5_1's. The packed
// Q4_0 and IQ4_NL kernels make the int8 values of the Q8_0 rewrite from the
// nibbles (q−8, or the codebook by VPSHUFB; virtual word j < 4 the low
// nibbles of word j, j >= 4 the high nibbles of word j−4: values 4j.., as
// Q8_0's words) and go on as the Q8_0 kernel: the same bits as the
// rewritten rows.
func genX16AVX2(typ string, n int) {
	name, _, wp, idx := x16Begin(typ, "AVX2N", n, "on AVX2 (see genX16AVX2)")
	acc := x16AVX2Body(typ, name, []GPVirtual{wp}, idx, n)
	packedEnd(name, acc[0])
}

// genX16AVX2Streams emits <type>x16AVX2S2N1, the two-stream kernel of one
// input row at the AVX2 level (see streams.go): both runs' current blocks
// in one loop, their loads interleaved (word by word for Q8_0, half block
// by half block for the others), each run's sums and float32 steps those
// of the one-run kernel: the same bits. With two input rows the two runs'
// sums would not fit the 16 ymm registers. Generated for Q8_0, Q4_0 and
// Q4_1, where it measured faster (see streamKernelsAVX2).
func genX16AVX2Streams(typ string) {
	name := x16Name(typ, "AVX2S2N", 1)
	wp := streamsBegin(name, typ, 2, 1)
	streamsEnd(name, x16AVX2Body(typ, name, wp, make([]GPVirtual, 1), 1))
}

// x16AVX2Body emits the constants, group and block loops of genX16AVX2's
// kernels for the runs whose weights wp points at (one, or two for the
// two-stream kernels), up to the group's epilogue, and returns each run's
// float32 sums (acc[r][2i+h]) for it.
func x16AVX2Body(typ, name string, wp []GPVirtual, idx []GPVirtual, n int) [][]VecVirtual {
	blockBytes := x16BlockBytes(typ)
	Pragma("noescape")
	var c80, tab VecVirtual
	ones := YMM()
	switch typ {
	case "Q80":
		c80 = YMM()
		VPBROADCASTD(cB80, c80)
	case "IQ4NL":
		tab = YMM()
		VMOVDQU(cIQ4Y, tab)
	case "MXFP4":
		tab = YMM()
		VMOVDQU(cMXY, tab)
	}
	wo := 32 // the words' offset in a group's block
	if typ == "MXFP4" {
		wo = 16
	}
	VPBROADCASTD(cW1, ones)
	cnt, xq, dc, bi := x16GroupHead(name)
	xm := func(base GPVirtual, i, disp int) Mem { return packedXMem(idx, base, i, disp) }
	runs := len(wp)
	acc := make([][]VecVirtual, runs) // acc[r][2i+h]: run r, input row i, weight rows 8h..8h+7
	for r := range acc {
		acc[r] = make([]VecVirtual, 2*n)
		for i := range acc[r] {
			acc[r][i] = YMM()
			VXORPS(acc[r][i], acc[r][i], acc[r][i])
		}
	}
	Label(name + "_blk")
	s := make([][]VecVirtual, runs)
	wt := q80W{typ: typ}
	unsigned := typ == "Q40" || typ == "Q50" || wt.hasMin()
	for r := range s {
		s[r] = make([]VecVirtual, 2*n)
	}
	if unsigned {
		// Q4_0's codes are unsigned and small: VPMADDUBSW of the codes q
		// (0..15) with the signed activations, no sign trick, the pair sums
		// (at most 2·15·127) of the block's 8 words added in int16 (at most
		// 30480), one VPMADDWD, then 8·Σq_x taken off: Σ(q−8)·q_x exactly.
		// Q5_0's (0..31, the fifth bits merged) likewise, 4 words at a time
		// (at most 31496), then 16·Σq_x taken off.
		// Q4_1's and Q5_1's the same way, with nothing taken off.
		for h := 0; h < 2; h++ {
			for r := range runs {
				q40SumsAVX2(wt, n, h, wp[r], xq, dc, xm, ones, s[r])
			}
		}
	}
	for r := range s {
		for i := range s[r] {
			if unsigned {
				break
			}
			s[r][i] = YMM()
			VPXOR(s[r][i], s[r][i], s[r][i])
		}
	}
	for j := 0; j < 8 && !unsigned; j++ {
		xb := make([]VecVirtual, n)
		for i := range xb {
			xb[i] = YMM()
			VPBROADCASTD(xm(xq, i, 4*j), xb[i])
		}
		for r := range runs {
			for h := 0; h < 2; h++ {
				q, a := YMM(), YMM()
				switch {
				case typ == "Q80":
					VPXOR(Mem{Base: wp[r], Disp: wo + 64*j + 32*h}, c80, q)
				case j < 4:
					VMOVDQU(Mem{Base: wp[r], Disp: wo + 64*j + 32*h}, q)
				default:
					shift256(VPSRLW, U8(4), Mem{Base: wp[r], Disp: wo + 64*(j-4) + 32*h}, q)
				}
				switch typ {
				case "IQ4NL", "MXFP4":
					VPAND(cB0FY, q, q)
					VPSHUFB(q, tab, q)
				}
				VPABSB(q, a)
				for i := 0; i < n; i++ {
					q80SignedSum(q, a, xb[i], ones, s[r][2*i+h])
				}
			}
		}
	}
	for r := range runs {
		for h := 0; h < 2; h++ {
			dw := YMM()
			if typ == "MXFP4" {
				e8m0HalfY(Mem{Base: wp[r], Disp: 8 * h}, dw)
			} else {
				VCVTPH2PS(Mem{Base: wp[r], Disp: 16 * h}, dw)
			}
			var m128 VecVirtual
			if wt.hasMin() {
				m128 = YMM()
				VCVTPH2PS(Mem{Base: wp[r], Disp: 32 + 16*h}, m128)
				VMULPS(cF128, m128, m128)
			}
			for i := 0; i < n; i++ {
				t, f := YMM(), YMM()
				VBROADCASTSS(xm(dc, i, q80rD), t)
				VMULPS(t, dw, t) // d_w·d_x (one rounding)
				VCVTDQ2PS(s[r][2*i+h], f)
				VMULPS(t, f, f)
				if wt.hasMin() {
					c, x := YMM(), YMM()
					VPBROADCASTD(xm(dc, i, q80rC), c)
					VBROADCASTSS(xm(dc, i, q80rD), x)
					min81StepY(m128, c, x, f)
				}
				VADDPS(f, acc[r][2*i+h], acc[r][2*i+h])
			}
		}
		ADDQ(U32(blockBytes), wp[r])
	}
	q80NextBlock(name, xq, dc, bi, cnt)
	return acc
}

// e8m0HalfY is e8m0Half on AVX2: the 8 E8M0 bytes at m to float32 in dw,
// the subnormals blended in where e < 2.
func e8m0HalfY(m Mem, dw VecVirtual) {
	e, t, lt := YMM(), YMM(), YMM()
	VPMOVZXBD(m, e)
	VPBROADCASTD(cD1, t)
	VPSUBD(t, e, dw)
	VPSLLD(U8(23), dw, dw)
	VPBROADCASTD(cD2, t)
	VPCMPGTD(e, t, lt) // 2 > e
	VPBROADCASTD(cE8M0, t)
	VPSLLVD(e, t, t)
	VPBLENDVB(lt, t, dw, dw)
}

// q40SumsAVX2 sets s[2i+h] to the block's exact Σ(q−8)·q_x (q5: Q5_0's
// Σ(q−16)·q_x) for input row i and weight rows 8h..8h+7 (one half h) of a
// packed Q4_0 (Q5_0) group (see genX16AVX2).
func q40SumsAVX2(wt q80W, n, h int, wp, xq, dc GPVirtual, xm func(GPVirtual, int, int) Mem, ones VecVirtual, s []VecVirtual) {
	q5 := wt.q5()
	nib, span := 0, 8 // the first word of nibbles; words per int16 sum
	if q5 {
		nib, span = 1, 4
	}
	words := 32 // after the d (and the m)
	if wt.hasMin() {
		words = 64
	}
	var qh VecVirtual
	if q5 {
		qh = YMM()
		VMOVDQU(Mem{Base: wp, Disp: words + 32*h}, qh)
	}
	s16 := make([][2]VecVirtual, n)
	for j := 0; j < 8; j++ {
		q := YMM()
		if j < 4 {
			VMOVDQU(Mem{Base: wp, Disp: words + 64*(nib+j) + 32*h}, q)
		} else {
			shift256(VPSRLW, U8(4), Mem{Base: wp, Disp: words + 64*(nib+j-4) + 32*h}, q)
		}
		VPAND(cB0FY, q, q)
		if q5 {
			// Values 4j..4j+3's fifth bits: bits 4j.. of qh (byte j/2)
			// to bit 4 of their bytes.
			t := YMM()
			VPSHUFB(cQ5Rep[j/2], qh, t)
			VPAND(cQ5Nib[j%2], t, t)
			VPCMPEQB(cQ5Nib[j%2], t, t)
			VPAND(cB10Y, t, t)
			VPOR(t, q, q)
		}
		for i := 0; i < n; i++ {
			p := YMM()
			VPBROADCASTD(xm(xq, i, 4*j), p)
			VPMADDUBSW(p, q, p)
			if j%span == 0 {
				s16[i][j/span] = p
				continue
			}
			VPADDW(p, s16[i][j/span], s16[i][j/span])
		}
	}
	for i := 0; i < n; i++ {
		c := YMM()
		s[2*i+h] = s16[i][0]
		VPMADDWD(ones, s16[i][0], s[2*i+h])
		if q5 {
			VPMADDWD(ones, s16[i][1], s16[i][1])
			VPADDD(s16[i][1], s[2*i+h], s[2*i+h])
		}
		if wt.hasMin() {
			continue
		}
		VPBROADCASTD(xm(dc, i, q80rC), c)
		if q5 {
			VPSRAD(U8(3), c, c) // 16·Σq_x
		} else {
			VPSRAD(U8(4), c, c) // 8·Σq_x
		}
		VPSUBD(c, s[2*i+h], s[2*i+h])
	}
}

// genQ80Rows256 emits q80rows256: out[r] = row r of the row-major Q8_0
// weights times one quantized input row (q80rows512's tiles), for nrows
// rows wstride bytes apart.
func genQ80Rows256() { genRows256("Q80") }

// genRows256 emits q80rows256 (typ "Q80"), or q40rows256, q50rows256 and
// iq4nlrows256 ("Q40", "Q50", "IQ4NL": row-major Q4_0, Q5_0 and IQ4_NL rows
// read as they are, the nibbles of a block widened in a register: Q4_0's
// unsigned codes by VPMADDUBSW directly, 8·Σq_x taken off; Q5_0's likewise
// with the fifth bits added as 16 (spread from qh by VPSHUFB, VPAND and
// VPCMPEQB), 16·Σq_x taken off; IQ4_NL's codebook values as Q8_0's signed
// bytes), the bits of the Q8_0 rewrite either way.
func genRows256(typ string) {
	name := rowsNames[typ] + "256"
	TEXT(name, NOSPLIT, "func(w *byte, wstride, nrows int, xq *byte, nblocks int, out *float32)")
	Doc(fmt.Sprintf("%s multiplies row-major %s weight rows with one quantized input row on AVX2 (see genQ80x16AVX2).", name, typNames[typ]))
	wt := q80W{typ: typ}
	Pragma("noescape")
	wq := ld("w")
	ws := ld("wstride")
	oq := ld("out")
	ones := YMM()
	VPBROADCASTD(cW1, ones)
	var tab VecVirtual
	switch typ {
	case "IQ4NL":
		tab = YMM()
		VMOVDQU(cIQ4Y, tab)
	case "MXFP4":
		tab = YMM()
		VMOVDQU(cMXY, tab)
	}
	bb := wt.blockBytes()
	qs := map[string]int{"Q80": 2, "Q40": 2, "IQ4NL": 2, "Q50": 6, "Q41": 4, "Q51": 8, "MXFP4": 1}[typ] // the codes' offset
	Label(name + "_row")
	w0 := GP64()
	MOVQ(wq, w0)
	xq := ld("xq")
	dc := GP64()
	MOVQ(xq, dc)
	cnt := ld("nblocks")
	bi := GP64()
	XORQ(bi, bi)
	acc := XMM()
	VXORPS(acc, acc, acc)
	if wt.hasMin() {
		rows256Min8(wt, name, w0, xq, dc, bi, cnt, ones, acc)
	}
	Label(name + "_blk")
	q, s := YMM(), YMM()
	if typ == "Q80" {
		VMOVDQU(Mem{Base: w0, Disp: qs}, q)
	} else {
		nibblesY(Mem{Base: w0, Disp: qs}, q)
	}
	if wt.q5() {
		q5BitsY(Mem{Base: w0, Disp: wt.qhOff()}, q) // byte l is value l
	}
	x := YMM()
	VMOVDQU(Mem{Base: xq}, x)
	if typ != "Q80" && typ != "IQ4NL" && typ != "MXFP4" {
		VPMADDUBSW(x, q, s)
		VPMADDWD(ones, s, s)
	} else {
		if typ == "IQ4NL" || typ == "MXFP4" {
			VPSHUFB(q, tab, q)
		}
		a := YMM()
		VPABSB(q, a)
		VPXOR(s, s, s)
		q80SignedSum(q, a, x, ones, s)
	}
	t := XMM()
	VEXTRACTI128(U8(1), s, t)
	VPADDD(t, s.AsX(), t)
	u := XMM()
	VPSHUFD(U8(0x4E), t, u)
	VPADDD(u, t, t)
	VPSHUFD(U8(0xB1), t, u)
	VPADDD(u, t, t)
	switch typ {
	case "Q40":
		VMOVD(Mem{Base: dc, Disp: q80rC}, u)
		VPSRAD(U8(4), u, u) // 8·Σq_x
		VPSUBD(u, t, t)
	case "Q50":
		VMOVD(Mem{Base: dc, Disp: q80rC}, u)
		VPSRAD(U8(3), u, u) // 16·Σq_x
		VPSUBD(u, t, t)
	}
	VCVTDQ2PS(t, t)
	h := GP32()
	dw := XMM()
	if typ == "MXFP4" {
		// tensor.E8M0Half of the block's E8M0 byte e: (e−1)<<23, or
		// (e+1)<<21 (the subnormals 2^−128, 2^−127) where e < 2.
		MOVBLZX(Mem{Base: w0}, h)
		b, c := GP32(), GP32()
		LEAL(Mem{Base: h, Disp: -1}, b)
		SHLL(U8(23), b)
		LEAL(Mem{Base: h, Disp: 1}, c)
		SHLL(U8(21), c)
		CMPL(h, U8(2))
		CMOVLCS(c, b)
		VMOVD(b, dw)
	} else {
		MOVWLZX(Mem{Base: w0}, h)
		VMOVD(h, dw)
		VCVTPH2PS(dw, dw)
	}
	VMULSS(Mem{Base: dc, Disp: q80rD}, dw, dw) // d_w·d_x
	VMULSS(dw, t, t)
	if wt.hasMin() {
		// The min's share (min81Step's steps).
		MOVWLZX(Mem{Base: w0, Disp: 2}, h)
		VMOVD(h, dw)
		VCVTPH2PS(dw, dw)
		VMULSS(cF128, dw, dw)
		VCVTSI2SSL(Mem{Base: dc, Disp: q80rC}, u, u)
		VMULSS(Mem{Base: dc, Disp: q80rD}, u, u)
		VMULSS(u, dw, dw)
		VADDSS(dw, t, t)
	}
	VADDSS(t, acc, acc)
	ADDQ(U8(bb), w0)
	q80NextBlock(name, xq, dc, bi, cnt)
	Label(name + "_done")
	VMOVSS(acc, Mem{Base: oq})
	ADDQ(U8(4), oq)
	ADDQ(ws, wq)
	DECQ(paddr("nrows"))
	JNZ(LabelRef(name + "_row"))
	VZEROUPPER()
	RET()
}

var (
	cQ41DM   Mem // VPSHUFB: each lane's d words to its low 8 bytes, m words to its high 8
	cIota8   Mem // dwords 0..7
	cPickW0  Mem // VPSHUFB: word 0 of each dword to the low 8 bytes of each lane
	cExpF32  Mem // dword 0x7F800000: a float32's exponent bits
	cPackOrd Mem // VPERMD: VPACKSSDW+VPACKSSWB's dwords back in order
)

func genQ80AVX2Consts() {
	cQ41DM = data32("q41dm", 0x05040100, 0x0D0C0908, 0x07060302, 0x0F0E0B0A, 0x05040100, 0x0D0C0908, 0x07060302, 0x0F0E0B0A)
	cIota8 = data32("iota8", 0, 1, 2, 3, 4, 5, 6, 7)
	cExpF32 = data32("expf32", 0x7F800000)
	cPackOrd = data32("packord", 0, 4, 1, 5, 2, 6, 3, 7)
	cPickW0 = data32("pickw0", 0x05040100, 0x0D0C0908, 0x80808080, 0x80808080, 0x05040100, 0x0D0C0908, 0x80808080, 0x80808080)
}

// genQ80Rows8x256 emits q80rows8x256: like q80rows256, eight weight rows at
// a time (groups of them, nrows = 8·groups): per block, each row's 8
// partial sums, the eight rows' sums reduced together by a VPHADDD tree
// into one register (lane = weight row), their d_w gathered, and the
// float32 step for the eight rows at once, in block order: the bits of
// q80rows256 at about a third of its instructions per block.
func genQ80Rows8x256() {
	const name = "q80rows8x256"
	TEXT(name, NOSPLIT, "func(w *byte, wstride, groups int, xq *byte, nblocks int, out *float32)")
	Doc(name + " multiplies groups of 8 row-major Q8_0 weight rows with one quantized input row on AVX2 (see genQ80Rows8x256).")
	Pragma("noescape")
	wq := ld("w")
	ws := ld("wstride")
	oq := ld("out")
	ws3 := GP64()
	IMUL3Q(U8(3), ws, ws3)
	ones, idx := YMM(), YMM()
	VPBROADCASTD(cW1, ones)
	VMOVD(ws.As32(), idx.AsX())
	VPBROADCASTD(idx.AsX(), idx)
	VPMULLD(cIota8, idx, idx) // row r's offset r·wstride
	Label(name + "_grp")
	w0, w4 := GP64(), GP64()
	MOVQ(wq, w0)
	LEAQ(Mem{Base: wq, Index: ws, Scale: 4}, w4)
	xq := ld("xq")
	dc := GP64()
	MOVQ(xq, dc)
	cnt := ld("nblocks")
	bi := GP64()
	XORQ(bi, bi)
	acc := YMM()
	VXORPS(acc, acc, acc)
	Label(name + "_blk")
	x := YMM()
	VMOVDQU(Mem{Base: xq}, x)
	rowMem := func(r int) Mem {
		base := w0
		if r >= 4 {
			base = w4
		}
		switch r % 4 {
		case 0:
			return Mem{Base: base, Disp: 2}
		case 3:
			return Mem{Base: base, Index: ws3, Scale: 1, Disp: 2}
		}
		return Mem{Base: base, Index: ws, Scale: uint8(r % 4), Disp: 2}
	}
	rowSum := func(r int) VecVirtual {
		q, a, t := YMM(), YMM(), YMM()
		VMOVDQU(rowMem(r), q)
		VPABSB(q, a)
		VPSIGNB(q, x, t)
		VPMADDUBSW(t, a, t)
		VPMADDWD(ones, t, t)
		return t
	}
	// quad returns, per 128-bit lane, rows r..r+3's sums of that lane's
	// four partial sums.
	quad := func(r int) VecVirtual {
		p := YMM()
		VPHADDD(rowSum(r+1), rowSum(r), p)
		p2 := YMM()
		VPHADDD(rowSum(r+3), rowSum(r+2), p2)
		VPHADDD(p2, p, p)
		return p
	}
	q0, q4 := quad(0), quad(4)
	lo, hi := YMM(), YMM()
	VPERM2I128(U8(0x20), q4, q0, lo)
	VPERM2I128(U8(0x31), q4, q0, hi)
	VPADDD(hi, lo, lo) // lane r: row r's block sum
	// The eight rows' d_w: a dword gathered at each row's block start, its
	// low word kept.
	m, g := YMM(), YMM()
	VPCMPEQD(m, m, m)
	VPXOR(g, g, g)
	VPGATHERDD(m, Mem{Base: w0, Index: idx, Scale: 1}, g)
	VPSHUFB(cPickW0, g, g)
	VPERMQ(U8(0x08), g, g)
	dw := YMM()
	VCVTPH2PS(g.AsX(), dw)
	t, f := YMM(), YMM()
	VBROADCASTSS(Mem{Base: dc, Disp: q80rD}, t)
	VMULPS(t, dw, t) // d_w·d_x
	VCVTDQ2PS(lo, f)
	VMULPS(t, f, f)
	VADDPS(f, acc, acc)
	ADDQ(U8(34), w0)
	ADDQ(U8(34), w4)
	q80NextBlock(name, xq, dc, bi, cnt)
	VMOVUPS(acc, Mem{Base: oq})
	ADDQ(U8(32), oq)
	LEAQ(Mem{Base: wq, Index: ws, Scale: 8}, wq)
	DECQ(paddr("groups"))
	JNZ(LabelRef(name + "_grp"))
	VZEROUPPER()
	RET()
}

// genQ80QuantRow256 emits quantQ80R256, quantQ80R512 on AVX2 (the bytes of
// quantizeQ80RowRef): per block of 32 values d = f16(amax/127), q =
// round-to-nearest-even(x·(127/amax)), 128·Σq. It returns false if x holds
// an infinity or a NaN.
func genQ80QuantRow256() {
	name := "quantQ80R256"
	TEXT(name, NOSPLIT, "func(x *float32, nblocks int, dst *byte) bool")
	Doc(name + " quantizes one input row for q80rows256 and q80x16AVX2N (see genQ80QuantRow256).")
	Pragma("noescape")
	px := ld("x")
	nb := ld("nblocks")
	pq := ld("dst")
	pd := GP64()
	LEAQ(Mem{Base: pq, Disp: q80rD}, pd)
	pc := GP64()
	LEAQ(Mem{Base: pq, Disp: q80rC}, pc)
	inTile := GP64()
	MOVQ(U32(16), inTile)
	abs, exp, bad := YMM(), YMM(), YMM()
	VPBROADCASTD(cAbs, abs)
	VPBROADCASTD(cExpF32, exp)
	VPXOR(bad, bad, bad)
	Label(name + "_blk")
	v := make([]VecVirtual, 4)
	for c := range v {
		v[c] = YMM()
		VMOVUPS(Mem{Base: px, Disp: 32 * c}, v[c])
		t := YMM()
		VPAND(exp, v[c], t)
		VPCMPEQD(exp, t, t) // all exponent bits set: an infinity or a NaN
		VPOR(t, bad, bad)
	}
	m, h := YMM(), YMM()
	VANDPS(abs, v[0], m)
	for c := 1; c < 4; c++ {
		VANDPS(abs, v[c], h)
		VMAXPS(h, m, m)
	}
	d, id := amaxScales256(name, m, true)
	VMOVSS(d, Mem{Base: pd})
	idv := YMM()
	VBROADCASTSS(id, idv)
	for c := range v {
		VMULPS(idv, v[c], v[c])
		VCVTPS2DQ(v[c], v[c])
	}
	// c = 128·Σq (exact integers).
	sum := YMM()
	VPADDD(v[1], v[0], sum)
	VPADDD(v[2], sum, sum)
	VPADDD(v[3], sum, sum)
	sx := XMM()
	VEXTRACTI128(U8(1), sum, sx)
	VPADDD(sx, sum.AsX(), sum.AsX())
	VPSHUFD(U8(0x4E), sum.AsX(), sx)
	VPADDD(sx, sum.AsX(), sum.AsX())
	VPSHUFD(U8(0xB1), sum.AsX(), sx)
	VPADDD(sx, sum.AsX(), sum.AsX())
	s := GP32()
	VMOVD(sum.AsX(), s)
	SHLL(U8(7), s)
	MOVL(s, Mem{Base: pc})
	// The 32 int32 to int8 (|q| <= 127: no saturation), back in order.
	VPACKSSDW(v[1], v[0], v[0])
	VPACKSSDW(v[3], v[2], v[2])
	VPACKSSWB(v[2], v[0], v[0])
	ord := YMM()
	VMOVDQU(cPackOrd, ord)
	VPERMD(v[0], ord, v[0])
	VMOVDQU(v[0], Mem{Base: pq})
	q80rQuantNext(name, px, pq, pd, pc, inTile, nb)
	retFinite256(bad)
}

// amaxScales256 returns, in the low lane of two xmm, the scales of a block
// whose absolute values' lane maxima are in m: d = amax/127 (rounded to
// f16 and back if f16) and id = 127/amax, both 0 when amax is below q8Tiny
// (jumping past their computation to name_zero).
func amaxScales256(name string, m VecVirtual, f16 bool) (d, id VecVirtual) {
	hx := XMM()
	hfoldY(m, hx, VMAXPS, VMAXPS)
	d, id = XMM(), XMM()
	VXORPS(d, d, d)
	VXORPS(id, id, id)
	VUCOMISS(cTiny, m.AsX())
	JCS(LabelRef(name + "_zero"))
	VMOVSS(cF127, id)
	VDIVSS(m.AsX(), id, id) // 127/amax
	t := XMM()
	VDIVSS(cF127, m.AsX(), t) // amax/127
	if f16 {
		VCVTPS2PH(U8(0), t, t)
		VCVTPH2PS(t, t)
	}
	VMOVSS(t, d, d)
	Label(name + "_zero")
	return d, id
}

// retFinite512 returns whether no bit of the mask bad is set (no infinity
// or NaN was seen), after VZEROUPPER.
func retFinite512(bad Op) {
	KORTESTW(bad, bad)
	ok := GP8()
	SETEQ(ok)
	Store(ok, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// retFinite256 returns whether no lane of bad is set (no infinity or NaN
// was seen), after VZEROUPPER.
func retFinite256(bad VecVirtual) {
	ok := GP8()
	VPTEST(bad, bad)
	SETEQ(ok)
	Store(ok, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// genQ8Quant256 emits quantQ8K256, quantQ8K512 on AVX2 (the bytes of
// quantizeQ8KRef): per block of 256 values d = amax/127, q =
// round-to-nearest-even(x·(127/amax)), the int16 sums of q over 16 and 32
// values, zero padding. It returns false if x holds an infinity or a NaN
// (dst is then undefined). A block's 32 registers of input do not fit in
// the 16 ymm, so it reads them twice: once for amax, once to quantize.
func genQ8Quant256() {
	name := "quantQ8K256"
	TEXT(name, NOSPLIT, "func(x *float32, nblocks int, dst *byte) bool")
	Doc(name + " quantizes nblocks blocks of 256 values of x to 8 bits at dst on AVX2 (see genQ8Quant256).")
	Pragma("noescape")
	px := ld("x")
	nb := ld("nblocks")
	pd := ld("dst")
	abs, exp, bad, zero, b80 := YMM(), YMM(), YMM(), YMM(), YMM()
	VPBROADCASTD(cAbs, abs)
	VPBROADCASTD(cExpF32, exp)
	VPBROADCASTD(cB80, b80)
	VPXOR(bad, bad, bad)
	VPXOR(zero, zero, zero)
	ord := YMM()
	VMOVDQU(cPackOrd, ord)

	Label(name + "_blk")
	m := YMM()
	VXORPS(m, m, m)
	for g := 0; g < 32; g++ {
		v, t := YMM(), YMM()
		VMOVUPS(Mem{Base: px, Disp: 32 * g}, v)
		VPAND(exp, v, t)
		VPCMPEQD(exp, t, t)
		VPOR(t, bad, bad)
		VANDPS(abs, v, v)
		VMAXPS(v, m, m)
	}
	d, id := amaxScales256(name, m, false)
	VMOVUPS(d, Mem{Base: pd, Disp: q8xD}) // d, then zero padding
	idv := YMM()
	VBROADCASTSS(id, idv)
	for c := 0; c < 8; c++ {
		// Values 32c..32c+31: to int8, in order.
		v := make([]VecVirtual, 4)
		for k := range v {
			v[k] = YMM()
			VMULPS(Mem{Base: px, Disp: 128*c + 32*k}, idv, v[k])
			VCVTPS2DQ(v[k], v[k])
		}
		VPACKSSDW(v[1], v[0], v[0])
		VPACKSSDW(v[3], v[2], v[2])
		VPACKSSWB(v[2], v[0], v[0])
		VPERMD(v[0], ord, v[0])
		VMOVDQU(v[0], Mem{Base: pd, Disp: 32 * c})
		// Groups 2c and 2c+1: SAD of the biased bytes (q+128) per 8
		// bytes, pairs added, the bias (16·128) taken off.
		VPXOR(b80, v[0], v[0])
		VPSADBW(zero, v[0], v[0])
		s := YMM()
		VPSHUFD(U8(0x4E), v[0], s)
		VPADDQ(s, v[0], v[0])
		g0, g1 := GP32(), GP32()
		VMOVD(v[0].AsX(), g0)
		VEXTRACTI128(U8(1), v[0], s.AsX())
		VMOVD(s.AsX(), g1)
		SUBL(U32(2048), g0)
		SUBL(U32(2048), g1)
		MOVW(g0.As16(), Mem{Base: pd, Disp: q8xBsum16 + 4*c})
		MOVW(g1.As16(), Mem{Base: pd, Disp: q8xBsum16 + 4*c + 2})
		ADDL(g1, g0)
		MOVW(g0.As16(), Mem{Base: pd, Disp: q8xBsum32 + 2*c})
	}
	ADDQ(U32(1024), px)
	ADDQ(U32(q8xBlock), pd)
	DECQ(nb)
	JNZ(LabelRef(name + "_blk"))
	retFinite256(bad)
}

// ---- Q4_K packed in 16-row groups on AVX2: q4kx16AVX2N ----
//
// tensor.Q4Kx16's layout (see genQKx16), taken as two halves of 8 rows:
// bytes 32h.. of every 64-byte line hold rows 8h..8h+7, one dword lane per
// row. Per half, chunk c and word g, the nibbles of 8 rows are split
// (VPAND, VPSRLW+VPAND) and multiplied with the input's 4 bytes broadcast
// by VPMADDUBSW: the pair sums (at most 2·15·127) of the 8 words of a
// sub-block add up in int16 without overflow (at most 30480), and one
// VPMADDWD with the sub-block's scale in both halves of each dword gives
// sc·(the sub-block's Σ q·q_x) per lane. The mins are paired against the
// input's 32-value sums as in genQKx16. I and M are exact integers, so the
// block's float32 steps (q8BlockScalar's) give the bits of every other
// Q4_K kernel.

// q4kx16AVX2MaxN is the most input rows per q4kx16AVX2N and q5kx16AVX2N call: per input
// row the two halves' float32 sums, and within a half I, M and two int16
// sub-block sums, beside the nibble mask and three temporaries.
const q4kx16AVX2MaxN = 2

var (
	cQ4KDup [4]Mem // VPSHUFB: byte k of each dword to both its int16s (zero-extended)
	cB0FY   Mem    // 32 bytes 0x0F (a memory operand)
	cB10Y   Mem    // 32 bytes 0x10
)

func genQ4Kx16AVX2Consts() {
	for k := 0; k < 4; k++ {
		var v []uint32
		for p := 0; p < 8; p++ {
			b := uint32(4*(p%4) + k)
			v = append(v, 0x80008000|b|b<<16)
		}
		cQ4KDup[k] = data32(fmt.Sprintf("q4kdup_%d", k), v...)
	}
	cB0FY = data32("b0fy", rep(0x0F0F0F0F, 8)...)
	cB10Y = data32("b10y", rep(0x10101010, 8)...)
}

func genQ4Kx16AVX2(n int) { genQKx16AVX2(dQ4K, n) }

func genQ5Kx16AVX2(n int) { genQKx16AVX2(dQ5K, n) }

// genQKx16AVX2 emits q4kx16AVX2N<n> (d Q4_K) or q5kx16AVX2N<n> (Q5_K: the
// fifth bits merged as genQKx16 merges them; a pair sum is then at most
// 2·31·127, so four words' sums add in int16 and each sub-block is scaled
// twice; the nibble and fifth-bit masks are memory operands, to keep two
// input rows within the 16 registers).
func genQKx16AVX2(dt dtype, n int) {
	q5 := dt == dQ5K
	name := fmt.Sprintf("q4kx16AVX2N%d", n)
	blockBytes, prefetch, qs, span := q4kx16Block, q4kPrefetch, 256, 8
	if q5 {
		name = fmt.Sprintf("q5kx16AVX2N%d", n)
		blockBytes, prefetch, qs, span = q5kx16Block, q5kPrefetch, 768, 4
	}
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked %s weights with %d quantized input rows on AVX2 (see genQ4Kx16AVX2).", name, dt, n), n)
	Pragma("noescape")
	var c0F Op = cB0FY
	if !q5 {
		r := YMM()
		VPBROADCASTD(cB0F, r)
		c0F = r
	}
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, prefetch, blockBytes/64, true) // acc[2i+h]: input row i, weight rows 8h..8h+7
	for h := 0; h < 2; h++ {
		// The 8 rows' mins, one byte per sub-block in each dword lane (as
		// genQKx16 decodes them): m[0..3] = u1 & 0x3f, m[4..7] = (u2 >> 4)
		// | (u1 >> 6) << 4. The scales are decoded per chunk (q4kScales256),
		// which keeps the registers within AVX2's 16.
		mLo, t := YMM(), YMM()
		VMOVDQU(Mem{Base: wp, Disp: 128 + 32*h}, mLo)
		mHi := YMM()
		VPSRLD(U8(2), mLo, mHi)
		VPBROADCASTD(cB30, t)
		VPAND(t, mHi, mHi)
		VPBROADCASTD(cB3F, t)
		VPAND(t, mLo, mLo)
		shift256(VPSRLD, U8(4), Mem{Base: wp, Disp: 192 + 32*h}, t)
		VPAND(c0F, t, t)
		VPOR(t, mHi, mHi)
		// M_i = Σ_j m_j·(the input's sum over sub-block j).
		msum := make([]VecVirtual, n)
		for p := 0; p < 4; p++ {
			src := mLo
			if p >= 2 {
				src = mHi
			}
			mp := YMM()
			VPSHUFB(cQ4KPair[p%2], src, mp)
			for i := 0; i < n; i++ {
				xb := YMM()
				VPBROADCASTD(xm(i, q8xBsum32+4*p), xb)
				if p == 0 {
					msum[i] = YMM()
					VPMADDWD(xb, mp, msum[i])
					continue
				}
				VPMADDWD(xb, mp, xb)
				VPADDD(xb, msum[i], msum[i])
			}
		}
		isum := make([]VecVirtual, n)
		for c := 0; c < 4; c++ {
			dlo, dhi := make([]VecVirtual, n), make([]VecVirtual, n)
			for g := 0; g < 8; g++ {
				wm := Mem{Base: wp, Disp: qs + 512*c + 64*g + 32*h}
				var qh VecVirtual
				if q5 {
					qh = YMM()
					VMOVDQU(Mem{Base: wp, Disp: 256 + 64*g + 32*h}, qh)
				}
				// The word is loaded once for both nibble halves (VEX has no
				// shift of a memory operand: see shift256).
				w := YMM()
				VMOVDQU(wm, w)
				for k := 0; k < 2; k++ {
					// The low nibbles, then the high ones (one register at
					// a time, the high ones in w's), with their fifth bits
					// for Q5_K.
					q := w
					if k == 0 {
						q = YMM()
						VPAND(c0F, w, q)
					} else {
						VPSRLW(U8(4), w, w)
						VPAND(c0F, w, w)
					}
					if q5 {
						q5Bit256(qh, 2*c+k, q)
					}
					for i := 0; i < n; i++ {
						p := YMM()
						VPBROADCASTD(xm(i, 64*c+32*k+4*g), p)
						VPMADDUBSW(p, q, p)
						d := &dlo[i]
						if k == 1 {
							d = &dhi[i]
						}
						if g%span == 0 {
							*d = p
							continue
						}
						VPADDW(p, *d, *d)
					}
				}
				if g%span != span-1 {
					continue
				}
				// I += sc·(the int16 pair sums of span words).
				scs := q4kScales256(wp, h, c, c0F)
				for k := 0; k < 2; k++ {
					sc := YMM()
					VPSHUFB(cQ4KDup[(2*c+k)%4], scs, sc)
					for i := 0; i < n; i++ {
						d := dlo[i]
						if k == 1 {
							d = dhi[i]
						}
						maddAcc256(sc, d, &isum[i])
					}
				}
			}
		}
		// acc += float(I)·(d·d_x); acc −= float(M)·(dmin·d_x).
		dw, dmw := YMM(), YMM()
		VCVTPH2PS(Mem{Base: wp, Disp: 16 * h}, dw)
		VCVTPH2PS(Mem{Base: wp, Disp: 32 + 16*h}, dmw)
		for i := 0; i < n; i++ {
			scaleStep256(VADDPS, xm(i, q8xD), dw, isum[i], acc[2*i+h])
			scaleStep256(VSUBPS, xm(i, q8xD), dmw, msum[i], acc[2*i+h])
		}
	}
	packedNextBlock(name, blockBytes, wp, xq, cnt)
	packedEnd(name, acc)
}

// nibbleHalf256 sets q to the low (k 0) or high (k 1) nibbles of the bytes
// at wm, each in its byte; c0F holds 0x0F bytes (a register, or a memory
// operand that a first load then meets).
func nibbleHalf256(wm Mem, k int, c0F Op, q VecVirtual) {
	switch _, reg := c0F.(VecVirtual); {
	case k == 0 && reg:
		VPAND(wm, c0F, q)
	case k == 0:
		VMOVDQU(wm, q)
		VPAND(c0F, q, q)
	default:
		shift256(VPSRLW, U8(4), wm, q)
		VPAND(c0F, q, q)
	}
}

// maddAcc256 adds the int32 sums of VPMADDWD(s, d) to *acc, d clobbered
// (the first call sets *acc instead).
func maddAcc256(s, d VecVirtual, acc *VecVirtual) {
	if *acc == nil {
		*acc = YMM()
		VPMADDWD(s, d, *acc)
		return
	}
	VPMADDWD(s, d, d)
	VPADDD(d, *acc, *acc)
}

// q4kScales256 returns the 6-bit scales of sub-blocks 4(c/2)..4(c/2)+3 of
// the 8 rows of half h, one byte each per dword lane: u0 & 0x3f for chunks
// 0 and 1, (u2 & 0xf) | (u0 >> 6) << 4 for chunks 2 and 3.
func q4kScales256(wp GPVirtual, h, c int, c0F Op) VecVirtual {
	sc, t := YMM(), YMM()
	if c < 2 {
		VPBROADCASTD(cB3F, t)
		VPAND(Mem{Base: wp, Disp: 64 + 32*h}, t, sc)
		return sc
	}
	shift256(VPSRLD, U8(2), Mem{Base: wp, Disp: 64 + 32*h}, sc)
	VPBROADCASTD(cB30, t)
	VPAND(t, sc, sc)
	VMOVDQU(Mem{Base: wp, Disp: 192 + 32*h}, t)
	VPAND(c0F, t, t)
	VPOR(t, sc, sc)
	return sc
}

// q5Bit256 merges bit b of each byte of qh, moved to bit 4, into q.
func q5Bit256(qh VecVirtual, b int, q VecVirtual) {
	t := YMM()
	switch {
	case b < 4:
		VPSLLW(U8(4-b), qh, t)
	case b > 4:
		VPSRLW(U8(b-4), qh, t)
	default:
		VMOVDQA(qh, t)
	}
	VPAND(cB10Y, t, t)
	VPOR(t, q, q)
}

// scaleStep256 is scaleStep on ymm: acc = op(float32(isum)·(d·d_x), acc).
func scaleStep256(op func(...Op), dx Mem, d, isum, acc VecVirtual) {
	s, f := YMM(), YMM()
	VBROADCASTSS(dx, s)
	VMULPS(s, d, s)
	VCVTDQ2PS(isum, f)
	VMULPS(s, f, f)
	op(f, acc, acc)
}

// ---- Q4_0, Q5_0 and IQ4_NL rows as Q8_0 rows: conv<type>Q80 ----
//
// Each of these types keeps one f16 scale per 32 values and integer codes
// whose values fit int8 (q−8, q−16, the IQ4_NL codebook), so a block is a
// Q8_0 block exactly: the same d, the values as int8. conv<type>Q80(src,
// nblocks, dst) rewrites nblocks consecutive blocks (a row) as Q8_0 blocks,
// and the Q8_0 integer kernels then compute their products: the same bits
// at every level, since the converted rows are the same bytes. VEX
// encoded, so the AVX2 and AVX-512 levels share them.

var (
	cB08Y     Mem // 32 bytes 8
	cIQ4Y     Mem // the IQ4_NL codebook in both 16-byte lanes (VPSHUFB table)
	cMXY      Mem // MXFP4's codebook (E2M1 doubled) likewise
	cQ5Spread Mem // VPSHUFB: byte k of a broadcast dword to bytes 8k..8k+7 (lanes: bytes 0,1 | 2,3)
	cQ5Bits   Mem // bytes 1, 2, 4, ..., 128 repeated: the bit of each value in its byte
)

func genConvConsts() {
	cB08Y = data32("b08y", rep(0x08080808, 8)...)
	iq4 := []int{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
	var tab []uint32
	for l := 0; l < 2; l++ {
		for i := 0; i < 16; i += 4 {
			tab = append(tab, uint32(uint8(iq4[i]))|uint32(uint8(iq4[i+1]))<<8|uint32(uint8(iq4[i+2]))<<16|uint32(uint8(iq4[i+3]))<<24)
		}
	}
	cIQ4Y = data32("iq4y", tab...)
	tab = tab[:0]
	for l := 0; l < 2; l++ {
		for i := 0; i < 16; i += 4 {
			tab = append(tab, uint32(uint8(mxfp4Values[i]))|uint32(uint8(mxfp4Values[i+1]))<<8|uint32(uint8(mxfp4Values[i+2]))<<16|uint32(uint8(mxfp4Values[i+3]))<<24)
		}
	}
	cMXY = data32("mxfp4y", tab...)
	cQ5Spread = data32("q5spread", 0, 0, 0x01010101, 0x01010101, 0x02020202, 0x02020202, 0x03030303, 0x03030303)
	cQ5Bits = data32("q5bits", rep(0x08040201, 1)[0], 0x80402010, 0x08040201, 0x80402010, 0x08040201, 0x80402010, 0x08040201, 0x80402010)
}

// genConvQ80 emits conv<name>Q80 for Q4_0 ("Q40"), Q5_0 ("Q50") or IQ4_NL
// ("IQ4NL").
func genConvQ80(typ string) {
	name := "conv" + typ + "Q80"
	TEXT(name, NOSPLIT, "func(src *byte, nblocks int, dst *byte)")
	Doc(name + " rewrites nblocks blocks as Q8_0 blocks (see genConvQ80).")
	Pragma("noescape")
	sp := ld("src")
	nb := ld("nblocks")
	dp := ld("dst")
	bb, qs := 18, 2
	if typ == "Q50" {
		bb, qs = 22, 6
	}
	Label(name + "_blk")
	d := GP16()
	MOVW(Mem{Base: sp}, d)
	MOVW(d, Mem{Base: dp})
	lo, hi := XMM(), XMM()
	VMOVDQU(Mem{Base: sp, Disp: qs}, lo)
	VPSRLW(U8(4), lo, hi)
	v := YMM()
	VINSERTI128(U8(1), hi, lo.AsY(), v) // values 0..15 (low nibbles), 16..31 (high)
	VPAND(cB0FY, v, v)
	switch typ {
	case "Q40":
		VPSUBB(cB08Y, v, v)
	case "IQ4NL":
		tab := YMM()
		VMOVDQU(cIQ4Y, tab)
		VPSHUFB(v, tab, v)
	case "Q50":
		q5BitsY(Mem{Base: sp, Disp: 2}, v)
		VPSUBB(cB10Y, v, v) // q − 16
	default:
		panic(typ)
	}
	VMOVDQU(v, Mem{Base: dp, Disp: 2})
	ADDQ(U8(bb), sp)
	ADDQ(U8(34), dp)
	DECQ(nb)
	JNZ(LabelRef(name + "_blk"))
	VZEROUPPER()
	RET()
}

// q5BitsY adds the fifth bits of a 32-value block to its codes in q (byte l
// holding value l): bit l of the dword qh (Q5_0's or Q5_1's) becomes 16 in
// byte l (VPSHUFB spreads each qh byte over 8 bytes, VPAND and VPCMPEQB
// test each byte's bit).
func q5BitsY(qh Mem, q VecVirtual) {
	t, m := YMM(), YMM()
	VPBROADCASTD(qh, t)
	VPSHUFB(cQ5Spread, t, t)
	VMOVDQU(cQ5Bits, m)
	VPAND(m, t, t)
	VPCMPEQB(m, t, t)
	VPAND(cB10Y, t, t)
	VPOR(t, q, q)
}

// rows256Min8 emits q41rows256's and q51rows256's main loop: eight blocks
// of the row per step while eight are left (a tile holds two such steps),
// then on to the one-block loop (name_blk) for the rest, or to name_done.
// The eight blocks' int32 sums are reduced together (VPHADDD, then the
// lanes added), their d and m gathered, and the float32 steps of
// dotQ81Ref taken for the eight at once (lane = block); the eight results
// are then added to acc one by one in block order, so the bits are the
// one-block loop's.
func rows256Min8(wt q80W, name string, w0, xq, dc, bi, cnt GPVirtual, ones, acc VecVirtual) {
	bb := wt.blockBytes()
	qs := map[string]int{"Q41": 4, "Q51": 8}[wt.typ]
	Label(name + "_g8")
	CMPQ(cnt, U8(8))
	JL(LabelRef(name + "_tail"))
	var h [2]VecVirtual // blocks 0-3 and 4-7: [b0..b3 low lanes' sums | high lanes']
	for half := 0; half < 2; half++ {
		var pair [2]VecVirtual
		for k := 0; k < 4; k++ {
			b := 4*half + k
			q := YMM()
			nibblesY(Mem{Base: w0, Disp: b*bb + qs}, q)
			if wt.q5() {
				q5BitsY(Mem{Base: w0, Disp: b*bb + wt.qhOff()}, q)
			}
			VPMADDUBSW(Mem{Base: xq, Disp: 32 * b}, q, q)
			VPMADDWD(ones, q, q)
			if k%2 == 0 {
				pair[0] = q
				continue
			}
			p := YMM()
			VPHADDD(q, pair[0], p)
			if k == 1 {
				pair[1] = p
				continue
			}
			h[half] = YMM()
			VPHADDD(p, pair[1], h[half])
		}
	}
	sum, t := YMM(), YMM()
	VPERM2I128(U8(0x20), h[1], h[0], sum)
	VPERM2I128(U8(0x31), h[1], h[0], t)
	VPADDD(t, sum, sum) // lane b: block b's Σq·q_x
	// The eight blocks' d and m (the dwords d | m<<16 at each block's
	// start), as eight float32 each.
	// The index is a fixed register, Y15: QEMU 7.2's emulation takes a
	// VSIB index of Y4 for "no index" (every lane then reads the first
	// block's dword), and avo had picked Y4 here. CPUs gather correctly
	// from any index register; this keeps the kernels checkable under
	// emulation (scripts/avx2-emulated.sh).
	mask, idx, dm := YMM(), Y15, YMM()
	VMOVDQU(map[string]Mem{"Q41": cQ41Gath, "Q51": cQ51Gath}[wt.typ], idx)
	VPCMPEQD(mask, mask, mask)
	VPXOR(dm, dm, dm)
	VPGATHERDD(mask, Mem{Base: w0, Index: idx, Scale: 1}, dm)
	VPSHUFB(cQ41DM, dm, dm)
	VPERMQ(U8(0xD8), dm, dm) // qwords 0, 2, 1, 3: the 8 d, then the 8 m
	dw, mw, mx := YMM(), YMM(), XMM()
	VCVTPH2PS(dm.AsX(), dw)
	VEXTRACTI128(U8(1), dm, mx)
	VCVTPH2PS(mx, mw)
	// v = float(I)·(d_x·d_w) + (m·(1/128))·(float(C)·d_x), lane = block.
	f := YMM()
	VMULPS(Mem{Base: dc, Disp: q80rD}, dw, dw)
	VCVTDQ2PS(sum, f)
	VMULPS(dw, f, f)
	VMULPS(cF128, mw, mw)
	min81StepY(mw, Mem{Base: dc, Disp: q80rC}, Mem{Base: dc, Disp: q80rD}, f)
	// acc += v_0, ..., v_7 in order.
	e := XMM()
	for b := 0; b < 8; b++ {
		src := f.AsX()
		if b == 4 {
			VEXTRACTF128(U8(1), f, e)
		}
		if b >= 4 {
			src = e
		}
		if b%4 == 0 {
			VADDSS(src, acc, acc)
			continue
		}
		x := XMM()
		VPERMILPS(U8(b%4), src, x)
		VADDSS(x, acc, acc)
	}
	ADDQ(U32(8*bb), w0)
	q80Advance(xq, dc, bi, 8, name+"_g8next")
	SUBQ(U8(8), cnt)
	JMP(LabelRef(name + "_g8"))
	Label(name + "_tail")
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_done"))
}

// nibblesY sets q to the 32 codes of the 16 bytes of nibbles at m: values
// 0..15 (the low nibbles) in the low lane, 16..31 (the high) in the high.
func nibblesY(m Mem, q VecVirtual) {
	lo, hi := XMM(), XMM()
	VMOVDQU(m, lo)
	VPSRLW(U8(4), lo, hi)
	VINSERTI128(U8(1), hi, lo.AsY(), q)
	VPAND(cB0FY, q, q)
}

// min81StepY is min81Step on ymm: t += m128·(float32(c)·dx), c the
// input's 128·Σq_x (int32 lanes, a register or memory; clobbered when a
// register), dx its d_x, each step rounded on its own.
func min81StepY(m128 VecVirtual, c, dx Op, t VecVirtual) {
	sv := YMM()
	VCVTDQ2PS(c, sv)
	VMULPS(dx, sv, sv)
	VMULPS(sv, m128, sv)
	VADDPS(sv, t, t)
}

// shift256 emits op(imm, src, dst), an immediate shift (VPSRLW, VPSLLD,
// ...) in an AVX2 kernel. VEX has no immediate shift with a memory source:
// for one, Go's assembler silently picks the EVEX form, which AVX2-only
// CPUs fault on (TestAVX2KernelsHaveNoEVEX). So a memory source is loaded
// into dst first and shifted there.
func shift256(op func(...Op), imm U8, src Op, dst VecVirtual) {
	if m, ok := src.(Mem); ok {
		VMOVDQU(m, dst)
		op(imm, dst, dst)
		return
	}
	op(imm, src, dst)
}
