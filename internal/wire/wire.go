// Package wire encodes activation rows for the expert stream in the element type
// the trunk chose (bfloat16 by default, float32 for exact runs).
package wire

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/switchyard-serving/switchyard/model/tensor"
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
		for _, v := range src {
			dst = binary.LittleEndian.AppendUint16(dst, tensor.F32ToBF16(v))
		}
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
		for i := range dst {
			dst[i] = tensor.BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
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
		for i := range dst {
			dst[i] += tensor.BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	}
}
