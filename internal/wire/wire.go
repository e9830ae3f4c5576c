// Package wire encodes activation rows for the expert stream in the element type
// the trunk chose (bfloat16 by default, float32 for exact runs). The bf16
// conversions run model/kernels' vector kernels (tensor.F32ToBF16's bits).
package wire

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/switchyard-serving/switchyard/model/kernels"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// Size is the bytes per value of a wire type (0 for an unknown type).
func Size(dt pb.WireDType) int {
	switch dt {
	case pb.WireDType_WIRE_DTYPE_BF16:
		return 2
	case pb.WireDType_WIRE_DTYPE_F32:
		return 4
	}
	return 0
}

// Check reports whether b holds exactly n values of type dt.
func Check(dt pb.WireDType, b []byte, n int) error {
	sz := Size(dt)
	if sz == 0 {
		return fmt.Errorf("wire: unknown dtype %v", dt)
	}
	if len(b) != n*sz {
		return fmt.Errorf("wire: %d bytes, want %d values x %d bytes = %d", len(b), n, sz, n*sz)
	}
	return nil
}

// Encode appends src in type dt to dst.
func Encode(dt pb.WireDType, dst []byte, src []float32) []byte {
	switch dt {
	case pb.WireDType_WIRE_DTYPE_F32:
		for _, v := range src {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
		}
	default:
		n := len(dst)
		dst = slices.Grow(dst, 2*len(src))[:n+2*len(src)]
		kernels.EncodeBF16(dst[n:], src)
	}
	return dst
}

// Decode writes len(dst) values of type dt from src into dst.
func Decode(dt pb.WireDType, dst []float32, src []byte) {
	switch dt {
	case pb.WireDType_WIRE_DTYPE_F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	default:
		kernels.DecodeBF16(dst, src)
	}
}

// Add adds len(dst) values of type dt from src into dst.
func Add(dt pb.WireDType, dst []float32, src []byte) {
	switch dt {
	case pb.WireDType_WIRE_DTYPE_F32:
		for i := range dst {
			dst[i] += math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	default:
		kernels.AddBF16(dst, src)
	}
}
