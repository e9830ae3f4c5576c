package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestDequantizeQ8_0Hand checks Q8_0 blocks written byte by byte against values
// worked out by hand: value = d * int8(q).
func TestDequantizeQ8_0Hand(t *testing.T) {
	blk0 := make([]byte, Q8_0BlockBytes)
	blk0[0], blk0[1] = 0x00, 0x38 // d = f16 0x3800 = 0.5
	copy(blk0[2:], []byte{0x80, 0x7f, 0x01, 0xff, 0x00, 0x10, 0xf0, 0x81})
	// remaining 24 bytes are zero
	blk1 := make([]byte, Q8_0BlockBytes)
	blk1[0], blk1[1] = 0x00, 0xb4 // d = f16 0xb400 = -0.25
	copy(blk1[2:], []byte{0x04, 0xfc, 0x7f})
	blk2 := make([]byte, Q8_0BlockBytes)
	blk2[0], blk2[1] = 0x01, 0x00 // d = smallest subnormal f16 = 2^-24
	copy(blk2[2:], []byte{0x03, 0x80})

	src := append(append(append([]byte{}, blk0...), blk1...), blk2...)
	got := make([]float32, 3*Q8_0BlockValues)
	DequantizeRow(Q8_0, src, got)

	want := make([]float32, 3*Q8_0BlockValues)
	copy(want[0:], []float32{-64, 63.5, 0.5, -0.5, 0, 8, -8, -63.5})
	copy(want[32:], []float32{-1, 1, -31.75})
	copy(want[64:], []float32{3.0 / (1 << 24), -128.0 / (1 << 24)})
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("value %d: got %v, want %v", i, got[i], want[i])
		}
	}
}

// q4kTestBlock is one hand-built Q4_K block: d = 0.5, dmin = 0.25, chosen 6-bit
// scales and mins whose packed bytes were worked out by hand, and nibbles
// nib[i] = (7i + i/32) mod 16.
var (
	q4kSc  = [8]int{1, 17, 33, 63, 5, 20, 47, 63}
	q4kMin = [8]int{0, 9, 62, 31, 16, 48, 3, 63}
	// Packing (worked by hand from q4kSc / q4kMin):
	//   bytes 0-3:  sc[j] | (sc[j+4] >> 4) << 6     -> 0x01 0x51 0xa1 0xff
	//   bytes 4-7:  m[j]  | (m[j+4]  >> 4) << 6     -> 0x40 0xc9 0x3e 0xdf
	//   bytes 8-11: (sc[j+4] & 15) | (m[j+4] & 15) << 4 -> 0x05 0x04 0x3f 0xff
	q4kScaleBytes = []byte{0x01, 0x51, 0xa1, 0xff, 0x40, 0xc9, 0x3e, 0xdf, 0x05, 0x04, 0x3f, 0xff}
)

func q4kNib(i int) int { return (7*i + i/32) % 16 }

func buildQ4KBlock(dBits, dminBits uint16) []byte {
	blk := make([]byte, Q4KBlockBytes)
	blk[0], blk[1] = byte(dBits), byte(dBits>>8)
	blk[2], blk[3] = byte(dminBits), byte(dminBits>>8)
	copy(blk[4:16], q4kScaleBytes)
	// 128 bytes of nibbles: chunk c covers values 64c..64c+63; byte 32c+l holds
	// value 64c+l in its low nibble and value 64c+32+l in its high nibble.
	for c := range 4 {
		for l := range 32 {
			blk[16+32*c+l] = byte(q4kNib(64*c+l)) | byte(q4kNib(64*c+32+l))<<4
		}
	}
	return blk
}

func TestDequantizeQ4KHand(t *testing.T) {
	// Block 0: d = 0.5 (0x3800), dmin = 0.25 (0x3400).
	// Block 1: d = 1.0 (0x3c00), dmin = 0 -> values are sc * nib.
	src := append(buildQ4KBlock(0x3800, 0x3400), buildQ4KBlock(0x3c00, 0x0000)...)
	got := make([]float32, 2*Q4KBlockValues)
	DequantizeRow(Q4_K, src, got)

	for i := range Q4KBlockValues {
		j := i / 32
		want0 := 0.5*float64(q4kSc[j])*float64(q4kNib(i)) - 0.25*float64(q4kMin[j])
		if float64(got[i]) != want0 {
			t.Errorf("block 0 value %d (sub-block %d): got %v, want %v", i, j, got[i], want0)
		}
		want1 := float64(q4kSc[j]) * float64(q4kNib(i))
		if float64(got[256+i]) != want1 {
			t.Errorf("block 1 value %d (sub-block %d): got %v, want %v", i, j, got[256+i], want1)
		}
	}

	// A few values worked out fully by hand, one per sub-block
	// (nib = (7i + i/32) mod 16).
	exact := []struct {
		i    int
		want float32
	}{
		{0, 0},        // sub 0, nib 0:   0.5*1*0   - 0.25*0  = 0
		{5, 1.5},      // sub 0, nib 3:   0.5*1*3   - 0.25*0  = 1.5
		{33, 65.75},   // sub 1, nib 8:   0.5*17*8  - 0.25*9  = 68 - 2.25
		{70, 182.5},   // sub 2, nib 12:  0.5*33*12 - 0.25*62 = 198 - 15.5
		{100, 464.75}, // sub 3, nib 15:  0.5*63*15 - 0.25*31 = 472.5 - 7.75
		{130, 1},      // sub 4, nib 2:   0.5*5*2   - 0.25*16 = 5 - 4
		{161, 108},    // sub 5, nib 12:  0.5*20*12 - 0.25*48 = 120 - 12
		{200, 328.25}, // sub 6, nib 14:  0.5*47*14 - 0.25*3  = 329 - 0.75
		{255, -15.75}, // sub 7, nib 0:   0.5*63*0  - 0.25*63 = -15.75
	}
	for _, c := range exact {
		if got[c.i] != c.want {
			t.Errorf("hand value %d: got %v, want %v", c.i, got[c.i], c.want)
		}
	}
}

func TestQ4KScaleMinDecode(t *testing.T) {
	for j := range 8 {
		sc, m := Q4KScaleMin(j, q4kScaleBytes)
		if int(sc) != q4kSc[j] || int(m) != q4kMin[j] {
			t.Errorf("sub-block %d: got sc=%d m=%d, want %d %d", j, sc, m, q4kSc[j], q4kMin[j])
		}
	}
}

func TestPackQ4KScales(t *testing.T) {
	var sc, m [8]uint8
	for j := range 8 {
		sc[j], m[j] = uint8(q4kSc[j]), uint8(q4kMin[j])
	}
	got := make([]byte, 12)
	packQ4KScales(got, sc, m)
	for i := range got {
		if got[i] != q4kScaleBytes[i] {
			t.Fatalf("packed % x, want % x", got, q4kScaleBytes)
		}
	}
	// Every 6-bit pair survives packing.
	for a := range 64 {
		for j := range 8 {
			sc[j], m[j] = uint8((a+11*j)%64), uint8((a*5+3*j)%64)
		}
		packQ4KScales(got, sc, m)
		for j := range 8 {
			s, mm := Q4KScaleMin(j, got)
			if s != sc[j] || mm != m[j] {
				t.Fatalf("a=%d sub-block %d: decoded %d,%d want %d,%d", a, j, s, mm, sc[j], m[j])
			}
		}
	}
}

func relRMS(x, y []float32) float64 {
	var num, den float64
	for i := range x {
		d := float64(x[i]) - float64(y[i])
		num += d * d
		den += float64(x[i]) * float64(x[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func roundTrip(t *testing.T, dt DType, x []float32) []float32 {
	t.Helper()
	n, err := dt.RowBytes(len(x))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, n)
	switch dt {
	case Q8_0:
		QuantizeQ8_0(x, buf)
	case Q4_K:
		QuantizeQ4_K(x, buf)
	}
	y := make([]float32, len(x))
	DequantizeRow(dt, buf, y)
	return y
}

type dist struct {
	name string
	gen  func(r *rand.Rand, i int) float32
}

var dists = []dist{
	{"normal", func(r *rand.Rand, _ int) float32 { return float32(r.NormFloat64()) }},
	{"normal*0.02", func(r *rand.Rand, _ int) float32 { return float32(0.02 * r.NormFloat64()) }},
	{"normal*300", func(r *rand.Rand, _ int) float32 { return float32(300 * r.NormFloat64()) }},
	{"uniform", func(r *rand.Rand, _ int) float32 { return float32(2*r.Float64() - 1) }},
	{"positive", func(r *rand.Rand, _ int) float32 { return float32(1 + r.Float64()) }},
	{"negative", func(r *rand.Rand, _ int) float32 { return float32(-1 - r.Float64()) }},
	{"laplace", func(r *rand.Rand, _ int) float32 { return float32(r.ExpFloat64() * float64(1-2*r.IntN(2))) }},
	{"varying scale", func(r *rand.Rand, i int) float32 {
		return float32(r.NormFloat64() * math.Pow(4, float64(i/32%8)-4))
	}},
}

func TestQuantizeQ8_0RoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, d := range dists {
		x := make([]float32, 4096)
		for i := range x {
			x[i] = d.gen(r, i)
		}
		y := roundTrip(t, Q8_0, x)
		if e := relRMS(x, y); e > 0.01 {
			t.Errorf("%s: Q8_0 relative RMS error %.4f > 1%%", d.name, e)
		}
		// Per block, every value is within half a step (plus the f16 rounding of d).
		for b := 0; b < len(x)/32; b++ {
			var amax float64
			for _, v := range x[32*b : 32*b+32] {
				amax = max(amax, math.Abs(float64(v)))
			}
			step := amax / 127
			for i := 32 * b; i < 32*b+32; i++ {
				if diff := math.Abs(float64(x[i] - y[i])); diff > 0.5*step*1.01+1e-30 {
					t.Fatalf("%s: value %d: |%v - %v| = %g > half step %g", d.name, i, x[i], y[i], diff, step/2)
				}
			}
		}
	}
}

func TestQuantizeQ4KRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, d := range dists {
		x := make([]float32, 8192)
		for i := range x {
			x[i] = d.gen(r, i)
		}
		y := roundTrip(t, Q4_K, x)
		e := relRMS(x, y)
		t.Logf("%-14s Q4_K relative RMS error %.4f", d.name, e)
		limit := 0.08 // a Gaussian row lands near 0.071
		if d.name == "laplace" {
			// Heavy tails stretch each sub-block's range: even the unquantized
			// per-sub-block optimum of 16 levels is about 0.083 here.
			limit = 0.09
		}
		if e > limit {
			t.Errorf("%s: Q4_K relative RMS error %.4f > %.2f", d.name, e, limit)
		}
	}
}

func TestQuantizeSpecialBlocks(t *testing.T) {
	for _, dt := range []DType{Q8_0, Q4_K} {
		n := 256
		zeros := make([]float32, n)
		if y := roundTrip(t, dt, zeros); relRMS(zeros, y) != 0 {
			t.Errorf("%v: zeros came back as %v", dt, y[:8])
		}
		for _, c := range []float32{3, -3, 0.01} {
			x := make([]float32, n)
			for i := range x {
				x[i] = c
			}
			y := roundTrip(t, dt, x)
			if e := relRMS(x, y); e > 0.01 {
				t.Errorf("%v: constant %v: relative error %.4f (got %v)", dt, c, e, y[0])
			}
		}
		// One huge outlier: the rest may be crushed, but the outlier must survive
		// and nothing may be NaN.
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(i%7) * 0.01
		}
		x[17] = 1000
		y := roundTrip(t, dt, x)
		if math.Abs(float64(y[17])-1000)/1000 > 0.05 {
			t.Errorf("%v: outlier 1000 came back as %v", dt, y[17])
		}
		// Values too large for an f16 scale saturate instead of becoming NaN.
		huge := make([]float32, n)
		for i := range huge {
			huge[i] = float32(i%5-2) * 1e12
		}
		for i, v := range roundTrip(t, dt, huge) {
			if v != v || math.IsInf(float64(v), 0) || (huge[i] != 0 && math.Signbit(float64(v)) != math.Signbit(float64(huge[i]))) {
				t.Fatalf("%v: huge value %d: %v came back as %v", dt, i, huge[i], v)
			}
		}
		// Non-finite inputs must not panic.
		x[3] = float32(math.NaN())
		x[4] = float32(math.Inf(1))
		_ = roundTrip(t, dt, x)
	}
}

func TestQuantizeLengthPanics(t *testing.T) {
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s: no panic", name)
			}
		}()
		f()
	}
	mustPanic("Q8_0 partial block", func() { QuantizeQ8_0(make([]float32, 31), make([]byte, 34)) })
	mustPanic("Q8_0 short dst", func() { QuantizeQ8_0(make([]float32, 32), make([]byte, 33)) })
	mustPanic("Q4_K partial block", func() { QuantizeQ4_K(make([]float32, 255), make([]byte, 144)) })
	mustPanic("Q4_K long dst", func() { QuantizeQ4_K(make([]float32, 256), make([]byte, 145)) })
}

func BenchmarkQuantizeQ4_K(b *testing.B) {
	r := rand.New(rand.NewPCG(5, 6))
	x := make([]float32, 4096)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	dst := make([]byte, 4096/256*Q4KBlockBytes)
	b.SetBytes(4 * 4096)
	for b.Loop() {
		QuantizeQ4_K(x, dst)
	}
}
