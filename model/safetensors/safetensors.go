package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"sort"

	"github.com/switchyard-serving/switchyard/model/internal/fileio"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Errors returned by this package; every error wraps one of them.
var (
	// ErrFormat reports a file or index that is not valid safetensors.
	ErrFormat = errors.New("safetensors: bad format")
	// ErrDType reports a tensor whose dtype this engine does not support.
	ErrDType = errors.New("safetensors: unsupported dtype")
	// ErrDuplicate reports a tensor name that appears twice (in one header or
	// across the shards of a checkpoint).
	ErrDuplicate = errors.New("safetensors: duplicate tensor")
	// ErrNoFiles reports a directory without any safetensors file.
	ErrNoFiles = errors.New("safetensors: no safetensors files")
	// ErrSpec reports an invalid argument to WriteFile or WriteIndex.
	ErrSpec = errors.New("safetensors: bad tensor spec")
)

// MaxHeaderBytes bounds the JSON header (the reference implementation's limit).
const MaxHeaderBytes = 100 << 20

const metadataKey = "__metadata__"

// Tensor is one tensor of a file. Shape is in numpy order; Data aliases the
// file's memory (never copied), is valid until the file is closed and must not be
// modified.
type Tensor struct {
	Name  string
	DType tensor.DType
	Shape []int
	Data  []byte
}

// Elements is the number of values (the product of the shape).
func (t Tensor) Elements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// File is one parsed safetensors file.
type File struct {
	path    string
	mapped  []byte // the mapping to release on Close; nil after Parse
	tensors map[string]Tensor
	names   []string
	meta    map[string]string
}

// dtypeNames maps the safetensors dtype strings this engine supports.
var dtypeNames = map[string]tensor.DType{
	"F32":  tensor.F32,
	"F16":  tensor.F16,
	"BF16": tensor.BF16,
}

// elemBytes is the size of one element of a supported dtype.
func elemBytes(d tensor.DType) int {
	switch d {
	case tensor.F32:
		return 4
	case tensor.F16, tensor.BF16:
		return 2
	}
	return 0
}

// Open memory-maps the file at path and validates its header.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file", path, ErrFormat)
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("%s: %w: file of %d bytes has no 8-byte header length", path, ErrFormat, size)
	}
	if size > math.MaxInt {
		return nil, fmt.Errorf("%s: %w: file of %d bytes is too large to map", path, ErrFormat, size)
	}
	b, err := fileio.Map(f, int(size))
	if err != nil {
		return nil, fmt.Errorf("safetensors: map %s: %w", path, err)
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

// Parse reads a safetensors file held in b. The tensors alias b; Close is a no-op.
func Parse(b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the 8-byte header length", ErrFormat, len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > MaxHeaderBytes {
		return nil, fmt.Errorf("%w: header length %d exceeds the %d-byte limit", ErrFormat, n, MaxHeaderBytes)
	}
	if n > uint64(len(b)-8) {
		return nil, fmt.Errorf("%w: header length %d is larger than the %d bytes after it (truncated file?)", ErrFormat, n, len(b)-8)
	}
	hdr := b[8 : 8+n]
	data := b[8+n:]

	entries, meta, err := parseHeader(hdr)
	if err != nil {
		return nil, err
	}

	file := &File{tensors: make(map[string]Tensor, len(entries)), meta: meta}
	type span struct {
		name       string
		begin, end uint64
	}
	spans := make([]span, 0, len(entries))
	for _, e := range entries {
		t, begin, end, err := e.validate(uint64(len(data)))
		if err != nil {
			return nil, err
		}
		t.Data = data[begin:end:end]
		file.tensors[e.name] = t
		file.names = append(file.names, e.name)
		if end > begin {
			spans = append(spans, span{e.name, begin, end})
		}
	}
	sort.Strings(file.names)

	sort.Slice(spans, func(i, j int) bool { return spans[i].begin < spans[j].begin })
	for i := 1; i < len(spans); i++ {
		if p, c := spans[i-1], spans[i]; c.begin < p.end {
			return nil, fmt.Errorf("%w: tensor %q bytes [%d,%d) overlap tensor %q bytes [%d,%d)", ErrFormat, c.name, c.begin, c.end, p.name, p.begin, p.end)
		}
	}
	return file, nil
}

// headerEntry is one tensor entry of the JSON header as written.
type headerEntry struct {
	name    string
	DType   *string  `json:"dtype"`
	Shape   []uint64 `json:"shape"`
	Offsets []uint64 `json:"data_offsets"`
}

// parseHeader decodes the JSON header, keeping the file's entry order and
// rejecting duplicate names.
func parseHeader(hdr []byte) ([]headerEntry, map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(hdr))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: header is not JSON: %v", ErrFormat, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nil, fmt.Errorf("%w: header is not a JSON object", ErrFormat)
	}
	var entries []headerEntry
	meta := map[string]string{}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: header JSON: %v", ErrFormat, err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, nil, fmt.Errorf("%w: header JSON: object key is not a string", ErrFormat)
		}
		if seen[name] {
			if name == metadataKey {
				return nil, nil, fmt.Errorf("%w: header has two %s entries", ErrFormat, metadataKey)
			}
			return nil, nil, fmt.Errorf("%w: tensor %q appears twice in the header", ErrDuplicate, name)
		}
		seen[name] = true
		if name == metadataKey {
			var m map[string]string
			if err := dec.Decode(&m); err != nil {
				return nil, nil, fmt.Errorf("%w: %s must map strings to strings: %v", ErrFormat, metadataKey, err)
			}
			maps.Copy(meta, m)
			continue
		}
		e := headerEntry{name: name}
		if err := dec.Decode(&e); err != nil {
			return nil, nil, fmt.Errorf("%w: tensor %q: bad header JSON: %v", ErrFormat, name, err)
		}
		entries = append(entries, e)
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, nil, fmt.Errorf("%w: header JSON: %v", ErrFormat, err)
	}
	// Only padding may follow the object.
	if off := dec.InputOffset(); len(bytes.TrimRight(hdr[off:], " \t\r\n")) != 0 {
		return nil, nil, fmt.Errorf("%w: trailing bytes after the header JSON at offset %d", ErrFormat, off)
	}
	return entries, meta, nil
}

// validate checks one entry against the data section of dataLen bytes.
func (e headerEntry) validate(dataLen uint64) (t Tensor, begin, end uint64, err error) {
	if e.DType == nil {
		return t, 0, 0, fmt.Errorf("%w: tensor %q has no dtype", ErrFormat, e.name)
	}
	dt, ok := dtypeNames[*e.DType]
	if !ok {
		return t, 0, 0, fmt.Errorf("%w: tensor %q has dtype %q (supported: F32, F16, BF16)", ErrDType, e.name, *e.DType)
	}
	if e.Shape == nil {
		return t, 0, 0, fmt.Errorf("%w: tensor %q has no shape", ErrFormat, e.name)
	}
	if len(e.Offsets) != 2 {
		return t, 0, 0, fmt.Errorf("%w: tensor %q: data_offsets must be [begin, end], got %d numbers", ErrFormat, e.name, len(e.Offsets))
	}
	numel := uint64(1)
	shape := make([]int, len(e.Shape))
	for i, d := range e.Shape {
		if d > math.MaxInt {
			return t, 0, 0, fmt.Errorf("%w: tensor %q: dimension %d = %d overflows", ErrFormat, e.name, i, d)
		}
		shape[i] = int(d)
		if numel != 0 && d != 0 && numel > math.MaxInt64/d {
			return t, 0, 0, fmt.Errorf("%w: tensor %q: shape %v has too many elements", ErrFormat, e.name, e.Shape)
		}
		numel *= d
	}
	eb := uint64(elemBytes(dt))
	if numel > math.MaxInt64/eb {
		return t, 0, 0, fmt.Errorf("%w: tensor %q: shape %v has too many bytes", ErrFormat, e.name, e.Shape)
	}
	size := numel * eb
	begin, end = e.Offsets[0], e.Offsets[1]
	if begin > end {
		return t, 0, 0, fmt.Errorf("%w: tensor %q: data_offsets [%d,%d] run backwards", ErrFormat, e.name, begin, end)
	}
	if end > dataLen {
		return t, 0, 0, fmt.Errorf("%w: tensor %q: data_offsets [%d,%d] run past the %d data bytes", ErrFormat, e.name, begin, end, dataLen)
	}
	if end-begin != size {
		return t, 0, 0, fmt.Errorf("%w: tensor %q: %s %v needs %d bytes but data_offsets [%d,%d] hold %d", ErrFormat, e.name, dt, e.Shape, size, begin, end, end-begin)
	}
	return Tensor{Name: e.name, DType: dt, Shape: shape}, begin, end, nil
}

// Path is the file the data was mapped from ("" after Parse).
func (f *File) Path() string { return f.path }

// Tensor returns the named tensor. Its Shape is a fresh copy; its Data aliases the
// file.
func (f *File) Tensor(name string) (Tensor, bool) {
	t, ok := f.tensors[name]
	if ok {
		t.Shape = slices.Clone(t.Shape)
	}
	return t, ok
}

// Names returns the tensor names, sorted.
func (f *File) Names() []string { return slices.Clone(f.names) }

// Len is the number of tensors.
func (f *File) Len() int { return len(f.names) }

// Metadata returns a copy of the header's __metadata__ map (empty when absent).
func (f *File) Metadata() map[string]string { return maps.Clone(f.meta) }

// Close releases the mapping. Tensor data obtained from the file must not be used
// afterwards. Closing twice, or closing a File from Parse, does nothing.
func (f *File) Close() error {
	if f == nil || f.mapped == nil {
		return nil
	}
	b := f.mapped
	f.mapped = nil
	f.tensors = nil
	if err := fileio.Unmap(b); err != nil {
		return fmt.Errorf("safetensors: unmap %s: %w", f.path, err)
	}
	return nil
}
