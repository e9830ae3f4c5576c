package gguf

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// ValueType is the type tag of a metadata value.
type ValueType uint32

// Metadata value types, as numbered by the GGUF specification.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = [...]string{
	TypeUint8: "uint8", TypeInt8: "int8", TypeUint16: "uint16", TypeInt16: "int16",
	TypeUint32: "uint32", TypeInt32: "int32", TypeFloat32: "float32", TypeBool: "bool",
	TypeString: "string", TypeArray: "array", TypeUint64: "uint64", TypeInt64: "int64",
	TypeFloat64: "float64",
}

func (t ValueType) valid() bool { return t <= TypeFloat64 }

// String returns the specification's name of the type.
func (t ValueType) String() string {
	if t.valid() {
		return valueTypeNames[t]
	}
	return fmt.Sprintf("ValueType(%d)", uint32(t))
}

// fixedSize is the encoded size of a fixed-size scalar type (0 for string/array).
func (t ValueType) fixedSize() int {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// minSize is the smallest encoding of one value of the type.
func (t ValueType) minSize() int {
	switch t {
	case TypeString:
		return 8 // length
	case TypeArray:
		return 4 + 8 // element type + count
	}
	return t.fixedSize()
}

// GGMLType is a ggml tensor element type id.
type GGMLType uint32

// GGML tensor types (ggml.h). Ids 4, 5, 31-33 and 36-38 belonged to types that were
// removed from ggml.
const (
	GGMLTypeF32     GGMLType = 0
	GGMLTypeF16     GGMLType = 1
	GGMLTypeQ4_0    GGMLType = 2
	GGMLTypeQ4_1    GGMLType = 3
	GGMLTypeQ5_0    GGMLType = 6
	GGMLTypeQ5_1    GGMLType = 7
	GGMLTypeQ8_0    GGMLType = 8
	GGMLTypeQ8_1    GGMLType = 9
	GGMLTypeQ2_K    GGMLType = 10
	GGMLTypeQ3_K    GGMLType = 11
	GGMLTypeQ4_K    GGMLType = 12
	GGMLTypeQ5_K    GGMLType = 13
	GGMLTypeQ6_K    GGMLType = 14
	GGMLTypeQ8_K    GGMLType = 15
	GGMLTypeIQ2_XXS GGMLType = 16
	GGMLTypeIQ2_XS  GGMLType = 17
	GGMLTypeIQ3_XXS GGMLType = 18
	GGMLTypeIQ1_S   GGMLType = 19
	GGMLTypeIQ4_NL  GGMLType = 20
	GGMLTypeIQ3_S   GGMLType = 21
	GGMLTypeIQ2_S   GGMLType = 22
	GGMLTypeIQ4_XS  GGMLType = 23
	GGMLTypeI8      GGMLType = 24
	GGMLTypeI16     GGMLType = 25
	GGMLTypeI32     GGMLType = 26
	GGMLTypeI64     GGMLType = 27
	GGMLTypeF64     GGMLType = 28
	GGMLTypeIQ1_M   GGMLType = 29
	GGMLTypeBF16    GGMLType = 30
	GGMLTypeTQ1_0   GGMLType = 34
	GGMLTypeTQ2_0   GGMLType = 35
	GGMLTypeMXFP4   GGMLType = 39
)

var ggmlTypeNames = map[GGMLType]string{
	GGMLTypeF32: "F32", GGMLTypeF16: "F16", GGMLTypeQ4_0: "Q4_0", GGMLTypeQ4_1: "Q4_1",
	GGMLTypeQ5_0: "Q5_0", GGMLTypeQ5_1: "Q5_1", GGMLTypeQ8_0: "Q8_0", GGMLTypeQ8_1: "Q8_1",
	GGMLTypeQ2_K: "Q2_K", GGMLTypeQ3_K: "Q3_K", GGMLTypeQ4_K: "Q4_K", GGMLTypeQ5_K: "Q5_K",
	GGMLTypeQ6_K: "Q6_K", GGMLTypeQ8_K: "Q8_K", GGMLTypeIQ2_XXS: "IQ2_XXS",
	GGMLTypeIQ2_XS: "IQ2_XS", GGMLTypeIQ3_XXS: "IQ3_XXS", GGMLTypeIQ1_S: "IQ1_S",
	GGMLTypeIQ4_NL: "IQ4_NL", GGMLTypeIQ3_S: "IQ3_S", GGMLTypeIQ2_S: "IQ2_S",
	GGMLTypeIQ4_XS: "IQ4_XS", GGMLTypeI8: "I8", GGMLTypeI16: "I16", GGMLTypeI32: "I32",
	GGMLTypeI64: "I64", GGMLTypeF64: "F64", GGMLTypeIQ1_M: "IQ1_M", GGMLTypeBF16: "BF16",
	GGMLTypeTQ1_0: "TQ1_0", GGMLTypeTQ2_0: "TQ2_0", GGMLTypeMXFP4: "MXFP4",
}

// String returns ggml's name of the type ("Q4_K"), or GGMLType(n) for unknown ids.
func (t GGMLType) String() string {
	if s, ok := ggmlTypeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("GGMLType(%d)", uint32(t))
}

// engineTypes pairs the ggml types the engine computes with and its element types.
var engineTypes = []struct {
	g GGMLType
	d tensor.DType
}{
	{GGMLTypeF32, tensor.F32}, {GGMLTypeF16, tensor.F16}, {GGMLTypeBF16, tensor.BF16},
	{GGMLTypeQ8_0, tensor.Q8_0}, {GGMLTypeQ4_K, tensor.Q4_K}, {GGMLTypeQ6_K, tensor.Q6_K},
	{GGMLTypeQ5_K, tensor.Q5_K}, {GGMLTypeQ4_0, tensor.Q4_0}, {GGMLTypeQ4_1, tensor.Q4_1},
	{GGMLTypeQ5_0, tensor.Q5_0}, {GGMLTypeQ5_1, tensor.Q5_1}, {GGMLTypeQ2_K, tensor.Q2_K},
	{GGMLTypeQ3_K, tensor.Q3_K}, {GGMLTypeIQ4_NL, tensor.IQ4_NL}, {GGMLTypeIQ4_XS, tensor.IQ4_XS},
	{GGMLTypeMXFP4, tensor.MXFP4}, {GGMLTypeIQ2_XXS, tensor.IQ2_XXS}, {GGMLTypeIQ2_XS, tensor.IQ2_XS},
	{GGMLTypeIQ2_S, tensor.IQ2_S}, {GGMLTypeIQ3_XXS, tensor.IQ3_XXS}, {GGMLTypeIQ3_S, tensor.IQ3_S},
	{GGMLTypeIQ1_S, tensor.IQ1_S}, {GGMLTypeIQ1_M, tensor.IQ1_M},
}

// DType maps the type to the engine's element type; ok is false for types the
// engine does not compute with.
func (t GGMLType) DType() (d tensor.DType, ok bool) {
	for _, e := range engineTypes {
		if e.g == t {
			return e.d, true
		}
	}
	return 0, false
}

// ggmlTypeOf maps an engine element type to its ggml id.
func ggmlTypeOf(d tensor.DType) (GGMLType, bool) {
	for _, e := range engineTypes {
		if e.d == d {
			return e.g, true
		}
	}
	return 0, false
}

// SupportedTypes lists the ggml tensor types the engine computes with.
func SupportedTypes() []GGMLType {
	out := make([]GGMLType, len(engineTypes))
	for i, e := range engineTypes {
		out[i] = e.g
	}
	return out
}

// blockLayout gives the values per block and bytes per block of the types whose
// layout this package knows (enough to bounds-check tensors it cannot decode).
func (t GGMLType) blockLayout() (values, size uint64, ok bool) {
	switch t {
	case GGMLTypeF32, GGMLTypeI32:
		return 1, 4, true
	case GGMLTypeF16, GGMLTypeBF16, GGMLTypeI16:
		return 1, 2, true
	case GGMLTypeI8:
		return 1, 1, true
	case GGMLTypeI64, GGMLTypeF64:
		return 1, 8, true
	case GGMLTypeQ4_0:
		return 32, 18, true
	case GGMLTypeQ4_1:
		return 32, 20, true
	case GGMLTypeQ5_0:
		return 32, 22, true
	case GGMLTypeQ5_1:
		return 32, 24, true
	case GGMLTypeQ8_0:
		return 32, 34, true
	case GGMLTypeQ8_1:
		return 32, 36, true
	case GGMLTypeQ2_K:
		return 256, 84, true
	case GGMLTypeQ3_K:
		return 256, 110, true
	case GGMLTypeQ4_K:
		return 256, 144, true
	case GGMLTypeQ5_K:
		return 256, 176, true
	case GGMLTypeQ6_K:
		return 256, 210, true
	case GGMLTypeQ8_K:
		return 256, 292, true
	case GGMLTypeIQ4_NL:
		return 32, 18, true
	case GGMLTypeIQ4_XS:
		return 256, 136, true
	case GGMLTypeMXFP4:
		return 32, 17, true
	case GGMLTypeIQ2_XXS:
		return 256, 66, true
	case GGMLTypeIQ2_XS:
		return 256, 74, true
	case GGMLTypeIQ2_S:
		return 256, 82, true
	case GGMLTypeIQ3_XXS:
		return 256, 98, true
	case GGMLTypeIQ3_S:
		return 256, 110, true
	case GGMLTypeIQ1_S:
		return 256, 50, true
	case GGMLTypeIQ1_M:
		return 256, 56, true
	}
	return 0, 0, false
}

// tensorBytes computes the data size of a tensor of type t with dimensions ne
// (ggml order). ok is false when the type's layout is unknown; err reports a row
// that is not whole blocks or a size that overflows.
func tensorBytes(t GGMLType, ne []uint64) (n uint64, ok bool, err error) {
	bv, bs, ok := t.blockLayout()
	if !ok {
		return 0, false, nil
	}
	if len(ne) == 0 {
		return 0, true, fmt.Errorf("no dimensions")
	}
	if ne[0]%bv != 0 {
		return 0, true, fmt.Errorf("row of %d values is not a whole number of %s blocks (%d)", ne[0], t, bv)
	}
	hi, n := bits.Mul64(ne[0]/bv, bs)
	if hi != 0 {
		return 0, true, fmt.Errorf("dimensions %v overflow", ne)
	}
	for _, d := range ne[1:] {
		hi, lo := bits.Mul64(n, d)
		if hi != 0 || lo > math.MaxInt64 {
			return 0, true, fmt.Errorf("dimensions %v overflow", ne)
		}
		n = lo
	}
	if n > math.MaxInt64 {
		return 0, true, fmt.Errorf("dimensions %v overflow", ne)
	}
	return n, true, nil
}
