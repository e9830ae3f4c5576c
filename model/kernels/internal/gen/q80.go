package main

import (
	"fmt"
	"sort"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// Integer kernels for Q8_0 weights (AVX-512 VNNI); see q80act.go in package
// kernels for how the two kernels share the work and why they give the same
// bits.
//
// From 8 input rows: the lane-group kernel. Q8_0 keeps one scale per 32
// values, so a kernel that walks weight rows must turn every block's integer
// sum into float32 on its own (a horizontal reduction per row and block).
// q80dot512R instead puts 16 input rows in the 16 lanes of a register: the
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
// block, prepared by q80prep512) before one conversion, two multiplications
// and one addition per block per 16 input rows. Every lane is computed on its own, in the same order
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
		hmaxZ(m, h)
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
	retFinite512(bad)
}

// genQ80Prep emits q80prep512(w, wstride, nrows, nblocks, dst, dstride):
// for each of nrows Q8_0 weight rows (row r's output at dst + r·dstride) and
// each block b, the 8 bytes at 8b: −128·Σ q (int32: the bias the
// activations' +128 adds to a block sum) and d as float32. 16 blocks per
// step as in q80rows512 (the sums by VPDPBUSD of the biased weight bytes
// with ones, the same network), so the output is padded to whole tiles of
// 16 blocks.
func genQ80Prep() {
	name := "q80prep512"
	TEXT(name, NOSPLIT, "func(w *byte, wstride, nrows, nblocks int, dst *byte, dstride int)")
	Doc(name + " prepares the per-block sums and scales of Q8_0 weight rows for q80dot512R (see genQ80Prep).")
	gidx := ZMM()
	VMOVDQU64(cQ80Gath, gidx)
	zero := ZMM()
	VPXORD(zero, zero, zero)
	redIdx := ZMM()
	VMOVDQU64(cQ80RedIdx, redIdx)
	ones := ZMM()
	VPBROADCASTD(cQ80B01, ones)
	wr := ld("w")
	dr := ld("dst")
	Label(name + "_row")
	wb := GP64()
	MOVQ(wr, wb)
	dp := GP64()
	MOVQ(dr, dp)
	rem := ld("nblocks")
	Label(name + "_tile")
	emit := func(pfx string, partial bool) {
		sum, dw, _ := q80TileSums(q80W{typ: "Q80"}, pfx, partial, wb, rem, func(int) Op { return ones }, gidx, zero, redIdx)
		// ws = −128·(S − 32·128), S the sum of the biased bytes.
		VPSLLD(U8(7), sum, sum)
		c := ZMM()
		VPBROADCASTD(cQ80D524288, c)
		VPSUBD(sum, c, sum)
		lo, hi := ZMM(), ZMM()
		VMOVDQU64(cQ80Zip[0], lo)
		VPERMI2D(dw, sum, lo)
		VMOVDQU64(cQ80Zip[1], hi)
		VPERMI2D(dw, sum, hi)
		VMOVDQU64(lo, Mem{Base: dp})
		VMOVDQU64(hi, Mem{Base: dp, Disp: 64})
	}
	CMPQ(rem, U8(16))
	JL(LabelRef(name + "_part"))
	emit(name+"_f", false)
	JMP(LabelRef(name + "_next"))
	Label(name + "_part")
	emit(name+"_p", true)
	Label(name + "_next")
	ADDQ(U32(16*34), wb)
	ADDQ(U32(128), dp)
	SUBQ(U8(16), rem)
	JG(LabelRef(name + "_tile"))
	ADDQ(paddr("wstride"), wr)
	ADDQ(paddr("dstride"), dr)
	DECQ(paddr("nrows"))
	JNZ(LabelRef(name + "_row"))
	VZEROUPPER()
	RET()
}

// genQ80Dot emits q80dot512R<R>(w, wstride, xg, nblocks, ws, wd, out): for
// the R Q8_0 weight rows at w (wstride bytes apart) and the 16 input rows of
// the quantized group xg, out[16r+i] = Σ_b float(Σ_k q_w·q_x)·(d_x·d_w),
// each product rounded, added over the blocks in order (the order
// q80rows512 keeps too); ws and wd are q80prep512's (nrows = R).
func genQ80Dot(R int) {
	name := fmt.Sprintf("q80dot512R%d", R)
	TEXT(name, NOSPLIT, "func(w *byte, wstride int, xg *byte, nblocks int, prep *byte, pstride int, out *float32)")
	Doc(fmt.Sprintf("%s multiplies %d Q8_0 weight rows with a group of 16 quantized input rows (see genQ80Dot).", name, R))
	rows := stridedPtrs(ld("w"), ld("wstride"), R)
	xg := ld("xg")
	cnt := ld("nblocks")
	// Row r's prepared block at pa + r·P (r < 3) or pb + (r−3)·P.
	pa := ld("prep")
	ps := ld("pstride")
	pb := GP64()
	LEAQ(Mem{Base: ps, Index: ps, Scale: 2}, pb)
	ADDQ(pa, pb)
	pm := func(r, disp int) Mem {
		base := pa
		if r >= 3 {
			base, r = pb, r-3
		}
		if r == 0 {
			return Mem{Base: base, Disp: disp}
		}
		return Mem{Base: base, Index: ps, Scale: uint8(r), Disp: disp}
	}
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
		VPBROADCASTD(pm(r, 0), is)
		for j := 0; j < 8; j++ {
			VPDPBUSD_BCST(Mem{Base: rows[r], Index: off, Scale: 1, Disp: 2 + 4*j}, x[j], is)
		}
		f, s := ZMM(), ZMM()
		VCVTDQ2PS(is, f)
		VMULPS_BCST(pm(r, 4), dx, s)
		VMULPS(s, f, f)
		VADDPS(f, acc[r], acc[r])
	}
	ADDQ(U8(34), off)
	ADDQ(U32(q80xBlock), xg)
	ADDQ(U8(8), pa)
	ADDQ(U8(8), pb)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
	op := ld("out")
	for r := 0; r < R; r++ {
		VMOVUPS(acc[r], Mem{Base: op, Disp: 64 * r})
	}
	VZEROUPPER()
	RET()
}

// ---- one input row at a time (decode): q80rows512 ----
//
// The quantized input row, per tile of 16 blocks (q80rTile bytes, the last
// tile zero-padded):
//
//	[0, 512)    q: int8, 32 per block
//	[512, 576)  d_x per block (float32, rounded to f16)
//	[576, 640)  128·Σ q_x per block (int32)
// For groups of 16 weight rows, q80rows512 first walks
// each row on its own (one sequential stream), 16 blocks per step: two
// blocks per register, the weight bytes made unsigned (q_w+128) for
// VPDPBUSD with the activations, the 8 partial sums of each block added by
// an unpack/shuffle network into one lane per block, 128·Σq_x taken off (exact
// block sums again), then t_b = float(sum)·(d_x·d_w) per block, stored. It
// then transposes the rows' t in 16×16 tiles (lane = weight row) and adds
// them block by block in order: the same values, rounded the same way and
// added in the same order as q80dot512R computes in its lanes.

const (
	q80rTile = 640
	q80rD    = 512
	q80rC    = 576
)

var (
	cQ80RedIdx  Mem     // VPERMD indices: the block sums back in block order (q80Reduce)
	cQ80Gath    Mem     // dwords 34·l: the blocks' d offsets in a tile
	cQ40Gath    Mem     // dwords 18·l: the same for Q4_0 and IQ4_NL
	cMXGath     Mem     // dwords 17·l: MXFP4's E8M0 byte (and 3 code bytes) of block l
	cQ50Gath    Mem     // dwords 22·l: the same for Q5_0
	cQ41Gath    Mem     // dwords 20·l: the same for Q4_1
	cQ51Gath    Mem     // dwords 24·l: the same for Q5_1
	cF128       Mem     // float32 1/128 in 8 dwords (Q4_1's and Q5_1's m/128)
	cQ50Spread  Mem     // VPSHUFB: byte k of lane L from byte 2(L%2)+k/8 of the lane's dword 0
	cQ50Bit     Mem     // bytes 1<<(k%8) for byte k of each 16-byte lane
	cQ40Shift   Mem     // words: 0 (lanes 0, 2), 4 (lanes 1, 3): VPSRLVW to the high nibbles
	cQ80B01     Mem     // dword 0x01010101
	cQ80D524288 Mem     // dword 524288 = 32·128·128
	cQ80Zip     [2]Mem  // VPERMI2D indices interleaving two registers' dwords
	q80TrMap    [16]int // q80TransposeOps: output register of block b
	q80TrOnce   bool
)

// q80Reduce simulates the network that adds the 8 partial sums of each of
// 16 blocks (register p: blocks 2p and 2p+1, 8 lanes each) into one
// register: three stages of pairs (unpack dwords, unpack qwords, 128-bit
// lane shuffles 0x88/0xDD, as in q80TrStages), each pair's two results
// added. It returns, for each lane of the result, the block whose 8
// partials it holds (checked), and for each block its lane.
func q80Reduce() (blockOf, laneOf [16]int) {
	type el = [2]int // (block, partial)
	regs := make([][16]el, 8)
	for p := range regs {
		for l := 0; l < 16; l++ {
			regs[p][l] = el{2*p + l/8, l % 8}
		}
	}
	// Each lane's set of (block, partial): a bit mask of partials per block.
	type sum struct {
		blk  int
		mask int
	}
	cur := make([][16]sum, 8)
	for p := range regs {
		for l := 0; l < 16; l++ {
			cur[p][l] = sum{regs[p][l][0], 1 << regs[p][l][1]}
		}
	}
	lo, hi := q80TrStages()
	for s := 0; s < 3; s++ {
		var next [][16]sum
		for i := 0; i < len(cur); i += 2 {
			// Simulate on indices, then merge the sums lane by lane.
			var a, b [16][2]int
			for l := 0; l < 16; l++ {
				a[l] = [2]int{0, l}
				b[l] = [2]int{1, l}
			}
			ls, hs := lo[s](a, b), hi[s](a, b)
			var out [16]sum
			for l := 0; l < 16; l++ {
				x := cur[i+ls[l][0]][ls[l][1]]
				y := cur[i+hs[l][0]][hs[l][1]]
				if x.blk != y.blk || x.mask&y.mask != 0 {
					panic(fmt.Sprintf("q80Reduce: stage %d lane %d adds %v and %v", s, l, x, y))
				}
				out[l] = sum{x.blk, x.mask | y.mask}
			}
			next = append(next, out)
		}
		cur = next
	}
	for l := 0; l < 16; l++ {
		if cur[0][l].mask != 0xFF {
			panic("q80Reduce: a lane misses partials")
		}
		blockOf[l] = cur[0][l].blk
		laneOf[cur[0][l].blk] = l
	}
	return
}

// q80TransposeOps simulates the unpack/shuffle transpose of 16 registers
// (register r: row r, lane b: block b) and returns, for each block, the
// output register holding it with lane r = row r (checked).
func q80TransposeOps() [16]int {
	type reg [16][2]int // (row, block) per lane
	in := make([]reg, 16)
	for r := range in {
		for b := 0; b < 16; b++ {
			in[r][b] = [2]int{r, b}
		}
	}
	lo, hi := q80TrStages()
	cur := in
	for s := 0; s < 4; s++ {
		next := make([]reg, 16)
		for _, pr := range q80TrPairs(s) {
			a, b := cur[pr[0]], cur[pr[1]]
			next[pr[0]] = lo[s](a, b)
			next[pr[1]] = hi[s](a, b)
		}
		cur = next
	}
	var m [16]int
	for i := range m {
		m[i] = -1
	}
	for o, r := range cur {
		blk := r[0][1]
		for l := 0; l < 16; l++ {
			if r[l] != [2]int{l, blk} {
				panic(fmt.Sprintf("q80TransposeOps: register %d lane %d holds %v", o, l, r[l]))
			}
		}
		m[blk] = o
	}
	return m
}

// q80TrPairs: the register pairs of transpose stage s (outputs replace them).
func q80TrPairs(s int) [][2]int {
	var ps [][2]int
	step := []int{1, 2, 4, 8}[s]
	for a := 0; a < 16; a++ {
		if a&step == 0 {
			ps = append(ps, [2]int{a, a | step})
		}
	}
	return ps
}

// q80TrStages: the lane semantics of the four stages (simulation), in the
// order q80TransposeEmit emits them: unpack dwords, unpack qwords, then
// 128-bit lane shuffles 0x88/0xDD twice.
func q80TrStages() (lo, hi [4]func(a, b [16][2]int) [16][2]int) {
	unpack := func(size, half int) func(a, b [16][2]int) [16][2]int {
		return func(a, b [16][2]int) (o [16][2]int) {
			for lane := 0; lane < 4; lane++ {
				base := 4 * lane
				per := 4 / size // elements of `size` dwords per 128-bit lane
				for e := 0; e < per/2; e++ {
					src := per/2*half + e
					for d := 0; d < size; d++ {
						o[base+(2*e)*size+d] = a[base+src*size+d]
						o[base+(2*e+1)*size+d] = b[base+src*size+d]
					}
				}
			}
			return o
		}
	}
	shuf := func(imm int) func(a, b [16][2]int) [16][2]int {
		return func(a, b [16][2]int) (o [16][2]int) {
			for q := 0; q < 4; q++ {
				sel := imm >> (2 * q) & 3
				src := a
				if q >= 2 {
					src = b
				}
				copy(o[4*q:4*q+4], src[4*sel:4*sel+4])
			}
			return o
		}
	}
	lo = [4]func(a, b [16][2]int) [16][2]int{unpack(1, 0), unpack(2, 0), shuf(0x88), shuf(0x88)}
	hi = [4]func(a, b [16][2]int) [16][2]int{unpack(1, 1), unpack(2, 1), shuf(0xDD), shuf(0xDD)}
	return
}

// q80TransposeEmit emits the transpose q80TransposeOps simulates.
func q80TransposeEmit(in []VecVirtual) []VecVirtual {
	cur := in
	for s := 0; s < 4; s++ {
		next := make([]VecVirtual, 16)
		for _, pr := range q80TrPairs(s) {
			a, b := cur[pr[0]], cur[pr[1]]
			l, h := ZMM(), ZMM()
			switch s {
			case 0:
				VPUNPCKLDQ(b, a, l)
				VPUNPCKHDQ(b, a, h)
			case 1:
				VPUNPCKLQDQ(b, a, l)
				VPUNPCKHQDQ(b, a, h)
			default:
				VSHUFI32X4(U8(0x88), b, a, l)
				VSHUFI32X4(U8(0xDD), b, a, h)
			}
			next[pr[0]], next[pr[1]] = l, h
		}
		cur = next
	}
	return cur
}

func genQ80RowsConsts() {
	_, laneOf := q80Reduce()
	var v []uint32
	for b := 0; b < 16; b++ {
		v = append(v, uint32(laneOf[b]))
	}
	cQ80RedIdx = data32("q80redidx", v...)
	var g []uint32
	for l := 0; l < 16; l++ {
		g = append(g, uint32(34*l))
	}
	cQ80Gath = data32("q80gath", g...)
	var g18, sh []uint32
	for l := 0; l < 16; l++ {
		g18 = append(g18, uint32(18*l))
		sh = append(sh, uint32(l/4%2*0x00040004))
	}
	cQ40Gath = data32("q40gath", g18...)
	var g22, spread, bit []uint32
	for l := 0; l < 16; l++ {
		g22 = append(g22, uint32(22*l))
	}
	cQ50Gath = data32("q50gath", g22...)
	var g20, g24 []uint32
	for l := 0; l < 16; l++ {
		g20 = append(g20, uint32(20*l))
		g24 = append(g24, uint32(24*l))
	}
	cQ41Gath = data32("q41gath", g20...)
	cQ51Gath = data32("q51gath", g24...)
	var g17 []uint32
	for l := 0; l < 16; l++ {
		g17 = append(g17, uint32(17*l))
	}
	cMXGath = data32("mxfp4gath", g17...)
	cF128 = data32("f128", rep(0x3C000000, 8)...)
	for L := 0; L < 4; L++ {
		for w := 0; w < 4; w++ { // dword w of lane L: bytes 4w..4w+3
			var v uint32
			for b := 0; b < 4; b++ {
				k := 4*w + b
				v |= uint32(2*(L%2)+k/8) << (8 * b)
			}
			spread = append(spread, v)
			bit = append(bit, 0x08040201<<(4*(w%2)))
		}
	}
	cQ50Spread = data32("q50spread", spread...)
	cQ50Bit = data32("q50bit", bit...)
	cQ40Shift = data32("q40shift", sh...)
	cQ80B01 = data32("q80b01", 0x01010101)
	cQ80D524288 = data32("q80d524288", 524288)
	for h := 0; h < 2; h++ {
		var z []uint32
		for l := 0; l < 8; l++ {
			z = append(z, uint32(8*h+l), uint32(16+8*h+l))
		}
		cQ80Zip[h] = data32(fmt.Sprintf("q80zip%d", h), z...)
	}
	q80TrMap = q80TransposeOps()
}

// genQ80QuantRow emits quantQ80R512(x, nblocks, dst) bool: one input row
// quantized as in genQ80Quant (the same q and d per block), in q80rows512's
// tiles (c = 128·Σq per block); the padding of the last tile is left as it
// is. False if x holds an infinity or a NaN.
func genQ80QuantRow() {
	name := "quantQ80R512"
	TEXT(name, NOSPLIT, "func(x *float32, nblocks int, dst *byte) bool")
	Doc(name + " quantizes one input row for q80rows512 (see genQ80QuantRow).")
	px := ld("x")
	nb := ld("nblocks")
	pq := ld("dst")
	pd := GP64()
	LEAQ(Mem{Base: pq, Disp: q80rD}, pd)
	pc := GP64()
	LEAQ(Mem{Base: pq, Disp: q80rC}, pc)
	inTile := GP64()
	MOVQ(U32(16), inTile)
	abs := ZMM()
	VPBROADCASTD(cAbs, abs)
	bad := K()
	KXORW(bad, bad, bad)
	Label(name + "_blk")
	v0, v1 := ZMM(), ZMM()
	VMOVUPS(Mem{Base: px}, v0)
	VMOVUPS(Mem{Base: px, Disp: 64}, v1)
	for _, v := range []VecVirtual{v0, v1} {
		k := K()
		VFPCLASSPSZ(U8(0x99), v, k)
		KORW(k, bad, bad)
	}
	m, h := ZMM(), ZMM()
	VANDPS(abs, v0, m)
	VANDPS(abs, v1, h)
	VMAXPS(h, m, m)
	hmaxZ(m, h)
	d, id := ZMM(), ZMM()
	VXORPS(d, d, d)
	VXORPS(id, id, id)
	VUCOMISS(cTiny, m.AsX())
	JCS(LabelRef(name + "_zero"))
	VMOVSS(cF127, id.AsX())
	VDIVSS(m.AsX(), id.AsX(), id.AsX())
	t := ZMM()
	VDIVSS(cF127, m.AsX(), t.AsX())
	VCVTPS2PH(U8(0), t.AsX(), t.AsX())
	VCVTPH2PS(t.AsX(), t.AsX())
	VMOVSS(t.AsX(), d.AsX(), d.AsX())
	Label(name + "_zero")
	VMOVSS(d.AsX(), Mem{Base: pd})
	VBROADCASTSS(id.AsX(), id)
	for c, v := range []VecVirtual{v0, v1} {
		VMULPS(id, v, v)
		VCVTPS2DQ(v, v)
		VPMOVSDB(v, Mem{Base: pq, Disp: 16 * c})
	}
	// c = 128·Σq (the integers are exact; the sum order does not matter).
	VPADDD(v1, v0, v0)
	hsumD(v0, h)
	s := GP32()
	VMOVD(v0.AsX(), s)
	SHLL(U8(7), s)
	MOVL(s, Mem{Base: pc})
	q80rQuantNext(name, px, pq, pd, pc, inTile, nb)
	retFinite512(bad)
}

// q80rQuantNext moves a row quantizer on by a block of 32 values: x by 128
// bytes, q, d and c by one entry of the tile, into the next tile after 16
// blocks (inTile counting down); then loops to name_blk while nb blocks are
// left.
func q80rQuantNext(name string, px, pq, pd, pc, inTile, nb GPVirtual) {
	ADDQ(U8(128), px)
	ADDQ(U8(32), pq)
	ADDQ(U8(4), pd)
	ADDQ(U8(4), pc)
	DECQ(inTile)
	JNZ(LabelRef(name + "_same"))
	// Next tile: q continues past this tile's d and c.
	ADDQ(U8(q80rTile-512), pq)
	ADDQ(U32(q80rTile-64), pd)
	ADDQ(U32(q80rTile-64), pc)
	MOVQ(U32(16), inTile)
	Label(name + "_same")
	DECQ(nb)
	JNZ(LabelRef(name + "_blk"))
}

// hsumD adds the 16 int32 lanes of a into its lowest lane (h: scratch).
func hsumD(a, h Vec) {
	VEXTRACTI64X4(U8(1), a.AsZ(), h.AsY())
	VPADDD(h.AsY(), a.AsY(), a.AsY())
	VEXTRACTI32X4(U8(1), a.AsY(), h.AsX())
	VPADDD(h.AsX(), a.AsX(), a.AsX())
	VPSHUFD(U8(0x4E), a.AsX(), h.AsX())
	VPADDD(h.AsX(), a.AsX(), a.AsX())
	VPSHUFD(U8(0xB1), a.AsX(), h.AsX())
	VPADDD(h.AsX(), a.AsX(), a.AsX())
}

// genQ80Rows emits q80rows512(w, wstride, nrows, xq, nblocks, tmp, out): out[r] = Σ_b t_b for r < nrows (see above); tmp holds 16 rows of
// ceil(nblocks/16)·16 float32.
func genQ80Rows() { genRows512(q80W{typ: "Q80"}) }

// q80W is the weight type of q80rows512's tiles: "Q80" (Q8_0), or "Q40"
// and "IQ4NL" (q40rows512, iq4nlrows512: row-major Q4_0 and IQ4_NL rows,
// whose nibbles are widened in registers to the unsigned codes of their
// packed kernels, q or codebook value + 128, so that no row is rewritten
// as Q8_0 for a product with few input rows; the sums and float32 steps
// are the Q8_0 rewrite's, and so are the bits).
//
// "Q41" and "Q51" (q41rows512, q51rows512: row-major Q4_1 and Q5_1 rows)
// take the same steps on their unsigned codes (Q5_1's fifth bits merged as
// Q5_0's), with nothing taken off the sums, and add the min's share
// (min81Step): there is no Q8_0 rewrite of them, and their float32 steps
// are their own (dotQ81Ref).
type q80W struct {
	typ        string
	tab, shift VecVirtual // IQ4_NL's codebook + 128; the nibble shifts of a block pair
	c10        VecVirtual // Q5_0: 0x10 bytes (the fifth bit)
	e8         VecVirtual // MXFP4: float32 1 (e8m0Half's base)
}

// blockBytes is the size of a block of the type.
func (w q80W) blockBytes() int {
	return map[string]int{"Q80": 34, "Q40": 18, "IQ4NL": 18, "Q50": 22, "Q41": 20, "Q51": 24, "MXFP4": 17}[w.typ]
}

// q5 reports whether the type has fifth bits (Q5_0, Q5_1).
func (w q80W) q5() bool { return w.typ == "Q50" || w.typ == "Q51" }

// hasMin reports whether the type's blocks have a min (Q4_1, Q5_1).
func (w q80W) hasMin() bool { return w.typ == "Q41" || w.typ == "Q51" }

// qhOff is the offset of the fifth bits in a block (q5 types).
func (w q80W) qhOff() int {
	if w.typ == "Q51" {
		return 4
	}
	return 2
}

// genQ40Rows emits q40rows512 (typ "Q40"), iq4nlrows512 ("IQ4NL") or
// q50rows512 ("Q50": the fifth bits of each block pair spread to bit 4 of
// their bytes by VPSHUFB and VPTESTMB, added under the mask).
func genQ40Rows(typ string) { genRows512(q80W{typ: typ}) }

var rowsNames = map[string]string{"Q80": "q80rows", "Q40": "q40rows", "IQ4NL": "iq4nlrows", "Q50": "q50rows", "Q41": "q41rows", "Q51": "q51rows", "MXFP4": "mxfp4rows"}

var typNames = map[string]string{"Q80": "Q8_0", "Q40": "Q4_0", "Q50": "Q5_0", "IQ4NL": "IQ4_NL", "Q41": "Q4_1", "Q51": "Q5_1", "MXFP4": "MXFP4"}

func genRows512(wt q80W) {
	name := rowsNames[wt.typ] + "512"
	TEXT(name, NOSPLIT, "func(w *byte, wstride, nrows int, xq *byte, nblocks int, tmp *float32, out *float32)")
	Doc(fmt.Sprintf("%s multiplies %s weight rows with one quantized input row, 16 rows at a time (see genQ80Rows).", name, typNames[wt.typ]))
	gidx := ZMM()
	if wt.typ == "Q80" {
		VMOVDQU64(cQ80Gath, gidx)
	} else {
		Pragma("noescape")
		VMOVDQU64(map[string]Mem{"Q40": cQ40Gath, "IQ4NL": cQ40Gath, "Q50": cQ50Gath, "Q41": cQ41Gath, "Q51": cQ51Gath, "MXFP4": cMXGath}[wt.typ], gidx)
		if wt.q5() {
			wt.c10 = ZMM()
			VPBROADCASTD(cB10, wt.c10)
		}
		wt.shift = ZMM()
		VMOVDQU64(cQ40Shift, wt.shift)
		switch wt.typ {
		case "IQ4NL":
			wt.tab = ZMM()
			VMOVDQU64(cIQ4U, wt.tab)
		case "MXFP4":
			wt.tab = ZMM()
			VMOVDQU64(cMXU, wt.tab)
			wt.e8 = ZMM()
			VPBROADCASTD(cF1, wt.e8)
		}
	}
	// Registers are zeroed by copying zero (avo would take a zeroing XOR for
	// a read and keep the register live from the function's start).
	zero := ZMM()
	VPXORD(zero, zero, zero)
	redIdx := ZMM()
	VMOVDQU64(cQ80RedIdx, redIdx)
	tstride := GP64() // bytes per tmp row: 64 per tile
	Load(Param("nblocks"), tstride)
	ADDQ(U8(15), tstride)
	ANDQ(I8(-16), tstride)
	SHLQ(U8(2), tstride)

	Label(name + "_grp")
	// Rows in this group: g = min(16, nrows).
	g := GP64()
	Load(Param("nrows"), g)
	CMPQ(g, U8(16))
	JLE(LabelRef(name + "_g"))
	MOVQ(U32(16), g)
	Label(name + "_g")

	// Phase 1: each row's t, 16 blocks per step.
	wr := ld("w")
	tr := ld("tmp")
	Label(name + "_row")
	{
		wb := GP64()
		MOVQ(wr, wb)
		xq := ld("xq")
		tp := GP64()
		MOVQ(tr, tp)
		rem := ld("nblocks")
		Label(name + "_tile")
		CMPQ(rem, U8(16))
		JL(LabelRef(name + "_part"))
		q80RowTile(wt, name+"_f", false, wb, xq, tp, rem, gidx, zero, redIdx)
		JMP(LabelRef(name + "_next"))
		Label(name + "_part")
		q80RowTile(wt, name+"_p", true, wb, xq, tp, rem, gidx, zero, redIdx)
		Label(name + "_next")
		ADDQ(U32(16*wt.blockBytes()), wb)
		ADDQ(U32(q80rTile), xq)
		ADDQ(U8(64), tp)
		SUBQ(U8(16), rem)
		JG(LabelRef(name + "_tile"))
	}
	ADDQ(paddr("wstride"), wr)
	ADDQ(tstride, tr)
	DECQ(g)
	JNZ(LabelRef(name + "_row"))

	// Phase 2: lane = row; the tiles' 16 blocks added in order.
	acc := ZMM()
	VMOVDQA64(zero, acc)
	tb := ld("tmp")
	tc := GP64()
	MOVQ(tstride, tc)
	SHRQ(U8(6), tc)
	t3 := GP64()
	LEAQ(Mem{Base: tstride, Index: tstride, Scale: 2}, t3)
	Label(name + "_tr")
	{
		rowp := GP64()
		MOVQ(tb, rowp)
		in := make([]VecVirtual, 16)
		for r := 0; r < 16; r++ {
			in[r] = ZMM()
			switch r % 4 {
			case 0:
				VMOVUPS(Mem{Base: rowp}, in[r])
			case 1:
				VMOVUPS(Mem{Base: rowp, Index: tstride, Scale: 1}, in[r])
			case 2:
				VMOVUPS(Mem{Base: rowp, Index: tstride, Scale: 2}, in[r])
			case 3:
				VMOVUPS(Mem{Base: rowp, Index: t3, Scale: 1}, in[r])
				if r < 15 {
					LEAQ(Mem{Base: rowp, Index: tstride, Scale: 4}, rowp)
				}
			}
		}
		outs := q80TransposeEmit(in)
		for b := 0; b < 16; b++ {
			VADDPS(outs[q80TrMap[b]], acc, acc)
		}
	}
	ADDQ(U8(64), tb)
	DECQ(tc)
	JNZ(LabelRef(name + "_tr"))
	// Store the group's min(16, nrows) results.
	gl := GP32()
	Load(Param("nrows"), gl.As64())
	CMPQ(gl.As64(), U8(16))
	JLE(LabelRef(name + "_g2"))
	MOVL(U32(16), gl)
	Label(name + "_g2")
	m := GP32()
	MOVL(U32(0xFFFF), m)
	BZHIL(gl, m, m)
	k := K()
	KMOVW(m, k)
	op := ld("out")
	VMOVUPS(acc, k, Mem{Base: op})

	// Next group.
	ADDQ(U8(64), op)
	Store(op, Param("out"))
	st := ld("wstride")
	SHLQ(U8(4), st)
	ADDQ(st, paddr("w"))
	SUBQ(U8(16), paddr("nrows"))
	JG(LabelRef(name + "_grp"))
	VZEROUPPER()
	RET()
}

// q80RowTile emits one step of q80rows512's phase 1: the 16 blocks at wb
// (partial: only the first rem exist) → tmp at tp.
func q80RowTile(wt q80W, pfx string, partial bool, wb, xq, tp, rem GPVirtual, gidx, zero, redIdx VecVirtual) {
	sum, dw, mw := q80TileSums(wt, pfx, partial, wb, rem, func(i int) Op { return Mem{Base: xq, Disp: 64 * i} }, gidx, zero, redIdx)
	if wt.hasMin() {
		// Σq·q_x as it is (unsigned codes), then the min's share.
		f := ZMM()
		VCVTDQ2PS(sum, f)
		VMULPS(Mem{Base: xq, Disp: q80rD}, dw, dw) // d_x·d_w
		VMULPS(dw, f, f)
		minScale(mw)
		min81Step(mw, Mem{Base: xq, Disp: q80rC}, Mem{Base: xq, Disp: q80rD}, f, false)
		VMOVUPS(f, Mem{Base: tp})
		return
	}
	if wt.typ == "Q40" || wt.typ == "Q50" {
		c := ZMM()
		VMOVDQU64(Mem{Base: xq, Disp: q80rC}, c)
		if wt.typ == "Q40" {
			VPSRAD(U8(4), c, c) // 8·Σq_x
		} else {
			VPSRAD(U8(3), c, c) // 16·Σq_x
		}
		VPSUBD(c, sum, sum)
	} else {
		VPSUBD(Mem{Base: xq, Disp: q80rC}, sum, sum)
	}
	f := ZMM()
	VCVTDQ2PS(sum, f)
	VMULPS(Mem{Base: xq, Disp: q80rD}, dw, dw) // d_x·d_w
	VMULPS(dw, f, f)
	VMOVUPS(f, Mem{Base: tp})
}

// min81Step adds the min's share of Q4_1 and Q5_1 blocks to t (a register
// of per-block or per-row terms, as the kernel's lanes go):
//
//	s = float32(128·Σq_x)·d_x; u = (m·(1/128))·s; t += u
//
// each step rounded to float32 (dotQ81Ref's). m128 is the blocks' m·(1/128)
// as float32 (minScale); c and dx are the input's 128·Σq_x and d_x, one per
// lane, or one broadcast to every lane with bcast.
func min81Step(m128 VecVirtual, c, dx Mem, t VecVirtual, bcast bool) {
	sv := ZMM()
	if bcast {
		VPBROADCASTD(c, sv)
		VCVTDQ2PS(sv, sv)
		VMULPS_BCST(dx, sv, sv)
	} else {
		VCVTDQ2PS(c, sv)
		VMULPS(dx, sv, sv)
	}
	VMULPS(sv, m128, sv)
	VADDPS(sv, t, t)
}

// minScale multiplies m by 1/128 in place (exact: a power of two).
func minScale(m VecVirtual) { VMULPS_BCST(cF128, m, m) }

// q40PairCodes sets wv to the unsigned codes of Q4_0 or IQ4_NL blocks 2i
// and 2i+1 at wb (zeros for 2i+1 past rem when partial), in the order of
// their values: [low nibbles of 2i, high nibbles of 2i, the same of 2i+1].
func q40PairCodes(wt q80W, partial bool, pfx string, i int, wb, rem GPVirtual, zero, wv VecVirtual) {
	bb := wt.blockBytes()
	qs := map[string]int{"Q40": 2, "IQ4NL": 2, "Q50": 6, "Q41": 4, "Q51": 8, "MXFP4": 1}[wt.typ] // the nibbles' offset in a block
	var qh VecVirtual
	if wt.q5() {
		// The fifth bits: block 2i's qh dword in lanes 0-1, 2i+1's in 2-3.
		qh = ZMM()
		VPBROADCASTD(Mem{Base: wb, Disp: 2*bb*i + wt.qhOff()}, qh)
	}
	VBROADCASTI32X4(Mem{Base: wb, Disp: 2*bb*i + qs}, wv)
	second := func() {
		VINSERTI32X4(U8(2), Mem{Base: wb, Disp: 2*bb*i + bb + qs}, wv, wv)
		VINSERTI32X4(U8(3), Mem{Base: wb, Disp: 2*bb*i + bb + qs}, wv, wv)
		if qh != nil {
			t := ZMM()
			VPBROADCASTD(Mem{Base: wb, Disp: 2*bb*i + bb + wt.qhOff()}, t)
			VSHUFI64X2(U8(0xE4), t, qh, qh) // lanes 0-1 of qh, 2-3 of t
		}
	}
	if partial {
		odd := fmt.Sprintf("%s_o%d", pfx, i)
		join := fmt.Sprintf("%s_j%d", pfx, i)
		CMPQ(rem, U8(2*i+1))
		JG(LabelRef(odd))
		VINSERTI32X4(U8(2), zero.AsX(), wv, wv)
		VINSERTI32X4(U8(3), zero.AsX(), wv, wv)
		if qh != nil {
			VINSERTI64X4(U8(1), zero.AsY(), qh, qh)
		}
		JMP(LabelRef(join))
		Label(odd)
		second()
		Label(join)
	} else {
		second()
	}
	VPSRLVW(wt.shift, wv, wv) // lanes 1 and 3: the high nibbles
	VPANDD_BCST(cB0F, wv, wv)
	if wt.typ == "IQ4NL" || wt.typ == "MXFP4" {
		VPSHUFB(wv, wt.tab, wv)
	}
	if qh != nil {
		// Byte k of lane L is value 16(L%2)+k of its block, whose fifth bit
		// is bit k%8 of qh byte 2(L%2)+k/8.
		VPSHUFB(cQ50Spread, qh, qh)
		k := K()
		VPTESTMB(cQ50Bit, qh, k)
		VPADDB(wt.c10, wv, k, wv)
	}
}

// q80TileSums emits, for the 16 Q8_0 blocks at wb (partial: only the first
// rem exist; the others count as zero), sum: lane b = Σ (q_w+128)·s_b over
// block b, with s_b the signed bytes xop(b/2) (64 bytes: blocks b and b+1
// of the other operand), and dw: lane b = block b's d as float32 (and, for
// the types with a min, mw: lane b = its m).
func q80TileSums(wt q80W, pfx string, partial bool, wb, rem GPVirtual, xop func(i int) Op, gidx, zero, redIdx VecVirtual) (sum, dw, mw VecVirtual) {
	p := make([]VecVirtual, 8)
	for i := range p {
		p[i] = ZMM()
		VMOVDQA64(zero, p[i])
		done := fmt.Sprintf("%s_d%d", pfx, i)
		lonly := fmt.Sprintf("%s_l%d", pfx, i)
		if partial {
			CMPQ(rem, U8(2*i))
			JLE(LabelRef(done))
		}
		// Block 2i in the low half, 2i+1 (or zeros past the end) in the
		// high half (a broadcast: avo sees a ymm load as leaving the zmm's
		// upper half live).
		wv := ZMM()
		if wt.typ != "Q80" {
			q40PairCodes(wt, partial, pfx, i, wb, rem, zero, wv)
			VPDPBUSD(xop(i), wv, p[i])
			if partial {
				Label(done)
			}
			continue
		}
		VBROADCASTI64X4(Mem{Base: wb, Disp: 68*i + 2}, wv)
		if partial {
			odd := fmt.Sprintf("%s_o%d", pfx, i)
			CMPQ(rem, U8(2*i+1))
			JG(LabelRef(odd))
			VINSERTI64X4(U8(1), zero.AsY(), wv, wv)
			JMP(LabelRef(lonly))
			Label(odd)
		}
		VINSERTI64X4(U8(1), Mem{Base: wb, Disp: 68*i + 36}, wv, wv)
		if partial {
			Label(lonly)
		}
		VPXORD_BCST(cB80, wv, wv)
		VPDPBUSD(xop(i), wv, p[i])
		if partial {
			Label(done)
		}
	}
	for s := 0; s < 3; s++ {
		var next []VecVirtual
		for i := 0; i < len(p); i += 2 {
			l, h := ZMM(), ZMM()
			switch s {
			case 0:
				VPUNPCKLDQ(p[i+1], p[i], l)
				VPUNPCKHDQ(p[i+1], p[i], h)
			case 1:
				VPUNPCKLQDQ(p[i+1], p[i], l)
				VPUNPCKHQDQ(p[i+1], p[i], h)
			default:
				VSHUFI32X4(U8(0x88), p[i+1], p[i], l)
				VSHUFI32X4(U8(0xDD), p[i+1], p[i], h)
			}
			VPADDD(h, l, l)
			next = append(next, l)
		}
		p = next
	}
	// Lane l now holds block q80Reduce's blockOf[l]: back to block order.
	sum = ZMM()
	VPERMD(p[0], redIdx, sum)
	// The blocks' d (f16 at the start of each), gathered; absent blocks 0.
	m := GP32()
	MOVL(U32(0xFFFF), m)
	if partial {
		r := GP32()
		MOVL(rem.As32(), r)
		BZHIL(r, m, m)
	}
	k := K()
	KMOVW(m, k)
	dw = ZMM()
	VMOVDQA64(zero, dw)
	VPGATHERDD(Mem{Base: wb, Index: gidx, Scale: 1}, k, dw)
	if wt.typ == "MXFP4" {
		// The E8M0 byte at the start of each block; absent blocks give
		// 2^-128, times a zero sum.
		VPANDD_BCST(cDFF, dw, dw)
		VPSUBD_BCST(cD128, dw, dw)
		VCVTDQ2PS(dw, dw)
		VSCALEFPS(dw, wt.e8, dw)
		return sum, dw, nil
	}
	if wt.hasMin() {
		// m is the f16 after d.
		mw = ZMM()
		VPSRLD(U8(16), dw, mw)
		VPMOVDW(mw, mw.AsY())
		VCVTPH2PS(mw.AsY(), mw)
	}
	VPMOVDW(dw, dw.AsY())
	VCVTPH2PS(dw.AsY(), dw)
	return sum, dw, mw
}
