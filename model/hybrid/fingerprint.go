package hybrid

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Fingerprint identifies a model's weights (not only its shape): SHA-256 over
// every matrix's type and shape with three 256-byte windows of its data
// (start, middle, end) and every vector in full. Two checkpoints of the same
// architecture with other weights differ; reading it touches a few pages per
// matrix. Routed experts not loaded here (a trunk's) are skipped, so trunks of
// one deployment agree.
func (w *Weights) Fingerprint() [32]byte {
	h := sha256.New()
	var buf [8]byte
	mat := func(m tensor.Matrix) {
		binary.LittleEndian.PutUint32(buf[:4], uint32(m.DType))
		binary.LittleEndian.PutUint32(buf[4:], uint32(m.Rows))
		h.Write(buf[:])
		// The row-major bytes, whatever layout the node holds them in
		// (kernels.Pack): a copying and a mapping trunk agree.
		size := m.Rows * m.RowStride()
		binary.LittleEndian.PutUint32(buf[:4], uint32(m.Cols))
		binary.LittleEndian.PutUint32(buf[4:], uint32(size))
		h.Write(buf[:])
		const win = 256
		if size <= 3*win {
			h.Write(kernels.RowMajorBytes(m, 0, size))
			return
		}
		h.Write(kernels.RowMajorBytes(m, 0, win))
		h.Write(kernels.RowMajorBytes(m, size/2, win))
		h.Write(kernels.RowMajorBytes(m, size-win, win))
	}
	vec := func(v []float32) {
		binary.LittleEndian.PutUint32(buf[:4], uint32(len(v)))
		h.Write(buf[:4])
		for _, x := range v {
			binary.LittleEndian.PutUint32(buf[:4], math.Float32bits(x))
			h.Write(buf[:4])
		}
	}
	mat(w.Embed)
	mat(w.Output)
	vec(w.FinalNorm)
	for _, l := range w.Layers {
		vec(l.InputNorm)
		vec(l.PostNorm)
		if m := l.Mamba; m != nil {
			mat(m.InProj)
			mat(m.OutProj)
			for _, v := range [][]float32{m.ConvW, m.ConvB, m.DtBias, m.A, m.D, m.Norm} {
				vec(v)
			}
		}
		if a := l.Attn; a != nil {
			for _, m := range []tensor.Matrix{a.Q, a.K, a.V, a.O} {
				mat(m)
			}
		}
		mat(l.Router)
		mat(l.Shared.Gate)
		mat(l.Shared.Up)
		mat(l.Shared.Down)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// MaxStateMagnitude bounds the values of a session state taken from outside
// (an imported snapshot): recurrent and attention states of a working model
// stay far below it.
const MaxStateMagnitude = 1e8

// Validate checks a state decoded from outside before it joins a batch: every
// value finite and within MaxStateMagnitude, and every attention layer's cache
// holding exactly Pos tokens. A state that fails would poison the steps of the
// sessions batched with it.
func (s *State) Validate() error {
	check := func(kind string, layer int, v []float32) error {
		for i, x := range v {
			if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > MaxStateMagnitude {
				return fmt.Errorf("%w: %s state of layer %d holds %v at %d", ErrState, kind, layer, x, i)
			}
		}
		return nil
	}
	for i := range s.Conv {
		if err := check("conv", i, s.Conv[i]); err != nil {
			return err
		}
		if err := check("ssm", i, s.SSM[i]); err != nil {
			return err
		}
	}
	for i := range s.KV {
		c := &s.KV[i]
		if c.Len() != s.Pos {
			return fmt.Errorf("%w: attention layer %d caches %d tokens, the state is at position %d", ErrState, i, c.Len(), s.Pos)
		}
		for p := range c.pages {
			if err := c.checkPage(p, func(v []float32) error { return check("kv", i, v) }); err != nil {
				return err
			}
		}
	}
	return nil
}
