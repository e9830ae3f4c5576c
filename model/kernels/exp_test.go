package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// ulpDiff is the distance in float32 ulps between two finite, same-signed values.
func ulpDiff(a, b float32) int64 {
	d := int64(math.Float32bits(a)) - int64(math.Float32bits(b))
	if d < 0 {
		d = -d
	}
	return d
}

func TestExpAgreesWithMathExp(t *testing.T) {
	cases := []struct {
		x    float32
		want float32
	}{
		{0, 1}, {1, float32(math.E)}, {-1, float32(1 / math.E)},
		{float32(math.NaN()), float32(math.NaN())},
		{100, float32(math.Inf(1))}, {-100, 0}, {float32(math.Inf(-1)), 0},
	}
	for _, c := range cases {
		got := Exp(c.x)
		if c.want != c.want {
			if got == got {
				t.Errorf("Exp(NaN) = %v", got)
			}
			continue
		}
		if ulpDiff(got, c.want) > 2 {
			t.Errorf("Exp(%v) = %v, want %v", c.x, got, c.want)
		}
	}
	// A dense sweep over the whole normal range.
	worst := int64(0)
	for x := float32(-87.3); x < 88.7; x += 0.00137 {
		want := float32(math.Exp(float64(x)))
		if d := ulpDiff(Exp(x), want); d > worst {
			worst = d
			if d > 3 {
				t.Fatalf("Exp(%v) = %v, want %v (%d ulp)", x, Exp(x), want, d)
			}
		}
	}
	t.Logf("worst difference %d ulp", worst)
}

func FuzzExpShift(f *testing.F) {
	f.Add(float32(0), float32(-3), float32(2.5), float32(-80))
	f.Fuzz(func(t *testing.T, a, b, c, m float32) {
		x := []float32{a, b, c}
		for _, v := range append(x, m) {
			if v != v || math.IsInf(float64(v), 0) || math.Abs(float64(v)) > 1e4 {
				return
			}
		}
		y := append([]float32(nil), x...)
		s, sr := ExpShift(x, m), ExpShiftRef(y, m)
		for i := range x {
			if y[i] < 1.2e-38 { // the fast path flushes results below the smallest normal
				if x[i] > 1.2e-38 {
					t.Fatalf("exp(%v) = %v, want %v", x[i], x[i], y[i])
				}
				continue
			}
			if math.IsInf(float64(y[i]), 1) != math.IsInf(float64(x[i]), 1) || ulpDiff(x[i], y[i]) > 3 {
				t.Fatalf("value %d: %v vs %v", i, x[i], y[i])
			}
		}
		if !math.IsInf(s, 0) && math.Abs(s-sr) > 1e-6*math.Abs(sr)+1e-37 {
			t.Fatalf("sum %v vs %v", s, sr)
		}
	})
}

func BenchmarkExpShift(b *testing.B) {
	src := make([]float32, 4096)
	for i := range src {
		src[i] = -float32(i%200) * 0.1
	}
	x := make([]float32, len(src))
	b.SetBytes(4 * int64(len(x)))
	for b.Loop() {
		copy(x, src)
		ExpShift(x, 0)
	}
}

// TestExpShiftLevels checks every kernel level (assembly flavours included, with
// their scalar tails) against math.Exp on lengths around the vector widths.
func TestExpShiftLevels(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, l := range SupportedLevels() {
		prev, err := SetKernelLevel(l)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0, 1, 7, 8, 15, 16, 17, 31, 33, 64, 255, 1000} {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(rng.NormFloat64() * 30)
			}
			if n > 3 {
				x[1], x[2] = -200, float32(math.Inf(-1)) // masked or far below the max
			}
			nan := -1
			if n >= 16 {
				nan = n - 12 // in the vector body on every level
				x[nan] = float32(math.NaN())
			}
			m := MaxRef(x) // ignores the NaN
			got, want := append([]float32(nil), x...), append([]float32(nil), x...)
			s, sr := ExpShift(got, m), ExpShiftRef(want, m)
			if m != m {
				t.Fatal("the maximum is NaN")
			}
			for i := range got {
				if i == nan {
					if got[i] == got[i] {
						t.Fatalf("level %v n %d: exp(NaN) = %v", l, n, got[i])
					}
					continue
				}
				if want[i] < 1.2e-38 {
					if got[i] > 1.2e-38 {
						t.Fatalf("level %v n %d: exp(%v) = %v, want %v", l, n, x[i]-m, got[i], want[i])
					}
					continue
				}
				if d := ulpDiff(got[i], want[i]); d > 3 {
					t.Fatalf("level %v n %d: exp(%v) = %v, want %v (%d ulp)", l, n, x[i]-m, got[i], want[i], d)
				}
			}
			if nan >= 0 {
				if s == s {
					t.Fatalf("level %v n %d: sum %v with a NaN", l, n, s)
				}
				continue
			}
			if math.Abs(s-sr) > 1e-6*sr {
				t.Fatalf("level %v n %d: sum %v, want %v", l, n, s, sr)
			}
		}
		if _, err := SetKernelLevel(prev); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMaxLevels(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	for _, l := range SupportedLevels() {
		if _, err := SetKernelLevel(l); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0, 1, 7, 8, 9, 16, 17, 63, 64, 65, 1000} {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(rng.NormFloat64()) - 100
			}
			for pos := range x { // the maximum at every position: body, tail, first lane
				if pos%5 != 0 && pos != n-1 {
					continue
				}
				y := append([]float32(nil), x...)
				y[pos] = 7
				if got := Max(y); got != 7 {
					t.Fatalf("level %v n %d max at %d: got %v", l, n, pos, got)
				}
			}
			if got, want := Max(x), MaxRef(x); got != want {
				t.Fatalf("level %v n %d: got %v want %v", l, n, got, want)
			}
		}
	}
}

func TestSiLUMulLevels(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	for _, l := range SupportedLevels() {
		if _, err := SetKernelLevel(l); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0, 1, 15, 16, 17, 511, 512, 513, 1500} {
			g, u := make([]float32, n), make([]float32, n)
			for i := range g {
				g[i] = float32(rng.NormFloat64() * 8)
				u[i] = float32(rng.NormFloat64())
			}
			if n > 4 {
				g[0], g[1], g[2] = 100, -100, 0 // saturated both ways, and zero
			}
			for _, withU := range []bool{true, false} {
				uu := u
				if !withU {
					uu = nil
				}
				got, want := make([]float32, n), make([]float32, n)
				SiLUMul(got, g, uu)
				SiLUMulRef(want, g, uu)
				for i := range got {
					if d := math.Abs(float64(got[i] - want[i])); d > 1e-6*math.Abs(float64(want[i]))+1e-30 {
						t.Fatalf("level %v n %d u %v: silu(%v) = %v, want %v", l, n, withU, g[i], got[i], want[i])
					}
				}
				inPlace := append([]float32(nil), g...) // dst aliasing g
				SiLUMul(inPlace, inPlace, uu)
				for i := range inPlace {
					if inPlace[i] != got[i] {
						t.Fatalf("level %v: in place %v, out of place %v", l, inPlace[i], got[i])
					}
				}
			}
		}
	}
}

// TestSiLUMulAsmSameBits: the AVX-512 kernel does the operations of
// SiLUMul's Go loop around the AVX-512 expShift, so both give the same bits.
func TestSiLUMulAsmSameBits(t *testing.T) {
	if maxLevel < LevelAVX512 {
		t.Skip("no AVX-512")
	}
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	rng := rand.New(rand.NewPCG(13, 14))
	g, u := make([]float32, 4096), make([]float32, 4096)
	for i := range g {
		g[i] = float32(rng.NormFloat64() * 8)
		u[i] = float32(rng.NormFloat64())
	}
	g[0], g[1], g[2], g[3] = 100, -100, 0, float32(math.Copysign(0, -1))
	SetKernelLevel(LevelAVX512)
	for _, uu := range [][]float32{u, nil} {
		got := make([]float32, len(g))
		SiLUMul(got, g, uu)
		// The loop SiLUMul runs on the tail, over the whole (its exp is the
		// same assembly for lengths that are multiples of 16).
		e := make([]float32, len(g))
		for i, v := range g {
			e[i] = -v
		}
		ExpShift(e, 0)
		for i, v := range g {
			want := v / (1 + e[i])
			if uu != nil {
				want *= uu[i]
			}
			if math.Float32bits(got[i]) != math.Float32bits(want) {
				t.Fatalf("u %v: silu(%v): kernel %v, Go loop %v", uu != nil, v, got[i], want)
			}
		}
	}
}

// SumExpShift returns, at every level, what ExpShift sums (within the
// reassociation of the tail's chains) without writing x, and ExpShift's
// twin's sum within float32 exponentials' error.
func TestSumExpShift(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	forEachLevel(t, func(t *testing.T) {
		for _, n := range []int{0, 1, 7, 8, 15, 16, 17, 31, 33, 100352} {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(rng.NormFloat64() * 6)
			}
			if n > 3 {
				x[2] = float32(math.Inf(-1))
			}
			m := MaxRef(x)
			keep := append([]float32(nil), x...)
			got := SumExpShift(x, m)
			for i := range x {
				if math.Float32bits(x[i]) != math.Float32bits(keep[i]) {
					t.Fatalf("n %d: x[%d] written", n, i)
				}
			}
			want := ExpShift(append([]float32(nil), x...), m)
			ref := SumExpShiftRef(x, m)
			if math.Abs(got-want) > 1e-12*math.Max(1, want) {
				t.Fatalf("n %d: SumExpShift %v, ExpShift's sum %v", n, got, want)
			}
			if math.Abs(got-ref) > 1e-6*math.Max(1, ref) {
				t.Fatalf("n %d: SumExpShift %v, twin %v", n, got, ref)
			}
		}
	})
}
