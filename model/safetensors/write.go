package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strconv"

	"github.com/switchyard-serving/switchyard/model/internal/fileio"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// TensorSpec describes one tensor for WriteFile. Shape is in numpy order.
type TensorSpec struct {
	Name  string
	DType tensor.DType
	Shape []int
}

// dtypeString is the safetensors spelling of a supported dtype.
func dtypeString(d tensor.DType) (string, bool) {
	for s, v := range dtypeNames {
		if v == d {
			return s, true
		}
	}
	return "", false
}

// specBytes validates a spec and returns its data size.
func specBytes(s TensorSpec) (int64, error) {
	if s.Name == "" || s.Name == metadataKey {
		return 0, fmt.Errorf("%w: invalid tensor name %q", ErrSpec, s.Name)
	}
	if _, ok := dtypeString(s.DType); !ok {
		return 0, fmt.Errorf("%w: tensor %q: dtype %v cannot be stored in safetensors (F32, F16, BF16 only)", ErrSpec, s.Name, s.DType)
	}
	if s.Shape == nil {
		return 0, fmt.Errorf("%w: tensor %q has a nil shape (use []int{} for a scalar)", ErrSpec, s.Name)
	}
	n := int64(elemBytes(s.DType))
	for _, d := range s.Shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: tensor %q has negative dimension in shape %v", ErrSpec, s.Name, s.Shape)
		}
		if d != 0 && n > math.MaxInt64/int64(d) {
			return 0, fmt.Errorf("%w: tensor %q: shape %v is too large", ErrSpec, s.Name, s.Shape)
		}
		n *= int64(d)
	}
	if n > math.MaxInt {
		return 0, fmt.Errorf("%w: tensor %q: %d bytes do not fit in memory", ErrSpec, s.Name, n)
	}
	return n, nil
}

// encodeHeader returns the padded JSON header (tensors in spec order, data packed
// back to back) and each tensor's size.
func encodeHeader(specs []TensorSpec, metadata map[string]string) ([]byte, []int64, error) {
	sizes := make([]int64, len(specs))
	seen := make(map[string]bool, len(specs))
	var buf bytes.Buffer
	buf.WriteByte('{')
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata) // keys sorted
		if err != nil {
			return nil, nil, fmt.Errorf("%w: metadata: %v", ErrSpec, err)
		}
		buf.WriteString(`"` + metadataKey + `":`)
		buf.Write(m)
	}
	var off int64
	for i, s := range specs {
		n, err := specBytes(s)
		if err != nil {
			return nil, nil, err
		}
		if seen[s.Name] {
			return nil, nil, fmt.Errorf("%w: tensor %q is listed twice", ErrDuplicate, s.Name)
		}
		seen[s.Name] = true
		if off > math.MaxInt64-n {
			return nil, nil, fmt.Errorf("%w: tensor %q: checkpoint exceeds 2^63 bytes", ErrSpec, s.Name)
		}
		sizes[i] = n
		if buf.Len() > 1 {
			buf.WriteByte(',')
		}
		name, _ := json.Marshal(s.Name)
		dt, _ := dtypeString(s.DType)
		buf.Write(name)
		buf.WriteString(`:{"dtype":"` + dt + `","shape":[`)
		for j, d := range s.Shape {
			if j > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString(strconv.Itoa(d))
		}
		buf.WriteString(`],"data_offsets":[` + strconv.FormatInt(off, 10) + `,` + strconv.FormatInt(off+n, 10) + `]}`)
		off += n
	}
	buf.WriteByte('}')
	for buf.Len()%8 != 0 { // pad with spaces so the data starts 8-byte aligned
		buf.WriteByte(' ')
	}
	return buf.Bytes(), sizes, nil
}

// WriteFile writes a safetensors file at path: the header (tensors in the order of
// specs, data packed back to back, header padded with spaces to a multiple of 8
// bytes), then each tensor's data. For tensor i it calls fill(i, dst) once, in
// order, with dst exactly that tensor's size in bytes (little-endian elements);
// dst is a reused buffer cleared to zero before each call, so fill must not keep
// it. A nil fill writes zeros. The file is written to a temporary name in the same
// directory and renamed into place only when complete, so a failed write leaves no
// partial file behind.
func WriteFile(path string, specs []TensorSpec, metadata map[string]string, fill func(i int, dst []byte) error) error {
	hdr, sizes, err := encodeHeader(specs, metadata)
	if err != nil {
		return err
	}
	var maxSize int64
	for _, n := range sizes {
		maxSize = max(maxSize, n)
	}
	return writeAtomic(path, func(w *bufio.Writer) error {
		var lenBuf [8]byte
		binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
		if _, err := w.Write(lenBuf[:]); err != nil {
			return err
		}
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		buf := make([]byte, maxSize)
		for i, s := range specs {
			dst := buf[:sizes[i]]
			clear(dst)
			if fill != nil {
				if err := fill(i, dst); err != nil {
					return fmt.Errorf("tensor %q: fill: %w", s.Name, err)
				}
			}
			if _, err := w.Write(dst); err != nil {
				return err
			}
		}
		return nil
	})
}

// WriteIndex writes dir/model.safetensors.index.json for a sharded checkpoint:
// {"metadata": {"total_size": totalSize}, "weight_map": {tensor: shard file}}.
func WriteIndex(dir string, weightMap map[string]string, totalSize int64) error {
	if len(weightMap) == 0 {
		return fmt.Errorf("%w: empty weight map", ErrSpec)
	}
	for name, shard := range weightMap {
		if !plainFileName(shard) {
			return fmt.Errorf("%w: tensor %q maps to %q, which is not a plain file name", ErrSpec, name, shard)
		}
	}
	if totalSize < 0 {
		return fmt.Errorf("%w: negative total size %d", ErrSpec, totalSize)
	}
	idx := struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}{map[string]int64{"total_size": totalSize}, weightMap}
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSpec, err)
	}
	b = append(b, '\n')
	return writeAtomic(filepath.Join(dir, IndexFile), func(w *bufio.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// writeAtomic writes path atomically (see fileio.WriteAtomic) with the package's
// error prefix.
func writeAtomic(path string, body func(w *bufio.Writer) error) error {
	if err := fileio.WriteAtomic(path, body); err != nil {
		return wrapIO(path, err)
	}
	return nil
}

// wrapIO adds the package prefix and the path to an error met while writing.
func wrapIO(path string, err error) error {
	return fmt.Errorf("safetensors: write %s: %w", path, err)
}
