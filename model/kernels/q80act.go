package kernels

import (
	"encoding/binary"
	"math"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// 8-bit activations for Q8_0 weights.
//
// Products with Q8_0 weights quantize each input row to 8 bits per block of
// 32 values, as llama.cpp's quantize_row_q8_0 does (d = amax/127 kept as
// f16, q = round-to-nearest-even(x·127/amax)), and compute each block's sum
// Σ q_w·q_x exactly in integers with VPDPBUSD (AVX-512 VNNI). Every (weight
// row, input row) result is
//
//	acc = 0; for b in order: acc += round(float32(Σ_b q_w·q_x) · round(d_x,b·d_w,b))
//
// in float32, whichever of the two kernels computes it, so a row's result
// never depends on the other rows of the call, their number, the thread
// count or the kernel: the path is batch-invariant as it stands, in both
// modes. A Q8_0 row keeps one scale per 32 values, so a kernel that walks a
// weight row needs one horizontal reduction and one float32 step per block;
// the two kernels arrange that work differently:
//
//   - q80dot512R (from q80MinRows input rows): 16 input rows in the 16 lanes
//     of a register. A group of 16 input rows is stored interleaved, 4
//     bytes of each row per 32-bit lane, as unsigned bytes q+128; VPDPBUSD
//     multiplies them with 4 weight bytes broadcast from the unchanged Q8_0
//     row, 8 instructions per block for 16 input rows, then one conversion,
//     two multiplications and one addition per block. q80prep512 first
//     computes, per weight row and block, −128·Σ q_w (which takes off the
//     +128's share, so the sums are exact) and d_w as float32.
//   - q80rows512 (fewer input rows): each weight row walked alone (one
//     sequential stream), two blocks per register, the weight bytes made
//     unsigned for VPDPBUSD with the signed activations, each block's 8
//     partial sums added by an unpack network into one lane per block, the
//     activations' 128·Σq_x taken off; the rows' per-block products are then
//     transposed 16×16 (lane = weight row) and added block by block.
//
// The layout of one quantized block of a group (q80xBlockBytes):
//
//	[64j, 64j+64)  j < 8: dword lane i = values 4j..4j+3 of input row i,
//	               as q+128 (unsigned)
//	[512, 576)     lane i = d of input row i (float32, rounded to f16)
//
// and of one input row for q80rows512, per tile of 16 blocks
// (q80rTileBytes): q (int8, 32 per block) at 0, d_x (float32) per block at
// 512, 128·Σq_x (int32) per block at 576.
//
// matMulQ80Ref is the plain twin (TestMatMulQ80 checks both kernels against
// it bit for bit). The activations lose precision (int8 with one scale per
// 32 values): the approximation llama.cpp makes, whose logits on a Q8_0
// file TestLlamaCppQ8_0Direct (model/hybrid) compares with.

const (
	q80Group       = 16  // input rows per quantized group (the lanes)
	q80xBlockBytes = 576 // one block of a group
	q80Values      = 32
	q80Tiny        = q8Tiny
	q80MaxRows     = 6   // weight rows per q80dot512R call
	q80rTileBytes  = 640 // 16 blocks of one input row for q80rows512
)

// The Q8_0 integer kernels' shares of the row counts: below q80MinRows
// input rows q80rows512, once per input row; from q80MinRows the lane-group
// kernel. Measured with BenchmarkQ80Activations (in_proj and expert
// shapes): one input row 1.1-1.6 times the float32 kernels' speed at one
// thread, 2 to 7 rows level with them (q80rows512 reads the weights once
// per input row, from cache after the first), 8 rows 1.1-1.2 times, 16 to
// 512 rows 1.6-2.9 times (one lane group costs the same from 1 to 16 rows,
// VPDPBUSD-bound).
var q80MinRows = 8

// q80PackMinRows256: on AVX2, row-major Q8_0 products with at least this
// many input rows pack the weights as they go (q80PackingBlock); with fewer
// they run q80rows256 (one input row) or q80rows8x256. Measured with
// BenchmarkQ80AVX2 (in_proj shape, one thread): q80rows8x256 at 4, 8 and 16
// rows 2.2, 3.3 and 5.5 ms against 2.3, 4.6 and 9.0 for q80rows256 (but 1.3
// against 0.59 ms at one row: eight weight streams at once read slower than
// one), packing 16 and 90 ms at 64 and 512 rows against about 22 and 176.
var q80PackMinRows256 = 32

// q80Kernel is the Q8_0 integer kernel MatMul takes for n input rows.
type q80Kernel int

const (
	q80None  q80Kernel = iota // the float32 kernels
	q80Rows                   // q80rows512, per input row
	q80Lanes                  // q80dot512R on groups of 16 rows
)

// q80Choice picks the Q8_0 integer kernel for a product with n input rows
// (inv: the call asks for the batch-invariant kernels whatever the mode;
// both integer kernels are).
func q80Choice(w tensor.Matrix, n int, inv bool) q80Kernel {
	switch {
	case !q8Act.Load() || !asQ80(w.DType) || w.Layout != tensor.RowMajor || w.Cols <= 0 || w.Cols%q80Values != 0:
		return q80None
	case n >= q80MinRows:
		return q80Lanes
	}
	return q80Rows
}

// usesQ80 reports whether MatMul at the current level takes a Q8_0 integer
// kernel for this product with n input rows (finite x assumed).
func usesQ80(w tensor.Matrix, n int) bool {
	return hasQ80KernelsAt(KernelLevel()) && q80Choice(w, n, false) != q80None
}

// quantizeQ80Ref quantizes rows (at most 16; the other lanes are zero) of x,
// xstride values apart, nb blocks of 32 values each, into one group at dst
// (nb·q80xBlockBytes bytes), the bytes quantQ80I512 writes. It reports false
// if a row holds an infinity or a NaN.
func quantizeQ80Ref(dst []byte, x []float32, xstride, rows, nb int) bool {
	dst = dst[:nb*q80xBlockBytes]
	clear(dst)
	for b := 0; b < nb; b++ {
		blk := dst[b*q80xBlockBytes : (b+1)*q80xBlockBytes]
		for i := 0; i < q80Group; i++ {
			var d, id float32
			var xs []float32
			if i < rows {
				xs = x[i*xstride+b*q80Values : i*xstride+(b+1)*q80Values]
				var amax float32
				for _, v := range xs {
					if v != v || math.IsInf(float64(v), 0) {
						return false
					}
					amax = max(amax, float32(math.Abs(float64(v))))
				}
				if amax >= q80Tiny {
					d = tensor.F16ToF32(tensor.F32ToF16(amax / 127))
					id = 127 / amax
				}
			}
			binary.LittleEndian.PutUint32(blk[512+4*i:], math.Float32bits(d))
			for l := 0; l < q80Values; l++ {
				var q int32
				if xs != nil {
					// Round to nearest even (see quantizeQ8KRef).
					q = int32(math.Float32bits(xs[l]*id+12582912)) - 0x4B400000
					q = min(127, max(-127, q))
				}
				blk[64*(l/4)+4*i+l%4] = byte(q + 128)
			}
		}
	}
	return true
}

// quantizeQ80RowRef quantizes one input row x (nb blocks of 32 values) into
// q80rows512's tiles at dst (the bytes quantQ80R512 writes: per block q,
// d_x and 128·Σq_x; a partial last tile's unused blocks are left as they
// are). It reports false if x holds an infinity or a NaN. The AVX2 level
// quantizes with it, as an AVX2-only CPU does.
func quantizeQ80RowRef(dst []byte, x []float32, nb int) bool {
	for b := 0; b < nb; b++ {
		tile := dst[b/16*q80rTileBytes : (b/16+1)*q80rTileBytes]
		bt := b % 16
		xs := x[b*q80Values : (b+1)*q80Values]
		var amax float32
		for _, v := range xs {
			if v != v || math.IsInf(float64(v), 0) {
				return false
			}
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		var d, id float32
		if amax >= q80Tiny {
			d = tensor.F16ToF32(tensor.F32ToF16(amax / 127))
			id = 127 / amax
		}
		var sum int32
		for l, v := range xs {
			// Round to nearest even (see quantizeQ8KRef).
			q := int32(math.Float32bits(v*id+12582912)) - 0x4B400000
			q = min(127, max(-127, q))
			tile[32*bt+l] = byte(int8(q))
			sum += q
		}
		binary.LittleEndian.PutUint32(tile[512+4*bt:], math.Float32bits(d))
		binary.LittleEndian.PutUint32(tile[576+4*bt:], uint32(128*sum))
	}
	return true
}

// asQ80 reports whether products with dt weights can run the Q8_0 integer
// path (its activations, one scale per 32 values, as llama.cpp's q8_0 and
// q8_1): Q8_0, the types whose blocks are Q8_0 blocks once their codes are
// written as int8 (q80Rewrites), Q4_1 and Q5_1, and MXFP4 (llama.cpp's
// MXFP4 dot takes q8_0 activations; its E8M0 scales are no f16, so it has
// no Q8_0 rewrite either: dotMXFP4Ref, and kernels of its own).
func asQ80(dt tensor.DType) bool {
	return q80Rewrites(dt) || dt == tensor.Q4_1 || dt == tensor.Q5_1 || dt == tensor.MXFP4
}

// q80Rewrites reports whether dt's blocks are Q8_0 blocks once their codes
// are written as int8 (one f16 scale per 32 values, codes within int8):
// Q8_0, Q4_0 (q−8), Q5_0 (q−16) and IQ4_NL (its codebook). Their packed
// and one-row kernels decode the codes in registers; other products
// rewrite the rows as Q8_0 rows as they go (q80Weights). Every path gives
// the bits of the Q8_0 rewrite (toQ80RowRef, then matMulQ80Ref).
//
// Q4_1 and Q5_1 (value d·q + m) have no such rewrite: their kernels
// (q41rows512, q41x16N and their Q5_1 and AVX2 twins) take the unsigned
// codes' exact sums Σq·q_x and add the min's share per block, the steps of
// dotQ81Ref, on every path.
func q80Rewrites(dt tensor.DType) bool {
	return dt == tensor.Q8_0 || dt == tensor.Q4_0 || dt == tensor.Q5_0 || dt == tensor.IQ4_NL
}

// q81PackMinRows: row-major Q4_1, Q5_1 and MXFP4 products with at least this many
// input rows pack 16-row groups as they go (q8PackingBlock); with fewer
// they run their one-input-row kernels per input row. Measured with
// BenchmarkQ81Packing (Q4_1, one thread, AVX-512): at 8 rows packing took
// 2.4 against 2.9 ms on in_proj (6448×1536) but 0.21 against 0.17 ms on an
// expert's 1536×512, at 4 rows 2.5 against 1.3 and 0.19 against 0.09, at
// 64 rows 5.1 against 18.2 and 0.54 against 1.33.
var q81PackMinRows = 10

// toQ80RowRef rewrites nb blocks of src (Q4_0, Q5_0 or IQ4_NL) as Q8_0
// blocks at dst (the bytes the conv*Q80 assembly writes).
func toQ80RowRef(dst, src []byte, dt tensor.DType, nb int) {
	bb := dt.BlockBytes()
	for b := 0; b < nb; b++ {
		in := src[b*bb : (b+1)*bb]
		out := dst[b*tensor.Q8_0BlockBytes : (b+1)*tensor.Q8_0BlockBytes]
		out[0], out[1] = in[0], in[1] // d
		qs := in[2:18]
		var qh uint32
		if dt == tensor.Q5_0 {
			qh = binary.LittleEndian.Uint32(in[2:])
			qs = in[6:22]
		}
		for l := 0; l < q80Values; l++ {
			q := nibble(qs, l)
			var v int8
			switch dt {
			case tensor.Q4_0:
				v = int8(q) - 8
			case tensor.Q5_0:
				v = int8(q|byte(qh>>l&1)<<4) - 16
			case tensor.IQ4_NL:
				v = tensor.IQ4NLValues[q]
			default:
				panic("kernels: toQ80RowRef of " + dt.String())
			}
			out[2+l] = byte(v)
		}
	}
}

// dotQ80Ref is lane i's dot product of a Q8_0 row with a quantized group:
// the exact integer sum per block, then float32 products added in order.
func dotQ80Ref(row, xg []byte, i, nb int) float32 {
	var acc float32
	for b := 0; b < nb; b++ {
		blk := row[b*tensor.Q8_0BlockBytes : (b+1)*tensor.Q8_0BlockBytes]
		xb := xg[b*q80xBlockBytes : (b+1)*q80xBlockBytes]
		var s int32
		for l := 0; l < q80Values; l++ {
			s += int32(int8(blk[2+l])) * (int32(xb[64*(l/4)+4*i+l%4]) - 128)
		}
		dx := math.Float32frombits(binary.LittleEndian.Uint32(xb[512+4*i:]))
		dw := tensor.F16ToF32(binary.LittleEndian.Uint16(blk))
		acc += float32(float32(s) * (dx * dw)) // rounded, never fused
	}
	return acc
}

// matMulQ80Ref is the reference twin of the Q8_0 integer path: out = x·Wᵀ
// with each row of x quantized by quantizeQ80Ref (a row with an infinity or
// a NaN in float32, as MatMul does).
func matMulQ80Ref(out []float32, w tensor.Matrix, x []float32, n int) {
	k := w.Cols
	nb := k / q80Values
	if !q80Rewrites(w.DType) {
		matMulQ81Ref(out, w, x, n)
		return
	}
	if w.DType != tensor.Q8_0 {
		// As the kernels see it: the rows rewritten as Q8_0 rows (the same
		// values, so MatMulRef on them is MatMulRef on w).
		conv := make([]byte, w.Rows*nb*tensor.Q8_0BlockBytes)
		for r := 0; r < w.Rows; r++ {
			toQ80RowRef(conv[r*nb*tensor.Q8_0BlockBytes:], w.Row(r), w.DType, nb)
		}
		w = tensor.Matrix{DType: tensor.Q8_0, Rows: w.Rows, Cols: w.Cols, Data: conv}
	}
	xg := make([]byte, nb*q80xBlockBytes)
	for i := 0; i < n; i++ {
		if !quantizeQ80Ref(xg, x[i*k:], k, 1, nb) {
			MatMulRef(out[i*w.Rows:(i+1)*w.Rows], w, x[i*k:(i+1)*k], 1)
			continue
		}
		for r := 0; r < w.Rows; r++ {
			out[i*w.Rows+r] = dotQ80Ref(w.Row(r), xg, 0, nb)
		}
	}
}

// matMulQ81Ref is matMulQ80Ref for the types without a Q8_0 rewrite (Q4_1,
// Q5_1, MXFP4): each input row quantized by quantizeQ80RowRef, each
// (weight row, input row) result dotQ81Ref's (dotMXFP4Ref's for MXFP4).
func matMulQ81Ref(out []float32, w tensor.Matrix, x []float32, n int) {
	k := w.Cols
	nb := k / q80Values
	xs := (nb + 15) / 16 * q80rTileBytes
	xq := make([]byte, xs)
	for i := 0; i < n; i++ {
		if !quantizeQ80RowRef(xq, x[i*k:], nb) {
			MatMulRef(out[i*w.Rows:(i+1)*w.Rows], w, x[i*k:(i+1)*k], 1)
			continue
		}
		for r := 0; r < w.Rows; r++ {
			if w.DType == tensor.MXFP4 {
				out[i*w.Rows+r] = dotMXFP4Ref(w.Row(r), xq, nb)
				continue
			}
			out[i*w.Rows+r] = dotQ81Ref(w.Row(r), w.DType, xq, nb)
		}
	}
}

// dotQ81Ref is the dot product of a Q4_1 or Q5_1 row (nb blocks) with an
// input row quantized in q80rows512's tiles (xq): per block the exact
// I = Σ q·q_x of the unsigned codes (Q5_1's fifth bits merged), then, each
// step rounded to float32 and never fused,
//
//	t = float32(I)·(d_x·d_w)
//	s = float32(C)·d_x, with C = 128·Σq_x (the tile's)
//	acc += t + (m_w·(1/128))·s
//
// in block order: so t + m_w·d_x·Σq_x, the min's share, as llama.cpp's
// q8_1 dot products take it (there d_x·Σq_x is stored in f16).
func dotQ81Ref(row []byte, dt tensor.DType, xq []byte, nb int) float32 {
	bb := dt.BlockBytes()
	var acc float32
	for b := 0; b < nb; b++ {
		blk := row[b*bb : (b+1)*bb]
		qx, dx, c := rowTileBlock(xq, b)
		qs := blk[4:20]
		var qh uint32
		if dt == tensor.Q5_1 {
			qh = binary.LittleEndian.Uint32(blk[4:])
			qs = blk[8:24]
		}
		var sum int32
		for l := 0; l < q80Values; l++ {
			q := nibble(qs, l)
			q |= byte(qh>>l&1) << 4
			sum += int32(q) * int32(int8(qx[l]))
		}
		dw := tensor.F16ToF32(binary.LittleEndian.Uint16(blk))
		mw := tensor.F16ToF32(binary.LittleEndian.Uint16(blk[2:]))
		t := float32(float32(sum) * float32(dx*dw))
		sx := float32(float32(c) * dx)
		u := float32(float32(mw*(1.0/128)) * sx)
		acc += float32(t + u)
	}
	return acc
}

// dotMXFP4Ref is the dot product of an MXFP4 row (nb blocks) with an input
// row quantized in q80rows512's tiles (xq): per block the exact
// I = Σ v·q_x of the codebook values v (tensor.MXFP4Values), then
// float32(I)·(d_x·d_w) with d_w = tensor.E8M0Half(e), rounded to float32
// and added in order: Q8_0's float32 step, and llama.cpp's for MXFP4
// against q8_0 activations (a power of two times d_x is exact).
func dotMXFP4Ref(row, xq []byte, nb int) float32 {
	bb := tensor.MXFP4.BlockBytes()
	var acc float32
	for b := 0; b < nb; b++ {
		blk := row[b*bb : (b+1)*bb]
		qx, dx, _ := rowTileBlock(xq, b)
		var sum int32
		for l := 0; l < q80Values; l++ {
			sum += int32(tensor.MXFP4Values[nibble(blk[1:17], l)]) * int32(int8(qx[l]))
		}
		dw := tensor.E8M0Half(blk[0])
		acc += float32(float32(sum) * float32(dx*dw))
	}
	return acc
}

// nibble is value l's 4-bit code in a 32-value block's 16 bytes of
// nibbles qs: the low nibble of byte l, or for l >= 16 the high nibble of
// byte l−16.
func nibble(qs []byte, l int) byte {
	if l < 16 {
		return qs[l] & 0xF
	}
	return qs[l-16] >> 4
}

// rowTileBlock returns block b of an input row quantized in q80rows512's
// tiles (xq): its 32 int8 values, d_x and 128·Σq_x.
func rowTileBlock(xq []byte, b int) (q []byte, dx float32, c int32) {
	tile := xq[b/16*q80rTileBytes:]
	bt := b % 16
	return tile[32*bt : 32*bt+32], math.Float32frombits(binary.LittleEndian.Uint32(tile[512+4*bt:])), int32(binary.LittleEndian.Uint32(tile[576+4*bt:]))
}
