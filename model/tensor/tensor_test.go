package tensor

import (
	"math"
	"strings"
	"testing"
)

// f32 builds a float32 from its bit pattern.
func f32(bits uint32) float32 { return math.Float32frombits(bits) }

func TestF16ToF32Table(t *testing.T) {
	cases := []struct {
		name string
		h    uint16
		want float32
	}{
		{"+0", 0x0000, 0},
		{"1.0", 0x3c00, 1},
		{"-2.0", 0xc000, -2},
		{"0.5", 0x3800, 0.5},
		{"max finite 65504", 0x7bff, 65504},
		{"-65504", 0xfbff, -65504},
		{"smallest subnormal 2^-24", 0x0001, f32(0x33800000)},
		{"largest subnormal", 0x03ff, 1023 * f32(0x33800000)},
		{"smallest normal 2^-14", 0x0400, f32(0x38800000)},
		{"1+2^-10", 0x3c01, 1 + 1.0/1024},
		{"+inf", 0x7c00, float32(math.Inf(1))},
		{"-inf", 0xfc00, float32(math.Inf(-1))},
	}
	for _, c := range cases {
		got := F16ToF32(c.h)
		if math.Float32bits(got) != math.Float32bits(c.want) {
			t.Errorf("%s: F16ToF32(%#04x) = %v (%#08x), want %v (%#08x)", c.name, c.h, got, math.Float32bits(got), c.want, math.Float32bits(c.want))
		}
	}
	if got := F16ToF32(0x8000); math.Float32bits(got) != 0x80000000 {
		t.Errorf("F16ToF32(-0) = %#08x, want -0", math.Float32bits(got))
	}
	for _, h := range []uint16{0x7e00, 0x7c01, 0xfe00, 0x7fff} {
		if got := F16ToF32(h); got == got {
			t.Errorf("F16ToF32(%#04x) = %v, want NaN", h, got)
		}
	}
}

func TestF32ToF16Table(t *testing.T) {
	cases := []struct {
		name string
		f    float32
		want uint16
	}{
		{"1.0", 1, 0x3c00},
		{"-2.0", -2, 0xc000},
		{"65504", 65504, 0x7bff},
		{"65519 rounds down to 65504", 65519, 0x7bff},
		{"65520 ties to even: overflows to inf", 65520, 0x7c00},
		{"1e6 saturates to inf", 1e6, 0x7c00},
		{"-1e6 saturates to -inf", -1e6, 0xfc00},
		{"+inf", float32(math.Inf(1)), 0x7c00},
		{"-inf", float32(math.Inf(-1)), 0xfc00},
		{"2^-24 smallest subnormal", f32(0x33800000), 0x0001},
		{"2^-25 ties to even: zero", f32(0x33000000), 0x0000},
		{"2^-25 plus a bit rounds up", f32(0x33000001), 0x0001},
		{"3*2^-25 ties to even: 2", f32(0x33c00000), 0x0002},
		{"0.75*2^-24 rounds up to 2^-24", f32(0x33400000), 0x0001},
		{"2^-26 rounds to zero", f32(0x32800000), 0x0000},
		{"-2^-24", -f32(0x33800000), 0x8001},
		{"largest subnormal", 1023 * f32(0x33800000), 0x03ff},
		{"subnormal rounds up into smallest normal", f32(0x387fffff), 0x0400},
		{"2^-14 smallest normal", f32(0x38800000), 0x0400},
		{"1+2^-11 ties to even: 1", 1 + 1.0/2048, 0x3c00},
		{"1+3*2^-11 ties to even: 1+2^-9", 1 + 3.0/2048, 0x3c02},
		{"1+2^-11+2^-20 rounds up", 1 + 1.0/2048 + 1.0/(1<<20), 0x3c01},
		{"1.9999999 carries into exponent", f32(0x3fffffff), 0x4000},
		{"0.1", 0.1, 0x2e66},
		{"1e-10 underflows to 0", 1e-10, 0x0000},
	}
	for _, c := range cases {
		if got := F32ToF16(c.f); got != c.want {
			t.Errorf("%s: F32ToF16(%v) = %#04x, want %#04x", c.name, c.f, got, c.want)
		}
	}
	if got := F32ToF16(float32(math.NaN())); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Errorf("F32ToF16(NaN) = %#04x, want a NaN", got)
	}
	if got := F32ToF16(f32(0x80000000)); got != 0x8000 {
		t.Errorf("F32ToF16(-0) = %#04x, want 0x8000", got)
	}
}

func TestBF16Table(t *testing.T) {
	widen := []struct {
		h    uint16
		want float32
	}{
		{0x3f80, 1},
		{0xc000, -2},
		{0x0001, f32(0x00010000)}, // smallest subnormal
		{0x7f7f, f32(0x7f7f0000)}, // max finite
		{0x7f80, float32(math.Inf(1))},
		{0xff80, float32(math.Inf(-1))},
	}
	for _, c := range widen {
		if got := BF16ToF32(c.h); math.Float32bits(got) != math.Float32bits(c.want) {
			t.Errorf("BF16ToF32(%#04x) = %v, want %v", c.h, got, c.want)
		}
	}
	narrow := []struct {
		name string
		f    float32
		want uint16
	}{
		{"1.0", 1, 0x3f80},
		{"-2.0", -2, 0xc000},
		{"smallest subnormal", f32(0x00010000), 0x0001},
		{"1+2^-8 ties to even: 1", 1 + 1.0/256, 0x3f80},
		{"1+3*2^-8 ties to even: 1+2^-6", 1 + 3.0/256, 0x3f82},
		{"1+2^-8+2^-20 rounds up", 1 + 1.0/256 + 1.0/(1<<20), 0x3f81},
		{"max float32 rounds to inf", math.MaxFloat32, 0x7f80},
		{"+inf", float32(math.Inf(1)), 0x7f80},
		{"-inf", float32(math.Inf(-1)), 0xff80},
		{"65504", 65504, 0x4780}, // 65504 = 0x477fe000 rounds up to 65536
	}
	for _, c := range narrow {
		if got := F32ToBF16(c.f); got != c.want {
			t.Errorf("%s: F32ToBF16(%v) = %#04x, want %#04x", c.name, c.f, got, c.want)
		}
	}
	for _, bits := range []uint32{0x7fc00000, 0x7f800001, 0xffc00000, 0x7f80ffff} {
		got := F32ToBF16(f32(bits))
		if got&0x7f80 != 0x7f80 || got&0x7f == 0 {
			t.Errorf("F32ToBF16(NaN %#08x) = %#04x, want a NaN", bits, got)
		}
	}
}

// TestF16RoundTripExhaustive checks every non-NaN half value survives widening and
// narrowing unchanged.
func TestF16RoundTripExhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		if h&0x7c00 == 0x7c00 && h&0x3ff != 0 {
			if got := F32ToF16(F16ToF32(h)); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
				t.Fatalf("NaN %#04x came back as %#04x", h, got)
			}
			continue
		}
		if got := F32ToF16(F16ToF32(h)); got != h {
			t.Fatalf("F32ToF16(F16ToF32(%#04x)) = %#04x", h, got)
		}
	}
}

func TestBF16RoundTripExhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		if h&0x7f80 == 0x7f80 && h&0x7f != 0 {
			if got := F32ToBF16(BF16ToF32(h)); got&0x7f80 != 0x7f80 || got&0x7f == 0 {
				t.Fatalf("NaN %#04x came back as %#04x", h, got)
			}
			continue
		}
		if got := F32ToBF16(BF16ToF32(h)); got != h {
			t.Fatalf("F32ToBF16(BF16ToF32(%#04x)) = %#04x", h, got)
		}
	}
}

// TestF16Monotonic checks that rounding picks one of the two neighbouring halves for
// values between consecutive finite halves (a sanity check of F32ToF16 away from
// the exact points).
func TestF16Monotonic(t *testing.T) {
	for h := uint16(0); h < 0x7bff; h++ {
		lo, hi := F16ToF32(h), F16ToF32(h+1)
		mid := lo + (hi-lo)/4
		if got := F32ToF16(mid); got != h {
			t.Fatalf("F32ToF16(%v) = %#04x, want %#04x (nearest)", mid, got, h)
		}
		mid = hi - (hi-lo)/4
		if got := F32ToF16(mid); got != h+1 {
			t.Fatalf("F32ToF16(%v) = %#04x, want %#04x (nearest)", mid, got, h+1)
		}
	}
}

func TestRowBytes(t *testing.T) {
	cases := []struct {
		d    DType
		n    int
		want int
		ok   bool
	}{
		{F32, 3, 12, true},
		{F16, 3, 6, true},
		{BF16, 5, 10, true},
		{Q8_0, 64, 68, true},
		{Q8_0, 33, 0, false},
		{Q4_K, 512, 288, true},
		{Q4_K, 128, 0, false},
		{DType(99), 4, 0, false},
	}
	for _, c := range cases {
		got, err := c.d.RowBytes(c.n)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%v.RowBytes(%d) = %d, %v; want %d, ok=%v", c.d, c.n, got, err, c.want, c.ok)
		}
	}
}

func TestDequantizePlain(t *testing.T) {
	// F32 little-endian 1.5 = 0x3fc00000, -0.25 = 0xbe800000
	src := []byte{0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x80, 0xbe}
	dst := make([]float32, 2)
	DequantizeRow(F32, src, dst)
	if dst[0] != 1.5 || dst[1] != -0.25 {
		t.Errorf("F32: got %v", dst)
	}
	// F16 1.0 = 0x3c00, -2.0 = 0xc000
	DequantizeRow(F16, []byte{0x00, 0x3c, 0x00, 0xc0}, dst)
	if dst[0] != 1 || dst[1] != -2 {
		t.Errorf("F16: got %v", dst)
	}
	// BF16 1.0 = 0x3f80, -2.0 = 0xc000
	DequantizeRow(BF16, []byte{0x80, 0x3f, 0x00, 0xc0}, dst)
	if dst[0] != 1 || dst[1] != -2 {
		t.Errorf("BF16: got %v", dst)
	}
}

func TestSameShape(t *testing.T) {
	for _, c := range []struct {
		a, b []int
		want bool
	}{
		{[]int{3072}, []int{1, 3072}, true}, // llama-quantize's ssm_norm.weight of a one-group model
		{[]int{1, 3072}, []int{3072}, true},
		{[]int{1, 1, 8, 4}, []int{8, 4}, true},
		{[]int{8, 4}, []int{8, 4}, true},
		{[]int{8, 1}, []int{8}, false}, // numpy-trailing ones are ggml-leading: significant
		{[]int{4, 8}, []int{8, 4}, false},
		{[]int{2, 3072}, []int{3072}, false},
		{[]int{1}, []int{}, true},
		{[]int{1}, []int{1, 1}, true},
	} {
		if got := SameShape(c.a, c.b); got != c.want {
			t.Errorf("SameShape(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestLayoutTable(t *testing.T) {
	want := map[DType][2]int{
		Q4_0: {32, 18}, Q4_1: {32, 20}, Q5_0: {32, 22}, Q5_1: {32, 24}, Q8_0: {32, 34}, IQ4_NL: {32, 18},
		Q2_K: {256, 84}, Q3_K: {256, 110}, Q4_K: {256, 144}, Q5_K: {256, 176}, Q6_K: {256, 210}, IQ4_XS: {256, 136},
		MXFP4: {32, 17}, IQ2_XXS: {256, 66}, IQ2_XS: {256, 74}, IQ2_S: {256, 82}, IQ3_XXS: {256, 98},
		IQ3_S: {256, 110}, IQ1_S: {256, 50}, IQ1_M: {256, 56},
	}
	qs := QuantizedDTypes()
	if len(qs) != len(want) {
		t.Fatalf("%d quantized types, want %d", len(qs), len(want))
	}
	for _, d := range qs {
		w := want[d]
		if d.BlockValues() != w[0] || d.BlockBytes() != w[1] {
			t.Errorf("%v: %d values in %d bytes, want %d in %d", d, d.BlockValues(), d.BlockBytes(), w[0], w[1])
		}
		if p, ok := ParseDType(strings.ToLower(d.String())); !ok || p != d {
			t.Errorf("ParseDType(%q) = %v, %v", d.String(), p, ok)
		}
	}
	if F32.Quantized() || BF16.BlockValues() != 1 || F16.BlockBytes() != 2 {
		t.Error("plain types misdescribed")
	}
}
