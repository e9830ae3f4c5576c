package cuda

import (
	"fmt"
	"math"
)

// packArgs encodes kernel arguments one per 8-byte slot, as cuLaunchKernel reads
// them through its kernelParams pointers: each pointer addresses a slot and the
// driver copies the parameter's own size from it (little-endian, so a 4-byte
// parameter is the slot's low half). Supported: DevPtr, int32, uint32, int64,
// uint64, float32 and int (which must fit in int32: kernels take int).
func packArgs(dst []uint64, args ...any) ([]uint64, error) {
	dst = dst[:0]
	for i, a := range args {
		var v uint64
		switch x := a.(type) {
		case DevPtr:
			v = uint64(x)
		case int32:
			v = uint64(uint32(x))
		case uint32:
			v = uint64(x)
		case int64:
			v = uint64(x)
		case uint64:
			v = x
		case float32:
			v = uint64(math.Float32bits(x))
		case int:
			if x < math.MinInt32 || x > math.MaxInt32 {
				return nil, fmt.Errorf("cuda: kernel argument %d: int %d does not fit int32", i, x)
			}
			v = uint64(uint32(int32(x)))
		default:
			return nil, fmt.Errorf("cuda: kernel argument %d: unsupported type %T", i, a)
		}
		dst = append(dst, v)
	}
	return dst, nil
}

// ArgInt32 and the other readers decode a packed slot (for Fake kernels).
func ArgInt32(v uint64) int32 { return int32(uint32(v)) }

// ArgFloat32 decodes a packed float32 slot.
func ArgFloat32(v uint64) float32 { return math.Float32frombits(uint32(v)) }

// ArgPtr decodes a packed DevPtr slot.
func ArgPtr(v uint64) DevPtr { return DevPtr(v) }
