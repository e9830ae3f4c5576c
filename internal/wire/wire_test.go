package wire

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// Encode appends, Decode and Add read back, per value what
// tensor.F32ToBF16 / BF16ToF32 give (bf16) or the exact bits (f32),
// whatever the length and the bytes already in dst.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, dt := range []pb.WireDType{pb.WireDType_WIRE_DTYPE_BF16, pb.WireDType_WIRE_DTYPE_F32} {
		for _, n := range []int{0, 1, 16, 31, 1536} {
			for _, prefix := range []int{0, 3} {
				t.Run(fmt.Sprintf("%v/n=%d/prefix=%d", dt, n, prefix), func(t *testing.T) {
					src := make([]float32, n)
					for i := range src {
						src[i] = float32(rng.NormFloat64())
					}
					if n > 0 {
						src[0] = float32(math.NaN())
					}
					pre := make([]byte, prefix, prefix+1)
					for i := range pre {
						pre[i] = byte(0xA0 + i)
					}
					b := Encode(dt, pre, src)
					if err := Check(dt, b[prefix:], n); err != nil {
						t.Fatal(err)
					}
					for i := range prefix {
						if b[i] != byte(0xA0+i) {
							t.Fatalf("byte %d of dst's prefix changed", i)
						}
					}
					want := make([]float32, n)
					for i, v := range src {
						switch dt {
						case pb.WireDType_WIRE_DTYPE_F32:
							want[i] = v
							if got := binary.LittleEndian.Uint32(b[prefix+4*i:]); got != math.Float32bits(v) {
								t.Fatalf("value %d encoded %#x, want %#x", i, got, math.Float32bits(v))
							}
						default:
							want[i] = tensor.BF16ToF32(tensor.F32ToBF16(v))
							if got := binary.LittleEndian.Uint16(b[prefix+2*i:]); got != tensor.F32ToBF16(v) {
								t.Fatalf("value %d encoded %#x, want %#x", i, got, tensor.F32ToBF16(v))
							}
						}
					}
					got := make([]float32, n)
					Decode(dt, got, b[prefix:])
					sum := make([]float32, n)
					for i := range sum {
						sum[i] = 1
					}
					Add(dt, sum, b[prefix:])
					for i := range want {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("value %d decoded %#x, want %#x", i, math.Float32bits(got[i]), math.Float32bits(want[i]))
						}
						if w := 1 + want[i]; math.Float32bits(sum[i]) != math.Float32bits(w) && !(w != w && sum[i] != sum[i]) {
							t.Fatalf("value %d added %g, want %g", i, sum[i], w)
						}
					}
				})
			}
		}
	}
}

// BenchmarkBF16: a layer's worth of one token's expert traffic (the input
// row and six pair outputs of H-Tiny's 1536 values) through Encode, Decode
// and Add.
func BenchmarkBF16(b *testing.B) {
	src := make([]float32, 7*1536)
	for i := range src {
		src[i] = float32(i) * 1e-3
	}
	dst := make([]float32, len(src))
	var buf []byte
	b.SetBytes(int64(4 * len(src)))
	for b.Loop() {
		buf = Encode(pb.WireDType_WIRE_DTYPE_BF16, buf[:0], src)
		Decode(pb.WireDType_WIRE_DTYPE_BF16, dst, buf)
		Add(pb.WireDType_WIRE_DTYPE_BF16, dst, buf)
	}
}
