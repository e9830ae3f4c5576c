package kernels

import (
	"encoding/binary"
	"math"
	"os"
	"sync/atomic"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// 8-bit activations.
//
// For the weight types with integer kernels on these activations
// (q8LevelKernels: the K-quants Q2_K to Q6_K and IQ4_XS),
// products quantize each input row to 8 bits per block of 256 values and compute the block dot products in
// integers, as llama.cpp does on CPUs (its Q8_K): the weights' 2- to 6-bit
// codes (IQ4_XS: codebook values) times the activations' int8 with VPMADDUBSW or VPDPBUSD, scaled by the sub-block
// scales with VPDPWSSD (AVX-512 VNNI; VPMADDWD and VPADDD without it), float32 only for the per-block
// d·d_x. That does a block's work in about a quarter of the instructions of
// widening the weights to float32, which is what keeps decode at memory
// speed; at prefill sizes it is still 20-25% faster than the float32 panels
// (measured at 4 to 512 rows). Each row's result is independent of the other
// rows of the call (the integer sums are exact, the float32 steps per row
// the same whatever the kernel's row count), so the path is batch-invariant
// as it stands and serves the batch-invariant mode too. The activations lose precision (int8 with one scale per 256 values,
// relative error up to 1/254 per value): the same approximation llama.cpp
// makes, whose logits the golden tests compare against.
//
// The layout of one quantized block (q8xBlockBytes):
//
//	[0, 256)    q: int8, x ≈ d·q (round to nearest even, |q| ≤ 127)
//	[256, 288)  int16 sums of q over each 16 values
//	[288, 304)  int16 sums of q over each 32 values
//	[304, 308)  d: float32
//
// matMulQ8Ref is the plain twin of the integer kernels (exact integer block
// sums, the same float32 scaling per block).

const (
	q8xBlockBytes = 320
	q8xValues     = 256
)

// q8MaxRows is the most input rows an integer kernel takes per call: 16
// for the AVX-512 kernels of the i-quants of 1 to 3 bits (8 for their AVX2
// ones), which share the cost of building a block's values among them; 4
// for the AVX2 IQ4_XS kernels; 2 for the others.
const q8MaxRows = 16

// q8Fn is the signature of the integer kernels (internal/gen/q8.go): for
// r < nrows, i < N (the kernel's input rows), with strides in bytes,
//
//	out[i*ostride + 4r] = Σ_k W[r][k] · X_i[k]
//
// where X_i is the quantized row at xq + i*xqstride (nblocks blocks).
type q8Fn func(w *byte, wstride, nrows int, xq *byte, xqstride, nblocks int, out *float32, ostride int)

// q8Act is SetQ8Activations' setting (default on; the
// SWITCHYARD_Q8_ACTIVATIONS environment variable set to 0 turns it off).
var q8Act atomic.Bool

func init() { q8Act.Store(os.Getenv("SWITCHYARD_Q8_ACTIVATIONS") != "0") }

// SetQ8Activations chooses whether products with K-quant weights
// quantize the activations to 8 bits and run the integer kernels (on, the
// default, where the CPU has AVX-512 BW or AVX2) or
// widen the weights to float32 (off). It returns the previous setting. Either way a row's result does not
// depend on the other rows of the call when SetBatchInvariant is on.
func SetQ8Activations(on bool) (prev bool) { return q8Act.Swap(on) }

// Q8Activations reports the setting of SetQ8Activations.
func Q8Activations() bool { return q8Act.Load() }

// productStreams is the runs a product of one or two input rows reads at
// once where a two-stream kernel exists: 2 (the default), or 1.
var productStreams atomic.Int32

func init() { productStreams.Store(2) }

// SetProductStreams sets how many runs of a packed or bf16 matrix a product
// of one or two input rows reads at once where its type has a two-stream
// kernel (see planStreams): 2, the default, or 1, the one-run kernels
// (for benchmarks that compare them; both give the same bits). It returns
// the previous setting.
func SetProductStreams(n int) (prev int) {
	if n != 1 {
		n = 2
	}
	return int(productStreams.Swap(int32(n)))
}

// ProductStreams reports the setting of SetProductStreams.
func ProductStreams() int { return int(productStreams.Load()) }

// q8Tiny: blocks whose largest |x| is below it quantize to zero (so that
// 127/amax stays finite).
const q8Tiny = 1e-30

// quantizeQ8K quantizes x (len a multiple of 256) into dst, q8xBlockBytes per
// 256 values. It reports false, leaving dst undefined, if x holds an infinity
// or a NaN (those products widen the weights instead, so that they propagate
// as in float32). The assembly (quantQ8K512) and quantizeQ8KRef write the
// same bytes.
func quantizeQ8K(dst []byte, x []float32) bool {
	nb := len(x) / q8xValues
	if nb == 0 {
		return true
	}
	_ = dst[nb*q8xBlockBytes-1]
	if ok, done := quantizeQ8KAsm(dst, x, nb); done {
		return ok
	}
	return quantizeQ8KRef(dst, x)
}

// quantizeQ8KRef is quantizeQ8K in plain Go.
func quantizeQ8KRef(dst []byte, x []float32) bool {
	nb := len(x) / q8xValues
	dst = dst[:nb*q8xBlockBytes]
	for b := 0; b < nb; b++ {
		xs := x[b*q8xValues : (b+1)*q8xValues]
		blk := dst[b*q8xBlockBytes : (b+1)*q8xBlockBytes]
		var amax float32
		for _, v := range xs {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		if amax != amax || math.IsInf(float64(amax), 0) {
			return false
		}
		var d, id float32
		if amax >= q8Tiny {
			d = amax / 127
			id = 127 / amax
		}
		qs := blk[:q8xValues]
		for g := 0; g < 16; g++ {
			var s int32
			for l := g * 16; l < g*16+16; l++ {
				v := xs[l] * id
				// Round to nearest even: adding 1.5·2²³ leaves the rounded
				// integer in the low mantissa bits (|v| ≤ 127).
				q := int32(math.Float32bits(v+12582912)) - 0x4B400000
				q = min(127, max(-127, q))
				qs[l] = byte(int8(q))
				s += q
			}
			binary.LittleEndian.PutUint16(blk[256+2*g:], uint16(int16(s)))
			if g&1 == 1 {
				s0 := int16(binary.LittleEndian.Uint16(blk[256+2*(g-1):]))
				binary.LittleEndian.PutUint16(blk[288+2*(g/2):], uint16(s0+int16(s)))
			}
		}
		binary.LittleEndian.PutUint32(blk[304:], math.Float32bits(d))
		clear(blk[308:])
	}
	return true
}

// q8Usable reports whether MatMul may use 8-bit activations for this product:
// the setting is on and the width is whole 256-value blocks (which types have
// kernels is q8LevelKernels' to say).
func q8Usable(w tensor.Matrix) bool {
	return q8Act.Load() && w.Cols%q8xValues == 0 && w.Cols > 0
}

// usesQ8 reports whether MatMul at the current level runs the integer kernels
// for this product (finite x assumed).
func usesQ8(w tensor.Matrix) bool {
	return hasQ8KernelsAt(w.DType, KernelLevel()) && q8Usable(w)
}

// matMulQ8Ref is the reference twin of the integer kernels: out = x·Wᵀ with
// x quantized by quantizeQ8K, W of a type dotQ8Ref knows.
func matMulQ8Ref(out []float32, w tensor.Matrix, x []float32, n int) {
	k := w.Cols
	nb := k / q8xValues
	xq := make([]byte, nb*q8xBlockBytes)
	for i := 0; i < n; i++ {
		if !quantizeQ8K(xq, x[i*k:(i+1)*k]) {
			MatMulRef(out[i*w.Rows:(i+1)*w.Rows], w, x[i*k:(i+1)*k], 1)
			continue
		}
		for r := 0; r < w.Rows; r++ {
			out[i*w.Rows+r] = dotQ8Ref(w.DType, w.Row(r), xq, nb)
		}
	}
}

// dotQ8Ref is one row's dot product with a quantized x: per block, the exact
// integer sums, then for Q4_K and Q5_K acc += Σ sc·Σq·q_x·(d·d_x) and
// acc −= Σ m·Σq_x·(dmin·d_x) in float32 (Q2_K likewise, per 16 values),
// for Q6_K acc += Σ sc·Σ(q−32)·q_x·(d·d_x) (Q3_K likewise with q−4, IQ4_XS
// with its codebook values per 32; the i-quants of 1 to 3 bits with
// tensor.IQInts' integer form), in the kernels' order: the same bits.
func dotQ8Ref(dt tensor.DType, row, xq []byte, nb int) float32 {
	var acc float32
	for b := 0; b < nb; b++ {
		xb := xq[b*q8xBlockBytes : (b+1)*q8xBlockBytes]
		dx := math.Float32frombits(binary.LittleEndian.Uint32(xb[304:]))
		qx := func(l int) int32 { return int32(int8(xb[l])) }
		switch dt {
		case tensor.Q4_K, tensor.Q5_K:
			bb, qs := 144, 16
			if dt == tensor.Q5_K {
				bb, qs = 176, 48
			}
			blk := row[b*bb : (b+1)*bb]
			d := tensor.F16ToF32(binary.LittleEndian.Uint16(blk))
			dmin := tensor.F16ToF32(binary.LittleEndian.Uint16(blk[2:]))
			var isum, msum int32
			for j := 0; j < 8; j++ {
				sc, m := tensor.Q4KScaleMin(j, blk[4:16])
				var s, sx int32
				for l := 0; l < 32; l++ {
					q := int32(blk[qs+32*(j/2)+l])
					if j&1 == 1 {
						q >>= 4
					}
					q &= 15
					if dt == tensor.Q5_K && blk[16+l]>>j&1 != 0 {
						q += 16
					}
					s += q * qx(32*j+l)
					sx += qx(32*j + l)
				}
				isum += int32(sc) * s
				msum += int32(m) * sx
			}
			// As q8BlockScalar (internal/gen/q8.go): each product and sum
			// rounded on its own (the conversions keep Go from fusing them).
			acc += float32(float32(isum) * float32(dx*d))
			acc -= float32(float32(msum) * float32(dx*dmin))
		case tensor.Q6_K:
			blk := row[b*210 : (b+1)*210]
			d := tensor.F16ToF32(binary.LittleEndian.Uint16(blk[208:]))
			var isum int32
			for v := 0; v < 256; v++ {
				h, l := v/128, v%128
				ql, qh := blk[64*h:], blk[128+32*h:]
				var q int32
				switch l / 32 {
				case 0:
					q = int32(ql[l]&15) | int32(qh[l]&3)<<4
				case 1:
					q = int32(ql[l]&15) | int32(qh[l-32]>>2&3)<<4
				case 2:
					q = int32(ql[l-64]>>4) | int32(qh[l-64]>>4&3)<<4
				default:
					q = int32(ql[l-64]>>4) | int32(qh[l-96]>>6&3)<<4
				}
				isum += int32(int8(blk[192+v/16])) * (q - 32) * qx(v)
			}
			acc += float32(float32(isum) * float32(dx*d)) // as q6BlockScalar
		case tensor.Q3_K:
			blk := row[b*110 : (b+1)*110]
			d := tensor.F16ToF32(binary.LittleEndian.Uint16(blk[108:]))
			sc := tensor.Q3KScales(blk[96:108])
			var isum int32
			for v := 0; v < 256; v++ {
				n, j, l := v/128, v%128/32, v%32
				u := int32(blk[32+32*n+l]>>(2*j)&3) | int32(blk[l]>>(4*n+j)&1)<<2
				isum += (int32(sc[v/16]) - 32) * (u - 4) * qx(v)
			}
			acc += float32(float32(isum) * float32(dx*d)) // as q6BlockScalar
		case tensor.Q2_K:
			blk := row[b*84 : (b+1)*84]
			d := tensor.F16ToF32(binary.LittleEndian.Uint16(blk[80:]))
			dmin := tensor.F16ToF32(binary.LittleEndian.Uint16(blk[82:]))
			var isum, msum int32
			for j := 0; j < 16; j++ {
				var s, sx int32
				for v := 16 * j; v < 16*j+16; v++ {
					n, jj, l := v/128, v%128/32, v%32
					s += int32(blk[16+32*n+l]>>(2*jj)&3) * qx(v)
					sx += qx(v)
				}
				isum += int32(blk[j]&15) * s
				msum += int32(blk[j]>>4) * sx
			}
			acc += float32(float32(isum) * float32(dx*d)) // as q8BlockScalar
			acc -= float32(float32(msum) * float32(dx*dmin))
		case tensor.IQ4_XS:
			blk := row[b*136 : (b+1)*136]
			d := tensor.F16ToF32(binary.LittleEndian.Uint16(blk))
			var isum int32
			for ib := 0; ib < 8; ib++ {
				var s int32
				for l := 0; l < 16; l++ {
					q := blk[8+16*ib+l]
					s += int32(tensor.IQ4NLValues[q&15]) * qx(32*ib+l)
					s += int32(tensor.IQ4NLValues[q>>4]) * qx(32*ib+16+l)
				}
				isum += (int32(tensor.IQ4XSScale(blk, ib)) - 32) * s
			}
			acc += float32(float32(isum) * float32(dx*d)) // as q6BlockScalar
		default:
			if !tensor.IsIQLattice(dt) {
				panic("kernels: dotQ8Ref of " + dt.String())
			}
			// The i-quants of 1 to 3 bits in their integer form: the
			// exact Σ_t ls_t·Σ w·q_x, scaled by (d·k)·d_x (k a power of
			// two, so d·k is exact) as q6BlockScalar does.
			bb := dt.BlockBytes()
			var w [256]int8
			var ls [16]int32
			d, k := tensor.IQInts(dt, row[b*bb:(b+1)*bb], &w, &ls)
			var isum int32
			for t := range 16 {
				var s int32
				for v := 16 * t; v < 16*t+16; v++ {
					s += int32(w[v]) * qx(v)
				}
				isum += ls[t] * s
			}
			acc += float32(float32(isum) * float32(dx*float32(d*k)))
		}
	}
	return acc
}
