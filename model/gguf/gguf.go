package gguf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"slices"
	"strings"

	"github.com/switchyard-serving/switchyard/model/internal/fileio"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Errors returned by this package; every error wraps one of them.
var (
	// ErrFormat reports input that is not a well-formed GGUF file.
	ErrFormat = errors.New("gguf: bad format")
	// ErrUnsupported reports a well-formed file this package cannot use: another
	// version or byte order, or a tensor type the engine does not compute with.
	ErrUnsupported = errors.New("gguf: unsupported")
	// ErrNotFound reports a tensor that is not in the file.
	ErrNotFound = errors.New("gguf: tensor not found")
	// ErrWriter reports invalid input to the Writer.
	ErrWriter = errors.New("gguf: bad writer input")
)

// Magic is the first four bytes of every GGUF file.
const Magic = "GGUF"

// DefaultAlignment is the data alignment when general.alignment is absent.
const DefaultAlignment = 32

// AlignmentKey is the metadata key that overrides DefaultAlignment.
const AlignmentKey = "general.alignment"

// maxDims is ggml's GGML_MAX_DIMS.
const maxDims = 4

// maxNesting bounds arrays of arrays.
const maxNesting = 8

// TensorInfo describes one tensor as the header records it.
type TensorInfo struct {
	Name   string
	Dims   []uint64 // ggml ne order: fastest-varying dimension first
	Type   GGMLType
	Offset uint64 // from the start of the data section
}

// Shape returns the dimensions in numpy order (Dims reversed).
func (t TensorInfo) Shape() []int {
	s := make([]int, len(t.Dims))
	for i, d := range t.Dims {
		s[len(s)-1-i] = int(d) // Parse checked every dimension fits an int
	}
	return s
}

type keyValue struct {
	key string
	val Value
}

// File is one parsed GGUF file.
type File struct {
	path      string
	mapped    []byte // the mapping to release on Close; nil after Parse
	version   uint32
	kvs       []keyValue
	kvIndex   map[string]int
	tensors   []TensorInfo
	tIndex    map[string]int
	sizes     []uint64 // data bytes per tensor; 0 with known=false for unknown types
	known     []bool
	alignment uint64
	dataOff   uint64 // absolute offset of the data section
	data      []byte // the data section (possibly empty)
}

// Open memory-maps the file at path and parses it.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file", path, ErrFormat)
	}
	size := st.Size()
	if size < headerBytes {
		return nil, fmt.Errorf("%s: %w: file of %d bytes is shorter than the %d-byte header", path, ErrFormat, size, headerBytes)
	}
	if size > math.MaxInt {
		return nil, fmt.Errorf("%s: %w: file of %d bytes is too large to map", path, ErrFormat, size)
	}
	b, err := fileio.Map(f, int(size))
	if err != nil {
		return nil, fmt.Errorf("gguf: map %s: %w", path, err)
	}
	file, err := Parse(b)
	if err != nil {
		_ = fileio.Unmap(b)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	file.path = path
	file.mapped = b
	return file, nil
}

// headerBytes is magic + version + tensor count + kv count.
const headerBytes = 4 + 4 + 8 + 8

// Parse reads a GGUF file held in b. Tensor data aliases b; Close is a no-op.
func Parse(b []byte) (*File, error) {
	if len(b) < headerBytes {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the %d-byte header", ErrFormat, len(b), headerBytes)
	}
	if string(b[:4]) != Magic {
		return nil, fmt.Errorf("%w: bad magic %q (want %q)", ErrFormat, b[:4], Magic)
	}
	d := &decoder{b: b, off: 4}
	version, _ := d.u32()
	switch {
	case version == 2 || version == 3:
	case version == 1:
		return nil, fmt.Errorf("%w: GGUF version 1", ErrUnsupported)
	case bits.ReverseBytes32(version) >= 1 && bits.ReverseBytes32(version) <= 3:
		return nil, fmt.Errorf("%w: big-endian GGUF (version %d)", ErrUnsupported, bits.ReverseBytes32(version))
	default:
		return nil, fmt.Errorf("%w: GGUF version %d", ErrUnsupported, version)
	}
	nTensors, _ := d.u64()
	nKV, _ := d.u64()
	// Every kv needs at least a key length, a type and one byte of value; every
	// tensor info a name length, n_dims, one dimension, a type and an offset.
	const minKV, minTensor = 8 + 4 + 1, 8 + 4 + 8 + 4 + 8
	if nKV > d.left()/minKV {
		return nil, fmt.Errorf("%w: kv count %d cannot fit in the %d bytes left", ErrFormat, nKV, d.left())
	}
	if nTensors > d.left()/minTensor {
		return nil, fmt.Errorf("%w: tensor count %d cannot fit in the %d bytes left", ErrFormat, nTensors, d.left())
	}

	f := &File{
		version:   version,
		kvs:       make([]keyValue, 0, nKV),
		kvIndex:   make(map[string]int, nKV),
		tensors:   make([]TensorInfo, 0, nTensors),
		tIndex:    make(map[string]int, nTensors),
		alignment: DefaultAlignment,
	}
	for i := range nKV {
		start := d.off
		key, err := d.str()
		if err != nil {
			return nil, fmt.Errorf("%w: key of kv %d at offset %d: %v", ErrFormat, i, start, err)
		}
		t, err := d.u32()
		if err != nil {
			return nil, fmt.Errorf("%w: kv %q: type: %v", ErrFormat, key, err)
		}
		val, err := d.value(ValueType(t), 0)
		if err != nil {
			return nil, fmt.Errorf("%w: kv %q: %v", ErrFormat, key, err)
		}
		if _, dup := f.kvIndex[key]; dup {
			return nil, fmt.Errorf("%w: kv %q appears twice", ErrFormat, key)
		}
		if key == AlignmentKey {
			a, ok := val.Uint()
			if !ok || a == 0 || a&(a-1) != 0 || a > 1<<30 {
				return nil, fmt.Errorf("%w: %s = %v is not a power-of-two integer", ErrFormat, AlignmentKey, val)
			}
			f.alignment = a
		}
		f.kvIndex[key] = len(f.kvs)
		f.kvs = append(f.kvs, keyValue{key, val})
	}

	for i := range nTensors {
		start := d.off
		ti, err := d.tensorInfo()
		if err != nil {
			if ti.Name != "" {
				return nil, fmt.Errorf("%w: tensor %q: %v", ErrFormat, ti.Name, err)
			}
			return nil, fmt.Errorf("%w: tensor info %d at offset %d: %v", ErrFormat, i, start, err)
		}
		if _, dup := f.tIndex[ti.Name]; dup {
			return nil, fmt.Errorf("%w: tensor %q appears twice", ErrFormat, ti.Name)
		}
		if ti.Offset%f.alignment != 0 {
			return nil, fmt.Errorf("%w: tensor %q: offset %d is not a multiple of the alignment %d", ErrFormat, ti.Name, ti.Offset, f.alignment)
		}
		f.tIndex[ti.Name] = len(f.tensors)
		f.tensors = append(f.tensors, ti)
	}

	// The data section starts at the next multiple of the alignment; a file
	// without tensor data may end before it.
	f.dataOff = (uint64(d.off) + f.alignment - 1) / f.alignment * f.alignment
	if f.dataOff <= uint64(len(b)) {
		f.data = b[f.dataOff:]
	}
	dataLen := uint64(len(f.data))
	f.sizes = make([]uint64, len(f.tensors))
	f.known = make([]bool, len(f.tensors))
	for i, ti := range f.tensors {
		n, known, err := tensorBytes(ti.Type, ti.Dims)
		if err != nil {
			return nil, fmt.Errorf("%w: tensor %q (%s %v): %v", ErrFormat, ti.Name, ti.Type, ti.Dims, err)
		}
		f.sizes[i], f.known[i] = n, known
		if ti.Offset > dataLen || n > dataLen-ti.Offset {
			return nil, fmt.Errorf("%w: tensor %q: %d bytes at data offset %d run past the end of the file (%d data bytes)", ErrFormat, ti.Name, n, ti.Offset, dataLen)
		}
	}
	return f, nil
}

// decoder reads little-endian fields from b, checking every length against what
// is left.
type decoder struct {
	b   []byte
	off int
}

var errShort = errors.New("unexpected end of file")

func (d *decoder) left() uint64 { return uint64(len(d.b) - d.off) }

func (d *decoder) take(n uint64) ([]byte, error) {
	if n > d.left() {
		return nil, fmt.Errorf("%w: need %d bytes at offset %d, %d left", errShort, n, d.off, d.left())
	}
	s := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return s, nil
}

func (d *decoder) u32() (uint32, error) {
	s, err := d.take(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

func (d *decoder) u64() (uint64, error) {
	s, err := d.take(8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

func (d *decoder) str() (string, error) {
	n, err := d.u64()
	if err != nil {
		return "", err
	}
	if n > d.left() {
		return "", fmt.Errorf("string length %d at offset %d runs past the end of the file (%d bytes left)", n, d.off-8, d.left())
	}
	s, _ := d.take(n)
	return string(s), nil
}

// value decodes one value of type t; depth counts enclosing arrays.
func (d *decoder) value(t ValueType, depth int) (Value, error) {
	if !t.valid() {
		return Value{}, fmt.Errorf("unknown value type %d at offset %d", uint32(t), d.off-4)
	}
	if t == TypeString {
		s, err := d.str()
		return Value{typ: t, x: s}, err
	}
	if t == TypeArray {
		return d.array(depth)
	}
	s, err := d.take(uint64(t.fixedSize()))
	if err != nil {
		return Value{}, err
	}
	return Value{typ: t, x: scalar(t, s)}, nil
}

// scalar decodes a fixed-size scalar from s.
func scalar(t ValueType, s []byte) any {
	le := binary.LittleEndian
	switch t {
	case TypeUint8:
		return s[0]
	case TypeInt8:
		return int8(s[0])
	case TypeUint16:
		return le.Uint16(s)
	case TypeInt16:
		return int16(le.Uint16(s))
	case TypeUint32:
		return le.Uint32(s)
	case TypeInt32:
		return int32(le.Uint32(s))
	case TypeFloat32:
		return math.Float32frombits(le.Uint32(s))
	case TypeBool:
		return s[0] != 0
	case TypeUint64:
		return le.Uint64(s)
	case TypeInt64:
		return int64(le.Uint64(s))
	case TypeFloat64:
		return math.Float64frombits(le.Uint64(s))
	}
	return nil
}

func (d *decoder) array(depth int) (Value, error) {
	if depth >= maxNesting {
		return Value{}, fmt.Errorf("arrays nested deeper than %d", maxNesting)
	}
	et, err := d.u32()
	if err != nil {
		return Value{}, err
	}
	elem := ValueType(et)
	if !elem.valid() {
		return Value{}, fmt.Errorf("array of unknown value type %d at offset %d", et, d.off-4)
	}
	n, err := d.u64()
	if err != nil {
		return Value{}, err
	}
	if n > d.left()/uint64(elem.minSize()) {
		return Value{}, fmt.Errorf("array of %d %s at offset %d cannot fit in the %d bytes left", n, elem, d.off-12, d.left())
	}
	v := Value{typ: TypeArray, elem: elem}
	switch elem {
	case TypeString:
		a := make([]string, n)
		for i := range a {
			if a[i], err = d.str(); err != nil {
				return Value{}, fmt.Errorf("string %d of array: %w", i, err)
			}
		}
		v.x = a
	case TypeArray:
		a := make([]Value, n)
		for i := range a {
			if a[i], err = d.array(depth + 1); err != nil {
				return Value{}, err
			}
		}
		v.x = a
	default:
		s, _ := d.take(n * uint64(elem.fixedSize())) // fits: checked above
		v.x = fixedArray(elem, s, int(n))
	}
	return v, nil
}

// fixedArray decodes n fixed-size elements of type t from s.
func fixedArray(t ValueType, s []byte, n int) any {
	le := binary.LittleEndian
	switch t {
	case TypeUint8:
		return slices.Clone(s)
	case TypeInt8:
		return decodeAll(n, func(i int) int8 { return int8(s[i]) })
	case TypeBool:
		return decodeAll(n, func(i int) bool { return s[i] != 0 })
	case TypeUint16:
		return decodeAll(n, func(i int) uint16 { return le.Uint16(s[2*i:]) })
	case TypeInt16:
		return decodeAll(n, func(i int) int16 { return int16(le.Uint16(s[2*i:])) })
	case TypeUint32:
		return decodeAll(n, func(i int) uint32 { return le.Uint32(s[4*i:]) })
	case TypeInt32:
		return decodeAll(n, func(i int) int32 { return int32(le.Uint32(s[4*i:])) })
	case TypeFloat32:
		return decodeAll(n, func(i int) float32 { return math.Float32frombits(le.Uint32(s[4*i:])) })
	case TypeUint64:
		return decodeAll(n, func(i int) uint64 { return le.Uint64(s[8*i:]) })
	case TypeInt64:
		return decodeAll(n, func(i int) int64 { return int64(le.Uint64(s[8*i:])) })
	case TypeFloat64:
		return decodeAll(n, func(i int) float64 { return math.Float64frombits(le.Uint64(s[8*i:])) })
	}
	return nil
}

func decodeAll[T any](n int, at func(i int) T) []T {
	out := make([]T, n)
	for i := range out {
		out[i] = at(i)
	}
	return out
}

// tensorInfo decodes one tensor info record. On error the returned info carries
// the name when it was read.
func (d *decoder) tensorInfo() (TensorInfo, error) {
	var ti TensorInfo
	name, err := d.str()
	if err != nil {
		return ti, fmt.Errorf("name: %w", err)
	}
	ti.Name = name
	nd, err := d.u32()
	if err != nil {
		return ti, err
	}
	if nd < 1 || nd > maxDims {
		return ti, fmt.Errorf("%d dimensions (want 1 to %d)", nd, maxDims)
	}
	ti.Dims = make([]uint64, nd)
	for j := range ti.Dims {
		if ti.Dims[j], err = d.u64(); err != nil {
			return ti, err
		}
		if ti.Dims[j] > uint64(math.MaxInt) {
			return ti, fmt.Errorf("dimension %d = %d overflows", j, ti.Dims[j])
		}
	}
	t, err := d.u32()
	if err != nil {
		return ti, err
	}
	ti.Type = GGMLType(t)
	if ti.Offset, err = d.u64(); err != nil {
		return ti, err
	}
	return ti, nil
}

// Path is the file the data was mapped from ("" after Parse).
func (f *File) Path() string { return f.path }

// Version is the GGUF version (2 or 3).
func (f *File) Version() uint32 { return f.version }

// Alignment is the data alignment (general.alignment or 32).
func (f *File) Alignment() uint64 { return f.alignment }

// DataOffset is the absolute file offset of the data section.
func (f *File) DataOffset() uint64 { return f.dataOff }

// Keys returns the metadata keys in file order.
func (f *File) Keys() []string {
	keys := make([]string, len(f.kvs))
	for i, kv := range f.kvs {
		keys[i] = kv.key
	}
	return keys
}

// Value returns the value stored under key.
func (f *File) Value(key string) (Value, bool) {
	i, ok := f.kvIndex[key]
	if !ok {
		return Value{}, false
	}
	return f.kvs[i].val, true
}

// String returns a string value; false when key is absent or not a string.
func (f *File) String(key string) (string, bool) {
	v, _ := f.Value(key)
	return v.Text()
}

// Uint returns an integer value of any width; false when absent, not an integer,
// or negative.
func (f *File) Uint(key string) (uint64, bool) {
	v, _ := f.Value(key)
	return v.Uint()
}

// Int returns an integer value of any width; false when absent, not an integer,
// or above math.MaxInt64.
func (f *File) Int(key string) (int64, bool) {
	v, _ := f.Value(key)
	return v.Int()
}

// Float returns a float32 or float64 value.
func (f *File) Float(key string) (float64, bool) {
	v, _ := f.Value(key)
	return v.Float()
}

// Bool returns a bool value.
func (f *File) Bool(key string) (bool, bool) {
	v, _ := f.Value(key)
	return v.Bool()
}

// Strings returns a copy of a string array.
func (f *File) Strings(key string) ([]string, bool) {
	v, _ := f.Value(key)
	return v.Strings()
}

// Ints returns an integer array of any width as int64s.
func (f *File) Ints(key string) ([]int64, bool) {
	v, _ := f.Value(key)
	return v.Ints()
}

// Floats returns a float32 or float64 array as float64s.
func (f *File) Floats(key string) ([]float64, bool) {
	v, _ := f.Value(key)
	return v.Floats()
}

// Architecture is general.architecture ("" when absent).
func (f *File) Architecture() string {
	s, _ := f.String("general.architecture")
	return s
}

// Tensors returns the tensor infos in file order. The Dims slices are shared
// with the File and must not be modified.
func (f *File) Tensors() []TensorInfo { return slices.Clone(f.tensors) }

// TensorInfo returns the info of the named tensor.
func (f *File) TensorInfo(name string) (TensorInfo, bool) {
	i, ok := f.tIndex[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.tensors[i], true
}

// Tensor returns the named tensor's element type, its shape in numpy order
// (reversed ne) and its bytes, which alias the file (valid until Close, not to be
// modified). Tensor types the engine does not compute with give ErrUnsupported.
func (f *File) Tensor(name string) (tensor.DType, []int, []byte, error) {
	i, ok := f.tIndex[name]
	if !ok {
		return 0, nil, nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	ti := f.tensors[i]
	dt, ok := ti.Type.DType()
	if !ok {
		return 0, nil, nil, fmt.Errorf("%w: tensor %q has type %s (supported: %s)", ErrUnsupported, name, ti.Type, supportedList)
	}
	if f.data == nil && f.sizes[i] > 0 {
		// Only reachable after Close.
		return 0, nil, nil, fmt.Errorf("%w: tensor %q: file is closed", ErrFormat, name)
	}
	end := ti.Offset + f.sizes[i]
	return dt, ti.Shape(), f.data[ti.Offset:end:end], nil
}

// supportedList names the supported tensor types for error messages.
var supportedList = func() string {
	var names []string
	for _, t := range SupportedTypes() {
		names = append(names, t.String())
	}
	return strings.Join(names, ", ")
}()

// Close releases the mapping; tensor data obtained from the file must not be used
// afterwards. Closing twice, or closing a File from Parse, does nothing.
func (f *File) Close() error {
	if f == nil || f.mapped == nil {
		return nil
	}
	b := f.mapped
	f.mapped, f.data = nil, nil
	if err := fileio.Unmap(b); err != nil {
		return fmt.Errorf("gguf: unmap %s: %w", f.path, err)
	}
	return nil
}
