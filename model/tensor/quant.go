package tensor

import (
	"fmt"
	"math"
)

// QuantizeQ8_0 encodes src (a whole number of 32-value blocks) into dst, which must
// hold exactly Q8_0.RowBytes(len(src)) bytes. Each block stores d = absmax/127 as an
// f16 followed by 32 int8 values q = round(x/d), so that x ≈ d·q.
//
// It panics when the lengths do not fit (a programming error, not bad input data).
// Values beyond the f16 range saturate; non-finite inputs give meaningless blocks.
func QuantizeQ8_0(src []float32, dst []byte) {
	checkQuantLens(Q8_0, src, dst)
	for b := 0; b < len(src)/Q8_0BlockValues; b++ {
		x := src[b*Q8_0BlockValues : (b+1)*Q8_0BlockValues]
		blk := dst[b*Q8_0BlockBytes : (b+1)*Q8_0BlockBytes]
		var amax float32
		for _, v := range x {
			amax = max(amax, abs32(v))
		}
		dh := F32ToF16(min(amax/127, maxF16)) // saturate rather than store inf
		d := F16ToF32(dh)                     // quantize against the scale the reader will see
		blk[0], blk[1] = byte(dh), byte(dh>>8)
		var id float32
		if d != 0 && !isInf32(d) {
			id = 1 / d
		}
		for j, v := range x {
			blk[2+j] = byte(int8(roundClamp(v*id, -127, 127)))
		}
	}
}

// QuantizeQ4_K encodes src (a whole number of 256-value super-blocks) into dst, which
// must hold exactly Q4_K.RowBytes(len(src)) bytes.
//
// Each super-block has eight sub-blocks of 32 values. For every sub-block a scale s
// and a non-negative min m are fitted so that x ≈ s·q - m with q in 0..15 (a small
// search over candidate ranges followed by a least-squares refit). The sub-block
// scales and mins are then quantized to 6 bits relative to the block's f16 d and dmin
// (s ≈ d·sc, m ≈ dmin·mq), and finally the 4-bit values are re-rounded against the
// scales as stored, so the dequantized value is d·sc·q - dmin·mq exactly as
// DequantizeRow computes it. The search is simpler than llama.cpp's and the output
// is not bit-identical to it.
//
// It panics when the lengths do not fit (a programming error, not bad input data).
func QuantizeQ4_K(src []float32, dst []byte) {
	checkQuantLens(Q4_K, src, dst)
	for b := 0; b < len(src)/Q4KBlockValues; b++ {
		quantQ4KBlock(src[b*Q4KBlockValues:(b+1)*Q4KBlockValues], dst[b*Q4KBlockBytes:(b+1)*Q4KBlockBytes])
	}
}

// maxF16 is the largest finite half-precision value.
const maxF16 = 65504

func checkQuantLens(d DType, src []float32, dst []byte) {
	n, err := d.RowBytes(len(src))
	if err != nil {
		panic(fmt.Sprintf("tensor: Quantize%v: %v", d, err))
	}
	if len(dst) != n {
		panic(fmt.Sprintf("tensor: Quantize%v: %d values need %d bytes, dst has %d", d, len(src), n, len(dst)))
	}
}

func quantQ4KBlock(x []float32, blk []byte) {
	var q [Q4KBlockValues]uint8
	quantKScaleMin(x, blk[0:16], &q, 15)
	// Each 32-byte run holds sub-block 2k in its low nibbles and 2k+1 in its high ones.
	qs := blk[16:144]
	for k := range 4 {
		for l := range 32 {
			qs[32*k+l] = q[64*k+l] | q[64*k+32+l]<<4
		}
	}
}

// quantKScaleMin fits the eight sub-blocks of 32 of a Q4_K/Q5_K super-block with
// x ≈ d·sc·q − dmin·m (q in 0..nmax), stores d, dmin and the packed 6-bit scales
// and mins in hdr (16 bytes) and the values, re-rounded against the scales as
// stored, in q.
func quantKScaleMin(x []float32, hdr []byte, q *[256]uint8, nmax float32) {
	const nsub = Q4KBlockValues / 32
	var scales, mins [nsub]float32
	var maxScale, maxMin float32
	for j := range nsub {
		scales[j], mins[j] = fitAsymSub(x[32*j:32*j+32], nmax)
		maxScale = max(maxScale, scales[j])
		maxMin = max(maxMin, mins[j])
	}

	dh := F32ToF16(min(maxScale/63, maxF16))
	dminh := F32ToF16(min(maxMin/63, maxF16))
	d, dmin := F16ToF32(dh), F16ToF32(dminh)
	var sc, mq [nsub]uint8
	for j := range nsub {
		if d > 0 && !isInf32(d) {
			sc[j] = uint8(roundClamp(scales[j]/d, 0, 63))
		}
		if dmin > 0 && !isInf32(dmin) {
			mq[j] = uint8(roundClamp(mins[j]/dmin, 0, 63))
		}
	}

	hdr[0], hdr[1] = byte(dh), byte(dh>>8)
	hdr[2], hdr[3] = byte(dminh), byte(dminh>>8)
	packQ4KScales(hdr[4:16], sc, mq)

	// Re-round every value against the scale and min as stored.
	for j := range nsub {
		s := d * float32(sc[j])
		m := dmin * float32(mq[j])
		var is float32
		if s > 0 && !isInf32(s) {
			is = 1 / s
		}
		for l := range 32 {
			q[32*j+l] = uint8(level((x[32*j+l]+m)*is, nmax))
		}
	}
}

// packQ4KScales stores eight 6-bit scales and mins in the 12-byte layout that
// Q4KScaleMin decodes: sub-blocks 0..3 keep 6 bits in bytes 0..7; sub-blocks 4..7
// keep their low 4 bits in bytes 8..11 and their high 2 bits in the top bits of
// bytes 0..7.
func packQ4KScales(dst []byte, sc, m [8]uint8) {
	for j := range 4 {
		dst[j] = sc[j]&63 | (sc[j+4]>>4)<<6
		dst[j+4] = m[j]&63 | (m[j+4]>>4)<<6
		dst[j+8] = sc[j+4]&0xF | (m[j+4]&0xF)<<4
	}
}

// fitAsymSub fits x ≈ s·q - m with q in 0..nmax, s ≥ 0 and m ≥ 0, minimising the
// squared error over a handful of candidate quantization grids.
func fitAsymSub(x []float32, nmax float32) (s, m float32) {
	lo, hi := x[0], x[0]
	for _, v := range x[1:] {
		lo = min(lo, v)
		hi = max(hi, v)
	}
	lo = min(lo, 0) // the offset can only shift values down: m >= 0
	if !(hi > lo) || isInf32(hi-lo) {
		// constant (or degenerate) sub-block: all q = 0 represent -m
		return 0, max(-lo, 0)
	}

	var q [32]float32
	bestErr := float32(math.Inf(1))
	s, m = (hi-lo)/nmax, -lo
	// Candidate grids: the plain min..max range, and ranges stretched or shrunk
	// slightly so that outliers may clip. Each candidate alternates a least-squares
	// fit of (scale, offset) with re-rounding the values on the new grid.
	for step := -10; step <= 10; step += 2 {
		iscale := (nmax + 0.1*float32(step)) / (hi - lo)
		for l, v := range x {
			q[l] = level(iscale*(v-lo), nmax)
		}
		for range 2 {
			a, b, ok := fitAffine(x, q[:])
			if !ok {
				break
			}
			ia := 1 / a
			var e float32
			for l, v := range x {
				q[l] = level((v-b)*ia, nmax)
				diff := a*q[l] + b - v
				e += diff * diff
			}
			if e < bestErr {
				bestErr, s, m = e, a, -b
			}
		}
	}
	return s, m
}

// fitAffine returns the least-squares a, b of x ≈ a·q + b subject to b ≤ 0, or
// ok = false when no positive a fits.
func fitAffine(x, q []float32) (a, b float32, ok bool) {
	var sq, sqq, sx, sxq float32
	for l, v := range x {
		sq += q[l]
		sqq += q[l] * q[l]
		sx += v
		sxq += v * q[l]
	}
	n := float32(len(x))
	if det := n*sqq - sq*sq; det > 0 {
		a = (n*sxq - sq*sx) / det
		b = (sqq*sx - sq*sxq) / det
	}
	if b > 0 { // the offset is -min with min >= 0: pin it at zero and refit
		b = 0
		a = 0
		if sqq > 0 {
			a = sxq / sqq
		}
	}
	return a, b, a > 0 && !isInf32(a)
}

// level rounds v to the nearest integer in 0..nmax (NaN gives 0).
func level(v, nmax float32) float32 {
	if !(v > 0) {
		return 0
	}
	if v >= nmax {
		return nmax
	}
	return float32(int32(v + 0.5))
}

// roundClamp rounds v half away from zero and clamps it to [lo, hi]; NaN gives 0.
func roundClamp(v, lo, hi float32) float32 {
	if v != v {
		return 0
	}
	r := float32(math.Round(float64(v)))
	return min(max(r, lo), hi)
}

func abs32(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ (1 << 31)) }

func isInf32(v float32) bool { return math.IsInf(float64(v), 0) }
