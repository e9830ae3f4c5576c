// Package tensor defines the element types and the weight-matrix view that the
// model, the loaders and the kernels share.
//
// Dimension order: shapes are written in numpy / PyTorch order (slowest dimension
// first), so a linear layer's weight is [out, in] = [Rows, Cols] and row r is the
// contiguous run of Cols elements that produces output r. GGUF's ggml order ("ne",
// fastest first) is converted to this order by the GGUF loader.
//
// Quantized types store a row as whole blocks of 32 values (Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, IQ4_NL, MXFP4) or 256-value super-blocks (the K-quants Q2_K..Q6_K and IQ4_XS), so
// Cols must be a multiple of the block size; blocks.go lists the layouts. Every
// element type is converted to float32 before arithmetic; accumulation is always
// float32. DequantizeRow is the reference decoding of every type, checked bit for
// bit against llama.cpp's (testdata/README.md).
package tensor

import (
	"errors"
	"fmt"
	"math"
)

// DType is the storage type of a weight tensor's elements.
type DType uint8

// Supported element types. The numeric values are internal; the loaders map the
// safetensors dtype strings and the GGML type ids onto them.
const (
	F32 DType = iota + 1
	F16
	BF16
	Q8_0
	Q4_K
	Q6_K
	Q5_K
	Q4_0
	Q4_1
	Q5_0
	Q5_1
	Q2_K
	Q3_K
	IQ4_NL
	IQ4_XS
	// MXFP4: the OCP microscaling FP4 format as ggml stores it (MXFP4_MOE
	// files): 32 E2M1 values with one E8M0 power-of-two scale.
	MXFP4
	// The i-quants of 1 to 3 bits (iquants.go).
	IQ2_XXS
	IQ2_XS
	IQ2_S
	IQ3_XXS
	IQ3_S
	IQ1_S
	IQ1_M

	// NumDTypes is one more than the largest DType, for tables indexed by type.
	NumDTypes = iota + 1
)

// Block sizes of the quantized types (values per block and bytes per block).
const (
	Q8_0BlockValues = 32
	Q8_0BlockBytes  = 2 + 32
	Q4KBlockValues  = 256
	Q4KBlockBytes   = 2 + 2 + 12 + 128
)

// ErrShape reports a tensor whose shape or byte length does not fit its use.
var ErrShape = errors.New("tensor: bad shape")

// String returns the conventional name of the type (as GGUF and safetensors spell it).
func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case F16:
		return "F16"
	case BF16:
		return "BF16"
	}
	if l, ok := layoutOf(d); ok {
		return l.name
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Quantized reports whether d stores blocks of values with shared scales.
func (d DType) Quantized() bool {
	_, ok := layoutOf(d)
	return ok
}

// BlockBytes is the number of bytes of one block (the element size for plain types;
// 0 for unknown types).
func (d DType) BlockBytes() int {
	switch d {
	case F32:
		return 4
	case F16, BF16:
		return 2
	}
	if l, ok := layoutOf(d); ok {
		return l.bytes
	}
	return 0
}

// BlockValues is the number of values that share one block (1 for plain types).
func (d DType) BlockValues() int {
	if l, ok := layoutOf(d); ok {
		return l.values
	}
	return 1
}

// RowBytes returns the bytes that n consecutive values occupy, or an error when n is
// not a whole number of blocks or the type is unknown.
func (d DType) RowBytes(n int) (int, error) {
	switch d {
	case F32:
		return 4 * n, nil
	case F16, BF16:
		return 2 * n, nil
	}
	if l, ok := layoutOf(d); ok {
		if n%l.values != 0 {
			return 0, fmt.Errorf("%w: %d values is not a multiple of the %s block (%d)", ErrShape, n, l.name, l.values)
		}
		return n / l.values * l.bytes, nil
	}
	return 0, fmt.Errorf("%w: unknown dtype %v", ErrShape, d)
}

// Matrix is a read-only row-major weight matrix [Rows, Cols] whose bytes usually
// alias a memory-mapped checkpoint.
type Matrix struct {
	DType DType
	Rows  int    // output features
	Cols  int    // input features
	Data  []byte // Rows * RowBytes(Cols) bytes (Layout RowMajor)
	// Layout is how Data holds the rows: RowMajor, or a layout the kernels
	// repacked the matrix into (model/kernels: Pack), which only they
	// read (Row and Slice panic on it).
	Layout Layout
}

// Layout is the arrangement of a Matrix's bytes.
type Layout uint8

const (
	// RowMajor: row after row, each RowBytes(Cols) bytes in its DType's
	// blocks, as checkpoints store them.
	RowMajor Layout = iota
	// Q80x16: Q8_0 rows in groups of 16 (the last padded with zero rows),
	// each group block by block: the 16 rows' f16 scales (32 bytes), then
	// the block's 32 values of the 16 rows, 4 bytes of a row after 4 bytes
	// of the next (512 bytes), each value stored as q+128 (unsigned). See
	// model/kernels/packed.go.
	Q80x16
	// Q4Kx16: Q4_K rows in groups of 16 (the last padded with zero rows),
	// each group block by block: the 16 rows' d (32 bytes) and dmin (32),
	// then each 4-byte word of the rows' scales and nibbles (bytes 4..143 of
	// a block), the 16 rows' words side by side (2240 bytes): the same 144
	// bytes per row and block. See model/kernels/packed.go.
	Q4Kx16
	// Q5Kx16: Q5_K rows in groups of 16 (the last padded with zero rows),
	// as Q4Kx16 with the rows' 32 bytes of fifth bits between the scales and
	// the nibbles (2752 bytes of words): the same 176 bytes per row and
	// block. See model/kernels/packed.go.
	Q5Kx16
	// Q6Kx16: Q6_K rows in groups of 16 (the last padded with zero rows),
	// each group block by block: the 16 rows' d (32 bytes), then each 4-byte
	// word of the rows' ql, qh and scales (bytes 0..207 of a block), the 16
	// rows' words side by side (3328 bytes): the same 210 bytes per row and
	// block. See model/kernels/packed.go.
	Q6Kx16
	// Q40x16: Q4_0 rows in groups of 16 (the last padded with zero rows),
	// each group block by block: the 16 rows' d (32 bytes), then each 4-byte
	// word of the rows' nibbles (bytes 2..17 of a block), the 16 rows' words
	// side by side (256 bytes): the same 18 bytes per row and block. See
	// model/kernels/packed.go.
	Q40x16
	// IQ4NLx16: IQ4_NL rows in groups of 16, as Q40x16.
	IQ4NLx16
	// Q3Kx16: Q3_K rows in groups of 16 (the last padded with zero rows),
	// each group block by block: the 16 rows' d (32 bytes), then each
	// 4-byte word of the rows' hmask, 2-bit fields and scales (bytes 0..107
	// of a block), the 16 rows' words side by side (1728 bytes): the same
	// 110 bytes per row and block. See model/kernels/packed.go.
	Q3Kx16
	// Q2Kx16: Q2_K rows in groups of 16 (the last padded with zero rows),
	// each group block by block: the 16 rows' d (32 bytes) and dmin (32),
	// then each 4-byte word of the rows' scales and 2-bit fields (bytes
	// 0..79 of a block), the 16 rows' words side by side (1280 bytes): the
	// same 84 bytes per row and block. See model/kernels/packed.go.
	Q2Kx16
	// IQ4XSx16: IQ4_XS rows in groups of 16 (the last padded with zero
	// rows), each group block by block: the 16 rows' d (32 bytes) and
	// scales_h (32), then each 4-byte word of the rows' scales_l and
	// nibbles (bytes 4..135 of a block), the 16 rows' words side by side
	// (2112 bytes): the same 136 bytes per row and block. See
	// model/kernels/packed.go.
	IQ4XSx16
	// Q50x16: Q5_0 rows in groups of 16 (the last padded with zero rows),
	// each group block by block: the 16 rows' d (32 bytes), then each
	// 4-byte word of the rows' fifth bits and nibbles (bytes 2..21 of a
	// block), the 16 rows' words side by side (320 bytes): the same 22
	// bytes per row and block. See model/kernels/packed.go.
	Q50x16
	// Q41x16: Q4_1 rows in groups of 16 (the last padded with zero rows),
	// each group block by block: the 16 rows' d (32 bytes) and m (32),
	// then each 4-byte word of the rows' nibbles (bytes 4..19 of a block),
	// the 16 rows' words side by side (256 bytes): the same 20 bytes per
	// row and block. See model/kernels/packed.go.
	Q41x16
	// Q51x16: Q5_1 rows in groups of 16, as Q41x16 with the rows' fifth
	// bits (a word per row) before the nibbles: the same 24 bytes per row
	// and block.
	Q51x16
	// MXFP4x16: MXFP4 rows in groups of 16 (the last padded with zero
	// rows), each group block by block: the 16 rows' E8M0 scale bytes (16
	// bytes), then each 4-byte word of the rows' nibbles (bytes 1..16 of a
	// block), the 16 rows' words side by side (256 bytes): the same 17 bytes
	// per row and block. See model/kernels/packed.go.
	MXFP4x16
	// NumLayouts is the number of layouts (for tables indexed by Layout).
	NumLayouts
)

// String names the layout.
func (l Layout) String() string {
	switch l {
	case RowMajor:
		return "row-major"
	case Q80x16:
		return "Q8_0x16"
	case Q4Kx16:
		return "Q4_Kx16"
	case Q5Kx16:
		return "Q5_Kx16"
	case Q6Kx16:
		return "Q6_Kx16"
	case Q40x16:
		return "Q4_0x16"
	case IQ4NLx16:
		return "IQ4_NLx16"
	case Q3Kx16:
		return "Q3_Kx16"
	case Q2Kx16:
		return "Q2_Kx16"
	case IQ4XSx16:
		return "IQ4_XSx16"
	case Q50x16:
		return "Q5_0x16"
	case Q41x16:
		return "Q4_1x16"
	case MXFP4x16:
		return "MXFP4x16"
	case Q51x16:
		return "Q5_1x16"
	}
	return fmt.Sprintf("Layout(%d)", uint8(l))
}

// NewMatrix checks that data holds exactly rows x cols values of type dt.
func NewMatrix(dt DType, rows, cols int, data []byte) (Matrix, error) {
	rb, err := dt.RowBytes(cols)
	if err != nil {
		return Matrix{}, err
	}
	if rows < 0 || len(data) != rows*rb {
		return Matrix{}, fmt.Errorf("%w: %s [%d,%d] needs %d bytes, have %d", ErrShape, dt, rows, cols, rows*rb, len(data))
	}
	return Matrix{DType: dt, Rows: rows, Cols: cols, Data: data}, nil
}

// RowStride is the byte distance between consecutive rows.
func (m Matrix) RowStride() int {
	rb, _ := m.DType.RowBytes(m.Cols)
	return rb
}

// Row returns the bytes of row r (RowMajor only).
func (m Matrix) Row(r int) []byte {
	m.rowMajor()
	s := m.RowStride()
	return m.Data[r*s : (r+1)*s]
}

// rowMajor panics unless m's rows lie one after the other.
func (m Matrix) rowMajor() {
	if m.Layout != RowMajor {
		panic(fmt.Sprintf("tensor: rows of a %s matrix in a repacked layout (%v)", m.DType, m.Layout))
	}
}

// Slice returns rows [r0, r1) as a matrix sharing the same bytes (RowMajor only).
func (m Matrix) Slice(r0, r1 int) Matrix {
	m.rowMajor()
	s := m.RowStride()
	return Matrix{DType: m.DType, Rows: r1 - r0, Cols: m.Cols, Data: m.Data[r0*s : r1*s]}
}

// Bytes is the matrix's size in bytes.
func (m Matrix) Bytes() int { return len(m.Data) }

// BF16ToF32 widens a bfloat16 bit pattern.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 rounds to the nearest bfloat16 (ties to even); NaN stays NaN.
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F16ToF32 widens an IEEE half-precision bit pattern (subnormals, inf and NaN included).
func F16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0:
		// subnormal: normalise
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		mant &= 0x3ff
		return math.Float32frombits(sign | e<<23 | mant<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// F32ToF16 rounds to the nearest half-precision value (ties to even), saturating to inf.
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23&0xff) - 127 + 15
	mant := b & 0x7fffff
	if b&0x7fffffff > 0x7f800000 { // NaN
		return sign | 0x7e00
	}
	if exp >= 0x1f {
		return sign | 0x7c00
	}
	if exp <= 0 {
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - exp)
		half := uint32(1) << (shift - 1)
		r := mant >> shift
		rem := mant & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, which is the correct rounding
	}
	return sign | uint16(r)
}

func le16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }

// DequantizeRow converts the first len(dst) values stored in src (type d) to float32.
// len(dst) must be a whole number of blocks. It is the reference every fast kernel is
// checked against; for the quantized types it computes exactly what llama.cpp's
// dequantize_row_* functions compute, bit for bit (the float32 operations are done
// in the same order and never fused).
func DequantizeRow(d DType, src []byte, dst []float32) {
	n := len(dst)
	switch d {
	case F32:
		for i := range n {
			dst[i] = math.Float32frombits(uint32(src[4*i]) | uint32(src[4*i+1])<<8 | uint32(src[4*i+2])<<16 | uint32(src[4*i+3])<<24)
		}
		return
	case F16:
		for i := range n {
			dst[i] = F16ToF32(le16(src[2*i:]))
		}
		return
	case BF16:
		for i := range n {
			dst[i] = BF16ToF32(le16(src[2*i:]))
		}
		return
	}
	l, ok := layoutOf(d)
	if !ok {
		panic(fmt.Sprintf("tensor: DequantizeRow of unknown dtype %v", d))
	}
	for b := 0; b < n/l.values; b++ {
		l.dequant(src[b*l.bytes:(b+1)*l.bytes], dst[b*l.values:(b+1)*l.values])
	}
}

// Q4KScaleMin decodes the j-th (0..7) 6-bit scale and min of a Q4_K block's 12-byte
// packed scales field.
func Q4KScaleMin(j int, q []byte) (sc, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return (q[j+4] & 0xF) | ((q[j-4] >> 6) << 4), (q[j+4] >> 4) | ((q[j] >> 6) << 4)
}

// SameShape reports whether two shapes (numpy order, slowest dimension first) are
// equal up to leading dimensions of size 1: [3072] and [1, 3072] are the same
// shape. This is ggml's view, where a tensor's dimensions beyond the last one
// larger than 1 carry no information; llama-quantize drops them when it writes a
// GGUF file (ggml order {3072, 1} becomes {3072}), and loaders must accept both.
func SameShape(a, b []int) bool {
	for len(a) > 0 && a[0] == 1 {
		a = a[1:]
	}
	for len(b) > 0 && b[0] == 1 {
		b = b[1:]
	}
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
