package gguf

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Value is one metadata value: a scalar of one of the GGUF types or an array of
// them (arrays may nest). The zero Value is invalid and every getter on it reports
// false.
//
// Inside, scalars are the matching Go type (uint8 … float64, bool, string) and
// arrays are Go slices of it ([]uint32, []string, …); an array of arrays is a
// []Value.
type Value struct {
	typ  ValueType
	elem ValueType // element type of an array
	x    any
}

// NewValue wraps a Go value: uint8, int8, uint16, int16, uint32, int32, uint64,
// int64, float32, float64, bool or string, a slice of one of those (an array), or a
// []Value whose elements are all arrays (an array of arrays). Go's int, uint and
// other types are rejected, since the GGUF width would be a guess. Slices are
// copied.
func NewValue(x any) (Value, error) {
	switch v := x.(type) {
	case uint8:
		return Value{typ: TypeUint8, x: v}, nil
	case int8:
		return Value{typ: TypeInt8, x: v}, nil
	case uint16:
		return Value{typ: TypeUint16, x: v}, nil
	case int16:
		return Value{typ: TypeInt16, x: v}, nil
	case uint32:
		return Value{typ: TypeUint32, x: v}, nil
	case int32:
		return Value{typ: TypeInt32, x: v}, nil
	case uint64:
		return Value{typ: TypeUint64, x: v}, nil
	case int64:
		return Value{typ: TypeInt64, x: v}, nil
	case float32:
		return Value{typ: TypeFloat32, x: v}, nil
	case float64:
		return Value{typ: TypeFloat64, x: v}, nil
	case bool:
		return Value{typ: TypeBool, x: v}, nil
	case string:
		return Value{typ: TypeString, x: v}, nil
	case []uint8:
		return array(TypeUint8, v), nil
	case []int8:
		return array(TypeInt8, v), nil
	case []uint16:
		return array(TypeUint16, v), nil
	case []int16:
		return array(TypeInt16, v), nil
	case []uint32:
		return array(TypeUint32, v), nil
	case []int32:
		return array(TypeInt32, v), nil
	case []uint64:
		return array(TypeUint64, v), nil
	case []int64:
		return array(TypeInt64, v), nil
	case []float32:
		return array(TypeFloat32, v), nil
	case []float64:
		return array(TypeFloat64, v), nil
	case []bool:
		return array(TypeBool, v), nil
	case []string:
		return array(TypeString, v), nil
	case []Value:
		for i, e := range v {
			if e.typ != TypeArray {
				return Value{}, fmt.Errorf("%w: element %d of a []Value is a %s, not an array", ErrWriter, i, e.typ)
			}
		}
		return array(TypeArray, v), nil
	}
	return Value{}, fmt.Errorf("%w: cannot store a %T as a GGUF value", ErrWriter, x)
}

func array[T any](elem ValueType, v []T) Value {
	if v == nil {
		v = []T{}
	}
	return Value{typ: TypeArray, elem: elem, x: slices.Clone(v)}
}

// Type is the value's type (TypeArray for arrays).
func (v Value) Type() ValueType { return v.typ }

// ElemType is the element type of an array (meaningless for scalars).
func (v Value) ElemType() ValueType { return v.elem }

// Len is the number of elements of an array, 0 for a scalar.
func (v Value) Len() int {
	switch a := v.x.(type) {
	case []uint8:
		return len(a)
	case []int8:
		return len(a)
	case []uint16:
		return len(a)
	case []int16:
		return len(a)
	case []uint32:
		return len(a)
	case []int32:
		return len(a)
	case []uint64:
		return len(a)
	case []int64:
		return len(a)
	case []float32:
		return len(a)
	case []float64:
		return len(a)
	case []bool:
		return len(a)
	case []string:
		return len(a)
	case []Value:
		return len(a)
	}
	return 0
}

// Interface returns the underlying Go value (see Value). Slices are shared with
// the Value and must not be modified.
func (v Value) Interface() any { return v.x }

// Uint returns an integer scalar of any width as uint64; false for other types and
// for negative values.
func (v Value) Uint() (uint64, bool) {
	switch x := v.x.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	}
	if i, ok := v.signed(); ok && i >= 0 {
		return uint64(i), true
	}
	return 0, false
}

// Int returns an integer scalar of any width as int64; false for other types and
// for uint64 values above math.MaxInt64.
func (v Value) Int() (int64, bool) {
	switch x := v.x.(type) {
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		if x > math.MaxInt64 {
			return 0, false
		}
		return int64(x), true
	}
	return v.signed()
}

func (v Value) signed() (int64, bool) {
	switch x := v.x.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	}
	return 0, false
}

// Float returns a float32 or float64 scalar as float64.
func (v Value) Float() (float64, bool) {
	switch x := v.x.(type) {
	case float32:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// Bool returns a bool scalar.
func (v Value) Bool() (bool, bool) {
	b, ok := v.x.(bool)
	return b, ok
}

// Text returns a string scalar. (It is not called String, which formats any
// Value.)
func (v Value) Text() (string, bool) {
	s, ok := v.x.(string)
	return s, ok
}

// Strings returns a copy of an array of strings.
func (v Value) Strings() ([]string, bool) {
	s, ok := v.x.([]string)
	return slices.Clone(s), ok
}

// Ints returns an array of any integer type as int64s; false for other arrays and
// when a uint64 element exceeds math.MaxInt64.
func (v Value) Ints() ([]int64, bool) {
	switch a := v.x.(type) {
	case []uint8:
		return widen(a), true
	case []int8:
		return widen(a), true
	case []uint16:
		return widen(a), true
	case []int16:
		return widen(a), true
	case []uint32:
		return widen(a), true
	case []int32:
		return widen(a), true
	case []int64:
		return slices.Clone(a), true
	case []uint64:
		out := make([]int64, len(a))
		for i, x := range a {
			if x > math.MaxInt64 {
				return nil, false
			}
			out[i] = int64(x)
		}
		return out, true
	}
	return nil, false
}

func widen[T uint8 | int8 | uint16 | int16 | uint32 | int32](a []T) []int64 {
	out := make([]int64, len(a))
	for i, x := range a {
		out[i] = int64(x)
	}
	return out
}

// Floats returns an array of float32 or float64 as float64s.
func (v Value) Floats() ([]float64, bool) {
	switch a := v.x.(type) {
	case []float32:
		out := make([]float64, len(a))
		for i, x := range a {
			out[i] = float64(x)
		}
		return out, true
	case []float64:
		return slices.Clone(a), true
	}
	return nil, false
}

// Array returns the elements of any array as Values (scalars, or arrays for an
// array of arrays).
func (v Value) Array() ([]Value, bool) {
	if v.typ != TypeArray {
		return nil, false
	}
	if a, ok := v.x.([]Value); ok {
		return slices.Clone(a), true
	}
	out := make([]Value, v.Len())
	for i := range out {
		out[i] = v.index(i)
	}
	return out, true
}

// index returns element i of a scalar-typed array.
func (v Value) index(i int) Value {
	var x any
	switch a := v.x.(type) {
	case []uint8:
		x = a[i]
	case []int8:
		x = a[i]
	case []uint16:
		x = a[i]
	case []int16:
		x = a[i]
	case []uint32:
		x = a[i]
	case []int32:
		x = a[i]
	case []uint64:
		x = a[i]
	case []int64:
		x = a[i]
	case []float32:
		x = a[i]
	case []float64:
		x = a[i]
	case []bool:
		x = a[i]
	case []string:
		x = a[i]
	case []Value:
		return a[i]
	}
	return Value{typ: v.elem, x: x}
}

// String formats the value for people; long arrays are cut after 8 elements.
func (v Value) String() string {
	if v.typ != TypeArray {
		if s, ok := v.x.(string); ok {
			return fmt.Sprintf("%q", s)
		}
		if v.x == nil {
			return "<invalid>"
		}
		return fmt.Sprint(v.x)
	}
	n := v.Len()
	var b strings.Builder
	fmt.Fprintf(&b, "[%s x %d: ", v.elem, n)
	for i := range min(n, 8) {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(v.index(i).String())
	}
	if n > 8 {
		b.WriteString(", …")
	}
	b.WriteString("]")
	return b.String()
}
