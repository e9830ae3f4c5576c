package tensor

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// goldenDir holds blocks quantized and dequantized by llama.cpp itself (see
// testdata/README.md for how they were made).
const goldenDir = "testdata/llamacpp"

func readF32File(t *testing.T, name string) []float32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// TestGoldenLlamaCpp decodes every type's llama.cpp-made blocks (quantized
// from a fixed input, and random bytes) and requires llama.cpp's own decoded
// floats bit for bit.
func TestGoldenLlamaCpp(t *testing.T) {
	for _, dt := range QuantizedDTypes() {
		for _, set := range []string{"quant", "random"} {
			t.Run(dt.String()+"/"+set, func(t *testing.T) {
				blocks, err := os.ReadFile(filepath.Join(goldenDir, dt.String()+"."+set))
				if err != nil {
					t.Fatal(err)
				}
				want := readF32File(t, dt.String()+"."+set+".f32")
				if rb, err := dt.RowBytes(len(want)); err != nil || rb != len(blocks) {
					t.Fatalf("%d bytes for %d values, want %d (%v)", len(blocks), len(want), rb, err)
				}
				got := make([]float32, len(want))
				DequantizeRow(dt, blocks, got)
				bad := 0
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						if bad < 5 {
							t.Errorf("value %d (block %d): got %g (%#08x), llama.cpp %g (%#08x)",
								i, i/dt.BlockValues(), got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
						}
						bad++
					}
				}
				if bad > 0 {
					t.Fatalf("%d of %d values differ", bad, len(want))
				}
			})
		}
	}
}

// TestGoldenQuantizeError quantizes llama.cpp's golden input with our
// quantizers and requires a squared error per row no worse than 1.25 times
// llama.cpp's own (from its dequantized output) plus a small absolute slack
// for rows llama.cpp represents almost exactly.
func TestGoldenQuantizeError(t *testing.T) {
	in := readF32File(t, "input.f32")
	const cols = 256
	for _, dt := range QuantizedDTypes() {
		if !CanQuantize(dt) {
			continue
		}
		ref := readF32File(t, dt.String()+".quant.f32")
		rb, _ := dt.RowBytes(cols)
		buf := make([]byte, rb)
		got := make([]float32, cols)
		for r := 0; r < len(in)/cols; r++ {
			x := in[r*cols : (r+1)*cols]
			Quantize(dt, x, buf)
			DequantizeRow(dt, buf, got)
			var eOurs, eRef, ss float64
			for i, v := range x {
				eOurs += sq(float64(got[i]) - float64(v))
				eRef += sq(float64(ref[r*cols+i]) - float64(v))
				ss += sq(float64(v))
			}
			t.Logf("%v row %d: rms error %.4g (llama.cpp %.4g), rms value %.4g", dt, r, math.Sqrt(eOurs/cols), math.Sqrt(eRef/cols), math.Sqrt(ss/cols))
			if eOurs > 1.25*eRef+1e-6*ss {
				t.Errorf("%v row %d: squared error %.4g, llama.cpp's %.4g", dt, r, eOurs, eRef)
			}
		}
	}
}

func sq(x float64) float64 { return x * x }

// TestIQIntsMatchDequant checks the integer form of every i-quant block of
// 1 to 3 bits (IQInts) against the reference decoding on llama.cpp's golden
// blocks: d·k·ls·w equals each decoded value to float32 rounding.
func TestIQIntsMatchDequant(t *testing.T) {
	for _, dt := range QuantizedDTypes() {
		if !IsIQLattice(dt) {
			continue
		}
		for _, set := range []string{"quant", "random"} {
			blocks, err := os.ReadFile(filepath.Join(goldenDir, dt.String()+"."+set))
			if err != nil {
				t.Fatal(err)
			}
			want := readF32File(t, dt.String()+"."+set+".f32")
			bb := dt.BlockBytes()
			for b := 0; b < len(blocks)/bb; b++ {
				var w [256]int8
				var ls [16]int32
				d, k := IQInts(dt, blocks[b*bb:(b+1)*bb], &w, &ls)
				for j := range 256 {
					got := float64(d) * float64(k) * float64(ls[j/16]) * float64(w[j])
					ref := float64(want[256*b+j])
					if math.Abs(got-ref) > 1e-6*math.Abs(ref)+1e-30 {
						t.Fatalf("%v %s block %d value %d: integer form %g, llama.cpp %g", dt, set, b, j, got, ref)
					}
				}
			}
		}
	}
}
