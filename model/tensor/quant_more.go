package tensor

import (
	"fmt"
	"math"
)

// CanQuantize reports whether Quantize can encode type d (F32, F16, BF16 and
// every quantized type but Q2_K, Q3_K, IQ4_NL and IQ4_XS, which are only read).
func CanQuantize(d DType) bool {
	switch d {
	case F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4:
		return true
	}
	return false
}

// Quantize encodes src (a whole number of blocks) as type d into dst, which must
// hold exactly d.RowBytes(len(src)) bytes. It panics when the lengths do not fit
// or the type cannot be encoded (see CanQuantize). The encoders are this
// package's own: their output decodes with DequantizeRow (and llama.cpp) but is
// not bit-identical to llama.cpp's quantizers.
func Quantize(d DType, src []float32, dst []byte) {
	switch d {
	case F32:
		checkQuantLens(d, src, dst)
		for i, v := range src {
			b := math.Float32bits(v)
			dst[4*i], dst[4*i+1], dst[4*i+2], dst[4*i+3] = byte(b), byte(b>>8), byte(b>>16), byte(b>>24)
		}
	case F16:
		checkQuantLens(d, src, dst)
		for i, v := range src {
			h := F32ToF16(v)
			dst[2*i], dst[2*i+1] = byte(h), byte(h>>8)
		}
	case BF16:
		checkQuantLens(d, src, dst)
		for i, v := range src {
			h := F32ToBF16(v)
			dst[2*i], dst[2*i+1] = byte(h), byte(h>>8)
		}
	case Q8_0:
		QuantizeQ8_0(src, dst)
	case Q4_K:
		QuantizeQ4_K(src, dst)
	default:
		enc := map[DType]func([]float32, []byte){
			Q5_K: quantQ5KBlock, Q6_K: quantQ6KBlock,
			Q4_0:  func(x []float32, b []byte) { quantSym32(x, b, 8) },
			Q5_0:  func(x []float32, b []byte) { quantSym32(x, b, 16) },
			Q4_1:  func(x []float32, b []byte) { quantAffine32(x, b, 15) },
			Q5_1:  func(x []float32, b []byte) { quantAffine32(x, b, 31) },
			MXFP4: quantMXFP4Block,
		}[d]
		if enc == nil {
			panic(fmt.Sprintf("tensor: Quantize: cannot encode %v", d))
		}
		checkQuantLens(d, src, dst)
		l, _ := layoutOf(d)
		for b := 0; b < len(src)/l.values; b++ {
			enc(src[b*l.values:(b+1)*l.values], dst[b*l.bytes:(b+1)*l.bytes])
		}
	}
}

// putF16 stores v as f16 at b and returns the value the reader will see.
func putF16(b []byte, v float32) float32 {
	h := F32ToF16(max(min(v, maxF16), -maxF16))
	b[0], b[1] = byte(h), byte(h>>8)
	return F16ToF32(h)
}

func recip(v float32) float32 {
	if v == 0 || isInf32(v) || v != v {
		return 0
	}
	return 1 / v
}

// quantSym32 encodes a Q4_0 (bias 8) or Q5_0 (bias 16) block: x ≈ d·(q − bias)
// with q in 0..2·bias−1. The value of largest magnitude maps exactly onto
// q = 0 (d takes its sign), then a few slightly larger scales are tried and the
// one with the smallest squared error is kept.
func quantSym32(x []float32, blk []byte, bias int) {
	var amax, vmax float32
	for _, v := range x {
		if a := abs32(v); a > amax {
			amax, vmax = a, v
		}
	}
	nmax := float32(2*bias - 1)
	best, bestErr := float32(0), float32(math.Inf(1))
	if amax > 0 && !isInf32(amax) {
		for k := range 4 {
			// d = vmax / -(bias - k/4): shrinking the grid a little may fit the bulk better.
			cand := F16ToF32(F32ToF16(vmax / -(float32(bias) - 0.25*float32(k))))
			id := recip(cand)
			var e float32
			for _, v := range x {
				q := roundClamp(v*id+float32(bias), 0, nmax)
				diff := cand*(q-float32(bias)) - v
				e += diff * diff
			}
			if e < bestErr {
				best, bestErr = cand, e
			}
		}
	}
	d := putF16(blk, best)
	id := recip(d)
	var q [32]uint8
	for j, v := range x {
		q[j] = uint8(roundClamp(v*id+float32(bias), 0, nmax))
	}
	if bias == 8 {
		for j := range 16 {
			blk[2+j] = q[j] | q[j+16]<<4
		}
		return
	}
	var qh uint32
	for j := range 16 {
		blk[6+j] = q[j]&0xF | (q[j+16]&0xF)<<4
		qh |= uint32(q[j]>>4) << j
		qh |= uint32(q[j+16]>>4) << (j + 16)
	}
	blk[2], blk[3], blk[4], blk[5] = byte(qh), byte(qh>>8), byte(qh>>16), byte(qh>>24)
}

// quantAffine32 encodes a Q4_1 (nmax 15) or Q5_1 (nmax 31) block: x ≈ d·q + m with
// m the block minimum and d spanning the range.
func quantAffine32(x []float32, blk []byte, nmax int) {
	lo, hi := x[0], x[0]
	for _, v := range x[1:] {
		lo, hi = min(lo, v), max(hi, v)
	}
	d := putF16(blk, (hi-lo)/float32(nmax))
	m := putF16(blk[2:], lo)
	id := recip(d)
	var q [32]uint8
	for j, v := range x {
		q[j] = uint8(roundClamp((v-m)*id, 0, float32(nmax)))
	}
	if nmax == 15 {
		for j := range 16 {
			blk[4+j] = q[j] | q[j+16]<<4
		}
		return
	}
	var qh uint32
	for j := range 16 {
		blk[8+j] = q[j]&0xF | (q[j+16]&0xF)<<4
		qh |= uint32(q[j]>>4) << j
		qh |= uint32(q[j+16]>>4) << (j + 16)
	}
	blk[4], blk[5], blk[6], blk[7] = byte(qh), byte(qh>>8), byte(qh>>16), byte(qh>>24)
}

// quantQ5KBlock encodes a Q5_K super-block: Q4_K's scales and mins with 5-bit
// values, the fifth bits in qh.
func quantQ5KBlock(x []float32, blk []byte) {
	var q [256]uint8
	quantKScaleMin(x, blk[0:16], &q, 31)
	qh := blk[16:48]
	ql := blk[48:176]
	clear(qh)
	for k := range 4 {
		for l := range 32 {
			lo, hi := q[64*k+l], q[64*k+32+l]
			ql[32*k+l] = lo&0xF | (hi&0xF)<<4
			qh[l] |= (lo>>4)<<(2*k) | (hi>>4)<<(2*k+1)
		}
	}
}

// quantQ6KBlock encodes a Q6_K super-block: each sub-block of 16 gets a signed
// scale fitted for q in -32..31 (fitSymSub), the scales are stored as int8
// multiples of the f16 d, and the values are re-rounded against the stored scales.
func quantQ6KBlock(x []float32, blk []byte) {
	var scales [16]float32
	var amax float32
	for j := range 16 {
		scales[j] = fitSymSub(x[16*j:16*j+16], 32)
		amax = max(amax, abs32(scales[j]))
	}
	d := putF16(blk[208:], amax/127)
	id := recip(d)
	var q [256]uint8
	for j := range 16 {
		sc := int8(roundClamp(scales[j]*id, -127, 127))
		blk[192+j] = byte(sc)
		is := recip(d * float32(sc))
		for l := range 16 {
			q[16*j+l] = uint8(roundClamp(x[16*j+l]*is, -32, 31) + 32)
		}
	}
	ql, qh := blk[0:128], blk[128:192]
	clear(qh)
	for v := range 256 {
		n, w := v/128, v%128
		qtr, l := w/32, w%32
		b := 64*n + l + 32*(qtr&1)
		if qtr < 2 {
			ql[b] = ql[b]&0xF0 | q[v]&0xF
		} else {
			ql[b] = ql[b]&0x0F | (q[v]&0xF)<<4
		}
		qh[32*n+l] |= (q[v] >> 4) << (2 * qtr)
	}
}

// fitSymSub returns the scale s minimising Σ(x − s·q)² over a few candidate grids,
// with q = round(x/s) in −nmax..nmax−1 (the value of largest magnitude lands near
// −nmax, so s takes its sign).
func fitSymSub(x []float32, nmax int) float32 {
	var amax, vmax float32
	for _, v := range x {
		if a := abs32(v); a > amax {
			amax, vmax = a, v
		}
	}
	if amax == 0 || isInf32(amax) || amax != amax {
		return 0
	}
	lo, hi := -float32(nmax), float32(nmax-1)
	best, bestErr := vmax/lo, float32(math.Inf(1))
	for step := -9; step <= 9; step++ {
		iscale := (lo + 0.1*float32(step)) / vmax
		var sxq, sqq float32
		for _, v := range x {
			q := roundClamp(v*iscale, lo, hi)
			sxq += v * q
			sqq += q * q
		}
		if sqq == 0 {
			continue
		}
		s := sxq / sqq
		is := recip(s)
		var e float32
		for _, v := range x {
			diff := s*roundClamp(v*is, lo, hi) - v
			e += diff * diff
		}
		if e < bestErr {
			best, bestErr = s, e
		}
	}
	return best
}

// quantMXFP4Block encodes an MXFP4 block as the OCP microscaling
// specification scales it: the shared exponent is floor(log2(amax)) minus
// E2M1's largest exponent (2), so that amax falls in [4, 8) of the scale
// and values above 6 of it saturate; each value takes the nearest E2M1
// code (ties to the smaller magnitude). An all-zero block gets e = 0.
func quantMXFP4Block(x []float32, blk []byte) {
	var amax float32
	for _, v := range x {
		if a := abs32(v); a > amax && !isInf32(a) {
			amax = a
		}
	}
	clear(blk[:17])
	if !(amax > 0) {
		return
	}
	_, exp := math.Frexp(float64(amax)) // amax = f·2^exp, f in [0.5, 1)
	e := min(max(exp-1-2+127, 0), 254)
	blk[0] = uint8(e)
	d := E8M0Half(uint8(e))
	for j, v := range x {
		t := v / d // not times 1/d: 1/2^-128 overflows
		best, bestDiff := 0, float32(math.Inf(1))
		for q, kv := range MXFP4Values {
			if diff := abs32(t - float32(kv)); diff < bestDiff {
				best, bestDiff = q, diff
			}
		}
		if j < 16 {
			blk[1+j] |= uint8(best)
		} else {
			blk[1+j-16] |= uint8(best) << 4
		}
	}
}
