package tensor

import "math"

// Block layouts and reference decoding of the quantized types.
//
// The layouts are ggml's (ggml-common.h); every f16 field is little-endian IEEE
// half precision. Each dequant function below decodes one block and computes
// exactly the float32 values llama.cpp's dequantize_row_* produces: the same
// operations in the same order, each rounded to float32 (explicit float32
// conversions keep the compiler from fusing a multiply and an add).
// TestGoldenLlamaCpp checks that bit for bit on blocks made by llama.cpp.
//
//	type    values bytes  layout (byte offsets)
//	Q4_0     32     18    d f16 @0; 16 bytes of 4-bit q (value j: low nibble of byte j, value j+16: high); x = (q-8)·d
//	Q4_1     32     20    d @0, m @2; 16 bytes of 4-bit q as Q4_0;                     x = q·d + m
//	Q5_0     32     22    d @0; qh u32 @2 (bit j: 5th bit of value j); 16 bytes as Q4_0; x = (q-16)·d
//	Q5_1     32     24    d @0, m @2; qh u32 @4; 16 bytes as Q4_0;                     x = q·d + m
//	Q8_0     32     34    d @0; 32 int8 q @2;                                           x = q·d
//	IQ4_NL   32     18    d @0; 16 bytes of 4-bit indices as Q4_0;                      x = d·iq4nlValues[q]
//	Q2_K    256     84    16 scale bytes @0 (low nibble scale, high nibble min) for 16 sub-blocks of 16;
//	                      64 bytes of 2-bit q @16; d @80, dmin @82;                      x = d·sc·q − dmin·m
//	Q3_K    256    110    hmask[32] @0 (3rd bit); 64 bytes of 2-bit q @32; 12 bytes of packed 6-bit
//	                      scales @96 for 16 sub-blocks of 16; d @108;                   x = d·(sc−32)·(q−4·!hbit)
//	Q4_K    256    144    d @0, dmin @2; 12 bytes of packed 6-bit scales/mins @4 for 8 sub-blocks of 32;
//	                      128 bytes of 4-bit q @16;                                      x = d·sc·q − dmin·m
//	Q5_K    256    176    d @0, dmin @2; scales @4 as Q4_K; qh[32] @16 (5th bits); 128 bytes of 4-bit q @48
//	Q6_K    256    210    ql[128] @0 (low 4 bits); qh[64] @128 (high 2 bits); 16 int8 scales @192 for
//	                      sub-blocks of 16; d @208;                                      x = d·sc·(q−32)
//	IQ4_XS  256    136    d @0; scales_h u16 @2; scales_l[4] @4 (6-bit scales of 8 sub-blocks of 32);
//	                      128 bytes of 4-bit indices @8;                                 x = d·(sc−32)·iq4nlValues[q]
//	MXFP4    32     17    e u8 @0 (E8M0); 16 bytes of 4-bit E2M1 codes as Q4_0;          x = E8M0Half(e)·MXFP4Values[q]
//
// The i-quants of 1 to 3 bits (IQ2_XXS ... IQ1_M) are in iquants.go.

// blockLayout describes one quantized type.
type blockLayout struct {
	name    string
	values  int // values per block
	bytes   int // bytes per block
	dequant func(blk []byte, y []float32)
}

var layouts = [NumDTypes]blockLayout{
	Q8_0:   {"Q8_0", 32, 34, dequantQ8_0Block},
	Q4_K:   {"Q4_K", 256, 144, dequantQ4KBlock},
	Q6_K:   {"Q6_K", 256, 210, dequantQ6KBlock},
	Q5_K:   {"Q5_K", 256, 176, dequantQ5KBlock},
	Q4_0:   {"Q4_0", 32, 18, dequantQ4_0Block},
	Q4_1:   {"Q4_1", 32, 20, dequantQ4_1Block},
	Q5_0:   {"Q5_0", 32, 22, dequantQ5_0Block},
	Q5_1:   {"Q5_1", 32, 24, dequantQ5_1Block},
	Q2_K:   {"Q2_K", 256, 84, dequantQ2KBlock},
	Q3_K:   {"Q3_K", 256, 110, dequantQ3KBlock},
	IQ4_NL: {"IQ4_NL", 32, 18, dequantIQ4NLBlock},
	IQ4_XS: {"IQ4_XS", 256, 136, dequantIQ4XSBlock},
	MXFP4:  {"MXFP4", 32, 17, dequantMXFP4Block},

	IQ2_XXS: {"IQ2_XXS", 256, 66, dequantIQ(IQ2_XXS)},
	IQ2_XS:  {"IQ2_XS", 256, 74, dequantIQ(IQ2_XS)},
	IQ2_S:   {"IQ2_S", 256, 82, dequantIQ(IQ2_S)},
	IQ3_XXS: {"IQ3_XXS", 256, 98, dequantIQ(IQ3_XXS)},
	IQ3_S:   {"IQ3_S", 256, 110, dequantIQ(IQ3_S)},
	IQ1_S:   {"IQ1_S", 256, 50, dequantIQ(IQ1_S)},
	IQ1_M:   {"IQ1_M", 256, 56, dequantIQ(IQ1_M)},
}

func layoutOf(d DType) (blockLayout, bool) {
	if int(d) >= len(layouts) || layouts[d].values == 0 {
		return blockLayout{}, false
	}
	return layouts[d], true
}

// QuantizedDTypes lists the quantized types, in declaration order.
func QuantizedDTypes() []DType {
	var out []DType
	for d := DType(1); d < NumDTypes; d++ {
		if d.Quantized() {
			out = append(out, d)
		}
	}
	return out
}

// ParseDType parses a type name as String spells it (case-insensitive).
func ParseDType(s string) (DType, bool) {
	for d := DType(1); d < NumDTypes; d++ {
		if equalFold(d.String(), s) {
			return d, true
		}
	}
	return 0, false
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// IQ4NLValues is the non-linear 4-bit codebook of IQ4_NL and IQ4_XS.
var IQ4NLValues = [16]int8{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}

// MXFP4Values are the 16 E2M1 (FP4) values of the OCP microscaling
// formats, 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives, doubled so that
// they are integers (codes 8..15 are the negatives of 0..7, code 8 being
// −0). ggml stores them so and halves the scale instead (E8M0Half).
var MXFP4Values = [16]int8{0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12}

// E8M0Half is half the power of two an E8M0 scale byte e stands for,
// 2^(e−128), exactly, as ggml decodes MXFP4 scales: e = 0 and 1 give the
// float32 subnormals 2^−128 and 2^−127, and e = 255 (NaN in the OCP
// specification) 2^127, as ggml reads it.
func E8M0Half(e uint8) float32 {
	if e < 2 {
		return math.Float32frombits(0x00200000 << e)
	}
	return math.Float32frombits(uint32(e-1) << 23)
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// mul and mulSub are single float32 roundings (no fused multiply-add).
func mul(a, b float32) float32       { return float32(a * b) }
func mulSub(a, b, c float32) float32 { return float32(a*b) - c }
func mulAdd(a, b, c float32) float32 { return float32(a*b) + c }

func dequantQ8_0Block(blk []byte, y []float32) {
	d := F16ToF32(le16(blk))
	for j := range 32 {
		y[j] = mul(float32(int8(blk[2+j])), d)
	}
}

func dequantQ4_0Block(blk []byte, y []float32) {
	d := F16ToF32(le16(blk))
	qs := blk[2:18]
	for j := range 16 {
		y[j] = mul(float32(int32(qs[j]&0xF)-8), d)
		y[j+16] = mul(float32(int32(qs[j]>>4)-8), d)
	}
}

func dequantQ4_1Block(blk []byte, y []float32) {
	d, m := F16ToF32(le16(blk)), F16ToF32(le16(blk[2:]))
	qs := blk[4:20]
	for j := range 16 {
		y[j] = mulAdd(float32(qs[j]&0xF), d, m)
		y[j+16] = mulAdd(float32(qs[j]>>4), d, m)
	}
}

func dequantQ5_0Block(blk []byte, y []float32) {
	d := F16ToF32(le16(blk))
	qh := le32(blk[2:])
	qs := blk[6:22]
	for j := range 16 {
		h0 := (qh >> j << 4) & 0x10
		h1 := (qh >> (j + 12)) & 0x10
		y[j] = mul(float32(int32(uint32(qs[j]&0xF)|h0)-16), d)
		y[j+16] = mul(float32(int32(uint32(qs[j]>>4)|h1)-16), d)
	}
}

func dequantQ5_1Block(blk []byte, y []float32) {
	d, m := F16ToF32(le16(blk)), F16ToF32(le16(blk[2:]))
	qh := le32(blk[4:])
	qs := blk[8:24]
	for j := range 16 {
		h0 := (qh >> j << 4) & 0x10
		h1 := (qh >> (j + 12)) & 0x10
		y[j] = mulAdd(float32(uint32(qs[j]&0xF)|h0), d, m)
		y[j+16] = mulAdd(float32(uint32(qs[j]>>4)|h1), d, m)
	}
}

func dequantIQ4NLBlock(blk []byte, y []float32) {
	d := F16ToF32(le16(blk))
	qs := blk[2:18]
	for j := range 16 {
		y[j] = mul(d, float32(IQ4NLValues[qs[j]&0xF]))
		y[j+16] = mul(d, float32(IQ4NLValues[qs[j]>>4]))
	}
}

func dequantMXFP4Block(blk []byte, y []float32) {
	d := E8M0Half(blk[0])
	qs := blk[1:17]
	for j := range 16 {
		y[j] = mul(float32(MXFP4Values[qs[j]&0xF]), d)
		y[j+16] = mul(float32(MXFP4Values[qs[j]>>4]), d)
	}
}

// dequantQ2KBlock: 16 sub-blocks of 16 values; byte l of each 32-byte run of qs
// holds values l (and l+16 in the next sub-block) of four sub-blocks in its 2-bit
// fields (bits 0-1 first).
func dequantQ2KBlock(blk []byte, y []float32) {
	scales := blk[0:16]
	q := blk[16:80]
	d, dmin := F16ToF32(le16(blk[80:])), F16ToF32(le16(blk[82:]))
	is := 0
	for n := 0; n < 256; n += 128 {
		shift := uint(0)
		for range 4 {
			for half := range 2 {
				sc := scales[is]
				is++
				dl, ml := mul(d, float32(sc&0xF)), mul(dmin, float32(sc>>4))
				for l := range 16 {
					y[l] = mulSub(dl, float32((q[l+16*half]>>shift)&3), ml)
				}
				y = y[16:]
			}
			shift += 2
		}
		q = q[32:]
	}
}

// Q3KScales unpacks the 16 6-bit scales of a Q3_K block's 12-byte scales field
// (still biased by 32).
func Q3KScales(p []byte) [16]uint8 {
	var out [16]uint8
	for j := range 16 {
		lo := p[j%8] >> (4 * uint(j/8)) & 0xF
		hi := p[8+j%4] >> (2 * uint(j/4)) & 3
		out[j] = lo | hi<<4
	}
	return out
}

func dequantQ3KBlock(blk []byte, y []float32) {
	hm := blk[0:32]
	q := blk[32:96]
	sc := Q3KScales(blk[96:108])
	d := F16ToF32(le16(blk[108:]))
	is := 0
	m := uint8(1)
	for n := 0; n < 256; n += 128 {
		shift := uint(0)
		for range 4 {
			for half := range 2 {
				dl := mul(d, float32(int32(sc[is])-32))
				is++
				for l := range 16 {
					v := int32((q[l+16*half] >> shift) & 3)
					if hm[l+16*half]&m == 0 {
						v -= 4
					}
					y[l] = mul(dl, float32(v))
				}
				y = y[16:]
			}
			shift += 2
			m <<= 1
		}
		q = q[32:]
	}
}

// dequantQ4KBlock expands one 144-byte Q4_K block: f16 d, f16 dmin, 12 bytes of
// packed 6-bit scales/mins for 8 sub-blocks of 32, then 128 bytes of 4-bit values
// (each 32-byte run holds two sub-blocks: low nibbles first, then high nibbles).
func dequantQ4KBlock(blk []byte, y []float32) {
	d := F16ToF32(le16(blk))
	dmin := F16ToF32(le16(blk[2:]))
	scales := blk[4:16]
	q := blk[16:144]
	is := 0
	for j := 0; j < Q4KBlockValues; j += 64 {
		sc, m := Q4KScaleMin(is, scales)
		d1, m1 := mul(d, float32(sc)), mul(dmin, float32(m))
		sc, m = Q4KScaleMin(is+1, scales)
		d2, m2 := mul(d, float32(sc)), mul(dmin, float32(m))
		for l := range 32 {
			y[j+l] = mulSub(d1, float32(q[l]&0xF), m1)
			y[j+32+l] = mulSub(d2, float32(q[l]>>4), m2)
		}
		q = q[32:]
		is += 2
	}
}

// dequantQ5KBlock is Q4_K with a fifth bit per value: bit 2k of qh[l] for value l of
// 64-value group k, bit 2k+1 for value 32+l.
func dequantQ5KBlock(blk []byte, y []float32) {
	d := F16ToF32(le16(blk))
	dmin := F16ToF32(le16(blk[2:]))
	scales := blk[4:16]
	qh := blk[16:48]
	ql := blk[48:176]
	u1, u2 := uint8(1), uint8(2)
	is := 0
	for j := 0; j < 256; j += 64 {
		sc, m := Q4KScaleMin(is, scales)
		d1, m1 := mul(d, float32(sc)), mul(dmin, float32(m))
		sc, m = Q4KScaleMin(is+1, scales)
		d2, m2 := mul(d, float32(sc)), mul(dmin, float32(m))
		for l := range 32 {
			v := ql[l] & 0xF
			if qh[l]&u1 != 0 {
				v += 16
			}
			y[j+l] = mulSub(d1, float32(v), m1)
		}
		for l := range 32 {
			v := ql[l] >> 4
			if qh[l]&u2 != 0 {
				v += 16
			}
			y[j+32+l] = mulSub(d2, float32(v), m2)
		}
		ql = ql[32:]
		is += 2
		u1 <<= 2
		u2 <<= 2
	}
}

// dequantQ6KBlock: per 128 values, ql holds 64 bytes (values l and l+64 in the low
// and high nibbles of byte l, values l+32 and l+96 in byte l+32) and qh 32 bytes
// (bits 0-1, 2-3, 4-5, 6-7 of byte l are the high bits of values l, l+32, l+64,
// l+96). Sub-blocks of 16 have an int8 scale each.
func dequantQ6KBlock(blk []byte, y []float32) {
	ql := blk[0:128]
	qh := blk[128:192]
	sc := blk[192:208]
	d := F16ToF32(le16(blk[208:]))
	for n := 0; n < 256; n += 128 {
		for l := range 32 {
			is := l / 16
			q1 := int32(ql[l]&0xF|(qh[l]>>0&3)<<4) - 32
			q2 := int32(ql[l+32]&0xF|(qh[l]>>2&3)<<4) - 32
			q3 := int32(ql[l]>>4|(qh[l]>>4&3)<<4) - 32
			q4 := int32(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32
			y[l] = mul(mul(d, float32(int8(sc[is]))), float32(q1))
			y[l+32] = mul(mul(d, float32(int8(sc[is+2]))), float32(q2))
			y[l+64] = mul(mul(d, float32(int8(sc[is+4]))), float32(q3))
			y[l+96] = mul(mul(d, float32(int8(sc[is+6]))), float32(q4))
		}
		y = y[128:]
		ql = ql[64:]
		qh = qh[32:]
		sc = sc[8:]
	}
}

// IQ4XSScale returns the 6-bit scale (biased by 32) of sub-block ib (0..7) of an
// IQ4_XS block.
func IQ4XSScale(blk []byte, ib int) uint8 {
	lo := blk[4+ib/2] >> (4 * uint(ib%2)) & 0xF
	hi := uint8(le16(blk[2:])>>(2*uint(ib))) & 3
	return lo | hi<<4
}

func dequantIQ4XSBlock(blk []byte, y []float32) {
	d := F16ToF32(le16(blk))
	qs := blk[8:136]
	for ib := range 8 {
		dl := mul(d, float32(int32(IQ4XSScale(blk, ib))-32))
		for j := range 16 {
			y[j] = mul(dl, float32(IQ4NLValues[qs[j]&0xF]))
			y[j+16] = mul(dl, float32(IQ4NLValues[qs[j]>>4]))
		}
		y = y[32:]
		qs = qs[16:]
	}
}
