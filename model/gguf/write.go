package gguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/switchyard-serving/switchyard/model/internal/fileio"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Writer collects metadata and tensor descriptions and then writes a GGUF v3
// file. The Add methods record the first invalid input (a duplicate key, an
// unsupported value) and WriteFile reports it, so calls can be chained without
// checking each one; Err reports it earlier.
//
// Data is aligned to 32 bytes, or to general.alignment when that key is added
// (it must then be a power-of-two integer).
type Writer struct {
	kvs     []keyValue
	keys    map[string]bool
	tensors []writerTensor
	names   map[string]bool
	err     error
}

type writerTensor struct {
	info TensorInfo
	size uint64
}

// NewWriter returns an empty Writer.
func NewWriter() *Writer {
	return &Writer{keys: map[string]bool{}, names: map[string]bool{}}
}

func (w *Writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// Err returns the first invalid input recorded so far.
func (w *Writer) Err() error { return w.err }

// Add stores a metadata value given as any Go type NewValue accepts (including a
// Value itself).
func (w *Writer) Add(key string, x any) {
	v, ok := x.(Value)
	if !ok {
		var err error
		if v, err = NewValue(x); err != nil {
			w.fail(fmt.Errorf("kv %q: %w", key, err))
			return
		}
	}
	if v.x == nil {
		w.fail(fmt.Errorf("%w: kv %q: invalid (zero) Value", ErrWriter, key))
		return
	}
	if w.keys[key] {
		w.fail(fmt.Errorf("%w: kv %q added twice", ErrWriter, key))
		return
	}
	w.keys[key] = true
	w.kvs = append(w.kvs, keyValue{key, v})
}

// AddString stores a string.
func (w *Writer) AddString(key, v string) { w.Add(key, v) }

// AddUint32 stores a uint32.
func (w *Writer) AddUint32(key string, v uint32) { w.Add(key, v) }

// AddInt32 stores an int32.
func (w *Writer) AddInt32(key string, v int32) { w.Add(key, v) }

// AddUint64 stores a uint64.
func (w *Writer) AddUint64(key string, v uint64) { w.Add(key, v) }

// AddInt64 stores an int64.
func (w *Writer) AddInt64(key string, v int64) { w.Add(key, v) }

// AddFloat32 stores a float32.
func (w *Writer) AddFloat32(key string, v float32) { w.Add(key, v) }

// AddFloat64 stores a float64.
func (w *Writer) AddFloat64(key string, v float64) { w.Add(key, v) }

// AddBool stores a bool.
func (w *Writer) AddBool(key string, v bool) { w.Add(key, v) }

// AddStrings stores an array of strings.
func (w *Writer) AddStrings(key string, v []string) { w.Add(key, v) }

// AddInt32s stores an array of int32.
func (w *Writer) AddInt32s(key string, v []int32) { w.Add(key, v) }

// AddUint32s stores an array of uint32.
func (w *Writer) AddUint32s(key string, v []uint32) { w.Add(key, v) }

// AddFloat32s stores an array of float32.
func (w *Writer) AddFloat32s(key string, v []float32) { w.Add(key, v) }

// AddTensor appends a tensor of element type dt with dimensions ne in ggml order
// (fastest first, i.e. the reverse of the numpy shape). size is its data size in
// bytes; it must equal what dt and ne imply (0 means: compute it). Tensors are
// written in the order they are added.
func (w *Writer) AddTensor(name string, dt tensor.DType, ne []uint64, size int) {
	gt, ok := ggmlTypeOf(dt)
	if !ok {
		w.fail(fmt.Errorf("%w: tensor %q: dtype %v has no GGML type", ErrWriter, name, dt))
		return
	}
	if len(ne) < 1 || len(ne) > maxDims {
		w.fail(fmt.Errorf("%w: tensor %q: %d dimensions (want 1 to %d)", ErrWriter, name, len(ne), maxDims))
		return
	}
	for j, d := range ne {
		if d > uint64(math.MaxInt) {
			w.fail(fmt.Errorf("%w: tensor %q: dimension %d = %d overflows", ErrWriter, name, j, d))
			return
		}
	}
	n, _, err := tensorBytes(gt, ne)
	if err == nil && n > uint64(math.MaxInt) {
		err = fmt.Errorf("%d bytes do not fit in memory", n)
	}
	if err != nil {
		w.fail(fmt.Errorf("%w: tensor %q (%s %v): %v", ErrWriter, name, gt, ne, err))
		return
	}
	if size != 0 && uint64(size) != n {
		w.fail(fmt.Errorf("%w: tensor %q: size %d, but %s %v takes %d bytes", ErrWriter, name, size, gt, ne, n))
		return
	}
	if w.names[name] {
		w.fail(fmt.Errorf("%w: tensor %q added twice", ErrWriter, name))
		return
	}
	w.names[name] = true
	w.tensors = append(w.tensors, writerTensor{TensorInfo{Name: name, Dims: slices.Clone(ne), Type: gt}, n})
}

// alignment is general.alignment when added, else DefaultAlignment.
func (w *Writer) alignment() (uint64, error) {
	if !w.keys[AlignmentKey] {
		return DefaultAlignment, nil
	}
	for _, kv := range w.kvs {
		if kv.key == AlignmentKey {
			a, ok := kv.val.Uint()
			if !ok || a == 0 || a&(a-1) != 0 || a > 1<<30 {
				return 0, fmt.Errorf("%w: %s = %v is not a power-of-two integer", ErrWriter, AlignmentKey, kv.val)
			}
			return a, nil
		}
	}
	return DefaultAlignment, nil
}

// WriteFile writes the file at path: header, metadata, tensor infos, then each
// tensor's data at its aligned offset. For tensor i (in AddTensor order) it calls
// fill(i, dst) once with dst exactly the tensor's byte size, in the tensor's ggml
// layout (rows of ne[0] values, quantized types as whole blocks); dst is a reused
// buffer cleared to zero before each call, so fill must not keep it. A nil fill
// writes zeros. The file is written under a temporary name in the same directory
// and renamed into place only when complete.
func (w *Writer) WriteFile(path string, fill func(i int, dst []byte) error) error {
	if w.err != nil {
		return w.err
	}
	align, err := w.alignment()
	if err != nil {
		return err
	}
	var off, maxSize uint64
	for i := range w.tensors {
		t := &w.tensors[i]
		t.info.Offset = off
		padded := (t.size + align - 1) / align * align
		if padded < t.size || off > math.MaxInt64-padded {
			return fmt.Errorf("%w: tensor %q: file exceeds 2^63 bytes", ErrWriter, t.info.Name)
		}
		off += padded
		maxSize = max(maxSize, t.size)
	}
	return writeAtomic(path, func(bw *bufio.Writer) error {
		e := &encoder{w: bw}
		e.bytes([]byte(Magic))
		e.u32(3)
		e.u64(uint64(len(w.tensors)))
		e.u64(uint64(len(w.kvs)))
		for _, kv := range w.kvs {
			e.str(kv.key)
			e.u32(uint32(kv.val.typ))
			e.value(kv.val)
		}
		for _, t := range w.tensors {
			e.str(t.info.Name)
			e.u32(uint32(len(t.info.Dims)))
			for _, d := range t.info.Dims {
				e.u64(d)
			}
			e.u32(uint32(t.info.Type))
			e.u64(t.info.Offset)
		}
		e.pad(align)
		if e.err != nil {
			return e.err
		}
		buf := make([]byte, maxSize)
		for i, t := range w.tensors {
			dst := buf[:t.size]
			clear(dst)
			if fill != nil {
				if err := fill(i, dst); err != nil {
					return fmt.Errorf("tensor %q: fill: %w", t.info.Name, err)
				}
			}
			e.bytes(dst)
			e.pad(align)
			if e.err != nil {
				return e.err
			}
		}
		return nil
	})
}

// encoder writes little-endian fields, keeping the first error and the count.
type encoder struct {
	w   *bufio.Writer
	n   uint64
	err error
	tmp [8]byte
}

func (e *encoder) bytes(b []byte) {
	if e.err != nil {
		return
	}
	var n int
	n, e.err = e.w.Write(b)
	e.n += uint64(n)
}

func (e *encoder) u8(v uint8)   { e.bytes([]byte{v}) }
func (e *encoder) u16(v uint16) { binary.LittleEndian.PutUint16(e.tmp[:], v); e.bytes(e.tmp[:2]) }
func (e *encoder) u32(v uint32) { binary.LittleEndian.PutUint32(e.tmp[:], v); e.bytes(e.tmp[:4]) }
func (e *encoder) u64(v uint64) { binary.LittleEndian.PutUint64(e.tmp[:], v); e.bytes(e.tmp[:8]) }

func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	e.bytes([]byte(s))
}

func (e *encoder) pad(align uint64) {
	if r := e.n % align; r != 0 {
		e.bytes(make([]byte, align-r))
	}
}

func (e *encoder) boolean(b bool) {
	if b {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// value writes v without its type tag.
func (e *encoder) value(v Value) {
	switch x := v.x.(type) {
	case uint8:
		e.u8(x)
	case int8:
		e.u8(uint8(x))
	case uint16:
		e.u16(x)
	case int16:
		e.u16(uint16(x))
	case uint32:
		e.u32(x)
	case int32:
		e.u32(uint32(x))
	case uint64:
		e.u64(x)
	case int64:
		e.u64(uint64(x))
	case float32:
		e.u32(math.Float32bits(x))
	case float64:
		e.u64(math.Float64bits(x))
	case bool:
		e.boolean(x)
	case string:
		e.str(x)
	default: // an array
		e.u32(uint32(v.elem))
		e.u64(uint64(v.Len()))
		if a, ok := v.x.([]Value); ok {
			for _, el := range a {
				e.value(el)
			}
			return
		}
		for i := range v.Len() {
			e.value(v.index(i))
		}
	}
}

// writeAtomic writes path atomically (see fileio.WriteAtomic) with the package's
// error prefix.
func writeAtomic(path string, body func(w *bufio.Writer) error) error {
	if err := fileio.WriteAtomic(path, body); err != nil {
		return fmt.Errorf("gguf: write %s: %w", path, err)
	}
	return nil
}
